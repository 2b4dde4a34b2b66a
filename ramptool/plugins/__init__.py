"""The plugin layer: the pluggy hooks (``hookspecs``), the registry every component is looked up in (built-ins
register through the same hooks as third-party plugins), and the options a component declares (``options``)."""

from ramptool.plugins.hookspecs import API_VERSION, hookimpl
from ramptool.plugins.registry import (
    DEFAULT_PLUGINS,
    KINDS,
    Registry,
    bind_options,
    build_plugin_manager,
    components,
    get,
    registry,
    reset_registry,
)

__all__ = ["API_VERSION", "DEFAULT_PLUGINS", "KINDS", "Registry", "bind_options", "build_plugin_manager", "components",
           "get", "hookimpl", "registry", "reset_registry"]

"""Plugin manager and component registry.

Built-in components are registered by the modules in ``DEFAULT_PLUGINS`` through exactly the hooks that
third-party plugins use; the latter arrive through the ``ramptool`` entry-point group.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import inspect
import signal
import sys
from dataclasses import dataclass
from typing import Any

import pluggy

from ramptool.errors import RamptoolError, Stopped
from ramptool.plugins import hookspecs
from ramptool.plugins.options import bind, options_of

# the name each built-in plugin has in `ramptool plugins` -> its module (the names predate the subpackages and stay)
DEFAULT_PLUGINS = {
    "ramptool.attacks": "ramptool.attacks",
    "ramptool.pairing": "ramptool.training.pairing",
    "ramptool.combiners": "ramptool.training.combiners",
    "ramptool.models": "ramptool.models",
    "ramptool.data": "ramptool.data.datasets",
    "ramptool.methods": "ramptool.training.methods",
    "ramptool.loggers": "ramptool.loggers",
}

ENTRY_POINT_GROUP = "ramptool"

# kind -> hook name; the kind is what users see in `ramptool plugins` and in error messages
KINDS = {
    "attack": "register_attacks",
    "pairing-loss": "register_pairing_losses",
    "combiner": "register_combiners",
    "backbone": "register_backbones",
    "dataset": "register_datasets",
    "method": "register_methods",
    "logger": "register_loggers",
}


@dataclass(frozen=True)
class Component:
    kind: str
    name: str
    obj: Any
    plugin: str

    @property
    def description(self) -> str:
        # a class's own docstring, not one it inherits from its ramptool.api base class
        text = getattr(self.obj, "description", None) or inspect.cleandoc(self.obj.__doc__ or "")
        first_paragraph = " ".join(text.strip().split("\n\n")[0].split())
        return first_paragraph.split(". ")[0].rstrip(".")

    @property
    def options(self) -> list[str]:
        """The options the component declares, as ``name: type = default``; ``**`` when it takes any other."""
        declared, open_ended = options_of(self.kind, self.obj)
        return [option.describe() for option in declared] + (["**"] if open_ended else [])


@dataclass(frozen=True)
class Skipped:
    """A plugin (``hook`` None: all of it) or one hook of a plugin that ramptool left out, and why."""

    plugin: str
    hook: str | None
    reason: str
    source: str | None = None  # the entry point's module, when the plugin did not load

    def warning(self) -> str:
        where = f" ({self.source})" if self.source else f", hook {self.hook}" if self.hook else ""
        return f"warning: skipping plugin {self.plugin!r}{where}: {self.reason}"


# kind -> the class a component of that kind must be an instance of; the layers that define those classes declare
# them (``expect``) when they are imported, which building the plugin manager does before any hook is called
EXPECTED: dict[str, type] = {}


def expect(kind: str, cls: type) -> None:
    """Components of ``kind`` must be ``cls`` instances: a plugin's that are not are skipped with a warning."""
    EXPECTED[kind] = cls


def _problem_with(kind: str, provided) -> str | None:
    """Why a hook's answer cannot be registered, or None when it can."""
    if not isinstance(provided, dict):
        return f"returned a {type(provided).__name__}, not a dict name -> {kind}"
    for name, obj in provided.items():
        if not isinstance(name, str) or not name:
            return f"returned the name {name!r}; names are non-empty strings"
        expected = EXPECTED.get(kind)
        if expected is not None and not isinstance(obj, expected):
            return f"{kind} {name!r} is a {type(obj).__name__}, not a ramptool.api.{expected.__name__}"
        if expected is None and not callable(obj):
            return f"{kind} {name!r} is a {type(obj).__name__}, not something callable"
    return None


class PluginManager(pluggy.PluginManager):
    """pluggy's manager, plus the plugins that could not be registered."""

    def __init__(self):
        super().__init__("ramptool")
        self.skipped: list[Skipped] = []


class Registry:
    def __init__(self, manager: pluggy.PluginManager):
        self.manager = manager
        self.skipped: list[Skipped] = list(getattr(manager, "skipped", []))
        self.components: dict[str, dict[str, Component]] = {kind: {} for kind in KINDS}
        for kind, hook_name in KINDS.items():
            hook = getattr(manager.hook, hook_name)
            for impl in hook.get_hookimpls():
                plugin_name = manager.get_name(impl.plugin) or repr(impl.plugin)
                provided = self._call(impl, plugin_name, hook_name, kind)
                for name, obj in (provided or {}).items():
                    existing = self.components[kind].get(name)
                    if existing is not None:  # the first keeps its name (built-ins register first)
                        self.skipped.append(Skipped(plugin_name, hook_name, f"{kind} {name!r} is already "
                                                    f"registered by plugin {existing.plugin!r}; this one is left out"))
                        continue
                    self.components[kind][name] = Component(kind, name, obj, plugin_name)
        for skipped_plugin in self.skipped:
            print(skipped_plugin.warning(), file=sys.stderr)

    def _call(self, impl, plugin_name: str, hook_name: str, kind: str) -> dict | None:
        """The hook's components, or None (and a Skipped entry) when a third-party hook fails."""
        if plugin_name in DEFAULT_PLUGINS:  # a failing built-in is a bug in ramptool: let it surface
            return impl.function()
        try:
            provided = impl.function()
        except (Exception, SystemExit) as error:  # a broken plugin must not take ramptool down
            self.skipped.append(Skipped(plugin_name, hook_name, _error_text(error)))
            return None
        problem = _problem_with(kind, provided)
        if problem is not None:
            self.skipped.append(Skipped(plugin_name, hook_name, problem))
            return None
        return provided

    def get(self, kind: str, name: str) -> Any:
        try:
            return self.components[kind][name].obj
        except KeyError:
            known = ", ".join(sorted(self.components[kind])) or "none"
            raise RamptoolError(f"unknown {kind} {name!r}; known: {known}") from None

    def names(self, kind: str) -> list[str]:
        return sorted(self.components[kind])

    def of_kind(self, kind: str) -> dict[str, Any]:
        """Every registered component of ``kind``: name -> the component itself."""
        return {name: component.obj for name, component in sorted(self.components[kind].items())}

    def all(self) -> list[Component]:
        return [c for kind in KINDS for c in sorted(self.components[kind].values(), key=lambda c: c.name)]


def _error_text(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def build_plugin_manager(entry_points: bool = True) -> PluginManager:
    """The manager with the built-ins and (``entry_points``) every installed plugin that loads; those that
    do not are listed in its ``skipped``."""
    manager = PluginManager()
    manager.add_hookspecs(hookspecs)
    for plugin_name, module_name in DEFAULT_PLUGINS.items():
        manager.register(importlib.import_module(module_name), name=plugin_name)
    if entry_points:
        for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            try:
                plugin = entry_point.load()
                declared = getattr(plugin, "RAMPTOOL_API_VERSION", hookspecs.API_VERSION)
                if declared != hookspecs.API_VERSION:
                    raise ImportError(f"written for ramptool's plugin API {declared}, this ramptool has "
                                      f"API {hookspecs.API_VERSION}")
                manager.register(plugin, name=entry_point.name)
            except (Exception, SystemExit) as error:  # a broken plugin must not take ramptool down
                manager.skipped.append(Skipped(entry_point.name, None, _error_text(error), entry_point.value))
                continue
            except (KeyboardInterrupt, Stopped) as stop:  # Ctrl-C, or a plugin that raises it: say where
                raise Stopped(getattr(stop, "signum", signal.SIGINT),
                              f"while loading plugin {entry_point.name!r} ({entry_point.value})") from None
            for caller in manager.get_hookcallers(plugin) or []:
                if not caller.has_spec():  # a misspelt hook would otherwise never be called, silently
                    manager.skipped.append(Skipped(entry_point.name, caller.name, "no such hook; ramptool's hooks "
                                                   f"are {', '.join(KINDS.values())}"))
    return manager


_registry: Registry | None = None


def registry() -> Registry:
    """The process-wide registry, built on first use."""
    global _registry
    if _registry is None:
        _registry = Registry(build_plugin_manager())
    return _registry


def reset_registry(manager: pluggy.PluginManager | None = None) -> Registry:
    """Rebuild the registry (after installing a plugin, or with a custom manager in tests)."""
    global _registry
    _registry = Registry(manager or build_plugin_manager())
    return _registry


def get(kind: str, name: str) -> Any:
    """The component registered as ``name`` of ``kind`` (one of ``KINDS``); unknown names are an error."""
    return registry().get(kind, name)


def guarded(kind: str, name: str) -> Any:
    """``get(kind, name)``; a third-party callable is wrapped so that an exception it raises when used becomes one
    line naming its plugin (a built-in's exception is a bug in ramptool and surfaces as it is)."""
    component = registry().components[kind].get(name)
    obj = get(kind, name)
    if component is None or component.plugin in DEFAULT_PLUGINS:
        return obj

    @functools.wraps(obj)
    def call(*args, **kwargs):
        try:
            return obj(*args, **kwargs)
        except RamptoolError:
            raise
        except Exception as error:
            raise RamptoolError(f"{kind} {name!r} of plugin {component.plugin!r} failed: "
                                f"{_error_text(error)[:300]}") from None

    return call


def components(kind: str) -> dict[str, Any]:
    """Every registered component of ``kind`` (one of ``KINDS``): name -> the component."""
    return registry().of_kind(kind)


def bind_options(kind: str, name: str, given: dict | None) -> dict:
    """``given`` options of the registered ``kind`` ``name``, checked and typed (see ``ramptool.options``)."""
    return bind(kind, name, get(kind, name), given)

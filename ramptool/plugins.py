"""Plugin manager and component registry.

Built-in components are registered by the modules in ``DEFAULT_PLUGINS`` through exactly the hooks that
third-party plugins use; the latter arrive through the ``ramptool`` entry-point group.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import sys
from dataclasses import dataclass
from typing import Any

import pluggy

from ramptool import hookspecs
from ramptool.errors import RamptoolError

DEFAULT_PLUGINS = (
    "ramptool.attacks",
    "ramptool.pairing",
    "ramptool.combiners",
    "ramptool.models",
    "ramptool.data",
    "ramptool.methods",
)

ENTRY_POINT_GROUP = "ramptool"

# kind -> hook name; the kind is what users see in `ramptool plugins` and in error messages
KINDS = {
    "attack": "register_attacks",
    "pairing-loss": "register_pairing_losses",
    "combiner": "register_combiners",
    "backbone": "register_backbones",
    "dataset": "register_datasets",
    "method": "register_methods",
}


@dataclass(frozen=True)
class Component:
    kind: str
    name: str
    obj: Any
    plugin: str

    @property
    def description(self) -> str:
        text = getattr(self.obj, "description", None) or inspect.getdoc(self.obj) or ""
        first_paragraph = " ".join(text.strip().split("\n\n")[0].split())
        return first_paragraph.split(". ")[0].rstrip(".")


class Registry:
    def __init__(self, manager: pluggy.PluginManager):
        self.manager = manager
        self.components: dict[str, dict[str, Component]] = {kind: {} for kind in KINDS}
        for kind, hook_name in KINDS.items():
            hook = getattr(manager.hook, hook_name)
            for impl in hook.get_hookimpls():
                plugin_name = manager.get_name(impl.plugin) or repr(impl.plugin)
                provided = impl.function() or {}
                for name, obj in provided.items():
                    existing = self.components[kind].get(name)
                    if existing is not None:
                        raise RamptoolError(
                            f"{kind} {name!r} is registered twice: by plugin {existing.plugin!r} "
                            f"and by plugin {plugin_name!r}"
                        )
                    self.components[kind][name] = Component(kind, name, obj, plugin_name)

    def get(self, kind: str, name: str) -> Any:
        try:
            return self.components[kind][name].obj
        except KeyError:
            known = ", ".join(sorted(self.components[kind])) or "none"
            raise RamptoolError(f"unknown {kind} {name!r}; known: {known}") from None

    def names(self, kind: str) -> list[str]:
        return sorted(self.components[kind])

    def all(self) -> list[Component]:
        return [c for kind in KINDS for c in sorted(self.components[kind].values(), key=lambda c: c.name)]


def build_plugin_manager(entry_points: bool = True) -> pluggy.PluginManager:
    manager = pluggy.PluginManager("ramptool")
    manager.add_hookspecs(hookspecs)
    for module_name in DEFAULT_PLUGINS:
        manager.register(importlib.import_module(module_name), name=module_name)
    if entry_points:
        for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            try:
                plugin = entry_point.load()
            except Exception as error:  # a broken third-party plugin must not take ramptool down
                print(f"warning: skipping plugin {entry_point.name!r} ({entry_point.value}): "
                      f"{type(error).__name__}: {error}", file=sys.stderr)
                continue
            manager.register(plugin, name=entry_point.name)
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
    return registry().get(kind, name)

"""Import paths of ramptool 0.1's flat layout, kept for one release: importing one warns (DeprecationWarning)
and gives the module that now holds its contents, or, for a module that was split, a module that finds each
name in its new home. Nothing inside ramptool imports these paths."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
import warnings

MOVED = {
    "ramptool.checkpoint": ("ramptool.checkpoints.format", "ramptool.checkpoints.loading",
                            "ramptool.checkpoints.export", "ramptool.runtime.files"),
    "ramptool.config": ("ramptool.training.config", "ramptool.training.recipes", "ramptool.training.sources",
                        "ramptool.cli.options"),
    "ramptool.pair": ("ramptool.training.keypair", "ramptool.workflows.pair"),
    "ramptool.trainer": ("ramptool.training.trainer", "ramptool.runtime.device"),
    "ramptool.methods": ("ramptool.training.methods", "ramptool.runtime.device"),
    "ramptool.combiners": ("ramptool.training.combiners",),
    "ramptool.pairing": ("ramptool.training.pairing",),
    "ramptool.schedules": ("ramptool.training.schedules",),
    "ramptool.distributed": ("ramptool.runtime.distributed",),
    "ramptool.rundir": ("ramptool.runtime.rundir",),
    "ramptool.progress": ("ramptool.runtime.progress",),
    "ramptool.tensorboard": ("ramptool.loggers.tensorboard",),
    "ramptool.hookspecs": ("ramptool.plugins.hookspecs",),
    "ramptool.options": ("ramptool.plugins.options",),
    "ramptool.robustbench": ("ramptool.models.robustbench",),
    "ramptool.demo": ("ramptool.workflows.demo",),
    "ramptool.cli_eval": ("ramptool.cli.eval",),
}
# names of a split package that its __init__ does not re-export: looked up in its modules
FORWARDED = {
    "ramptool.data": ("ramptool.data.spec", "ramptool.data.datasets", "ramptool.data.batches"),
}


def _warn(old: str, new: str) -> None:
    warnings.warn(f"{old} is now {new}; the old import path will be removed in the next release",
                  DeprecationWarning, stacklevel=3)


def forwarding(name: str, homes: tuple[str, ...]):
    """A module ``__getattr__`` that finds ``attribute`` in the first of ``homes`` that has it."""

    def __getattr__(attribute: str):
        if attribute.startswith("__"):  # what inspect and pickle probe for: not a moved name
            raise AttributeError(f"module {name!r} has no attribute {attribute!r}")
        for home in homes:
            module = importlib.import_module(home)
            if hasattr(module, attribute):
                _warn(f"{name}.{attribute}", f"{home}.{attribute}")
                return getattr(module, attribute)
        raise AttributeError(f"module {name!r} has no attribute {attribute!r}")

    return __getattr__


class MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        return importlib.util.spec_from_loader(fullname, self) if fullname in MOVED else None

    def create_module(self, spec):
        homes = MOVED[spec.name]
        _warn(spec.name, " and ".join(homes))
        if len(homes) == 1:  # the very module, so that patching the old path patches what runs
            return importlib.import_module(homes[0])
        module = types.ModuleType(spec.name, f"Moved to {', '.join(homes)}.")
        module.__getattr__ = forwarding(spec.name, homes)
        return module

    def exec_module(self, module):
        pass


def install() -> None:
    if not any(isinstance(finder, MovedModules) for finder in sys.meta_path):
        sys.meta_path.append(MovedModules())

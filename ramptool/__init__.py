"""ramptool: training and evaluating classifiers robust to several lp threat models at once.

The package's layers, lowest first (each imports only the ones below it): ``runtime`` (files, devices,
torchrun, run folders), ``plugins`` (hooks and the registry), ``attacks``, ``models``, ``data``, ``checkpoints``,
``evaluation``, ``training``, ``workflows``, ``cli``. ``ramptool.api`` is what plugins import.

``import ramptool`` itself is cheap (torch is imported on first use of ``load_model``), so that the command line
can install its signal handlers before the seconds that importing torch takes.
"""

import importlib

from ramptool import _moved
from ramptool.version import __version__

_moved.install()

_PUBLIC = {"load_model": "ramptool.checkpoints.loading", "hookimpl": "ramptool.plugins.hookspecs"}


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'ramptool' has no attribute {name!r}")


__all__ = ["hookimpl", "load_model", "__version__"]

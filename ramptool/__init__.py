"""ramptool: training and evaluating classifiers robust to several lp threat models at once.

The package's layers, lowest first (each imports only the ones below it): ``runtime`` (files, devices,
torchrun, run folders), ``plugins`` (hooks and the registry), ``attacks``, ``models``, ``data``, ``checkpoints``,
``evaluation``, ``training``, ``workflows``, ``cli``. ``ramptool.api`` is what plugins import.
"""

from ramptool import _moved
from ramptool.checkpoints.loading import load_model
from ramptool.plugins.hookspecs import hookimpl
from ramptool.version import __version__

_moved.install()

__all__ = ["hookimpl", "load_model", "__version__"]

"""The pluggy hooks through which every component arrives, built-in ones included.

Each hook takes no arguments and returns a dict ``name -> component``; a plugin implements any subset of them.
What each kind of component must look like is documented in ``ramptool.api``, the one module plugins import
from. Third-party plugins are found through the ``ramptool`` entry-point group.

``API_VERSION`` is the version of this contract (the hooks and everything in ``ramptool.api``). It changes
only when something a plugin relies on changes incompatibly; additions keep it. A plugin may declare the
version it was written for as ``RAMPTOOL_API_VERSION`` in its module: ramptool skips it, with a warning,
when that is not its own.
"""

import pluggy

API_VERSION = 1

hookspec = pluggy.HookspecMarker("ramptool")
hookimpl = pluggy.HookimplMarker("ramptool")


@hookspec
def register_attacks():
    """Attacks: name -> ``ramptool.api.Attack``. Name a family's members ``{family}-{norm}``."""


@hookspec
def register_pairing_losses():
    """Pairing losses: name -> ``ramptool.api.PairingLoss``."""


@hookspec
def register_combiners():
    """Gradient combiners: name -> a ``ramptool.api.Combiner`` subclass."""


@hookspec
def register_backbones():
    """Backbones: name -> ``ramptool.api.BackboneBuilder``."""


@hookspec
def register_datasets():
    """Datasets: name -> ``ramptool.api.DatasetSpec``."""


@hookspec
def register_methods():
    """Training methods: name -> a ``ramptool.api.TrainingMethod`` subclass."""


@hookspec
def register_loggers():
    """Loggers: name -> a ``ramptool.api.Logger`` subclass (``--logger name=target``)."""

"""The pluggy hooks through which every component arrives, built-in ones included.

Each hook returns a mapping ``name -> component``. A plugin implements any subset of them::

    from ramptool import hookimpl

    @hookimpl
    def register_pairing_losses():
        return {"js": jensen_shannon}

Third-party plugins are found through the ``ramptool`` entry-point group.
"""

import pluggy

hookspec = pluggy.HookspecMarker("ramptool")
hookimpl = pluggy.HookimplMarker("ramptool")


@hookspec
def register_attacks():
    """Attacks: name -> ``ramptool.attacks.Attack``."""


@hookspec
def register_pairing_losses():
    """Pairing losses: name -> ``fn(logits_source, logits_target) -> scalar`` over the kept subset."""


@hookspec
def register_combiners():
    """Gradient combiners: name -> class taking ``(model, make_optimizer, **options)``."""


@hookspec
def register_backbones():
    """Backbones: name -> ``builder(num_classes, in_chans, image_size, **options) -> nn.Module``."""


@hookspec
def register_datasets():
    """Datasets: name -> ``ramptool.data.DatasetSpec``."""


@hookspec
def register_methods():
    """Training methods: name -> class built from a ``ramptool.methods.MethodContext``."""

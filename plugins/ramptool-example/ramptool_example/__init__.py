"""ramptool-example: one component of every kind ramptool has, written against ``ramptool.api`` only.

ramptool imports this module through its ``ramptool`` entry point (see pyproject.toml) and calls the
``@hookimpl`` functions below; each returns a dict ``name -> component``.
"""

from ramptool.api import attack_family, hookimpl
from ramptool_example.attacks import margin_pgd
from ramptool_example.backbones import tiny_mlp
from ramptool_example.combiners import ClipGradNorm
from ramptool_example.datasets import FASHION_MNIST_14
from ramptool_example.loggers import CsvLogger
from ramptool_example.methods import TRADES
from ramptool_example.pairing import jensen_shannon

RAMPTOOL_API_VERSION = 1  # the ramptool.api version this plugin is written for


@hookimpl
def register_attacks():
    return attack_family("margin", margin_pgd, "PGD on the Carlini-Wagner margin loss")


@hookimpl
def register_pairing_losses():
    return {"js": jensen_shannon}


@hookimpl
def register_combiners():
    return {"clip-grad": ClipGradNorm}


@hookimpl
def register_backbones():
    return {"tiny-mlp": tiny_mlp}


@hookimpl
def register_datasets():
    return {"fashion-mnist-14": FASHION_MNIST_14}


@hookimpl
def register_methods():
    return {"trades": TRADES}


@hookimpl
def register_loggers():
    return {"csv": CsvLogger}

"""ramptool's plugin API: everything a plugin may rely on, importable from this one module.

A plugin is a module of ``@hookimpl`` functions, one per kind of component it adds, each returning a dict
``name -> component`` (``ramptool.hookspecs``). The seven kinds and what each component must be:

- attack (``register_attacks``): an ``Attack`` wrapping an ``AttackFunction``; a family is the attacks named
  ``{family}-{norm}`` (``attack_family`` builds them), usable as ``--attack family`` in training and evaluation.
- pairing-loss (``register_pairing_losses``): a ``PairingLoss``.
- combiner (``register_combiners``): a ``Combiner`` subclass.
- backbone (``register_backbones``): a ``BackboneBuilder``.
- dataset (``register_datasets``): a ``DatasetSpec``.
- method (``register_methods``): a ``TrainingMethod`` subclass.
- logger (``register_loggers``): a ``Logger`` subclass, built as ``cls(target, run)`` (a ``LogRun``) on the first
  process of a run that names it (``--logger name=target``; the built-ins are ``--tensorboard`` and ``--wandb``).

Options: a component's parameters after the ones ramptool passes (declare them keyword-only) are its options,
set with ``--attack-option``, ``--pairing-option``, ``--combiner-option``, ``--arch-option``, ``--method-option`` or
the matching ``*_options`` table of a recipe, typed and checked against the signature before a run starts, and
recorded in the checkpoint. Annotate them ``bool``, ``int``, ``float``, ``str``, a ``Literal[...]`` or any of
these ``| None``, and give them defaults. Datasets take no options. ``ramptool plugins -v`` lists them.

Descriptions: ``ramptool plugins`` shows a component's ``description`` attribute, or the first sentence of its
own docstring.

Stability: the names in ``__all__`` and their documented signatures, return contracts and attributes are the
plugin API, version ``API_VERSION``; it changes only when one of them changes incompatibly. Everything else in
ramptool may change in any release.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import torch

from ramptool.attacks.base import Attack, AttackResult, input_gradients_only
from ramptool.attacks.pgd import steepest_direction
from ramptool.data.spec import DatasetSpec, FolderSplit, TensorSplit
from ramptool.errors import RamptoolError
from ramptool.loggers import Logger, LogRun
from ramptool.plugins.hookspecs import API_VERSION, hookimpl
from ramptool.plugins.registry import get
from ramptool.runtime.device import eval_mode
from ramptool.threat import lp_norm, project
from ramptool.training.combiners import Combiner, checked_backward
from ramptool.training.methods import MethodContext, TrainingMethod


class AttackFunction(Protocol):
    def __call__(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, norm: str, eps: float,
                 steps: int, **options) -> AttackResult:
        """Attack ``model`` (eval mode, [0,1] inputs -> logits) at the batch ``x`` (in [0,1]) with labels ``y``.

        Return an ``AttackResult`` whose ``x_adv`` lies in B_norm(x, eps) ∩ [0,1]^d (``project`` puts a point
        there), with the attack loss per sample (higher = more adversarial) and whether some visited point was
        misclassified. Leave the model's mode and parameter gradients alone: run inside
        ``input_gradients_only(model)``. Options are keyword-only parameters after ``steps``.
        """


class PairingLoss(Protocol):
    def __call__(self, logits_q: torch.Tensor, logits_r: torch.Tensor, **options) -> torch.Tensor:
        """RAMP's pairing term between the predictions on the q and r adversarial points of the kept subset
        (the points the model classifies correctly under the q attack), both (n_kept, classes) with graphs.

        Return a scalar: the mean over the kept points, with gradients flowing through both sides, and 0 with a
        graph attached (``logits_q.sum() * 0.0``) when nothing is kept. Options are keyword-only parameters.
        """


class BackboneBuilder(Protocol):
    def __call__(self, num_classes: int, in_chans: int, image_size: int, **options) -> torch.nn.Module:
        """A network for (N, in_chans, image_size, image_size) inputs returning (N, num_classes) logits.

        ramptool wraps it in the dataset's mean/std normalisation, so the network sees normalised inputs while
        attacks and data stay in [0,1]. Options (``--arch-option``) are keyword-only parameters; they are
        recorded in the checkpoint, which rebuilds the network with them.
        """


class DatasetLoader(Protocol):
    def __call__(self, split: str, root: Path, download: bool) -> TensorSplit | FolderSplit:
        """``DatasetSpec.load``: the ``split`` ("train" or "test") from the data folder ``root``
        (``--data-dir``). Fetch it only if ``download`` is true; when it is missing, raise ``RamptoolError``
        with one line saying where to put it."""


def attack_family(family: str, run: AttackFunction, description: str,
                  norms: Sequence[str] = ("linf", "l2", "l1"), **defaults) -> dict[str, Attack]:
    """The members of one attack family, ready to return from ``register_attacks``:
    ``{f"{family}-{norm}": Attack(run, norm, f"{description} ({norm})", defaults)}``."""
    return {f"{family}-{norm}": Attack(run, norm, f"{description} ({norm})", dict(defaults)) for norm in norms}


__all__ = [
    "API_VERSION", "hookimpl", "get", "RamptoolError",
    # attacks
    "Attack", "AttackResult", "AttackFunction", "attack_family", "input_gradients_only", "project", "lp_norm",
    "steepest_direction",
    # pairing losses, combiners, backbones, datasets, methods
    "PairingLoss", "Combiner", "checked_backward", "BackboneBuilder",
    "DatasetSpec", "DatasetLoader", "TensorSplit", "FolderSplit",
    "TrainingMethod", "MethodContext", "eval_mode",
    # loggers
    "Logger", "LogRun",
]

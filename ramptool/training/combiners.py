"""Gradient combiners: how the adversarial loss becomes a weight update (docs/METHOD.md#gradient-projection).

``none`` is plain adversarial training. ``gp`` is RAMP's per-epoch gradient projection: from the epoch's start
weights f, a natural model trains one epoch on clean CE (f_n) while the main model trains one epoch on the
adversarial objective (f_a); then, per parameter tensor, f <- f + beta * GP + (1 - beta) * g_a with
g_n = f_n - f, g_a = f_a - f, GP = cos(g_n, g_a) * g_n if the cosine is positive, else 0.
The natural epoch runs interleaved step by step with the adversarial one (same result as running it first, and
a mid-epoch checkpoint then holds both). BatchNorm running statistics are taken from the adversarial model
(the reference code averages them like weights; statistics are not gradients, and the fused model is
evaluated under attack). ``gp-step`` applies the same projection to every step's gradients instead.

Under torchrun the natural model is data-parallel like the main one: both start each epoch from identical
weights and take identical averaged steps on every rank, so every rank computes the same fusion.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ramptool.errors import RamptoolError, TrainingDiverged
from ramptool.plugins.hookspecs import hookimpl
from ramptool.runtime import distributed


def checked_backward(loss: torch.Tensor) -> None:
    """``loss.backward()``, or stop the run with one line (the last checkpoint intact) when the loss is not finite."""
    if not bool(torch.isfinite(loss)):
        raise TrainingDiverged(f"training loss became {loss.detach().item()}; stopped, the last checkpoint is intact "
                               f"(lower the learning rate or check the data)")
    loss.backward()


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """cos(a, b) of two tensors as vectors; 0 when either is zero."""
    return (a * b).sum() / (a.norm() * b.norm()).clamp_min(1e-30)


def project_gradient(g_natural: torch.Tensor, g_adversarial: torch.Tensor) -> torch.Tensor:
    """GP^l = cos(g_n, g_a) * g_n if cos > 0 else 0, for one parameter tensor."""
    cos = cosine(g_natural, g_adversarial)
    return torch.where(cos > 0, cos * g_natural, torch.zeros_like(g_natural))


def angle_degrees(cos: torch.Tensor) -> float:
    return round(math.degrees(math.acos(max(-1.0, min(1.0, float(cos))))), 3)


def combine(anchor: torch.Tensor, natural: torch.Tensor, adversarial: torch.Tensor, beta: float) -> torch.Tensor:
    """f + beta*GP + (1-beta)*g_a, written as f_a + beta*(GP - g_a) so that beta=0 returns f_a exactly."""
    g_a = adversarial - anchor
    return adversarial + beta * (project_gradient(natural - anchor, g_a) - g_a)


class Combiner:
    """Plain update: backward the training method's loss, step the optimiser. The base class of every combiner.

    ramptool builds one per run as ``cls(model, make_optimizer, **options)``: ``make_optimizer(module)`` returns
    a fresh optimiser configured like the run's own (for a second model a combiner trains alongside), and the
    options are the keyword-only parameters a subclass declares (``--combiner-option name=value``). The trainer
    then calls, per epoch, ``start_epoch``, ``train_step`` once per batch, ``end_epoch``; ``set_lr`` before
    every step; ``state_dict``/``load_state_dict`` when it checkpoints and resumes.
    """

    def __init__(self, model: torch.nn.Module, make_optimizer: Callable[[torch.nn.Module], torch.optim.Optimizer]):
        pass

    def start_epoch(self, model: torch.nn.Module) -> None:
        """Called before the first step of every epoch (also of an epoch resumed from its start)."""

    def train_step(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                   compute_loss: Callable[[], tuple[torch.Tensor, dict]], x: torch.Tensor,
                   y: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """One step on the batch (x, y); the model is in train mode.

        ``compute_loss()`` runs the training method (attack included) and returns ``(loss, stats)``: a scalar
        loss with a graph and a dict of scalar tensors. Update the model (through ``optimizer``) and return the
        detached loss and the stats, to which a combiner may add its own.
        """
        loss, stats = compute_loss()
        optimizer.zero_grad(set_to_none=True)
        checked_backward(loss)
        optimizer.step()
        return loss.detach(), stats

    def end_epoch(self, model: torch.nn.Module) -> dict | None:
        """Called after the last step of every epoch, before the checkpoint is written. What it returns (numbers,
        nested dicts of numbers) goes into the epoch's metrics.jsonl record and to the loggers."""

    def set_lr(self, lr: float) -> None:
        """The learning rate of the coming step, for optimisers the combiner owns."""

    def state_dict(self) -> dict:
        """What a resumed run needs to continue exactly: tensors and plain Python values only."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict`` returned."""


def checked_beta(beta: float) -> float:
    if not 0.0 <= beta <= 1.0:
        raise RamptoolError(f"the gradient-projection mixing weight beta must be in [0, 1], got {beta:g}")
    return beta


class EpochGradientProjection(Combiner):
    """Per-epoch fusion of natural and adversarial training deltas (RAMP's GP), mixing weight beta."""

    def __init__(self, model, make_optimizer, *, beta: float = 0.5):
        self.beta = checked_beta(beta)
        self.natural = copy.deepcopy(model)
        self.natural_parallel = distributed.data_parallel(self.natural)
        self.natural_optimizer = make_optimizer(self.natural)
        self.anchor: dict[str, torch.Tensor] | None = None

    def start_epoch(self, model):
        self.anchor = {k: v.detach().clone() for k, v in model.named_parameters()}
        self.natural.load_state_dict(model.state_dict())

    def train_step(self, model, optimizer, compute_loss, x, y):
        loss, stats = super().train_step(model, optimizer, compute_loss, x, y)
        self.natural_parallel.train()
        natural_logits = self.natural_parallel(x)
        natural_loss = distributed.global_mean(F.cross_entropy(natural_logits.float(), y), len(y))
        self.natural_optimizer.zero_grad(set_to_none=True)
        checked_backward(natural_loss)
        self.natural_optimizer.step()
        correct = (natural_logits.argmax(1) == y).float().mean().detach()
        stats = {**stats, "acc_natural": distributed.global_mean(correct, len(y))}
        return loss, stats

    @torch.no_grad()
    def end_epoch(self, model):
        """Fuse, and measure what the fusion rests on: the angle between the epoch's natural and adversarial
        updates, over the whole model and per parameter tensor, and the share of tensors projected (cos > 0;
        the others take no natural part)."""
        natural = dict(self.natural.named_parameters())
        angles, total = {}, torch.zeros(3, dtype=torch.float64)
        for name, param in model.named_parameters():
            g_n, g_a = natural[name] - self.anchor[name], param - self.anchor[name]
            angles[name] = cosine(g_n, g_a)
            total += torch.stack([(g_n * g_a).sum(), g_n.pow(2).sum(), g_a.pow(2).sum()]).double().cpu()
            param.copy_(combine(self.anchor[name], natural[name], param, self.beta))
        self.anchor = None
        overall = total[0] / (total[1].sqrt() * total[2].sqrt()).clamp_min(1e-30)
        return {"gp": {"angle": angle_degrees(overall),
                       "projected": round(sum(float(cos) > 0 for cos in angles.values()) / max(len(angles), 1), 5),
                       "angle_per_layer": {name: angle_degrees(cos) for name, cos in angles.items()}}}

    def set_lr(self, lr):
        for group in self.natural_optimizer.param_groups:
            group["lr"] = lr

    def state_dict(self):
        return {"natural": {k: v.clone() for k, v in self.natural.state_dict().items()},
                "natural_optimizer": self.natural_optimizer.state_dict(),
                "anchor": self.anchor}

    def load_state_dict(self, state):
        self.natural.load_state_dict(state["natural"])
        self.natural_optimizer.load_state_dict(state["natural_optimizer"])
        self.anchor = state["anchor"]


class StepGradientProjection(Combiner):
    """Per-step projection of the clean gradient onto the adversarial one, mixing weight beta.

    Every step, gradient = beta*GP(g_clean, g_adv) + (1-beta)*g_adv, per parameter tensor.
    """

    def __init__(self, model, make_optimizer, *, beta: float = 0.5):
        self.beta = checked_beta(beta)

    def train_step(self, model, optimizer, compute_loss, x, y):
        loss, stats = compute_loss()
        params = [p for p in model.parameters() if p.requires_grad]
        checked_backward(loss)
        adversarial = [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in params]
        optimizer.zero_grad(set_to_none=True)
        model.train()
        clean_loss = distributed.global_mean(F.cross_entropy(model(x).float(), y), len(y))
        checked_backward(clean_loss)
        with torch.no_grad():
            for p, g_a in zip(params, adversarial):
                g_n = p.grad if p.grad is not None else torch.zeros_like(p)
                p.grad = g_a + self.beta * (project_gradient(g_n, g_a) - g_a)
        optimizer.step()
        return loss.detach(), stats


@hookimpl
def register_combiners():
    return {"none": Combiner, "gp": EpochGradientProjection, "gp-step": StepGradientProjection}

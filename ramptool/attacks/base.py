"""What every attack shares: its result type, its registry entry, and the guard that keeps it off the weights."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ramptool.threat import check_inside


@dataclass
class AttackResult:
    """What an attack returns, per sample of the batch it was given."""

    x_adv: torch.Tensor  # the kept adversarial point: same shape, dtype and device as x, inside ball and box
    loss: torch.Tensor  # (N,) the attack loss at x_adv (RAMP and MAX pick the higher-loss norm per sample)
    fooled: torch.Tensor  # (N,) bool: some visited point was misclassified


@dataclass(frozen=True)
class Attack:
    """A registered attack: ``attack(model, x, y, eps, steps=10, **options) -> AttackResult``.

    ``run(model, x, y, *, norm, eps, steps, **options)`` is the attack itself, a plain function over tensors:
    ``model`` maps [0,1] inputs to logits and is in eval mode (leave its mode and parameter gradients alone:
    ``input_gradients_only`` does both), ``x`` is a batch in [0,1], ``y`` its labels, ``eps`` the radius.
    It returns an ``AttackResult`` whose points lie in B_norm(x, eps) ∩ [0,1]^d; ramptool checks that
    after every call for the norms it knows (linf, l2, l1) and stops with an error naming the attack if not.
    Its parameters after ``steps`` are its options (``--attack-option name=value``): declare them keyword-only
    with defaults.

    ``norm`` is the threat model it stays inside (``None`` for multi-norm attacks, whose eps is a dict of
    norms). ``description`` is the line ``ramptool plugins`` shows. ``defaults`` presets options of ``run``.
    ``joint``, when set, runs several norms of the same family on one batch and shares model calls between them:
    ``joint(model, x, y, [(norm, eps), ...], steps, batched=..., **options) -> [AttackResult, ...]``.
    A family is a set of attacks named ``{family}-{norm}``: ``--attack family`` trains against them and
    ``eval union --attack family`` evaluates with them.
    """

    run: Callable[..., AttackResult]
    norm: str | None
    description: str
    defaults: dict = field(default_factory=dict)
    joint: Callable[..., list[AttackResult]] | None = None

    @property
    def label(self) -> str:
        """The attack function's name and module, for error messages."""
        return f"{getattr(self.run, '__qualname__', self.run)} ({getattr(self.run, '__module__', '?')}) in {self.norm}"

    def __call__(self, model, x, y, eps, steps=10, **options) -> AttackResult:
        kwargs = {**self.defaults, **options}
        if self.norm is not None:
            kwargs["norm"] = self.norm
        result = self.run(model, x, y, eps=eps, steps=steps, **kwargs)
        if self.norm is not None:
            check_inside(x, result.x_adv, self.norm, eps, self.label)
        return result


@contextlib.contextmanager
def input_gradients_only(model: torch.nn.Module):
    """Freeze the parameters while attacking: autograd then builds no graph towards the weights (the bulk of
    an attack's cost) and parameter ``.grad`` fields cannot be touched. Train/eval mode is left as it is."""
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        with torch.enable_grad():
            yield
    finally:
        for p in frozen:
            p.requires_grad_(True)


def loss_and_input_grad(model, x_adv, y, criterion, need_grad=True):
    """One forward (and backward to the input): logits, per-sample loss, d(sum loss)/dx."""
    x_adv = x_adv.detach().requires_grad_(need_grad)
    logits = model(x_adv)
    loss = criterion(logits, y)
    grad = torch.autograd.grad(loss.sum(), x_adv)[0].detach() if need_grad else None
    return logits.detach(), loss.detach(), grad


def per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.view(-1, *([1] * (like.dim() - 1)))


def random_start(x: torch.Tensor, norm: str, eps, generator=None) -> torch.Tensor:
    """A random point of B_p(x, eps) ∩ [0,1]^d."""
    from ramptool.threat import lp_norm, project

    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    if norm == "linf":
        start = x + eps * (2 * torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) - 1)
    else:
        radius = eps * torch.rand(x.shape[0], generator=generator, device=x.device, dtype=x.dtype)
        start = x + noise * per_sample(radius / (lp_norm(noise, norm) + 1e-12), x)
    return project(x, start, norm, eps)

"""The loop every unforeseen adversary of Kang et al. (2019) shares: sign-gradient ascent on the parameters of a
perturbation family.

An adversary is a family ``x_adv = render(x, theta, context, eps)``: ``theta`` (one tensor, first dimension the
batch) is optimised and stays in the set ``project`` maps onto; ``context`` is random structure drawn once per
call and then fixed (snowflake kernels, Gabor kernels). As in advex-uar, each step is
``theta <- project(theta + step_size * sign(grad_theta CE))`` with ``step_size = eps / sqrt(steps)`` by default
(the step Laidlaw et al.'s ``UARAttack`` and advex-uar's evaluation use, in the units of eps). Unlike advex-uar,
which returns the last iterate, every iterate is evaluated and the attack keeps the highest-loss one
(``keep="loss"``, training) or a misclassified one (``keep="misclassified"``, evaluation), like ramptool's APGD.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from ramptool.attacks.base import AttackResult, input_gradients_only, per_sample
from ramptool.errors import RamptoolError

KEEP = ("loss", "misclassified")


@dataclass
class LatentAttackResult(AttackResult):
    """An ``AttackResult`` that also carries the parameters of each kept point: ``x_adv`` is
    ``render(x, theta, context, eps)``, which lets a caller check the point is inside the threat model."""

    theta: torch.Tensor | None = None
    context: dict = field(default_factory=dict)


class Adversary:
    """A perturbation family; subclasses define ``sample``, ``render``, ``project`` and ``contains``.

    Calling it runs the attack with the signature every registered attack has."""

    name = ""
    description = ""  # one line for ``ramptool plugins``
    unit = ""  # what eps measures

    def sample(self, x: torch.Tensor, eps: float, generator) -> tuple[torch.Tensor, dict]:
        """A random starting ``theta`` inside the set, and the fixed random ``context`` of this call."""
        raise NotImplementedError

    def render(self, x: torch.Tensor, theta: torch.Tensor, context: dict, eps: float) -> torch.Tensor:
        """The perturbed images, in [0,1], differentiable in ``theta``."""
        raise NotImplementedError

    def project(self, theta: torch.Tensor, context: dict, eps: float) -> torch.Tensor:
        raise NotImplementedError

    def contains(self, theta: torch.Tensor, context: dict, eps: float) -> torch.Tensor:
        """Per sample: ``theta`` is inside the set (the adversary's budget)."""
        raise NotImplementedError

    def __call__(self, model, x, y, eps, steps=10, norm=None, step_size: float | None = None,
                 keep: Literal["loss", "misclassified"] = "loss", generator=None) -> LatentAttackResult:
        # ``norm`` is what ``Attack`` passes every attack: here it can only be this adversary's own name
        return latent_attack(self, model, x, y, eps, steps=steps, step_size=step_size, keep=keep,
                             generator=generator)


def generator_device(generator, like: torch.Tensor) -> torch.device:
    """Where to draw: on the generator's device (a CPU generator then gives the same numbers for a CUDA batch),
    or on ``like``'s device with the global RNG when there is no generator."""
    return generator.device if generator is not None else like.device


def random_uniform(shape, low, high, like: torch.Tensor, generator) -> torch.Tensor:
    """Uniform draws in ``like``'s device and dtype from ``generator`` (the global RNG when it is None)."""
    draw = torch.rand(shape, generator=generator, device=generator_device(generator, like), dtype=like.dtype)
    return low + (high - low) * draw.to(like.device)


def latent_attack(adversary: Adversary, model, x, y, eps, steps=10, step_size=None, keep="loss",
                  generator=None) -> LatentAttackResult:
    """``steps`` sign-gradient steps on the adversary's parameters; ``steps + 1`` forwards, ``steps`` backwards."""
    if keep not in KEEP:
        raise RamptoolError(f"keep must be 'loss' or 'misclassified', not {keep!r}")
    if not eps > 0:
        raise RamptoolError(f"{adversary.name} budget must be positive, got {eps}")
    steps = int(steps)
    step_size = float(eps) / math.sqrt(max(steps, 1)) if step_size is None else float(step_size)
    x = x.detach()
    theta, context = adversary.sample(x, eps, generator)
    best = fooled_at = None
    with input_gradients_only(model):
        for i in range(steps + 1):
            theta = theta.detach().requires_grad_(i < steps)
            x_adv = adversary.render(x, theta, context, eps)
            logits = model(x_adv)
            loss = F.cross_entropy(logits, y, reduction="none")
            grad = torch.autograd.grad(loss.sum(), theta)[0] if i < steps else None
            now = (x_adv.detach(), theta.detach(), loss.detach())
            wrong = logits.argmax(1) != y
            if best is None:
                best, fooled_at, fooled = now, now, wrong
            else:
                best = _where(now[2] > best[2], now, best)
                fooled_at = _where(wrong & ~fooled, now, fooled_at)
                fooled = fooled | wrong
            if grad is not None:
                theta = adversary.project(theta.detach() + step_size * grad.sign(), context, eps)
    kept = _where(fooled, fooled_at, best) if keep == "misclassified" else best
    return LatentAttackResult(kept[0], kept[2], fooled, theta=kept[1], context=context)


def _where(mask: torch.Tensor, new: tuple, old: tuple) -> tuple:
    return tuple(torch.where(per_sample(mask, a), a, b) for a, b in zip(new, old))

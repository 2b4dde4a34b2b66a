"""Projected gradient descent for linf / l2 / l1 (SLIDE-style sparse steps) and FGSM with random start."""

from __future__ import annotations

import torch

from ramptool.attacks.base import (
    AttackResult,
    input_gradients_only,
    loss_and_input_grad,
    per_sample,
    random_start,
)
from ramptool.attacks.losses import attack_criterion
from ramptool.errors import RamptoolError
from ramptool.threat import project


def steepest_direction(grad: torch.Tensor, x_adv: torch.Tensor, norm: str, l1_topk: float) -> torch.Tensor:
    """Unit-norm steepest-ascent direction for the norm. For l1: sign of the top ``l1_topk`` fraction of |grad|,
    ignoring coordinates pushed against the box they already sit on (SLIDE, Tramer & Boneh 2019)."""
    if norm == "linf":
        return grad.sign()
    if norm == "l2":
        return grad / per_sample(grad.flatten(1).norm(dim=1) + 1e-12, grad)
    if norm == "l1":
        blocked = ((x_adv <= 0) & (grad < 0)) | ((x_adv >= 1) & (grad > 0))
        magnitudes = grad.abs().masked_fill(blocked, 0).flatten(1)
        k = max(int(round(l1_topk * magnitudes.shape[1])), 1)
        threshold = magnitudes.topk(k, dim=1).values[:, -1:]
        direction = (grad.sign() * ((magnitudes >= threshold) & (magnitudes > 0)).view_as(grad)).to(grad.dtype)
        return direction / per_sample(direction.abs().flatten(1).sum(dim=1) + 1e-12, grad)
    raise RamptoolError(f"PGD supports linf, l2 and l1, not {norm!r}")


def default_step_size(norm: str, eps: float, steps: int) -> float:
    # an l1 step moves few coordinates, so it needs a larger share of the radius per step
    return (4.0 if norm == "l1" else 2.5) * float(eps) / max(steps, 1)


def pgd(model, x, y, norm, eps, steps=10, step_size=None, loss="ce", y_target=None, random_init=True,
        l1_topk=0.01, generator=None) -> AttackResult:
    """PGD with a fixed step; returns the highest-loss iterate."""
    criterion = attack_criterion(loss, y_target)
    step_size = default_step_size(norm, eps, steps) if step_size is None else step_size
    x = x.detach()
    with input_gradients_only(model):
        x_adv = random_start(x, norm, eps, generator) if random_init else x.clone()
        logits, loss_now, grad = loss_and_input_grad(model, x_adv, y, criterion)
        x_best, loss_best, fooled = x_adv, loss_now, logits.argmax(1) != y
        for i in range(steps):
            x_adv = project(x, x_adv + step_size * steepest_direction(grad, x_adv, norm, l1_topk), norm, eps)
            logits, loss_now, new_grad = loss_and_input_grad(model, x_adv, y, criterion, need_grad=i < steps - 1)
            grad = new_grad if new_grad is not None else grad
            fooled = fooled | (logits.argmax(1) != y)
            improved = loss_now > loss_best
            x_best = torch.where(per_sample(improved, x), x_adv, x_best)
            loss_best = torch.where(improved, loss_now, loss_best)
    return AttackResult(x_best, loss_best, fooled)


def fgsm_rs(model, x, y, norm="linf", eps=8 / 255, steps=1, step_size=None, generator=None) -> AttackResult:
    """FGSM with a uniform random start and step 1.25*eps (Wong et al. 2020); linf only, one step."""
    if norm != "linf":
        raise RamptoolError("FGSM-RS is an linf attack")
    criterion = attack_criterion("ce")
    step_size = 1.25 * float(eps) if step_size is None else step_size
    x = x.detach()
    with input_gradients_only(model):
        x_start = random_start(x, "linf", eps, generator)
        _, _, grad = loss_and_input_grad(model, x_start, y, criterion)
        x_adv = project(x, x_start + step_size * grad.sign(), "linf", eps)
        logits, loss_now, _ = loss_and_input_grad(model, x_adv, y, criterion, need_grad=False)
    return AttackResult(x_adv, loss_now, logits.argmax(1) != y)

"""MSD: multi steepest descent (Maini et al. 2020). Every step tries the linf, l2 and l1 steepest-ascent steps,
each projected onto its own ball, and keeps per sample the one with the highest loss."""

from __future__ import annotations

import torch

from ramptool.attacks.base import AttackResult, input_gradients_only, loss_and_input_grad, per_sample
from ramptool.attacks.losses import attack_criterion
from ramptool.attacks.pgd import default_step_size, steepest_direction
from ramptool.threat import project


def msd(model, x, y, eps: dict, steps=10, step_sizes: dict | None = None, l1_topk=0.01) -> AttackResult:
    """``eps`` maps each norm to its radius; the result lies in the union of the balls (inside one per sample)."""
    criterion = attack_criterion("ce")
    norms = list(eps)
    step_sizes = {p: (step_sizes or {}).get(p, default_step_size(p, eps[p], steps)) for p in norms}
    x = x.detach()
    with input_gradients_only(model):
        x_adv = x.clone()
        logits, loss_best, grad = loss_and_input_grad(model, x_adv, y, criterion)
        x_best, fooled = x_adv, logits.argmax(1) != y
        for _ in range(steps):
            candidates, losses = [], []
            for p in norms:
                step = step_sizes[p] * steepest_direction(grad, x_adv, p, l1_topk)
                candidate = project(x, x_adv + step, p, eps[p])
                with torch.no_grad():
                    candidate_logits = model(candidate)
                candidates.append(candidate)
                losses.append(criterion(candidate_logits, y))
                fooled = fooled | (candidate_logits.argmax(1) != y)
            choice = torch.stack(losses).argmax(dim=0)
            x_adv = torch.stack(candidates).gather(
                0, choice.view(1, -1, *([1] * (x.dim() - 1))).expand(1, *x.shape)).squeeze(0)
            _, loss_now, grad = loss_and_input_grad(model, x_adv, y, criterion)
            improved = loss_now > loss_best
            x_best = torch.where(per_sample(improved, x), x_adv, x_best)
            loss_best = torch.where(improved, loss_now, loss_best)
    return AttackResult(x_best, loss_best, fooled)

"""APGD (Croce & Hein 2020) for linf and l2, and APGD-l1 with sparse steps ("Mind the box", Croce & Hein 2021).

Written as one plain function over tensors, in the shape of E-AT's ``apgd_train``. Per-sample bookkeeping is
done with masks (``torch.where``), so the iteration loop has no per-sample Python loop and no host-device sync
(the only exception: ``early_stop`` checks once per checkpoint whether every point is already fooled).
"""

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
from ramptool.threat import project, project_l1


def checkpoint_schedule(steps: int) -> list[int]:
    """Iterations (0-based) after which linf/l2 APGD checks its step size.

    Integer form of p_0=0, p_1=0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), as AutoAttack computes it.
    """
    window = max(int(0.22 * steps), 1)
    shrink, minimum = max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
    marks, at = [], -1
    while at + window < steps:
        at += window
        marks.append(at)
        window = max(window - shrink, minimum)
    return marks


def _sparse_sign_step(grad: torch.Tensor, topk: torch.Tensor) -> torch.Tensor:
    """sign(grad) on the top-``topk`` fraction of coordinates by |grad|, scaled to unit l1 norm."""
    n_features = grad[0].numel()
    magnitudes = grad.abs().flatten(1)
    cut_index = ((1.0 - topk) * n_features).long().clamp(0, n_features - 1)
    threshold = magnitudes.sort(dim=1)[0].gather(1, cut_index[:, None])
    direction = grad.sign() * (magnitudes >= threshold).view_as(grad)
    count = direction.abs().flatten(1).sum(dim=1)
    return direction / per_sample(count + 1e-10, grad)


def apgd(model, x, y, norm, eps, steps=10, loss="ce", y_target=None, random_init=False, l1_sparsity=0.05,
         keep="loss", early_stop=False, generator=None) -> AttackResult:
    """APGD in B_norm(x, eps) ∩ [0,1]^d.

    ``keep="loss"`` returns the highest-loss point (training); ``keep="misclassified"`` returns, for points that
    were fooled at some iterate, that misclassified iterate (evaluation, like AutoAttack). ``l1_sparsity`` is
    APGD-l1's initial top-k fraction: 0.05 for training, 0.2 for evaluation.
    """
    if norm not in ("linf", "l2", "l1"):
        raise RamptoolError(f"APGD supports linf, l2 and l1, not {norm!r}")
    if keep not in ("loss", "misclassified"):
        raise RamptoolError(f"keep must be 'loss' or 'misclassified', not {keep!r}")
    criterion = attack_criterion(loss, y_target)
    n = x.shape[0]
    n_features = x[0].numel()
    x = x.detach()

    with input_gradients_only(model):
        x_adv = random_start(x, norm, eps, generator) if random_init else x.clone()
        logits, loss_now, grad = loss_and_input_grad(model, x_adv, y, criterion)
        x_best, loss_best, grad_best = x_adv.clone(), loss_now.clone(), grad.clone()
        fooled = logits.argmax(1) != y
        x_fooled = x_adv.clone()
        x_adv_old = x_adv.clone()

        if norm == "l1":
            window = max(int(0.04 * steps), 1)
            checkpoints = set(range(window - 1, steps, window))
            topk = torch.full((n,), float(l1_sparsity), device=x.device)
            sparsity_old = torch.full((n,), float(n_features), device=x.device)
            step = torch.full((n,), float(eps), device=x.device, dtype=x.dtype)
        else:
            marks = checkpoint_schedule(steps)
            checkpoints = set(marks)
            windows = dict(zip(marks, [marks[0] + 1] + [b - a for a, b in zip(marks, marks[1:])]))
            step = torch.full((n,), 2.0 * float(eps), device=x.device, dtype=x.dtype)
            loss_history = [loss_now]
            loss_best_last_check = loss_best.clone()
            reduced_last_check = torch.ones(n, dtype=torch.bool, device=x.device)

        for i in range(steps):
            momentum_delta = x_adv - x_adv_old
            x_adv_old = x_adv
            step_b = per_sample(step, x)
            if norm == "l1":
                x_adv = project_l1(x, x_adv + step_b * _sparse_sign_step(grad, topk), eps)
            else:
                if norm == "linf":
                    direction = grad.sign()
                else:
                    direction = grad / per_sample(grad.flatten(1).norm(dim=1) + 1e-12, grad)
                z = project(x, x_adv + step_b * direction, norm, eps)
                a = 0.75 if i > 0 else 1.0
                x_adv = project(x, x_adv + (z - x_adv) * a + momentum_delta * (1 - a), norm, eps)

            logits, loss_now, new_grad = loss_and_input_grad(model, x_adv, y, criterion,
                                                             need_grad=i < steps - 1)
            grad = new_grad if new_grad is not None else grad
            wrong = logits.argmax(1) != y
            x_fooled = torch.where(per_sample(wrong, x), x_adv, x_fooled)
            fooled = fooled | wrong

            improved = loss_now > loss_best
            x_best = torch.where(per_sample(improved, x), x_adv, x_best)
            grad_best = torch.where(per_sample(improved, x), grad, grad_best)
            loss_best = torch.where(improved, loss_now, loss_best)

            if norm != "l1":
                loss_history.append(loss_now)
            if i not in checkpoints or i == steps - 1:
                continue
            if norm == "l1":
                sparsity = (x_best - x).flatten(1).ne(0).sum(dim=1).to(topk.dtype)
                restart = sparsity / sparsity_old < 0.95
                topk = sparsity / n_features / 1.5
                step = torch.where(restart, torch.full_like(step, float(eps)), step / 1.5)
                step = step.clamp(float(eps) / 10.0, float(eps))
                sparsity_old = sparsity
            else:
                k = windows[i]
                recent = torch.stack(loss_history[-(k + 1):])
                increases = (recent[1:] > recent[:-1]).sum(dim=0)
                oscillating = increases <= 0.75 * k
                no_progress = ~reduced_last_check & (loss_best_last_check >= loss_best)
                restart = oscillating | no_progress
                reduced_last_check = restart
                loss_best_last_check = loss_best.clone()
                step = torch.where(restart, step / 2.0, step)
            x_adv = torch.where(per_sample(restart, x), x_best, x_adv)
            grad = torch.where(per_sample(restart, x), grad_best, grad)
            if early_stop and bool(fooled.all()):
                break

    if keep == "misclassified":
        x_out = torch.where(per_sample(fooled, x), x_fooled, x_best)
        with torch.no_grad():
            out_loss = criterion(model(x_out), y)
        return AttackResult(x_out, out_loss, fooled)
    return AttackResult(x_best, loss_best, fooled)

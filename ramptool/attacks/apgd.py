"""APGD (Croce & Hein 2020) for linf and l2, and APGD-l1 with sparse steps ("Mind the box", Croce & Hein 2021).

Written as plain functions over tensors, in the shape of E-AT's ``apgd_train``. Per-sample bookkeeping is done
with masks (``torch.where``), so the iteration loop has no per-sample Python loop and no host-device sync (the
only exception: ``early_stop`` checks once per checkpoint whether every point is already fooled).

``apgd_joint`` runs several APGD instances (one per threat model) on the same batch, as RAMP and MAX need: every
iterate of every instance is still evaluated exactly as a lone ``apgd`` would, but the instances share the first
evaluation at x (no random start: it is the same forward/backward for all) and can send their iterates through
the model as one concatenated batch, which keeps a GPU busier than two half-size calls.
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


class _APGDRun:
    """One APGD instance between model evaluations: ``propose`` the next iterate, ``observe`` the model on it."""

    def __init__(self, x, y, norm, eps, steps, l1_sparsity, x_start):
        if norm not in ("linf", "l2", "l1"):
            raise RamptoolError(f"APGD supports linf, l2 and l1, not {norm!r}")
        self.x, self.y, self.norm, self.eps, self.steps = x, y, norm, eps, steps
        self.x_adv = x_start
        n, self.n_features = x.shape[0], x[0].numel()
        if norm == "l1":
            window = max(int(0.04 * steps), 1)
            self.checkpoints = set(range(window - 1, steps, window))
            self.topk = torch.full((n,), float(l1_sparsity), device=x.device)
            self.sparsity_old = torch.full((n,), float(self.n_features), device=x.device)
            self.step = torch.full((n,), float(eps), device=x.device, dtype=x.dtype)
        else:
            marks = checkpoint_schedule(steps)
            self.checkpoints = set(marks)
            self.windows = dict(zip(marks, [marks[0] + 1] + [b - a for a, b in zip(marks, marks[1:])]))
            self.step = torch.full((n,), 2.0 * float(eps), device=x.device, dtype=x.dtype)
            self.reduced_last_check = torch.ones(n, dtype=torch.bool, device=x.device)

    def start(self, logits, loss, grad):
        self.grad = grad
        self.x_best, self.loss_best, self.grad_best = self.x_adv.clone(), loss.clone(), grad.clone()
        self.fooled = logits.argmax(1) != self.y
        self.x_fooled = self.x_adv.clone()
        self.x_adv_old = self.x_adv.clone()
        if self.norm != "l1":
            self.loss_history = [loss]
            self.loss_best_last_check = self.loss_best.clone()

    def propose(self, i) -> torch.Tensor:
        x, x_adv = self.x, self.x_adv
        momentum_delta = x_adv - self.x_adv_old
        self.x_adv_old = x_adv
        step_b = per_sample(self.step, x)
        if self.norm == "l1":
            self.x_adv = project_l1(x, x_adv + step_b * _sparse_sign_step(self.grad, self.topk), self.eps)
        else:
            if self.norm == "linf":
                direction = self.grad.sign()
            else:
                direction = self.grad / per_sample(self.grad.flatten(1).norm(dim=1) + 1e-12, self.grad)
            z = project(x, x_adv + step_b * direction, self.norm, self.eps)
            a = 0.75 if i > 0 else 1.0
            self.x_adv = project(x, x_adv + (z - x_adv) * a + momentum_delta * (1 - a), self.norm, self.eps)
        return self.x_adv

    def observe(self, i, logits, loss_now, new_grad) -> bool:
        """Take in the model's answer at the proposed iterate; True when a step-size checkpoint was passed."""
        x, x_adv = self.x, self.x_adv
        grad = new_grad if new_grad is not None else self.grad
        wrong = logits.argmax(1) != self.y
        self.x_fooled = torch.where(per_sample(wrong, x), x_adv, self.x_fooled)
        self.fooled = self.fooled | wrong

        improved = loss_now > self.loss_best
        self.x_best = torch.where(per_sample(improved, x), x_adv, self.x_best)
        self.grad_best = torch.where(per_sample(improved, x), grad, self.grad_best)
        self.loss_best = torch.where(improved, loss_now, self.loss_best)

        if self.norm != "l1":
            self.loss_history.append(loss_now)
        if i not in self.checkpoints or i == self.steps - 1:
            self.grad = grad
            return False
        if self.norm == "l1":
            sparsity = (self.x_best - x).flatten(1).ne(0).sum(dim=1).to(self.topk.dtype)
            restart = sparsity / self.sparsity_old < 0.95
            self.topk = sparsity / self.n_features / 1.5
            step = torch.where(restart, torch.full_like(self.step, float(self.eps)), self.step / 1.5)
            self.step = step.clamp(float(self.eps) / 10.0, float(self.eps))
            self.sparsity_old = sparsity
        else:
            k = self.windows[i]
            recent = torch.stack(self.loss_history[-(k + 1):])
            increases = (recent[1:] > recent[:-1]).sum(dim=0)
            oscillating = increases <= 0.75 * k
            no_progress = ~self.reduced_last_check & (self.loss_best_last_check >= self.loss_best)
            restart = oscillating | no_progress
            self.reduced_last_check = restart
            self.loss_best_last_check = self.loss_best.clone()
            self.step = torch.where(restart, self.step / 2.0, self.step)
        self.x_adv = torch.where(per_sample(restart, x), self.x_best, x_adv)
        self.grad = torch.where(per_sample(restart, x), self.grad_best, grad)
        return True

    def result(self, keep, model, criterion) -> AttackResult:
        if keep == "misclassified":
            x_out = torch.where(per_sample(self.fooled, self.x), self.x_fooled, self.x_best)
            with torch.no_grad():
                out_loss = criterion(model(x_out), self.y)
            return AttackResult(x_out, out_loss, self.fooled)
        return AttackResult(self.x_best, self.loss_best, self.fooled)


def _evaluate(model, points, y, loss, y_target, need_grad, batched):
    """Logits, per-sample loss and input gradient at each of ``points`` (each a batch shaped like x)."""
    if not batched or len(points) == 1:
        criterion = attack_criterion(loss, y_target)
        return [loss_and_input_grad(model, p, y, criterion, need_grad) for p in points]
    k = len(points)
    criterion = attack_criterion(loss, None if y_target is None else y_target.repeat(k))
    logits, losses, grad = loss_and_input_grad(model, torch.cat(points), y.repeat(k), criterion, need_grad)
    grads = grad.chunk(k) if grad is not None else [None] * k
    return list(zip(logits.chunk(k), losses.chunk(k), grads))


def apgd_joint(model, x, y, threats, steps=10, loss="ce", y_target=None, random_init=False, l1_sparsity=0.05,
               keep="loss", early_stop=False, generator=None, batched=False) -> list[AttackResult]:
    """One APGD instance per ``(norm, eps)`` in ``threats`` on the same batch; one result per threat.

    Each instance follows exactly the iterates a lone ``apgd`` call would. ``batched=True`` evaluates the
    instances' iterates in one forward/backward over their concatenation (exact in eval mode, where a sample's
    output does not depend on its batch). Without a random start the first evaluation, at x, is shared.
    """
    if keep not in ("loss", "misclassified"):
        raise RamptoolError(f"keep must be 'loss' or 'misclassified', not {keep!r}")
    criterion = attack_criterion(loss, y_target)
    x = x.detach()
    runs = [_APGDRun(x, y, norm, eps, steps, l1_sparsity,
                     random_start(x, norm, eps, generator) if random_init else x.clone())
            for norm, eps in threats]

    with input_gradients_only(model):
        if random_init:
            answers = _evaluate(model, [run.x_adv for run in runs], y, loss, y_target, True, batched)
        else:
            answers = _evaluate(model, [x], y, loss, y_target, True, batched) * len(runs)
        for run, answer in zip(runs, answers):
            run.start(*answer)

        active = runs
        for i in range(steps):
            points = [run.propose(i) for run in active]
            answers = _evaluate(model, points, y, loss, y_target, i < steps - 1, batched)
            checked = [run.observe(i, *answer) for run, answer in zip(active, answers)]
            if early_stop:
                active = [run for run, check in zip(active, checked) if not (check and bool(run.fooled.all()))]
                if not active:
                    break

    return [run.result(keep, model, criterion) for run in runs]


def apgd(model, x, y, norm, eps, steps=10, loss="ce", y_target=None, random_init=False, l1_sparsity=0.05,
         keep="loss", early_stop=False, generator=None) -> AttackResult:
    """APGD in B_norm(x, eps) ∩ [0,1]^d.

    ``keep="loss"`` returns the highest-loss point (training); ``keep="misclassified"`` returns, for points that
    were fooled at some iterate, that misclassified iterate (evaluation, like AutoAttack). ``l1_sparsity`` is
    APGD-l1's initial top-k fraction: 0.05 for training, 0.2 for evaluation.
    """
    return apgd_joint(model, x, y, [(norm, eps)], steps=steps, loss=loss, y_target=y_target,
                      random_init=random_init, l1_sparsity=l1_sparsity, keep=keep, early_stop=early_stop,
                      generator=generator)[0]

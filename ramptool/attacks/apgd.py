"""APGD (Croce & Hein 2020) for linf and l2, and APGD-l1 with sparse steps ("Mind the box", Croce & Hein 2021).

Plain functions over tensors that follow AutoAttack's ``autopgd_base.py`` step for step: the same step sizes,
momentum, step-size checkpoints (its loss record starts at zero, so the first oscillation check compares the
first step's loss with 0), l1 sparsity adaptation, and, for a given starting point, the l1 sparsity taken from
that start. ``large_eps`` is AutoAttack's l1 schedule (``decr_eps_pgd``): 3x, 2x then 1x eps for 30%, 30% and
40% of the steps, each stage starting from the previous stage's highest-loss point projected into its ball.
Random starts for evaluation are drawn per point by ``base.autoattack_start`` and passed as ``x_init``.

Per-sample bookkeeping uses masks (``torch.where``), so the loop has no per-sample Python loop and, without
``drop_fooled``, never waits for the device: no value is read back and nothing is gathered by a boolean mask
(tests/test_attacks_sync.py). ``drop_fooled`` takes a point out of the batch at the first iterate that fools it (a
host sync per step): its outcome is settled, the other points' iterates are unchanged, and an evaluation spends
nothing more on it.

``apgd_joint`` runs several APGD instances (one per threat model) on the same batch, as RAMP and MAX need: every
instance follows exactly the iterates a lone ``apgd`` would, but without a given start they share the first
evaluation at x, and ``batched`` sends their iterates through the model as one concatenated batch, which keeps a
GPU busier than several small calls.
"""

from __future__ import annotations

import math

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

KEEP = ("loss", "misclassified")


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


def large_eps_stages(eps: float, steps: int) -> list[tuple[float, int]]:
    """AutoAttack's l1 large-eps schedule: (3 eps, ceil(0.3 steps)), (2 eps, ceil(0.3 steps)), (eps, the rest)."""
    if steps < 3:
        raise RamptoolError(f"the l1 large-eps schedule needs at least 3 steps, got {steps}")
    first = math.ceil(0.3 * steps)
    return [(3.0 * eps, first), (2.0 * eps, first), (float(eps), steps - 2 * first)]


def _sparse_sign_step(grad: torch.Tensor, topk: torch.Tensor) -> torch.Tensor:
    """sign(grad) on the top-``topk`` fraction of coordinates by |grad|, scaled to unit l1 norm."""
    n_features = grad[0].numel()
    magnitudes = grad.abs().flatten(1)
    cut_index = ((1.0 - topk) * n_features).long().clamp(0, n_features - 1)
    threshold = magnitudes.sort(dim=1)[0].gather(1, cut_index[:, None])
    direction = grad.sign() * (magnitudes >= threshold).view_as(grad)
    count = direction.abs().flatten(1).sum(dim=1)
    return direction / per_sample(count + 1e-10, grad)


def _l0(delta: torch.Tensor) -> torch.Tensor:
    return delta.flatten(1).ne(0).sum(dim=1).float()


class _APGDRun:
    """One APGD instance on its own points, as a sequence of model evaluations: ``request`` gives the next point
    to evaluate, ``answer`` takes the model's logits, loss and input gradient there. Each stage (one, or the three
    of the large-eps schedule) starts with an evaluation at its starting point."""

    # state with one entry per point still in the batch; ``_select`` keeps the rows of the points that stay
    PER_POINT = ("positions", "x", "y", "y_target", "x_adv", "x_adv_old", "grad", "x_best", "loss_best",
                 "grad_best", "fooled", "x_fooled", "loss_fooled", "step", "loss_best_last_check",
                 "reduced_last_check", "topk", "sparsity_old")

    def __init__(self, x, y, norm, stages, x_start, loss, y_target, l1_sparsity, keep, drop_fooled):
        if norm not in ("linf", "l2", "l1"):
            raise RamptoolError(f"APGD supports linf, l2 and l1, not {norm!r}")
        if keep not in KEEP:
            raise RamptoolError(f"keep must be 'loss' or 'misclassified', not {keep!r}")
        attack_criterion(loss, y_target)  # an unknown loss, or a targeted one without targets, fails here
        for name in self.PER_POINT:
            setattr(self, name, None)
        self.norm, self.stages, self.loss, self.keep, self.drop_fooled = norm, stages, loss, keep, drop_fooled
        self.l1_sparsity, self.n_features = l1_sparsity, x[0].numel()
        self.x, self.y, self.y_target = x, y, y_target
        self.positions = torch.arange(x.shape[0], device=x.device)
        self.out_x = x.clone()
        self.out_loss = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
        self.out_fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        self.stage, self.finished = 0, x.shape[0] == 0
        self._begin_stage(x_start)

    def _begin_stage(self, x_start):
        x, n, device = self.x, self.x.shape[0], self.x.device
        self.eps, self.steps = self.stages[self.stage]
        self.i = None  # the starting point is still to be evaluated
        if self.stage > 0:
            self.x_adv = project(x, x_start, self.norm, self.eps)
            # until the new start is evaluated, a point that leaves takes its start and is not fooled
            self.x_best, self.fooled = self.x_adv, torch.zeros_like(self.fooled)
        else:
            self.x_adv = x_start
        if self.norm == "l1":
            window = max(int(0.04 * self.steps), 1)
            self.checkpoints = set(range(window - 1, self.steps, window))
            if self.l1_sparsity is None or self.stage > 0:  # AutoAttack's rule for a given start: its sparsity
                self.sparsity_old = _l0(self.x_adv - x)
                self.topk = self.sparsity_old / self.n_features / 1.5
            else:
                self.topk = torch.full((n,), float(self.l1_sparsity), device=device)
                self.sparsity_old = torch.full((n,), float(self.n_features), device=device)
            self.step = torch.full((n,), float(self.eps), device=device, dtype=x.dtype)
        else:
            marks = checkpoint_schedule(self.steps)
            self.checkpoints = set(marks)
            self.windows = dict(zip(marks, [marks[0] + 1] + [b - a for a, b in zip(marks, marks[1:])])) if marks else {}
            self.step = torch.full((n,), 2.0 * float(self.eps), device=device, dtype=x.dtype)
            self.reduced_last_check = torch.ones(n, dtype=torch.bool, device=device)

    @property
    def last_stage(self) -> bool:
        return self.stage == len(self.stages) - 1

    def criterion(self):
        return attack_criterion(self.loss, self.y_target)

    def request(self) -> tuple[torch.Tensor, bool]:
        """(point, whether its input gradient is needed): the next evaluation this instance wants."""
        if self.i is None:
            return self.x_adv, self.steps > 0
        # the last iterate of a stage needs no gradient: no step follows it
        return self._propose(self.i), self.i < self.steps - 1

    def answer(self, logits, loss, grad) -> None:
        if self.i is None:
            self._start(logits, loss, grad)
            self.i = 0
        else:
            self._observe(self.i, logits, loss, grad)
            self.i += 1
        if self.drop_fooled and self.last_stage:
            self._drop_fooled()
        if not self.finished and self.i == self.steps:
            if self.last_stage:
                self._flush()
                self.finished = True
            else:
                self.stage += 1
                self._begin_stage(self.x_best)

    def _start(self, logits, loss, grad):
        self.grad = grad
        self.x_best, self.loss_best, self.grad_best = self.x_adv.clone(), loss.clone(), grad
        self.fooled = logits.argmax(1) != self.y
        self.x_fooled, self.loss_fooled = self.x_adv.clone(), loss.clone()
        self.x_adv_old = self.x_adv.clone()
        self.loss_best_last_check = self.loss_best.clone()
        if self.norm != "l1":
            self.loss_history = [torch.zeros_like(loss)]

    def _propose(self, i) -> torch.Tensor:
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

    def _observe(self, i, logits, loss_now, new_grad):
        x, x_adv = self.x, self.x_adv
        grad = new_grad if new_grad is not None else self.grad
        wrong = logits.argmax(1) != self.y
        self.x_fooled = torch.where(per_sample(wrong, x), x_adv, self.x_fooled)
        self.loss_fooled = torch.where(wrong, loss_now, self.loss_fooled)
        self.fooled = self.fooled | wrong

        improved = loss_now > self.loss_best
        self.x_best = torch.where(per_sample(improved, x), x_adv, self.x_best)
        self.grad_best = torch.where(per_sample(improved, x), grad, self.grad_best)
        self.loss_best = torch.where(improved, loss_now, self.loss_best)

        if self.norm != "l1":
            self.loss_history.append(loss_now)
        if i not in self.checkpoints or i == self.steps - 1:
            self.grad = grad
            return
        if self.norm == "l1":
            sparsity = _l0(self.x_best - x)
            restart = sparsity / self.sparsity_old < 0.95
            self.topk = sparsity / self.n_features / 1.5
            step = torch.where(restart, torch.full_like(self.step, float(self.eps)), self.step / 1.5)
            self.step = step.clamp(float(self.eps) / 10.0, float(self.eps))
            self.sparsity_old = sparsity
        else:
            k = self.windows[i]
            recent = torch.stack(self.loss_history[-(k + 1):])
            self.loss_history = self.loss_history[-1:]
            increases = (recent[1:] > recent[:-1]).sum(dim=0)
            oscillating = increases <= 0.75 * k
            no_progress = ~self.reduced_last_check & (self.loss_best_last_check >= self.loss_best)
            restart = oscillating | no_progress
            self.reduced_last_check = restart
            self.loss_best_last_check = self.loss_best.clone()
            self.step = torch.where(restart, self.step / 2.0, self.step)
        self.x_adv = torch.where(per_sample(restart, x), self.x_best, x_adv)
        self.grad = torch.where(per_sample(restart, x), self.grad_best, grad)

    def _drop_fooled(self):
        if not self.finished and bool(self.fooled.any()):
            self._remove(self.fooled)

    def leave(self, gone: torch.Tensor) -> None:
        """Take out the points whose positions (in the whole batch) are marked in ``gone``."""
        if not self.finished:
            mask = gone[self.positions]
            if bool(mask.any()):
                self._remove(mask)

    def _remove(self, mask):
        self._flush(mask)
        self._select(~mask)
        self.finished = self.x.shape[0] == 0

    def _flush(self, mask=None):
        """Write the outcome of the points in ``mask`` (default: all still here) into the whole batch's result.
        Without a mask nothing is gathered by a boolean mask, whose size the host would have to wait for."""

        def rows(value):
            return value if mask is None else value[mask]

        positions, x_best, loss_best = rows(self.positions), rows(self.x_best), rows(self.loss_best)
        # a misclassified point counts only in the last stage's ball: earlier large-eps stages are outside it
        fooled = rows(self.fooled) if self.last_stage else torch.zeros_like(rows(self.fooled))
        if self.keep == "misclassified":
            x_best = torch.where(per_sample(fooled, x_best), rows(self.x_fooled), x_best)
            loss_best = torch.where(fooled, rows(self.loss_fooled), loss_best)
        self.out_x[positions], self.out_loss[positions], self.out_fooled[positions] = x_best, loss_best, fooled

    def _select(self, keep):
        for name in self.PER_POINT:
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value[keep])
        if self.norm != "l1":
            self.loss_history = [loss[keep] for loss in self.loss_history]

    def result(self) -> AttackResult:
        return AttackResult(self.out_x, self.out_loss, self.out_fooled)


def _evaluate(model, runs, batched):
    """Answer every run's request: one model call per run, or one over their concatenation (``batched``; exact
    in eval mode, where a sample's output does not depend on its batch)."""
    requests = [run.request() for run in runs]
    if not batched or len(runs) == 1:
        answers = [loss_and_input_grad(model, point, run.y, run.criterion(), need_grad)
                   for run, (point, need_grad) in zip(runs, requests)]
    else:
        sizes = [point.shape[0] for point, _ in requests]
        need_grad = any(need for _, need in requests)
        points = torch.cat([point for point, _ in requests]).detach().requires_grad_(need_grad)
        logits = model(points)
        losses = [run.criterion()(chunk, run.y) for run, chunk in zip(runs, logits.split(sizes))]
        grads = (torch.autograd.grad(torch.cat(losses).sum(), points)[0].detach().split(sizes) if need_grad
                 else [None] * len(runs))
        answers = [(chunk.detach(), loss.detach(), grad if need else None)
                   for chunk, loss, grad, (_, need) in zip(logits.split(sizes), losses, grads, requests)]
    for run, answer in zip(runs, answers):
        run.answer(*answer)


def run_lockstep(model, runs, batched=False, drop_together=False) -> None:
    """Step APGD instances together until each has finished (instances may differ in length). With
    ``drop_together`` (instances on the same points, each dropping its fooled points) a point fooled by one
    instance leaves them all: for union accuracy one success is enough."""
    with input_gradients_only(model):
        active = [run for run in runs if not run.finished]
        while active:
            _evaluate(model, active, batched)
            if drop_together and len(runs) > 1:
                broken = torch.stack([run.out_fooled for run in runs]).any(dim=0)
                for run in active:
                    run.leave(broken)
            active = [run for run in active if not run.finished]


def apgd_joint(model, x, y, threats, steps=10, loss="ce", y_target=None, random_init=False, l1_sparsity=0.05,
               keep="loss", drop_fooled=False, generator=None, batched=False, x_init=None, large_eps=False,
               drop_together=False) -> list[AttackResult]:
    """One APGD instance per ``(norm, eps)`` in ``threats`` on the same batch; one result per threat.

    Each instance follows exactly the iterates a lone ``apgd`` call would. ``batched=True`` evaluates the
    instances' iterates in one forward/backward over their concatenation. Starting from x (no ``random_init``,
    no ``x_init``), the first evaluation is shared. ``x_init`` is one start per threat; ``loss`` and ``y_target``
    are one for all or a list with one per threat; ``large_eps`` puts the l1 instances on AutoAttack's large-eps
    schedule. ``drop_together`` (with ``drop_fooled``): a point fooled by one instance leaves every instance,
    whose result then says nothing about it (union evaluation).
    """
    if drop_together and not drop_fooled:
        raise RamptoolError("drop_together needs drop_fooled")
    x = x.detach()
    if x_init is not None:
        starts, sparsity = [start.detach().clamp(0.0, 1.0) for start in x_init], None
    elif random_init:
        starts, sparsity = [random_start(x, norm, eps, generator) for norm, eps in threats], l1_sparsity
    else:
        starts, sparsity = [x] * len(threats), l1_sparsity
    losses = loss if isinstance(loss, list) else [loss] * len(threats)
    targets = y_target if isinstance(y_target, list) else [y_target] * len(threats)
    runs = []
    for (norm, eps), start, run_loss, run_target in zip(threats, starts, losses, targets):
        stages = large_eps_stages(eps, steps) if large_eps and norm == "l1" else [(eps, steps)]
        runs.append(_APGDRun(x, y, norm, stages, start, run_loss, run_target, sparsity, keep, drop_fooled))
    shared_start = x_init is None and not random_init and isinstance(loss, str) and not isinstance(y_target, list)
    if shared_start and len(runs) > 1 and not runs[0].finished:
        with input_gradients_only(model):  # every instance starts at x: one evaluation serves them all
            answer = loss_and_input_grad(model, x, y, runs[0].criterion(), True)
            for run in runs:
                run.answer(*answer)
    run_lockstep(model, runs, batched, drop_together)
    return [run.result() for run in runs]


def apgd(model, x, y, norm, eps, steps=10, loss="ce", y_target=None, random_init=False, l1_sparsity=0.05,
         keep="loss", drop_fooled=False, generator=None, x_init=None, large_eps=False) -> AttackResult:
    """APGD in B_norm(x, eps) ∩ [0,1]^d.

    ``keep="loss"`` returns the highest-loss point (training); ``keep="misclassified"`` returns, for points that
    were fooled at some iterate, that misclassified iterate (evaluation, like AutoAttack). ``l1_sparsity`` is
    APGD-l1's initial top-k fraction starting from x or a uniform random start (0.05 for training, AutoAttack's
    0.2 for evaluation); from a given ``x_init`` it is that start's sparsity, as in AutoAttack. ``large_eps``
    (l1 only) is AutoAttack's 3x/2x/1x eps schedule.
    """
    if large_eps and norm != "l1":
        raise RamptoolError(f"the large-eps schedule is AutoAttack's for l1, not for {norm}")
    return apgd_joint(model, x, y, [(norm, eps)], steps=steps, loss=loss, y_target=y_target,
                      random_init=random_init, l1_sparsity=l1_sparsity, keep=keep, drop_fooled=drop_fooled,
                      generator=generator, x_init=None if x_init is None else [x_init], large_eps=large_eps)[0]

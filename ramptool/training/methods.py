"""Training methods: small objects that turn a batch into a loss. One trainer runs them all.

Their losses are stated in docs/METHOD.md#ramps-objective (RAMP) and docs/METHOD.md#baselines (the others).

A method receives the model in train mode, switches it to eval mode while it attacks (APGD's BatchNorm must not
see or update batch statistics of adversarial iterates), and computes its loss in train mode. Accuracy stats are
returned as tensors so the trainer decides when to synchronise with the device.

Under torchrun every method sees its rank's slice of the global batch and a DistributedDataParallel model
(docs/METHOD.md#distributed-training): means go through ``distributed.global_mean`` so that they are means over
the global batch (RAMP's pairing loss over the points kept on every rank), random choices that must agree go
through ``distributed.agree``, and attacks run on the module inside DDP (per-rank work, no gradient reduction).
"""

from __future__ import annotations

import contextlib
import copy
import functools
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from ramptool.attacks import attack_for
from ramptool.attacks.base import AttackResult
from ramptool.errors import RamptoolError
from ramptool.plugins.hookspecs import hookimpl
from ramptool.plugins.registry import get, guarded
from ramptool.runtime import distributed
from ramptool.runtime.device import eval_mode
from ramptool.threat import check_inside


@dataclass
class MethodContext:
    """The run's settings a training method reads (ramptool fills it from the TrainConfig)."""

    norms: list[str] = field(default_factory=lambda: ["linf", "l2", "l1"])
    eps: dict[str, float] = field(default_factory=dict)
    pair: tuple[str, str] | None = None  # (q, r): q is the source norm whose correct subset is paired
    attack: str = "apgd"  # attack family: the attack for norm p is the registered "{attack}-{p}"
    attack_steps: int = 10
    attack_options: dict = field(default_factory=dict)  # options of the family's attacks, already checked
    lam: float = 0.5
    pairing: str = "kl"
    pairing_options: dict = field(default_factory=dict)
    autocast: contextlib.AbstractContextManager | None = None
    batch_attacks: bool = False  # several norms' attack iterates through the model as one batch (see attack_all)


def _in_input_dtype(result: AttackResult, x) -> AttackResult:
    """Under autocast the attack may hand back bf16: training continues in x's dtype and float losses."""
    return AttackResult(result.x_adv.to(x.dtype), result.loss.float(), result.fooled)


def _batch_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean over the global batch of per-sample values (this rank holds its slice)."""
    return distributed.global_mean(values.float().mean(), values.shape[0])


def _accuracy(logits, y):
    return _batch_mean(logits.argmax(1) == y).detach()


def _cross_entropy(logits, y):
    return distributed.global_mean(F.cross_entropy(logits, y), len(y))


class TrainingMethod:
    """Base class of training methods: a small object that turns a batch into a loss.

    ramptool builds one per run as ``cls(ctx, **options)``, with the run's ``MethodContext`` and the
    keyword-only parameters a subclass declares as its options (``--method-option name=value``); call
    ``super().__init__(ctx)`` first. The trainer calls ``loss`` once per batch inside its combiner's
    ``train_step``; ``state_dict``/``load_state_dict`` carry what must survive a resume.

    ``uses`` says which threat models the method trains against: ``"norms"`` (``--norms``), ``"pair"``
    (``--pair q,r``) or ``"none"`` (clean training); ``self.norms`` is that list, and every norm in it has an eps
    in ``ctx.eps`` (checked here).
    """

    uses = "norms"

    def __init__(self, ctx: MethodContext):
        self.ctx = ctx
        for norm in self.norms:
            if norm not in ctx.eps:
                raise RamptoolError(f"no eps for norm {norm!r}: pass --eps {norm}=VALUE")

    @property
    def norms(self) -> list[str]:
        """The norms this method trains against (see ``uses``)."""
        if self.uses == "none":
            return []
        if self.uses == "pair":
            if not self.ctx.pair or len(self.ctx.pair) != 2:
                raise RamptoolError(f"method {type(self).__name__} needs --pair q,r (two norms)")
            return list(self.ctx.pair)
        return list(self.ctx.norms)

    def _autocast(self):
        # a copy per block: one torch.autocast entered twice (nested blocks) stays on after both have ended
        return copy.copy(self.ctx.autocast) if self.ctx.autocast is not None else contextlib.nullcontext()

    def attack(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str) -> AttackResult:
        """The run's training attack (``--attack`` family, its options and steps) in ``norm`` at the run's eps,
        with the model in eval mode; the points are in x's dtype and inside the ball and box."""
        with eval_mode(model), self._autocast():
            result = attack_for(self.ctx.attack, norm)(distributed.unwrap(model), x, y, self.ctx.eps[norm],
                                                       steps=self.ctx.attack_steps, **self.ctx.attack_options)
        return _in_input_dtype(result, x)

    def attack_all(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                   norms: list[str]) -> list[AttackResult]:
        """Every norm's attack on the same batch, like ``attack`` per norm. When the attack family can run them
        jointly (APGD), they share the first evaluation at x and, with ``batch_attacks``, every later
        forward/backward too."""
        attacks = [attack_for(self.ctx.attack, norm) for norm in norms]
        joint, options = attacks[0].joint, attacks[0].defaults
        if joint is None or any(a.joint is not joint or a.defaults != options for a in attacks):
            return [self.attack(model, x, y, norm) for norm in norms]
        with eval_mode(model), self._autocast():
            results = joint(distributed.unwrap(model), x, y, [(norm, self.ctx.eps[norm]) for norm in norms],
                            steps=self.ctx.attack_steps, batched=self.ctx.batch_attacks,
                            **{**options, **self.ctx.attack_options})
        for attack, norm, result in zip(attacks, norms, results):
            check_inside(x, result.x_adv, norm, self.ctx.eps[norm], attack.label)
        return [_in_input_dtype(result, x) for result in results]

    def forward(self, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Logits of the train-mode model, under the run's autocast, as float32."""
        with self._autocast():
            return model(x).float()

    def loss(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """(scalar loss with a graph to the weights, stats): the stats are scalar tensors averaged over the epoch
        and shown in the progress line and metrics.jsonl, e.g. ``{"acc_linf": ...}``. The model is in train
        mode; attack through ``attack``/``attack_all``, which switch to eval mode and back."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        """What a resumed run needs to continue exactly: tensors and plain Python values only."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict`` returned."""


class Clean(TrainingMethod):
    """Natural training: cross-entropy on clean inputs."""

    uses = "none"

    def loss(self, model, x, y):
        logits = self.forward(model, x)
        return _cross_entropy(logits, y), {"acc_clean": _accuracy(logits, y)}


class SingleNormAT(TrainingMethod):
    """Adversarial training against one norm (linf-, l2- or l1-AT); pass exactly one norm."""

    def __init__(self, ctx):
        super().__init__(ctx)
        if len(ctx.norms) != 1:
            raise RamptoolError(f"method 'at' trains against exactly one norm, got --norms {','.join(ctx.norms)}")

    def loss(self, model, x, y):
        norm = self.norms[0]
        logits = self.forward(model, self.attack(model, x, y, norm).x_adv)
        return _cross_entropy(logits, y), {f"acc_{norm}": _accuracy(logits, y)}


class SAT(TrainingMethod):
    """SAT: per batch, one norm sampled uniformly; CE on its adversarial examples."""

    def loss(self, model, x, y):
        norm = self.norms[distributed.agree(int(torch.randint(len(self.norms), (1,))))]
        logits = self.forward(model, self.attack(model, x, y, norm).x_adv)
        return _cross_entropy(logits, y), {f"acc_{norm}": _accuracy(logits, y)}


class AVG(TrainingMethod):
    """AVG: mean of the CE losses on every norm's adversarial examples."""

    def loss(self, model, x, y):
        losses, stats = [], {}
        for norm, result in zip(self.norms, self.attack_all(model, x, y, self.norms)):
            logits = self.forward(model, result.x_adv)
            losses.append(_cross_entropy(logits, y))
            stats[f"acc_{norm}"] = _accuracy(logits, y)
        return torch.stack(losses).mean(), stats


def _worst_per_sample(results: list[AttackResult]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample, the adversarial point with the highest attack loss, and which result it came from."""
    choice = torch.stack([r.loss for r in results]).argmax(dim=0)
    stacked = torch.stack([r.x_adv for r in results])
    index = choice.view(1, -1, *([1] * (stacked.dim() - 2))).expand(1, *stacked.shape[1:])
    return stacked.gather(0, index).squeeze(0), choice


class MAX(TrainingMethod):
    """MAX: per sample, CE on the highest-loss example among all norms."""

    def loss(self, model, x, y):
        results = self.attack_all(model, x, y, self.norms)
        x_worst, _ = _worst_per_sample(results)
        logits = self.forward(model, x_worst)
        stats = {f"acc_{n}": _batch_mean(~r.fooled) for n, r in zip(self.norms, results)}
        return _cross_entropy(logits, y), {**stats, "acc_max": _accuracy(logits, y)}


class MSD(TrainingMethod):
    """MSD: one inner maximisation whose every step keeps the best of the linf/l2/l1 steepest-descent steps."""

    def loss(self, model, x, y):
        eps = {n: self.ctx.eps[n] for n in self.norms}
        with eval_mode(model), self._autocast():
            result = get("attack", "msd")(distributed.unwrap(model), x, y, eps, steps=self.ctx.attack_steps)
        logits = self.forward(model, result.x_adv.to(x.dtype))
        return _cross_entropy(logits, y), {"acc_msd": _accuracy(logits, y)}


class EAT(TrainingMethod):
    """E-AT: per batch one norm of the pair, sampled with probability proportional to 1 - its running robust
    accuracy under the training attack (0.5/0.5 until every norm has been seen)."""

    uses = "pair"

    def __init__(self, ctx):
        super().__init__(ctx)
        self.correct = torch.zeros(len(self.norms), dtype=torch.float64)
        self.seen = torch.zeros(len(self.norms), dtype=torch.float64)

    def probabilities(self) -> torch.Tensor:
        if bool((self.seen > 0).all()):
            weights = 1.0 - self.correct / self.seen
        else:
            weights = torch.full_like(self.seen, 0.5)
        if float(weights.sum()) <= 0:  # every norm fully robust so far: nothing to prefer
            weights = torch.ones_like(weights)
        return weights / weights.sum()

    def loss(self, model, x, y):
        probabilities = self.probabilities()
        index = distributed.agree(int(torch.multinomial(probabilities, 1)))
        norm = self.norms[index]
        result = self.attack(model, x, y, norm)
        # the running accuracies count every rank's points, so every rank holds the same probabilities
        counts = distributed.all_reduce_sum(torch.tensor([float((~result.fooled).sum()), float(x.shape[0])],
                                                         dtype=torch.float64))
        self.correct[index] += counts[0]
        self.seen[index] += counts[1]
        logits = self.forward(model, result.x_adv)
        # the sampling probabilities the batch was drawn with: their epoch mean is in metrics.jsonl
        chances = {f"p_{name}": probabilities[i].float() for i, name in enumerate(self.norms)}
        return _cross_entropy(logits, y), {f"acc_{norm}": _accuracy(logits, y), **chances}

    def state_dict(self):
        return {"correct": self.correct.clone(), "seen": self.seen.clone()}

    def load_state_dict(self, state):
        self.correct, self.seen = state["correct"].clone(), state["seen"].clone()


class RAMP(TrainingMethod):
    """RAMP: MAX over the key pair (q, r) plus lambda * pairing loss between q and r predictions on the points
    the model gets right under the q attack.

    Both attacks run jointly (``attack_all``): they share their first forward/backward at x. The two adversarial
    batches go through the train-mode model in two separate forwards (each batch's BatchNorm statistics are its
    own, as in E-AT/MAX); f(x*) is gathered from their logits instead of a third forward (the paper's code makes
    three).

    ``pair_on`` (``--method-option pair_on=all``) says which points the pairing loss averages over: ``q-correct``
    (the paper's: the points the model classifies correctly under the q attack) or ``all`` (every point), an
    ablation of that choice.
    """

    uses = "pair"

    def __init__(self, ctx, *, pair_on: Literal["q-correct", "all"] = "q-correct"):
        super().__init__(ctx)
        self.pairing_loss = functools.partial(guarded("pairing-loss", ctx.pairing), **ctx.pairing_options)
        self.pair_on = pair_on

    def loss(self, model, x, y):
        q, r = self.norms
        result_q, result_r = self.attack_all(model, x, y, [q, r])
        logits_q = self.forward(model, result_q.x_adv)
        logits_r = self.forward(model, result_r.x_adv)
        take_q = (result_q.loss >= result_r.loss)[:, None]
        loss_max = _cross_entropy(torch.where(take_q, logits_q, logits_r), y)
        kept = (logits_q.argmax(1) == y).detach() if self.pair_on == "q-correct" else torch.ones_like(y, dtype=bool)
        # the mean over the points kept on every rank, not over this rank's (docs/METHOD.md#distributed-training)
        loss_pair = distributed.global_mean(self.pairing_loss(logits_q[kept], logits_r[kept]), kept.sum())
        # which attack the per-sample max took, and the share of points the pairing loss averages over
        stats = {f"acc_{q}": _accuracy(logits_q, y), f"acc_{r}": _accuracy(logits_r, y),
                 "loss_pair": loss_pair.detach(), f"max_from_{r}": _batch_mean(~take_q[:, 0]).detach(),
                 "pair_kept": _batch_mean(kept).detach()}
        return loss_max + self.ctx.lam * loss_pair, stats


@hookimpl
def register_methods():
    return {"clean": Clean, "at": SingleNormAT, "sat": SAT, "avg": AVG, "max": MAX, "msd": MSD, "e-at": EAT,
            "ramp": RAMP}

"""Evaluation attacks as lists of runs, and how one run attacks a set of points.

A run is one (norm, attack, round) of an evaluation: APGD-CE restart r, APGD-T towards the (r+2)-th most likely
class, FAB-T, Square, one whole AutoAttack, or one quick APGD-CE. ``evaluate_union`` (union.py) schedules the runs
per norm (the full evaluation) or across norms on the points still robust in every norm (the union cascade).

The attack families (``SUITES``, the one dispatch point behind ``--attack``):

- ``apgd`` (default): AutoAttack's evaluation run on ramptool's APGD. ``fast`` = APGD-CE + APGD-T with
  AutoAttack's standard settings per norm (``AUTOATTACK_SETTINGS``, checked against pyautoattack by a test);
  ``standard`` adds pyautoattack's FAB-T and Square. Every APGD run draws its random start per point from
  (seed, run, point index) and a point leaves its batch once fooled, so a point's outcome does not depend on the
  other points of its batch: the cascade's union equals the full evaluation's, and any shard of the points
  gets the flags the whole set would (FAB-T, one restart, has no random start; Square draws per batch, so in
  ``standard`` its few extra breaks may differ on borderline points).
- ``autoattack``: pyautoattack itself, one run per norm (its random starts are drawn per batch).
- ``apgd-ce``: one APGD-CE run from x per norm (l1 top-k 0.2): quick, an upper bound, not AutoAttack.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ramptool.attacks import attack_families, attack_for, bind_family_options
from ramptool.attacks.apgd import apgd_joint
from ramptool.attacks.base import autoattack_start, per_sample, point_noise
from ramptool.errors import RamptoolError
from ramptool.evaluation.autoattack import autoattack_adversarial, fab_t_or_square
from ramptool.evaluation.family import family_adversarial
from ramptool.runtime.device import model_device

GRADE_AUTOATTACK = "AutoAttack"
GRADE_AUTOATTACK_LEVEL = "AutoAttack-grade"
UPPER_BOUND = "upper bound (not AutoAttack)"

# AutoAttack's standard version per norm (pyautoattack autoattack.py, _set_version('standard')): APGD-CE restarts,
# APGD-T target classes (one restart each), the l1 large-eps schedule; 100 iterations; FAB-T with 9 targets.
AUTOATTACK_SETTINGS = {
    "linf": {"restarts": 1, "targets": 9, "large_eps": False},
    "l2": {"restarts": 1, "targets": 9, "large_eps": False},
    "l1": {"restarts": 5, "targets": 5, "large_eps": True},
}
AUTOATTACK_STEPS = 100
FAB_TARGETS = 9
VERSIONS = ("fast", "standard")
# On a CPU one model call over the joint runs' concatenated iterates beats one call per run while the joint
# batch stays small (measured on the small CNN: ~2.5 ms per image at 4 images a call, ~1.3-1.6 between 48 and
# 384, 2.2 past 768); on CUDA it is always one call.
CPU_JOINT_BATCH = 384


@dataclass(frozen=True)
class Run:
    norm: str
    attack: str  # apgd-ce, apgd-t, fab-t, square, autoattack
    round: int = 0  # APGD-CE: restart; APGD-T: target rank (0 = the most likely class other than the label)

    @property
    def key(self) -> str:
        return f"{self.norm}/{self.attack}/{self.round}"

    @property
    def stream(self) -> int:
        """The run's random stream: a stable hash of its key (Python's hash() changes between processes)."""
        return zlib.crc32(self.key.encode())


@dataclass
class RunContext:
    """What a run needs besides its points."""

    model: torch.nn.Module
    eps: dict[str, float]
    version: str
    seed: int
    steps: int
    batch_size: int
    num_classes: int
    batched: bool | None  # joint runs send their iterates through the model as one batch; None: auto
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Suite:
    name: str
    grade: str
    runs: Callable[[str, str, int], list[Run]]  # (norm, version, num_classes) -> the norm's runs, in order
    # (context, runs, x, y, index, clean_logits) -> per run, its adversarial points (x where it found none).
    # Several runs (``joint``) attack the same points together; a point one of them fools leaves them all.
    attack: Callable[..., list[torch.Tensor]]
    joint: bool
    description: str
    options: dict = field(default_factory=dict)  # an attack family's options, checked and typed

    @property
    def bound(self) -> bool:
        return self.grade == UPPER_BOUND


def targets(norm: str, num_classes: int) -> int:
    """APGD-T's target classes: AutoAttack's count, at most every class but the label (AutoAttack assumes 10+)."""
    return min(AUTOATTACK_SETTINGS[norm]["targets"], num_classes - 1)


def autoattack_runs(norm: str, version: str, num_classes: int) -> list[Run]:
    if norm not in AUTOATTACK_SETTINGS:
        raise RamptoolError(f"the apgd evaluation covers {', '.join(AUTOATTACK_SETTINGS)}, not {norm!r}; "
                            f"use --attack apgd-ce for a quick upper bound with a plugin's attack")
    if num_classes < 4:
        raise RamptoolError(f"APGD-T's targeted DLR loss needs at least 4 classes, the model has {num_classes}")
    settings = AUTOATTACK_SETTINGS[norm]
    runs = [Run(norm, "apgd-ce", r) for r in range(settings["restarts"])]
    runs += [Run(norm, "apgd-t", t) for t in range(targets(norm, num_classes))]
    if version == "standard":
        runs += [Run(norm, "fab-t"), Run(norm, "square")]
    return runs


def _batches(n: int, batch_size: int):
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def attack_with_apgd(context: RunContext, runs: list[Run], x, y, index, clean_logits) -> list[torch.Tensor]:
    """AutoAttack runs on ramptool's APGD, several norms' runs of one round jointly (or pyautoattack's FAB-T /
    Square for ``standard``)."""
    if runs[0].attack in ("fab-t", "square"):
        return [fab_t_or_square(context.model, x, y, run.norm, context.eps[run.norm], run.attack, context.seed,
                                context.batch_size) for run in runs]
    device = model_device(context.model)
    outs = [x.clone() for _ in runs]
    for part in _batches(len(y), context.batch_size):
        xb, yb = x[part].to(device), y[part].to(device)
        starts = []
        for run in runs:
            noise = point_noise(xb, index[part], context.seed, run.stream,
                                "uniform" if run.norm == "linf" else "normal")
            # the large-eps schedule starts in the 3x ball (AutoAttack's decr_eps_pgd)
            radius = (3.0 if AUTOATTACK_SETTINGS[run.norm]["large_eps"] else 1.0) * context.eps[run.norm]
            starts.append(autoattack_start(xb, run.norm, radius, noise))
        ranked = clean_logits[part].sort(dim=1)[1].to(device)
        # APGD-T's r-th run aims at the (r+2)-th most likely class of the clean logits, as AutoAttack's does
        targets = [ranked[:, -(run.round + 2)] if run.attack == "apgd-t" else None for run in runs]
        losses = ["dlr-targeted" if run.attack == "apgd-t" else "ce" for run in runs]
        batched = context.batched
        if batched is None:
            batched = device.type == "cuda" or len(yb) * len(runs) <= CPU_JOINT_BATCH
        results = apgd_joint(context.model, xb, yb, [(run.norm, context.eps[run.norm]) for run in runs],
                             steps=context.steps, loss=losses, y_target=targets, x_init=starts,
                             keep="misclassified", drop_fooled=True, drop_together=True, large_eps=True,
                             batched=batched)
        for out, result in zip(outs, results):
            out[part] = torch.where(per_sample(result.fooled, xb), result.x_adv, xb).to(out.device)
    return outs


def pyautoattack_runs(norm: str, version: str, num_classes: int) -> list[Run]:
    return [Run(norm, "autoattack")]


def attack_with_pyautoattack(context: RunContext, runs: list[Run], x, y, index, clean_logits) -> list[torch.Tensor]:
    return [autoattack_adversarial(context.model, x, y, run.norm, context.eps[run.norm], version=context.version,
                                   batch_size=context.batch_size, seed=context.seed) for run in runs]


def single_apgd_ce_runs(norm: str, version: str, num_classes: int) -> list[Run]:
    return [Run(norm, "apgd-ce-once")]


def attack_with_single_apgd_ce(context: RunContext, runs: list[Run], x, y, index, clean_logits) -> list[torch.Tensor]:
    """ramptool's registered APGD of each norm (plugin norms included), one run from x, keeping misclassified
    iterates, AutoAttack's initial l1 top-k 0.2."""

    device = model_device(context.model)
    outs = []
    for run in runs:
        attack, out = attack_for("apgd", run.norm), x.clone()
        for part in _batches(len(y), context.batch_size):
            xb = x[part].to(device)
            result = attack(context.model, xb, y[part].to(device), context.eps[run.norm], steps=context.steps,
                            keep="misclassified", l1_sparsity=0.2, drop_fooled=True)
            out[part] = torch.where(per_sample(result.fooled, xb), result.x_adv, xb).to(out.device)
        outs.append(out)
    return outs


def attack_with_family(context: RunContext, runs: list[Run], x, y, index, clean_logits) -> list[torch.Tensor]:
    """A registered family's attack, one run per norm, its random draws from the seed (one stream per run)."""

    outs = []
    for run in runs:
        device = model_device(context.model)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(context.seed)
            outs.append(family_adversarial(context.model, x, y, run.attack, run.norm, context.eps[run.norm],
                                           context.steps, context.batch_size, context.options))
    return outs


SUITES = {
    "apgd": Suite("apgd", GRADE_AUTOATTACK_LEVEL, autoattack_runs, attack_with_apgd, joint=True,
                  description="APGD-CE + APGD-T with AutoAttack's settings on ramptool's APGD"),
    "autoattack": Suite("autoattack", GRADE_AUTOATTACK, pyautoattack_runs, attack_with_pyautoattack, joint=False,
                        description="pyautoattack"),
    "apgd-ce": Suite("apgd-ce", UPPER_BOUND, single_apgd_ce_runs, attack_with_single_apgd_ce, joint=False,
                     description="one APGD-CE run from x"),
}


def get_suite(name: str, norms: list[str] | None = None, options: dict | None = None) -> Suite:
    """A built-in evaluation, or the registered attack family ``name`` with its ``options`` checked and typed for
    its attack in each of ``norms``."""

    if name in SUITES:
        if options:
            raise RamptoolError(f"--attack-option applies to a registered attack family, not to --attack {name}")
        return SUITES[name]
    families = attack_families()
    if name not in families:
        raise RamptoolError(f"unknown evaluation attack {name!r}; use one of: {', '.join(SUITES)}, or a registered "
                            f"attack family: {', '.join(sorted(families))}")
    return Suite(name, UPPER_BOUND, lambda norm, version, num_classes: [Run(norm, name)], attack_with_family,
                 joint=False, description=f"the {name} attack family, not AutoAttack",
                 options=bind_family_options(name, norms or [], options))


def run_label(run: Run) -> str:
    """'linf apgd-t 3' (the run's place among its kind when there are several)."""
    return f"{run.norm} {run.attack}" + (f" {run.round + 1}" if run.round else "")


def plan(suite: Suite, norms: list[str], version: str, num_classes: int, union_only: bool) -> list[list[Run]]:
    """The runs in the order they are made, in groups attacked together. Full: norm by norm, one run at a time.
    Cascade: in rounds, the k-th run of every norm in round k (each norm keeps AutoAttack's order: APGD-CE
    restarts, APGD-T targets by rank, then FAB-T and Square; with AutoAttack's settings every norm has 10 APGD
    runs), a round's APGD runs together where the suite can (a point broken in one norm leaves them all), so
    the expensive later rounds only see the points every earlier run of every norm left robust."""
    per_norm = {norm: suite.runs(norm, version, num_classes) for norm in norms}
    if not union_only:
        return [[run] for norm in norms for run in per_norm[norm]]
    groups: list[list[Run]] = []
    for k in range(max(len(runs) for runs in per_norm.values())):
        round_runs = [per_norm[norm][k] for norm in norms if k < len(per_norm[norm])]
        together = [run for run in round_runs if suite.joint and run.attack not in ("fab-t", "square")]
        groups += [together] if together else []
        groups += [[run] for run in round_runs if run not in together]
    return groups


def settings_summary(suite: Suite, norms: list[str], version: str, num_classes: int, steps: int) -> dict:
    """Per norm: what the attack runs, for report provenance."""
    summary = {}
    for norm in norms:
        if suite.name == "apgd":
            settings = AUTOATTACK_SETTINGS[norm]
            summary[norm] = {"apgd-ce": {"restarts": settings["restarts"], "steps": steps, "loss": "ce"},
                             "apgd-t": {"targets": targets(norm, num_classes), "restarts": 1, "steps": steps,
                                        "loss": "dlr-targeted"},
                             "large_eps": "3x/2x/1x eps for 30/30/40% of the steps" if settings["large_eps"]
                             else None, "random_start": "per point, AutoAttack's"}
            if version == "standard":
                summary[norm]["fab-t"] = {"targets": min(FAB_TARGETS, num_classes - 1), "restarts": 1,
                                          "source": "pyautoattack"}
                summary[norm]["square"] = {"queries": 5000, "source": "pyautoattack"}
        elif suite.name == "autoattack":
            summary[norm] = {"autoattack": version, "source": "pyautoattack (its standard settings per norm)"}
        elif suite.name == "apgd-ce":
            summary[norm] = {"apgd-ce": {"restarts": 1, "steps": steps, "random_start": None,
                                         "l1_sparsity": 0.2}}
        else:
            summary[norm] = {f"{suite.name}-{norm}": {"steps": steps, "options": suite.options}}
    return summary

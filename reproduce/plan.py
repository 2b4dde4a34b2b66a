"""What ``make reproduce`` runs: every method at the same budget, as training configurations.

Fine-tuning (RAMP's main setting, scaled to a CPU): from the shipped l∞-AT model, one epoch on the first
``finetune_subset`` training points with the fine-tuning recipes' settings (Adam 5e-4, piecewise-ft, batch 128,
APGD-10 training attacks at the dataset's eps), once per seed, with l1-only AT, SAT, AVG, MAX, MSD, E-AT and RAMP
(KL, MSE and cosine pairing, each at lambda 0.5 and 1.5). The seed changes the batch order and the random
choices (SAT's and E-AT's norm per batch); the starting weights are the same checkpoint for every seed.

From scratch: E-AT, MAX, RAMP and RAMP + GP (lambda 2.0, beta 0.5: the paper's from-scratch setting), the
fmnist-ramp-scratch recipe's settings (Adam 1e-3, cosine) for ``scratch_epochs`` epochs on the first
``scratch_subset`` training points, one seed.

Every model is evaluated on the first ``test_n`` test points (``runner``).

``FULL`` (``make reproduce``) is what fits about 90 minutes on 2 CPU cores with AutoAttack-grade evaluation on
1,000 test points, which costs about 4-8 minutes per model on one core (measured): every baseline and RAMP's
defaults over 3 seeds, 22 models with the start. ``EXTENDED`` (``--extended``, about 80 more minutes on 2 cores,
measured) adds RAMP's other pairings and lambdas over the same seeds, and the from-scratch runs; it reuses every
run and evaluation of FULL. ``QUICK`` is a smoke run of the whole pipeline for CI: a few methods, tiny budgets, a
weak evaluation; its numbers mean nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ramptool.training.recipes import RECIPES_DIR

DATASET = "fashion-mnist"
START = RECIPES_DIR / "checkpoints" / "fmnist-linf-at.safetensors"
ALL_NORMS = ["linf", "l2", "l1"]
PAIR = ["linf", "l1"]  # the key pair for fine-tuning an l∞ model (docs/evidence/fmnist-pair-matrix.json)

# the fine-tuning recipes' settings (fmnist-*-finetune.toml), the same for every method
FINETUNE_BASE = dict(dataset=DATASET, epochs=1, batch_size=128, optimizer="adam", lr=5e-4, weight_decay=0.0,
                     schedule="piecewise-ft", attack="apgd", attack_steps=10)
# the fmnist-ramp-scratch recipe's settings
SCRATCH_BASE = dict(dataset=DATASET, arch="small-cnn", batch_size=128, optimizer="adam", lr=1e-3,
                    weight_decay=0.0, schedule="cosine", attack="apgd", attack_steps=10)


def _ramp(pairing: str, lam: float) -> dict:
    return dict(method="ramp", pair=PAIR, pairing=pairing, lam=lam)


# key -> (label, the method's own TrainConfig fields); RAMP_DEFAULT is the RAMP every baseline is compared with
FINETUNE_METHODS = {
    "l1": ("l1-only AT", dict(method="at", norms=["l1"])),
    "sat": ("SAT", dict(method="sat", norms=ALL_NORMS)),
    "avg": ("AVG", dict(method="avg", norms=ALL_NORMS)),
    "max": ("MAX", dict(method="max", norms=ALL_NORMS)),
    "msd": ("MSD", dict(method="msd", norms=ALL_NORMS)),
    "e-at": ("E-AT", dict(method="e-at", pair=PAIR)),
    **{f"ramp-{pairing}-{lam:g}": (f"RAMP ({name}, λ {lam:g})", _ramp(pairing, lam))
       for pairing, name in (("kl", "KL"), ("mse", "MSE"), ("cosine", "cosine")) for lam in (0.5, 1.5)},
}
# the training-attack-strength question: the same methods with a 30-step training attack
STRONG_STEPS = 30
STRONG_ATTACK_METHODS = {f"{key}-steps{STRONG_STEPS}": (f"{FINETUNE_METHODS[key][0]}, APGD-{STRONG_STEPS}",
                                                         {**FINETUNE_METHODS[key][1], "attack_steps": STRONG_STEPS})
                         for key in ("l1", "e-at", "ramp-kl-0.5")}
RAMP_DEFAULT = "ramp-kl-0.5"  # the fine-tuning defaults (lambda 0.5, KL): chosen before any result was seen
BASELINES = ("l1", "sat", "avg", "max", "msd", "e-at")
CORE_METHODS = (*BASELINES, RAMP_DEFAULT)
FIGURE_ONE = ("l1", "e-at", RAMP_DEFAULT)  # the paper's Fig. 1: l1-only, E-AT, RAMP after one epoch

SCRATCH_METHODS = {
    "e-at": ("E-AT", dict(method="e-at", pair=PAIR)),
    "max": ("MAX", dict(method="max", norms=ALL_NORMS)),
    "ramp": ("RAMP (KL, λ 2)", dict(method="ramp", pair=PAIR, pairing="kl", lam=2.0)),
    "ramp-gp": ("RAMP + GP (KL, λ 2, β 0.5)", dict(method="ramp", pair=PAIR, pairing="kl", lam=2.0, combiner="gp",
                                                   combiner_options={"beta": 0.5})),
}


@dataclass(frozen=True)
class Budget:
    """How much of everything a reproduction runs; ``evaluation`` holds options for ``evaluate_union``
    (empty: ramptool's default, AutoAttack-grade evaluation)."""

    name: str
    seeds: tuple[int, ...]
    finetune_subset: int
    scratch_subset: int
    scratch_epochs: int
    test_n: int
    corruption_n: int
    finetune_methods: tuple[str, ...] = tuple(FINETUNE_METHODS)
    scratch_methods: tuple[str, ...] = tuple(SCRATCH_METHODS)
    corruptions: tuple[str, ...] | None = None  # None: all 15
    evaluation: dict = field(default_factory=dict)
    finetune_epochs: int = 1
    single_seed_methods: tuple[str, ...] = ()  # fine-tuned with the first seed only, after every seed's runs
    curve_steps: tuple[int, ...] = ()  # learning curves: the first seed's fine-tunes keep these steps' models...
    curve_n: int = 0  # ...and each is evaluated on this many validation points

    @property
    def autoattack_grade(self) -> bool:
        return not self.evaluation


FULL = Budget("full", seeds=(0, 1, 2), finetune_subset=10_000, scratch_subset=20_000, scratch_epochs=2,
              test_n=1000, corruption_n=500, finetune_methods=CORE_METHODS, scratch_methods=())
EXTENDED = Budget("extended", seeds=(0, 1, 2), finetune_subset=10_000, scratch_subset=20_000, scratch_epochs=2,
                  test_n=1000, corruption_n=500)
# The paper's fine-tuning budget: 3 epochs over the first 50,000 training points at batch 128,
# 3 x 391 = 1,173 optimizer steps, with learning curves along the schedule on validation points.
PAPER = Budget("paper", seeds=(0, 1, 2), finetune_subset=50_000, scratch_subset=20_000, scratch_epochs=2,
               test_n=1000, corruption_n=500, finetune_methods=CORE_METHODS, scratch_methods=(), finetune_epochs=3,
               single_seed_methods=tuple(f"{key}-steps{STRONG_STEPS}" for key in FIGURE_ONE),
               curve_steps=(78, 156, 391, 782, 1173), curve_n=500)
QUICK = Budget("quick", seeds=(0, 1), finetune_subset=256, scratch_subset=256, scratch_epochs=1, test_n=24,
               corruption_n=24, finetune_methods=("l1", "e-at", RAMP_DEFAULT), scratch_methods=("ramp-gp",),
               corruptions=("gaussian_noise", "fog"), evaluation={"steps": 5}, curve_steps=(1, 2), curve_n=16)


def steps_of(budget: Budget) -> int:
    """Optimizer steps of each fine-tune of ``budget``."""
    return math.ceil(budget.finetune_subset / FINETUNE_BASE["batch_size"]) * budget.finetune_epochs


@dataclass(frozen=True)
class Job:
    """One training run: where it goes, how it is labelled, and its TrainConfig fields (``out`` aside)."""

    folder: str  # relative to the reproduction's root, e.g. "finetune/ramp-kl-0.5/seed0"
    group: str  # "finetune" or "scratch"
    key: str  # the method key in FINETUNE_METHODS / SCRATCH_METHODS
    label: str
    seed: int
    config: dict


def jobs(budget: Budget, start: str) -> list[Job]:
    """Every training run of ``budget``: the fine-tunes (seed by seed, so that an interrupted study has whole
    seeds), then the scratch runs."""
    planned = []
    runs = [(seed, key) for seed in budget.seeds for key in budget.finetune_methods]
    for seed, key in runs + [(budget.seeds[0], key) for key in budget.single_seed_methods]:
        label, fields = {**FINETUNE_METHODS, **STRONG_ATTACK_METHODS}[key]
        config = {**FINETUNE_BASE, **fields, "init": start, "subset": budget.finetune_subset, "seed": seed,
                  "epochs": budget.finetune_epochs}
        if budget.curve_steps and seed == budget.seeds[0]:
            config["keep_steps"] = list(budget.curve_steps)
        planned.append(Job(f"finetune/{key}/seed{seed}", "finetune", key, label, seed, config))
    for key in budget.scratch_methods:
        label, fields = SCRATCH_METHODS[key]
        config = {**SCRATCH_BASE, **fields, "subset": budget.scratch_subset, "epochs": budget.scratch_epochs,
                  "seed": budget.seeds[0]}
        planned.append(Job(f"scratch/{key}", "scratch", key, label, budget.seeds[0], config))
    return planned

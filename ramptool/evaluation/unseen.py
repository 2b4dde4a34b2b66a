"""Universal robustness (RAMP's Table 4): accuracy under adversaries the model never trained on, their mean and
their union (a point counts only if it survives every one of them), beside clean accuracy.

Each adversary is a registered attack family's attack (``sparse-rs`` for l0, ``uar`` for the others), run through
``family_flags`` on the clean-correct points with its own seeded generator, so the result does not depend on
which other adversaries run or in which order; per-sample flags go to ``flags.safetensors`` after each
adversary, as in ``evaluate_union``, so an interrupted evaluation resumes (``resume=True``). These are attacks,
not certificates: every accuracy but clean is an upper bound on the model's robustness to that threat model, and
no AutoAttack exists for them. Under torchrun every process evaluates every point (they agree) and the first
writes.

Budgets per dataset: CIFAR-10/100 take the paper's. Fashion-MNIST's are ramptool's calibration: for each
adversary, the budget of a sweep at which the shipped l∞-AT small CNN keeps closest to half of 300 validation
points (the last 300 training points, never a test point), so that none is trivial or hopeless for the model
being fine-tuned; bench/unseen_calibration.py is the sweep, docs/guide/unseen.md its result.
"""

from __future__ import annotations

import json
import time
import zlib
from pathlib import Path

import torch
from rich.console import Console

from ramptool.errors import RamptoolError
from ramptool.evaluation.family import family_flags
from ramptool.evaluation.flags import accuracies, clean_flags
from ramptool.evaluation.union import (
    FLAGS_FILE,
    EvaluationInterrupted,
    fingerprint,
    resumed_flags,
    sanity_warnings,
    save_flags,
    warn,
)
from ramptool.runtime import distributed
from ramptool.threat import parse_number

ADVERSARIES = ("l0", "fog", "snow", "gabor", "elastic", "jpeg-linf")
# the attack family whose attack evaluates each threat model, and its evaluation options
EVALUATION_ATTACKS = {"l0": ("sparse-rs", {})} | {name: ("uar", {"keep": "misclassified"}) for name in ADVERSARIES[1:]}
PAPER_BUDGETS = {"l0": 9, "fog": 12.0, "snow": 0.5, "gabor": 60.0, "elastic": 0.125, "jpeg-linf": 0.125}
DEFAULT_BUDGETS = {
    "cifar10": PAPER_BUDGETS,
    "cifar100": PAPER_BUDGETS,
    "fashion-mnist": {"l0": 3, "fog": 84.0, "snow": 0.2, "gabor": 62.0, "elastic": 0.5, "jpeg-linf": 1.125},
}
DEFAULT_STEPS = 100  # the paper's iterations for Kang et al.'s adversaries
DEFAULT_QUERIES = 1000  # Sparse-RS queries (its eval.py default)
UPPER_BOUND = "upper bound (attack accuracy, not AutoAttack)"


def parse_adversaries(text: str | None) -> list[str]:
    """'fog,snow' -> ['fog', 'snow']; None or '' -> all six."""
    if not text or not text.strip():
        return list(ADVERSARIES)
    names = [part.strip().lower() for part in text.split(",") if part.strip()]
    for name in names:
        if name not in ADVERSARIES:
            raise RamptoolError(f"unknown unseen adversary {name!r}; use some of: {', '.join(ADVERSARIES)}")
    if len(set(names)) != len(names):
        raise RamptoolError(f"adversary listed twice in {text!r}")
    return names


def parse_budgets(text: str | None, dataset: str, adversaries: list[str]) -> dict[str, float]:
    """'fog=0.3,l0=20' over the dataset's defaults; every adversary in ``adversaries`` must end with a budget."""
    budgets = dict(DEFAULT_BUDGETS.get(dataset, {}))
    for part in (text or "").split(","):
        if not part.strip():
            continue
        if "=" not in part:
            raise RamptoolError(f"budget entry {part!r} must look like adversary=value, e.g. fog=128")
        name, value = (piece.strip() for piece in part.split("=", 1))
        if name not in ADVERSARIES:
            raise RamptoolError(f"unknown unseen adversary {name!r}; use some of: {', '.join(ADVERSARIES)}")
        number = parse_number(value)
        if not number > 0:
            raise RamptoolError(f"budget for {name} must be positive, got {value}")
        if name == "l0" and number != int(number):
            raise RamptoolError(f"l0 budget is a number of pixels, got {value}")
        budgets[name] = number
    missing = [name for name in adversaries if name not in budgets]
    if missing:
        raise RamptoolError(f"no default budgets for {dataset}: pass --budgets with "
                            f"{', '.join(f'{name}=...' for name in missing)}")
    return {name: budgets[name] for name in adversaries}


def corruption_summary(folder, checkpoint) -> dict:
    """The mean corruption accuracy that ``eval corruptions`` wrote to ``folder`` for ``checkpoint``: its
    ``corruptions.json`` (one model) or ``<name>/corruptions.json`` (several), matched by checkpoint path."""
    folder = Path(folder)
    reports = [folder / "corruptions.json", *sorted(folder.glob("*/corruptions.json"))]
    wanted = Path(checkpoint).resolve()
    for path in reports:
        if not path.is_file():
            continue
        try:
            report = json.loads(path.read_text())
            if Path(report["checkpoint"]).resolve() == wanted:
                return {"mean": report["mean"], "n": report["n"], "corruptions": report["corruptions"],
                        "severities": report["severities"], "source": str(path)}
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise RamptoolError(f"{path} is not a report of `ramptool eval corruptions` ({error})") from None
    raise RamptoolError(f"no `eval corruptions` report for {checkpoint} in {folder}: run `ramptool eval "
                        f"corruptions --ckpt {checkpoint} --out {folder}` first")


def adversary_seed(seed: int, name: str) -> int:
    """Each adversary's own random stream: the same whichever adversaries run with it, in whatever order."""
    return seed * 1_000_003 + zlib.crc32(name.encode())


def adversary_flags(model, x, y, name: str, budget: float, steps: int = DEFAULT_STEPS,
                    queries: int = DEFAULT_QUERIES, batch_size: int = 500, seed: int = 0,
                    on_progress=None) -> torch.Tensor:
    """(N,) bool: classified correctly clean and still after the adversary (``family_flags``: only a returned
    point the model misclassifies counts as broken), its random draws from its own seeded generator.
    ``on_progress(name, attack, points, total)`` after each batch."""
    family, options = EVALUATION_ATTACKS[name]
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(adversary_seed(seed, name))
    parts = []
    for start in range(0, len(y), batch_size):
        batch = slice(start, start + batch_size)
        parts.append(family_flags(model, x[batch], y[batch], family, name, budget,
                                  steps=queries if name == "l0" else steps, batch_size=batch_size,
                                  options={**options, "generator": generator}))
        if on_progress is not None:
            on_progress(name, f"{family}-{name}", len(parts[-1]), len(y))
    return torch.cat(parts)


def evaluate_unseen(model, x: torch.Tensor, y: torch.Tensor, adversaries: list[str], budgets: dict[str, float],
                    steps: int = DEFAULT_STEPS, queries: int = DEFAULT_QUERIES, out_dir=None, resume: bool = False,
                    batch_size: int = 500, seed: int = 0, recorded_clean: float | None = None,
                    console: Console | None = None, on_progress=None) -> dict:
    """Clean accuracy, accuracy under each unseen adversary, their mean and their union, on (x, y).

    ``steps`` are the iterations of Kang et al.'s adversaries, ``queries`` Sparse-RS's query budget;
    ``on_progress(adversary, attack, points, total)`` is called as the attacks go (``ramptool.progress``)."""
    missing = [name for name in adversaries if name not in budgets]
    if missing:
        raise RamptoolError(f"no budget given for {', '.join(missing)}")
    if resume and out_dir is None:
        raise RamptoolError("resume needs the output folder of the interrupted evaluation")
    if len(y) == 0:
        raise RamptoolError("no points to evaluate")
    settings = {"evaluation": "unseen", "points": fingerprint(x, y), "n": len(y), "seed": seed, "steps": steps,
                "queries": queries}
    path = Path(out_dir) / FLAGS_FILE if out_dir is not None else None
    was_training = model.training
    model.eval()
    try:
        clean = clean_flags(model, x, y, batch_size)
        flags, seconds, attacked, resumed = resumed_flags(path, settings, budgets, clean, adversaries, resume)
        for name in adversaries:
            if name in flags:
                continue
            started = time.perf_counter()
            try:
                flags[name] = adversary_flags(model, x, y, name, budgets[name], steps, queries, batch_size, seed,
                                              on_progress)
            except KeyboardInterrupt:
                saved_note = f"; finished adversaries are saved in {path}, continue with --resume" if path else ""
                raise EvaluationInterrupted(f"evaluation interrupted during {name}{saved_note}") from None
            seconds[name] = round(time.perf_counter() - started, 3)
            attacked[name] = int(clean.sum())
            if path is not None and distributed.is_main():
                done = [n for n in adversaries if n in flags]
                save_flags(path, flags, settings, budgets, done, seconds, attacked)
    finally:
        model.train(was_training)

    accuracy = accuracies(flags, adversaries)
    accuracy["mean"] = sum(accuracy[name] for name in adversaries) / len(adversaries)
    messages = sanity_warnings(accuracy, adversaries, len(y), recorded_clean)
    for message in messages:
        warn(console, message)
    return {"n": len(y), "adversaries": list(adversaries), "budgets": {n: budgets[n] for n in adversaries},
            "steps": steps, "queries": queries, "seed": seed, "bound": UPPER_BOUND, "accuracy": accuracy,
            "seconds": {n: seconds[n] for n in adversaries}, "attacked": {n: attacked[n] for n in adversaries},
            "resumed": resumed, "warnings": messages}

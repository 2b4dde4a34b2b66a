"""Run a reproduction plan, resumably: train each job and evaluate it (and the start) on the test points,
adversarially and under common corruptions. Everything lands in one root folder; a second call skips what is
finished (``jobs``). Under torchrun every process takes part in every job: training is data-parallel and the
evaluations share out the test points (``ramptool.distributed``), and rank 0 writes."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ramptool.threat import DEFAULT_EPS
from ramptool.training.trainer import KEPT_DIR
from reproduce.jobs import NORMS, JobLog, corruption_run, evaluate_run, read_flags, say, train_run, write_json
from reproduce.plan import DATASET, START, Budget, Job, jobs
from reproduce.splits import test_points, validation_points

START_FOLDER = "start"
CURVES_FILE = "curves.json"  # every learning curve: run folder -> step -> accuracy on the validation points


@dataclass
class Measured:
    """One evaluated model: its accuracies and per-point flags on the test points, its corruption mean, and the
    training speed its run recorded (None for the start model)."""

    job: Job | None  # None: the shipped start model
    accuracy: dict[str, float]
    flags: dict[str, torch.Tensor]
    corruption_mean: float
    seconds_per_epoch: float | None
    images_per_second: float | None
    evaluation: dict  # the evaluation report (settings, seconds, ...)
    curve: dict[int, dict[str, float]] = field(default_factory=dict)  # step -> accuracy on validation points


def training_speed(run: Path) -> tuple[float, float]:
    """Mean seconds per epoch and images per second over the run's epochs (metrics.jsonl)."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return (sum(r["seconds"] for r in records) / len(records), sum(r["img_per_s"] for r in records) / len(records))


def run(budget: Budget, root: Path, start: Path = START, device: str = "auto") -> list[Measured]:
    """Train, evaluate and measure everything ``budget`` plans, in ``root``; the start model first."""
    root = Path(root)
    log = JobLog(root / "jobs.jsonl")
    planned = jobs(budget, str(start))
    eps = DEFAULT_EPS[DATASET]
    x, y = test_points(budget.test_n)
    x_corrupt, y_corrupt = test_points(budget.corruption_n)
    x_val, y_val = validation_points(budget.curve_n) if budget.curve_steps else (None, None)
    models = [(None, Path(start), root / START_FOLDER)] + [(job, root / job.folder, root / job.folder)
                                                           for job in planned]
    measured = []
    for number, (job, ckpt, folder) in enumerate(models, start=1):
        if job is not None:  # each model is evaluated right after its training: a stopped study keeps both
            say(f"[{number}/{len(models)}] train {job.folder}", flush=True)
            train_run(root / job.folder, log, device=device, **job.config)
        say(f"[{number}/{len(models)}] evaluate {folder.relative_to(root)}", flush=True)
        evaluation = evaluate_run(ckpt, folder / f"test{budget.test_n}", x, y, eps, log, **budget.evaluation)
        corruptions = corruption_run(ckpt, folder / f"corruptions{budget.corruption_n}", x_corrupt, y_corrupt, log,
                                     budget.corruptions)
        speed = training_speed(ckpt) if job is not None else (None, None)
        curve = {}
        if x_val is not None and (job is None or "keep_steps" in job.config):
            kept = {0: ckpt} if job is None else {step: ckpt / KEPT_DIR / f"step{step}.safetensors"
                                                 for step in budget.curve_steps}
            curve = {step: evaluate_run(path, folder / "curve" / f"step{step}-val{budget.curve_n}", x_val, y_val,
                                        eps, log, **budget.evaluation)["report"]["accuracy"]
                     for step, path in kept.items()}
        measured.append(Measured(job, evaluation["report"]["accuracy"], read_flags(folder / f"test{budget.test_n}",
                                                                                   NORMS),
                                 corruptions["report"]["mean"], *speed, evaluation["report"], curve))
    if x_val is not None:
        curves = {("start" if m.job is None else m.job.folder): m.curve for m in measured if m.curve}
        write_json(root / CURVES_FILE, {"validation_points": budget.curve_n, "curves": curves})
    return measured

"""Run a reproduction plan, resumably: train each job and evaluate it (and the start) on the test points,
adversarially and under common corruptions. Everything lands in one root folder; a second call skips what is
finished (``jobs``). Under torchrun every process takes part in every job: training is data-parallel and the
evaluations share out the test points (``ramptool.distributed``), and rank 0 writes."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ramptool.runtime import distributed
from ramptool.threat import DEFAULT_EPS
from ramptool.training.trainer import KEPT_DIR
from reproduce import evidence as reproduce_evidence
from reproduce.jobs import (
    CORRUPTIONS_FILE,
    NORMS,
    REPORT_FILE,
    JobLog,
    corruption_key,
    corruption_run,
    evaluate_run,
    evaluation_key,
    read_flags,
    saved_result,
    say,
    train_run,
    write_json,
)
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


def run(budget: Budget, root: Path, start: Path = START, device: str = "auto",
        evidence: Path | None = None) -> list[Measured]:
    """Train, evaluate and measure everything ``budget`` plans, in ``root``; the start model first. With
    ``evidence``, the results saved there are taken first and the folder is brought up to date after each model
    (``reproduce.evidence``): a model whose every evaluation is already saved is not trained again."""
    root = Path(root)
    if evidence is not None and distributed.is_main():
        reproduce_evidence.take(evidence, root)
    distributed.barrier()
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
        test_folder, corruption_folder = folder / f"test{budget.test_n}", folder / f"corruptions{budget.corruption_n}"
        kept = {}
        if x_val is not None and (job is None or "keep_steps" in job.config):
            kept = {0: ckpt} if job is None else {step: ckpt / KEPT_DIR / f"step{step}.safetensors"
                                                 for step in budget.curve_steps}
        curve_folders = {step: folder / "curve" / f"step{step}-val{budget.curve_n}" for step in kept}
        saved = [saved_result(test_folder / REPORT_FILE, evaluation_key(ckpt, x, y, eps, **budget.evaluation)),
                 saved_result(corruption_folder / CORRUPTIONS_FILE,
                              corruption_key(ckpt, x_corrupt, y_corrupt, budget.corruptions))]
        saved += [saved_result(curve_folders[step] / REPORT_FILE,
                               evaluation_key(path, x_val, y_val, eps, **budget.evaluation))
                  for step, path in kept.items()]
        if job is not None and None in saved:  # each model is evaluated right after its training
            say(f"[{number}/{len(models)}] train {job.folder}", flush=True)
            train_run(root / job.folder, log, device=device, **job.config)
        say(f"[{number}/{len(models)}] evaluate {folder.relative_to(root)}", flush=True)
        evaluation = evaluate_run(ckpt, test_folder, x, y, eps, log, **budget.evaluation)
        corruptions = corruption_run(ckpt, corruption_folder, x_corrupt, y_corrupt, log, budget.corruptions)
        curve = {step: evaluate_run(path, curve_folders[step], x_val, y_val, eps, log,
                                    **budget.evaluation)["report"]["accuracy"]
                 for step, path in kept.items()}
        speed = training_speed(ckpt) if job is not None else (None, None)
        measured.append(Measured(job, evaluation["report"]["accuracy"], read_flags(test_folder, NORMS),
                                 corruptions["report"]["mean"], *speed, evaluation["report"], curve))
        if evidence is not None and distributed.is_main():
            reproduce_evidence.save(root, evidence)
    if x_val is not None:
        curves = {("start" if m.job is None else m.job.folder): m.curve for m in measured if m.curve}
        write_json(root / CURVES_FILE, {"validation_points": budget.curve_n, "curves": curves})
        if evidence is not None and distributed.is_main():
            reproduce_evidence.save(root, evidence)
    return measured

"""Resumable jobs: a training run that is skipped once finished, and an evaluation cached next to its flags.

Both write a line to a job log (``JobLog``: what ran, how long, the load average before and after), so a report
can say how long each part took and how busy the machine was. Killing a study and starting it again loses at most
the job in progress: finished runs are kept (``run_finished``), an interrupted training run continues from its
last checkpoint, and an interrupted evaluation from its last finished norm (``evaluate_union``'s flags file).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from ramptool.attacks.apgd import apgd
from ramptool.checkpoints.format import STATE_FILE, run_finished
from ramptool.checkpoints.loading import load_checkpoint
from ramptool.evaluation.flags import union_flags
from ramptool.evaluation.union import FLAGS_FILE, evaluate_union, fingerprint
from ramptool.runtime import distributed
from ramptool.runtime.files import atomic_write
from ramptool.training.config import TrainConfig
from ramptool.training.trainer import train
from reproduce.splits import DATASET

NORMS = ("linf", "l2", "l1")
REPORT_FILE = "report.json"
CORRUPTIONS_FILE = "corruptions.json"


def say(*args, **kwargs) -> None:
    """``print`` on rank 0 only: under torchrun every process runs every job."""
    if distributed.is_main():
        print(*args, **kwargs)


def write_json(path: Path, document: dict) -> None:
    """``document`` as JSON in ``path``, written atomically by rank 0 while the other processes wait for it."""
    if distributed.is_main():
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(document, indent=1)))
    distributed.barrier()


def checkpoint_key(ckpt: Path) -> str:
    """``ckpt`` as a cache key: relative to the working folder when inside it, so that a checkout in another
    place (a worktree, a fresh clone) reuses the same cached evaluations."""
    path = Path(os.path.abspath(ckpt))  # not resolve(): a symlinked run folder keeps its name
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(ckpt)


def saved_result(path: Path, key: dict) -> dict | None:
    """The result saved in ``path`` if it was made with ``key``."""
    if path.exists():
        saved = json.loads(path.read_text())
        if saved.get("key") == key:
            return saved
    return None


class JobLog:
    """One JSON line per job that did work (skipped jobs are not logged), in ``path``."""

    def __init__(self, path: Path | None):
        self.path = path

    def record(self, kind: str, name: str, started: float, load_before: float, **extra) -> None:
        if self.path is None or not distributed.is_main():
            return
        entry = {"kind": kind, "name": name, "seconds": round(time.perf_counter() - started, 2),
                 "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2),
                 "threads": torch.get_num_threads(), "processes": distributed.world_size(),
                 "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"), **extra}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as handle:
            handle.write(json.dumps(entry) + "\n")

    def entries(self) -> list[dict]:
        if self.path is None or not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


def train_run(out: Path, log: JobLog, **config) -> Path:
    """A finished run in ``out`` made with ``config`` (TrainConfig fields): kept if there, continued if
    interrupted after a checkpoint, else trained. A saved run whose configuration differs is an error."""
    if run_finished(out):
        return out
    started, load = time.perf_counter(), os.getloadavg()[0]
    if (out / STATE_FILE).exists():
        train(TrainConfig(out=str(out), resume=True, progress=False, **config))
    else:
        train(TrainConfig(out=str(out), overwrite=True, progress=False, **config))
    distributed.barrier()  # rank 0's last checkpoint is written before anyone reads it
    log.record("train", str(out), started, load)
    return out


def read_flags(folder: Path, norms=NORMS) -> dict[str, torch.Tensor]:
    """The per-point flags an evaluation saved in ``folder`` (clean, each norm), plus their union."""
    saved = load_file(str(Path(folder) / FLAGS_FILE))
    flags = {name: saved[name].bool() for name in ("clean", *norms)}
    flags["union"] = union_flags(flags, norms)
    return flags


def evaluation_key(ckpt: Path, x: torch.Tensor, y: torch.Tensor, eps: dict[str, float], norms=NORMS,
                   **options) -> dict:
    """What an evaluation's cached result must have been made with to stand for ``evaluate_run``'s."""
    return {"points": fingerprint(x, y), "eps": {n: eps[n] for n in norms}, "norms": list(norms),
            "checkpoint": checkpoint_key(ckpt), "options": options}


def corruption_key(ckpt: Path, x: torch.Tensor, y: torch.Tensor, corruptions=None) -> dict:
    """The same for ``corruption_run``."""
    return {"points": fingerprint(x, y), "checkpoint": checkpoint_key(ckpt), "corruptions": list(corruptions or [])}


def evaluate_run(ckpt: Path, folder: Path, x: torch.Tensor, y: torch.Tensor, eps: dict[str, float],
                 log: JobLog, norms=NORMS, **options) -> dict:
    """The evaluation of ``ckpt`` on (x, y) with ramptool's default (AutoAttack-grade) engine, from the cache
    in ``folder`` when it was made on the same points with the same eps and options; resumed if interrupted."""
    folder = Path(folder)
    key = evaluation_key(ckpt, x, y, eps, norms, **options)
    path = folder / REPORT_FILE
    cached = saved_result(path, key)
    if cached is not None:
        return cached
    if path.exists():
        distributed.barrier()  # everyone has read it before rank 0 removes it
        if distributed.is_main():
            for stale in (path, folder / FLAGS_FILE):  # made on other points or eps: start again
                stale.unlink(missing_ok=True)
        distributed.barrier()
    started, load = time.perf_counter(), os.getloadavg()[0]
    model, _ = load_checkpoint(ckpt)
    folder.mkdir(parents=True, exist_ok=True)
    report = evaluate_union(model, x, y, list(norms), key["eps"], out_dir=folder, resume=True, **options)
    kept = {name: value for name, value in report.items() if name != "adversarial"}
    result = {"key": key, "report": kept}
    write_json(path, result)  # after it, the flags and the report are there for every rank
    log.record("evaluate", str(folder), started, load, points=len(y))
    return result


def training_attack_run(ckpt: Path, folder: Path, x: torch.Tensor, y: torch.Tensor, eps: dict[str, float],
                        norms, steps: int, device: torch.device) -> dict[str, float]:
    """Accuracy of ``ckpt`` per norm under the attack it was trained with (``apgd`` with its training defaults:
    ``steps`` iterations, one start from x), cached in ``folder`` like ``evaluate_run``; the points are shared
    out over the processes."""
    key = {"points": fingerprint(x, y), "eps": {n: eps[n] for n in norms}, "checkpoint": checkpoint_key(ckpt),
           "steps": steps}
    path = Path(folder) / "training-attack.json"
    cached = saved_result(path, key)
    if cached is not None:
        return cached["accuracy"]
    model, _ = load_checkpoint(ckpt)
    model = model.to(device).eval()

    def correct(x_part: torch.Tensor, y_part: torch.Tensor) -> dict[str, torch.Tensor]:
        x_part, y_part = x_part.to(device), y_part.to(device)
        flags = {}
        for norm in norms:
            x_adv = apgd(model, x_part, y_part, norm, eps[norm], steps=steps).x_adv
            with torch.no_grad():
                flags[norm] = model(x_adv).argmax(1) == y_part
        return flags

    flags = distributed.map_points(correct, x, y)
    accuracy = {norm: flags[norm].float().mean().item() for norm in norms}
    write_json(path, {"key": key, "accuracy": accuracy})
    return accuracy


def corruption_run(ckpt: Path, folder: Path, x: torch.Tensor, y: torch.Tensor, log: JobLog,
                   corruptions=None) -> dict:
    """``evaluate_corruptions`` of ``ckpt`` on (x, y), cached in ``folder``; the corrupted images themselves are
    cached where ``ramptool eval corruptions`` keeps them, so they are made once for every model."""
    from ramptool.evaluation.corruptions import default_cache_dir, evaluate_corruptions

    key = corruption_key(ckpt, x, y, corruptions)
    path = Path(folder) / CORRUPTIONS_FILE
    cached = saved_result(path, key)
    if cached is not None:
        return cached
    started, load = time.perf_counter(), os.getloadavg()[0]
    model, _ = load_checkpoint(ckpt)
    report = evaluate_corruptions(model, x, y, corruptions=corruptions, dataset=DATASET,
                                  cache_dir=default_cache_dir())
    result = {"key": key, "report": report}
    write_json(path, result)
    log.record("corruptions", str(folder), started, load, points=len(y))
    return result

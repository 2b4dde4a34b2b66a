"""A reproduction's evidence: the small files that hold its results (each evaluation's report and per-point
flags, each run's metrics, the job log, the learning curves), without the weights.

A plan longer than one sitting on one machine continues on another from its evidence: ``take`` copies it into a
fresh run folder, where every model whose evaluations are all there counts as done and is not trained again
(``runner``), and ``save`` copies the run folder's evidence back after each model, so that what finished survives
the machine. The cached results carry their keys (points, eps, checkpoint path), so evidence made on other points
or at another budget is never mistaken for this plan's.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ramptool.runtime.files import atomic_write

EVIDENCE_FILES = ("report.json", "flags.safetensors", "corruptions.json", "training-attack.json", "metrics.jsonl",
                  "jobs.jsonl", "curves.json")


def _copy(source: Path, destination: Path, replace: bool) -> int:
    copied = 0
    for path in sorted(source.rglob("*")):
        if path.name not in EVIDENCE_FILES or path.is_symlink() or not path.is_file():
            continue
        target = destination / path.relative_to(source)
        if target.exists() and (not replace or target.read_bytes() == path.read_bytes()):
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, lambda tmp, path=path: shutil.copyfile(path, tmp))
        copied += 1
    return copied


def take(evidence: Path, root: Path) -> int:
    """Copy the evidence in ``evidence`` into the run folder ``root`` where ``root`` lacks it; the number of
    files copied. What ``root`` already holds is its own newer work and is kept."""
    return _copy(Path(evidence), Path(root), replace=False) if Path(evidence).is_dir() else 0


def save(root: Path, evidence: Path) -> int:
    """Copy the run folder's evidence into ``evidence``, replacing what changed; the number of files copied."""
    return _copy(Path(root), Path(evidence), replace=True)

"""The ``Logger`` base class and what every logger shares (``ramptool.loggers`` says how runs use them)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path

from ramptool.errors import RamptoolError


def scalars(record: dict, prefix: str = "") -> dict[str, float]:
    """The numbers of a (nested) record under slash-joined names; the epoch is the step, not a scalar."""
    found: dict[str, float] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            found.update(scalars(value, f"{name}/"))
        elif isinstance(value, int | float) and not isinstance(value, bool) and name != "epoch":
            found[name] = float(value)
    return found


@dataclass(frozen=True)
class LogRun:
    """What a logger is told about the run it logs: ``kind`` 'train' or 'eval'; ``folder`` the run folder or the
    evaluation's --out; ``name`` the folder's name; ``config`` the run's settings (JSON-able); ``saved`` what this
    logger's ``state()`` returned before the run was interrupted (empty for a new run)."""

    kind: str
    folder: Path
    name: str
    config: dict
    saved: dict = field(default_factory=dict)


class Logger:
    """The base class of every logger. ramptool builds one per run, on the first process only, as
    ``cls(target, run)``: ``target`` is what the user gave (a folder, a project, a URI), ``run`` a ``LogRun``.

    The trainer calls ``log_step`` every ``--log-every`` optimizer steps (the training scalars averaged over
    those steps: loss, the method's per-norm accuracies and what else it reports, lr, img/s), ``log_epoch`` with
    every metrics.jsonl record, and ``close`` at the end; an evaluation calls ``log_evaluation`` with its report.
    Raise ``RamptoolError`` (one line) for a target that cannot be used.
    """

    def __init__(self, target: str, run: LogRun):
        self.target, self.run = target, run

    def log_step(self, values: dict[str, float], step: int) -> None:
        """Training scalars at optimizer step ``step`` (counted from the run's start)."""

    def log_epoch(self, record: dict, step: int) -> None:
        """A metrics.jsonl record (nested: the per-epoch evaluation, a combiner's numbers) at the end of its
        epoch, ``step`` optimizer steps into the run."""

    def log_evaluation(self, name: str, table: dict[str, dict[str, float]], images: list[Path]) -> None:
        """An evaluation report ``name`` (union, corruptions, ...): ``table`` model -> column -> number (the
        accuracies as fractions), and the figures it wrote."""

    def state(self) -> dict:
        """What a resumed run needs to continue this log (JSON-able); saved with every checkpoint."""
        return {}

    def close(self) -> None:
        """The run is over (or stopping): flush and release what the logger holds."""


def needs(package: str, flag: str, extra: str):
    """Import an optional dependency, or one line saying how to install it."""
    try:
        return importlib.import_module(package)
    except ImportError:
        raise RamptoolError(f"{flag} needs the {package} package: pip install 'ramptool[{extra}]'") from None

"""Progress of long work: a live bar on a terminal, and in a log file (no terminal: SLURM, nohup, a pipe) one line
per task every ``LOG_EVERY_SECONDS`` (and, once it has had one, when the task ends) with its count, rate and ETA,
as timm and Lightning write to logs.

Evaluation engines report ``on_progress(task, detail, done, total)``: ``done`` more units of ``total`` for
``task`` (units are point-attacks, so a bar reaches its end even when later attacks skip the points already
fooled). The trainer drives a ``progress_display`` directly, one task per epoch.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

ProgressCallback = Callable[[str, str, int, int], None]
# how often a log file gets a line per task; RAMPTOOL_PROGRESS_SECONDS changes it (e.g. for a busy log)
LOG_EVERY_SECONDS = float(os.environ.get("RAMPTOOL_PROGRESS_SECONDS", "30"))


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}"


@dataclass
class _LoggedTask:
    description: str
    total: int
    completed: int
    fields: dict = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)
    logged: float = field(default_factory=time.perf_counter)

    def __post_init__(self):
        self.first = self.completed
        self.lines = 0

    def line(self) -> str:
        elapsed = time.perf_counter() - self.started
        rate = (self.completed - self.first) / elapsed if elapsed > 0 else 0.0
        eta = _clock((self.total - self.completed) / rate) if rate > 0 else "?"
        shown = "  ".join(str(value) for value in self.fields.values() if value)
        return (f"{self.description}  {self.completed}/{self.total} ({100 * self.completed / max(self.total, 1):.0f}%)"
                f"  {_clock(elapsed)} elapsed, eta {eta}" + (f"  {shown}" if shown else ""))


class LogLines:
    """The part of rich's Progress the trainer uses (``add_task``, ``update``), written as lines to a log."""

    def __init__(self, console: Console, every: float | None = None):
        self.console, self.every, self.tasks = console, LOG_EVERY_SECONDS if every is None else every, []

    def add_task(self, description: str, total: int, completed: int = 0, **fields) -> int:
        self.tasks.append(_LoggedTask(description, total, completed, fields))
        return len(self.tasks) - 1

    def update(self, task_id: int, advance: int = 0, **fields) -> None:
        task = self.tasks[task_id]
        task.completed += advance
        task.fields.update(fields)
        now = time.perf_counter()
        # the closing line only for a task long enough to have had one: a short one stays silent
        if now - task.logged >= self.every or (task.completed >= task.total and task.lines):
            task.logged, task.lines = now, task.lines + 1
            self.console.print(task.line(), highlight=False, soft_wrap=True)

    def __enter__(self) -> LogLines:
        return self

    def __exit__(self, *exc) -> None:
        return None


def progress_display(console: Console, *columns) -> Progress | LogLines:
    """A live bar with ``columns`` on a terminal, log lines elsewhere."""
    return Progress(*columns, console=console) if console.is_terminal else LogLines(console)


@contextmanager
def task_progress(console: Console) -> Iterator[ProgressCallback]:
    progress = progress_display(console, TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                                TextColumn("{task.fields[detail]}"))
    tasks: dict[str, int] = {}

    def update(task: str, detail: str, done: int, total: int) -> None:
        if task not in tasks:
            tasks[task] = progress.add_task(task, total=total, detail=detail)
        progress.update(tasks[task], advance=done, detail=detail)

    with progress:
        yield update

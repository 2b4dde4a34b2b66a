"""Live progress of long evaluations: one bar per task (a norm, an eps sweep) with its current step and an ETA.

The engines report ``on_progress(task, detail, done, total)``: ``done`` more units of ``total`` for ``task``
(units are point-attacks, so a bar reaches its end even when later attacks skip the points already fooled).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

ProgressCallback = Callable[[str, str, int, int], None]


@contextmanager
def task_progress(console: Console) -> Iterator[ProgressCallback]:
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[detail]}"),
                        console=console)
    tasks: dict[str, int] = {}

    def update(task: str, detail: str, done: int, total: int) -> None:
        if task not in tasks:
            tasks[task] = progress.add_task(task, total=total, detail=detail)
        progress.update(tasks[task], advance=done, detail=detail)

    with progress:
        yield update

"""Loggers: where a run's numbers go besides metrics.jsonl and the reports (TensorBoard, Weights & Biases, or a
plugin's, through ``register_loggers``).

A logger is a ``Logger`` subclass registered under a name; a run opens the ones it is given as
``{name: target}`` (``--tensorboard DIR`` is ``tensorboard=DIR``, ``--wandb PROJECT`` is ``wandb=PROJECT``,
``--logger NAME=TARGET`` any other) on its first process only. What a logger must keep to continue after a resume
(W&B's run id) it returns from ``state()``; the trainer saves that in the training state and hands it back.
"""

from __future__ import annotations

from pathlib import Path

from ramptool.errors import RamptoolError
from ramptool.loggers.base import Logger, LogRun, scalars
from ramptool.loggers.tensorboard import TensorBoardLogger
from ramptool.loggers.wandb import WandbLogger
from ramptool.plugins.hookspecs import hookimpl
from ramptool.plugins.registry import get

__all__ = ["Logger", "LogRun", "Loggers", "check_loggers", "open_loggers", "parse_targets", "scalars", "wanted"]



class Loggers:
    """The loggers of one run, called together; empty on every process but the first."""

    def __init__(self, loggers: dict[str, Logger]):
        self.loggers = loggers

    def log_step(self, values: dict[str, float], step: int) -> None:
        for logger in self.loggers.values():
            logger.log_step(values, step)

    def log_epoch(self, record: dict, step: int) -> None:
        for logger in self.loggers.values():
            logger.log_epoch(record, step)

    def log_evaluation(self, name: str, table: dict[str, dict[str, float]], images: list[Path]) -> None:
        for logger in self.loggers.values():
            logger.log_evaluation(name, table, images)

    def state(self) -> dict:
        return {name: logger.state() for name, logger in self.loggers.items()}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for logger in self.loggers.values():
            logger.close()


def wanted(tensorboard: str | None = None, wandb: str | None = None, others: dict[str, str] | None = None
           ) -> dict[str, str]:
    """name -> target of the loggers that the options ask for."""
    return {**({"tensorboard": tensorboard} if tensorboard else {}), **({"wandb": wandb} if wandb else {}),
            **(others or {})}


def parse_targets(entries: list[str]) -> dict[str, str]:
    """['mlflow=http://host:5000', ...] -> {'mlflow': 'http://host:5000', ...}."""
    targets = {}
    for entry in entries:
        name, equals, target = entry.partition("=")
        if not (equals and name.strip() and target.strip()):
            raise RamptoolError(f"--logger: {entry!r} is not name=target (e.g. mlflow=http://localhost:5000)")
        targets[name.strip()] = target.strip()
    return targets


def check_loggers(targets: dict[str, str]) -> None:
    """An unknown logger name is one line listing the known ones (checked on every process, before any work)."""
    for name in targets:
        get("logger", name)


def open_loggers(targets: dict[str, str], kind: str, folder, config: dict, saved: dict | None = None,
                 main: bool = True) -> Loggers:
    """The loggers ``targets`` names (name -> target), opened on the first process (``main``); ``saved`` maps
    each name to what its ``state()`` returned before the run was interrupted."""
    check_loggers(targets)
    if not main:
        return Loggers({})
    folder, saved = Path(folder), saved or {}
    opened: dict[str, Logger] = {}
    try:
        for name, target in targets.items():
            run = LogRun(kind, folder, folder.resolve().name, config, dict(saved.get(name) or {}))
            opened[name] = get("logger", name)(target, run)
    except BaseException:
        Loggers(opened).__exit__()
        raise
    return Loggers(opened)


@hookimpl
def register_loggers():
    return {"tensorboard": TensorBoardLogger, "wandb": WandbLogger}

"""``--tensorboard DIR``: every scalar of a metrics.jsonl record as a TensorBoard scalar, one step per epoch.

Nested records (the per-epoch evaluation) become slash-separated tags: ``eval/union``, ``eval/linf``.
"""

from __future__ import annotations

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


class TensorboardLog:
    """A SummaryWriter on ``folder`` for the lifetime of a ``with`` block."""

    def __init__(self, folder):
        try:
            # optional dependency (pip install 'ramptool[tensorboard]')
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise RamptoolError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
        self.writer = SummaryWriter(log_dir=str(Path(folder)))

    def write(self, record: dict) -> None:
        for tag, value in scalars(record).items():
            self.writer.add_scalar(tag, value, global_step=record["epoch"])
        self.writer.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.writer.close()

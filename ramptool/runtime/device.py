"""Where a model runs: the device a run asks for, the device a model is on, and eval mode for a block."""

from __future__ import annotations

import contextlib
import os

import torch

from ramptool.errors import RamptoolError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RamptoolError("--device cuda asked for, but no CUDA device is available")
    if name != "cpu" and not name.startswith("cuda"):
        raise RamptoolError(f"unknown device {name!r}; use auto, cpu or cuda")
    return torch.device(name)


# On a CPU, small models run fastest with one intra-op thread per process, the more so on a busy machine, where
# torch's default (one thread per core) made the small CNN 10-20x slower (bench/threads.py measures it). One thread
# also makes the numbers independent of the machine's core count.
DEFAULT_CPU_THREADS = 1


def set_threads(requested: int | None, device: torch.device) -> int:
    """Torch's intra-op threads for this process: ``requested``, else what $OMP_NUM_THREADS says (torch reads it),
    else DEFAULT_CPU_THREADS on a CPU and torch's own default on a GPU; the number in force."""
    if requested is not None:
        torch.set_num_threads(requested)
    elif "OMP_NUM_THREADS" not in os.environ and torch.device(device).type == "cpu":
        torch.set_num_threads(DEFAULT_CPU_THREADS)
    return torch.get_num_threads()


def model_device(model) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


@contextlib.contextmanager
def eval_mode(model):
    """The model in eval mode inside the block, back in the mode it had after it."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)

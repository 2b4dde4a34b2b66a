"""Where a model runs: the device a run asks for, the device a model is on, and eval mode for a block."""

from __future__ import annotations

import contextlib

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

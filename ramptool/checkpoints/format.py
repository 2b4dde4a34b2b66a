"""Self-describing checkpoints: weights in safetensors, metadata (JSON) in the safetensors header, and the
training state (``state.pt``) read with ``torch.load(weights_only=True)``: nothing here unpickles arbitrary
objects. Writes are atomic (``ramptool.runtime.files``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ramptool.errors import RamptoolError
from ramptool.models import robustbench
from ramptool.runtime.files import atomic_write
from ramptool.version import __version__

METADATA_KEY = "ramptool"
MODEL_FILE = "model.safetensors"
STATE_FILE = "state.pt"
# what a checkpoint's metadata must hold to rebuild its model, and the type of each
REQUIRED_METADATA = {"arch": str, "num_classes": int, "input_shape": list}


def save_checkpoint(path, model: torch.nn.Module, metadata: dict[str, Any]) -> None:
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    header = {METADATA_KEY: json.dumps({**metadata, "ramptool_version": __version__}, default=str)}
    atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=header))


def resolve(path) -> Path:
    """A checkpoint path, or a run folder holding ``model.safetensors``."""
    path = Path(path)
    if path.is_dir():
        path = path / MODEL_FILE
    if not path.is_file():
        raise RamptoolError(f"checkpoint not found: {path}")
    return path


def run_finished(run) -> bool:
    """Whether the run folder holds a checkpoint of a run that completed all its epochs."""
    return (Path(run) / MODEL_FILE).exists() and bool((read_metadata(run) or {}).get("finished"))


def _is_safetensors(path: Path) -> bool:
    with open(path, "rb") as handle:
        head = handle.read(9)
    if len(head) < 9:
        return False
    header_len = int.from_bytes(head[:8], "little")
    return head[8:9] == b"{" and 0 < header_len <= path.stat().st_size


def read_metadata(path) -> dict[str, Any] | None:
    """The ramptool metadata of a checkpoint (what ramptool records of a RobustBench zoo model, before its
    weights are read), or None for a plain (foreign) weights file."""

    if robustbench.is_zoo_name(path):
        return robustbench.parse(path).metadata()
    path = resolve(path)
    if not _is_safetensors(path):
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as error:
        raise RamptoolError(f"{path} is not a readable checkpoint ({error})") from None
    if METADATA_KEY not in header:
        return None
    try:
        metadata = json.loads(header[METADATA_KEY])
    except json.JSONDecodeError as error:
        raise RamptoolError(f"{path}: its ramptool metadata is not valid JSON ({error.msg} at character "
                            f"{error.pos}); the file was damaged or edited") from None
    if not isinstance(metadata, dict):
        raise RamptoolError(f"{path}: its ramptool metadata is not a JSON object")
    return metadata


def check_metadata(metadata: dict, path) -> None:
    """The fields a model is rebuilt from must be there, with the right types."""
    for key, kind in REQUIRED_METADATA.items():
        if key not in metadata:
            raise RamptoolError(f"{path}: its ramptool metadata lacks {key!r}; the file was damaged or edited")
        if not isinstance(metadata[key], kind) or isinstance(metadata[key], bool):
            raise RamptoolError(f"{path}: metadata {key!r} should be a {kind.__name__}, got {metadata[key]!r}")
    if not isinstance(metadata.get("arch_options", {}), dict):
        raise RamptoolError(f"{path}: metadata 'arch_options' should be an object, got {metadata['arch_options']!r}")
    for key in ("mean", "std"):  # None: the network takes [0,1] pixels itself
        if not isinstance(metadata.get(key), (list, type(None))):
            raise RamptoolError(f"{path}: metadata {key!r} should be a list or null, got {metadata[key]!r}")
    shape = metadata["input_shape"]
    if len(shape) != 3 or not all(isinstance(v, int) and v > 0 for v in shape) or metadata["num_classes"] <= 0:
        raise RamptoolError(f"{path}: metadata input_shape {shape} / num_classes {metadata['num_classes']} "
                            f"do not describe a model")


def read_weights(path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file, or of a torch file loaded with ``weights_only=True``."""
    path = resolve(path)
    try:
        if _is_safetensors(path):
            return load_file(str(path))
        loaded = torch.load(str(path), map_location="cpu", weights_only=True)
    except (SafetensorError, OSError, RuntimeError, ValueError, EOFError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise RamptoolError(f"{path} is not a readable checkpoint: {first[:200]}") from None
    except Exception as error:  # weights_only refuses pickled objects with UnpicklingError and friends
        raise RamptoolError(f"{path} refused: it holds pickled objects, not plain tensors "
                            f"({type(error).__name__}); only tensors are loaded") from None
    for key in ("state_dict", "model", "model_state_dict", "net"):
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
            break
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise RamptoolError(f"{path} does not hold a state_dict of tensors")
    return loaded


def save_state(path, state: dict) -> None:
    """Training state (optimiser, combiner, RNG, counters): tensors and plain Python values only."""
    atomic_write(Path(path), lambda tmp: torch.save(state, tmp))


def load_state(path, mmap: bool = False) -> dict:
    """A training state written by ``save_state`` (``mmap``: map tensors lazily, to read the small parts)."""
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as error:
        raise RamptoolError(f"cannot resume from {path}: {type(error).__name__}: "
                            f"{str(error).splitlines()[0][:200] if str(error) else ''}") from None

"""Self-describing checkpoints: weights in safetensors, metadata (JSON) in the safetensors header, and the
training state (``state.pt``) read with ``torch.load(weights_only=True)``: nothing here unpickles arbitrary
objects. Writes are atomic (``ramptool.runtime.files``).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ramptool.errors import RamptoolError
from ramptool.models import robustbench
from ramptool.runtime.files import atomic_write
from ramptool.runtime.rundir import SET_ASIDE
from ramptool.version import __version__

METADATA_KEY = "ramptool"
MODEL_FILE = "model.safetensors"
STATE_FILE = "state.pt"
# what a checkpoint's metadata must hold to rebuild its model, and the type of each
REQUIRED_METADATA = {"arch": str, "num_classes": int, "input_shape": list}


def _as_os_errors(write):
    """``write`` with the write errors of safetensors (SafetensorError) and torch.save (RuntimeError), e.g. on a
    full disk, raised as the OSError they are, which every caller handles."""

    def writing(tmp):
        try:
            write(tmp)
        except (SafetensorError, RuntimeError) as error:
            first = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise OSError(first[:200]) from None

    return writing


def save_checkpoint(path, model: torch.nn.Module, metadata: dict[str, Any]) -> None:
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    header = {METADATA_KEY: json.dumps({**metadata, "ramptool_version": __version__}, default=str)}
    atomic_write(Path(path), _as_os_errors(lambda tmp: save_file(tensors, tmp, metadata=header)))


def resolve(path) -> Path:
    """A checkpoint path, or a run folder holding ``model.safetensors``."""
    path = Path(path)
    if path.is_dir():
        folder, path = path, path / MODEL_FILE
        if not path.is_file() and (folder / SET_ASIDE / MODEL_FILE).is_file():
            path = folder / SET_ASIDE / MODEL_FILE  # an --overwrite killed before its first checkpoint left it aside
    if not path.is_file():
        raise RamptoolError(f"checkpoint not found: {path}")
    return path


def run_finished(run) -> bool:
    """Whether the run folder holds a checkpoint of a run that completed all its epochs."""
    return (Path(run) / MODEL_FILE).exists() and bool((read_metadata(run) or {}).get("finished"))


def _head(path: Path, size: int) -> bytes:
    """The first ``size`` bytes of ``path``; one line when it cannot be read (permissions, a device file)."""
    try:
        with open(path, "rb") as handle:
            return handle.read(size)
    except OSError as error:
        raise RamptoolError(f"cannot read {path}: {error.strerror or error}") from None


def _is_safetensors(path: Path) -> bool:
    head = _head(path, 9)
    if len(head) < 9:
        return False
    header_len = int.from_bytes(head[:8], "little")
    return head[8:9] == b"{" and 0 < header_len <= path.stat().st_size


def _is_torch_file(path: Path) -> bool:
    """torch.save's zip archive, or the legacy format, which starts with a pickle protocol mark."""
    head = _head(path, 4)
    return head == b"PK\x03\x04" or head[:1] == b"\x80"


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
    except RecursionError:
        raise RamptoolError(f"{path}: its ramptool metadata is nested too deeply to be a checkpoint's; the file was "
                            f"damaged or edited") from None
    if not isinstance(metadata, dict):
        raise RamptoolError(f"{path}: its ramptool metadata is not a JSON object")
    return metadata


# Bounds on what a header may ask the model to be, checked before anything is built: a 3 MB file must not make
# ramptool allocate terabytes (num_classes 1e12, 200000x200000 inputs, a width of 1e6).
MAX_CLASSES = 100_000
MAX_CHANNELS = 64
MAX_SIDE = 4096
MAX_OPTION_INTEGER = 65_536
# a backbone option read from a file may shape the network, never make ramptool open a file or load weights
LOADING_OPTIONS = {"pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "pretrained_strict", "checkpoint_path",
                   "cache_dir", "file", "url", "hub_id"}
OPTION_TEXT = re.compile(r"[A-Za-z0-9_.+-]{1,64}")


def _option_problem(name, value) -> str | None:
    if not isinstance(name, str) or name in LOADING_OPTIONS or name.endswith(("_path", "_file", "_dir", "_url")):
        return f"names {name!r}, an option that loads files or weights"
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return None if abs(value) <= MAX_OPTION_INTEGER else f"sets {name} to {value}, beyond {MAX_OPTION_INTEGER}"
    if isinstance(value, float):
        return None if math.isfinite(value) else f"sets {name} to {value}"
    if isinstance(value, str):
        return None if OPTION_TEXT.fullmatch(value) else f"sets {name} to the text {value[:40]!r}"
    return f"sets {name} to a {type(value).__name__}"


def check_metadata(metadata: dict, path) -> None:
    """The fields a model is rebuilt from must be there, with the right types and within bounds; backbone options
    from a file are plain values that shape the network (``LOADING_OPTIONS`` and paths are refused)."""
    for key, kind in REQUIRED_METADATA.items():
        if key not in metadata:
            raise RamptoolError(f"{path}: its ramptool metadata lacks {key!r}; the file was damaged or edited")
        if not isinstance(metadata[key], kind) or isinstance(metadata[key], bool):
            raise RamptoolError(f"{path}: metadata {key!r} should be a {kind.__name__}, got {metadata[key]!r}")
    options = metadata.get("arch_options", {})
    if not isinstance(options, dict):
        raise RamptoolError(f"{path}: metadata 'arch_options' should be an object, got {options!r}")
    for name, value in options.items():
        problem = _option_problem(name, value)
        if problem is not None:
            raise RamptoolError(f"{path}: metadata arch_options {problem}; a checkpoint's backbone options may only "
                                f"shape the network")
    shape = metadata["input_shape"]
    if (len(shape) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape)
            or not 0 < metadata["num_classes"] <= MAX_CLASSES or shape[0] > MAX_CHANNELS
            or max(shape[1:]) > MAX_SIDE):
        raise RamptoolError(f"{path}: metadata input_shape {str(shape)[:60]} / num_classes {metadata['num_classes']} "
                            f"do not describe a model (at most {MAX_CHANNELS} channels, {MAX_SIDE} pixels a side, "
                            f"{MAX_CLASSES} classes)")
    for key in ("mean", "std"):  # None: the network takes [0,1] pixels itself
        values = metadata.get(key)
        if values is None:
            continue
        if (not isinstance(values, list) or len(values) != shape[0]
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                           for v in values) or (key == "std" and not all(v > 0 for v in values))):
            raise RamptoolError(f"{path}: metadata {key!r} should be {shape[0]} finite number(s)"
                                f"{' above 0' if key == 'std' else ''} (one per input channel) or null, got "
                                f"{str(values)[:60]}")


def read_weights(path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file, or of a torch file loaded with ``weights_only=True``."""
    path = resolve(path)
    safetensors = _is_safetensors(path)
    if not safetensors and not _is_torch_file(path):
        raise RamptoolError(f"{path} is not a checkpoint: neither a safetensors file nor one torch.save wrote")
    try:
        if safetensors:
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
    atomic_write(Path(path), _as_os_errors(lambda tmp: torch.save(state, tmp)))


def load_state(path, mmap: bool = False) -> dict:
    """A training state written by ``save_state`` (``mmap``: map tensors lazily, to read the small parts)."""
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as error:
        raise RamptoolError(f"cannot resume from {path}: {type(error).__name__}: "
                            f"{str(error).splitlines()[0][:200] if str(error) else ''}") from None

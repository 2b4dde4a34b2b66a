"""Self-describing checkpoints: weights in safetensors, metadata (JSON) in the safetensors header.

Nothing here unpickles arbitrary objects: foreign state_dicts are read with ``torch.load(weights_only=True)``.
Every write goes to a temporary file in the same folder, is flushed to disk and renamed over the target, so a
crash never leaves a half-written checkpoint; the temporary file of a process that died is removed by the next
write to the same target.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ramptool.errors import RamptoolError

METADATA_KEY = "ramptool"
MODEL_FILE = "model.safetensors"
STATE_FILE = "state.pt"
# what a checkpoint's metadata must hold to rebuild its model, and the type of each
REQUIRED_METADATA = {"arch": str, "num_classes": int, "input_shape": list}


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync(path, flags=os.O_RDONLY) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_orphans(folder: Path, name: str = "") -> None:
    """Delete the temporary files that writers of ``folder/name*`` left when they died (``.NAME.PID.XXXX.tmp``
    whose PID is no longer running); a live writer's file is never touched."""
    for tmp in Path(folder).glob(f".{glob.escape(name)}*.tmp"):
        pid = tmp.name[:-len(".tmp")].split(".")[-2]
        if pid.isdigit() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)``, flush the file to disk, then rename it onto ``path``: readers see the old file or
    the whole new one. The file gets the usual permissions (0666 minus the umask), not mkstemp's 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_orphans(path.parent, path.name)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(path.parent, os.O_RDONLY | os.O_DIRECTORY)  # the rename itself survives a power cut
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(path, model: torch.nn.Module, metadata: dict[str, Any]) -> None:
    from ramptool import __version__

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
    from ramptool import robustbench

    if robustbench.is_zoo_name(path):
        return robustbench.parse(path).metadata()
    path = resolve(path)
    if not _is_safetensors(path):
        return None
    try:
        from safetensors import safe_open

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


def _strip_prefixes(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in ("module.", "model."):
        if weights and all(k.startswith(prefix) for k in weights):
            weights = {k[len(prefix):]: v for k, v in weights.items()}
    return weights


def load_into(model: torch.nn.Module, weights: dict[str, torch.Tensor], source: str) -> None:
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as error:
        missing, unexpected, shapes = [], [], []
        own = model.state_dict()
        missing = [k for k in own if k not in weights]
        unexpected = [k for k in weights if k not in own]
        shapes = [k for k in weights if k in own and weights[k].shape != own[k].shape]
        details = []
        if missing:
            details.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
            if all(k.startswith("sub_block1.") for k in unexpected):
                details.append("a TRADES-style WideResNet (RobustBench's layout): add --arch-option sub_block1=true")
        if shapes:
            details.append(f"{len(shapes)} of another shape (e.g. {shapes[0]}: {tuple(weights[shapes[0]].shape)} "
                           f"vs {tuple(own[shapes[0]].shape)})")
        raise RamptoolError(f"weights in {source} do not fit the architecture: "
                            f"{'; '.join(details) or str(error).splitlines()[0]}") from None


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def foreign_metadata(path: Path, arch: str | None, dataset: str | None = None, num_classes: int | None = None,
                     normalize: str | None = None, arch_options: dict | None = None) -> dict[str, Any]:
    """What a plain state_dict is, from the options given for it: it records nothing itself."""
    from ramptool import robustbench
    from ramptool.data import get_dataset
    from ramptool.models import bind_arch_options, resolve_normalize

    if arch is None:
        raise RamptoolError(f"{path} is a plain state_dict without ramptool metadata: pass --arch (and --dataset, "
                            f"--normalize) to import it")
    if robustbench.is_zoo_name(arch):
        zoo_model = robustbench.parse(arch)
        if dataset not in (None, zoo_model.dataset):
            raise RamptoolError(f"{arch} is a {zoo_model.dataset} model, not {dataset}")
        if normalize not in (None, "none"):
            raise RamptoolError(f"{arch} keeps RobustBench's input convention ([0,1] pixels): drop --normalize")
        metadata = zoo_model.metadata()
        metadata["arch_options"] = bind_arch_options(arch, arch_options)
    else:
        spec = get_dataset(dataset or "cifar10")
        label, mean, std = resolve_normalize(normalize, "none", spec)
        metadata = {"arch": arch, "arch_options": bind_arch_options(arch, arch_options),
                    "num_classes": num_classes or spec.num_classes or 1000, "input_shape": list(spec.input_shape),
                    "normalize": label, "mean": mean, "std": std, "dataset": dataset or "cifar10", "source": {}}
    metadata["source"].update({"state_dict": str(Path(path).resolve()), "sha256": file_sha256(path)})
    return metadata


def recorded_normalize(metadata: dict) -> str:
    """The --normalize a checkpoint records (checkpoints before the option always normalised by mean/std)."""
    if "normalize" in metadata:
        return metadata["normalize"]
    return "none" if metadata.get("mean") is None else "/".join(",".join(str(v) for v in metadata[k])
                                                                 for k in ("mean", "std"))


def _check_recorded(path, metadata: dict, arch, normalize, arch_options) -> None:
    """A ramptool checkpoint describes itself: options for plain state_dicts must not contradict it."""
    from ramptool.data import get_dataset
    from ramptool.models import bind_arch_options, resolve_normalize

    conflicts = []
    if arch is not None and arch != metadata["arch"]:
        conflicts.append(f"--arch {arch} (it records {metadata['arch']})")
    if arch_options and bind_arch_options(metadata["arch"], arch_options) != metadata.get("arch_options", {}):
        conflicts.append(f"--arch-option {arch_options} (it records {metadata.get('arch_options', {})})")
    if normalize is not None:
        _, mean, std = resolve_normalize(normalize, "none", get_dataset(metadata.get("dataset") or "cifar10"))
        if (mean, std) != (metadata.get("mean"), metadata.get("std")):
            conflicts.append(f"--normalize {normalize} (it records {recorded_normalize(metadata)})")
    if conflicts:
        raise RamptoolError(f"{path} is a ramptool checkpoint and describes itself; {'; '.join(conflicts)}: these "
                            f"options are for plain state_dicts")


def model_from_metadata(metadata: dict) -> torch.nn.Module:
    from ramptool.models import build_model

    return build_model(metadata["arch"], metadata["num_classes"], metadata["input_shape"], metadata.get("mean"),
                       metadata.get("std"), **metadata.get("arch_options", {}))


def load_checkpoint(ckpt, arch: str | None = None, dataset: str | None = None, device="cpu", num_classes=None,
                    normalize: str | None = None, arch_options: dict | None = None, model_dir=None):
    """(model in eval mode, metadata) of a ramptool checkpoint (it describes itself), a RobustBench zoo model
    (``robustbench:<dataset>/<threat_model>/<model_name>``, weights from ``model_dir``), or a plain state_dict
    (``arch`` needed; ``dataset`` gives the input shape and ``normalize`` the input normalisation, none by
    default). Every model takes [0,1] inputs."""
    from ramptool import robustbench
    from ramptool.models import Normalized

    if robustbench.is_zoo_name(ckpt):
        if arch is not None or arch_options or normalize not in (None, "none"):
            raise RamptoolError(f"{ckpt} is RobustBench's model with RobustBench's input convention: drop --arch, "
                                f"--arch-option and --normalize")
        network, metadata = robustbench.load(ckpt, model_dir)
        return Normalized(network).to(device).eval(), metadata
    path = resolve(ckpt)
    metadata = read_metadata(path)
    weights = read_weights(path)
    if metadata is None:
        metadata = foreign_metadata(path, arch, dataset, num_classes, normalize, arch_options)
        weights = _strip_prefixes(weights)
    else:
        check_metadata(metadata, path)
        _check_recorded(path, metadata, arch, normalize, arch_options)
    model = model_from_metadata(metadata)
    wrapped = any(k.startswith("backbone.") for k in weights)
    load_into(model if wrapped else model.backbone, weights, str(path))
    return model.to(device).eval(), metadata


def load_model(path, arch=None, device="cpu", dataset=None, normalize=None, arch_options=None, model_dir=None):
    return load_checkpoint(path, arch=arch, device=device, dataset=dataset, normalize=normalize,
                           arch_options=arch_options, model_dir=model_dir)[0]


def describe_input(metadata: dict) -> str:
    """What the network inside expects, in words."""
    shape = "x".join(str(n) for n in metadata["input_shape"])
    if metadata.get("mean") is None:
        return f"[0,1] pixels ({shape}) fed to the network as they are (normalize: none)"
    return (f"[0,1] pixels ({shape}), normalised inside as (x - mean) / std with mean {metadata['mean']} and std "
            f"{metadata['std']} (normalize: {recorded_normalize(metadata)})")


def sidecar_path(weights_path) -> Path:
    return Path(weights_path).with_suffix(".json")


def export_checkpoint(ckpt, out, **loading) -> tuple[Path, Path]:
    """Write the bare network's state_dict (no wrapper, no ramptool keys) to ``out`` (.pt or .safetensors) and a
    JSON sidecar saying how to feed it and how to import it again; returns both paths."""
    out = Path(out)
    if out.suffix not in (".pt", ".safetensors"):
        raise RamptoolError(f"export writes .pt or .safetensors, not {out.name!r}")
    model, metadata = load_checkpoint(ckpt, **loading)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.backbone.state_dict().items()}
    if out.suffix == ".safetensors":
        atomic_write(out, lambda tmp: save_file(tensors, tmp))
    else:
        atomic_write(out, lambda tmp: torch.save(tensors, tmp))
    flags = [f"--arch {metadata['arch']}", f"--dataset {metadata['dataset']}",
             f"--normalize {recorded_normalize(metadata)}"]
    flags += [f"--arch-option {key}={value}" for key, value in metadata.get("arch_options", {}).items()]
    sidecar = {"format": "ramptool-export", "weights": out.name, "arch": metadata["arch"],
               "arch_options": metadata.get("arch_options", {}), "num_classes": metadata["num_classes"],
               "input_shape": metadata["input_shape"], "dataset": metadata.get("dataset"),
               "normalize": recorded_normalize(metadata), "mean": metadata.get("mean"), "std": metadata.get("std"),
               "input": ("[0,1] pixels, as they are" if metadata.get("mean") is None
                         else "[0,1] pixels normalised as (x - mean) / std: the exported network does not do it"),
               "import": f"--ckpt {out.name} {' '.join(flags)}", "checkpoint": metadata}
    sidecar_file = sidecar_path(out)
    text = json.dumps(sidecar, indent=2, default=str) + "\n"
    atomic_write(sidecar_file, lambda tmp: Path(tmp).write_text(text))
    return out, sidecar_file


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

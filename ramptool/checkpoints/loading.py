"""From a file to a model on [0,1] inputs: ramptool checkpoints (their metadata says how to build the model),
RobustBench zoo names, and foreign state_dicts (``--arch`` and ``--normalize`` say what the file cannot).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ramptool.checkpoints.format import MODEL_FILE, check_metadata, read_metadata, read_weights, resolve
from ramptool.data.datasets import get_dataset
from ramptool.errors import RamptoolError
from ramptool.models import Normalized, bind_arch_options, build_model, resolve_normalize, robustbench
from ramptool.runtime.files import file_sha256
from ramptool.runtime.rundir import safe_name


def _strip_prefixes(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in ("module.", "model."):
        if weights and all(k.startswith(prefix) for k in weights):
            weights = {k[len(prefix):]: v for k, v in weights.items()}
    return weights


def load_into(model: torch.nn.Module, weights: dict[str, torch.Tensor], source: str) -> None:
    check_fit(model.state_dict(), weights, source)
    model.load_state_dict(weights, strict=True)


def check_fit(own: dict[str, torch.Tensor], weights: dict[str, torch.Tensor], source: str) -> None:
    """One line when ``weights`` do not fit a model whose state_dict is ``own`` (its tensors may be on the meta
    device: only their names and shapes count)."""
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
    if details:
        raise RamptoolError(f"weights in {source} do not fit the architecture: {'; '.join(details)}")


def foreign_metadata(path: Path, arch: str | None, dataset: str | None = None, num_classes: int | None = None,
                     normalize: str | None = None, arch_options: dict | None = None) -> dict[str, Any]:
    """What a plain state_dict is, from the options given for it: it records nothing itself."""
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
    return build_model(metadata["arch"], metadata["num_classes"], metadata["input_shape"], metadata.get("mean"),
                       metadata.get("std"), **metadata.get("arch_options", {}))


def load_checkpoint(ckpt, arch: str | None = None, dataset: str | None = None, device="cpu", num_classes=None,
                    normalize: str | None = None, arch_options: dict | None = None, model_dir=None):
    """(model in eval mode, metadata) of a ramptool checkpoint (it describes itself), a RobustBench zoo model
    (``robustbench:<dataset>/<threat_model>/<model_name>``, weights from ``model_dir``), or a plain state_dict
    (``arch`` needed; ``dataset`` gives the input shape and ``normalize`` the input normalisation, none by
    default). Every model takes [0,1] inputs."""

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
    wrapped = any(k.startswith("backbone.") for k in weights)
    with torch.device("meta"):  # names and shapes first: a header must not make ramptool allocate what the file lacks
        probe = model_from_metadata(metadata)
    check_fit((probe if wrapped else probe.backbone).state_dict(), weights, str(path))
    model = model_from_metadata(metadata)
    load_into(model if wrapped else model.backbone, weights, str(path))
    return model.to(device).eval(), metadata


def load_model(path, arch=None, device="cpu", dataset=None, normalize=None, arch_options=None, model_dir=None):
    """An eval-mode model on [0,1] inputs: a ramptool checkpoint, ``robustbench:<dataset>/<threat_model>/<name>``
    (weights from ``model_dir``, RobustBench's layout), or a plain state_dict with ``arch``, ``dataset`` and
    ``normalize`` ('none', the default, 'dataset' or 'MEAN/STD', e.g. '0.5,0.5,0.5/0.25,0.25,0.25')."""
    return load_checkpoint(path, arch=arch, device=device, dataset=dataset, normalize=normalize,
                           arch_options=arch_options, model_dir=model_dir)[0]


def describe_input(metadata: dict) -> str:
    """What the network inside expects, in words."""
    shape = "x".join(str(n) for n in metadata["input_shape"])
    if metadata.get("mean") is None:
        return f"[0,1] pixels ({shape}) fed to the network as they are (normalize: none)"
    return (f"[0,1] pixels ({shape}), normalised inside as (x - mean) / std with mean {metadata['mean']} and std "
            f"{metadata['std']} (normalize: {recorded_normalize(metadata)})")


def checkpoint_names(paths: list[str]) -> dict[str, Path | str]:
    """Short unique names for the table and for per-model folders inside --out: the run folder's name (or the
    file's stem, or the zoo model's name), from the normalised path (``runs/x/a/..`` is ``x``) and reduced to a
    safe path component."""
    if not paths:
        raise RamptoolError("give at least one --ckpt (a checkpoint file or run folder)")
    names: dict[str, Path | str] = {}
    for given in paths:
        if robustbench.is_zoo_name(given):
            path, base = given, given.rsplit("/", 1)[-1]
        else:
            path = resolve(given)
            normalised = Path(os.path.abspath(path))
            base = normalised.parent.name if normalised.name == MODEL_FILE else normalised.stem
        base = safe_name(base)
        name, count = base, 1
        while name in names:
            count += 1
            name = f"{base}-{count}"
        names[name] = path
    return names

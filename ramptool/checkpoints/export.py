"""``ramptool export``: a checkpoint as a plain state_dict plus a JSON sidecar that says how to rebuild it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from ramptool.checkpoints.loading import load_checkpoint, recorded_normalize
from ramptool.errors import RamptoolError
from ramptool.runtime.files import atomic_write


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

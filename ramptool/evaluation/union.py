"""Union accuracy: clean, each norm, and the pointwise AND, with resumable per-sample flags.

The protocol (AutoAttack-grade numbers, the cascade, upper bounds) is in docs/METHOD.md#evaluation-protocol.

Flags are written to ``flags.safetensors`` after every norm, so an evaluation stopped half-way continues with
``resume=True`` from the last finished norm. ``union_only`` cascades the norms: each norm attacks only the
points still robust under the norms before it. The union number is the same (a point fooled once is out of the
union whatever the later norms do); the per-norm numbers of the later norms become upper bounds, because
points already fooled are not attacked again.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from functools import partial
from pathlib import Path

import torch
from rich.console import Console
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ramptool import distributed
from ramptool.checkpoint import atomic_write
from ramptool.errors import RamptoolError
from ramptool.evaluation.autoattack import VERSIONS, autoattack_flags
from ramptool.evaluation.family import BUILT_IN_EVALUATIONS, family_flags, family_options
from ramptool.evaluation.flags import accuracies, apgd_flags, clean_flags

FLAGS_FILE = "flags.safetensors"
# a clean accuracy this far under the checkpoint's own record means the inputs do not match the training ones
CLEAN_GAP_WARNING = 0.10


class EvaluationInterrupted(RamptoolError):
    """Ctrl-C during an evaluation: the finished norms are on disk."""

    exit_code = 130


def warn(console: Console | None, message: str) -> None:
    (console or Console(stderr=True)).print(f"[bold yellow]WARNING:[/] {message}", highlight=False)


def fingerprint(x: torch.Tensor, y: torch.Tensor) -> str:
    """A short hash of the evaluated points: resuming on other points would mix two evaluations."""
    digest = hashlib.sha256(x.detach().cpu().contiguous().numpy().tobytes())
    digest.update(y.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def save_flags(path: Path, flags: dict[str, torch.Tensor], settings: dict, eps: dict, done: list[str],
               seconds: dict, attacked: dict) -> None:
    tensors = {name: flags[name].contiguous() for name in ["clean", *done]}
    header = {"settings": json.dumps(settings, sort_keys=True), "eps": json.dumps({n: eps[n] for n in done}),
              "done": json.dumps(done), "seconds": json.dumps(seconds), "attacked": json.dumps(attacked)}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=header))


def _load_flags(path: Path, settings: dict, eps: dict, clean: torch.Tensor):
    """(flags, seconds, attacked) of the norms already finished in ``path``, after checking they belong here."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
            saved = {name: handle.get_tensor(name) for name in handle.keys()}
        saved_settings = json.loads(header["settings"])
        saved_eps, done = json.loads(header["eps"]), json.loads(header["done"])
        seconds, attacked = json.loads(header["seconds"]), json.loads(header["attacked"])
    except (SafetensorError, OSError, KeyError, ValueError) as error:
        raise RamptoolError(f"cannot resume from {path}: not a flags file of ramptool ({error})") from None
    hint = f"drop --resume or use another --out than {path.parent}"
    for key, value in settings.items():
        if key == "points" and saved_settings.get(key) != value:
            raise RamptoolError(f"cannot resume: {path} was computed on other test points; {hint}")
        if saved_settings.get(key) != value:
            raise RamptoolError(f"cannot resume: {path} was computed with {key}={saved_settings.get(key)!r}, "
                                f"now {value!r}; {hint}")
    for norm in done:
        if norm in eps and not math.isclose(saved_eps[norm], eps[norm], rel_tol=1e-9):
            raise RamptoolError(f"cannot resume: {path} has {norm} eps {saved_eps[norm]:g}, now {eps[norm]:g}; "
                                f"{hint}")
    if not torch.equal(saved["clean"], clean):
        raise RamptoolError(f"cannot resume: the clean predictions differ from those in {path} "
                            f"(another checkpoint?); {hint}")
    return {norm: saved[norm] for norm in done}, seconds, attacked


def resumed_flags(path: Path | None, settings: dict, eps: dict, clean: torch.Tensor, names: list[str],
                  resume: bool) -> tuple[dict, dict, dict, list]:
    """(flags, seconds, attacked, resumed): the clean flags, plus, when resuming, those of the ``names`` already
    finished in ``path`` with their timings and attacked-point counts."""
    flags: dict[str, torch.Tensor] = {"clean": clean}
    seconds: dict[str, float] = {}
    attacked: dict[str, int] = {}
    resumed: list[str] = []
    if resume and path.is_file():
        saved, saved_seconds, saved_attacked = _load_flags(path, settings, eps, clean)
        for name in names:
            if name in saved:
                flags[name], seconds[name], attacked[name] = saved[name], saved_seconds[name], saved_attacked[name]
                resumed.append(name)
    return flags, seconds, attacked, resumed


def _attack_flags(model, x, y, norm, eps, candidates, settings, batch_size, on_progress=None) -> torch.Tensor:
    """Flags for the ``candidates`` points only (True = still correct after the attack); under torchrun each
    process attacks its share of them (``distributed.map_points``)."""
    index = candidates.nonzero().squeeze(1)
    if len(index) == 0:
        return torch.zeros(0, dtype=torch.bool)
    return distributed.map_points(
        lambda xs, ys: _attack_points(model, xs, ys, norm, eps, settings, batch_size, on_progress), x[index], y[index])


def _attack_points(model, x, y, norm, eps, settings, batch_size, on_progress=None) -> torch.Tensor:
    """Flags of every point of (x, y), reporting ``on_progress(attack, points, total)`` after each batch."""
    if len(y) == 0:
        return torch.zeros(0, dtype=torch.bool)
    if settings["attack"] == "autoattack":
        return autoattack_flags(model, x, y, norm, eps, version=settings["version"], batch_size=batch_size,
                                seed=settings["seed"], on_progress=on_progress)
    if settings["attack"] != "apgd":  # a family's random draws run on from batch to batch: one call
        with torch.random.fork_rng():
            torch.manual_seed(settings["seed"])
            flags = family_flags(model, x, y, settings["attack"], norm, eps, steps=settings["steps"],
                                 batch_size=batch_size, options=settings["attack_options"])
        if on_progress is not None:
            on_progress(settings["attack"], len(y), len(y))
        return flags
    parts = []
    for start in range(0, len(y), batch_size):  # apgd_flags' own batches (deterministic), one call each
        with torch.random.fork_rng():
            torch.manual_seed(settings["seed"])
            batch = slice(start, start + batch_size)
            parts.append(apgd_flags(model, x[batch], y[batch], [norm], {norm: eps}, steps=settings["steps"],
                                    batch_size=batch_size)[norm])
        if on_progress is not None:
            on_progress("apgd-ce", len(parts[-1]), len(y))
    return torch.cat(parts)


def sanity_warnings(accuracy: dict[str, float], norms: list[str], n: int,
                    recorded_clean: float | None = None) -> list[str]:
    """Numbers that cannot be right, or that point at a mistake in the setup."""
    messages = []
    weakest = min(norms, key=lambda norm: accuracy[norm])
    if accuracy["union"] > accuracy[weakest] + 1e-9:
        messages.append(f"union accuracy {100 * accuracy['union']:.1f}% is above the {weakest} accuracy "
                        f"{100 * accuracy[weakest]:.1f}%: the per-norm flags do not belong to the same points")
    if recorded_clean is not None:
        # three standard errors of the measured clean accuracy, so small evaluations do not cry wolf
        noise = 3 * math.sqrt(max(recorded_clean * (1 - recorded_clean), 1e-4) / max(n, 1))
        if recorded_clean - accuracy["clean"] > max(CLEAN_GAP_WARNING, noise):
            messages.append(f"clean accuracy {100 * accuracy['clean']:.1f}% is far below the "
                            f"{100 * recorded_clean:.1f}% recorded in the checkpoint: wrong normalisation? "
                            f"(models take [0,1] inputs and normalise inside) or wrong dataset?")
    return messages


def evaluate_union(model, x: torch.Tensor, y: torch.Tensor, norms: list[str], eps: dict[str, float],
                   version: str = "fast", out_dir=None, resume: bool = False, union_only: bool = False,
                   batch_size: int = 500, seed: int = 0, attack: str = "autoattack", steps: int = 100,
                   recorded_clean: float | None = None, console: Console | None = None,
                   attack_options: dict | None = None, on_progress=None) -> dict:
    """Clean, per-norm and union accuracy of ``model`` on (x, y), with timings and attacked-point counts.

    ``attack='autoattack'`` is the reported evaluation (``version`` fast or standard); ``attack='apgd'`` uses
    ramptool's own APGD-CE with ``steps`` iterations (quick checks); any other name is a registered attack
    family run with ``steps`` and ``attack_options`` (every number then an upper bound, see ``family.py``).
    ``recorded_clean`` (the checkpoint's own clean accuracy) enables the normalisation sanity check.
    ``on_progress(norm, attack, points, total)`` is called as the attacks go (``ramptool.progress``)."""
    if version not in VERSIONS:
        raise RamptoolError(f"unknown version {version!r}; use one of: {', '.join(VERSIONS)}")
    attack_options = family_options(attack, norms, attack_options)
    missing = [norm for norm in norms if norm not in eps]
    if missing:
        raise RamptoolError(f"no eps given for {', '.join(missing)}")
    if resume and out_dir is None:
        raise RamptoolError("resume needs the output folder of the interrupted evaluation")
    if len(y) == 0:
        raise RamptoolError("no points to evaluate")

    by_family = attack not in BUILT_IN_EVALUATIONS
    settings = {"points": fingerprint(x, y), "n": len(y), "attack": attack, "union_only": union_only,
                "seed": seed, **({"version": version} if attack == "autoattack" else {"steps": steps}),
                **({"attack_options": attack_options} if by_family else {})}
    path = Path(out_dir) / FLAGS_FILE if out_dir is not None else None
    clean = clean_flags(model, x, y, batch_size)
    flags, seconds, attacked, resumed = resumed_flags(path, settings, eps, clean, norms, resume)

    for position, norm in enumerate(norms):
        if norm in flags:
            continue
        candidates = clean.clone()
        if union_only:
            for earlier in norms[:position]:
                candidates &= flags[earlier]
        started = time.perf_counter()
        try:
            report = partial(on_progress, norm) if on_progress is not None else None
            robust = _attack_flags(model, x, y, norm, eps[norm], candidates, settings, batch_size, report)
        except KeyboardInterrupt:
            saved_note = f"; finished norms are saved in {path}, continue with --resume" if path else ""
            raise EvaluationInterrupted(f"evaluation interrupted during {norm}{saved_note}") from None
        # points not attacked keep their clean flag: in the cascade that makes the norm's accuracy an upper bound
        flags[norm] = clean.clone()
        flags[norm][candidates] = robust
        seconds[norm] = round(time.perf_counter() - started, 3)
        attacked[norm] = int(candidates.sum())
        if path is not None and distributed.is_main():
            done = [name for name in norms if name in flags]
            save_flags(path, flags, settings, eps, done, seconds, attacked)

    accuracy = accuracies(flags, norms)
    messages = sanity_warnings(accuracy, norms, len(y), recorded_clean)
    for message in messages:
        warn(console, message)
    return {
        "n": len(y), "norms": list(norms), "eps": {norm: eps[norm] for norm in norms}, "attack": attack,
        **({"version": version} if attack == "autoattack" else {"steps": steps}),
        **({"attack_options": attack_options} if by_family else {}),
        "seed": seed, "union_only": union_only, "accuracy": accuracy,
        "upper_bounds": [*norms, "union"] if by_family else list(norms[1:]) if union_only else [],
        "seconds": {norm: seconds[norm] for norm in norms}, "attacked": {norm: attacked[norm] for norm in norms},
        "resumed": resumed, "warnings": messages,
    }


def not_falling_warnings(eps_values: dict[str, list[float]], accuracy: dict[str, list[float]], n: int) -> list[str]:
    """Robust accuracy that rises with eps (by more than one point of the sample) means the attack is failing."""
    messages = []
    for norm, values in eps_values.items():
        order = sorted(range(len(values)), key=lambda i: values[i])
        for smaller, larger in zip(order, order[1:]):
            if accuracy[norm][larger] - accuracy[norm][smaller] > 1.0 / n + 1e-9:
                messages.append(f"{norm} robust accuracy rises from {100 * accuracy[norm][smaller]:.1f}% at eps "
                                f"{values[smaller]:g} to {100 * accuracy[norm][larger]:.1f}% at eps "
                                f"{values[larger]:g}: the attack is not converging (gradient masking?)")
    return messages


def robustness_curve(model, x: torch.Tensor, y: torch.Tensor, eps_values: dict[str, list[float]],
                     steps: int = 100, batch_size: int = 500, seed: int = 0,
                     reference_eps: dict[str, float] | None = None, console: Console | None = None,
                     attack: str = "apgd", attack_options: dict | None = None, on_progress=None) -> dict:
    """Robust accuracy under ramptool's APGD-CE (or a registered attack family, ``attack``) at each eps of each
    norm (the same points throughout); ``reference_eps`` (the threat model's eps) is recorded for the plot."""
    if attack == "autoattack":
        raise RamptoolError("eval curve runs apgd or a registered attack family, not autoattack")
    attack_options = family_options(attack, list(eps_values), attack_options)
    accuracy: dict[str, list[float]] = {}
    seconds: dict[str, float] = {}
    clean = clean_flags(model, x, y, batch_size)
    for norm, values in eps_values.items():
        started = time.perf_counter()
        accuracy[norm] = []
        for value in values:
            settings = {"attack": attack, "seed": seed, "steps": steps, "attack_options": attack_options}
            report = None
            if on_progress is not None:  # one bar per norm over all its eps values
                def report(name, done, total, norm=norm, value=value, values=values):
                    on_progress(norm, f"eps {value:g}", done, total * len(values))
            robust = distributed.map_points(
                lambda xs, ys: _attack_points(model, xs, ys, norm, value, settings, batch_size, report), x, y)
            accuracy[norm].append((robust & clean).float().mean().item())
        seconds[norm] = round(time.perf_counter() - started, 3)
    messages = not_falling_warnings(eps_values, accuracy, len(y))
    for message in messages:
        warn(console, message)
    return {"n": len(y), "attack": "apgd-ce" if attack == "apgd" else attack, "steps": steps, "seed": seed,
            **({"attack_options": attack_options, "upper_bound": True} if attack != "apgd" else {}),
            "clean": clean.float().mean().item(), "eps_values": {k: list(v) for k, v in eps_values.items()},
            "accuracy": accuracy, "reference_eps": dict(reference_eps or {}), "seconds": seconds,
            "warnings": messages}


def load_for_evaluation(ckpt, dataset: str | None = None, arch: str | None = None, device="cpu", **loading):
    """(model, metadata, dataset name): the checkpoint, checked against the dataset it will be evaluated on;
    ``loading``: normalize, arch_options and model_dir, as ``load_checkpoint`` takes them."""
    from ramptool.checkpoint import load_checkpoint, read_metadata
    from ramptool.data import dataset_spec, get_dataset

    metadata = read_metadata(ckpt)
    name = dataset or (metadata or {}).get("dataset")
    if name is None:
        raise RamptoolError(f"{ckpt} has no ramptool metadata: pass --dataset (and --arch)")
    spec = get_dataset(name)
    model, metadata = load_checkpoint(ckpt, arch=arch, dataset=name, device=device, **loading)
    if spec.resizable:  # image folders are read at the checkpoint's resolution
        spec = dataset_spec(name, metadata["input_shape"][-1])
    if spec.num_classes is not None and metadata["num_classes"] != spec.num_classes:
        raise RamptoolError(f"{ckpt} predicts {metadata['num_classes']} classes but {name} has "
                            f"{spec.num_classes}: wrong --dataset?")
    if tuple(metadata["input_shape"]) != tuple(spec.input_shape):
        raise RamptoolError(f"{ckpt} takes inputs of shape {tuple(metadata['input_shape'])} but {name} images "
                            f"are {tuple(spec.input_shape)}: wrong --dataset?")
    return model, metadata, name


def recorded_clean_accuracy(metadata: dict) -> float | None:
    """The clean accuracy the trainer measured on the test set after the last epoch, if it did."""
    value = (metadata.get("metrics") or {}).get("eval", {}).get("clean")
    return float(value) if value is not None else None

"""Union accuracy: clean, each norm, and the pointwise AND, from resumable per-sample flags.

The protocol (AutoAttack-grade numbers, the cascade, upper bounds) is in docs/METHOD.md#evaluation-protocol.

An evaluation is a list of runs (``suite.py``): each run attacks some points in one norm and marks the points it
broke. Full evaluation: each norm's runs attack the points still robust in that norm, so every per-norm accuracy
is exact. Union cascade (``union_only``): every run attacks only the points still robust in every norm, in rounds
across norms; a point broken once is out of the union whatever the later runs do, so the union is the same as
the full evaluation's when each point's outcome does not depend on its batch (ramptool's APGD), and the per-norm
numbers become upper bounds (points broken in another norm are not attacked again).

Every claimed success is checked again before it counts: inside the ball (up to float rounding), inside the box,
misclassified by the model. Flags are written to ``flags.safetensors`` after every run, so an evaluation stopped
half-way continues with ``resume=True`` from the last finished run. Under torchrun every process attacks its
share of each run's points (``distributed.map_points``): per-point outcomes make the flags those of one process.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

import torch
from rich.console import Console
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ramptool.checkpoints.format import read_metadata
from ramptool.checkpoints.loading import load_checkpoint
from ramptool.data.datasets import dataset_spec, get_dataset, load_split
from ramptool.errors import RamptoolError
from ramptool.evaluation.flags import accuracies, logits_of, verified_successes
from ramptool.evaluation.passes import PassCounter
from ramptool.evaluation.suite import UPPER_BOUND, VERSIONS, RunContext, get_suite, plan, run_label, settings_summary
from ramptool.runtime import distributed
from ramptool.runtime.files import atomic_write
from ramptool.threat import eps_scale_warnings

FLAGS_FILE = "flags.safetensors"
ADVERSARIAL_PREFIX = "adversarial/"
# a clean accuracy this far under the checkpoint's own record means the inputs do not match the training ones
CLEAN_GAP_WARNING = 0.10


class EvaluationInterrupted(RamptoolError):
    """Ctrl-C during an evaluation: the finished runs are on disk."""

    exit_code = 130


def warn(console: Console | None, message: str) -> None:
    (console or Console(stderr=True)).print(f"[bold yellow]WARNING:[/] {message}", highlight=False)


def fingerprint(*tensors: torch.Tensor) -> str:
    """A short hash of the evaluated points: resuming on other points would mix two evaluations."""
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------- flags files

def _write_state(path: Path, tensors: dict[str, torch.Tensor], header: dict) -> None:
    atomic_write(path, lambda tmp: save_file({k: v.contiguous() for k, v in tensors.items()}, tmp,
                                             metadata={key: json.dumps(value) for key, value in header.items()}))


def _read_state(path: Path, settings: dict, eps: dict, clean: torch.Tensor, finished) -> tuple[dict, dict]:
    """(header, tensors) of a flags file, after checking that it belongs to this evaluation: the same settings,
    the same eps for the names ``finished(header)`` lists, the same clean predictions."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = {key: json.loads(value) for key, value in (handle.metadata() or {}).items()}
            saved = {name: handle.get_tensor(name) for name in handle.keys()}
        saved_settings, saved_eps, done = header["settings"], header["eps"], finished(header)
    except (SafetensorError, OSError, KeyError, ValueError, TypeError) as error:
        raise RamptoolError(f"cannot resume from {path}: not a flags file of this ramptool ({error})") from None
    hint = f"drop --resume or use another --out than {path.parent}"
    if settings.get("adversarial") and not saved_settings.get("adversarial"):
        raise RamptoolError(f"cannot resume keeping adversarial examples: {path} did not keep those of its "
                            f"finished runs; {hint}")
    for key, value in settings.items():
        if key == "adversarial":
            continue
        if key == "points" and saved_settings.get(key) != value:
            raise RamptoolError(f"cannot resume: {path} was computed on other test points; {hint}")
        if saved_settings.get(key) != value:
            raise RamptoolError(f"cannot resume: {path} was computed with {key}={saved_settings.get(key)!r}, "
                                f"now {value!r}; {hint}")
    for name in done:
        if name in eps and name in saved_eps and not math.isclose(saved_eps[name], eps[name], rel_tol=1e-9):
            raise RamptoolError(f"cannot resume: {path} has {name} eps {saved_eps[name]:g}, now {eps[name]:g}; "
                                f"{hint}")
    if not torch.equal(saved["clean"], clean):
        raise RamptoolError(f"cannot resume: the clean predictions differ from those in {path} "
                            f"(another checkpoint?); {hint}")
    return header, saved


def save_flags(path: Path, flags: dict[str, torch.Tensor], settings: dict, eps: dict, done: list[str],
               seconds: dict, attacked: dict) -> None:
    """Flags of whole named attacks (``eval unseen``'s adversaries): one tensor per finished name."""
    _write_state(path, {name: flags[name] for name in ["clean", *done]},
                 {"settings": settings, "eps": {n: eps[n] for n in done}, "done": done, "seconds": seconds,
                  "attacked": attacked})


def resumed_flags(path: Path | None, settings: dict, eps: dict, clean: torch.Tensor, names: list[str],
                  resume: bool) -> tuple[dict, dict, dict, list]:
    """(flags, seconds, attacked, resumed): the clean flags, plus, when resuming, those of the ``names`` already
    finished in ``path`` (written by ``save_flags``) with their timings and attacked-point counts."""
    flags: dict[str, torch.Tensor] = {"clean": clean}
    seconds: dict[str, float] = {}
    attacked: dict[str, int] = {}
    resumed: list[str] = []
    if resume and path.is_file():
        header, saved = _read_state(path, settings, eps, clean, lambda header: header["done"])
        for name in names:
            if name in header["done"]:
                flags[name], seconds[name], attacked[name] = saved[name], header["seconds"][name], \
                    header["attacked"][name]
                resumed.append(name)
    return flags, seconds, attacked, resumed


def _save_runs(path: Path, flags: dict[str, torch.Tensor], settings: dict, eps: dict, log: list[dict],
               adversarial: dict | None) -> None:
    """Per-norm flags after the runs in ``log``, and the adversarial examples that counted if they are kept."""
    tensors = dict(flags)
    for norm, found in (adversarial or {}).items():
        if found["index"]:
            tensors[f"{ADVERSARIAL_PREFIX}{norm}/index"] = torch.tensor(found["index"], dtype=torch.int64)
            tensors[f"{ADVERSARIAL_PREFIX}{norm}/x_adv"] = torch.cat(found["x_adv"])
    _write_state(path, tensors, {"settings": settings, "eps": eps, "runs": log})


def _load_runs(path: Path, settings: dict, eps: dict, clean: torch.Tensor, norms: list[str]):
    """(flags, run log, adversarial examples) saved in ``path`` by ``_save_runs``."""
    header, saved = _read_state(path, settings, eps, clean,
                                lambda header: {entry["norm"] for entry in header["runs"]})
    flags = {norm: saved[norm] for norm in norms if norm in saved}
    adversarial = {norm: {"index": saved[f"{ADVERSARIAL_PREFIX}{norm}/index"].tolist(),
                          "x_adv": [saved[f"{ADVERSARIAL_PREFIX}{norm}/x_adv"]]}
                   for norm in norms if f"{ADVERSARIAL_PREFIX}{norm}/index" in saved}
    return flags, [entry for entry in header["runs"] if entry["norm"] in norms], adversarial


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
                   batch_size: int = 500, seed: int = 0, attack: str = "apgd", steps: int = 100,
                   recorded_clean: float | None = None, console: Console | None = None,
                   attack_options: dict | None = None, on_progress=None, index: torch.Tensor | None = None,
                   keep_adversarial: bool = False, batched: bool | None = None) -> dict:
    """Clean, per-norm and union accuracy of ``model`` on (x, y), with seconds, model passes and points attacked
    per norm and a log of every run.

    ``attack`` picks the suite (``suite.get_suite``): 'apgd' (default, AutoAttack-grade), 'autoattack'
    (pyautoattack), 'apgd-ce' (quick upper bound) or a registered attack family with ``attack_options`` (upper
    bounds); ``version`` fast or standard; ``steps`` the APGD iterations (AutoAttack's 100). ``index`` names
    each point for its random draws (default: its position), so a subset evaluated alone gets the flags it has in
    the whole set. ``keep_adversarial`` returns (and saves with the flags) the adversarial examples that counted,
    per norm. ``recorded_clean`` (the checkpoint's own clean accuracy) enables the normalisation sanity check.
    ``batched`` sends the iterates of runs made together through the model as one batch (default: on CUDA, and
    on a CPU while that batch stays small). ``on_progress(task, detail, points, total)`` hears about every run
    (``ramptool.progress``)."""
    if version not in VERSIONS:
        raise RamptoolError(f"unknown version {version!r}; use one of: {', '.join(VERSIONS)}")
    suite = get_suite(attack, norms, attack_options)
    for message in eps_scale_warnings({norm: eps[norm] for norm in norms if norm in eps}, x[0].numel()):
        warn(console, message)
    missing = [norm for norm in norms if norm not in eps]
    if missing:
        raise RamptoolError(f"no eps given for {', '.join(missing)}")
    if resume and out_dir is None:
        raise RamptoolError("resume needs the output folder of the interrupted evaluation")
    if len(y) == 0:
        raise RamptoolError("no points to evaluate")
    if not bool(torch.isfinite(x).all()) or not bool(((x >= 0) & (x <= 1)).all()):
        # the attacks clip to the [0,1] box: NaN stays NaN and an outside point is no clean point of the ball
        raise RamptoolError("the points to evaluate must be finite pixels in [0, 1] (NaN, infinite or out-of-box "
                            "values found); ramptool models take [0,1] images and normalise inside")
    if steps < 1:
        raise RamptoolError(f"steps must be positive, got {steps}")
    index = torch.arange(len(y)) if index is None else index.cpu()
    y = y.cpu()

    counter = PassCounter(model)
    was_training = model.training
    model.eval()
    try:
        logits = logits_of(counter, x, batch_size)
        clean = logits.argmax(1) == y
        groups = plan(suite, norms, version, logits.shape[1], union_only)
        settings = {"points": fingerprint(x, y, index), "n": len(y), "attack": attack, "union_only": union_only,
                    "seed": seed, "version": version, "steps": steps, "adversarial": keep_adversarial,
                    **({"norms": list(norms)} if union_only else {}),
                    **({"attack_options": suite.options} if suite.options else {})}
        path = Path(out_dir) / FLAGS_FILE if out_dir is not None else None
        flags = {norm: clean.clone() for norm in norms}
        log: list[dict] = []
        adversarial = {norm: {"index": [], "x_adv": []} for norm in norms} if keep_adversarial else None
        if resume and path.is_file():
            saved_flags, log, saved_adversarial = _load_runs(path, settings, eps, clean, norms)
            flags.update(saved_flags)
            if adversarial is not None:
                adversarial.update(saved_adversarial)
        resumed = [entry["run"] for entry in log]
        context = RunContext(counter, dict(eps), version, seed, steps, batch_size, logits.shape[1], batched,
                             suite.options)

        for group in groups:
            # one progress bar per norm (the union's in the cascade); a run moves it by every clean point, the
            # ones it attacks and the ones already broken
            task = "union" if union_only else group[0].norm
            total = int(clean.sum()) * sum(1 for other in groups if union_only or other[0].norm == task)
            detail = " + ".join(run_label(run) for run in group)
            if all(run.key in resumed for run in group):
                if on_progress is not None:
                    on_progress(task, detail, int(clean.sum()), total)
                continue
            candidates = clean.clone()
            for norm in (norms if union_only else [group[0].norm]):
                candidates &= flags[norm]
            chosen = candidates.nonzero().squeeze(1)
            started, before = time.perf_counter(), counter.counts()
            try:
                found = distributed.map_points(
                    lambda *share: _attack_share(suite, context, group, *share, keep_adversarial),
                    x[chosen], y[chosen], index[chosen], logits[chosen], chosen)
            except KeyboardInterrupt:
                saved_note = f"; finished runs are saved in {path}, continue with --resume" if path else ""
                raise EvaluationInterrupted(f"evaluation interrupted during {detail}{saved_note}") from None
            after, seconds = counter.counts(), time.perf_counter() - started
            passes = distributed.all_reduce_sum(torch.tensor([after["forward"] - before["forward"],
                                                              after["backward"] - before["backward"]]))
            for run in group:
                hits = found[run.key]
                flags[run.norm][chosen[hits]] = False
                if adversarial is not None:
                    adversarial[run.norm]["index"] += found[f"{run.key}/position"].tolist()
                    adversarial[run.norm]["x_adv"].append(found[f"{run.key}/x_adv"])
                # the runs of a group step together on the same points: they share its time and passes evenly
                log.append({"run": run.key, "norm": run.norm, "attack": run.attack, "round": run.round,
                            "points": len(chosen), "broken": int(hits.sum()), "together": len(group),
                            "seconds": round(seconds / len(group), 3),
                            "forward": int(passes[0]) // len(group), "backward": int(passes[1]) // len(group)})
            if on_progress is not None:
                on_progress(task, f"{detail} on {len(chosen)} points", int(clean.sum()), total)
            if path is not None and distributed.is_main():
                _save_runs(path, {"clean": clean, **flags}, settings, eps, log, adversarial)
    finally:
        model.train(was_training)

    accuracy = accuracies({"clean": clean, **flags}, norms)
    messages = sanity_warnings(accuracy, norms, len(y), recorded_clean)
    for message in messages:
        warn(console, message)
    bounded = upper_bounds(groups, norms) if union_only else []
    report = {
        "n": len(y), "points_fingerprint": settings["points"], "norms": list(norms),
        "eps": {norm: eps[norm] for norm in norms}, "attack": attack,
        **({"attack_options": suite.options} if suite.options else {}),
        "grade": suite.grade, "version": version, "steps": steps, "seed": seed, "union_only": union_only,
        "accuracy": accuracy, "upper_bounds": [*norms, "union"] if suite.bound else bounded,
        "seconds": {norm: round(sum(e["seconds"] for e in log if e["norm"] == norm), 3) for norm in norms},
        "passes": {norm: {kind: sum(e[kind] for e in log if e["norm"] == norm) for kind in ("forward", "backward")}
                   for norm in norms},
        "attacked": {norm: next((e["points"] for e in log if e["norm"] == norm), 0) for norm in norms},
        "settings": settings_summary(suite, norms, version, logits.shape[1], steps),
        "runs": log, "resumed": resumed, "warnings": messages,
    }
    if adversarial is not None:
        report["adversarial"] = {norm: {"index": torch.tensor(found["index"], dtype=torch.int64),
                                        "x_adv": torch.cat(found["x_adv"]) if found["x_adv"] else x[:0].clone()}
                                 for norm, found in adversarial.items()}
    return report


def _attack_share(suite, context, group, x, y, index, logits, positions, keep_adversarial) -> dict:
    """One group of runs on (this process's share of) the chosen points: per run, which points it broke (each
    success checked) and, if they are kept, those adversarial examples with their positions."""
    found = suite.attack(context, group, x, y, index, logits)
    out = {}
    for run, x_adv in zip(group, found):
        hits = verified_successes(context.model, x, y, x_adv.cpu(), run.norm, context.eps[run.norm],
                                  context.batch_size)
        out[run.key] = hits
        if keep_adversarial:
            out[f"{run.key}/x_adv"], out[f"{run.key}/position"] = x_adv[hits].cpu(), positions[hits]
    return out


def upper_bounds(groups: list[list], norms: list[str]) -> list[str]:
    """The norms whose cascade accuracy may overstate: some run of theirs came after or together with a run of
    another norm, so points that norm broke were not attacked (to the end) in this one."""
    bounded = []
    for norm in norms:
        last_own = max(i for i, group in enumerate(groups) if any(run.norm == norm for run in group))
        if any(run.norm != norm for group in groups[:last_own + 1] for run in group):
            bounded.append(norm)
    return bounded


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
                     attack: str = "apgd", version: str = "fast", steps: int = 100, batch_size: int = 500,
                     seed: int = 0, reference_eps: dict[str, float] | None = None, console: Console | None = None,
                     attack_options: dict | None = None, on_progress=None) -> dict:
    """Robust accuracy at each eps of each norm, on the same points: every (norm, eps) is a full evaluation of
    that norm with ``attack`` (AutoAttack-grade by default). ``reference_eps`` (the threat model's eps) is
    recorded for the plot; ``on_progress`` gets one bar per norm over all its eps values."""
    accuracy: dict[str, list[float]] = {}
    seconds: dict[str, float] = {}
    passes: dict[str, dict[str, int]] = {}
    for norm, values in eps_values.items():
        accuracy[norm], seconds[norm], passes[norm] = [], 0.0, {"forward": 0, "backward": 0}
        for value in values:
            report_progress = None
            if on_progress is not None:
                def report_progress(task, detail, done, total, norm=norm, value=value, values=values):
                    on_progress(norm, f"eps {value:g}: {detail}", done, total * len(values))
            report = evaluate_union(model, x, y, [norm], {norm: value}, version=version, batch_size=batch_size,
                                    seed=seed, attack=attack, steps=steps, attack_options=attack_options,
                                    on_progress=report_progress)
            accuracy[norm].append(report["accuracy"][norm])
            seconds[norm] = round(seconds[norm] + report["seconds"][norm], 3)
            for kind in passes[norm]:
                passes[norm][kind] += report["passes"][norm][kind]
    messages = not_falling_warnings(eps_values, accuracy, len(y))
    for message in messages:
        warn(console, message)
    return {"n": len(y), "attack": attack, "grade": report["grade"], "upper_bound": report["grade"] == UPPER_BOUND,
            "version": version, "steps": steps,
            "seed": seed, **({"attack_options": report["attack_options"]} if "attack_options" in report else {}),
            "clean": report["accuracy"]["clean"], "eps_values": {k: list(v) for k, v in eps_values.items()},
            "accuracy": accuracy, "reference_eps": dict(reference_eps or {}), "seconds": seconds, "passes": passes,
            "warnings": messages}


def load_for_evaluation(ckpt, dataset: str | None = None, arch: str | None = None, device="cpu", **loading):
    """(model, metadata, dataset name): the checkpoint, checked against the dataset it will be evaluated on;
    ``loading``: normalize, arch_options and model_dir, as ``load_checkpoint`` takes them."""
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


def evaluation_points(dataset: str, data_dir, subset: int | None, sample_seed=None, input_shape=None):
    """(x, y): the test points at the checkpoint's resolution (``input_shape``: image folders can be read at
    any), the first ``subset``, a seeded random ``subset``, or all of them (None)."""
    if subset is None and sample_seed is not None:
        raise RamptoolError("--sample-seed draws a random subset: give --n-examples N with it, not 'all'")
    size = input_shape[-1] if get_dataset(dataset).resizable else None
    return load_split(dataset, "test", data_dir, subset, sample_seed=sample_seed, image_size=size).tensors()

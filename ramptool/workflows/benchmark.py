"""``ramptool benchmark``: a multi-norm leaderboard of any set of models, RobustBench's zoo included.

Every model is evaluated by ``evaluate_union`` (AutoAttack-grade) on the same test points, in a folder of its own
inside the output folder: ``flags.safetensors`` after each attack run, ``result.json`` once it is done. A run that
is stopped continues with ``resume=True``: finished models are read back, the interrupted one continues from its
last finished attack run. A model that cannot be loaded or evaluated is recorded with its reason in its
``result.json`` and the others go on (it is tried again on resume). Under torchrun the points of every attack run
are shared out as in ``eval union``; rank 0 writes.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from rich.console import Console

from ramptool.checkpoints.format import read_metadata
from ramptool.checkpoints.loading import checkpoint_names
from ramptool.errors import RamptoolError
from ramptool.evaluation.corruptions import (
    CORRUPTIONS,
    SEVERITIES,
    default_cache_dir,
    evaluate_corruption_folder,
    evaluate_corruptions,
    folder_corruptions,
)
from ramptool.evaluation.leaderboard import accuracy_keys, ranked, with_intervals, write_leaderboard
from ramptool.evaluation.report import attack_label, eps_text, provenance, write_json
from ramptool.evaluation.suite import VERSIONS
from ramptool.evaluation.union import (
    FLAGS_FILE,
    evaluate_union,
    evaluation_points,
    load_for_evaluation,
    recorded_clean_accuracy,
)
from ramptool.models import robustbench
from ramptool.runtime import distributed
from ramptool.threat import NORMS, parse_eps

RESULT_FILE = "result.json"
# RobustBench's convention: its whole CIFAR test sets and 5,000 ImageNet validation points; other datasets: all
DEFAULT_N_EXAMPLES = {"cifar10": 10_000, "cifar100": 10_000, "imagenet": 5_000}


def zoo_selection(selections: list[str], model_dir=None) -> list[str]:
    """The zoo names of every ``--zoo`` selection whose weights are in ``model_dir``."""
    found = []
    for selection in selections:
        present = robustbench.present_models(selection, model_dir)
        if not present:
            raise RamptoolError(f"--zoo {selection}: no weights of its models in "
                                f"{Path(model_dir or robustbench.DEFAULT_MODEL_DIR).resolve()} (RobustBench's layout "
                                f"<dir>/<dataset>/<threat_model>/<name>.pt); pass --model-dir")
        found += [spec for spec in present if spec not in found]
    return found


def benchmark_dataset(models: dict, dataset: str | None) -> str:
    """--dataset, else the one dataset the models record (a model that cannot be read says so later)."""
    if dataset is not None:
        return dataset
    recorded = set()
    for path in models.values():
        try:
            recorded.add((read_metadata(path) or {}).get("dataset"))
        except RamptoolError:
            continue
    recorded.discard(None)
    if len(recorded) != 1:
        found = f"the models are of {', '.join(sorted(recorded))}" if recorded else "no model records its dataset"
        raise RamptoolError(f"{found}: pass --dataset")
    return recorded.pop()


def declared_threat_model(metadata: dict) -> str:
    """What the model says it was trained against: its method and eps (a ramptool checkpoint, a fine-tune of a zoo
    model included), or its RobustBench track."""
    zoo = (metadata.get("source") or {}).get("robustbench")
    if "method" not in metadata and zoo:
        return f"RobustBench {zoo['dataset']} {zoo['threat_model']}"
    if metadata.get("method") == "clean":
        return "clean: none"
    threat = metadata.get("threat_model") or {}
    if not threat.get("norms"):
        return "-"
    eps = threat.get("eps", {})
    norms = ", ".join(f"{norm} {eps_text(eps[norm])}" if norm in eps else norm for norm in threat["norms"])
    return f"{metadata.get('method', 'trained')}: {norms}"


def weights_record(path, metadata: dict, device) -> dict:
    """Versions and the sha256 of the weights: the checkpoint file, or a zoo model's files as RobustBench reads
    them."""
    record = provenance(path if isinstance(path, Path) else None, device)
    source = metadata.get("source") or {}
    record["weights_sha256"] = [record["checkpoint_sha256"]] if "checkpoint_sha256" in record else \
        [entry["sha256"] for entry in source.get("weights", [])]
    if "robustbench" in source:
        record["robustbench"] = source["robustbench"]["version"]
    return record


def model_row(name: str, path, report: dict, metadata: dict, model: torch.nn.Module, device) -> dict:
    n = report["n"]
    keys = accuracy_keys(report["norms"])
    accuracy = {key: round(report["accuracy"][key], 6) for key in keys}
    seconds = round(sum(report["seconds"].values()), 3)
    processes = distributed.world_size()
    forward = sum(passes["forward"] for passes in report["passes"].values())
    backward = sum(passes["backward"] for passes in report["passes"].values())
    return {"name": name, "model": str(path), "status": "ok", "n": n, "accuracy": accuracy,
            "interval": with_intervals(accuracy, n), "upper_bounds": report["upper_bounds"],
            "threat_model": declared_threat_model(metadata),
            "parameters": sum(parameter.numel() for parameter in model.parameters()),
            "cost": {"device": torch.device(device).type, "processes": processes, "seconds": seconds,
                     "device_seconds": round(seconds * processes, 3), "forward_per_point": round(forward / n, 2),
                     "backward_per_point": round(backward / n, 2)},
            "provenance": {**weights_record(path, metadata, device),
                           "points_fingerprint": report["points_fingerprint"]},
            "report": report}


def saved_result(folder: Path) -> dict | None:
    """A model's ``result.json``, if a finished or failed evaluation left one."""
    try:
        return json.loads((folder / RESULT_FILE).read_text())
    except (OSError, ValueError):
        return None


def corruption_request(names: list[str] | None, severities: list[int] | None, folder) -> dict:
    """Which corruptions the column averages over: ``names`` (default: the 15 standard ones, or those the folder
    holds), at ``severities`` (default 1-5), corrupted here or read from ``folder`` (CIFAR-10-C / ImageNet-C)."""
    if names is None:
        names = folder_corruptions(folder) if folder is not None else list(CORRUPTIONS)
    return {"names": list(names), "severities": list(severities or SEVERITIES),
            "from": str(Path(folder).resolve()) if folder is not None else None}


def add_corruptions(row: dict, model, metadata: dict, x, y, request: dict, dataset: str, seed: int, batch_size: int,
                    cache_dir=None) -> dict:
    """The row with the mean accuracy under the requested corruptions (on the same first points, or the first
    ones of each pre-corrupted set), which ranks nothing: union accuracy does."""
    if request["from"] is not None:
        report = evaluate_corruption_folder(model, request["from"], request["names"], request["severities"], len(y),
                                            metadata["input_shape"], metadata["num_classes"], batch_size)
    else:
        report = evaluate_corruptions(model, x, y, request["names"], request["severities"], seed, dataset,
                                      cache_dir or default_cache_dir(), batch_size)
    mean = round(report["mean"], 6)
    row["accuracy"]["corruptions"] = mean
    row["interval"]["corruptions"] = with_intervals({"mean": mean}, report["n"])["mean"]
    row["corruptions"] = {key: report[key] for key in ("n", "source", "corruption_mean", "severity_mean")}
    return row


def failed_row(name: str, path, error: Exception) -> dict:
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return {"name": name, "model": str(path), "status": "failed", "reason": reason}


def check_out(out: Path, names, resume: bool, overwrite: bool) -> None:
    """Never replace a leaderboard or a model's evaluation without being told to."""
    if resume or overwrite:
        return
    held = [out / name for name in names if (out / name / RESULT_FILE).exists() or (out / name / FLAGS_FILE).exists()]
    if (out / "leaderboard.json").exists() or held:
        raise RamptoolError(f"{out} already holds a benchmark; pass --resume to continue it, --overwrite to start "
                            f"over, or choose another --out")


def benchmark(models: list[str], out, *, dataset: str | None = None, data_dir=None, norms=NORMS, eps=None,
              n_examples: int | None | str = "default", sample_seed: int | None = None, version: str = "fast",
              union_only: bool = True, steps: int = 100, batch_size: int = 500, seed: int = 0, device="cpu",
              model_dir=None, corruptions: dict | None = None, corruption_cache=None, resume: bool = False,
              overwrite: bool = False, console: Console | None = None, on_progress=None) -> dict:
    """Evaluate every model (anything ``--ckpt`` takes) on the same test points and write the leaderboard
    (``leaderboard.{json,md,csv,html}``) into ``out``; the leaderboard document.

    ``eps``: text or dict, completed from the dataset's defaults; ``n_examples``: a number, None (the whole test
    split) or 'default' (RobustBench's convention: 10,000 CIFAR points, 5,000 ImageNet ones, else all);
    ``union_only``: the cascade (same union, per-norm numbers upper bounds) or the full per-norm evaluation;
    ``corruptions`` (``corruption_request``): adds the mean accuracy under common corruptions as a column."""
    console = console or Console(quiet=not distributed.is_main())
    if not models:
        raise RamptoolError("give at least one model (a checkpoint, run folder or robustbench: name) or --zoo")
    if version not in VERSIONS:
        raise RamptoolError(f"unknown --version {version!r}; use one of: {', '.join(VERSIONS)}")
    names = checkpoint_names(models)
    name = benchmark_dataset(names, dataset)
    eps_values = parse_eps(eps, name)
    missing = [norm for norm in norms if norm not in eps_values]
    if missing:
        raise RamptoolError(f"no default eps for {', '.join(missing)} on {name}: pass --eps")
    eps_values = {norm: eps_values[norm] for norm in norms}
    subset = DEFAULT_N_EXAMPLES.get(name) if n_examples == "default" else n_examples
    out = Path(out)
    check_out(out, names, resume, overwrite)
    settings = {"dataset": name, "norms": list(norms), "eps": eps_values, "n_examples": subset,
                "sample_seed": sample_seed, "version": version, "union_only": union_only, "attack": "apgd",
                "steps": steps, "seed": seed, "corruptions": corruptions}
    points: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
    rows = []
    for model_name, path in names.items():
        folder = out / model_name
        saved = saved_result(folder) if resume else None
        if saved is not None and saved.get("status") == "ok":
            if saved.get("settings") != settings:
                raise RamptoolError(f"cannot resume: {folder / RESULT_FILE} was made with other settings "
                                    f"({saved.get('settings')}); use another --out or --overwrite")
            console.print(f"{model_name}: finished before, kept", highlight=False)
            rows.append(saved["row"])
            continue
        try:
            model, metadata, _ = load_for_evaluation(path, name, device=device, model_dir=model_dir)
        except Exception as error:  # unreadable, weights missing, another dataset: recorded, the others go on
            row = failed_row(model_name, path, error)
        else:
            shape = tuple(metadata["input_shape"])
            if shape not in points:
                points[shape] = evaluation_points(name, data_dir, subset, sample_seed, shape)
            console.print(f"evaluating {model_name} on {len(points[shape][1])} {name} points", highlight=False)
            progress = on_progress and (lambda task, *state, model_name=model_name:
                                        on_progress(f"{model_name} {task}", *state))
            try:
                report = evaluate_union(model, *points[shape], list(norms), eps_values, version=version,
                                        out_dir=folder, resume=resume, union_only=union_only, batch_size=batch_size,
                                        seed=seed, steps=steps, recorded_clean=recorded_clean_accuracy(metadata),
                                        console=console, on_progress=progress)
                row = model_row(model_name, path, report, metadata, model, device)
                if corruptions is not None:
                    row = add_corruptions(row, model, metadata, *points[shape], corruptions, name, seed, batch_size,
                                          corruption_cache)
            except RamptoolError:  # the settings (steps, resume, ...), not this model: every model would fail
                raise
            except Exception as error:  # a model that breaks the attacks (e.g. in its forward): recorded
                row = failed_row(model_name, path, error)
        if row["status"] != "ok":
            console.print(f"[bold yellow]{model_name} not evaluated:[/] {row['reason']}", highlight=False)
        if distributed.is_main():
            write_json(folder / RESULT_FILE, {"settings": settings, "status": row["status"], "row": row})
        rows.append(row)
    first = next((row for row in rows if row["status"] == "ok"), None)
    document = {"settings": {**settings, "n": first["n"] if first else None,
                             "points_fingerprint": first["provenance"]["points_fingerprint"] if first else None},
                "attack": attack_label(first["report"]) if first else "-",
                "provenance": provenance(device=device),
                "models": [{key: value for key, value in row.items() if key != "report"} for row in ranked(rows)]}
    if distributed.is_main():
        write_leaderboard(document, out)
    return document

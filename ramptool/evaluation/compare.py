"""``ramptool compare``: the numbers of many runs and evaluations in one table, one plot, one file.

A source is an ``eval union`` report (its folder or report.json; every model in it is a row), an evaluation
``make reproduce`` saved (its report.json), or a run folder (its last per-epoch evaluation, ``--eval-n``). Each
row says how its numbers were measured (eps, points, attack) and how the model was trained (read from the
checkpoint's metadata), and where both came from. Rows whose numbers were measured differently (eps, points or
attack) are refused side by side unless mixing is asked for.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import statistics
from pathlib import Path

import torch
from matplotlib.figure import Figure
from rich.table import Table

from ramptool.checkpoints.format import MODEL_FILE, read_metadata
from ramptool.data.datasets import load_split
from ramptool.errors import RamptoolError
from ramptool.evaluation.report import (
    NORM_ORDER,
    attack_label,
    eps_line,
    is_bound,
    percent_cell,
    provenance,
    save_figure,
    wilson_interval,
    write_json,
    write_text,
)
from ramptool.evaluation.suite import UPPER_BOUND, get_suite
from ramptool.evaluation.union import fingerprint

METRICS_FILE = "metrics.jsonl"  # the trainer's (training/ sits above this layer)
REPORT_FILE = "report.json"
# how a row was trained: the keys --group-by takes, read from the checkpoint's metadata
TRAINING_KEYS = ("method", "lambda", "pair", "pairing", "steps", "epochs", "seed", "combiner", "arch", "dataset")
# what makes two rows' numbers comparable, and how a refusal names it
MEASUREMENT_KEYS = {"eps": "eps", "points": "points (fingerprint of the evaluated test points)",
                    "attack": "attack (grade, suite, steps)"}


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RamptoolError(f"{path} is not a readable JSON file ({error})") from None


def _history(folder: Path) -> list[dict]:
    path = folder / METRICS_FILE
    if not path.is_file():
        return []
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RamptoolError(f"{path} is not a readable metrics file ({error})") from None


def training_of(checkpoint) -> dict:
    """How the checkpoint was trained (None where it does not say: a foreign or zoo model) and its s/epoch, from
    its metadata and, for a run folder's model, the folder's metrics.jsonl."""
    path = Path(checkpoint) if checkpoint else None
    if path is not None and path.is_dir():
        path = path / MODEL_FILE
    metadata = (read_metadata(path) or {}) if path is not None and path.is_file() else {}
    config = metadata.get("config") or {}
    history = _history(path.parent) if path is not None and path.name == MODEL_FILE else []
    seconds = [record["seconds"] for record in history if isinstance(record.get("seconds"), int | float)]
    pair = (metadata.get("threat_model") or {}).get("pair")
    return {"method": metadata.get("method"), "lambda": metadata.get("lambda"),
            "pair": "+".join(pair) if pair else None, "pairing": metadata.get("pairing"),
            "steps": config.get("attack_steps"), "epochs": metadata.get("epochs"), "seed": config.get("seed"),
            "combiner": metadata.get("combiner"), "arch": metadata.get("arch"), "dataset": metadata.get("dataset"),
            "seconds_per_epoch": round(statistics.fmean(seconds), 2) if seconds else None}


def _report_rows(path: Path) -> list[dict]:
    document = _read_json(path)
    models = document.get("models") if isinstance(document, dict) else None
    if isinstance(document, dict) and isinstance(document.get("report"), dict):  # `make reproduce`'s: one model
        checkpoint = str((document.get("key") or {}).get("checkpoint") or path.parent)
        models = {"/".join(Path(checkpoint).parts[-2:]): {"checkpoint": checkpoint, **document["report"]}}
    if not isinstance(models, dict) or not models:
        raise RamptoolError(f"{path} is not an `eval union` report (no models)")
    rows = []
    for name, report in models.items():
        if not isinstance(report, dict) or not {"accuracy", "norms", "eps", "n", "attack"} <= set(report):
            raise RamptoolError(f"{path}: model {name!r} is not an `eval union` result (`compare` reads union "
                                f"reports, not corruption or unseen-adversary ones)")
        training = training_of(report.get("checkpoint"))
        rows.append({"name": name, "source": f"{path} [{name}]", "checkpoint": report.get("checkpoint"),
                     "norms": list(report["norms"]), "eps": dict(report["eps"]), "n": report["n"],
                     "points": report.get("points_fingerprint"), "attack": attack_label(report),
                     "grade": report.get("grade"), "accuracy": dict(report["accuracy"]),
                     "upper_bounds": list(report.get("upper_bounds", [])),
                     **training, "dataset": report.get("dataset") or training["dataset"]})
    return rows


_points_cache: dict[tuple, str] = {}


def _first_points_fingerprint(dataset: str, data_dir, n: int, image_size) -> str | None:
    """The fingerprint ``eval union`` gives the first ``n`` test points (the per-epoch evaluation's), or None
    when the dataset cannot be read here."""
    key = (dataset, data_dir, n, image_size)
    if key not in _points_cache:
        try:
            x, y = load_split(dataset, "test", data_dir, n, image_size=image_size).tensors()
        except RamptoolError:
            return None
        _points_cache[key] = fingerprint(x, y, torch.arange(len(y)))
    return _points_cache[key]


def _run_rows(folder: Path) -> list[dict]:
    metadata = read_metadata(folder / MODEL_FILE) if (folder / MODEL_FILE).is_file() else None
    if not metadata or "config" not in metadata:
        raise RamptoolError(f"{folder} holds no ramptool run (no {MODEL_FILE} with training metadata)")
    evaluated = [record for record in _history(folder) if isinstance(record.get("eval"), dict)]
    if not evaluated:
        raise RamptoolError(f"{folder}: the run has no evaluation of its own (trained without --eval-n); evaluate "
                            f"it with `ramptool eval union --ckpt {folder}` and compare the report")
    config, record = metadata["config"], evaluated[-1]
    norms = [norm for norm in record["eval"] if norm not in ("clean", "union")]
    eps = {norm: metadata["threat_model"]["eps"][norm] for norm in norms}
    measured = {"attack": "apgd", "version": "fast", "steps": config["eval_steps"],
                "grade": get_suite("apgd", norms).grade}  # how the trainer evaluates (Trainer.evaluate)
    points = _first_points_fingerprint(metadata["dataset"], config.get("data_dir"), config["eval_n"],
                                       config.get("image_size"))
    return [{"name": folder.name, "source": f"{folder / METRICS_FILE} [epoch {record['epoch']}]",
             "checkpoint": str(folder / MODEL_FILE), "norms": norms, "eps": eps, "n": config["eval_n"],
             "points": points, "attack": attack_label(measured), "grade": measured["grade"],
             "accuracy": dict(record["eval"]), "upper_bounds": [*norms, "union"] if measured["grade"] == UPPER_BOUND
             else [], **training_of(folder)}]


def _expand(given: str) -> list[Path]:
    matches = sorted(glob.glob(given, recursive=True)) if glob.has_magic(given) else [given]
    if not matches:
        raise RamptoolError(f"{given!r} matches nothing")
    return [Path(match) for match in matches]


def collect(paths: list[str]) -> list[dict]:
    """One row per model of every source: run folders, ``eval union`` folders, report.json files, globs of them.
    Row names are unique (a repeated name gets -2, -3, ...)."""
    if not paths:
        raise RamptoolError("give at least one run folder, eval folder or report.json")
    rows: list[dict] = []
    for given in paths:
        for path in _expand(given):
            if path.is_file():
                rows += _report_rows(path)
            elif (path / REPORT_FILE).is_file():
                rows += _report_rows(path / REPORT_FILE)
            elif (path / MODEL_FILE).is_file():
                rows += _run_rows(path)
            else:
                raise RamptoolError(f"{path} is neither a run folder, an eval folder nor a report.json")
    seen: dict[str, int] = {}
    for row in rows:
        count = seen[row["name"]] = seen.get(row["name"], 0) + 1
        if count > 1:
            row["name"] = f"{row['name']}-{count}"
    return rows


def _measurement(row: dict, key: str) -> str:
    if key == "eps":
        return eps_line(row["eps"])
    return str(row[key]) if row[key] is not None else "unknown"


def check_comparable(rows: list[dict]) -> None:
    """Refuse, naming what differs, to put side by side numbers measured on other eps, points or attacks."""
    differing = []
    for key, description in MEASUREMENT_KEYS.items():
        values: dict[str, list[str]] = {}
        for row in rows:
            values.setdefault(_measurement(row, key), []).append(row["name"])
        unknown = key == "points" and "unknown" in values
        if len(values) > 1 or (unknown and len(rows) > 1):
            shown = "; ".join(f"{value} ({', '.join(names)})" for value, names in values.items())
            differing.append(f"{description}: {shown}")
    if differing:
        raise RamptoolError("these numbers are not comparable, " + " | ".join(differing)
                            + "; pass --allow-mixed to show them side by side anyway")


def accuracy_columns(rows: list[dict]) -> list[str]:
    norms = {norm for row in rows for norm in row["norms"]}
    return ["clean", *[n for n in NORM_ORDER if n in norms], *sorted(norms - set(NORM_ORDER)), "union"]


def group(rows: list[dict], keys: list[str]) -> list[dict]:
    """Rows with equal ``keys`` (e.g. method, lambda) as one: each accuracy's mean and standard deviation (over
    seeds: the sample's, n-1; None for a group of one), the seeds, and the shared measurement."""
    unknown = [key for key in keys if key not in TRAINING_KEYS]
    if unknown:
        raise RamptoolError(f"--group-by {','.join(unknown)}: group by any of {', '.join(TRAINING_KEYS)}")
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[key] for key in keys), []).append(row)
    result = []
    for values, members in groups.items():
        columns = [c for c in accuracy_columns(members) if all(c in m["accuracy"] for m in members)]
        samples = {c: [m["accuracy"][c] for m in members] for c in columns}
        first = members[0]
        result.append({
            "name": ", ".join(f"{key} {_shown(value)}" for key, value in zip(keys, values)),
            **dict(zip(keys, values)), "models": [m["name"] for m in members], "count": len(members),
            "seeds": [m["seed"] for m in members],
            "mean": {c: statistics.fmean(v) for c, v in samples.items()},
            "std": {c: statistics.stdev(v) if len(v) > 1 else None for c, v in samples.items()},
            "upper_bounds": sorted({c for m in members for c in columns if is_bound(m, c)}),
            **{key: first[key] for key in ("norms", "eps", "n", "points", "attack", "grade")},
            "sources": [m["source"] for m in members]})
    return result


def _shown(value) -> str:
    if value is None:
        return "-"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _group_cell(group_row: dict, column: str) -> str:
    if column not in group_row["mean"]:
        return "-"
    bound = "≤" if column in group_row["upper_bounds"] else ""
    std = group_row["std"][column]
    return f"{bound}{100 * group_row['mean'][column]:.1f}" + (f" ± {100 * std:.1f}" if std is not None else "")


MEASURED_FIELDS = ("eps", "n", "points", "attack")
MODEL_FIELDS = ("method", "lambda", "pair", "pairing", "steps", "epochs", "seed", "s/epoch", "source")
GROUP_FIELDS = ("models", "seeds", "sources")


def _measured(row: dict) -> list[str]:
    return [eps_line(row["eps"]), str(row["n"]), _shown(row["points"]), row["attack"]]


def shared_measurement(rows: list[dict]) -> str | None:
    """'measured: <attack>, n=<n>, points <fingerprint>, eps <eps>' when every row was measured alike (the table
    then leaves those columns out), else None."""
    measured = {tuple(_measured(row)) for row in rows}
    if len(measured) != 1:
        return None
    eps, n, points, attack = measured.pop()
    return f"measured: {attack}, n={n}, points {points}, eps {eps}"


def _model_fields(row: dict) -> list[str]:
    return [*[_shown(row[key]) for key in ("method", "lambda", "pair", "pairing", "steps", "epochs", "seed",
                                           "seconds_per_epoch")], row["source"]]


def _group_fields(group_row: dict) -> list[str]:
    return [", ".join(group_row["models"]), ",".join(_shown(s) for s in group_row["seeds"]),
            "; ".join(group_row["sources"])]


def cells(rows: list[dict], groups: list[dict] | None) -> tuple[list[str], list[list[str]]]:
    """The table as text: its header and rows (accuracies in %, with their 95% Wilson interval, or mean ± std
    over a group's members; ≤ marks an upper bound). How the rows were measured is a column each unless they
    were all measured alike (then ``shared_measurement`` says it once)."""
    columns = accuracy_columns(rows)
    measured = list(MEASURED_FIELDS) if shared_measurement(rows) is None else []
    if groups is not None:
        return (["group", *columns, *measured, *GROUP_FIELDS],
                [[g["name"], *[_group_cell(g, c) for c in columns], *_measured(g)[:len(measured)],
                  *_group_fields(g)] for g in groups])
    return (["model", *columns, *measured, *MODEL_FIELDS],
            [[r["name"], *[percent_cell(r, c, with_error=True) for c in columns], *_measured(r)[:len(measured)],
              *_model_fields(r)] for r in rows])


def title(rows: list[dict], groups: list[dict] | None) -> str:
    what = ("accuracy (%), mean ± std over each group's models" if groups is not None
            else "accuracy (%), [95% Wilson interval]")
    return f"{what}, {UPPER_BOUND}" if any(row["grade"] == UPPER_BOUND for row in rows) else what


def rich_table(rows: list[dict], groups: list[dict] | None = None) -> Table:
    header, body = cells(rows, groups)
    table = Table(title=title(rows, groups))
    for index, column in enumerate(header):
        table.add_column(column, justify="right" if 0 < index <= len(accuracy_columns(rows)) else "left",
                         style="bold" if column == "union" else None, overflow="fold")
    for line in body:
        table.add_row(*line)
    return table


def markdown(rows: list[dict], groups: list[dict] | None = None) -> str:
    header, body = cells(rows, groups)
    accuracies = len(accuracy_columns(rows))
    lines = [title(rows, groups), "", "| " + " | ".join(header) + " |",
             "|---|" + "---:|" * accuracies + "---|" * (len(header) - 1 - accuracies)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in line) + " |" for line in body]
    shared = shared_measurement(rows)
    return "\n".join(lines + (["", shared] if shared else [])) + "\n"


def csv_text(rows: list[dict], groups: list[dict] | None = None) -> str:
    """One line per model (or group): accuracies as fractions with their interval bounds (or std), then the rest."""
    columns = accuracy_columns(rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    if groups is not None:
        writer.writerow(["group", *[f"{c}{part}" for c in columns for part in ("_mean", "_std")], "upper_bounds",
                         *MEASURED_FIELDS, *GROUP_FIELDS])
        for g in groups:
            writer.writerow([g["name"], *[_number(g[part].get(c)) for c in columns for part in ("mean", "std")],
                             " ".join(g["upper_bounds"]), *_measured(g), *_group_fields(g)])
    else:
        writer.writerow(["model", *[f"{c}{part}" for c in columns for part in ("", "_low", "_high")], "upper_bounds",
                         *MEASURED_FIELDS, *MODEL_FIELDS])
        for r in rows:
            values = []
            for c in columns:
                value = r["accuracy"].get(c)
                low, high = wilson_interval(value, r["n"]) if value is not None else (None, None)
                values += [_number(value), _number(low), _number(high)]
            writer.writerow([r["name"], *values, " ".join(c for c in columns if is_bound(r, c)), *_measured(r),
                             *_model_fields(r)])
    return buffer.getvalue()


def _number(value) -> str:
    return "" if value is None else f"{value:.6g}"


def plot(rows: list[dict], groups: list[dict] | None, path) -> Path:
    """Union against clean accuracy, one marker per group (error bars: std over its models) or per model
    (error bars: 95% Wilson intervals); the PNG's path, with PDF and SVG beside it."""
    figure = Figure(figsize=(4.5, 3.6), layout="constrained")
    axes = figure.subplots()
    points = groups if groups is not None else rows
    for point in points:
        if groups is not None:
            clean, union = point["mean"].get("clean"), point["mean"].get("union")
            errors = [[100 * (point["std"].get(c) or 0.0)] * 2 for c in ("clean", "union")]
        else:
            clean, union = point["accuracy"].get("clean"), point["accuracy"].get("union")
            errors = [[100 * (value - low), 100 * (high - value)]
                      for value, (low, high) in ((v, wilson_interval(v, point["n"])) for v in (clean, union))]
        if clean is None or union is None:
            continue
        axes.errorbar([100 * clean], [100 * union], xerr=[[errors[0][0]], [errors[0][1]]],
                      yerr=[[errors[1][0]], [errors[1][1]]], fmt="o", capsize=2, label=point["name"])
    bound = any(row["grade"] == UPPER_BOUND for row in rows)
    axes.set_xlabel("clean accuracy (%)", fontsize=8)
    axes.set_ylabel(f"union accuracy (%){', upper bound' if bound else ''}", fontsize=8)
    axes.tick_params(labelsize=8)
    bars = "std over the group's models" if groups is not None else "95% Wilson interval"
    measurements = sorted({(r["attack"], eps_line(r["eps"]), r["n"]) for r in rows})
    described = "; ".join(f"{attack}, eps {eps}, n={n}" for attack, eps, n in measurements)
    axes.set_title(f"{described}\nerror bars: {bars}", fontsize=6)
    if len(points) <= 12:
        axes.legend(fontsize=6)
    return save_figure(figure, path)


def compare(paths: list[str], group_by: list[str] | None = None, allow_mixed: bool = False) -> dict:
    """The rows of every source and, with ``group_by``, their groups; refuses incomparable numbers unless
    ``allow_mixed``."""
    rows = collect(paths)
    if not allow_mixed:
        check_comparable(rows)
    groups = group(rows, group_by) if group_by else None
    return {"rows": rows, "groups": groups}


def write_outputs(result: dict, csv_path=None, markdown_path=None, json_path=None, plot_path=None) -> list[Path]:
    rows, groups = result["rows"], result["groups"]
    written = []
    if csv_path:
        written.append(write_text(Path(csv_path), csv_text(rows, groups)))
    if markdown_path:
        written.append(write_text(Path(markdown_path), markdown(rows, groups)))
    if json_path:
        written.append(write_json(Path(json_path), {"provenance": provenance(), **result,
                                                    "upper_bound": any(r["grade"] == UPPER_BOUND for r in rows)}))
    if plot_path:
        written.append(plot(rows, groups, plot_path))
    return written


def parse_group_by(text: str | None) -> list[str] | None:
    keys = [part.strip() for part in (text or "").split(",") if part.strip()]
    return keys or None


"""``ramptool pair``: the key-pair finder. It trains one single-norm AT model per norm (or takes given ones),
evaluates each against every norm, and applies the rule of ``ramptool.training.keypair``; ``--pair auto`` is
resolved here, before a training run starts, never inside the trainer.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from rich.markup import escape
from rich.table import Table

from ramptool.attacks import known_norms
from ramptool.checkpoints.format import STATE_FILE, read_metadata, run_finished
from ramptool.data.datasets import get_dataset, load_split
from ramptool.errors import RamptoolError
from ramptool.evaluation.report import attack_label, eps_line
from ramptool.evaluation.suite import get_suite
from ramptool.evaluation.union import evaluate_union, load_for_evaluation
from ramptool.runtime.device import resolve_device
from ramptool.runtime.files import atomic_write
from ramptool.threat import parse_eps, parse_norm, parse_norms
from ramptool.training.config import TrainConfig
from ramptool.training.keypair import choose_pair, pair_warnings, single_trained_norm
from ramptool.training.resolve import resolve_config
from ramptool.training.trainer import train


def robustness_matrix(checkpoints: list[str], norms: list[str], eps: dict, dataset: str, data_dir=None,
                      n_examples: int = 500, steps: int = 100, device="cpu", attack: str = "apgd",
                      model_dir=None):
    """(R[trained norm][attack norm], checkpoint per norm, the attack's label) for one single-norm model per
    norm, under any evaluation attack of ``eval union`` (default: AutoAttack-grade; 'apgd-ce' or an attack
    family give upper bounds, and APGD-CE alone overestimates l1 robustness markedly)."""
    x, y = load_split(dataset, "test", data_dir, n_examples).tensors()
    matrix, sources, label = {}, {}, None
    for path in checkpoints:
        model, metadata, _ = load_for_evaluation(path, dataset, device=device, model_dir=model_dir)
        norm = single_trained_norm(metadata, path)
        if norm in matrix:
            raise RamptoolError(f"two checkpoints were trained for {norm}: {sources[norm]} and {path}")
        report = evaluate_union(model, x, y, norms, eps, attack=attack, steps=steps)
        matrix[norm] = {p: report["accuracy"][p] for p in norms} | {"clean": report["accuracy"]["clean"]}
        sources[norm], label = str(path), attack_label(report)
    ordered = {p: matrix[p] for p in norms if p in matrix}
    return ordered, sources, label


def save_heatmap(matrix: dict[str, dict[str, float]], norms: list[str], path: Path, title: str,
                 marked: tuple[str, ...] = ()) -> None:
    """R[model][attack] as a heatmap; the own-norm cells R[p][p] of the ``marked`` norms (the key pair) boxed."""

    models = list(matrix)
    values = [[100 * matrix[m][p] for p in norms] for m in models]
    fig = Figure(figsize=(1.4 * len(norms) + 2, 1.0 * len(models) + 1.5))
    ax = fig.subplots()
    image = ax.imshow(values, cmap="viridis", vmin=0, vmax=100)
    ax.set_xticks(range(len(norms)), [f"{p} attack" for p in norms])
    ax.set_yticks(range(len(models)), [f"{m}-AT" for m in models])
    for i, row in enumerate(values):
        for j, value in enumerate(row):
            ax.text(j, i, f"{value:.1f}", ha="center", va="center", color="white" if value < 60 else "black")
    for norm in marked:
        if norm in models and norm in norms:
            ax.add_patch(Rectangle((norms.index(norm) - 0.5, models.index(norm) - 0.5), 1, 1, fill=False,
                                   edgecolor="red", linewidth=2.5))
    fig.colorbar(image, ax=ax, label="robust accuracy (%)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def train_single_norm_models(norms, eps, dataset, data_dir, arch, epochs, subset, optimizer, lr, out: Path,
                             device, seed, progress=True) -> list[str]:
    paths = []
    for norm in norms:
        run = out / f"{norm}-at"
        if run_finished(run):
            paths.append(str(run))
            continue
        # an interrupted run continues (a saved run whose settings differ is refused, naming them), a new one starts
        train(TrainConfig(out=str(run), dataset=dataset, data_dir=data_dir, subset=subset, arch=arch, method="at",
                          norms=[norm], eps=dict(eps), epochs=epochs, optimizer=optimizer, lr=lr,
                          weight_decay=0.0 if optimizer == "adam" else 5e-4, schedule="cosine", device=device,
                          seed=seed, resume=(run / STATE_FILE).exists(), progress=progress))
        paths.append(str(run))
    return paths


def find_pair(checkpoints, norms, eps, dataset, data_dir=None, n_examples=500, steps=100, fine_tune_from=None,
              out: Path | None = None, device="cpu", attack: str = "apgd", model_dir=None) -> dict:
    matrix, sources, label = robustness_matrix(checkpoints, norms, eps, dataset, data_dir, n_examples, steps,
                                               device, attack, model_dir)
    q, r, evidence = choose_pair(matrix, fine_tune_from)
    classes = get_dataset(dataset).num_classes
    warnings = pair_warnings(matrix, q, r, 1 / classes if classes else None)
    result = {"q": q, "r": r, "pair": f"{q},{r}", "evidence": evidence, "warnings": warnings, "matrix": matrix,
              "eps": eps,
              "norms": norms, "dataset": dataset, "n_examples": n_examples, "attack": label,
              "grade": get_suite(attack).grade, "steps": steps, "checkpoints": sources,
              "fine_tune_from": fine_tune_from}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / "pair.json", lambda tmp: Path(tmp).write_text(json.dumps(result, indent=2)))
        title = (f"single-norm AT models vs each attack, {dataset}, n={n_examples}\n{label}\n"
                 f"eps {eps_line({p: eps[p] for p in norms})}; key pair q={q}, r={r} (boxed)")
        save_heatmap(matrix, norms, out / "pair_matrix.png", title, marked=(q, r))
    return result


def find_pair_command(ckpts, train_models, dataset, data_dir, arch, norms, eps, epochs, subset, optimizer, lr,
                      n_examples, steps, fine_tune_from, out, device, seed, console, attack="apgd",
                      model_dir=None) -> dict:
    """`ramptool pair`: optionally train the single-norm models, then evaluate and apply the rule."""
    known = known_norms()
    get_suite(attack)
    norm_list = parse_norms(norms, known)
    eps_map = parse_eps(eps, dataset, known)
    missing = [p for p in norm_list if p not in eps_map]
    if missing:
        raise RamptoolError(f"no eps for {', '.join(missing)}: pass --eps {missing[0]}=VALUE")
    fine_tune_norm = parse_norm(fine_tune_from, known) if fine_tune_from else None
    device_name = str(resolve_device(device))
    out_dir = Path(out)
    if train_models:
        console.print(f"training {', '.join(f'{p}-AT' for p in norm_list)} on {dataset} ({epochs} epochs each)")
        ckpts = list(ckpts) + train_single_norm_models(norm_list, eps_map, dataset, data_dir, arch, epochs, subset,
                                                       optimizer, lr, out_dir, device_name, seed)
    if not ckpts:
        raise RamptoolError("pass one --ckpt per norm (single-norm AT models), or --train to train them")
    result = find_pair(ckpts, norm_list, eps_map, dataset, data_dir, n_examples, steps, fine_tune_norm, out_dir,
                       device_name, attack, model_dir)
    table = Table(title=f"robust accuracy (%) of single-norm AT models, {n_examples} {dataset} test points, "
                        f"{result['attack']}")
    table.add_column("model")
    for column in ["clean", *norm_list]:
        table.add_column(column if column == "clean" else f"{column} attack", justify="right")
    for model_norm, row in result["matrix"].items():
        table.add_row(f"{model_norm}-AT", *[f"{100 * row[c]:.1f}" for c in ["clean", *norm_list]])
    console.print(table)
    console.print(f"key pair: [bold]q={result['q']}, r={result['r']}[/]  ({escape(result['evidence'])})")
    for message in result["warnings"]:
        console.print(f"[bold yellow]WARNING:[/] {escape(message)}", highlight=False)
    console.print(f"wrote {out_dir / 'pair.json'} and {out_dir / 'pair_matrix.png'}")
    return result


def resolve_auto_pair(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` (resolved) with ``--pair auto`` replaced by the key pair: from ``cfg.pair_from`` (a pair.json;
    fine-tuning overrides q with the checkpoint's norm), or found with the training run's own budget, in
    OUT/pair."""
    return resolve_config(dataclasses.replace(cfg, pair=_auto_pair(cfg, cfg.pair_from)))


def _auto_pair(cfg: TrainConfig, pair_from: str | None) -> list[str]:
    fine_tune_from, arch = None, cfg.arch
    if cfg.init:
        metadata = read_metadata(cfg.init) or {}
        trained = metadata.get("trained_norms") or []
        fine_tune_from = trained[0] if len(trained) == 1 else None
        arch = metadata.get("arch", cfg.arch)
    arch = arch or "small-cnn"
    if pair_from is not None:
        if not Path(pair_from).is_file():
            raise RamptoolError(f"--pair-from {pair_from}: file not found")
        try:
            saved = json.loads(Path(pair_from).read_text())
            matrix = saved["matrix"]
        except (json.JSONDecodeError, KeyError):
            raise RamptoolError(f"{pair_from} is not a pair.json written by `ramptool pair`") from None
        q, r, _ = choose_pair({p: matrix[p] for p in saved.get("norms", list(matrix)) if p in matrix},
                              fine_tune_from)
        return [q, r]

    out = Path(cfg.out) / "pair"
    norms = [p for p in ("linf", "l2", "l1") if p in cfg.eps]
    checkpoints = train_single_norm_models(norms, cfg.eps, cfg.dataset, cfg.data_dir, arch, cfg.epochs,
                                           cfg.subset, cfg.optimizer, cfg.lr, out,
                                           str(resolve_device(cfg.device)), cfg.seed, cfg.progress)
    result = find_pair(checkpoints, norms, cfg.eps, cfg.dataset, cfg.data_dir, n_examples=500,
                       fine_tune_from=fine_tune_from, out=out, device=str(resolve_device(cfg.device)))
    return [result["q"], result["r"]]

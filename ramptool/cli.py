"""The ``ramptool`` command line: a thin layer over the Python API. User mistakes end in one line and exit 2."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from ramptool.errors import RamptoolError

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="Train and evaluate classifiers robust to linf, l2 and l1 attacks at once (RAMP).")
console = Console()

MODE_DEFAULTS = {
    "train": {"lam": 2.0, "schedule": "static", "method": "ramp", "pair": ["linf", "l1"]},
    "finetune": {"lam": 0.5, "schedule": "piecewise-ft", "method": "ramp", "pair": ["linf", "l1"]},
}


def training_command(
    ctx: typer.Context,
    config: Path | None = typer.Option(None, "--config", help="TOML recipe; explicit flags override it."),
    ckpt: str | None = typer.Option(None, "--ckpt", help="finetune: checkpoint (or run folder) to start from."),
    out: str | None = typer.Option(None, "--out", help="Run folder (never wiped)."),
    dataset: str | None = typer.Option(None, help="Registered dataset (default: fashion-mnist)."),
    data_dir: str | None = typer.Option(None, help="Dataset root (default: ~/.cache/ramptool/data)."),
    subset: int | None = typer.Option(None, help="Train on the first N training points."),
    arch: str | None = typer.Option(None, help="Backbone (train), or --arch of a foreign state_dict "
                                                  "(finetune) (default: small-cnn)."),
    method: str | None = typer.Option(None, help="ramp, e-at, max, avg, msd, sat, at, clean (default: ramp)."),
    norms: str | None = typer.Option(None, help="Norms for max/avg/msd/sat/at, e.g. linf,l2,l1."),
    pair: str | None = typer.Option(None, help="Key pair q,r for ramp/e-at (q = source), or 'auto'."),
    pair_from: Path | None = typer.Option(None, help="With --pair auto: pair.json written by `ramptool pair`."),
    eps: str | None = typer.Option(None, help="e.g. linf=8/255,l2=0.5,l1=12 (default: dataset's)."),
    attack: str | None = typer.Option(None, help="Training attack family: apgd or pgd (default: apgd)."),
    attack_steps: int | None = typer.Option(None, help="Training attack iterations (default: 10)."),
    lam: float | None = typer.Option(None, "--lambda", help="RAMP pairing weight [0.5 finetune, 2.0 train]."),
    pairing: str | None = typer.Option(None, help="Pairing loss: kl, mse, cosine (default: kl)."),
    combiner: str | None = typer.Option(None, help="none, gp (per-epoch), gp-step (default: none)."),
    beta: float | None = typer.Option(None, help="GP mixing weight (default: 0.5)."),
    epochs: int | None = typer.Option(None, help="(default: 1)"),
    batch_size: int | None = typer.Option(None, help="(default: 128)"),
    optimizer: str | None = typer.Option(None, help="sgd (momentum 0.9) or adam (default: sgd)."),
    lr: float | None = typer.Option(None, help="Peak learning rate (default: 0.05)."),
    weight_decay: float | None = typer.Option(None, help="(default: 5e-4)"),
    no_decay_bn_bias: bool | None = typer.Option(None, "--no-decay-bn-bias/--decay-bn-bias",
                                                    help="Exempt BatchNorm and bias from weight decay."),
    schedule: str | None = typer.Option(None, help="piecewise-ft, static, cyclic, cosine, constant."),
    lr_drop_epoch: float | None = typer.Option(None, help="static schedule: epoch of the /10 drop."),
    seed: int | None = typer.Option(None, help="(default: 0)"),
    device: str | None = typer.Option(None, help="auto, cpu or cuda (default: auto)."),
    eval_n: int | None = typer.Option(None, help="After each epoch, AutoAttack-grade APGD-CE + APGD-T on N test "
                                                 "points."),
    amp: str | None = typer.Option(None, help="bf16 autocast (CUDA)."),
    channels_last: bool | None = typer.Option(None, "--channels-last", help="channels-last memory (CUDA)."),
    batch_attacks: str | None = typer.Option(None, help="auto, on, off: run several norms' attacks as one "
                                             "batch (ramp/max/avg; default auto = on for CUDA)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a run already in --out."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
):
    """Train from scratch (train) or fine-tune a checkpoint (finetune) with any registered method."""
    from ramptool.config import build_train_config, load_recipe
    from ramptool.trainer import train

    mode = ctx.info_name
    recipe = {**MODE_DEFAULTS[mode], **load_recipe(config)}
    if mode == "finetune" and ckpt is None and "init" not in recipe and not resume:
        raise RamptoolError("finetune needs --ckpt PATH (a ramptool checkpoint, or a state_dict with --arch)")
    if mode == "train" and (ckpt is not None or "init" in recipe):
        raise RamptoolError("train starts from random weights; use `ramptool finetune --ckpt` to start from one")
    cli = dict(out=out, dataset=dataset, data_dir=data_dir, subset=subset, arch=arch, init=ckpt, method=method,
               norms=norms, pair=pair, eps=eps, attack=attack, attack_steps=attack_steps, lam=lam,
               pairing=pairing, combiner=combiner, beta=beta, epochs=epochs, batch_size=batch_size,
               optimizer=optimizer, lr=lr, weight_decay=weight_decay, no_decay_bn_bias=no_decay_bn_bias,
               schedule=schedule, lr_drop_epoch=lr_drop_epoch, seed=seed, device=device, eval_n=eval_n,
               amp=amp, channels_last=channels_last, batch_attacks=batch_attacks, resume=resume or None,
               overwrite=overwrite or None, progress=progress)
    if resume:
        if out is None:
            raise RamptoolError("--resume needs --out, the run folder to continue")
        from ramptool.trainer import TrainConfig

        summary = train(TrainConfig(out=out, resume=True, progress=progress, device=device or "auto"))
    else:
        cfg = build_train_config(cli, recipe)
        if cfg.pair == "auto":
            from ramptool.pair import resolve_auto_pair

            cfg.pair = resolve_auto_pair(cfg, pair_from)
            console.print(f"key pair: q={cfg.pair[0]}, r={cfg.pair[1]}")
        summary = train(cfg)
    last = summary["history"][-1] if summary["history"] else {}
    console.print(f"done: {summary['epochs']} epochs, checkpoint {Path(summary['out']) / 'model.safetensors'}")
    if "eval" in last:
        print_accuracy_table({summary["out"]: last["eval"]})


app.command("train", help="Train a model from random weights with any registered method.")(training_command)
app.command("finetune", help="Fine-tune a checkpoint (e.g. an linf-AT model) into a multi-norm robust one.")(
    training_command)


def print_accuracy_table(rows: dict[str, dict[str, float]], title: str = "robust accuracy (%)") -> None:
    columns = [c for c in ("clean", "linf", "l2", "l1") if any(c in r for r in rows.values())]
    columns += sorted({k for r in rows.values() for k in r} - set(columns) - {"union"}) + ["union"]
    table = Table(title=title)
    table.add_column("model")
    for column in columns:
        table.add_column(column, justify="right")
    for name, row in rows.items():
        table.add_row(name, *[f"{100 * row[c]:.1f}" if c in row else "-" for c in columns])
    console.print(table)


@app.command()
def plugins():
    """List every registered component: kind, name, providing plugin, description."""
    from ramptool.plugins import registry

    table = Table(title="ramptool components")
    for column in ("kind", "name", "plugin", "description"):
        table.add_column(column)
    for component in registry().all():
        table.add_row(component.kind, component.name, component.plugin, component.description)
    console.print(table)


@app.command()
def info(ckpt: str = typer.Argument(..., help="Checkpoint file or run folder.")):
    """Print a checkpoint's metadata."""
    from ramptool.checkpoint import read_metadata, read_weights, resolve

    path = resolve(ckpt)
    metadata = read_metadata(path)
    if metadata is None:
        weights = read_weights(path)
        console.print(f"{path}: plain state_dict, {len(weights)} tensors, no ramptool metadata "
                      f"(import it with --arch)")
        return
    console.print_json(json.dumps(metadata, default=str))


@app.command()
def pair(
    ckpt: list[str] = typer.Option([], "--ckpt", help="Single-norm AT checkpoints (one per norm)."),
    train_models: bool = typer.Option(False, "--train", help="Train the single-norm AT models first."),
    dataset: str = typer.Option("fashion-mnist", help="Dataset for --train and the evaluation."),
    data_dir: str | None = typer.Option(None, help="Dataset root."),
    arch: str = typer.Option("small-cnn", help="Backbone for --train."),
    norms: str = typer.Option("linf,l2,l1", help="Norms to compare."),
    eps: str | None = typer.Option(None, help="e.g. linf=0.1,l2=1.5,l1=10 (default: dataset's)."),
    epochs: int = typer.Option(1, help="--train: epochs per model."),
    subset: int | None = typer.Option(None, help="--train: first N training points."),
    optimizer: str = typer.Option("adam", help="--train: sgd or adam."),
    lr: float = typer.Option(1e-3, help="--train: learning rate."),
    n_examples: int = typer.Option(500, help="Test points for the robustness matrix."),
    attack: str = typer.Option("apgd", help="apgd (AutoAttack-grade: APGD-CE + APGD-T with AutoAttack's "
                               "settings), autoattack (pyautoattack) or apgd-ce (one run: quick, an upper bound)."),
    steps: int = typer.Option(100, help="APGD iterations (AutoAttack's: 100)."),
    fine_tune_from: str | None = typer.Option(None, help="Norm of the model you will fine-tune (q override)."),
    out: str = typer.Option("runs/pair", help="Folder for pair.json, the heatmap and trained models."),
    device: str = typer.Option("auto"),
    seed: int = typer.Option(0),
):
    """Find the key tradeoff pair (q, r) of norms from single-norm AT models (SPEC.md §3)."""
    from ramptool.pair import find_pair_command

    find_pair_command(ckpts=ckpt, train_models=train_models, dataset=dataset, data_dir=data_dir, arch=arch,
                      norms=norms, eps=eps, epochs=epochs, subset=subset, optimizer=optimizer, lr=lr,
                      n_examples=n_examples, steps=steps, fine_tune_from=fine_tune_from, out=out,
                      device=device, seed=seed, console=console, attack=attack)


def _mount_eval():
    from ramptool.cli_eval import eval_app

    app.add_typer(eval_app, name="eval", help="Evaluate checkpoints: union (AutoAttack), corruptions, curve.")


_mount_eval()


def main(argv=None):
    try:
        app(args=argv, standalone_mode=True)
    except RamptoolError as error:
        Console(stderr=True).print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
        sys.exit(error.exit_code)


if __name__ == "__main__":
    main()

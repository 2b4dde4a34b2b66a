"""The ``ramptool`` command line: a thin layer over the Python API. User mistakes end in one line and exit 2."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ramptool.cli_eval import (
    ARCH_OPTION,
    ARCH_OPTIONS_OPTION,
    MODEL_DIR_OPTION,
    NORMALIZE_OPTION,
    eval_app,
    loading_options,
)
from ramptool.errors import RamptoolError

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="Train and evaluate classifiers robust to linf, l2 and l1 attacks at once (RAMP).")
console = Console()

CKPT_HELP = "Checkpoint file, run folder, or robustbench:<dataset>/<threat_model>/<name>."
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
    arch_option: list[str] = typer.Option([], "--arch-option", help="Backbone option name=value (e.g. "
                                          "cifar_stem=true, sub_block1=true); repeat. `ramptool plugins -v` lists "
                                          "each component's options."),
    normalize: str | None = typer.Option(None, help="none, dataset or MEAN/STD (default: dataset for a new model, "
                                         "none for a plain state_dict)."),
    model_dir: str | None = typer.Option(None, help="RobustBench weights for --ckpt robustbench:... "
                                         "(default: ./models)."),
    method: str | None = typer.Option(None, help="ramp, e-at, max, avg, msd, sat, at, clean (default: ramp)."),
    norms: str | None = typer.Option(None, help="Norms for max/avg/msd/sat/at, e.g. linf,l2,l1."),
    pair: str | None = typer.Option(None, help="Key pair q,r for ramp/e-at (q = source), or 'auto'."),
    pair_from: Path | None = typer.Option(None, help="With --pair auto: pair.json written by `ramptool pair`."),
    eps: str | None = typer.Option(None, help="e.g. linf=8/255,l2=0.5,l1=12 (default: dataset's)."),
    attack: str | None = typer.Option(None, help="Training attack family: apgd, pgd or a plugin's (default: apgd)."),
    attack_steps: int | None = typer.Option(None, help="Training attack iterations (default: 10)."),
    lam: float | None = typer.Option(None, "--lambda", help="RAMP pairing weight [0.5 finetune, 2.0 train]."),
    pairing: str | None = typer.Option(None, help="Pairing loss: kl, mse, cosine (default: kl)."),
    combiner: str | None = typer.Option(None, help="none, gp (per-epoch), gp-step (default: none)."),
    method_option: list[str] = typer.Option([], help="Training-method option name=value (repeatable)."),
    attack_option: list[str] = typer.Option([], help="Training-attack option name=value (repeatable)."),
    pairing_option: list[str] = typer.Option([], help="Pairing-loss option name=value (repeatable)."),
    combiner_option: list[str] = typer.Option([], help="Combiner option name=value (repeatable), e.g. beta=0.5 "
                                              "for gp."),
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
    eval_n: int | None = typer.Option(None, help="After each epoch, APGD-100 on N test points."),
    amp: str | None = typer.Option(None, help="bf16 autocast (CUDA)."),
    channels_last: bool | None = typer.Option(None, "--channels-last", help="channels-last memory (CUDA)."),
    batch_attacks: str | None = typer.Option(None, help="auto, on, off: run several norms' attacks as one "
                                             "batch (ramp/max/avg; default auto = on for CUDA)."),
    image_size: int | None = typer.Option(None, help="Image folders: resolution to train at (default: 224)."),
    workers: int | None = typer.Option(None, help="DataLoader worker processes per training process "
                                       "(default: from the CPU count; 0 for in-memory data on a CPU)."),
    sync_bn: bool | None = typer.Option(None, "--sync-bn", help="Under torchrun: BatchNorm statistics over the "
                                        "global batch (SyncBatchNorm)."),
    tensorboard: str | None = typer.Option(None, help="Folder for TensorBoard logs of every metrics.jsonl "
                                           "scalar."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a run already in --out."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
):
    """Train from scratch (train) or fine-tune a checkpoint (finetune) with any registered method."""
    from ramptool.config import build_train_config, load_recipe
    from ramptool.options import parse_assignments
    from ramptool.trainer import train

    mode = ctx.info_name
    recipe = {**MODE_DEFAULTS[mode], **load_recipe(config)}
    if mode == "finetune" and ckpt is None and "init" not in recipe and not resume:
        raise RamptoolError("finetune needs --ckpt PATH (a ramptool checkpoint, a state_dict with --arch, or "
                            "robustbench:<dataset>/<threat_model>/<name>)")
    if mode == "train" and (ckpt is not None or "init" in recipe):
        raise RamptoolError("train starts from random weights; use `ramptool finetune --ckpt` to start from one")
    cli = dict(out=out, dataset=dataset, data_dir=data_dir, subset=subset, arch=arch, init=ckpt, method=method,
               normalize=normalize, model_dir=model_dir,
               norms=norms, pair=pair, eps=eps, attack=attack, attack_steps=attack_steps, lam=lam,
               pairing=pairing, combiner=combiner, epochs=epochs, batch_size=batch_size,
               optimizer=optimizer, lr=lr, weight_decay=weight_decay, no_decay_bn_bias=no_decay_bn_bias,
               schedule=schedule, lr_drop_epoch=lr_drop_epoch, seed=seed, device=device, eval_n=eval_n,
               amp=amp, channels_last=channels_last, batch_attacks=batch_attacks, image_size=image_size,
               workers=workers, sync_bn=sync_bn, tensorboard=tensorboard, resume=resume or None,
               overwrite=overwrite or None, progress=progress,
               **{f"{kind}_options": parse_assignments(given, f"--{kind}-option") or None
                  for kind, given in (("arch", arch_option), ("method", method_option), ("attack", attack_option),
                                      ("pairing", pairing_option), ("combiner", combiner_option))})
    if resume:
        if out is None:
            raise RamptoolError("--resume needs --out, the run folder to continue")
        from ramptool.trainer import TrainConfig

        summary = train(TrainConfig(out=out, resume=True, progress=progress, device=device or "auto",
                                    workers=workers))
    else:
        cfg = build_train_config(cli, recipe)
        if cfg.pair == "auto":
            from ramptool.pair import resolve_auto_pair

            cfg.pair = resolve_auto_pair(cfg, pair_from)
            console.print(f"key pair: q={cfg.pair[0]}, r={cfg.pair[1]}")
        summary = train(cfg)
    from ramptool.distributed import is_main

    if not is_main():
        return
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
def plugins(verbose: bool = typer.Option(False, "--verbose", "-v", help="Also list the options of each component.")):
    """List every registered component (kind, name, providing plugin, description) and any skipped plugin."""
    from ramptool.plugins import registry

    found = registry()
    table = Table(title="ramptool components")
    for column in ("kind", "name", "plugin", "description", *(["options"] if verbose else [])):
        table.add_column(column)
    for component in found.all():
        options = ["\n".join(component.options) or "-"] if verbose else []
        table.add_row(component.kind, component.name, component.plugin, component.description, *options)
    console.print(table)
    if found.skipped:
        skipped = Table(title="skipped plugins")
        for column in ("plugin", "hook", "reason"):
            skipped.add_column(column)
        for entry in found.skipped:
            skipped.add_row(entry.plugin, entry.hook or "(import)", entry.reason)
        console.print(skipped)


def _export_sidecar(weights_path) -> dict | None:
    """The JSON that ``ramptool export`` wrote beside a weights file, if it is there."""
    from ramptool.checkpoint import sidecar_path

    try:
        sidecar = json.loads(sidecar_path(weights_path).read_text())
    except (OSError, ValueError):
        return None
    return sidecar if isinstance(sidecar, dict) and sidecar.get("format") == "ramptool-export" else None


@app.command()
def info(
    ckpt: str = typer.Argument(..., help=CKPT_HELP),
    model_dir: str | None = MODEL_DIR_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print only the metadata, as JSON."),
):
    """Print what input a checkpoint expects, where it came from, and its metadata."""
    from ramptool import robustbench
    from ramptool.checkpoint import describe_input, read_metadata, read_weights, resolve, sidecar_path

    if robustbench.is_zoo_name(ckpt):
        metadata = read_metadata(ckpt)
        files = robustbench.parse(ckpt).weight_files(model_dir or robustbench.DEFAULT_MODEL_DIR)
        found = ", ".join(f"{p} ({'present' if p.is_file() else 'missing'})" for p in files)
        notes = [f"RobustBench's network and input convention; weights: {found or 'from the Hugging Face hub (timm)'}"]
    else:
        path = resolve(ckpt)
        metadata = read_metadata(path)
        if metadata is None:
            weights = read_weights(path)
            console.print(f"{path}: plain state_dict, {len(weights)} tensors, no ramptool metadata: import it with "
                          f"--arch ARCH --dataset NAME --normalize none|dataset|MEAN/STD (default none: the network "
                          f"takes [0,1] pixels)", highlight=False, soft_wrap=True)
            sidecar = _export_sidecar(path)
            if sidecar is not None:
                console.print(f"{sidecar_path(path).name} (written by ramptool export): input {sidecar['input']}; "
                              f"import again with {sidecar['import']}", highlight=False, soft_wrap=True)
            return
        notes = [f"source: {json.dumps(metadata['source'], default=str)}"] if metadata.get("source") else []
    if as_json:
        console.print_json(json.dumps(metadata, default=str))
        return
    console.print(f"input: {describe_input(metadata)}", highlight=False, soft_wrap=True)
    for note in notes:
        console.print(note, highlight=False, soft_wrap=True)
    console.print_json(json.dumps(metadata, default=str))


@app.command()
def export(
    ckpt: str = typer.Argument(..., help=CKPT_HELP),
    out: Path = typer.Argument(..., help="OUT.pt (torch.save of tensors) or OUT.safetensors; OUT.json is written "
                                         "beside it."),
    dataset: str | None = typer.Option(None, help="Dataset of a plain state_dict (default: cifar10)."),
    arch: str | None = ARCH_OPTION,
    normalize: str | None = NORMALIZE_OPTION,
    arch_option: list[str] = ARCH_OPTIONS_OPTION,
    model_dir: str | None = MODEL_DIR_OPTION,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT and its sidecar if they exist."),
):
    """Write the bare network as a plain state_dict (no wrapper, no ramptool keys) and a JSON sidecar."""
    from ramptool.checkpoint import export_checkpoint, sidecar_path

    existing = [p for p in (out, sidecar_path(out)) if p.exists()]
    if existing and not overwrite:
        raise RamptoolError(f"{existing[0]} exists; pass --overwrite or choose another OUT")
    written, sidecar = export_checkpoint(ckpt, out, arch=arch, dataset=dataset,
                                         **loading_options(normalize, arch_option, model_dir))
    console.print(f"wrote {written} and {sidecar}", highlight=False, soft_wrap=True)


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
    attack: str = typer.Option("autoattack", help="autoattack (AutoAttack fast), apgd (APGD-CE, quick look) or a "
                               "registered attack family (upper bounds)."),
    steps: int = typer.Option(100, help="--attack apgd: iterations."),
    fine_tune_from: str | None = typer.Option(None, help="Norm of the model you will fine-tune (q override)."),
    out: str = typer.Option("runs/pair", help="Folder for pair.json, the heatmap and trained models."),
    device: str = typer.Option("auto"),
    seed: int = typer.Option(0),
    model_dir: str | None = MODEL_DIR_OPTION,
):
    """Find the key tradeoff pair (q, r) of norms from single-norm AT models.

    The rule is in docs/METHOD.md#the-key-tradeoff-pair.
    """
    from ramptool.pair import find_pair_command

    find_pair_command(ckpts=ckpt, train_models=train_models, dataset=dataset, data_dir=data_dir, arch=arch,
                      norms=norms, eps=eps, epochs=epochs, subset=subset, optimizer=optimizer, lr=lr,
                      n_examples=n_examples, steps=steps, fine_tune_from=fine_tune_from, out=out,
                      device=device, seed=seed, console=console, attack=attack, model_dir=model_dir)


app.add_typer(eval_app, name="eval", help="Evaluate checkpoints: union (AutoAttack), corruptions, curve, unseen.")


def main(argv=None):
    from ramptool import distributed

    try:
        with distributed.guard():
            app(args=argv, standalone_mode=True)
    except SystemExit as done:
        if done.code in (0, None):  # after a failure a peer may be gone: leave the group to the exit
            distributed.shutdown()
        raise
    except RamptoolError as error:
        # under torchrun every process says what stopped it, so a failure on one node is not lost
        where = f"rank {distributed.rank()}: " if distributed.launched() else ""
        Console(stderr=True).print(f"[bold red]error:[/] {escape(where + str(error))}", highlight=False,
                                   soft_wrap=True)
        sys.exit(error.exit_code)


if __name__ == "__main__":
    main()

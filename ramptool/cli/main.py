"""The ``ramptool`` command line: a thin layer over the Python API. User mistakes end in one line and exit 2."""

from __future__ import annotations

import inspect
import json
import signal
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ramptool.checkpoints.export import export_checkpoint, sidecar_path
from ramptool.checkpoints.format import read_metadata, read_weights, resolve
from ramptool.checkpoints.loading import describe_input
from ramptool.cli.benchmark import benchmark_command
from ramptool.cli.eval import (
    ARCH_OPTION,
    ARCH_OPTIONS_OPTION,
    MODEL_DIR_OPTION,
    NORMALIZE_OPTION,
    eval_app,
    loading_options,
)
from ramptool.cli.options import cli_options
from ramptool.errors import STOP_SIGNALS, RamptoolError, Stopped, stop_on_signals
from ramptool.evaluation import compare as comparison
from ramptool.evaluation.suite import UPPER_BOUND
from ramptool.models import robustbench
from ramptool.plugins.registry import registry
from ramptool.runtime import distributed
from ramptool.runtime.distributed import is_main
from ramptool.runtime.rundir import writer_lock
from ramptool.training.config import knob_of
from ramptool.training.recipes import RECIPES_DIR, recipe_description, shipped_recipes
from ramptool.training.resolve import resolve_config
from ramptool.training.sources import build_train_config
from ramptool.training.trainer import train
from ramptool.version import __version__
from ramptool.workflows.pair import find_pair_command, resolve_auto_pair

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  context_settings={"help_option_names": ["-h", "--help"]},
                  help="Train and evaluate classifiers robust to linf, l2 and l1 attacks at once (RAMP).")
console = Console()

CKPT_HELP = "Checkpoint file, run folder, or robustbench:<dataset>/<threat_model>/<name>."


def _print_version(value: bool) -> None:
    if value:
        console.print(f"ramptool {__version__}")
        raise typer.Exit()


@app.callback()
def _options(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                          help="Print ramptool's version and exit.")):
    """Train and evaluate classifiers robust to linf, l2 and l1 attacks at once (RAMP)."""


def _training_command(mode: str):
    """``ramptool train`` / ``finetune``: one option per TrainConfig knob (ramptool.config declares them)."""
    def command(config: str | None = None, show_help: bool = False, **flags):
        cfg = build_train_config(flags, recipe=config)
        if mode == "train" and cfg.init and not cfg.resume:
            raise RamptoolError("train starts from random weights; use `ramptool finetune --ckpt` to start from one")
        if mode == "finetune" and not cfg.init and not cfg.resume:
            raise RamptoolError("finetune needs --ckpt PATH (a ramptool checkpoint, a state_dict with --arch, or "
                                "robustbench:<dataset>/<threat_model>/<name>)")
        cfg = resolve_config(cfg)
        if cfg.pair == "auto":  # the finder trains models of its own: before this run's folder is locked
            cfg = resolve_auto_pair(cfg)
            if is_main():
                console.print(f"key pair: q={cfg.pair[0]}, r={cfg.pair[1]}")
        summary = train(cfg)
        if not is_main():
            return
        last = summary["history"][-1] if summary["history"] else {}
        console.print(f"done: {summary['epochs']} epochs, checkpoint {Path(summary['out']) / 'model.safetensors'}")
        if "eval" in last:
            print_accuracy_table({summary["out"]: last["eval"]})

    def print_help(ctx: typer.Context, value: bool) -> None:
        if value and not ctx.resilient_parsing:
            typer.echo(ctx.get_help(), color=ctx.color)
            raise typer.Exit()

    # typer's own help option shows as "--help <bool>": this is the same switch, shown as one. The knobs' options
    # come grouped in their panels (PANELS' order); the recipe leads the Output panel.
    shown_help = typer.Option(False, "--help", "-h", metavar="", is_eager=True, callback=print_help,
                              help="Show this message and exit.")
    recipe = typer.Option(None, "--config", metavar="<recipe>", rich_help_panel="Output",
                          help="TOML recipe, or the name of a shipped one (`ramptool recipes`); flags override it.")
    parameters = [inspect.Parameter("show_help", inspect.Parameter.KEYWORD_ONLY, default=shown_help, annotation=bool)]
    exclude = ("init",) if mode == "train" else ()
    for name, annotation, option in cli_options(exclude):
        if name == "init":
            option.help = escape(f"{knob_of(name).help} [required, here or as ckpt in the recipe]")
        if option.rich_help_panel == "Output" and "config" not in (p.name for p in parameters):
            parameters.append(inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, default=recipe,
                                                annotation=str | None))
        parameters.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option,
                                            annotation=annotation))
    command.__signature__ = inspect.Signature(parameters)
    return command


app.command("train", help="Train a model from random weights with any registered method.")(
    _training_command("train"))
app.command("finetune", help="Fine-tune a checkpoint (e.g. an linf-AT model) into a multi-norm robust one.")(
    _training_command("finetune"))


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


@app.command()
def recipes():
    """List the recipes and checkpoints shipped with ramptool (use a recipe by name: --config NAME)."""

    table = Table(title=f"shipped recipes ({RECIPES_DIR})")
    for column in ("name", "description"):
        table.add_column(column)
    for name, path in shipped_recipes().items():
        table.add_row(name, recipe_description(path))
    console.print(table)
    for checkpoint in sorted((RECIPES_DIR / "checkpoints").glob("*.safetensors")):
        console.print(f"checkpoint: {checkpoint}", highlight=False, soft_wrap=True)


def _export_sidecar(weights_path) -> dict | None:
    """The JSON that ``ramptool export`` wrote beside a weights file, if it is there."""

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
    evaluation = evaluation_line(metadata.get("metrics") or {})
    if evaluation:
        console.print(evaluation, highlight=False, soft_wrap=True)
    for line in attack_gap_lines(metadata.get("flagged_gaps")):
        console.print(line, highlight=False, soft_wrap=True)
    console.print_json(json.dumps(metadata, default=str))


def attack_gap_lines(flagged) -> list[str]:
    """The epochs a run's training-attack check flagged (``ramptool.training.attack_gap``), one line each."""
    if not isinstance(flagged, list):
        return []
    return [f"training-attack check: epoch {entry.get('epoch')}, {entry.get('norm')}: "
            f"{100 * entry['training_attack']:.1f}% under the training attack (an upper bound), "
            f"{100 * entry['strong']:.1f}% AutoAttack-grade: this run's training accuracies overstate its robustness"
            for entry in flagged if isinstance(entry, dict) and isinstance(entry.get("training_attack"), int | float)
            and isinstance(entry.get("strong"), int | float)]


def evaluation_line(metrics: dict) -> str | None:
    """The last epoch's evaluation as the checkpoint records it, with the attack that measured it; a number no
    attack is recorded for is an upper bound (older checkpoints measured with a single APGD-CE run)."""
    if not isinstance(metrics.get("eval"), dict):
        return None
    numbers = ", ".join(f"{key} {100 * value:.1f}" for key, value in metrics["eval"].items()
                        if isinstance(value, int | float))
    attack = metrics.get("eval_attack")
    if not isinstance(attack, str):
        return f"last evaluation: {numbers}: {UPPER_BOUND}: the attack that measured it is not recorded"
    return f"last evaluation: {numbers} ({attack})"


@app.command()
def compare(
    paths: list[str] = typer.Argument(..., help="Run folders, `eval union` folders, report.json files or globs "
                                      "of them (quote a glob with ** so that ramptool expands it)."),
    group_by: str | None = typer.Option(None, "--group-by", help="Training keys to group by, e.g. method,lambda: "
                                        "each group's mean ± std over its models (seeds). Keys: "
                                        + ", ".join(comparison.TRAINING_KEYS) + "."),
    allow_mixed: bool = typer.Option(False, "--allow-mixed", help="Show numbers measured on different eps, "
                                     "points or attacks side by side (refused otherwise)."),
    csv_path: Path | None = typer.Option(None, "--csv", help="Write the table as CSV (accuracies as fractions)."),
    md_path: Path | None = typer.Option(None, "--md", help="Write the table as markdown."),
    json_path: Path | None = typer.Option(None, "--json", help="Write every row (and group) as JSON."),
    plot_path: Path | None = typer.Option(None, "--plot", help="Plot union against clean accuracy, one marker per "
                                          "group or model, to FILE.png (PDF and SVG beside it)."),
):
    """One table of many runs and evaluations: clean, per-norm and union accuracy, how each was measured and
    trained, and where each number came from."""
    result = comparison.compare(paths, comparison.parse_group_by(group_by), allow_mixed)
    console.print(comparison.rich_table(result["rows"], result["groups"]))
    shared = comparison.shared_measurement(result["rows"])
    if shared:
        console.print(shared, highlight=False, soft_wrap=True)
    for path in comparison.write_outputs(result, csv_path, md_path, json_path, plot_path):
        console.print(f"wrote {path}", highlight=False, soft_wrap=True)


@app.command()
def export(
    ckpt: str = typer.Argument(..., help=CKPT_HELP),
    out: Path = typer.Argument(..., help="OUT.pt (torch.save of tensors) or OUT.safetensors; OUT.json is written "
                                         "beside it."),
    dataset: str | None = typer.Option(None, help="Dataset of a plain state_dict.", show_default="cifar10"),
    arch: str | None = ARCH_OPTION,
    normalize: str | None = NORMALIZE_OPTION,
    arch_option: list[str] = ARCH_OPTIONS_OPTION,
    model_dir: str | None = MODEL_DIR_OPTION,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT and its sidecar if they exist."),
):
    """Write the bare network as a plain state_dict (no wrapper, no ramptool keys) and a JSON sidecar."""

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
    eps: str | None = typer.Option(None, help="e.g. linf=0.1,l2=1.5,l1=10.", show_default="the dataset's"),
    epochs: int = typer.Option(1, help="--train: epochs per model."),
    subset: int | None = typer.Option(None, help="--train: first N training points."),
    optimizer: str = typer.Option("adam", help="--train: sgd or adam."),
    lr: float = typer.Option(1e-3, help="--train: learning rate."),
    n_examples: int = typer.Option(500, help="Test points for the robustness matrix."),
    attack: str = typer.Option("apgd", help="apgd (AutoAttack-grade: APGD-CE + APGD-T with AutoAttack's "
                               "settings), autoattack (pyautoattack), apgd-ce (one run: quick, an upper bound) or a "
                               "registered attack family (upper bounds)."),
    steps: int = typer.Option(100, help="APGD or attack family iterations (AutoAttack's: 100)."),
    fine_tune_from: str | None = typer.Option(None, help="Norm of the model you will fine-tune (q override)."),
    out: str = typer.Option("runs/pair", help="Folder for pair.json, the heatmap and trained models."),
    device: str = typer.Option("auto"),
    seed: int = typer.Option(0),
    model_dir: str | None = MODEL_DIR_OPTION,
):
    """Find the key tradeoff pair (q, r) of norms from single-norm AT models.

    The rule is in docs/METHOD.md#the-key-tradeoff-pair.
    """
    with writer_lock(out):
        find_pair_command(ckpts=ckpt, train_models=train_models, dataset=dataset, data_dir=data_dir, arch=arch,
                          norms=norms, eps=eps, epochs=epochs, subset=subset, optimizer=optimizer, lr=lr,
                          n_examples=n_examples, steps=steps, fine_tune_from=fine_tune_from, out=out,
                          device=device, seed=seed, console=console, attack=attack, model_dir=model_dir)


app.command("benchmark")(benchmark_command)
app.add_typer(eval_app, name="eval", help="Evaluate checkpoints: union (AutoAttack), corruptions, curve, unseen.")


def main(argv=None):
    # a training loop saves a checkpoint first; the caller's handlers come back when main returns
    previous = stop_on_signals()
    try:
        with distributed.guard():
            app(args=argv, standalone_mode=True)
    except SystemExit as done:
        if done.code in (0, None):  # after a failure a peer may be gone: leave the group to the exit
            distributed.shutdown()
        raise
    except (RamptoolError, Stopped) as stopped:
        if previous and distributed.launched():  # a torchrun worker is ending: torchrun repeats SIGTERM,
            previous = {}  # and a late one must not cut the error line
            for signum in STOP_SIGNALS:
                signal.signal(signum, signal.SIG_IGN)
        # under torchrun every process says what stopped it, so a failure on one node is not lost
        where = f"rank {distributed.rank()}: " if distributed.launched() else ""
        Console(stderr=True).print(f"[bold red]error:[/] {escape(where + str(stopped))}", highlight=False,
                                   soft_wrap=True)
        sys.exit(stopped.exit_code)
    finally:
        for signum, handling in previous.items():
            signal.signal(signum, handling)


if __name__ == "__main__":
    main()

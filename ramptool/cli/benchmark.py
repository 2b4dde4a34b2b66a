"""``ramptool benchmark``: the multi-norm leaderboard of a set of models; the work is in
``ramptool.workflows.benchmark``."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ramptool.cli.eval import (
    MODEL_DIR_OPTION,
    SAMPLE_SEED_OPTION,
    STEPS_OPTION,
    VERSION_OPTION,
    _device,
    _positive,
    console,
    parse_n_examples,
)
from ramptool.evaluation.corruptions import parse_corruptions, parse_severities
from ramptool.evaluation.leaderboard import LEADERBOARD_FILES, columns
from ramptool.evaluation.report import display
from ramptool.runtime.device import set_threads
from ramptool.runtime.distributed import is_main
from ramptool.runtime.progress import task_progress
from ramptool.runtime.rundir import writer_lock
from ramptool.threat import parse_eps, parse_norms
from ramptool.workflows.benchmark import benchmark, corruption_request, zoo_selection


def leaderboard_table(document: dict) -> Table:
    keys = columns(document)
    table = Table(title=f"leaderboard (%), {document['settings']['n']} points")
    for column in ("rank", "model", *(display(key) for key in keys)):
        table.add_column(column, justify="left" if column == "model" else "right")
    for row in document["models"]:
        if row["status"] == "ok":
            table.add_row(str(row["rank"]), row["name"], *[("≤" if key in row["upper_bounds"] else "")
                                                           + f"{100 * row['accuracy'][key]:.1f}" for key in keys])
    return table


def benchmark_command(
    models: list[str] = typer.Argument(None, help="Checkpoints, run folders or robustbench:<dataset>/<threat_model>/"
                                       "<name>, as --ckpt takes them.", show_default=False),
    zoo: list[str] = typer.Option([], "--zoo", help="Every RobustBench zoo model of cifar10, cifar10/Linf, "
                                  "cifar10/L2, ... whose weights are in --model-dir; repeatable."),
    model_dir: str | None = MODEL_DIR_OPTION,
    dataset: str | None = typer.Option(None, help="Dataset.", show_default="the models'"),
    data_dir: str | None = typer.Option(None, help="Dataset root."),
    norms: str = typer.Option("linf,l2,l1", help="Norms of the union."),
    eps: str | None = typer.Option(None, help="e.g. linf=8/255,l2=0.5,l1=12.", show_default="the dataset's"),
    n_examples: str | None = typer.Option(None, help="Test points: the first N, or 'all'.",
                                          show_default="RobustBench's: 10000 on CIFAR, 5000 on ImageNet, else all"),
    sample_seed: int | None = SAMPLE_SEED_OPTION,
    version: str = VERSION_OPTION,
    steps: int = STEPS_OPTION,
    union_only: bool = typer.Option(True, "--union-only/--full", help="--union-only: the cascade, the same union "
                                    "in less time, per-norm columns upper bounds; --full: every norm exactly."),
    corruptions: str | None = typer.Option(None, "--corruptions", help="Add the mean accuracy under these common "
                                           "corruptions (e.g. fog,snow, or all) as a column; it ranks nothing.",
                                           show_default=False),
    corruptions_from: Path | None = typer.Option(None, help="Pre-corrupted sets for that column instead: "
                                                 "RobustBench's CIFAR-10-C folder (<corruption>.npy, labels.npy) "
                                                 "or an ImageNet-C tree.", show_default=False),
    severities: str | None = typer.Option(None, help="Corruption severities, e.g. 1,3,5.", show_default="1-5"),
    resume: bool = typer.Option(False, "--resume", help="Keep the models finished in --out and continue the "
                                "interrupted one from its last attack run."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Evaluate every model again, replacing --out's."),
    out: Path = typer.Option(Path("runs/benchmark"), help="Folder for the leaderboard and a folder per model."),
    batch_size: int = typer.Option(500, help="Attack batch size."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    threads: int | None = typer.Option(None, help="Torch CPU threads per process.",
                                       show_default="$OMP_NUM_THREADS, else 1 on a CPU"),
    seed: int = typer.Option(0, help="Attack seed (random starts)."),
):
    """A multi-norm leaderboard: every model on the same points, ranked by union accuracy (AutoAttack-grade)."""
    norm_list = parse_norms(norms)
    parse_eps(eps)  # its syntax now; the dataset's defaults complete it
    subset = "default" if n_examples is None else parse_n_examples(n_examples)
    _positive(steps, "--steps")
    _positive(batch_size, "--batch-size")
    if threads is not None:
        _positive(threads, "--threads")
    names = None if corruptions in (None, "all") else parse_corruptions(corruptions)
    request = corruption_request(names, parse_severities(severities), corruptions_from) \
        if corruptions is not None or corruptions_from is not None else None
    listed = [*(models or []), *zoo_selection(zoo, model_dir)]
    with writer_lock(out):
        target = _device(device)
        set_threads(threads, target)
        with task_progress(console) as progress:
            document = benchmark(listed, out, dataset=dataset, data_dir=data_dir, norms=norm_list, eps=eps,
                                 n_examples=subset, sample_seed=sample_seed, version=version, union_only=union_only,
                                 steps=steps, batch_size=batch_size, seed=seed, device=target, model_dir=model_dir,
                                 corruptions=request, resume=resume, overwrite=overwrite, console=console,
                                 on_progress=progress)
    console.print(leaderboard_table(document))
    for row in document["models"]:
        if row["status"] != "ok":
            console.print(f"{row['name']}: not evaluated: {row['reason']}", highlight=False, soft_wrap=True)
    if is_main():
        console.print(f"wrote {', '.join(str(out / name) for name in LEADERBOARD_FILES)}", highlight=False,
                      soft_wrap=True)

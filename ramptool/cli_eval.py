"""``ramptool eval``: union accuracy (AutoAttack), common corruptions, robust accuracy vs eps, unseen adversaries.

A thin layer: the work happens in ``ramptool.evaluation``. User mistakes raise RamptoolError (one line, exit 2).
Under torchrun every process evaluates its share of the test points and rank 0 prints and writes the reports,
the same files a single process writes.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import typer
from rich.console import Console

from ramptool.errors import RamptoolError
from ramptool.options import parse_assignments

eval_app = typer.Typer(no_args_is_help=True)
console = Console()

DEFAULT_MULTIPLES = "0.25,0.5,1,1.5,2"
# help is rich markup: \\[ is a literal [
CKPT_HELP = ("Checkpoint, run folder or robustbench:<dataset>/<threat_model>/<name>; repeat to compare models. "
             "\\[required]")


def _positive(value: int, flag: str) -> int:
    if value <= 0:
        raise RamptoolError(f"{flag} must be positive, got {value}")
    return value


def _device(name: str):
    """The device of this process (under torchrun: its rank's GPU); only rank 0 prints."""
    from ramptool.distributed import setup
    from ramptool.trainer import resolve_device

    where = setup(resolve_device(name))
    console.quiet = not where.is_main
    return where.device


def _is_main() -> bool:
    from ramptool.distributed import is_main

    return is_main()


# how to read a checkpoint that does not describe itself: one option set for every command that takes --ckpt
ARCH_OPTION = typer.Option(None, "--arch", help="Architecture of a plain state_dict without metadata: a backbone, "
                           "timm:<name> or robustbench:<dataset>/<threat_model>/<name>.")
NORMALIZE_OPTION = typer.Option(None, "--normalize", help="Input normalisation a plain state_dict expects: none "
                                "([0,1] pixels: E-AT, RAMP, RobustBench; the default), dataset (the dataset's "
                                "mean/std) or MEAN/STD, e.g. 0.4914,0.4822,0.4465/0.2471,0.2435,0.2616.")
ARCH_OPTIONS_OPTION = typer.Option([], "--arch-option", help="Backbone option key=value of a plain state_dict "
                                   "(e.g. cifar_stem=true); repeat.")
MODEL_DIR_OPTION = typer.Option(None, "--model-dir", help="RobustBench weights for --ckpt robustbench:<dataset>/"
                                "<threat_model>/<name>, in RobustBench's layout <dir>/<dataset>/<threat_model>/"
                                "<name>.pt.", show_default="./models")


def loading_options(normalize: str | None, arch_option: list[str], model_dir: str | None) -> dict:
    """The keyword arguments of ``load_checkpoint`` that the shared options give."""
    return {"normalize": normalize, "arch_options": parse_assignments(arch_option, "--arch-option"),
            "model_dir": model_dir}


def checkpoint_names(paths: list[str]) -> dict[str, Path | str]:
    """Short unique names for the table and for per-model folders inside --out: the run folder's name (or the
    file's stem, or the zoo model's name), from the normalised path (``runs/x/a/..`` is ``x``) and reduced to a
    safe path component."""
    from ramptool.checkpoint import MODEL_FILE, resolve
    from ramptool.robustbench import is_zoo_name
    from ramptool.rundir import safe_name

    if not paths:
        raise RamptoolError("give at least one --ckpt (a checkpoint file or run folder)")
    names: dict[str, Path | str] = {}
    for given in paths:
        if is_zoo_name(given):
            path, base = given, given.rsplit("/", 1)[-1]
        else:
            path = resolve(given)
            normalised = Path(os.path.abspath(path))
            base = normalised.parent.name if normalised.name == MODEL_FILE else normalised.stem
        base = safe_name(base)
        name, count = base, 1
        while name in names:
            count += 1
            name = f"{base}-{count}"
        names[name] = path
    return names


def _locks_out(command):
    """Check that --out is a writable folder and hold it for the whole command, before any work."""

    @functools.wraps(command)
    def locked(**options):
        from ramptool.rundir import writer_lock

        with writer_lock(options["out"]):
            return command(**options)

    return locked


def _test_points(dataset: str, data_dir, n_examples: int, sample_seed, metadata: dict):
    """The test points at the checkpoint's resolution (image folders can be read at any)."""
    from ramptool.data import get_dataset, load_split

    size = metadata["input_shape"][-1] if get_dataset(dataset).resizable else None
    return load_split(dataset, "test", data_dir, _positive(n_examples, "--n-examples"),
                      sample_seed=sample_seed, image_size=size).tensors()


@eval_app.command()
@_locks_out
def union(
    ckpt: list[str] = typer.Option([], "--ckpt", help=CKPT_HELP),
    dataset: str | None = typer.Option(None, help="Dataset.", show_default="the checkpoint's"),
    data_dir: str | None = typer.Option(None, help="Dataset root."),
    arch: str | None = ARCH_OPTION,
    normalize: str | None = NORMALIZE_OPTION,
    arch_option: list[str] = ARCH_OPTIONS_OPTION,
    model_dir: str | None = MODEL_DIR_OPTION,
    n_examples: int = typer.Option(1000, help="Test points (the first N)."),
    sample_seed: int | None = typer.Option(None, help="Draw a seeded random N instead of the first N."),
    eps: str | None = typer.Option(None, help="e.g. linf=8/255,l2=0.5,l1=12.", show_default="the dataset's"),
    norms: str = typer.Option("linf,l2,l1", help="Norms of the union."),
    version: str = typer.Option("fast", help="fast (APGD-CE + APGD-T) or standard (full AutoAttack)."),
    attack: str = typer.Option("autoattack", help="autoattack (reported numbers), apgd (quick check), or a "
                               "registered attack family such as pgd (upper bounds)."),
    attack_option: list[str] = typer.Option([], help="Option of the attack family, name=value (repeatable)."),
    steps: int = typer.Option(100, help="--attack apgd or a family: iterations."),
    union_only: bool = typer.Option(False, "--union-only", help="Cascade: each norm attacks only points still "
                                    "robust (same union, less time; per-norm numbers become upper bounds)."),
    resume: bool = typer.Option(False, "--resume", help="Skip norms already finished in --out."),
    out: str = typer.Option("runs/eval", help="Folder for report.json, report.md, report.png and flags."),
    batch_size: int = typer.Option(500, help="Attack batch size."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    seed: int = typer.Option(0, help="AutoAttack seed."),
):
    """Clean, per-norm and union accuracy under AutoAttack, for one or more checkpoints side by side."""
    from ramptool.evaluation.report import print_union_table, write_union_reports
    from ramptool.evaluation.union import evaluate_union, load_for_evaluation, recorded_clean_accuracy
    from ramptool.progress import task_progress
    from ramptool.threat import parse_eps, parse_norms

    checkpoints = checkpoint_names(ckpt)
    loading = loading_options(normalize, arch_option, model_dir)
    norm_list = parse_norms(norms)
    _positive(batch_size, "--batch-size")
    _positive(steps, "--steps")
    target = _device(device)
    reports = {}
    for name, path in checkpoints.items():
        model, metadata, dataset_name = load_for_evaluation(path, dataset, arch, target, **loading)
        eps_values = parse_eps(eps, dataset_name)
        x, y = _test_points(dataset_name, data_dir, n_examples, sample_seed, metadata)
        console.print(f"evaluating {name} on {len(y)} {dataset_name} points", highlight=False)
        with task_progress(console) as progress:
            report = evaluate_union(model, x, y, norm_list, eps_values, version=version,
                                    out_dir=Path(out) / name, resume=resume, union_only=union_only,
                                    batch_size=batch_size, seed=seed, attack=attack, steps=steps,
                                    recorded_clean=recorded_clean_accuracy(metadata), console=console,
                                    attack_options=parse_assignments(attack_option, "--attack-option"),
                                    on_progress=progress)
        reports[name] = {"checkpoint": str(path), "dataset": dataset_name, "sample_seed": sample_seed, **report}
    print_union_table(reports, console)
    if not _is_main():
        return
    written = write_union_reports(reports, out)
    console.print(f"wrote {', '.join(str(p) for p in written.values())}", highlight=False, soft_wrap=True)


@eval_app.command()
@_locks_out
def corruptions(
    ckpt: list[str] = typer.Option([], "--ckpt", help=CKPT_HELP),
    dataset: str | None = typer.Option(None, help="Dataset.", show_default="the checkpoint's"),
    data_dir: str | None = typer.Option(None, help="Dataset root."),
    arch: str | None = ARCH_OPTION,
    normalize: str | None = NORMALIZE_OPTION,
    arch_option: list[str] = ARCH_OPTIONS_OPTION,
    model_dir: str | None = MODEL_DIR_OPTION,
    n_examples: int = typer.Option(1000, help="Test points (the first N; per severity with --from-dir, a "
                                             "seeded random N for an ImageNet-C tree)."),
    corruption_names: str | None = typer.Option(None, "--corruptions",
                                                help="Subset, e.g. fog,snow.", show_default="all 15"),
    severities: str | None = typer.Option(None, help="Subset, e.g. 1,3,5.", show_default="1-5"),
    from_dir: Path | None = typer.Option(None, help="Pre-corrupted sets instead of corrupting the test set: "
                                                    "CIFAR-10-C style (<corruption>.npy, labels.npy) or "
                                                    "ImageNet-C style (<corruption>/<severity>/<class>/*.JPEG)."),
    cache_dir: Path | None = typer.Option(None, help="Corrupted-set cache.",
                                          show_default="$RAMPTOOL_CACHE/corruptions or ~/.cache/ramptool/corruptions"),
    out: str = typer.Option("runs/eval", help="Folder for corruptions.json and corruptions.png."),
    batch_size: int = typer.Option(500),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    seed: int = typer.Option(0, help="Seed of the random corruptions."),
):
    """Accuracy under the 15 common corruptions x 5 severities (imagecorruptions), per corruption and mean."""
    from ramptool.evaluation.corruptions import (
        CORRUPTIONS,
        default_cache_dir,
        evaluate_corruption_folder,
        evaluate_corruptions,
        folder_corruptions,
        parse_corruptions,
        parse_severities,
    )
    from ramptool.evaluation.report import (
        corruption_comparison_table,
        corruption_table,
        write_corruption_comparison,
        write_corruption_report,
    )
    from ramptool.evaluation.union import load_for_evaluation
    from ramptool.progress import task_progress

    checkpoints = checkpoint_names(ckpt)
    loading = loading_options(normalize, arch_option, model_dir)
    if corruption_names:
        names = parse_corruptions(corruption_names)
    else:
        names = folder_corruptions(from_dir) if from_dir is not None else list(CORRUPTIONS)
    severity_list = parse_severities(severities)
    _positive(n_examples, "--n-examples")
    _positive(batch_size, "--batch-size")
    reports = {}
    for name, path in checkpoints.items():
        model, metadata, dataset_name = load_for_evaluation(path, dataset, arch, _device(device), **loading)
        with task_progress(console) as progress:
            def step(corruption, severity):
                progress(name, f"{corruption} s{severity}", 1, len(names) * len(severity_list))

            if from_dir is not None:
                report = evaluate_corruption_folder(model, from_dir, names, severity_list, n_examples,
                                                    metadata["input_shape"], metadata["num_classes"],
                                                    batch_size, on_step=step)
            else:
                x, y = _test_points(dataset_name, data_dir, n_examples, None, metadata)
                report = evaluate_corruptions(model, x, y, names, severity_list, seed, dataset_name,
                                              cache_dir or default_cache_dir(), batch_size, on_step=step)
        reports[name] = {"checkpoint": str(path), **report, "dataset": dataset_name}
        console.print(corruption_table(reports[name], title=name if len(checkpoints) > 1 else None))
    if not _is_main():
        return
    if len(reports) == 1:
        written = write_corruption_report(next(iter(reports.values())), out)
    else:
        # each model's full report in its own folder, the side-by-side means next to them
        for name, report in reports.items():
            write_corruption_report(report, Path(out) / name)
        console.print(corruption_comparison_table(reports))
        written = write_corruption_comparison(reports, out)
    console.print(f"wrote {', '.join(str(p) for p in written.values())}", highlight=False, soft_wrap=True)


def parse_eps_values(entries: list[str], norms: list[str]) -> dict[str, list[float]]:
    """['linf=1/255,2/255', 'l2=0.25,0.5'] -> {'linf': [...], 'l2': [...]}."""
    from ramptool.threat import parse_norm, parse_number

    values: dict[str, list[float]] = {}
    for entry in entries:
        if "=" not in entry:
            raise RamptoolError(f"--eps-values {entry!r} must look like norm=v1,v2,... e.g. linf=2/255,4/255")
        key, listed = entry.split("=", 1)
        norm = parse_norm(key)
        if norm not in norms:
            raise RamptoolError(f"--eps-values for {norm}, which is not in --norms {','.join(norms)}")
        numbers = [parse_number(part) for part in listed.split(",") if part.strip()]
        if not numbers or any(not number > 0 for number in numbers):
            raise RamptoolError(f"--eps-values for {norm} must be positive numbers, got {listed!r}")
        values[norm] = numbers
    return values


@eval_app.command()
@_locks_out
def curve(
    ckpt: list[str] = typer.Option([], "--ckpt", help=CKPT_HELP),
    dataset: str | None = typer.Option(None, help="Dataset.", show_default="the checkpoint's"),
    data_dir: str | None = typer.Option(None, help="Dataset root."),
    arch: str | None = ARCH_OPTION,
    normalize: str | None = NORMALIZE_OPTION,
    arch_option: list[str] = ARCH_OPTIONS_OPTION,
    model_dir: str | None = MODEL_DIR_OPTION,
    norms: str = typer.Option("linf,l2,l1", help="Norms to sweep."),
    eps: str | None = typer.Option(None, help="Reference eps, e.g. linf=8/255.", show_default="the dataset's"),
    eps_values: list[str] = typer.Option([], "--eps-values", help="Explicit eps of one norm, e.g. "
                                         "linf=2/255,4/255,8/255; repeat per norm."),
    multiples: str = typer.Option(DEFAULT_MULTIPLES, help="Norms without --eps-values: these multiples of the "
                                                          "reference eps."),
    n_examples: int = typer.Option(500, help="Test points (the first N)."),
    sample_seed: int | None = typer.Option(None, help="Draw a seeded random N instead of the first N."),
    attack: str = typer.Option("apgd", help="apgd (APGD-CE) or a registered attack family (upper bounds)."),
    attack_option: list[str] = typer.Option([], help="Option of the attack family, name=value (repeatable)."),
    steps: int = typer.Option(100, help="Attack iterations."),
    out: str = typer.Option("runs/eval", help="Folder for curve.json and curve.png."),
    batch_size: int = typer.Option(500),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    seed: int = typer.Option(0),
):
    """Robust accuracy vs eps under APGD-CE (or an attack family); warns where it does not fall as eps grows."""
    from ramptool.evaluation.report import curve_table, write_curve_report
    from ramptool.evaluation.union import load_for_evaluation, robustness_curve
    from ramptool.progress import task_progress
    from ramptool.threat import parse_eps, parse_norms, parse_number

    checkpoints = checkpoint_names(ckpt)
    loading = loading_options(normalize, arch_option, model_dir)
    norm_list = parse_norms(norms)
    explicit = parse_eps_values(eps_values, norm_list)
    factors = [parse_number(part) for part in multiples.split(",") if part.strip()]
    if not factors or any(not factor > 0 for factor in factors):
        raise RamptoolError(f"--multiples must be positive numbers, got {multiples!r}")
    _positive(steps, "--steps")
    _positive(batch_size, "--batch-size")
    curves = {}
    for name, path in checkpoints.items():
        model, metadata, dataset_name = load_for_evaluation(path, dataset, arch, _device(device), **loading)
        reference = parse_eps(eps, dataset_name)
        missing = [norm for norm in norm_list if norm not in reference and norm not in explicit]
        if missing:
            raise RamptoolError(f"no eps known for {', '.join(missing)} on {dataset_name}: pass --eps or "
                                f"--eps-values")
        sweep = {norm: explicit.get(norm) or [factor * reference[norm] for factor in factors] for norm in norm_list}
        x, y = _test_points(dataset_name, data_dir, n_examples, sample_seed, metadata)
        console.print(f"{name}: {attack} on {len(y)} points at {sum(len(v) for v in sweep.values())} eps values",
                      highlight=False)
        with task_progress(console) as progress:
            result = robustness_curve(model, x, y, sweep, steps=steps, batch_size=batch_size, seed=seed,
                                      reference_eps={n: reference[n] for n in norm_list if n in reference},
                                      console=console, attack=attack,
                                      attack_options=parse_assignments(attack_option, "--attack-option"),
                                      on_progress=progress)
        curves[name] = {"checkpoint": str(path), "dataset": dataset_name, **result}
    console.print(curve_table(curves))
    if not _is_main():
        return
    written = write_curve_report(curves, out)
    console.print(f"wrote {', '.join(str(p) for p in written.values())}", highlight=False, soft_wrap=True)


@eval_app.command()
@_locks_out
def unseen(
    ckpt: list[str] = typer.Option([], "--ckpt", help=CKPT_HELP),
    dataset: str | None = typer.Option(None, help="Dataset.", show_default="the checkpoint's"),
    data_dir: str | None = typer.Option(None, help="Dataset root."),
    arch: str | None = ARCH_OPTION,
    normalize: str | None = NORMALIZE_OPTION,
    arch_option: list[str] = ARCH_OPTIONS_OPTION,
    model_dir: str | None = MODEL_DIR_OPTION,
    n_examples: int = typer.Option(500, help="Test points (the first N)."),
    sample_seed: int | None = typer.Option(None, help="Draw a seeded random N instead of the first N."),
    adversaries: str | None = typer.Option(None, help="Subset, e.g. fog,snow.",
                                           show_default="l0,fog,snow,gabor,elastic,jpeg-linf"),
    budgets: str | None = typer.Option(None, help="e.g. fog=128,l0=20.", show_default="the dataset's"),
    steps: int | None = typer.Option(None, help="Iterations of fog, snow, gabor, elastic, jpeg-linf.",
                                     show_default="100"),
    queries: int | None = typer.Option(None, help="Sparse-RS queries for l0.", show_default="1000"),
    corruptions_from: Path | None = typer.Option(None, help="Output folder of `eval corruptions` for the same "
                                                       "checkpoints: adds each one's mean corruption accuracy."),
    resume: bool = typer.Option(False, "--resume", help="Skip adversaries already finished in --out."),
    out: str = typer.Option("runs/eval-unseen", help="Folder for report.json, report.md, report.png and flags."),
    batch_size: int = typer.Option(500, help="Attack batch size."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    seed: int = typer.Option(0, help="Seed of the adversaries' random draws."),
):
    """Accuracy under unseen adversaries (l0, fog, snow, gabor, elastic, jpeg-linf), their mean and union."""
    from ramptool.evaluation.report import print_unseen_table, write_unseen_reports
    from ramptool.evaluation.union import load_for_evaluation, recorded_clean_accuracy
    from ramptool.evaluation.unseen import (
        DEFAULT_QUERIES,
        DEFAULT_STEPS,
        corruption_summary,
        evaluate_unseen,
        parse_adversaries,
        parse_budgets,
    )
    from ramptool.progress import task_progress

    checkpoints = checkpoint_names(ckpt)
    loading = loading_options(normalize, arch_option, model_dir)
    names = parse_adversaries(adversaries)
    steps = _positive(steps, "--steps") if steps is not None else DEFAULT_STEPS
    queries = _positive(queries, "--queries") if queries is not None else DEFAULT_QUERIES
    _positive(batch_size, "--batch-size")
    target = _device(device)
    # found before any attack runs: a missing report must not cost an evaluation
    corruptions = {name: corruption_summary(corruptions_from, path) for name, path in checkpoints.items()
                   if corruptions_from is not None}
    reports = {}
    for name, path in checkpoints.items():
        model, metadata, dataset_name = load_for_evaluation(path, dataset, arch, target, **loading)
        budget_values = parse_budgets(budgets, dataset_name, names)
        x, y = _test_points(dataset_name, data_dir, n_examples, sample_seed, metadata)
        console.print(f"evaluating {name} on {len(y)} {dataset_name} points", highlight=False)
        with task_progress(console) as progress:
            report = evaluate_unseen(model, x, y, names, budget_values, steps=steps, queries=queries,
                                     out_dir=Path(out) / name, resume=resume, batch_size=batch_size, seed=seed,
                                     recorded_clean=recorded_clean_accuracy(metadata), console=console,
                                     on_progress=progress)
        if name in corruptions:
            report["corruptions"] = corruptions[name]
            report["accuracy"]["corruptions"] = corruptions[name]["mean"]
        reports[name] = {"checkpoint": str(path), "dataset": dataset_name, "sample_seed": sample_seed, **report}
    print_unseen_table(reports, console)
    if not _is_main():
        return
    written = write_unseen_reports(reports, out)
    console.print(f"wrote {', '.join(str(p) for p in written.values())}", highlight=False, soft_wrap=True)

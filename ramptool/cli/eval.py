"""``ramptool eval``: union accuracy (AutoAttack-grade), common corruptions, robust accuracy vs eps, unseen
adversaries.

A thin layer: the work happens in ``ramptool.evaluation``. User mistakes raise RamptoolError (one line, exit 2).
Under torchrun every process evaluates its share of the test points and rank 0 prints and writes the reports,
the same files a single process writes.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import typer
from rich.console import Console
from safetensors.torch import save_file

from ramptool.checkpoints.loading import checkpoint_names
from ramptool.errors import RamptoolError
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
    chance_note,
    corruption_comparison_table,
    corruption_table,
    curve_table,
    eps_text,
    logged_numbers,
    print_union_table,
    print_unseen_table,
    provenance,
    write_corruption_comparison,
    write_corruption_report,
    write_curve_report,
    write_union_reports,
    write_unseen_reports,
)
from ramptool.evaluation.suite import get_suite
from ramptool.evaluation.union import (
    FLAGS_FILE,
    evaluate_union,
    evaluation_points,
    load_for_evaluation,
    recorded_clean_accuracy,
    robustness_curve,
)
from ramptool.evaluation.unseen import (
    DEFAULT_QUERIES,
    DEFAULT_STEPS,
    corruption_summary,
    evaluate_unseen,
    parse_adversaries,
    parse_budgets,
)
from ramptool.loggers import check_loggers, open_loggers, parse_targets, wanted
from ramptool.plugins.options import parse_assignments
from ramptool.runtime.device import resolve_device, set_threads
from ramptool.runtime.distributed import is_main, setup
from ramptool.runtime.files import atomic_write
from ramptool.runtime.progress import task_progress
from ramptool.runtime.rundir import prepare_folder, refuse_links, writer_lock
from ramptool.threat import parse_eps, parse_norm, parse_norms, parse_number

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
    where = setup(resolve_device(name))
    console.quiet = not where.is_main
    return where.device


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


def parse_n_examples(text: str) -> int | None:
    """'1000' -> 1000; 'all' -> None (the whole test split)."""
    if text.strip().lower() == "all":
        return None
    try:
        value = int(text)
    except ValueError:
        raise RamptoolError(f"--n-examples must be a positive number or 'all', got {text!r}") from None
    return _positive(value, "--n-examples")


def _test_points(dataset: str, data_dir, n_examples: str | int, sample_seed, metadata: dict):
    """The test points of ``eval`` commands: --n-examples as given (a number or 'all')."""
    return evaluation_points(dataset, data_dir, parse_n_examples(str(n_examples)), sample_seed,
                             metadata.get("input_shape"))


def eps_as_given(text: str | None, eps: dict[str, float]) -> dict[str, str]:
    """Each norm's eps as the user wrote it ('8/255'), or as ramptool writes a default one."""
    given = {norm: eps_text(value) for norm, value in eps.items()}
    for part in (text or "").split(","):
        if "=" in part:
            key, value = part.split("=", 1)
            given[parse_norm(key, list(eps))] = value.strip()
    return given


def check_report_folder(out: Path, names, resume: bool, overwrite: bool) -> None:
    """Never replace a finished report, nor the flags of an interrupted evaluation, without being told to."""

    if overwrite or resume:
        return
    if (out / "report.json").exists():
        raise RamptoolError(f"{out} already holds a report; pass --overwrite or choose another --out")
    for name in names:
        if (out / name / FLAGS_FILE).exists():
            raise RamptoolError(f"{out / name} holds an unfinished evaluation; pass --resume to continue it, "
                                f"--overwrite to start over, or choose another --out")


def check_adversarial_folder(folder: Path, names, replace: bool) -> None:
    """--save-adv checked before any work: a folder (or one to be made) without links in place of the files it
    will take, and without earlier ones unless ``replace`` (--overwrite, or --resume of the same evaluation)."""
    prepare_folder(folder, "--save-adv")
    files = [f"{name}.safetensors" for name in names]
    refuse_links(folder, files, "--save-adv")
    if not replace:
        for file in files:
            if (Path(folder) / file).exists():
                raise RamptoolError(f"--save-adv {folder} already holds {file}; pass --overwrite or choose another "
                                    f"folder")


def adversarial_folder_lock(folder: Path, out: str):
    """The --save-adv folder held like --out while its file is written (a run folder in use refuses), unless it
    is --out itself, which the command already holds."""
    same = Path(folder).resolve() == Path(out).resolve()
    return contextlib.nullcontext() if same else writer_lock(folder, "--save-adv")


def save_adversarial(folder: Path, name: str, report: dict, x, y, provenance_record: dict) -> Path:
    """The adversarial examples that counted, per norm, next to the clean points and labels they came from:
    ``<norm>/x_adv``, ``<norm>/x``, ``<norm>/label``, ``<norm>/index`` (position among the evaluated points)."""



    tensors = {}
    for norm, found in report.pop("adversarial").items():
        index = found["index"]
        tensors.update({f"{norm}/x_adv": found["x_adv"].contiguous(), f"{norm}/x": x[index].contiguous(),
                        f"{norm}/label": y[index].contiguous(), f"{norm}/index": index.contiguous()})
    metadata = {"eps": json.dumps(report["eps"]), "attack": report["attack"], "version": report["version"],
                "seed": str(report["seed"]), "provenance": json.dumps(provenance_record)}
    path = Path(folder) / f"{name}.safetensors"
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    return path


def _option(name: str, annotation, option) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation)


# every eval command opens with these, in this order
MODEL_PARAMETERS = (
    _option("ckpt", list[str], typer.Option([], "--ckpt", help=CKPT_HELP)),
    _option("dataset", str | None, typer.Option(None, help="Dataset.", show_default="the checkpoint's")),
    _option("data_dir", str | None, typer.Option(None, help="Dataset root.")),
    _option("arch", str | None, ARCH_OPTION),
    _option("normalize", str | None, NORMALIZE_OPTION),
    _option("arch_option", list[str], ARCH_OPTIONS_OPTION),
    _option("model_dir", str | None, MODEL_DIR_OPTION),
)
SAMPLE_SEED_OPTION = typer.Option(None, help="Draw a seeded random N instead of the first N.")
ATTACK_OPTION_OPTION = typer.Option([], help="Option of the attack family, name=value (repeatable).")
VERSION_OPTION = typer.Option("fast", help="fast (APGD-CE + APGD-T) or standard (adds FAB-T and Square).")
STEPS_OPTION = typer.Option(100, help="APGD or attack family iterations (AutoAttack's: 100).")


@dataclass(frozen=True)
class EvalRun:
    """What the shared options say: the checkpoints under their short names, how to read them, where the
    reports go and how the work runs."""

    checkpoints: dict[str, Path | str]
    dataset: str | None
    data_dir: str | None
    arch: str | None
    loading: dict
    out: str
    batch_size: int
    device: str
    threads: int | None
    seed: int
    loggers: dict[str, str]  # logger name -> target (--tensorboard, --wandb)
    options: dict  # every option of the command, as the loggers record it

    @classmethod
    def from_options(cls, ckpt, dataset, data_dir, arch, normalize, arch_option, model_dir, out, batch_size,
                     device, threads, seed, tensorboard, wandb, logger, options) -> EvalRun:
        loggers = wanted(tensorboard, wandb, parse_targets(logger))
        check_loggers(loggers)
        return cls(checkpoint_names(ckpt), dataset, data_dir, arch,
                   loading_options(normalize, arch_option, model_dir), out, batch_size, device, threads, seed,
                   loggers, options)

    def start(self, *, protect_reports: bool = False, resume: bool = False, overwrite: bool = False) -> torch.device:
        """This process's device, after the command's own checks and the shared ones, so that a mistake costs
        no work. ``protect_reports``: a report or unfinished evaluation in --out is refused unless --resume or
        --overwrite says what to do with it."""
        _positive(self.batch_size, "--batch-size")
        if self.threads is not None:
            _positive(self.threads, "--threads")
        refuse_links(self.out, self.checkpoints)  # the per-model folders evaluations write their flags in
        if protect_reports:
            check_report_folder(Path(self.out), self.checkpoints, resume, overwrite)
        device = _device(self.device)
        set_threads(self.threads, device)
        return device

    def models(self, device: torch.device) -> Iterator[tuple[str, Path | str, torch.nn.Module, dict, str]]:
        """(name, path, model, metadata, dataset) of each checkpoint, loaded when its turn comes."""
        for name, path in self.checkpoints.items():
            yield name, path, *load_for_evaluation(path, self.dataset, self.arch, device, **self.loading)


def eval_command(*, out_help: str, seed_help: str, out_default: str = "runs/eval",
                 batch_size_help: str | None = None):
    """Register ``body(run: EvalRun, **own_options)`` as an eval command: its own options between the shared
    ones, and --out checked and held for the whole command before anything else."""
    report_parameters = (_option("out", str | None, typer.Option(None, help=out_help,
                                                                 show_default=f"{out_default}/<model>")),
                         _option("batch_size", int, typer.Option(500, help=batch_size_help)),
                         _option("device", str, typer.Option("auto", help="auto, cpu or cuda.")),
                         _option("threads", int | None, typer.Option(None, help="Torch CPU threads per process.",
                                                                     show_default="$OMP_NUM_THREADS, else 1 on a "
                                                                                  "CPU")),
                         _option("seed", int, typer.Option(0, help=seed_help)),
                         _option("tensorboard", str | None, typer.Option(None, help="Folder for TensorBoard logs of "
                                                                         "the report's numbers and figures.")),
                         _option("wandb", str | None, typer.Option(None, help="Weights & Biases project to log the "
                                                                   "report to, as a table and images (pip install "
                                                                   "'ramptool[wandb]'; files in OUT/wandb).")),
                         _option("logger", list[str], typer.Option([], "--logger", help="Another registered logger "
                                                                   "(a plugin's), name=target; repeatable.")))
    shared = [parameter.name for parameter in (*MODEL_PARAMETERS, *report_parameters)]

    def register(body):
        own = list(inspect.signature(body, eval_str=True).parameters.values())[1:]

        @functools.wraps(body)
        def command(**options):
            settings = {name: options.pop(name) for name in shared}
            if settings["out"] is None:  # a folder per model, so that evaluating another one needs no --out
                settings["out"] = str(Path(out_default) / "+".join(checkpoint_names(settings["ckpt"])))
            recorded = {name: str(value) if isinstance(value, Path) else value
                        for name, value in {**settings, **options}.items()}
            with writer_lock(settings["out"]):
                return body(EvalRun.from_options(**settings, options=recorded), **options)

        # typer reads the options from the signature: the body's own between the shared ones, as --help lists them
        command.__signature__ = inspect.Signature(
            [*MODEL_PARAMETERS, *(p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own), *report_parameters])
        return eval_app.command()(command)

    return register


def _write_reports(write: Callable[[], dict[str, Path]], run: EvalRun, evaluation: str,
                   reports: dict[str, dict]) -> None:
    """Rank 0 writes the reports, names them and hands them to the loggers; the other processes are done once
    they have computed."""
    if not is_main():
        return
    written = write()
    console.print(f"wrote {', '.join(str(p) for p in written.values())}", highlight=False, soft_wrap=True)
    if run.loggers:
        with open_loggers(run.loggers, "eval", run.out, {"evaluation": evaluation, **run.options}) as loggers:
            loggers.log_evaluation(evaluation, logged_numbers(reports),
                                   [path for path in written.values() if path.suffix == ".png"])


@eval_command(out_help="Folder for report.json, report.md, report.png and flags.", batch_size_help="Attack batch size.",
              seed_help="Attack seed (random starts).")
def union(
    run: EvalRun,
    n_examples: str = typer.Option("1000", help="Test points: the first N, or 'all'."),
    sample_seed: int | None = SAMPLE_SEED_OPTION,
    eps: str | None = typer.Option(None, help="e.g. linf=8/255,l2=0.5,l1=12.", show_default="the dataset's"),
    norms: str = typer.Option("linf,l2,l1", help="Norms of the union."),
    version: str = VERSION_OPTION,
    attack: str = typer.Option("apgd", help="apgd: APGD-CE + APGD-T with AutoAttack's settings on ramptool's APGD "
                               "(AutoAttack-grade); autoattack: pyautoattack itself; apgd-ce: one APGD-CE run "
                               "(quick, an upper bound); or a registered attack family such as pgd (upper bounds)."),
    attack_option: list[str] = ATTACK_OPTION_OPTION,
    steps: int = STEPS_OPTION,
    union_only: bool = typer.Option(False, "--union-only", help="Cascade: each run attacks only points still "
                                    "robust in every norm (same union, less time; per-norm numbers become upper "
                                    "bounds)."),
    resume: bool = typer.Option(False, "--resume", help="Skip runs already finished in --out."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a report or unfinished evaluation in --out."),
    save_adv: Path | None = typer.Option(None, "--save-adv", help="Folder for the adversarial examples that "
                                         "counted (<model>.safetensors)."),
):
    """Clean, per-norm and union accuracy (AutoAttack-grade by default), for one or more checkpoints side by side."""
    norm_list = parse_norms(norms)
    attack_options = parse_assignments(attack_option, "--attack-option")
    get_suite(attack, norm_list, attack_options)
    parse_n_examples(n_examples)
    _positive(steps, "--steps")
    parse_eps(eps)  # its syntax now; the dataset's defaults complete it per model
    if save_adv is not None:
        check_adversarial_folder(save_adv, run.checkpoints, overwrite or resume)
    target = run.start(protect_reports=True, resume=resume, overwrite=overwrite)
    with contextlib.ExitStack() as held:
        if save_adv is not None:
            held.enter_context(adversarial_folder_lock(save_adv, run.out))
        reports = evaluate_each(run, target, n_examples, sample_seed, eps, norm_list, version, attack,
                                attack_options, steps, union_only, resume, save_adv)
    print_union_table(reports, console)
    _write_reports(lambda: write_union_reports(reports, run.out, provenance(device=target)), run, "union", reports)


def evaluate_each(run: EvalRun, target, n_examples, sample_seed, eps, norm_list, version, attack, attack_options,
                  steps, union_only, resume, save_adv) -> dict[str, dict]:
    """``eval union``'s report of each checkpoint, with its adversarial examples saved in ``save_adv``."""
    reports = {}
    for name, path, model, metadata, dataset_name in run.models(target):
        eps_values = parse_eps(eps, dataset_name)
        x, y = _test_points(dataset_name, run.data_dir, n_examples, sample_seed, metadata)
        console.print(f"evaluating {name} on {len(y)} {dataset_name} points", highlight=False)
        with task_progress(console) as progress:
            report = evaluate_union(model, x, y, norm_list, eps_values, version=version,
                                    out_dir=Path(run.out) / name, resume=resume, union_only=union_only,
                                    batch_size=run.batch_size, seed=run.seed, attack=attack, steps=steps,
                                    recorded_clean=recorded_clean_accuracy(metadata), console=console,
                                    attack_options=attack_options, on_progress=progress,
                                    keep_adversarial=save_adv is not None)
        record = provenance(path if isinstance(path, Path) else None, target)
        if not isinstance(path, Path):
            record["checkpoint"] = path  # a model zoo name: the zoo's own file, not hashed here
        report["eps_given"] = {norm: text for norm, text in eps_as_given(eps, eps_values).items() if norm in norm_list}
        if save_adv is not None and is_main():
            console.print(f"adversarial examples: {save_adversarial(save_adv, name, report, x, y, record)}",
                          highlight=False)
        report.pop("adversarial", None)
        reports[name] = {"checkpoint": str(path), "dataset": dataset_name, "split": "test",
                         "points": "first N" if sample_seed is None else f"a random N, sample seed {sample_seed}",
                         "sample_seed": sample_seed, "provenance": record, **report}
    return reports


@eval_command(out_help="Folder for corruptions.json and corruptions.png.", seed_help="Seed of the random corruptions.")
def corruptions(
    run: EvalRun,
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
):
    """Accuracy under the 15 common corruptions x 5 severities (imagecorruptions), per corruption and mean."""
    if corruption_names:
        names = parse_corruptions(corruption_names)
    else:
        names = folder_corruptions(from_dir) if from_dir is not None else list(CORRUPTIONS)
    severity_list = parse_severities(severities)
    _positive(n_examples, "--n-examples")
    reports = {}
    for name, path, model, metadata, dataset_name in run.models(run.start()):
        with task_progress(console) as progress:
            def step(corruption, severity):
                progress(name, f"{corruption} s{severity}", 1, len(names) * len(severity_list))

            if from_dir is not None:
                report = evaluate_corruption_folder(model, from_dir, names, severity_list, n_examples,
                                                    metadata["input_shape"], metadata["num_classes"],
                                                    run.batch_size, on_step=step)
            else:
                x, y = _test_points(dataset_name, run.data_dir, n_examples, None, metadata)
                report = evaluate_corruptions(model, x, y, names, severity_list, run.seed, dataset_name,
                                              cache_dir or default_cache_dir(), run.batch_size, on_step=step)
        reports[name] = {"checkpoint": str(path), **report, "dataset": dataset_name}
        console.print(corruption_table(reports[name], title=name if len(run.checkpoints) > 1 else None))
        note = chance_note(name, reports[name])
        if note and is_main():
            console.print(note, highlight=False, soft_wrap=True)

    def write():
        if len(reports) == 1:
            name, report = next(iter(reports.items()))
            return write_corruption_report(report, run.out, name)
        # each model's full report in its own folder, the side-by-side means next to them
        for name, report in reports.items():
            write_corruption_report(report, Path(run.out) / name, name)
        console.print(corruption_comparison_table(reports))
        return write_corruption_comparison(reports, run.out)

    _write_reports(write, run, "corruptions", reports)


def parse_eps_values(entries: list[str], norms: list[str]) -> dict[str, list[float]]:
    """['linf=1/255,2/255', 'l2=0.25,0.5'] -> {'linf': [...], 'l2': [...]}."""

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


@eval_command(out_help="Folder for curve.json and curve.png.", seed_help="Attack seed (random starts).")
def curve(
    run: EvalRun,
    norms: str = typer.Option("linf,l2,l1", help="Norms to sweep."),
    eps: str | None = typer.Option(None, help="Reference eps, e.g. linf=8/255.", show_default="the dataset's"),
    eps_values: list[str] = typer.Option([], "--eps-values", help="Explicit eps of one norm, e.g. "
                                         "linf=2/255,4/255,8/255; repeat per norm."),
    multiples: str = typer.Option(DEFAULT_MULTIPLES, help="Norms without --eps-values: these multiples of the "
                                                          "reference eps."),
    n_examples: str = typer.Option("500", help="Test points: the first N, or 'all'."),
    sample_seed: int | None = SAMPLE_SEED_OPTION,
    attack: str = typer.Option("apgd", help="apgd (AutoAttack-grade), autoattack (pyautoattack), apgd-ce (one "
                               "APGD-CE run: quick, an upper bound) or a registered attack family (upper bounds)."),
    attack_option: list[str] = ATTACK_OPTION_OPTION,
    version: str = VERSION_OPTION,
    steps: int = STEPS_OPTION,
):
    """Robust accuracy vs eps (AutoAttack-grade by default); warns where it does not fall as eps grows."""
    norm_list = parse_norms(norms)
    attack_options = parse_assignments(attack_option, "--attack-option")
    suite = get_suite(attack, norm_list, attack_options)
    parse_n_examples(n_examples)
    explicit = parse_eps_values(eps_values, norm_list)
    factors = [parse_number(part) for part in multiples.split(",") if part.strip()]
    if not factors or any(not factor > 0 for factor in factors):
        raise RamptoolError(f"--multiples must be positive numbers, got {multiples!r}")
    _positive(steps, "--steps")
    curves = {}
    for name, path, model, metadata, dataset_name in run.models(run.start()):
        reference = parse_eps(eps, dataset_name)
        missing = [norm for norm in norm_list if norm not in reference and norm not in explicit]
        if missing:
            raise RamptoolError(f"no eps known for {', '.join(missing)} on {dataset_name}: pass --eps or "
                                f"--eps-values")
        sweep = {norm: explicit.get(norm) or [factor * reference[norm] for factor in factors] for norm in norm_list}
        x, y = _test_points(dataset_name, run.data_dir, n_examples, sample_seed, metadata)
        console.print(f"{name}: {suite.description} on {len(y)} points at {sum(len(v) for v in sweep.values())} "
                      f"eps values", highlight=False)
        with task_progress(console) as progress:
            result = robustness_curve(model, x, y, sweep, attack=attack, version=version, steps=steps,
                                      batch_size=run.batch_size, seed=run.seed,
                                      reference_eps={n: reference[n] for n in norm_list if n in reference},
                                      console=console, attack_options=attack_options, on_progress=progress)
        curves[name] = {"checkpoint": str(path), "dataset": dataset_name, **result}
    console.print(curve_table(curves))
    _write_reports(lambda: write_curve_report(curves, run.out), run, "curve", curves)


@eval_command(out_default="runs/eval-unseen", out_help="Folder for report.json, report.md, report.png and flags.",
              batch_size_help="Attack batch size.", seed_help="Seed of the adversaries' random draws.")
def unseen(
    run: EvalRun,
    n_examples: int = typer.Option(500, help="Test points (the first N)."),
    sample_seed: int | None = SAMPLE_SEED_OPTION,
    adversaries: str | None = typer.Option(None, help="Subset, e.g. fog,snow.",
                                           show_default="l0,fog,snow,gabor,elastic,jpeg-linf"),
    budgets: str | None = typer.Option(None, help="e.g. fog=128,l0=20.", show_default="the dataset's"),
    steps: int | None = typer.Option(None, help="Iterations of fog, snow, gabor, elastic, jpeg-linf.",
                                     show_default="100"),
    queries: int | None = typer.Option(None, help="Sparse-RS queries for l0.", show_default="1000"),
    corruptions_from: Path | None = typer.Option(None, help="Output folder of `eval corruptions` for the same "
                                                       "checkpoints: adds each one's mean corruption accuracy."),
    resume: bool = typer.Option(False, "--resume", help="Skip adversaries already finished in --out."),
):
    """Accuracy under unseen adversaries (l0, fog, snow, gabor, elastic, jpeg-linf), their mean and union."""
    names = parse_adversaries(adversaries)
    steps = _positive(steps, "--steps") if steps is not None else DEFAULT_STEPS
    queries = _positive(queries, "--queries") if queries is not None else DEFAULT_QUERIES
    target = run.start()
    # found before any attack runs: a missing report must not cost an evaluation
    corruptions = {name: corruption_summary(corruptions_from, path) for name, path in run.checkpoints.items()
                   if corruptions_from is not None}
    reports = {}
    for name, path, model, metadata, dataset_name in run.models(target):
        budget_values = parse_budgets(budgets, dataset_name, names)
        x, y = _test_points(dataset_name, run.data_dir, n_examples, sample_seed, metadata)
        console.print(f"evaluating {name} on {len(y)} {dataset_name} points", highlight=False)
        with task_progress(console) as progress:
            report = evaluate_unseen(model, x, y, names, budget_values, steps=steps, queries=queries,
                                     out_dir=Path(run.out) / name, resume=resume, batch_size=run.batch_size,
                                     seed=run.seed, recorded_clean=recorded_clean_accuracy(metadata),
                                     console=console, on_progress=progress)
        if name in corruptions:
            report["corruptions"] = corruptions[name]
            report["accuracy"]["corruptions"] = corruptions[name]["mean"]
        reports[name] = {"checkpoint": str(path), "dataset": dataset_name, "sample_seed": sample_seed, **report}
    print_unseen_table(reports, console)
    _write_reports(lambda: write_unseen_reports(reports, run.out), run, "unseen", reports)

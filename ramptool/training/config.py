"""Run configuration: ``TrainConfig`` and the one path every source takes into it.

Command-line flags, TOML recipes, the configuration saved in a run's ``state.pt`` and Python code all become a
TrainConfig through the same typed, range-checked conversion (``convert``), so a bad value anywhere ends in one
line that names the key and where it came from::

    recipe r.toml: epochs must be a positive integer, got 'two'
    --beta must be a number in [0, 1], got 2

A knob is declared once, as a TrainConfig field: its CLI option for ``ramptool train`` / ``finetune``
(``cli_options``), its recipe key and its checks all follow from the declaration (see TrainConfig's docstring).
``build_train_config`` is the single entry that merges the sources; ``TrainConfig(...)`` from Python runs the same
checks in ``__post_init__``.
"""

from __future__ import annotations

import contextvars
import dataclasses
import math
import re
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any

from ramptool.attacks import attack_families, known_norms
from ramptool.errors import RamptoolError
from ramptool.loggers import parse_targets
from ramptool.plugins.options import parse_assignments
from ramptool.plugins.registry import registry
from ramptool.threat import ANY_NORM, parse_eps, parse_norms, parse_number
from ramptool.training.schedules import SCHEDULES

# Defaults of the fields whose default depends on the mode (fine-tuning = ``init`` is set) and on the dataset:
# the paper's CIFAR-10 settings (docs/METHOD.md#training-settings-and-reference-numbers), which a dataset
# overrides with DatasetSpec.hyperparameters.
MODE_DEFAULTS = {
    "train": {"lam": 2.0, "optimizer": "sgd", "lr": 0.05, "weight_decay": 5e-4, "schedule": "static"},
    "finetune": {"lam": 0.5, "optimizer": "sgd", "lr": 0.05, "weight_decay": 5e-4, "schedule": "piecewise-ft"},
}


class ConfigError(RamptoolError):
    """A configuration value that is missing, of the wrong type, or out of range."""


@dataclass(frozen=True)
class Source:
    """Where values come from: named in every error message about them."""

    where: str  # "" for the command line, else e.g. "recipe r.toml", "TrainConfig", "runs/x/state.pt"
    text: bool = False  # command-line text, parsed into the field's type (other sources must be typed already)
    base: Path | None = None  # relative paths resolve against this folder (a recipe's own folder)

    def label(self, name: str, key: str | None = None) -> str:
        """How a field is named to the user in this source: its flag on the command line, its key elsewhere."""
        return flag_of(name) if self.text else (key or name)

    def describe(self, name: str, key: str | None = None) -> str:
        label = self.label(name, key)
        return label if not self.where else f"{label} ({self.where})"

    def fail(self, name: str, key: str | None, tail: str) -> ConfigError:
        """'[WHERE: ]LABEL' followed by ``tail`` (' must be ...' or ': ...')."""
        message = self.label(name, key) + tail
        return ConfigError(f"{self.where}: {message}" if self.where else message)


COMMAND_LINE = Source("", text=True)
PYTHON = Source("TrainConfig")


class Invalid(Exception):
    """Raised by a check or a custom parser: ``requirement`` completes 'KEY must be ...'; ``detail`` replaces it."""

    def __init__(self, requirement: str = "", detail: str = ""):
        super().__init__(detail or requirement)
        self.requirement, self.detail = requirement, detail


@dataclass(frozen=True)
class Knob:
    """What a TrainConfig field declares besides its type and default (see ``knob``)."""

    help: str
    flag: str | None = None
    choices: tuple[str, ...] | Callable[[], Iterable[str]] | None = None
    minimum: float | None = None
    maximum: float | None = None
    positive: bool = False
    parse: Callable[[Any, bool], Any] | None = None
    path: bool = False
    recipe: bool = True
    cli: bool = True
    on_resume: str = "fixed"
    shown_default: str | None = None
    panel: str = ""


# The groups of ``ramptool train`` / ``finetune --help``, in the order shown; every knob names its own (``panel``).
PANELS = ("Model", "Data", "Method", "Attacks", "Optimisation", "Evaluation", "Hardware", "Output")


def knob(default: Any = MISSING, help: str = "", *, default_factory: Any = MISSING, **spec) -> Any:
    """A TrainConfig field: ``default`` (or ``default_factory``), ``help``, and the Knob options in ``spec``."""
    if spec.get("on_resume", "fixed") not in ("fixed", "free", "extend"):
        raise ValueError(f"on_resume must be fixed, free or extend, not {spec['on_resume']!r}")
    if spec.get("panel") not in PANELS:
        raise ValueError(f"panel must be one of {', '.join(PANELS)}, not {spec.get('panel')!r}")
    return field(default=default, default_factory=default_factory, metadata={"knob": Knob(help, **spec)})


# Whether conversion checks names against the plugin registry. ``TrainConfig(...)`` does not: constructing a
# configuration loads no plugin and reads no file. ``build_train_config`` and ``resolve_config`` do.
CHECK_REGISTERED: contextvars.ContextVar[bool] = contextvars.ContextVar("check_registered", default=True)


def _known_norms() -> list[str] | tuple[str, ...]:
    """The norms of the registered attacks, or None (any well-formed name) while the registry is not consulted."""
    return known_norms() if CHECK_REGISTERED.get() else ANY_NORM


def registered(kind: str) -> Callable[[], list[str]]:
    """Choices that are the names registered for a component kind (plugins included), looked up when checked."""

    def names() -> list[str]:
        return registry().names(kind)

    return names


def attack_family_names() -> list[str]:
    """Families ``F`` with a registered ``F-<norm>`` attack (``--attack apgd`` means apgd-linf, apgd-l2, ...)."""
    return sorted(attack_families())


def norm_list(value: Any, text: bool) -> list[str]:
    """'linf,l1', ['linf', 'l1'] -> ['linf', 'l1'], each a norm some registered attack works in."""
    if isinstance(value, str):
        joined = value
    elif isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value):
        joined = ",".join(value)
    else:
        raise Invalid("a list of norms such as linf,l1")
    try:
        return parse_norms(joined, _known_norms())
    except RamptoolError as error:
        raise Invalid(detail=str(error)) from None


def norm_pair(value: Any, text: bool) -> list[str] | str:
    """Two norms (q, r), or 'auto': found by `ramptool pair` (``pair_from``) when the run starts."""
    if value == "auto":
        return "auto"
    norms = norm_list(value, text)
    if len(norms) != 2:
        raise Invalid(detail=f"takes two norms (q,r) or 'auto', got {','.join(norms)}")
    return norms


def eps_table(value: Any, text: bool) -> dict[str, float]:
    """'linf=8/255,l2=0.5' or {linf = 0.1} -> {'linf': 0.0314, 'l2': 0.5}: positive finite numbers."""
    if isinstance(value, dict):
        if not all(isinstance(v, (int, float, str)) and not isinstance(v, bool) for v in value.values()):
            raise Invalid("norm = value entries with numbers, e.g. linf=8/255,l2=0.5")
    elif not isinstance(value, str):
        raise Invalid("norm=value entries, e.g. linf=8/255,l2=0.5")
    try:
        return parse_eps(value, None, _known_norms())
    except RamptoolError as error:
        raise Invalid(detail=str(error)) from None


def step_list(value: Any, text: bool) -> list[int]:
    """'78,156,391' or [78, 156, 391] -> [78, 156, 391]: optimizer-step counts, positive, in increasing order."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise Invalid("a list of step counts such as 78,156,391")
    try:
        steps = [int(item) if isinstance(item, str) else item for item in items if item != ""]
    except ValueError:
        raise Invalid("a list of step counts such as 78,156,391") from None
    if not all(isinstance(step, int) and not isinstance(step, bool) and step > 0 for step in steps):
        raise Invalid("a list of positive step counts such as 78,156,391")
    return sorted(set(steps))


def logger_table(value: Any, text: bool) -> dict[str, str]:
    """'mlflow=http://host:5000,other=DIR' or {mlflow = "..."} -> {'mlflow': 'http://host:5000', ...}."""
    if isinstance(value, str):
        try:
            value = parse_targets([part for part in value.split(",") if part.strip()])
        except RamptoolError as error:
            raise Invalid(detail=str(error).removeprefix("--logger: ")) from None
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise Invalid("name=target entries, e.g. mlflow=http://localhost:5000")
    return dict(value)


def device_name(value: Any, text: bool) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
        raise Invalid("auto, cpu, cuda or cuda:N")
    return value


@dataclass
class TrainConfig:
    """Everything a training run needs. Build it from Python (``TrainConfig(out=..., method=...)``), or through
    ``build_train_config`` (CLI flags, recipes, resume); both run the same checks.

    The fields listed in ``MODE_DEFAULTS`` (lam, optimizer, lr, weight_decay, schedule), when left at None, take
    the defaults of the mode: fine-tuning when ``init`` is set, else training from scratch, as the dataset's
    ``DatasetSpec.hyperparameters`` set them (``MODE_DEFAULTS`` where it does not). ``eps`` is completed from
    the dataset's default eps. With ``resume=True`` the rest comes from the run saved in ``out``.

    How to declare a knob (the CLI option, the recipe key and the validation follow from this alone)::

        workers: int = knob(4, "DataLoader worker processes per rank.", minimum=0, on_resume="free", panel="Data")

    - type: the annotation. ``int``, ``float``, ``str``, ``bool``, ``list[str]`` (norms), ``dict`` (options: a
      TOML table, or a repeatable ``--flag key=value``; layers merge key by key), each optionally ``| None``
      (None then means "not set"). Command-line text is parsed into it; recipes and Python must give the type
      itself (an int is accepted for a float). E.g.
      ``combiner_options: dict = knob(help="Combiner option key=value (repeatable).", default_factory=dict,
      flag="--combiner-option", panel="Method")``.
    - default: ``knob(default, help)``, or ``knob(help=..., default_factory=list)`` for mutable ones; a default
      that depends on the dataset is None here plus an entry in ``MODE_DEFAULTS``.
    - help: one sentence for ``--help``; the default is appended as ``[default: X]`` (``shown_default="..."``
      when it depends on context, e.g. the dataset's).
    - panel (required): the group of ``--help`` the option is listed in, one of ``PANELS``.
    - flag: the CLI spelling, default ``--field-name``; a bool gets ``--x/--no-x`` unless ``flag`` gives both
      spellings (``"--no-decay-bn-bias/--decay-bn-bias"``). A ``dict`` field is a repeatable ``flag key=value``.
      The recipe key is the field name or the flag's name without ``--`` (``lambda``, ``ckpt``); ``-`` and ``_``
      are interchangeable. ``cli=False`` / ``recipe=False`` keep a knob out of one of them.
    - validation: ``positive=True`` (> 0), ``minimum`` / ``maximum`` (inclusive), ``choices`` (a tuple, or
      ``registered("combiner")`` for the names a component kind has, plugins included), or ``parse=fn`` where
      ``fn(value, is_text)`` returns the converted value or raises ``Invalid("a list of norms")``.
    - ``path=True``: a recipe's relative value is resolved against the recipe's folder.
    - ``on_resume``: "fixed" (default: must equal the saved run's value), "free" (may change on ``--resume``,
      e.g. device), or "extend" (may only grow, e.g. epochs).
    """

    out: str = knob(help="Run folder: checkpoints, state.pt and metrics.jsonl go here (never wiped).",
                    path=True, recipe=False, on_resume="free", panel="Output")
    dataset: str | None = knob(None, "Registered dataset.", choices=registered("dataset"),
                               shown_default="the --ckpt's, else fashion-mnist", panel="Data")
    data_dir: str | None = knob(None, "Dataset root.", path=True, on_resume="free",
                                shown_default="$RAMPTOOL_DATA or ~/.cache/ramptool/data", panel="Data")
    subset: int | None = knob(None, "Train on the first N training points.", positive=True,
                              shown_default="all", panel="Data")
    arch: str | None = knob(None, "Backbone to train (any registered one, or timm:<name>), or the architecture of a "
                                  "plain state_dict given to --ckpt.", shown_default="small-cnn", panel="Model")
    arch_options: dict = knob(help="Backbone option name=value, e.g. width=32 for small-cnn, cifar_stem=true for "
                                   "timm ResNets, sub_block1=true for TRADES-style WideResNet state_dicts.",
                              default_factory=dict, flag="--arch-option", panel="Model")
    init: str | None = knob(None, "Checkpoint to fine-tune: a file, a run folder, or "
                                  "robustbench:<dataset>/<threat>/<name>.", flag="--ckpt", path=True,
                            shown_default="none: train from scratch", panel="Model")
    normalize: str | None = knob(None, "Input normalisation inside the model: none, dataset or MEAN/STD.",
                                 shown_default="dataset for a new model, none for a plain state_dict, what a "
                                               "ramptool checkpoint records", panel="Model")
    model_dir: str | None = knob(None, "RobustBench weights folder: --ckpt robustbench:<dataset>/<threat>/<name> "
                                       "loads <dir>/<dataset>/<threat>/<name>.pt.", path=True,
                                 on_resume="free", shown_default="./models", panel="Model")
    method: str = knob("ramp", "Training method (`ramptool plugins` lists them).", choices=registered("method"),
                       panel="Method")
    norms: list[str] = knob(help="Norms for max, avg, msd, sat and at.",
                            default_factory=lambda: ["linf", "l2", "l1"], parse=norm_list, panel="Method")
    pair: list[str] | str | None = knob(help="Key pair q,r for ramp and e-at (q = source norm), or auto.",
                                        default_factory=lambda: ["linf", "l1"], parse=norm_pair, panel="Method")
    pair_from: str | None = knob(None, "With --pair auto: the pair.json written by `ramptool pair`.", path=True,
                                 shown_default="run the pair finder", panel="Method")
    eps: dict[str, float] = knob(help="Budgets, e.g. linf=8/255,l2=0.5,l1=12; unnamed norms keep the dataset's.",
                                 default_factory=dict, parse=eps_table, shown_default="the dataset's", panel="Attacks")
    attack: str = knob("apgd", "Training attack family (apgd, pgd or a plugin's).", choices=attack_family_names,
                       panel="Attacks")
    attack_steps: int = knob(10, "Training attack iterations.", positive=True, panel="Attacks")
    attack_options: dict = knob(help="Training-attack option name=value, e.g. l1_sparsity=0.1.",
                                default_factory=dict, flag="--attack-option", panel="Attacks")
    lam: float | None = knob(None, "RAMP pairing weight lambda.", flag="--lambda", minimum=0,
                             shown_default="0.5 finetune, 2.0 train", panel="Method")
    pairing: str = knob("kl", "RAMP pairing loss.", choices=registered("pairing-loss"), panel="Method")
    pairing_options: dict = knob(help="Pairing-loss option name=value.", default_factory=dict,
                                 flag="--pairing-option", panel="Method")
    combiner: str = knob("none", "How the loss becomes an update: none, gp (RAMP's per-epoch gradient "
                                 "projection), gp-step.", choices=registered("combiner"), panel="Method")
    combiner_options: dict = knob(help="Combiner option name=value, e.g. beta=0.5 for gp and gp-step.",
                                  default_factory=dict, flag="--combiner-option", panel="Method")
    method_options: dict = knob(help="Training-method option name=value.", default_factory=dict,
                                flag="--method-option", panel="Method")
    epochs: int = knob(1, "Epochs; on --resume it may be raised to extend the run.", positive=True,
                       on_resume="extend", panel="Optimisation")
    batch_size: int = knob(128, "Batch size.", positive=True, panel="Optimisation")
    optimizer: str | None = knob(None, "sgd (with momentum) or adam.", choices=("sgd", "adam"),
                                 shown_default="the dataset's", panel="Optimisation")
    lr: float | None = knob(None, "Peak learning rate.", positive=True, shown_default="the dataset's",
                            panel="Optimisation")
    momentum: float = knob(0.9, "SGD momentum.", minimum=0, maximum=1, panel="Optimisation")
    weight_decay: float | None = knob(None, "Weight decay.", minimum=0, shown_default="the dataset's",
                                      panel="Optimisation")
    no_decay_bn_bias: bool = knob(False, "Exempt BatchNorm and bias parameters from weight decay.",
                                  flag="--no-decay-bn-bias/--decay-bn-bias", panel="Optimisation")
    schedule: str | None = knob(None, "Learning-rate schedule.", choices=SCHEDULES,
                                shown_default="piecewise-ft finetune, the dataset's train", panel="Optimisation")
    lr_drop_epoch: float | None = knob(None, "static schedule: the epoch of the /10 drop.", positive=True,
                                       shown_default="7/8 of the epochs", panel="Optimisation")
    seed: int = knob(0, "Seed of the initial weights, batch order, augmentation and attacks.", minimum=0,
                     panel="Optimisation")
    device: str = knob("auto", "auto, cpu, cuda or cuda:N (auto = cuda if available).", parse=device_name,
                       on_resume="free", panel="Hardware")
    threads: int | None = knob(None, "Torch CPU threads per process.", positive=True, on_resume="free",
                               panel="Hardware", shown_default="$OMP_NUM_THREADS, else 1 on a CPU")
    eval_n: int = knob(0, "After each epoch, an AutoAttack-grade evaluation (APGD-CE + APGD-T) on N test points "
                          "(0: none).", minimum=0, panel="Evaluation")
    eval_steps: int = knob(100, "APGD iterations of that evaluation (AutoAttack's: 100; at least 3, which "
                                  "l1's large-eps schedule needs).", minimum=3, panel="Evaluation")
    check_n: int | None = knob(None, "Each --check-every epochs: per trained norm, accuracy under the training "
                                    "attack and AutoAttack-grade on N held-out points; warn on a gap above "
                                    "--check-gap (0: no check).", minimum=0, panel="Evaluation",
                               shown_default="1 per 250 trained, at most 256; 0 below 100")
    check_every: int = knob(1, "Epochs between training-attack checks.", positive=True, on_resume="free",
                            panel="Evaluation")
    check_gap: float = knob(0.10, "Gap (a fraction) above which the check warns.", minimum=0, maximum=1,
                            on_resume="free", panel="Evaluation")
    amp: str | None = knob(None, "Autocast precision of training, its attacks included: none or bf16 "
                                 "(evaluation stays float32).", choices=("none", "bf16"),
                           shown_default="none", panel="Hardware")
    channels_last: bool = knob(False, "Channels-last memory format for the model and its inputs (faster "
                                      "convolutions on a GPU).", panel="Hardware")
    batch_attacks: str = knob("auto", "Run several norms' attacks as one batch (ramp, max, avg); auto = on for "
                                      "CUDA.", choices=("auto", "on", "off"), panel="Attacks")
    image_size: int | None = knob(None, "Image folders (imagenet, imagefolder): the side images are cropped to.",
                                  positive=True, shown_default="224", panel="Data")
    workers: int | None = knob(None, "DataLoader worker processes per training process.", minimum=0,
                               on_resume="free", shown_default="the process's share of the CPUs minus one, at most "
                                                               "8; 0 for in-memory datasets on a CPU", panel="Data")
    sync_bn: bool = knob(False, "Under torchrun: BatchNorm statistics over the global batch (SyncBatchNorm).",
                         flag="--sync-bn", panel="Hardware")
    keep_steps: list[int] = knob(help="Also keep the model after these optimizer steps, counted from the run's "
                                      "start (learning curves), as step<N>.safetensors in OUT/checkpoints.",
                                 default_factory=list, parse=step_list, on_resume="free", shown_default="none",
                                 panel="Output")
    tensorboard: str | None = knob(None, "Folder for TensorBoard logs of every scalar metrics.jsonl holds, and of "
                                         "the training scalars every --log-every steps.", on_resume="free",
                                   panel="Output")
    wandb: str | None = knob(None, "Weights & Biases project (ramptool[wandb]; WANDB_MODE=offline works without "
                                   "a network); --resume continues its run.", on_resume="free", panel="Output")
    loggers: dict[str, str] = knob(help="Other registered loggers (plugins: `ramptool plugins`), name=target,...",
                                   default_factory=dict, parse=logger_table, flag="--logger", on_resume="free",
                                   shown_default="none", panel="Output")
    log_every: int = knob(10, "Log the training scalars averaged over every N optimizer steps.", positive=True,
                          on_resume="free", panel="Output")
    resume: bool = knob(False, "Continue the run in --out from its last checkpoint.", flag="--resume",
                        recipe=False, on_resume="free", panel="Output")
    overwrite: bool = knob(False, "Replace the run already in --out (it is kept until the new run's first "
                                  "checkpoint).", flag="--overwrite", recipe=False, on_resume="free", panel="Output")
    progress: bool = knob(True, "Show progress: a bar on a terminal, a line every 30 s in a log file.",
                          recipe=False, on_resume="free", panel="Output")

    def __post_init__(self):
        unchecked = CHECK_REGISTERED.set(False)  # names of plugins' components are checked by resolve_config
        try:
            for spec in dataclasses.fields(self):
                setattr(self, spec.name, convert(spec.name, getattr(self, spec.name), PYTHON))
        finally:
            CHECK_REGISTERED.reset(unchecked)

    @property
    def mode(self) -> str:
        """'finetune' (from the checkpoint ``init``) or 'train' (from random weights)."""
        return "finetune" if self.init else "train"


FIELDS = {spec.name: spec for spec in dataclasses.fields(TrainConfig)}
TYPES = typing.get_type_hints(TrainConfig)


def knob_of(name: str) -> Knob:
    return FIELDS[name].metadata["knob"]


def flag_of(name: str) -> str:
    """The CLI flag of a field (the first spelling of a bool's pair)."""
    flag = knob_of(name).flag
    return (flag or "--" + name.replace("_", "-")).split("/")[0]


def default_of(name: str) -> Any:
    spec = FIELDS[name]
    if spec.default is not MISSING:
        return spec.default
    return spec.default_factory() if spec.default_factory is not MISSING else MISSING


def base_type(name: str) -> tuple[type, bool]:
    """(the field's type without None, whether None is allowed)."""
    hint = TYPES[name]
    members = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else ()
    if members:
        concrete = [m for m in members if m is not type(None)]
        return typing.get_origin(concrete[0]) or concrete[0], type(None) in members
    return typing.get_origin(hint) or hint, False


def is_option_table(name: str) -> bool:
    """A ``dict`` field read as options: a TOML table, or a repeatable ``--flag name=value`` on the command line
    (values stay text there: the trainer types and checks them against what the component declares)."""
    return base_type(name)[0] is dict and knob_of(name).parse is None


def _number_phrase(kind: str, spec: Knob) -> str:
    noun = "integer" if kind == "int" else "number"
    article = "an" if noun == "integer" else "a"
    if spec.positive:
        return f"a positive {noun}"
    if spec.minimum is not None and spec.maximum is not None:
        return f"{article} {noun} in [{spec.minimum:g}, {spec.maximum:g}]"
    if spec.minimum is not None:
        return f"{article} {noun} >= {spec.minimum:g}"
    if spec.maximum is not None:
        return f"{article} {noun} <= {spec.maximum:g}"
    return f"{article} {noun}"


def _in_range(value: float, spec: Knob) -> bool:
    return (math.isfinite(value) and (not spec.positive or value > 0)
            and (spec.minimum is None or value >= spec.minimum) and (spec.maximum is None or value <= spec.maximum))


def _choices(spec: Knob) -> list[str] | None:
    if spec.choices is None or (callable(spec.choices) and not CHECK_REGISTERED.get()):
        return None
    return list(spec.choices() if callable(spec.choices) else spec.choices)


def _convert(name: str, value: Any, source: Source) -> Any:
    spec, (kind, optional) = knob_of(name), base_type(name)
    if value is None:
        if optional or (default_of(name) is None):
            return None
        raise Invalid("set")
    if spec.path and isinstance(value, Path):
        value = str(value)
    if spec.parse is not None:
        return spec.parse(value, source.text)
    if is_option_table(name):
        if source.text and isinstance(value, (list, tuple)):
            return parse_assignments(list(value), flag_of(name))
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise Invalid("a table of name = value options")
        return dict(value)
    if kind is bool:
        if isinstance(value, bool):
            return value
        if source.text and isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise Invalid("true or false")
    if kind in (int, float):
        phrase = _number_phrase(kind.__name__, spec)
        if source.text and isinstance(value, str):
            try:
                value = int(value) if kind is int else parse_number(value)
            except (ValueError, RamptoolError):
                raise Invalid(phrase) from None
        wrong_type = isinstance(value, bool) or not isinstance(value, (int, float))
        if wrong_type or (kind is int and isinstance(value, float)):
            raise Invalid(phrase)
        value = kind(value)
        if not _in_range(value, spec):
            raise Invalid(phrase)
        return value
    if kind is str:
        choices = _choices(spec)
        if not isinstance(value, str) or not value.strip() or (choices is not None and value not in choices):
            raise Invalid(f"one of: {', '.join(choices)}" if choices is not None else "a non-empty string")
        if spec.path and source.base is not None and not re.match(r"[a-z][a-z0-9+.-]+:", value):
            value = str(source.base / Path(value).expanduser())  # absolute paths and robustbench:... stay
        return value
    if kind is list:
        return norm_list(value, source.text)
    raise TypeError(f"TrainConfig.{name}: unsupported type {TYPES[name]}")


def _shown(value: Any, source: Source) -> str:
    return str(value) if source.text and isinstance(value, str) else repr(value)


def convert(name: str, value: Any, source: Source, key: str | None = None) -> Any:
    """``value`` from ``source`` as field ``name`` needs it, or a one-line ConfigError naming key and source."""
    try:
        return _convert(name, value, source)
    except Invalid as problem:
        if problem.detail:
            raise source.fail(name, key, f": {problem.detail}") from None
        raise source.fail(name, key, f" must be {problem.requirement}, got {_shown(value, source)}") from None


def _plain(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value))
    if isinstance(value, dict):
        return ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in value.items())
    return f"{value:g}" if isinstance(value, float) else str(value)

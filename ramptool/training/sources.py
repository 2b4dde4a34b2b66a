"""The one path every source takes into a TrainConfig: defaults, a recipe, Python overrides and command-line
flags, merged with one precedence (``build_train_config``), and the rules a ``--resume`` follows against the
configuration saved in the run folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ramptool.checkpoints.format import STATE_FILE, load_state
from ramptool.errors import RamptoolError
from ramptool.plugins.options import guess_value
from ramptool.runtime.rundir import SET_ASIDE
from ramptool.training.config import (
    COMMAND_LINE,
    FIELDS,
    PYTHON,
    ConfigError,
    Source,
    TrainConfig,
    _plain,
    convert,
    default_of,
    flag_of,
    is_option_table,
    knob_of,
)
from ramptool.training.recipes import read_recipe


def build_train_config(flags: dict[str, Any] | None = None, recipe: str | Path | None = None,
                       overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The one way from user input to a TrainConfig. Precedence, lowest first: TrainConfig's (and the dataset's)
    defaults, the recipe (a path or a shipped recipe's name), ``overrides`` (Python values), ``flags``
    (command-line text; None = not given). With ``resume`` set, the run saved in ``out`` supplies the rest, and
    any given value that differs from it is an error listing them all (only ``on_resume`` "free" fields may
    change, and "extend" ones grow)."""
    layers: list[tuple[str, Any, Source, str]] = []  # (field, value, source, key), lowest precedence first
    if recipe is not None:
        path, entries = read_recipe(recipe)
        source = Source(f"recipe {path}", base=path.resolve().parent)
        layers += [(name, value, source, key) for name, (key, value) in entries.items()]
    for name, value in (overrides or {}).items():
        if name not in FIELDS:
            raise ConfigError(f"TrainConfig has no field {name!r}")
        layers.append((name, value, PYTHON, name))
    layers += [(name, value, COMMAND_LINE, flag_of(name)) for name, value in (flags or {}).items()
               if value is not None and value != []]
    values: dict[str, Any] = {}
    labels: dict[str, str] = {}
    for name, value, source, key in layers:
        converted = convert(name, value, source, key)
        if is_option_table(name) and name in values:  # option tables merge, key by key
            converted = {**values[name], **converted}
        values[name], labels[name] = converted, source.describe(name, key)
    if "out" not in values:
        raise ConfigError("--out DIR is required (the run folder; it is never wiped)")
    if values.get("resume"):
        return TrainConfig(**resumed_values(values, labels))
    return TrainConfig(**values)


def given_values(cfg: TrainConfig) -> dict[str, Any]:
    """The fields of a Python-built config that differ from their declared defaults (what its author set)."""
    return {name: getattr(cfg, name) for name in FIELDS
            if name in ("out", "resume") or getattr(cfg, name) != default_of(name)}


def read_saved_run(out: str | Path) -> dict[str, Any]:
    """The configuration saved in ``out``'s state.pt, converted and checked."""

    path = Path(out) / STATE_FILE
    if not path.exists() and (Path(out) / SET_ASIDE / STATE_FILE).exists():
        # an --overwrite killed before its first checkpoint: the old run is still the folder's, and the trainer
        # puts it back under the folder's lock before it resumes
        path = Path(out) / SET_ASIDE / STATE_FILE
    if not path.exists():
        raise RamptoolError(f"nothing to resume in {out} (no {STATE_FILE})")
    state = load_state(path, mmap=True)
    saved = state.get("config") if isinstance(state, dict) else None
    if not isinstance(saved, dict):
        raise RamptoolError(f"{path} is not a ramptool training state (no saved configuration)")
    unknown = sorted(set(saved) - set(FIELDS))
    if unknown:
        raise RamptoolError(f"{path}: unknown setting {unknown[0]!r} (written by another ramptool version?)")
    source = Source(str(path))
    return {name: convert(name, value, source) for name, value in saved.items()}


def resumed_values(given: dict[str, Any], labels: dict[str, str]) -> dict[str, Any]:
    """The saved run's configuration with the changes ``--resume`` allows; anything else given must match it."""
    if given.get("overwrite"):
        raise ConfigError("--resume continues the run in --out and --overwrite replaces it: choose one")
    saved = read_saved_run(given["out"])
    conflicts, changes = [], {}
    for name, value in given.items():
        rule, before = knob_of(name).on_resume, saved.get(name, default_of(name))
        if name == "eps" and isinstance(before, dict):  # unnamed norms keep the (saved) dataset's budgets
            value = {**before, **value}
        if rule == "free" or (rule == "extend" and value >= before):
            changes[name] = value
        elif _comparable(value) != _comparable(before):
            conflicts.append(f"{labels[name]} {_plain(value)} (saved: {_plain(before)})")
    if conflicts:
        what = "differs" if len(conflicts) == 1 else "differ"
        grow = ", ".join(flag_of(n) for n in FIELDS if knob_of(n).on_resume == "extend")
        free = ", ".join(flag_of(n) for n in FIELDS
                         if knob_of(n).on_resume == "free" and n not in ("out", "resume", "overwrite"))
        raise ConfigError(f"--resume continues the run saved in {given['out']} as it was configured, but "
                          f"{'; '.join(conflicts)} {what} from it. Drop {'it' if len(conflicts) == 1 else 'them'} "
                          f"({grow} may grow, to extend the run; {free} may change), or start a new run with "
                          f"another --out or --overwrite")
    return {**saved, **changes, "resume": True}


def _comparable(value: Any) -> Any:
    """Option tables from the command line hold text until the component types them: '0.5' equals a saved 0.5."""
    if not isinstance(value, dict):
        return value

    return {key: guess_value(v) if isinstance(v, str) else v for key, v in value.items()}

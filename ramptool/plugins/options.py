"""Component options: the keyword parameters a component declares, set from the command line
(``--combiner-option beta=0.3``), a recipe (``[combiner_options]``) or Python, typed and checked against that
declaration before any work starts.

A component's options are its parameters after the ones ramptool passes itself (``CALL_PARAMETERS``). Each
needs a default (or it is required) and a type ramptool can read from text: ``bool``, ``int``, ``float``,
``str``, a ``Literal[...]`` of those, or any of them ``| None``; without an annotation the default's type
counts. A parameter of any other type (a tensor, a generator) is not an option. ``**kwargs`` accepts any
further key, its value read as a number or a boolean where it looks like one.
"""

from __future__ import annotations

import inspect
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

from ramptool.errors import RamptoolError
from ramptool.threat import parse_number

# per kind: (how many leading positional parameters are the call's own, names ramptool passes by keyword)
CALL_PARAMETERS = {
    "attack": (3, {"norm", "eps", "steps"}),  # run(model, x, y, *, norm, eps, steps, **options)
    "pairing-loss": (2, set()),  # fn(logits_q, logits_r, **options)
    "combiner": (2, set()),  # cls(model, make_optimizer, **options)
    "backbone": (3, set()),  # builder(num_classes, in_chans, image_size, **options)
    "method": (1, set()),  # cls(ctx, **options)
}  # datasets take no options: a DatasetSpec fixes the input shape and classes that checkpoints record

# the flag that sets each kind's options, for error messages
FLAGS = {"attack": "--attack-option", "pairing-loss": "--pairing-option", "combiner": "--combiner-option",
         "backbone": "--arch-option", "method": "--method-option"}

SCALARS = (bool, int, float, str)
_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}


@dataclass(frozen=True)
class Option:
    name: str
    type: type
    default: Any = inspect.Parameter.empty  # empty: the option is required
    choices: tuple | None = None  # a Literal's values
    nullable: bool = False

    @property
    def required(self) -> bool:
        return self.default is inspect.Parameter.empty

    def describe(self) -> str:
        """'beta: float = 0.5', 'keep: loss|misclassified = loss', 'hidden: int (required)'."""
        kind = "|".join(str(c) for c in self.choices) if self.choices else self.type.__name__
        kind += " | None" if self.nullable else ""
        return f"{self.name}: {kind} (required)" if self.required else f"{self.name}: {kind} = {self.default!r}"

    def convert(self, value: Any, where: str) -> Any:
        if isinstance(value, str) and self.nullable and value.strip().lower() in ("none", "null"):
            value = None
        if value is None:
            if self.nullable:
                return None
            raise RamptoolError(f"{where}: {self.name} takes {_a(self.type)}, not None")
        converted = _convert_text(value, self.type, where, self.name) if isinstance(value, str) else value
        if not _is_a(converted, self.type):
            raise RamptoolError(f"{where}: {self.name} takes {_a(self.type)}, got {value!r}")
        converted = float(converted) if self.type is float else converted
        if self.choices is not None and converted not in self.choices:
            raise RamptoolError(f"{where}: {self.name} must be one of {', '.join(map(str, self.choices))}, "
                                f"got {value!r}")
        return converted


def _a(kind: type) -> str:
    return f"an {kind.__name__}" if kind is int else f"a {kind.__name__}"


def _is_a(value, kind: type) -> bool:
    """isinstance, except that a bool is no number and an int is a float."""
    if isinstance(value, bool):
        return kind is bool
    return isinstance(value, kind) or (kind is float and isinstance(value, int))


def _convert_text(text: str, kind: type, where: str, name: str):
    try:
        if kind is bool:
            if text.strip().lower() in _TRUE | _FALSE:
                return text.strip().lower() in _TRUE
            raise ValueError
        if kind is int:
            return int(text)
        if kind is float:
            return parse_number(text)
    except (ValueError, RamptoolError):
        raise RamptoolError(f"{where}: {name} takes {_a(kind)}, got {text!r}") from None
    return text


def guess_value(text: str):
    """The value of ``k=v`` for a ``**kwargs`` option: an int, float, bool or None where it reads as one."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "none":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _option_type(annotation, default) -> tuple[type, tuple | None, bool] | None:
    """(scalar type, Literal choices, nullable) of a parameter, or None when it is not an option."""
    if annotation is inspect.Parameter.empty:
        if isinstance(default, SCALARS):
            return type(default), None, False
        return None
    nullable = False
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        nullable = len(members) < len(typing.get_args(annotation))
        if len(members) != 1:
            return None
        annotation, origin = members[0], typing.get_origin(members[0])
    if origin is Literal:
        choices = typing.get_args(annotation)
        kinds = {type(c) for c in choices}
        return (kinds.pop(), choices, nullable) if len(kinds) == 1 and kinds <= set(SCALARS) else None
    return (annotation, None, nullable) if annotation in SCALARS else None


def _signature_target(kind: str, component):
    """The callable whose signature declares the options: an Attack's ``run``, anything else itself."""
    return component.run if kind == "attack" else component


def options_of(kind: str, component) -> tuple[list[Option], bool]:
    """(the options a component declares, whether ``**kwargs`` accepts further keys)."""
    if kind not in CALL_PARAMETERS:
        return [], False
    skip_positional, passed_by_keyword = CALL_PARAMETERS[kind]
    try:
        signature = inspect.signature(_signature_target(kind, component), eval_str=True)
    except (TypeError, ValueError, NameError):
        return [], True  # a signature we cannot read: take options on trust, the component checks them
    presets = getattr(component, "defaults", {}) if kind == "attack" else {}
    options, open_ended, positional = [], False, 0
    for parameter in signature.parameters.values():
        if parameter.kind is parameter.VAR_KEYWORD:
            open_ended = True
            continue
        if parameter.kind is parameter.VAR_POSITIONAL:
            continue
        if parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD) and \
                positional < skip_positional:
            positional += 1
            continue
        if parameter.name in passed_by_keyword:
            continue
        default = presets.get(parameter.name, parameter.default)
        typed = _option_type(parameter.annotation, default)
        if typed is not None:
            options.append(Option(parameter.name, typed[0], default, typed[1], typed[2]))
    return options, open_ended


def bind(kind: str, name: str, component, given: dict | None) -> dict[str, Any]:
    """``given`` (text from the command line, or typed values from a recipe or Python) checked against the
    component's options and converted to their types; unknown, missing or ill-typed options are an error."""
    if given is None:
        given = {}
    if not isinstance(given, dict):
        raise RamptoolError(f"options of {kind} {name!r} must be a table of name = value, got {given!r}")
    options, open_ended = options_of(kind, component)
    by_name = {option.name: option for option in options}
    where = f"{kind} {name!r}"
    bound = {}
    for key, value in given.items():
        if key in by_name:
            bound[key] = by_name[key].convert(value, where)
        elif open_ended:
            bound[key] = guess_value(value) if isinstance(value, str) else value
        else:
            listed = "; its options: " + ", ".join(o.describe() for o in options) if options else \
                " (it takes no options)"
            raise RamptoolError(f"{where} has no option {key!r}{listed}")
    missing = [option.name for option in options if option.required and option.name not in bound]
    if missing:
        raise RamptoolError(f"{where} needs {', '.join(missing)}: pass {FLAGS[kind]} {missing[0]}=VALUE")
    return bound


def parse_assignments(entries: list[str] | None, flag: str) -> dict[str, str]:
    """['beta=0.3', 'max-norm=1'] -> {'beta': '0.3', 'max_norm': '1'} (values stay text until bound)."""
    parsed: dict[str, str] = {}
    for entry in entries or []:
        key, equals, value = entry.partition("=")
        key = key.strip().replace("-", "_")
        if not equals or not key:
            raise RamptoolError(f"{flag} {entry!r} must look like name=value, e.g. {flag} beta=0.5")
        if key in parsed:
            raise RamptoolError(f"{flag} {key} is given twice")
        parsed[key] = value.strip()
    return parsed

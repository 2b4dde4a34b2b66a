"""``ramptool train`` / ``finetune`` options, generated from the TrainConfig knobs: one option per knob, its help
and shown default written as typer writes every other option's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import MISSING
from typing import Any

import typer
from rich.markup import escape

from ramptool.training.config import (
    FIELDS,
    PANELS,
    _plain,
    base_type,
    default_of,
    flag_of,
    is_option_table,
    knob_of,
)

# Choices wider than this are listed in the help rather than as the metavar: the help column stays wide at 80 columns.
METAVAR_WIDTH = 14


def metavar(name: str) -> str:
    """A value's placeholder in ``--help``: ``<int>``, ``<path>``, ``<name=value>``, ``<sgd|adam>`` for a few short
    choices; "" for a switch, which takes none."""
    spec, (kind, _) = knob_of(name), base_type(name)
    if kind is bool:
        return ""
    if is_option_table(name):
        return "<name=value>"
    if isinstance(spec.choices, tuple):
        listed = "<" + "|".join(spec.choices) + ">"
        return listed if len(listed) <= METAVAR_WIDTH else "<name>"
    if spec.path:
        return "<path>"
    return {int: "<int>", float: "<float>"}.get(kind, "<str>")


def help_text(name: str) -> str:
    """A field's help with its default, written as typer writes every other option's: ``[default: 1]``,
    ``[default: (the dataset's)]`` for a default that depends on context, ``[default: progress]`` for a flag."""
    spec, default = knob_of(name), default_of(name)
    if is_option_table(name):
        return f"{spec.help} Repeatable; `ramptool plugins -v` lists each component's options."
    if isinstance(spec.choices, tuple) and metavar(name) == "<name>":
        spec = dataclasses.replace(spec, help=f"{spec.help} One of: {', '.join(spec.choices)}.")
    if default is MISSING:
        return f"{spec.help} [required]"
    if spec.shown_default is not None:
        shown = f"({spec.shown_default})"
    elif isinstance(default, bool):
        if spec.flag and "/" not in spec.flag:  # a lone switch such as --resume: off unless given
            return spec.help
        shown = (flag_of(name) if default else _negative_flag(name)).lstrip("-")
    elif default in (None, {}, []):
        return spec.help
    else:
        shown = _plain(default)
    return f"{spec.help} [default: {shown}]"


def _negative_flag(name: str) -> str:
    flag = knob_of(name).flag or ""
    return flag.split("/")[1] if "/" in flag else "--no-" + name.replace("_", "-")


def cli_options(exclude: Iterable[str] = ()) -> list[tuple[str, type, Any]]:
    """(parameter name, annotation, typer.Option) for every CLI knob, grouped by panel in the order of PANELS:
    values arrive as text (or bool, or a list for a repeatable dict option) and None when not given, so the recipe
    and the defaults can fill them."""
    options = []
    for name in sorted(FIELDS, key=lambda name: PANELS.index(knob_of(name).panel)):
        spec = knob_of(name)
        if not spec.cli or name in exclude:
            continue
        text = escape(help_text(name))  # typer renders help as rich markup, where [default: 1] would vanish
        kind, _ = base_type(name)
        flag = spec.flag or "--" + name.replace("_", "-")
        shown = {"help": text, "show_default": False, "rich_help_panel": spec.panel}
        if kind is bool:  # a switch: no value, so no metavar (typer would show <bool>)
            decls = flag if "/" in flag or spec.flag else f"{flag}/--no-{name.replace('_', '-')}"
            options.append((name, bool | None, typer.Option(None, decls, metavar="", **shown)))
        else:
            annotation = list[str] | None if is_option_table(name) else str | None
            options.append((name, annotation, typer.Option(None, flag, metavar=metavar(name), **shown)))
    return options

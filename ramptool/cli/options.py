"""``ramptool train`` / ``finetune`` options, generated from the TrainConfig knobs: one option per knob, its help
and shown default written as typer writes every other option's.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import MISSING
from typing import Any

import typer
from rich.markup import escape

from ramptool.training.config import FIELDS, _plain, base_type, default_of, flag_of, is_option_table, knob_of


def help_text(name: str) -> str:
    """A field's help with its default, written as typer writes every other option's: ``[default: 1]``,
    ``[default: (the dataset's)]`` for a default that depends on context, ``[default: progress]`` for a flag."""
    spec, default = knob_of(name), default_of(name)
    if is_option_table(name):
        return f"{spec.help} Repeatable; `ramptool plugins -v` lists each component's options."
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
    """(parameter name, annotation, typer.Option) for every CLI knob: values arrive as text (or bool, or a list
    for a repeatable dict option) and None when not given, so the recipe and the defaults can fill them."""
    options = []
    for name in FIELDS:
        spec = knob_of(name)
        if not spec.cli or name in exclude:
            continue
        text = escape(help_text(name))  # typer renders help as rich markup, where [default: 1] would vanish
        kind, _ = base_type(name)
        flag = spec.flag or "--" + name.replace("_", "-")
        if kind is bool:
            decls = flag if "/" in flag or spec.flag else f"{flag}/--no-{name.replace('_', '-')}"
            option = typer.Option(None, decls, help=text, show_default=False)
            options.append((name, bool | None, option))
        elif is_option_table(name):
            option = typer.Option(None, flag, help=text, show_default=False, metavar="<name=value>")
            options.append((name, list[str] | None, option))
        else:
            choices = spec.choices if isinstance(spec.choices, tuple) else None
            metavar = ("<" + "|".join(choices) + ">" if choices else
                       {int: "<int>", float: "<float>"}.get(kind, "<str>"))
            option = typer.Option(None, flag, help=text, show_default=False, metavar=metavar)
            options.append((name, str | None, option))
    return options

"""``ramptool train`` / ``finetune --help``: every knob in one of the panels, switches shown as switches, and every
line readable on an 80-column terminal (no option name or help word cut)."""

import re

import pytest
import typer

from ramptool.cli import main
from ramptool.cli.main import app
from ramptool.training.config import FIELDS, PANELS, base_type, flag_of, knob, knob_of


def run_help(command, capsys, monkeypatch, columns=80) -> str:
    monkeypatch.setenv("COLUMNS", str(columns))
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0
    return capsys.readouterr().out


def spellings(name: str) -> list[str]:
    """Every spelling of a knob's flag: both of a --x/--no-x switch."""
    spec = knob_of(name)
    flag = spec.flag or "--" + name.replace("_", "-")
    if base_type(name)[0] is bool and "/" not in flag and spec.flag is None:
        flag += "/--no-" + name.replace("_", "-")
    return flag.split("/")


def test_every_knob_is_in_one_panel_of_the_list():
    assert len(set(PANELS)) == len(PANELS)
    for name in FIELDS:
        assert knob_of(name).panel in PANELS, name
    for panel in (None, "Misc"):
        with pytest.raises(ValueError, match="panel must be one of"):
            knob(1, "A knob.", panel=panel)


@pytest.mark.parametrize("command", ["train", "finetune"])
def test_every_option_has_help_and_switches_take_no_value(command):
    params = {param.name: param for param in typer.main.get_command(app).commands[command].params}
    for param in params.values():
        assert param.help and param.help.strip(), param.name
    for name in FIELDS:
        if name not in params:
            assert (command, name) == ("train", "init")
            continue
        param = params[name]
        assert param.rich_help_panel == knob_of(name).panel, name
        if base_type(name)[0] is bool:
            assert param.is_flag and param.metavar == "", name
            assert [*param.opts, *param.secondary_opts] == spellings(name), name
        else:
            assert not param.is_flag and param.metavar.startswith("<"), name
    assert params["config"].rich_help_panel == "Output" and params["show_help"].is_flag


@pytest.mark.parametrize("command", ["train", "finetune"])
def test_help_is_readable_at_80_columns(command, capsys, monkeypatch):
    text = run_help(command, capsys, monkeypatch)
    lines = text.splitlines()
    assert max(map(len, lines)) <= 80
    assert "…" not in text, [line for line in lines if "…" in line]  # rich cuts what does not fit with an ellipsis
    assert "<bool>" not in text
    words = set(re.findall(r"--?[\w-]+", text))
    for name in FIELDS:
        if (command, name) == ("train", "init"):
            assert "│ --ckpt " not in text  # named in other options' help, but no option of train
            continue
        for flag in spellings(name):
            assert flag in words, (name, flag)
    assert {"--config", "--help", "-h"} <= words
    titles = re.findall(r"╭─ (\w+) ─", text)
    assert titles == ["Options", *PANELS]  # --help alone in typer's own panel, then the knobs' in PANELS' order
    assert len(lines) < 220  # 205 at 80 columns with the check and logger options; 302 when they were one flat table


def test_a_switch_given_a_value_is_refused(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")
    for switch in ("--resume", "--progress", "--no-decay-bn-bias"):
        with pytest.raises(SystemExit) as exited:
            main(["finetune", "--out", "unused", f"{switch}=yes"])
        assert exited.value.code == 2
        assert f"Option '{switch}' does not take a value" in capsys.readouterr().err
    assert flag_of("no_decay_bn_bias") == "--no-decay-bn-bias"

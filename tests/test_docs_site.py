"""The documentation site: README.md stays a first screen, `mkdocs build --strict` builds the site (dead links and
anchors, pages left out of the nav, docstrings that do not render all fail it), the command-line reference lists
every command of the typer app with the help it prints, and every `ramptool` command line the pages show names a
real command and real options."""

from __future__ import annotations

import html
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main

from ramptool.cli import app

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
API_PAGES = {"ramptool": "ramptool", "api": "ramptool.api", "training": "ramptool.training",
             "attacks": "ramptool.attacks", "evaluation-union": "ramptool.evaluation.union", "data": "ramptool.data",
             "checkpoints": "ramptool.checkpoints"}
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
TAG = re.compile(r"<[^>]+>")


def commands(command=None, path=()):
    """(words after ``ramptool``, click command) for the app and every command and subcommand in it."""
    command = command or typer.main.get_command(app)
    yield list(path), command
    for name in sorted(getattr(command, "commands", {})):
        yield from commands(command.commands[name], (*path, name))


def test_readme_is_a_first_screen():
    text = README.read_text(encoding="utf-8")
    assert len(text.encode("utf-8")) < 15_000, f"README.md is {len(text.encode())} bytes; move sections to docs/"
    # the first thing after the title is the block a newcomer runs
    first = FENCE.search(text)
    assert text[:first.start()].strip() == "# ramptool"
    assert first.group(1) == "console"
    assert [line.split()[:2] for line in first.group(2).splitlines()] == [["make", "demo"], ["make", "test"]]
    for needed in ("https://arxiv.org/abs/2402.06827", "pip install .", "--index-url https://download.pytorch.org/whl/cpu",
                   "@inproceedings{jiang2024ramp", "docs/RESULTS.md", "LICENSE", "CITATION.cff"):
        assert needed in text, needed


def _command_lines(text: str):
    """Each `ramptool ...` command of the Markdown's console blocks, continuation lines joined, comments dropped."""
    for language, block in FENCE.findall(text):
        if language != "console":
            continue
        for line in block.replace("\\\n", " ").splitlines():
            line = line.removeprefix("$ ")
            words = shlex.split(line, comments=True)
            if "ramptool" in words and (words[0] == "ramptool" or words[words.index("ramptool") - 1] == "-m"):
                yield line, words[words.index("ramptool") + 1:]


def test_every_command_line_the_docs_show_exists():
    known = {tuple(path): command for path, command in commands()}
    pages = [README, *sorted(DOCS.rglob("*.md"))]
    checked = 0
    for page in pages:
        for line, words in _command_lines(page.read_text(encoding="utf-8")):
            path = []
            while words and tuple([*path, words[0]]) in known:
                path.append(words.pop(0))
            command = known[tuple(path)]
            assert path or words[:1] in (["--version"], ["-h"], ["--help"]), f"{page.name}: {line}: no such command"
            options = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
            unknown = [w.split("=")[0] for w in words if w.startswith("--") and w.split("=")[0] not in options]
            assert not unknown, f"{page.relative_to(ROOT)}: {line}: {unknown} are not options of ramptool {path}"
            checked += 1
    assert checked > 30  # the pages show about 40


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    for module in ("mkdocs", "material", "mkdocstrings_handlers.python"):
        if importlib.util.find_spec(module.split(".")[0]) is None or importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed: pip install -e '.[docs]'")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_MKDOCS_2_WARNING": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                           "-d", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return out


def _text(page: Path) -> str:
    return html.unescape(TAG.sub("", page.read_text(encoding="utf-8")))


def test_the_site_builds_strict_with_every_page(site):
    for page in ("index.html", "guide/finetune.html", "guide/evaluate.html", "plugins.html", "benchmarks.html",
                 "METHOD.html", "RESULTS.html", "architecture.html", "changelog.html", "reference/cli.html",
                 "source/ramptool/attacks/apgd.py"):
        assert (site / page).is_file(), page
    changelog, page = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8"), _text(site / "changelog.html")
    releases = re.findall(r"^## \[?([^\]\n]+)", changelog, re.M)
    assert releases and all(release in page for release in releases), "the changelog page misses a release"


def test_the_cli_reference_lists_every_command_with_its_help(site):
    page = site / "reference" / "cli.html"
    markup, text = page.read_text(encoding="utf-8"), _text(page)
    for path, command in commands():
        name = " ".join(["ramptool", *path])
        assert f'id="{"-".join(["ramptool", *path])}"' in markup, f"no section for {name}"
        assert f"Usage: {name} " in text, f"no help for {name}"
        for param in command.params:  # every option of every command is there, as --help lists it
            if not getattr(param, "hidden", False) and param.opts[0].startswith("--"):
                assert param.opts[0] in text, f"{name}: {param.opts[0]} missing"
    blocks = [html.unescape(TAG.sub("", block)) for block in re.findall(r"<pre.*?</pre>", markup, re.S)]
    assert len(blocks) == len(list(commands()))
    assert max(len(line) for block in blocks for line in block.splitlines()) <= 100, "help wider than 100 columns"


def test_the_api_reference_renders_the_docstrings(site):
    for page, module in API_PAGES.items():
        markup = (site / "reference" / f"{page}.html").read_text(encoding="utf-8")
        assert f'id="{module}"' in markup, f"{module} is not documented on reference/{page}"
    training = (site / "reference" / "training.html").read_text(encoding="utf-8")
    assert 'id="ramptool.training.TrainConfig"' in training and 'id="ramptool.training.train"' in training
    attacks = (site / "reference" / "attacks.html").read_text(encoding="utf-8")
    assert 'id="ramptool.attacks.apgd.apgd"' in attacks and 'id="ramptool.attacks.apgd_joint"' in attacks

"""MkDocs hooks of the documentation site (mkdocs.yml ``hooks:``), run at every build so that nothing drifts.

- ``<!-- ramptool-cli-reference -->`` in a page becomes the ``--help`` of every command of the typer app
  ``ramptool.cli.app``, rendered at a width of 100 columns (``cli_reference``).
- ``<!-- include CHANGELOG.md -->`` becomes the file at the repository root, its relative links rewritten for the page.
- A relative link to a file of the repository outside ``docs/`` (``../ramptool/attacks/apgd.py``) points at a copy of
  that file under ``source/`` in the site (``on_files`` adds them): the same Markdown works on GitHub and on the
  site, and a link to a file that does not exist still fails ``mkdocs build --strict``.
"""

from __future__ import annotations

import os
import posixpath
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
CLI_MARKER = "<!-- ramptool-cli-reference -->"
INCLUDE = re.compile(r"<!-- include ([\w./-]+) -->")
FENCE = re.compile(r"^\s*(```|~~~)")
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)*?\1")
LINK = re.compile(r"(\]\(\s*<?)([^)\s>]+)(>?(?:\s+\"[^\"]*\")?\s*\))")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
SOURCE = "source"  # where the site keeps its copies of the repository files the pages link to


def command_paths() -> list[list[str]]:
    """Every command of the typer app, as the words after ``ramptool`` ([] is ``ramptool`` itself)."""
    import typer.main

    from ramptool.cli import app

    paths = []

    def walk(command, path):
        paths.append(path)
        for name in sorted(getattr(command, "commands", {})):
            walk(command.commands[name], [*path, name])

    walk(typer.main.get_command(app), [])
    return paths


def command_help(path: list[str]) -> str:
    """``ramptool <path> --help`` as a user sees it in a terminal of 100 columns, without colours."""
    from typer.testing import CliRunner

    from ramptool.cli import app

    env = {"COLUMNS": "100", "LINES": "50", "TERMINAL_WIDTH": "100", "NO_COLOR": "1", "TERM": "dumb",
           "FORCE_COLOR": None, "PY_COLORS": None, "GITHUB_ACTIONS": None}
    result = CliRunner().invoke(app, [*path, "--help"], prog_name="ramptool", env=env, color=False)
    if result.exit_code != 0:
        raise RuntimeError(f"ramptool {' '.join(path)} --help failed ({result.exit_code}): {result.output}")
    lines = [line.rstrip() for line in ANSI.sub("", result.output).splitlines()]
    while lines and not lines[0]:
        lines.pop(0)
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines)


def cli_reference() -> str:
    """The Markdown of the command reference: a section per command, its help in a text block."""
    parts = []
    for path in command_paths():
        name = " ".join(["ramptool", *path])
        parts.append(f"## {name}\n\n```text\n{command_help(path)}\n```\n")
    return "\n".join(parts)


def _prose_map(markdown: str, change) -> str:
    """Apply ``change`` to the prose of the Markdown: outside fenced blocks and code spans."""
    out, fenced = [], False
    for line in markdown.split("\n"):
        if FENCE.match(line):
            fenced = not fenced
            out.append(line)
            continue
        if fenced:
            out.append(line)
            continue
        pieces, last = [], 0
        for span in CODE_SPAN.finditer(line):
            pieces += [change(line[last:span.start()]), span.group()]
            last = span.end()
        out.append("".join([*pieces, change(line[last:])]))
    return "\n".join(out)


def _targets(markdown: str):
    """The relative link targets of the Markdown's prose."""
    found = []

    def collect(text):
        found.extend(match.group(2) for match in LINK.finditer(text))
        return text

    _prose_map(markdown, collect)
    return [t for t in found if not SCHEME.match(t) and not t.startswith(("#", "/"))]


def _outside(base: Path, target: str) -> Path | None:
    """The repository file or folder outside docs/ that ``target``, read relative to ``base``, names, if any."""
    resolved = Path(os.path.normpath(base / target.partition("#")[0]))
    if resolved.is_relative_to(DOCS) or not resolved.is_relative_to(ROOT) or not resolved.exists():
        return None
    return resolved


def _copy_uri(path: Path) -> str:
    """Where the site keeps its copy of a repository file (a folder: the index of its files)."""
    relative = path.relative_to(ROOT).as_posix()
    return f"{SOURCE}/{relative}/index.html" if path.is_dir() else f"{SOURCE}/{relative}"


def _rewrite_links(markdown: str, base: Path, page_dir: Path) -> str:
    """Relative links, read relative to ``base``, made relative to ``page_dir`` (both folders of the repository);
    those that leave docs/ for another file of the repository go to the site's copy of it."""
    page_uri = page_dir.relative_to(DOCS).as_posix()

    def fix(match):
        target = match.group(2)
        if SCHEME.match(target) or target.startswith(("#", "/")):
            return match.group()
        file_part, hash_, anchor = target.partition("#")
        outside = _outside(base, target)
        if outside is not None:
            new = posixpath.relpath(_copy_uri(outside), page_uri)
        elif base != page_dir:
            new = Path(os.path.relpath(os.path.normpath(base / file_part), page_dir)).as_posix()
        else:
            return match.group()
        return f"{match.group(1)}{new}{hash_}{anchor}{match.group(3)}"

    return _prose_map(markdown, lambda text: LINK.sub(fix, text))


def on_files(files, config):
    """Add to the site the repository files outside docs/ that a page (or a file it includes) links to."""
    from mkdocs.structure.files import File

    wanted: dict[str, Path] = {}
    for file in list(files.documentation_pages()):
        path = Path(file.abs_src_path)
        sources = [(path.read_text(encoding="utf-8"), path.parent)]
        sources += [((ROOT / name).read_text(encoding="utf-8"), (ROOT / name).parent)
                    for name in INCLUDE.findall(sources[0][0])]
        for text, base in sources:
            for target in _targets(text):
                outside = _outside(base, target)
                if outside is not None:
                    wanted[_copy_uri(outside)] = outside
    for uri, path in sorted(wanted.items()):
        if path.is_dir():
            names = sorted(p.name for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
            for name in names:
                _add_copy(files, config, posixpath.join(posixpath.dirname(uri), name), path / name)
            relative = path.relative_to(ROOT).as_posix()
            items = "".join(f'<li><a href="{name}">{name}</a></li>' for name in names)
            listing = f"<!doctype html><title>{relative}</title><h1>{relative}/</h1><ul>{items}</ul>\n"
            files.append(File.generated(config, uri, content=listing))
        else:
            _add_copy(files, config, uri, path)
    return files


def _add_copy(files, config, uri: str, path: Path) -> None:
    """Add the repository file ``path`` to the site as ``uri``, as it is (a Markdown file is not rendered)."""
    from mkdocs.structure.files import File

    if files.get_file_from_path(uri) is not None:
        return
    copy = File.generated(config, uri, abs_src_path=str(path))
    if copy.is_documentation_page():
        copy.is_documentation_page = copy.is_static_page = lambda: False
    files.append(copy)


def on_page_markdown(markdown, page, config, files):
    page_dir = (DOCS / page.file.src_uri).parent
    if CLI_MARKER in markdown:
        markdown = markdown.replace(CLI_MARKER, cli_reference())

    def include(match):
        path = ROOT / match.group(1)
        return _rewrite_links(path.read_text(encoding="utf-8"), path.parent, page_dir)

    markdown = _rewrite_links(markdown, page_dir, page_dir)
    return INCLUDE.sub(include, markdown)

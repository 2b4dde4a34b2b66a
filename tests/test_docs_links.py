"""The documentation stays inside the repository: every relative link in the shipped Markdown resolves to a file
here (and its anchor to a heading of that file), every ``module.py: name`` that docs/METHOD.md cites exists, every
section of docs/METHOD.md that a docstring, help text or recipe cites exists, and nothing refers to the internal
spec file that the repository does not ship."""

from __future__ import annotations

import ast
import os
import re
from collections import Counter
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
METHOD = ROOT / "docs" / "METHOD.md"
# what .gitignore keeps out of the repository (and the git metadata itself)
SKIPPED_DIRS = {".git", ".venv", "runs", "data", "build", "out", "site", "__pycache__", ".pytest_cache",
                ".ruff_cache"}

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?\s*$")
HTML_LINK = re.compile(r"(?:href|src)=\"([^\"]+)\"")
CODE_SPAN = re.compile(r"`[^`]*`")
MATH = re.compile(r"\$\$.*?\$\$|\$[^$\n]+\$", re.DOTALL)
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
CODE_REFERENCE = re.compile(r"`((?:ramptool|bench|plugins|tests)/[\w/.-]+\.py): ([\w.]+(?:, [\w.]+)*)`")
METHOD_ANCHOR = re.compile(r"docs/METHOD\.md#([\w-]+)")
SPEC_REFERENCE = re.compile(r"\bSPEC(?:\.md\b|\s*§)")


def prose_lines(text: str):
    """(line number, line) of the Markdown outside fenced code blocks."""
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield number, line


def github_anchor(heading: str) -> str:
    """The id GitHub gives a heading: its rendered text, lowercased, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").replace("*", "")
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: Counter[str] = Counter()
    result = set()
    for _, line in prose_lines(path.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if match:
            anchor = github_anchor(match.group(2))
            result.add(anchor if seen[anchor] == 0 else f"{anchor}-{seen[anchor]}")
            seen[anchor] += 1
    return result


def link_targets(text: str):
    """(line number, target) of every Markdown or HTML link outside code and math."""
    for number, line in prose_lines(text):
        prose = CODE_SPAN.sub("", line)
        for pattern in (INLINE_LINK, REFERENCE_LINK, HTML_LINK):
            for match in pattern.finditer(prose):
                yield number, match.group(1)


def broken_links(path: Path, root: Path = ROOT) -> list[str]:
    # math can hold brackets and parentheses; blank it out but keep its line breaks for the line numbers
    text = MATH.sub(lambda math: "\n" * math.group().count("\n"), path.read_text(encoding="utf-8"))
    problems = []
    for number, target in link_targets(text):
        if SCHEME.match(target):
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / unquote(file_part)).resolve() if file_part else path
        where = f"{path.relative_to(root)}:{number}: {target}"
        if not resolved.is_relative_to(root):
            problems.append(f"{where} leads outside the repository")
        elif not resolved.exists():
            problems.append(f"{where} does not exist")
        elif anchor and (resolved.suffix != ".md" or anchor not in anchors(resolved)):
            problems.append(f"{where} names no heading of {resolved.relative_to(root)}")
    return problems


def shipped_text_files():
    """Every text file of the repository outside what .gitignore keeps out."""
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS and not d.endswith(".egg-info"))
        for name in sorted(files):
            path = Path(folder) / name
            data = path.read_bytes()
            if b"\0" in data:
                continue
            try:
                yield path, data.decode("utf-8")
            except UnicodeDecodeError:
                continue


MARKDOWN = sorted({*ROOT.glob("*.md"), *(ROOT / "docs").rglob("*.md"), *(ROOT / "plugins").glob("*/README.md")})


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve_inside_the_repository(path):
    assert broken_links(path) == []


def test_every_page_of_the_site_is_checked():
    """The site's pages (docs/, docs/guide/, docs/reference/) are all among the checked Markdown."""
    checked = {path.relative_to(ROOT).as_posix() for path in MARKDOWN}
    for page in ("README.md", "docs/index.md", "docs/plugins.md", "docs/guide/evaluate.md", "docs/reference/cli.md",
                 "docs/METHOD.md", "docs/RESULTS.md", "docs/architecture.md"):
        assert page in checked


def test_the_checker_reports_dead_links_outside_links_and_missing_anchors(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "A.md").write_text("# Title\n\n## What `make demo` shows\n\n## Title\n")
    page = tmp_path / "README.md"
    page.write_text("[ok](docs/A.md#what-make-demo-shows) [ok](docs/A.md#title-1) [ok](#top) [web](https://x.org)\n"
                    "# Top\n`[in code](nowhere.md)` $[0,1]$ [gone](docs/B.md) [up](../OUTSIDE.md)\n"
                    "```\n[fenced](nowhere.md)\n```\n[bad anchor](docs/A.md#nope)\n")
    assert broken_links(page, root=tmp_path) == [
        "README.md:3: docs/B.md does not exist",
        "README.md:3: ../OUTSIDE.md leads outside the repository",
        "README.md:7: docs/A.md#nope names no heading of docs/A.md",
    ]


def _defined_names(path: Path) -> set[str]:
    """Top-level functions, classes and assignments of a module, and ``Class.member`` for class bodies."""
    names = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        members = [node]
        prefix = ""
        if isinstance(node, ast.ClassDef):
            names.add(node.name)
            members, prefix = node.body, f"{node.name}."
        for member in members:
            if isinstance(member, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(prefix + member.name)
            targets = member.targets if isinstance(member, ast.Assign) else (
                [member.target] if isinstance(member, ast.AnnAssign) else [])
            names.update(prefix + t.id for t in targets if isinstance(t, ast.Name))
    return names


def test_every_code_reference_of_the_method_page_exists():
    """docs/METHOD.md ties each formula to `module.py: function`; a rename must update the page."""
    references = CODE_REFERENCE.findall(METHOD.read_text(encoding="utf-8"))
    assert len(references) > 40
    missing = []
    for module, names in references:
        path = ROOT / module
        defined = _defined_names(path) if path.is_file() else set()
        missing += [f"{module}: {name}" for name in names.split(", ") if name not in defined]
    assert missing == []


def test_method_page_anchors_cited_in_the_code_exist():
    headings = anchors(METHOD)
    cited = [(path.relative_to(ROOT), anchor) for path, text in shipped_text_files()
             for anchor in METHOD_ANCHOR.findall(text)]
    assert cited, "the code cites no section of docs/METHOD.md"
    assert [f"{path}: #{anchor}" for path, anchor in cited if anchor not in headings] == []


def test_nothing_refers_to_the_internal_spec():
    """The method is docs/METHOD.md; the spec file it was written from is not part of the repository."""
    offending = [f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
                 for path, text in shipped_text_files()
                 for number, line in enumerate(text.splitlines(), 1) if SPEC_REFERENCE.search(line)]
    assert offending == []

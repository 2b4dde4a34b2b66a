"""The package's import graph: no circles, layers import only downward, and no function-local import without a
reason written beside it (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ramptool"

# lowest first; a module may import its own subpackage and any layer below its own
LAYERS = [
    {"errors", "version"},
    {"threat", "_moved"},
    {"runtime"},
    {"plugins"},
    {"attacks", "models", "data", "loggers"},
    {"checkpoints"},
    {"evaluation"},
    {"training"},
    {"workflows"},
    {"cli"},
    {"api", "__init__", "__main__"},
]
# peers of one layer that may import each other, and why
PEERS = {("models", "attacks")}  # no current use; listed so a new one is a decision, not an accident


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path) -> list[tuple[str, ast.stmt, bool]]:
    """(imported ramptool module, the statement, whether it is inside a function) for each import."""
    tree = ast.parse(path.read_text())
    found = []

    def visit(node, local):
        for child in ast.iter_child_nodes(node):
            inner = local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                found.extend((alias.name, child, inner) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                for alias in child.names:
                    submodule = f"{child.module}.{alias.name}"
                    found.append((submodule if submodule in MODULES else child.module, child, inner))
            visit(child, inner)

    visit(tree, False)
    return found


GRAPH = {name: sorted({target for target, _, _ in imports(path) if target in MODULES and target != name})
         for name, path in MODULES.items()}


def layer_of(module: str) -> tuple[int, str]:
    top = module.split(".")[1] if "." in module else "__init__"
    for index, members in enumerate(LAYERS):
        if top in members:
            return index, top
    raise AssertionError(f"{module}: its subpackage {top!r} is in no layer of LAYERS")


def cycles(graph: dict[str, list[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def connect(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, []):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            connect(node)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == [["a", "b", "c"]]
    assert cycles({"a": ["b"], "b": []}) == []


def test_the_import_graph_has_no_circle():
    assert cycles(GRAPH) == []


def test_layers_import_only_downward():
    upward = []
    for module, targets in GRAPH.items():
        (own, own_top) = layer_of(module)
        for target in targets:
            (theirs, their_top) = layer_of(target)
            if theirs > own or (theirs == own and their_top != own_top and (own_top, their_top) not in PEERS):
                upward.append(f"{module} -> {target}")
    assert upward == []


def _has_reason(lines: list[str], statement: ast.stmt) -> bool:
    """A comment on the import's own line, or on the line above it or above the block of imports it ends."""
    if "#" in lines[statement.end_lineno - 1]:
        return True
    above = statement.lineno - 2
    while above >= 0 and lines[above].strip().startswith(("import ", "from ")):
        above -= 1
    return above >= 0 and lines[above].strip().startswith("#")


@pytest.mark.parametrize("name", sorted(MODULES))
def test_function_local_imports_say_why(name):
    lines = MODULES[name].read_text().splitlines()
    unexplained = sorted({f"line {statement.lineno}: {ast.unparse(statement)}"
                          for _, statement, local in imports(MODULES[name]) if local and not _has_reason(lines,
                                                                                                         statement)})
    assert unexplained == []


def test_the_old_flat_import_paths_still_work_and_warn():
    import importlib
    import sys

    import ramptool.training.combiners

    for old in ("ramptool.combiners", "ramptool.checkpoint"):
        sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match="ramptool.combiners is now ramptool.training.combiners"):
        old_combiners = importlib.import_module("ramptool.combiners")
    assert old_combiners is ramptool.training.combiners  # patching the old path patches what runs
    with pytest.warns(DeprecationWarning, match="ramptool.checkpoint is now ramptool.checkpoints.format and"):
        checkpoint = importlib.import_module("ramptool.checkpoint")  # split in four: each name found in its home
    with pytest.warns(DeprecationWarning, match="ramptool.checkpoints.loading.load_checkpoint"):
        from ramptool.checkpoints.loading import load_checkpoint

        assert checkpoint.load_checkpoint is load_checkpoint
    with pytest.warns(DeprecationWarning, match="ramptool.data.batch_seed is now ramptool.data.batches.batch_seed"):
        from ramptool.data import batch_seed  # noqa: F401
    with pytest.raises(AttributeError):
        checkpoint.no_such_name  # noqa: B018


def test_nothing_inside_ramptool_uses_an_old_path():
    from ramptool._moved import MOVED

    old_paths = [f"{name} -> {target}" for name, targets in GRAPH.items() for target in targets if target in MOVED]
    assert old_paths == [] and not set(MOVED) & set(MODULES)

"""TOML recipes: the shipped ones (``ramptool recipes``) and the keys a recipe may set (every TrainConfig knob
that declares ``recipe=True``, by its field name or its flag's name).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tomllib

from ramptool.errors import RamptoolError
from ramptool.training.config import FIELDS, flag_of, knob_of

RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes"


def shipped_recipes() -> dict[str, Path]:
    """Recipes that ship inside the package, by name (file stem)."""
    return {path.stem: path for path in sorted(RECIPES_DIR.glob("*.toml"))}


def find_recipe(given: str | Path) -> Path:
    """A recipe file, or the name of a shipped one (``ramptool recipes`` lists them)."""
    path = Path(given).expanduser()
    if path.is_file():
        return path
    shipped = shipped_recipes()
    if str(given) in shipped:
        return shipped[str(given)]
    names = ", ".join(shipped) or "none"
    raise RamptoolError(f"recipe not found: {given} (neither a file nor a shipped recipe; shipped: {names})")


META_KEYS = ("command", "description")


def recipe_keys() -> dict[str, str]:
    """Recipe key (normalised to underscores) -> field name: the field's own name and its flag's name."""
    keys = {}
    for name in FIELDS:
        spec = knob_of(name)
        if spec.recipe:
            keys[name] = name
            keys[flag_of(name).lstrip("-").replace("-", "_")] = name
    return keys


def read_recipe(given: str | Path) -> tuple[Path, dict[str, tuple[str, Any]]]:
    """(the recipe's path, {field name: (key as written, value)}), keys checked, values not yet converted."""
    path = find_recipe(given)
    try:
        with open(path, "rb") as handle:
            recipe = tomllib.load(handle)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise RamptoolError(f"recipe {path} is not valid TOML: {error}") from None
    except OSError as error:
        raise RamptoolError(f"recipe {path} cannot be read: {error.strerror or error}") from None
    keys, entries = recipe_keys(), {}
    for key, value in recipe.items():
        if key in META_KEYS:
            continue
        name = keys.get(key.replace("-", "_"))
        if name is None:
            raise RamptoolError(f"recipe {path}: unknown key {key!r}")
        if name in entries:
            raise RamptoolError(f"recipe {path}: {entries[name][0]!r} and {key!r} set the same thing")
        entries[name] = (key, value)
    return path, entries


def recipe_description(path: Path) -> str:
    try:
        with open(path, "rb") as handle:
            return str(tomllib.load(handle).get("description", ""))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return "(unreadable)"

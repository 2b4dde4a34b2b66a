"""Recipes (TOML) merged under explicit CLI flags, turned into a validated ``TrainConfig``."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import tomllib

from ramptool.errors import RamptoolError
from ramptool.threat import parse_eps, parse_norms
from ramptool.trainer import TrainConfig

# recipe keys that are not TrainConfig fields, or spelled differently
_ALIASES = {"lambda": "lam", "ckpt": "init"}
_META_KEYS = {"command", "description"}
# TrainConfig fields holding a component's options (checked against the component when the run starts)
OPTION_FIELDS = ("arch_options", "attack_options", "pairing_options", "combiner_options", "method_options")


def load_recipe(path: str | Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise RamptoolError(f"recipe not found: {path}")
    try:
        recipe = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise RamptoolError(f"recipe {path} is not valid TOML: {error}") from None
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    normalized = {}
    for key, value in recipe.items():
        name = _ALIASES.get(key.replace("-", "_"), key.replace("-", "_"))
        if key in _META_KEYS:
            continue
        if name not in fields:
            raise RamptoolError(f"recipe {path}: unknown key {key!r}")
        normalized[name] = value
    return normalized


def build_train_config(cli: dict[str, Any], recipe: dict[str, Any]) -> TrainConfig:
    """CLI values that are not None win over the recipe, which wins over TrainConfig's defaults."""
    merged: dict[str, Any] = dict(recipe)
    for key, value in cli.items():
        if value is None:
            continue
        # component options merge key by key: a flag changes one option and keeps the recipe's others
        if key in OPTION_FIELDS and isinstance(merged.get(key), dict):
            value = {**merged[key], **value}
        merged[key] = value
    if "out" not in merged:
        raise RamptoolError("--out DIR is required (the run folder; it is never wiped)")
    from ramptool.attacks import known_norms

    norms_known = known_norms()
    dataset = merged.get("dataset", TrainConfig.dataset)
    for key in ("norms", "pair"):
        if isinstance(merged.get(key), str) and merged[key] != "auto":
            merged[key] = parse_norms(merged[key], norms_known)
        elif isinstance(merged.get(key), list):
            merged[key] = parse_norms(",".join(merged[key]), norms_known)
    if merged.get("pair") is not None and merged["pair"] != "auto" and len(merged["pair"]) != 2:
        raise RamptoolError(f"--pair takes two norms (q,r), got {','.join(merged['pair'])}")
    merged["eps"] = parse_eps(merged.get("eps"), dataset, norms_known)
    for key in ("epochs", "batch_size", "attack_steps"):
        if key in merged and int(merged[key]) <= 0:
            raise RamptoolError(f"--{key.replace('_', '-')} must be positive, got {merged[key]}")
    for key in ("lr", "lam", "weight_decay"):
        if key in merged and float(merged[key]) < 0:
            raise RamptoolError(f"--{key.replace('_', '-').replace('lam', 'lambda')} must be >= 0")
    return TrainConfig(**merged)

"""examples/: each example runs as a user runs it (a subprocess, from a folder outside the checkout) and keeps to
the public API, so that it stays a faithful, working illustration while ramptool's insides change."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import tomllib
import torch

import ramptool
from ramptool.checkpoints import read_metadata
from ramptool.threat import DEFAULT_EPS, parse_eps

ROOT = Path(__file__).resolve().parents[1]
RAMP_MINIMAL = ROOT / "examples" / "ramp_minimal.py"
START = ROOT / "ramptool" / "recipes" / "checkpoints" / "fmnist-linf-at.safetensors"
RECIPE = ROOT / "ramptool" / "recipes" / "fmnist-ramp-finetune.toml"
PUBLIC_MODULES = {"ramptool", "ramptool.api", "ramptool.attacks", "ramptool.data", "ramptool.checkpoints",
                  "ramptool.evaluation.union", "ramptool.plugins", "ramptool.threat"}


def test_ramp_minimal_trains_evaluates_and_saves(tmp_path):
    out = tmp_path / "ramp.safetensors"
    # 256 points: two optimizer steps, the second already past the schedule's first drop
    command = [sys.executable, str(RAMP_MINIMAL), "--subset", "256", "--eval-n", "8", "--steps", "3",
               "--eval-steps", "3", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "accuracy on 8 test points: clean " in done.stdout and " union " in done.stdout, done.stdout
    assert "epoch 1 step    2/2" in done.stdout, done.stdout

    tuned, start = ramptool.load_model(out), ramptool.load_model(START)
    tuned_weights, start_weights = tuned.state_dict(), start.state_dict()
    assert tuned_weights.keys() == start_weights.keys()
    assert any(not torch.equal(tuned_weights[k], start_weights[k]) for k in start_weights)
    metadata = read_metadata(out)
    assert metadata["method"] == "ramp" and metadata["trained_norms"] == ["linf", "l1"]
    assert metadata["arch"] == read_metadata(START)["arch"]


def _ramptool_imports(tree: ast.Module) -> list[tuple[str, list[str]]]:
    """(module, imported names) of every ramptool import in the tree."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names if alias.name.split(".")[0] == "ramptool"]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "ramptool":
            found.append((node.module, [alias.name for alias in node.names]))
    return found


def test_ramp_minimal_imports_only_the_public_api():
    imports = _ramptool_imports(ast.parse(RAMP_MINIMAL.read_text()))
    assert imports, "the example imports nothing from ramptool"
    for module, names in imports:
        assert module in PUBLIC_MODULES, f"examples/ramp_minimal.py imports from {module}"
        assert not any(part.startswith("_") for part in module.split(".")), module
        private = [name for name in names if name.startswith("_")]
        assert not private, f"examples/ramp_minimal.py imports {private} from {module}"


def test_ramp_minimal_uses_the_recipe_settings():
    """Its constants are the fine-tuning recipe's: the example and `ramptool finetune --config` must not drift."""
    recipe = tomllib.loads(RECIPE.read_text())
    constants = {}
    for node in ast.parse(RAMP_MINIMAL.read_text()).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Tuple | ast.Name):
            targets = node.targets[0].elts if isinstance(node.targets[0], ast.Tuple) else [node.targets[0]]
            values = node.value.elts if isinstance(node.value, ast.Tuple) else [node.value]
            for target, value in zip(targets, values):
                if isinstance(target, ast.Name) and isinstance(value, ast.Constant):
                    constants[target.id] = value.value
    assert constants["LAMBDA"] == recipe["lambda"]
    assert constants["LR"] == recipe["lr"]
    assert constants["BATCH_SIZE"] == recipe["batch-size"]
    assert (constants["Q"], constants["R"]) == tuple(recipe["pair"].split(","))
    assert recipe["optimizer"] == "adam" and recipe["schedule"] == "piecewise-ft" and recipe["pairing"] == "kl"
    assert parse_eps(recipe["eps"]) == DEFAULT_EPS[recipe["dataset"]]
    assert recipe["weight-decay"] == 0.0 and recipe["attack-steps"] == 10 and recipe["epochs"] == 1

"""Installing ramptool into a researcher's own environment: a wheel and an sdist build, and `pip install` of the
checkout keeps a torch of the declared range that is already there (here torch 2.13.0, the CPU build on this
machine's disk) and works without the `vision` extra."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

CHECKOUT = Path(__file__).resolve().parents[1]
SHIPPED = CHECKOUT / "ramptool" / "recipes" / "checkpoints" / "fmnist-linf-at.safetensors"
OTHER_TORCH = "torch==2.13.0"  # a point of the declared range other than the pinned 2.14.1


def run(*args, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=1200, **kwargs)
    assert done.returncode == 0, f"{' '.join(map(str, args))}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.mark.slow
def test_wheel_and_sdist_build_and_the_wheel_installs_beside_another_torch(tmp_path):
    run(sys.executable, "-m", "build", "--no-isolation", "--wheel", "--sdist", "--outdir", tmp_path / "dist",
        CHECKOUT)
    (wheel,) = (tmp_path / "dist").glob("ramptool-*.whl")
    assert len(list((tmp_path / "dist").glob("ramptool-*.tar.gz"))) == 1
    with zipfile.ZipFile(wheel) as packaged:
        names = set(packaged.namelist())
    assert "ramptool/recipes/checkpoints/fmnist-linf-at.safetensors" in names
    assert "ramptool/recipes/fmnist-ramp-finetune.toml" in names

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv)
    python, ramptool = venv / "bin" / "python", venv / "bin" / "ramptool"
    run(python, "-m", "pip", "install", "--quiet", OTHER_TORCH)
    before = run(python, "-c", "import torch; print(torch.__version__)").stdout.strip()
    run(python, "-m", "pip", "install", "--quiet", wheel)
    after = run(python, "-c", "import torch; print(torch.__version__)").stdout.strip()
    assert after == before and after.startswith("2.13.0"), "installing ramptool replaced the environment's torch"

    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAMPTOOL_DATA": str(tmp_path / "data")}
    assert run(ramptool, "--version", env=env).stdout.strip() == "ramptool 0.1.0"
    assert "fmnist-ramp-finetune" in run(ramptool, "recipes", env=env).stdout
    evaluated = run(ramptool, "eval", "union", "--ckpt", SHIPPED, "--n-examples", "8", "--attack", "apgd-ce",
                    "--steps", "3", "--out", tmp_path / "eval", "--device", "cpu", env=env, cwd=tmp_path)
    assert "union" in evaluated.stdout and (tmp_path / "eval" / "report.json").is_file()

"""Shared fixtures. Tests are seeded; slow end-to-end tests carry @pytest.mark.slow (skipped by make test-fast)."""

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# one data cache for the whole run (Fashion-MNIST is prepared there from Debian's package)
os.environ.setdefault("RAMPTOOL_DATA", str(Path(__file__).resolve().parents[1] / ".venv" / "ramptool-data"))

FMNIST_EPS = {"linf": 0.1, "l2": 1.5, "l1": 10.0}


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a test module: when other processes share the two cores, OpenMP threads spin-wait
    on each other and small batches ran ~20x slower than on one thread (measured: 2.8 s vs 0.15 s for a 5-step
    attack on 32 points)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


CHECKOUT = Path(__file__).resolve().parents[1]


def _checkout_outputs() -> set[str]:
    """What lies in the checkout's own output folders (runs/, the default of every --out), links not followed."""
    runs = CHECKOUT / "runs"
    return {str(path.relative_to(CHECKOUT)) for path in runs.rglob("*")} if runs.is_dir() else set()


@pytest.fixture(autouse=True, scope="session")
def _the_checkout_stays_untouched():
    """Tests write into tmp_path only: a user's own runs/ (after `ramptool eval union` as the README shows it)
    must neither change a test's outcome nor be changed by one."""
    before = _checkout_outputs()
    yield
    assert _checkout_outputs() == before, "a test wrote into the checkout's runs/"


@pytest.fixture(scope="session")
def fmnist_test():
    """The first 256 Fashion-MNIST test points as [0,1] tensors."""
    from ramptool.data.datasets import load_split

    return load_split("fashion-mnist", "test", subset=256).tensors()


@pytest.fixture(scope="session")
def clean_model_dir(tmp_path_factory):
    """A small CNN trained clean for one epoch on 6000 Fashion-MNIST points (~10 s), as a ramptool run folder."""
    from ramptool.training.config import TrainConfig
    from ramptool.training.trainer import train

    out = tmp_path_factory.mktemp("clean_model")
    train(TrainConfig(out=str(out), dataset="fashion-mnist", subset=6000, method="clean", optimizer="adam",
                      lr=1e-3, weight_decay=5e-4, schedule="constant", epochs=1, eps=dict(FMNIST_EPS),
                      progress=False, overwrite=True, device="cpu"))
    return out


@pytest.fixture(scope="session")
def clean_model(clean_model_dir):
    from ramptool.checkpoints.loading import load_model

    return load_model(clean_model_dir)


@pytest.fixture
def ramptool_cli(capsys):
    """Run the ramptool command line in this process: ``ramptool_cli(args) -> (exit code, stdout, stderr)``."""
    from ramptool.cli import main

    def run(args):
        with pytest.raises(SystemExit) as exit_info:
            main(args)
        captured = capsys.readouterr()
        return exit_info.value.code, captured.out, captured.err

    return run

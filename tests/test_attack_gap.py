"""The training-attack check (issue 28): each epoch, the run's own training attack against an AutoAttack-grade one
on held-out points; a gap is warned about, recorded in the checkpoint, and shown by `ramptool info`."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ramptool.checkpoints.format import read_metadata
from ramptool.data.datasets import held_out_split, load_split
from ramptool.training import attack_gap

SHIPPED_LINF_AT = Path(__file__).resolve().parents[1] / "recipes" / "checkpoints" / "fmnist-linf-at.safetensors"
FINETUNE = ["finetune", "--ckpt", str(SHIPPED_LINF_AT), "--method", "at", "--subset", "512", "--check-n", "60",
            "--optimizer", "adam", "--lr", "5e-4", "--device", "cpu", "--no-progress"]


def test_the_default_check_is_a_share_of_the_trained_points_and_none_on_small_runs():
    assert attack_gap.check_size(None, 60_000) == 240
    assert attack_gap.check_size(None, 1_000_000) == attack_gap.CHECK_MAX_POINTS
    assert attack_gap.check_size(None, 24_999) == 0  # 99 points: too few to rest a 10-point gap on
    assert attack_gap.check_size(40, 500) == 40 and attack_gap.check_size(0, 60_000) == 0  # asked for: as asked


def test_held_out_points_are_training_points_the_run_leaves_out_else_the_last_test_points():
    held, where = held_out_split("fashion-mnist", None, 50_000, 100)
    assert where == "training points 59900-59999, held out"
    train = load_split("fashion-mnist", "train")
    assert torch.equal(held.tensors()[0], train.tensors(torch.arange(59_900, 60_000))[0])
    for trained in (None, 59_950):  # no training point is left out: the last test points
        held, where = held_out_split("fashion-mnist", None, trained, 100)
        assert where == "test points 9900-9999"
        assert torch.equal(held.tensors()[1], load_split("fashion-mnist", "test").tensors()[1][-100:])


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_a_one_step_l1_training_attack_is_flagged_in_the_epoch_line_the_checkpoint_and_info(ramptool_cli, tmp_path):
    code, out, err = ramptool_cli([*FINETUNE, "--norms", "l1", "--attack-steps", "1", "--out", str(tmp_path)])
    assert code in (0, None), err
    warning = [line for line in err.splitlines() if line.startswith("warning: epoch 1: l1 accuracy")]
    assert len(warning) == 1 and "--attack-steps" in warning[0] and "AutoAttack-grade" in warning[0]
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["check_gap_l1"] > 0.10 and record["check_points"] == "60 training points 59940-59999, held out"
    assert record["check_gap_l1"] == pytest.approx(record["check_train_attack_l1"] - record["check_strong_l1"],
                                                   abs=1e-4)
    assert "check l1 " in out
    flagged = read_metadata(tmp_path / "model.safetensors")["flagged_gaps"]
    assert [(entry["epoch"], entry["norm"]) for entry in flagged] == [(1, "l1")]
    code, out, _ = ramptool_cli(["info", str(tmp_path)])
    assert code in (0, None)
    assert "training-attack check: epoch 1, l1:" in out and "overstate" in out


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_a_ten_step_linf_attack_on_an_linf_model_has_no_gap_and_no_warning(ramptool_cli, tmp_path):
    code, out, err = ramptool_cli([*FINETUNE, "--norms", "linf", "--attack-steps", "10", "--out", str(tmp_path)])
    assert code in (0, None), err
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert abs(record["check_gap_linf"]) <= 0.10 and "warning: epoch" not in err
    assert read_metadata(tmp_path / "model.safetensors")["flagged_gaps"] == []


MEASURE = """
import json, sys
import torch
from ramptool.checkpoints.loading import load_checkpoint
from ramptool.data.datasets import held_out_split, load_split
from ramptool.plugins.registry import get
from ramptool.runtime import distributed
from ramptool.training import attack_gap
from ramptool.training.methods import MethodContext
distributed.setup(torch.device("cpu"))
model, _ = load_checkpoint(sys.argv[1])
x, y = held_out_split("fashion-mnist", None, 50_000, 40)[0].tensors()
eps = {"linf": 0.2, "l1": 10.0}
method = get("method", "ramp")(MethodContext(norms=["linf", "l1"], eps=eps, pair=("linf", "l1"), attack_steps=3))
record = attack_gap.measure(method, model, x, y, ["linf", "l1"], eps)
if distributed.is_main():
    print(json.dumps(record))
distributed.shutdown()
"""


@pytest.mark.slow
def test_two_processes_share_the_check_and_report_one_processs_numbers(tmp_path):
    script = tmp_path / "measure.py"
    script.write_text(MEASURE)
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    alone = subprocess.run([sys.executable, str(script), str(SHIPPED_LINF_AT)], capture_output=True, text=True,
                           env=env, timeout=600)
    together = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                               str(script), str(SHIPPED_LINF_AT)], capture_output=True, text=True, env=env,
                              timeout=600)
    assert alone.returncode == 0 and together.returncode == 0, (alone.stderr + together.stderr)[-3000:]
    one, two = json.loads(alone.stdout.splitlines()[-1]), json.loads(together.stdout.splitlines()[-1])
    assert one == two and set(one) == {f"check_{kind}_{norm}" for kind in ("train_attack", "strong", "gap")
                                       for norm in ("linf", "l1")}

"""torchrun: N processes reproduce one (training, evaluation), resume with another N, a dead rank, and the data
pipeline that feeds them (issue 11). The multi-process tests launch 2 gloo processes on the CPU."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ramptool.checkpoints.format import read_metadata, read_weights
from ramptool.cli import main
from ramptool.data.batches import EpochBatches, batch_loader
from ramptool.data.datasets import dataset_spec, load_split
from ramptool.data.spec import TensorSplit
from ramptool.errors import RamptoolError
from ramptool.runtime import distributed
from ramptool.training.config import TrainConfig
from ramptool.training.trainer import train

SHIPPED_LINF_AT = Path(__file__).resolve().parents[1] / "recipes" / "checkpoints" / "fmnist-linf-at.safetensors"
COMMON = ["--pair", "linf,l1", "--batch-size", "64", "--attack-steps", "2", "--device", "cpu", "--no-progress"]
# fine-tuning the shipped l∞-AT model with SGD: Adam's first steps turn float noise in near-zero gradients into
# lr-sized steps, and E-AT's norm draws and sign-based attacks then amplify it; SGD keeps rounding at rounding
FINETUNE = ["finetune", "--ckpt", str(SHIPPED_LINF_AT), "--optimizer", "sgd", *COMMON]


def torchrun(args, processes=2) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                             str(processes), "-m", "ramptool", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def run_here(args) -> None:
    """The same command in this (single) process."""
    with pytest.raises(SystemExit) as done:
        main(args)
    assert done.value.code in (0, None)


def finish(process: subprocess.Popen, timeout=300) -> tuple[str, str]:
    stdout, stderr = process.communicate(timeout=timeout)
    assert process.returncode == 0, stderr[-3000:]
    return stdout, stderr


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_same_weights(a: Path, b: Path, atol=1e-5) -> None:
    first, second = read_weights(a), read_weights(b)
    assert first.keys() == second.keys()
    worst = max((first[k].double() - second[k].double()).abs().max().item() for k in first)
    assert worst <= atol, f"weights differ by up to {worst:g}"


def assert_same_metrics(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for one, two in zip(a, b):
        assert one.keys() == two.keys() and one["epoch"] == two["epoch"]
        _assert_same_values(one, two, "")


def _assert_same_values(one: dict, two: dict, where: str) -> None:
    for key in one:
        if key in ("seconds", "img_per_s"):
            continue
        if isinstance(one[key], dict):  # GP's angles, per tensor
            assert one[key].keys() == two[key].keys(), where + key
            _assert_same_values(one[key], two[key], f"{where}{key}/")
        else:
            # an angle between two updates in degrees: gradients summed over ranks in another order move it by
            # thousandths of a degree (measured: 27.723 against 27.718)
            tolerance = 0.02 if where.startswith("gp") else 5e-5
            assert one[key] == pytest.approx(two[key], abs=tolerance), where + key


# ---------------------------------------------------------------------------------------------- data pipeline

@pytest.fixture
def numbered():
    """37 random 3x8x8 images whose labels are their indices."""
    images = torch.randint(0, 256, (37, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return TensorSplit(images, torch.arange(37), num_classes=37)


def test_rank_slices_of_every_global_batch_put_together_are_the_single_process_batch(numbered):
    single = EpochBatches(numbered, 8, seed=3, epoch=2, augment="crop-flip")
    for world in (2, 3):
        ranks = [EpochBatches(numbered, 8, seed=3, epoch=2, augment="crop-flip", rank=r, world_size=world)
                 for r in range(world)]
        for step in range(len(single)):
            x, y = single[step]
            parts = [batches[step] for batches in ranks]
            assert [len(part[1]) for part in parts] == [len(y) * (r + 1) // world - len(y) * r // world
                                                        for r in range(world)]
            assert torch.equal(torch.cat([part[0] for part in parts]), x)
            assert torch.equal(torch.cat([part[1] for part in parts]), y)
    assert single[0][0].dtype == torch.uint8  # batches travel as bytes; to_unit_float on the device


def test_worker_processes_and_a_restart_give_the_same_batches(numbered):
    def collect(**options):
        return [(x, y) for x, y in batch_loader(numbered, 8, seed=1, epoch=5, augment="crop-flip", rank=1,
                                                world_size=2, **options)]

    alone, workers, tail = collect(), collect(workers=2), collect(start=2)
    assert len(alone) == 5 and len(tail) == 3
    for (x_a, y_a), (x_w, y_w) in zip(alone, workers, strict=True):
        assert torch.equal(x_a, x_w) and torch.equal(y_a, y_w)
    for (x_a, y_a), (x_t, y_t) in zip(alone[2:], tail, strict=True):
        assert torch.equal(x_a, x_t) and torch.equal(y_a, y_t)
    with pytest.raises(RamptoolError, match="--workers"):
        batch_loader(numbered, 8, workers=-1)


@pytest.fixture
def jpeg_tree(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name in ("a", "b"):
            (tmp_path / split / name).mkdir(parents=True)
            for index in range(3):
                pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / split / name / f"{index}.jpg")
    return tmp_path


def test_image_folder_takes_its_size_and_its_random_crops_do_not_depend_on_worker_or_rank(jpeg_tree):
    train_split = load_split("imagefolder", "train", data_dir=jpeg_tree, download=False, image_size=24)
    single = [batch for batch in batch_loader(train_split, 4, seed=2, epoch=1)]
    split_ranks = [[batch for batch in batch_loader(train_split, 4, seed=2, epoch=1, rank=r, world_size=2,
                                                    workers=1)] for r in range(2)]
    for step, (x, y) in enumerate(single):
        assert x.shape[1:] == (3, 24, 24) and x.dtype == torch.uint8
        assert torch.equal(torch.cat([split_ranks[0][step][0], split_ranks[1][step][0]]), x)
        assert torch.equal(torch.cat([split_ranks[0][step][1], split_ranks[1][step][1]]), y)
    other_epoch = next(iter(batch_loader(train_split, 4, seed=2, epoch=2)))[0]
    assert not torch.equal(other_epoch, single[0][0])

    x, y = load_split("imagefolder", "test", data_dir=jpeg_tree, download=False, image_size=32).tensors()
    assert x.shape == (6, 3, 32, 32) and torch.equal(y, torch.tensor([0, 0, 0, 1, 1, 1]))
    assert dataset_spec("imagefolder", 32).input_shape == (3, 32, 32)
    with pytest.raises(RamptoolError, match="image folders"):
        dataset_spec("fashion-mnist", 32)


def test_a_folder_split_of_float_images_as_plugins_write_them_still_loads():
    from ramptool.data.batches import to_unit_float
    from ramptool.data.spec import FolderSplit

    images = torch.rand(5, 3, 4, 4)
    split = FolderSplit(torch.utils.data.TensorDataset(images, torch.arange(5)), num_classes=5)
    x, y = split.tensors()
    assert torch.equal(x, images) and torch.equal(y, torch.arange(5))
    batches = [(to_unit_float(x), y) for x, y in batch_loader(split, 2, shuffle=False)]
    assert torch.equal(torch.cat([x for x, _ in batches]), images)


def test_an_image_is_corrupted_the_same_whichever_share_of_the_points_it_is_in():
    from ramptool.evaluation.corruptions import corrupt_images

    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28, 1), dtype=np.uint8)
    for corruption in ("gaussian_noise", "impulse_noise"):
        whole = corrupt_images(images, corruption, 3, seed=1)
        shares = [corrupt_images(images[:2], corruption, 3, seed=1),
                  corrupt_images(images[2:], corruption, 3, seed=1, first_index=2)]
        assert np.array_equal(np.concatenate(shares), whole), corruption
        # its noise comes from its index: the same image at another index is corrupted differently
        assert not np.array_equal(whole[0], corrupt_images(images[:1], corruption, 3, seed=1, first_index=4)[0])


def test_one_process_sees_the_distributed_helpers_as_the_identity():
    value = torch.tensor(0.25)
    assert distributed.global_mean(value, 7) is value and distributed.agree(5) == 5
    assert distributed.map_points(lambda a, b: a + b, torch.ones(3), torch.ones(3)).tolist() == [2.0] * 3
    assert [distributed.rank_slice(10, r, 3) for r in range(3)] == [slice(0, 3), slice(3, 6), slice(6, 10)]
    model = torch.nn.Linear(2, 2)
    assert distributed.data_parallel(model) is model and distributed.unwrap(model) is model


def test_too_small_a_last_batch_for_the_processes_is_a_clear_error(tmp_path, monkeypatch):
    from ramptool.training.trainer import _check_every_rank_gets_points

    _check_every_rank_gets_points(130, 64, 2)
    with pytest.raises(RamptoolError, match="at least 2 points in every global batch"):
        _check_every_rank_gets_points(129, 64, 2)


def test_tensorboard_logs_every_metrics_scalar(tmp_path, one_thread):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(TrainConfig(out=str(tmp_path / "run"), subset=128, batch_size=64, method="clean", optimizer="adam",
                      lr=1e-3, epochs=2, eval_n=16, eval_steps=3, eps={"linf": 0.1, "l2": 1.5, "l1": 10.0},
                      progress=False, device="cpu", tensorboard=str(tmp_path / "tb")))
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    records = metrics(tmp_path / "run")
    assert set(events.Tags()["scalars"]) == {"lr", "seconds", "img_per_s", "acc_clean", "loss", "eval/clean",
                                             "eval/linf", "eval/l2", "eval/l1", "eval/union"}
    for tag in ("loss", "eval/union"):
        logged = [(event.step, event.value) for event in events.Scalars(tag)]
        key, sub = (tag.split("/") + [None])[:2]
        expected = [(r["epoch"], r[key] if sub is None else r[key][sub]) for r in records]
        assert [step for step, _ in logged] == [1, 2]
        assert [value for _, value in logged] == pytest.approx([value for _, value in expected])


# ---------------------------------------------------------------------------------------------- 2 processes

@pytest.mark.slow
def test_two_processes_train_ramp_with_gradient_projection_like_one(tmp_path, one_thread):
    # 237 points: the last global batch (45) splits 23/22, so equal per-rank means would be wrong. Averaging the
    # pairing loss over each rank's kept points instead of all of them moves these weights by ~1e-4.
    args = [*FINETUNE, "--method", "ramp", "--combiner", "gp", "--lr", "0.05", "--subset", "237", "--epochs", "2"]
    launched = torchrun([*args, "--out", str(tmp_path / "two")])
    run_here([*args, "--out", str(tmp_path / "one")])
    finish(launched)
    two, one = metrics(tmp_path / "two"), metrics(tmp_path / "one")
    assert [r["epoch"] for r in two] == [1, 2] and all(r["loss_pair"] > 0 for r in two)
    metadata = read_metadata(tmp_path / "two")
    assert metadata["epoch"] == 2 and metadata["finished"] and (tmp_path / "two" / "state.pt").is_file()
    assert_same_metrics(two, one)
    assert_same_weights(tmp_path / "two", tmp_path / "one")


@pytest.mark.slow
def test_two_processes_log_the_steps_one_process_logs_from_rank_0_only(tmp_path, one_thread):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    args = [*FINETUNE, "--method", "ramp", "--subset", "160", "--epochs", "1", "--log-every", "1"]
    launched = torchrun([*args, "--out", str(tmp_path / "two"), "--tensorboard", str(tmp_path / "tb-two")])
    run_here([*args, "--out", str(tmp_path / "one"), "--tensorboard", str(tmp_path / "tb-one")])
    finish(launched)
    assert len(list((tmp_path / "tb-two").glob("events.out.tfevents.*"))) == 1  # one writer: rank 0
    logged = {}
    for name in ("two", "one"):
        events = EventAccumulator(str(tmp_path / f"tb-{name}"))
        events.Reload()
        logged[name] = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
                        if tag.startswith("step/") and tag != "step/img_per_s"}
    assert set(logged["two"]) == set(logged["one"]) >= {"step/loss", "step/acc_linf", "step/loss_pair", "step/lr"}
    for tag, values in logged["one"].items():
        assert [step for step, _ in logged["two"][tag]] == [step for step, _ in values] == [1, 2, 3]
        assert [value for _, value in logged["two"][tag]] == pytest.approx([value for _, value in values], abs=5e-5)


@pytest.mark.slow
def test_two_processes_with_sync_bn_train_a_batchnorm_model_like_one(tmp_path, one_thread):
    # without --sync-bn each rank normalises by its own half batch: the weights then differ by ~5e-3
    args = ["train", "--method", "ramp", "--arch", "small-cnn-bn", "--sync-bn", "--subset", "128", "--epochs", "1",
            "--optimizer", "sgd", "--lr", "0.01", *COMMON]
    launched = torchrun([*args, "--out", str(tmp_path / "two")])
    run_here([*args, "--out", str(tmp_path / "one")])
    finish(launched)
    assert_same_metrics(metrics(tmp_path / "two"), metrics(tmp_path / "one"))
    assert_same_weights(tmp_path / "two", tmp_path / "one")  # BatchNorm running statistics included


def _worker_of_rank(torchrun_pid: int, rank: int) -> int:
    for child in Path(f"/proc/{torchrun_pid}/task/{torchrun_pid}/children").read_text().split():
        if f"RANK={rank}".encode() in Path(f"/proc/{child}/environ").read_bytes().split(b"\0"):
            return int(child)
    raise AssertionError(f"no worker with RANK={rank} under torchrun")


EAT_RUN = [*FINETUNE, "--method", "e-at", "--lr", "0.01", "--subset", "512", "--epochs", "3"]


def _two_process_run_past_its_first_epoch(tmp_path):
    """(the run folder, its arguments, the torchrun process) of a 3-epoch E-AT fine-tune, once epoch 1 is done."""
    run = tmp_path / "eat"
    launched = torchrun([*EAT_RUN, "--out", str(run)])
    deadline = time.time() + 300
    while not ((run / "metrics.jsonl").is_file() and (run / "metrics.jsonl").read_text().strip()):
        assert launched.poll() is None and time.time() < deadline, launched.communicate()
        time.sleep(0.02)
    return run, EAT_RUN, launched


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds torchrun's workers through /proc")
def test_a_dead_rank_stops_the_other_with_one_line_and_one_process_resumes_the_run(tmp_path, one_thread):
    run, args, launched = _two_process_run_past_its_first_epoch(tmp_path)
    os.kill(_worker_of_rank(launched.pid, 1), signal.SIGKILL)  # in the second epoch (an epoch takes seconds)
    _, stderr = launched.communicate(timeout=120)
    assert launched.returncode != 0
    ours = [line for line in stderr.splitlines() if line.startswith("error: rank 0:")]
    assert len(ours) == 1 and f"the last checkpoint in {run} is intact" in ours[0], stderr[-3000:]
    assert "[rank0]" not in stderr  # no traceback from the survivor
    assert read_metadata(run)["epoch"] == 1 and len(metrics(run)) == 1

    run_here(["train", "--resume", "--out", str(run), "--no-progress"])  # one process continues the 2-process run
    run_here([*args, "--out", str(tmp_path / "one")])
    assert [r["epoch"] for r in metrics(run)] == [1, 2, 3]
    assert_same_metrics(metrics(run), metrics(tmp_path / "one"))
    assert_same_weights(run, tmp_path / "one")


@pytest.mark.slow
def test_sigterm_under_torchrun_saves_one_checkpoint_that_one_process_resumes(tmp_path, one_thread):
    run, args, launched = _two_process_run_past_its_first_epoch(tmp_path)
    time.sleep(0.5)  # into the second epoch
    launched.send_signal(signal.SIGTERM)  # a scheduler's preemption: torchrun passes it on to every worker
    _, stderr = launched.communicate(timeout=120)
    ours = [line for line in stderr.splitlines() if line.startswith("error: rank ")]
    assert ours and all("stopped by SIGTERM" in line and "--resume" in line for line in ours), stderr[-3000:]
    saved = read_metadata(run)
    assert saved["epoch"] >= 1 and not saved["finished"] and (run / "state.pt").is_file()

    run_here(["train", "--resume", "--out", str(run), "--no-progress"])
    run_here([*args, "--out", str(tmp_path / "one")])
    assert [r["epoch"] for r in metrics(run)] == [1, 2, 3]
    assert_same_metrics(metrics(run), metrics(tmp_path / "one"))
    assert_same_weights(run, tmp_path / "one")


@pytest.mark.slow
def test_two_process_evaluation_writes_the_report_one_process_writes(tmp_path, one_thread):
    from safetensors.torch import load_file

    # 41 points: shards of 21 and 20, each attacked in several batches
    args = ["eval", "union", "--ckpt", str(SHIPPED_LINF_AT), "--attack", "apgd", "--steps", "10", "--n-examples",
            "41", "--batch-size", "16", "--device", "cpu"]
    launched = torchrun([*args, "--out", str(tmp_path / "two")])
    run_here([*args, "--out", str(tmp_path / "one")])
    stdout, _ = finish(launched)
    assert stdout.count("robust accuracy") == 1  # rank 0 alone prints
    two, one = (load_file(tmp_path / run / "fmnist-linf-at" / "flags.safetensors") for run in ("two", "one"))
    assert two.keys() == one.keys() == {"clean", "linf", "l2", "l1"}
    assert all(torch.equal(two[k], one[k]) for k in one)
    assert 0 < int(one["l1"].sum()) < int(one["clean"].sum())  # flags that could differ
    reports = [json.loads((tmp_path / run / "report.json").read_text())["models"]["fmnist-linf-at"]
               for run in ("two", "one")]
    for report in reports:  # everything but the clock and the date
        report.pop("seconds"), report.pop("provenance")
        for run in report["runs"]:
            run.pop("seconds")
    assert reports[0] == reports[1]
    assert (tmp_path / "two" / "report.md").read_text() == (tmp_path / "one" / "report.md").read_text()

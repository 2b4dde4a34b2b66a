"""Training methods, pairing losses, combiners, E-AT sampling, resume and divergence handling (issue 5)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ramptool.checkpoints.format import read_metadata, read_weights
from ramptool.checkpoints.loading import load_checkpoint
from ramptool.errors import RamptoolError, TrainingDiverged
from ramptool.training.combiners import EpochGradientProjection, combine, project_gradient
from ramptool.training.config import TrainConfig
from ramptool.training.methods import EAT, SAT, MethodContext
from ramptool.training.pairing import cosine_pairing, kl_pairing, mse_pairing
from ramptool.training.resolve import resolve_config
from ramptool.training.trainer import TrainingInterrupted, train

EPS = {"linf": 0.1, "l2": 1.5, "l1": 10.0}


def quick_config(out, **overrides):
    settings = dict(out=str(out), dataset="fashion-mnist", subset=256, batch_size=64, attack_steps=2, eps=EPS,
                    optimizer="adam", lr=1e-3, weight_decay=0.0, schedule="constant", epochs=1, progress=False,
                    device="cpu", pair=["linf", "l1"])
    settings.update(overrides)
    return TrainConfig(**settings)


@pytest.mark.parametrize("method,extra", [
    ("clean", {}), ("at", {"norms": ["l1"]}), ("sat", {}), ("avg", {}), ("max", {}), ("msd", {}),
    ("e-at", {}), ("ramp", {}), ("ramp", {"combiner": "gp"}), ("ramp", {"combiner": "gp-step"}),
    ("ramp", {"pairing": "mse", "attack": "pgd"}),
])
def test_every_method_trains_an_epoch_and_writes_a_loadable_checkpoint(tmp_path, method, extra, fmnist_test):
    summary = train(quick_config(tmp_path, method=method, **extra))
    assert summary["epochs"] == 1
    model, metadata = load_checkpoint(tmp_path)
    assert metadata["method"] == method and metadata["finished"] and metadata["epoch"] == 1
    x, _ = fmnist_test
    assert model(x[:8]).shape == (8, 10)
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["epoch"] == 1 and torch.isfinite(torch.tensor(record["loss"]))


def test_pairing_losses_vanish_on_identical_inputs_and_match_hand_computation():
    logits_q = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    logits_r = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    for loss in (kl_pairing, mse_pairing, cosine_pairing):
        assert loss(logits_q, logits_q.clone()).abs().item() < 1e-7
        assert loss(logits_q[:0], logits_r[:0]).item() == 0.0
    p, q = logits_q.softmax(1), logits_r.softmax(1)
    kl = sum(sum(p[i, j] * torch.log(p[i, j] / q[i, j]) for j in range(3)) for i in range(2)) / 2
    mse = sum(0.5 * sum((p[i, j] - q[i, j]) ** 2 for j in range(3)) for i in range(2)) / 2
    cos = sum(1 - (p[i] @ q[i]) / (p[i].norm() * q[i].norm()) for i in range(2)) / 2
    assert kl_pairing(logits_q, logits_r).item() == pytest.approx(kl.item(), rel=1e-5)
    assert mse_pairing(logits_q, logits_r).item() == pytest.approx(mse.item(), rel=1e-5)
    assert cosine_pairing(logits_q, logits_r).item() == pytest.approx(cos.item(), rel=1e-5)


def test_pairing_gradient_flows_through_both_predictions():
    logits_q = torch.randn(4, 5, requires_grad=True)
    logits_r = torch.randn(4, 5, requires_grad=True)
    kl_pairing(logits_q, logits_r).backward()
    assert logits_q.grad.abs().sum() > 0 and logits_r.grad.abs().sum() > 0


def test_gradient_projection_follows_the_formula_per_tensor():
    anchor = torch.zeros(3)
    natural = torch.tensor([1.0, 0.0, 0.0])
    adversarial = torch.tensor([1.0, 1.0, 0.0])
    cos = 1 / 2 ** 0.5
    assert torch.allclose(project_gradient(natural - anchor, adversarial - anchor), cos * natural)
    expected = anchor + 0.5 * cos * natural + 0.5 * adversarial
    assert torch.allclose(combine(anchor, natural, adversarial, 0.5), expected)
    opposed = torch.tensor([-1.0, 0.0, 0.0])  # negative cosine: the natural delta is dropped
    assert torch.equal(project_gradient(opposed, adversarial), torch.zeros(3))
    assert torch.allclose(combine(anchor, opposed, adversarial, 0.5), 0.5 * adversarial)


def test_gp_end_of_epoch_combines_each_tensor_and_keeps_the_adversarial_batchnorm_statistics():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    gp = EpochGradientProjection(model, lambda m: torch.optim.SGD(m.parameters(), lr=0.1), beta=0.5)
    gp.start_epoch(model)
    anchor = {k: v.clone() for k, v in model.named_parameters()}
    with torch.no_grad():
        for p in gp.natural.parameters():
            p.add_(torch.randn_like(p))
        for p in model.parameters():
            p.add_(torch.randn_like(p))
        model[1].running_mean.fill_(3.0)
        gp.natural[1].running_mean.fill_(-7.0)
    adversarial = {k: v.clone() for k, v in model.named_parameters()}
    natural = dict(gp.natural.named_parameters())
    gp.end_epoch(model)
    for name, param in model.named_parameters():
        g_n, g_a = natural[name] - anchor[name], adversarial[name] - anchor[name]
        cos = (g_n * g_a).sum() / (g_n.norm() * g_a.norm())
        gp_term = cos * g_n if cos > 0 else torch.zeros_like(g_n)
        assert torch.allclose(param, anchor[name] + 0.5 * gp_term + 0.5 * g_a, atol=1e-6)
    assert torch.equal(model[1].running_mean, torch.full((2,), 3.0))


def test_gp_with_beta_zero_equals_plain_adversarial_training(tmp_path):
    plain = train(quick_config(tmp_path / "plain", method="at", norms=["linf"], epochs=2))
    fused = train(quick_config(tmp_path / "gp", method="at", norms=["linf"], epochs=2, combiner="gp",
                               combiner_options={"beta": 0.0}))
    assert plain["epochs"] == fused["epochs"] == 2
    a, b = read_weights(tmp_path / "plain"), read_weights(tmp_path / "gp")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_gp_with_beta_half_differs_from_plain_training(tmp_path):
    train(quick_config(tmp_path / "plain", method="at", norms=["linf"]))
    train(quick_config(tmp_path / "gp", method="at", norms=["linf"], combiner="gp", combiner_options={"beta": 0.5}))
    a, b = read_weights(tmp_path / "plain"), read_weights(tmp_path / "gp")
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_eat_sampling_follows_running_robust_accuracies():
    eat = EAT(MethodContext(eps=EPS, pair=("linf", "l1")))
    assert torch.allclose(eat.probabilities(), torch.tensor([0.5, 0.5], dtype=torch.float64))
    eat.correct[:] = torch.tensor([80.0, 20.0])
    eat.seen[:] = torch.tensor([100.0, 100.0])
    # weights 1 - acc = 0.2 and 0.8
    assert torch.allclose(eat.probabilities(), torch.tensor([0.2, 0.8], dtype=torch.float64))
    torch.manual_seed(0)
    draws = torch.multinomial(eat.probabilities().expand(4000, 2), 1).squeeze(1)
    assert abs(draws.float().mean().item() - 0.8) < 0.03


def test_eat_statistics_are_updated_from_the_training_attack(tmp_path):
    train(quick_config(tmp_path, method="e-at"))
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    assert state["method"]["seen"].sum().item() == 256
    assert (state["method"]["correct"] <= state["method"]["seen"]).all()


def _run_cli(args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "ramptool.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


RESUME_ARGS = ["train", "--method", "ramp", "--pair", "linf,l1", "--subset", "768", "--batch-size", "64",
               "--attack-steps", "2", "--optimizer", "adam", "--lr", "0.001", "--epochs", "3", "--device", "cpu",
               "--schedule", "cosine", "--no-progress", "--combiner", "gp", "--seed", "3"]


def _wait_for_epochs(run: Path, process, epochs: int, timeout=300):
    deadline = time.time() + timeout
    metrics = run / "metrics.jsonl"
    while time.time() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= epochs:
            return
        if process.poll() is not None:
            raise AssertionError(f"training ended early: {process.communicate()}")
        time.sleep(0.02)
    raise AssertionError("training did not reach the epoch in time")


@pytest.mark.slow
def test_resume_after_kill_and_after_ctrl_c_reproduces_the_uninterrupted_weights(tmp_path):
    reference = _run_cli([*RESUME_ARGS, "--out", str(tmp_path / "reference")])
    assert reference.wait() == 0, reference.communicate()

    killed = _run_cli([*RESUME_ARGS, "--out", str(tmp_path / "killed")])
    _wait_for_epochs(tmp_path / "killed", killed, 1)
    time.sleep(0.3)  # mid-way through the second epoch
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert read_metadata(tmp_path / "killed")["epoch"] in (1, 2)

    interrupted = _run_cli([*RESUME_ARGS, "--out", str(tmp_path / "interrupted")])
    _wait_for_epochs(tmp_path / "interrupted", interrupted, 1)
    time.sleep(0.3)
    interrupted.send_signal(signal.SIGINT)
    _, stderr = interrupted.communicate()
    assert interrupted.returncode == 130, stderr
    assert "--resume" in stderr and "Traceback" not in stderr
    assert read_metadata(tmp_path / "interrupted")["step"] > 0  # a mid-epoch checkpoint

    # what SLURM, Kubernetes and torchrun send before they stop a job, and SLURM's --signal default
    for signum, name in ((signal.SIGTERM, "terminated"), (signal.SIGUSR1, "warned")):
        stopped = _run_cli([*RESUME_ARGS, "--out", str(tmp_path / name)])
        _wait_for_epochs(tmp_path / name, stopped, 1)
        time.sleep(0.3)
        stopped.send_signal(signum)
        _, stderr = stopped.communicate()
        assert stopped.returncode == 128 + signum, stderr
        assert stderr.count("\n") == 1 and stderr.startswith("error: stopped by ") and "--resume" in stderr, stderr
        assert read_metadata(tmp_path / name)["step"] > 0  # a mid-epoch checkpoint

    for name in ("killed", "interrupted", "terminated", "warned"):
        resumed = _run_cli(["train", "--resume", "--out", str(tmp_path / name), "--no-progress"])
        assert resumed.wait() == 0, resumed.communicate()
        expected, got = read_weights(tmp_path / "reference"), read_weights(tmp_path / name)
        assert all(torch.equal(expected[k], got[k]) for k in expected), name


class _NanAfterFirstEpoch:
    """Test plugin: a method whose loss turns NaN in the second epoch."""

    from ramptool import hookimpl

    @staticmethod
    @hookimpl
    def register_methods():
        from ramptool.training.methods import Clean

        class NanLater(Clean):
            calls = 0

            def loss(self, model, x, y):
                loss, stats = super().loss(model, x, y)
                NanLater.calls += 1
                return (loss * float("nan") if NanLater.calls > 4 else loss), stats

        return {"nan-later": NanLater}


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    from ramptool import plugins

    manager = plugins.build_plugin_manager(entry_points=False)
    manager.register(_NanAfterFirstEpoch, name="nan-test")
    plugins.reset_registry(manager)
    try:
        with pytest.raises(TrainingDiverged, match="nan"):
            train(quick_config(tmp_path, method="nan-later", epochs=3))  # 4 steps per epoch
    finally:
        plugins.reset_registry()
    model, metadata = load_checkpoint(tmp_path)
    assert metadata["epoch"] == 1 and not metadata["finished"]
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())


def test_refuses_to_overwrite_a_finished_run_and_needs_a_state_to_resume(tmp_path):
    train(quick_config(tmp_path, method="clean"))
    with pytest.raises(RamptoolError, match="finished run"):
        train(quick_config(tmp_path, method="clean"))
    train(quick_config(tmp_path, method="clean", overwrite=True))
    with pytest.raises(RamptoolError, match="nothing to resume"):
        train(TrainConfig(out=str(tmp_path / "empty"), resume=True))


def test_finetune_cli_starts_from_a_checkpoint_and_records_lambda(tmp_path, clean_model_dir):
    process = _run_cli(["finetune", "--ckpt", str(clean_model_dir), "--pair", "linf,l1", "--subset", "128",
                        "--batch-size", "64", "--attack-steps", "2", "--optimizer", "adam", "--lr", "1e-4",
                        "--out", str(tmp_path / "ft"), "--no-progress", "--device", "cpu"])
    stdout, stderr = process.communicate()
    assert process.returncode == 0, stderr
    metadata = read_metadata(tmp_path / "ft")
    assert metadata["lambda"] == 0.5 and metadata["method"] == "ramp" and metadata["trained_norms"] == ["linf", "l1"]
    assert metadata["init"] == str(clean_model_dir)


@pytest.mark.parametrize("args,message", [
    (["finetune", "--out", "x"], "needs --ckpt"),
    (["train", "--pair", "linf", "--out", "x"], "two norms"),
    (["train", "--eps", "l3=1", "--out", "x"], "unknown norm"),
    (["train", "--method", "at", "--norms", "linf,l2", "--out", "x", "--subset", "64"], "exactly one norm"),
    (["train", "--combiner", "nope", "--out", "x", "--subset", "64"], "--combiner must be one of: gp, gp-step"),
    (["train", "--batch-attacks", "maybe", "--out", "x", "--subset", "64"], "--batch-attacks must be one of"),
])
def test_cli_usage_errors_are_one_line_with_exit_code_2(tmp_path, args, message):
    process = _run_cli(args, cwd=tmp_path)
    _, stderr = process.communicate()
    assert process.returncode == 2
    assert message in stderr and "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("pair_on", ["q-correct", "all"])
def test_loss_of_ramp_equals_max_plus_lambda_times_pairing(pair_on):
    from ramptool.models import build_model
    from ramptool.training.methods import RAMP

    torch.manual_seed(0)
    model = build_model("small-cnn", 10, (1, 28, 28), (0.5,), (0.5,))
    x = torch.rand(16, 1, 28, 28)
    with torch.no_grad():  # labels the model gets right, so that some points stay right under the q attack
        y = model.eval()(x).argmax(1)
    # a small l∞ eps: a random network loses every point at the usual one
    ctx = MethodContext(eps={**EPS, "linf": 0.002}, pair=("linf", "l1"), attack_steps=2, lam=0.7)
    method = RAMP(ctx, pair_on=pair_on)
    model.train()
    torch.manual_seed(1)
    loss, stats = method.loss(model, x, y)
    torch.manual_seed(1)
    q = method.attack(model, x, y, "linf")
    r = method.attack(model, x, y, "l1")
    logits_q, logits_r = model(q.x_adv), model(r.x_adv)
    worst = torch.where((q.loss >= r.loss)[:, None], logits_q, logits_r)
    kept = logits_q.argmax(1) == y if pair_on == "q-correct" else torch.ones_like(y, dtype=torch.bool)
    assert 0 < int(kept.sum()) < len(y) or pair_on == "all"  # the kept set matters
    expected = F.cross_entropy(worst, y) + 0.7 * kl_pairing(logits_q[kept], logits_r[kept])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert model.training


os.environ.setdefault("PYTHONUNBUFFERED", "1")


@pytest.mark.parametrize("method_name", ["ramp", "max", "avg"])
def test_batching_the_attacks_of_several_norms_changes_neither_loss_nor_gradients(method_name):
    from ramptool.plugins.registry import get

    torch.manual_seed(0)
    # BatchNorm: the batched attack must still run in eval mode, where a sample's output ignores its batch
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, stride=2, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(8 * 14 * 14, 10),
    ).double().train()
    x, y = torch.rand(16, 1, 28, 28, dtype=torch.float64), torch.randint(0, 10, (16,))
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    outcomes = []
    for batched in (False, True):
        model.load_state_dict(initial)  # the train-mode forwards move the BatchNorm statistics
        ctx = MethodContext(eps=EPS, pair=("linf", "l1"), attack_steps=3, batch_attacks=batched)
        model.zero_grad()
        loss, _ = get("method", method_name)(ctx).loss(model, x, y)
        loss.backward()
        outcomes.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (loss_a, grads_a), (loss_b, grads_b) = outcomes
    assert torch.allclose(loss_a, loss_b, rtol=1e-9)
    assert all(torch.allclose(a, b, rtol=1e-7, atol=1e-12) for a, b in zip(grads_a, grads_b))


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.usefixtures("one_thread")
def test_per_norm_epoch_metrics_average_over_the_batches_that_used_the_norm(tmp_path, monkeypatch):
    """E-AT trains each batch on one norm: acc_linf is the accuracy over the linf batches, not their share of the
    epoch (issue 18: it read 0.25 where the model was right on ~0.7 of those batches)."""
    per_batch, eat_loss = [], EAT.loss

    def recording(self, model, x, y):
        loss, stats = eat_loss(self, model, x, y)
        per_batch.append({key: (float(value), len(y)) for key, value in stats.items()})
        return loss, stats

    monkeypatch.setattr(EAT, "loss", recording)
    train(quick_config(tmp_path, method="e-at", subset=320, attack_steps=1))  # 5 batches, 64 + ... + 64
    [record] = _records(tmp_path)
    for norm in ("linf", "l1"):
        batches = [stats[f"acc_{norm}"] for stats in per_batch if f"acc_{norm}" in stats]
        assert 0 < len(batches) < len(per_batch)  # both norms drawn: each is a strict part of the epoch
        expected = sum(acc * n for acc, n in batches) / sum(n for _, n in batches)
        assert record[f"acc_{norm}"] == pytest.approx(expected, abs=1e-5)


@pytest.mark.usefixtures("one_thread")
def test_epoch_metrics_after_a_mid_epoch_resume_equal_the_uninterrupted_runs(tmp_path, monkeypatch):
    settings = dict(method="sat", subset=320, attack_steps=1, seed=4)
    train(quick_config(tmp_path / "reference", **settings))
    calls, sat_loss = [], SAT.loss

    def ctrl_c_in_the_third_step(self, model, x, y):
        calls.append(1)
        if len(calls) == 3:
            signal.raise_signal(signal.SIGINT)  # the trainer finishes the step, saves and stops
        return sat_loss(self, model, x, y)

    monkeypatch.setattr(SAT, "loss", ctrl_c_in_the_third_step)
    with pytest.raises(TrainingInterrupted):
        train(quick_config(tmp_path / "run", **settings))
    monkeypatch.undo()
    assert read_metadata(tmp_path / "run")["step"] == 3 and not _records(tmp_path / "run")
    train(TrainConfig(out=str(tmp_path / "run"), resume=True))
    timing = ("seconds", "img_per_s")
    [expected], [got] = _records(tmp_path / "reference"), _records(tmp_path / "run")
    assert {k: v for k, v in got.items() if k not in timing} == {k: v for k, v in expected.items() if k not in timing}
    assert set(got) == set(expected)


SHIPPED_LINF_AT = Path(__file__).resolve().parents[1] / "ramptool" / "recipes" / "checkpoints" / \
    "fmnist-linf-at.safetensors"


@pytest.mark.usefixtures("one_thread")
def test_a_fine_tune_that_wrecks_clean_accuracy_to_chance_stops_without_a_checkpoint(tmp_path):
    from ramptool.errors import TrainingDiverged

    with pytest.raises(TrainingDiverged, match="wrecked.*--lr.*no checkpoint was written.*untouched") as stopped:
        train(quick_config(tmp_path, init=str(SHIPPED_LINF_AT), method="at", norms=["linf"], optimizer="sgd", lr=1.0))
    assert stopped.value.exit_code == 3 and "checkpoint: 7" in str(stopped.value)
    assert not (tmp_path / "model.safetensors").exists() and not _records(tmp_path)


@pytest.mark.usefixtures("one_thread")
def test_finetune_takes_the_checkpoints_dataset_and_refuses_other_inputs(tmp_path):
    from ramptool.checkpoints.format import save_checkpoint
    from ramptool.models import build_model

    model = build_model("small-cnn", 10, (3, 32, 32), (0.5,) * 3, (0.25,) * 3)
    metadata = {"arch": "small-cnn", "arch_options": {}, "num_classes": 10, "input_shape": [3, 32, 32],
                "mean": [0.5] * 3, "std": [0.25] * 3, "dataset": "cifar10"}
    save_checkpoint(tmp_path / "cifar.safetensors", model, metadata)
    cfg = resolve_config(TrainConfig(out=str(tmp_path / "ft"), init=str(tmp_path / "cifar.safetensors")))
    assert cfg.dataset == "cifar10" and cfg.eps["linf"] == pytest.approx(8 / 255) and cfg.optimizer == "sgd"
    with pytest.raises(RamptoolError, match=r"takes inputs \(3, 32, 32\), dataset fashion-mnist has \(1, 28, 28\)"):
        train(quick_config(tmp_path / "ft", init=str(tmp_path / "cifar.safetensors")))


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_the_readme_finetune_command_with_its_defaults_keeps_clean_accuracy(tmp_path, capsys):
    """`ramptool finetune --ckpt <shipped l∞-AT model> --pair linf,l1 --out X`, on 1024 training points. With the
    CIFAR settings it used to default to (SGD lr 0.05) these 8 steps cost 21.6 points of clean accuracy."""
    from ramptool.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["finetune", "--ckpt", str(SHIPPED_LINF_AT), "--pair", "linf,l1", "--out", str(tmp_path),
              "--subset", "1024", "--no-progress"])
    assert exited.value.code == 0, capsys.readouterr().err
    metadata = read_metadata(tmp_path)
    assert metadata["config"]["optimizer"] == "adam" and metadata["start_clean"] > 0.7
    assert metadata["metrics"]["test_clean"] > metadata["start_clean"] - 0.05


def _wait_until_it_catches(process, signum: int, timeout: float = 60) -> None:
    """Until the process has a handler for ``signum`` (the SigCgt mask of /proc/PID/status)."""
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        fields = dict(line.split(":\t", 1) for line in Path(f"/proc/{process.pid}/status").read_text().splitlines()
                      if ":\t" in line)
        if int(fields.get("SigCgt", "0"), 16) >> (signum - 1) & 1:
            return
        time.sleep(0.01)
    raise AssertionError("the command never installed its signal handlers")


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads a process's signal mask in /proc")
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("delay", [0.2, 4.0])  # while torch is imported, and while the command runs
def test_a_stop_signal_at_any_moment_is_one_line_and_the_shells_exit_code(tmp_path, signum, delay):
    process = subprocess.Popen([sys.executable, "-m", "ramptool", *RESUME_ARGS, "--out", str(tmp_path / "run")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    # SIGTERM, which nothing catches by default: its handler is the sign that `python -m ramptool` has installed all
    # of them, the first thing it does (a busy machine delays it)
    _wait_until_it_catches(process, signal.SIGTERM)
    time.sleep(delay)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signum, stderr
    assert stderr.count("\n") == 1 and stderr.startswith("error: stopped by "), stderr


def test_importing_ramptool_does_not_import_torch():
    done = subprocess.run([sys.executable, "-c", "import sys, ramptool; print('torch' in sys.modules)"],
                          capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_threads_default_to_one_on_a_cpu_unless_asked_or_set_in_the_environment(tmp_path, monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        torch.set_num_threads(2)
        train(quick_config(tmp_path / "default", subset=64))
        assert torch.get_num_threads() == 1
        train(quick_config(tmp_path / "asked", subset=64, threads=2))
        assert torch.get_num_threads() == 2
        monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user's own setting is left to torch
        train(quick_config(tmp_path / "environment", subset=64))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_a_log_file_gets_progress_lines_while_an_epoch_runs(tmp_path):
    """Redirected to a file, training used to print nothing until an epoch ended."""
    done = subprocess.run([sys.executable, "-m", "ramptool", *RESUME_ARGS[:-2], "--epochs", "1", "--progress",
                           "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "RAMPTOOL_PROGRESS_SECONDS": "0"})
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("epoch 1/1  ")]
    assert len(lines) == 12  # 768 points at batch 64: a line per step here (every 0 s)
    assert "1/12 (8%)" in lines[0] and "eta " in lines[0] and "loss " in lines[0] and "img/s" in lines[0]
    assert "12/12 (100%)" in lines[-1]


def test_an_eps_on_the_wrong_scale_is_warned_about(tmp_path, capsys):
    from ramptool.threat import eps_scale_warnings

    assert eps_scale_warnings({"linf": 8 / 255, "l2": 1.5, "l1": 10.0}, 784) == []
    (linf,) = eps_scale_warnings({"linf": 8.0}, 784)
    assert "did you mean 8/255?" in linf
    assert len(eps_scale_warnings({"l2": 28.0, "l1": 784.0}, 784)) == 2  # sqrt(784) and 784: the box's diameters
    train(quick_config(tmp_path, method="at", norms=["linf"], eps={"linf": 8.0}, subset=64))
    assert "warning: linf eps 8 reaches the diameter" in capsys.readouterr().err


def test_the_command_line_leaves_the_callers_signal_handlers_as_they_were():
    from ramptool.cli import main

    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
    with pytest.raises(SystemExit):
        main(["--version"])
    with pytest.raises(SystemExit):
        main(["train", "--out", "/nonexistent/x", "--method", "no-such-method"])
    assert {signum: signal.getsignal(signum) for signum in before} == before


@pytest.mark.usefixtures("one_thread")
def test_a_fine_tune_keeps_its_last_good_epoch_and_stops_at_chance_without_saving_the_wreck(tmp_path, monkeypatch,
                                                                                             capsys):
    from ramptool.errors import TrainingDiverged
    from ramptool.training.trainer import LAST_GOOD_FILE, Trainer

    # the clean-accuracy check's answers: the checkpoint, then each epoch (the weights themselves are real)
    answers = iter([0.80, 0.79, 0.55, 0.10])
    monkeypatch.setattr(Trainer, "clean_accuracy", lambda self: next(answers))
    config = dict(init=str(SHIPPED_LINF_AT), method="clean", optimizer="adam", lr=1e-3)
    train(quick_config(tmp_path, **config, epochs=2))
    assert read_metadata(tmp_path / LAST_GOOD_FILE)["epoch"] == 1  # epoch 2 fell 25 points: not good
    line = capsys.readouterr().out
    assert read_metadata(tmp_path)["epoch"] == 2 and "WARNING: clean accuracy fell 25.0 points" in line
    assert "(checkpoint 80.0)" in line and "last-good.safetensors keeps" in line
    with pytest.raises(TrainingDiverged, match=r"fell to 10\.0% at epoch 3 \(chance: 10\.0%.*--lr.*intact"):
        train(TrainConfig(out=str(tmp_path), resume=True, epochs=3))
    assert read_metadata(tmp_path)["epoch"] == 2 and len(_records(tmp_path)) == 2  # the wreck was not saved
    assert read_metadata(tmp_path / LAST_GOOD_FILE)["epoch"] == 1


@pytest.mark.parametrize("args, message", [
    (["--arch-option", "width=0"], "small-cnn's width must be a whole number of at least 1, got 0"),
    (["--normalize", "inf/inf"], "--normalize MEAN must be comma-separated finite numbers, got 'inf'"),
    (["--data-dir", "{file}"], "--data-dir {file} is a file, not a folder"),
    (["--tensorboard", "{file}"], "--tensorboard {file} is a file, not a folder"),
])
def test_bad_options_that_used_to_fail_late_are_one_line_before_training(ramptool_cli, tmp_path, args, message):
    (tmp_path / "a-file").write_text("")
    args = [arg.format(file=tmp_path / "a-file") for arg in args]
    code, out, err = ramptool_cli(["train", "--out", str(tmp_path / "run"), "--subset", "64", "--no-progress",
                                   "--device", "cpu", *args])
    assert code == 2 and err.strip().splitlines() == [f"error: {message.format(file=tmp_path / 'a-file')}"], err
    assert "epoch 1" not in out


@pytest.mark.usefixtures("one_thread")
def test_a_stop_after_an_epochs_last_step_waits_for_the_epochs_checkpoint_and_resumes_exactly(tmp_path,
                                                                                                monkeypatch):
    import signal

    from ramptool.checkpoints.format import read_weights
    from ramptool.training.methods import SingleNormAT
    from ramptool.training.trainer import TrainingInterrupted

    config = dict(method="at", norms=["linf"], subset=256, epochs=2)  # 4 steps an epoch
    train(quick_config(tmp_path / "reference", **config))
    calls, loss = [], SingleNormAT.loss

    def stopped_in_the_last_step(self, model, x, y):
        calls.append(1)
        if len(calls) == 4:
            signal.raise_signal(signal.SIGTERM)
        return loss(self, model, x, y)

    monkeypatch.setattr(SingleNormAT, "loss", stopped_in_the_last_step)
    with pytest.raises(TrainingInterrupted, match="at the end of epoch 1"):
        train(quick_config(tmp_path / "run", **config))
    monkeypatch.undo()
    saved = read_metadata(tmp_path / "run")
    assert (saved["epoch"], saved["step"]) == (1, 0) and len(_records(tmp_path / "run")) == 1
    train(TrainConfig(out=str(tmp_path / "run"), resume=True))
    resumed, reference = read_weights(tmp_path / "run"), read_weights(tmp_path / "reference")
    assert all(torch.equal(resumed[key], reference[key]) for key in reference)

"""The key-tradeoff-pair rule (docs/METHOD.md#the-key-tradeoff-pair) on synthetic matrices, and `ramptool pair`
end to end (issue 7)."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch

from ramptool.errors import RamptoolError
from ramptool.training.config import TrainConfig
from ramptool.training.keypair import choose_pair
from ramptool.training.resolve import resolve_config
from ramptool.workflows.pair import resolve_auto_pair

# R[model norm][attack norm], shaped like the paper's CIFAR-10 standard-eps outcome: (linf, l1)
PAPER_LIKE = {
    "linf": {"linf": 0.48, "l2": 0.60, "l1": 0.08},
    "l2": {"linf": 0.30, "l2": 0.70, "l1": 0.30},
    "l1": {"linf": 0.05, "l2": 0.40, "l1": 0.58},
}


def test_pair_is_the_two_lowest_own_norm_robustness_with_q_the_lower():
    q, r, evidence = choose_pair(PAPER_LIKE)
    assert (q, r) == ("linf", "l1")
    assert "R[linf][linf]=0.480" in evidence


def test_q_and_r_order_follows_own_norm_robustness_not_listing_order():
    swapped = {k: dict(v) for k, v in PAPER_LIKE.items()}
    swapped["l1"]["l1"], swapped["linf"]["linf"] = 0.40, 0.50
    assert choose_pair(swapped)[:2] == ("l1", "linf")


def test_ties_keep_the_listing_order():
    tied = {"l2": {"l2": 0.5, "linf": 0.1, "l1": 0.1}, "linf": {"linf": 0.5, "l2": 0.1, "l1": 0.1},
            "l1": {"l1": 0.5, "l2": 0.1, "linf": 0.1}}
    assert choose_pair(tied)[:2] == ("l2", "linf")
    two_tied_low = {"linf": {"linf": 0.3}, "l2": {"l2": 0.7}, "l1": {"l1": 0.3}}
    assert choose_pair(two_tied_low)[:2] == ("linf", "l1")


def test_fine_tuning_fixes_q_to_the_pretrained_norm():
    assert choose_pair(PAPER_LIKE, fine_tune_from="linf")[:2] == ("linf", "l1")
    assert choose_pair(PAPER_LIKE, fine_tune_from="l1")[:2] == ("l1", "linf")
    # the pretrained norm is outside the natural pair: it is still q, paired with its model's weakest norm
    assert choose_pair(PAPER_LIKE, fine_tune_from="l2")[:2] == ("l2", "linf")


def test_fine_tuning_outside_the_pair_pairs_q_with_where_its_model_is_weakest():
    # measured on Fashion-MNIST (l∞ 0.1, l2 1.5, l1 10): the natural pair is (l2, l1), yet an l∞ model lacks l1
    fashion_mnist = {"linf": {"linf": 0.702, "l2": 0.464, "l1": 0.308},
                     "l2": {"linf": 0.624, "l2": 0.644, "l1": 0.606},
                     "l1": {"linf": 0.406, "l2": 0.546, "l1": 0.674}}
    assert choose_pair(fashion_mnist)[:2] == ("l2", "l1")
    q, r, evidence = choose_pair(fashion_mnist, fine_tune_from="linf")
    assert (q, r) == ("linf", "l1")
    assert "R[linf][l1]=0.308" in evidence


def test_plugin_norms_take_part():
    with_l0 = {**{k: dict(v) for k, v in PAPER_LIKE.items()}, "l0": {"l0": 0.20}}
    assert choose_pair(with_l0)[:2] == ("l0", "linf")


def test_rule_errors_are_clear():
    with pytest.raises(RamptoolError, match="at least two norms"):
        choose_pair({"linf": {"linf": 0.5}})
    with pytest.raises(RamptoolError, match="not among"):
        choose_pair(PAPER_LIKE, fine_tune_from="l0")


def test_auto_pair_reads_pair_json_and_applies_the_fine_tuning_override(tmp_path, clean_model_dir):
    saved = {"norms": ["linf", "l2", "l1"], "matrix": PAPER_LIKE}
    (tmp_path / "pair.json").write_text(json.dumps(saved))
    cfg = resolve_config(TrainConfig(out=str(tmp_path / "run"), eps={"linf": 0.1, "l2": 1.5, "l1": 10.0},
                                     pair="auto", pair_from=str(tmp_path / "pair.json")))
    assert resolve_auto_pair(cfg).pair == ["linf", "l1"]
    with pytest.raises(RamptoolError, match="not a pair.json"):
        (tmp_path / "bad.json").write_text("{}")
        resolve_auto_pair(dataclasses.replace(cfg, pair_from=str(tmp_path / "bad.json")))


@pytest.mark.slow
def test_pair_command_trains_single_norm_models_and_writes_the_pair(tmp_path):
    out = tmp_path / "pair"
    process = subprocess.run(
        [sys.executable, "-m", "ramptool.cli", "pair", "--train", "--subset", "8000", "--epochs", "1", "--lr", "0.002",
         "--n-examples", "100", "--attack", "apgd-ce", "--steps", "20", "--out", str(out), "--device", "cpu"],
        capture_output=True, text=True)
    assert process.returncode == 0, process.stderr
    result = json.loads((out / "pair.json").read_text())
    assert set(result["matrix"]) == {"linf", "l2", "l1"}
    own = {p: result["matrix"][p][p] for p in result["matrix"]}
    expected = sorted(own, key=lambda p: (own[p], ["linf", "l2", "l1"].index(p)))[:2]
    assert [result["q"], result["r"]] == expected
    assert (out / "pair_matrix.png").stat().st_size > 0
    # the quick attack is an upper bound, and says so wherever its numbers appear
    assert result["grade"] == "upper bound (not AutoAttack)" and result["attack"].startswith(result["grade"])
    assert "upper bound (not AutoAttack)" in " ".join(process.stdout.split())
    assert "key pair" in process.stdout and f"R[{result['q']}][{result['q']}]=" in process.stdout
    # the tradeoff the pair is about: the l∞ and l1 models each win on their own norm
    matrix = result["matrix"]
    assert matrix["linf"]["linf"] > matrix["l1"]["linf"], matrix
    assert matrix["l1"]["l1"] > matrix["linf"]["l1"], matrix


def test_pair_command_rejects_models_not_trained_for_one_norm(clean_model_dir, tmp_path):
    process = subprocess.run([sys.executable, "-m", "ramptool.cli", "pair", "--ckpt", str(clean_model_dir),
                              "--ckpt", str(clean_model_dir), "--n-examples", "8", "--attack", "apgd"],
                             capture_output=True, text=True, cwd=tmp_path)  # the default --out is relative
    assert process.returncode == 2
    assert "not trained for a single norm" in process.stderr


def test_finetune_pair_auto_from_pair_json_runs_as_the_readme_shows_it(tmp_path):
    """README: `ramptool finetune --ckpt runs/linf-at --pair auto --pair-from runs/pair/pair.json --out runs/ft`,
    on a tiny budget; `auto` used to reach the attack lookup as the letters a, u, t, o."""
    from ramptool.checkpoints.format import read_metadata
    from ramptool.training.recipes import RECIPES_DIR

    (tmp_path / "pair.json").write_text(json.dumps({"norms": ["linf", "l2", "l1"], "matrix": PAPER_LIKE}))
    shipped = RECIPES_DIR / "checkpoints" / "fmnist-linf-at.safetensors"
    done = subprocess.run([sys.executable, "-m", "ramptool", "finetune", "--ckpt", str(shipped), "--pair", "auto",
                           "--pair-from", str(tmp_path / "pair.json"), "--out", str(tmp_path / "ft"),
                           "--subset", "8", "--batch-size", "8", "--attack-steps", "2", "--device", "cpu"],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "key pair: q=linf, r=l1" in done.stdout
    assert read_metadata(tmp_path / "ft")["threat_model"]["pair"] == ["linf", "l1"]


def test_a_meaningless_matrix_is_warned_about_not_silently_decided():
    from ramptool.training.keypair import pair_warnings

    zeros = {p: {"clean": 0.1, "linf": 0.0, "l2": 0.0, "l1": 0.0} for p in ("linf", "l2", "l1")}
    q, r, _ = choose_pair(zeros)
    warnings = pair_warnings(zeros, q, r, chance=0.1)
    assert any("tie was broken by the order" in w for w in warnings)
    assert sum("at chance level" in w for w in warnings) == 3
    assert pair_warnings({**PAPER_LIKE, **{p: {**PAPER_LIKE[p], "clean": 0.8} for p in PAPER_LIKE}}, "linf", "l1",
                         chance=0.1) == []


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_pair_train_continues_an_interrupted_single_norm_run_instead_of_starting_it_again(tmp_path, monkeypatch):
    import signal

    from ramptool.checkpoints.format import read_metadata, read_weights
    from ramptool.training.methods import SingleNormAT
    from ramptool.training.trainer import TrainingInterrupted
    from ramptool.workflows.pair import train_single_norm_models

    settings = dict(norms=["linf"], eps={"linf": 0.1}, dataset="fashion-mnist", data_dir=None, arch=None, epochs=2,
                    subset=512, optimizer="adam", lr=1e-3, device="cpu", seed=0, progress=False)
    train_single_norm_models(out=tmp_path / "reference", **settings)
    calls, loss = [], SingleNormAT.loss

    def stopped_at_the_sixth_step(self, model, x, y):
        calls.append(1)
        if len(calls) == 6:  # SLURM's warning signal mid-way through the second epoch (4 steps each)
            signal.raise_signal(signal.SIGUSR1)
        return loss(self, model, x, y)

    monkeypatch.setattr(SingleNormAT, "loss", stopped_at_the_sixth_step)
    with pytest.raises(TrainingInterrupted):
        train_single_norm_models(out=tmp_path / "pair", **settings)
    assert read_metadata(tmp_path / "pair" / "linf-at")["epoch"] == 1
    monkeypatch.undo()
    train_single_norm_models(out=tmp_path / "pair", **settings)
    resumed, reference = read_weights(tmp_path / "pair" / "linf-at"), read_weights(tmp_path / "reference" / "linf-at")
    assert all(torch.equal(resumed[key], reference[key]) for key in reference)  # continued, not started again
    with pytest.raises(RamptoolError, match="differ"):  # a saved run with other settings is refused, not replaced
        monkeypatch.setattr(SingleNormAT, "loss", stopped_at_the_sixth_step)
        calls.clear()
        with pytest.raises(TrainingInterrupted):
            train_single_norm_models(out=tmp_path / "other", **settings)
        monkeypatch.undo()
        train_single_norm_models(out=tmp_path / "other", **{**settings, "lr": 5e-4})

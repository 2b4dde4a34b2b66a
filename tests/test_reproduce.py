"""`make reproduce`: its plan, its statistics, and the quick run end to end (resumed without redoing work)."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from ramptool.training.resolve import resolve_config
from ramptool.training.sources import build_train_config
from reproduce.plan import EXTENDED, FINETUNE_BASE, FINETUNE_METHODS, FULL, QUICK, SCRATCH_BASE, jobs, steps_of
from reproduce.stats import mcnemar_p, mean_std, paired_comparison


@pytest.mark.parametrize("recipe", ["fmnist-l1-finetune", "fmnist-eat-finetune", "fmnist-max-finetune",
                                    "fmnist-ramp-finetune"])
def test_every_fine_tune_has_the_budget_of_the_shipped_recipes(tmp_path, recipe):
    from_recipe = build_train_config({"out": str(tmp_path)}, recipe=recipe)
    planned = [job for job in jobs(EXTENDED, from_recipe.init) if job.group == "finetune"]
    assert len(planned) == len(FINETUNE_METHODS) * len(EXTENDED.seeds) == 36
    full = jobs(FULL, from_recipe.init)
    assert len(full) == 21 and {job.folder for job in full} < {job.folder for job in planned}  # reused
    for job in planned:
        for name in (*FINETUNE_BASE, "init"):
            assert job.config[name] == getattr(from_recipe, name), name
    twin = next(job for job in planned if job.config["method"] == from_recipe.method and job.seed == 0
                and job.config.get("lam", from_recipe.lam) == from_recipe.lam
                and job.config.get("pairing", from_recipe.pairing) == from_recipe.pairing)
    built = build_train_config(overrides={"out": str(tmp_path), **twin.config, "subset": from_recipe.subset})
    assert resolve_config(built) == resolve_config(from_recipe)  # the recipe's run and the plan's (seed 0)


def test_the_scratch_runs_follow_the_scratch_recipe(tmp_path):
    recipe = build_train_config({"out": str(tmp_path)}, recipe="fmnist-ramp-scratch")
    for name, value in SCRATCH_BASE.items():
        assert getattr(recipe, name) == value, name


def test_mcnemar_and_mean_std():
    assert mcnemar_p(0, 5) == pytest.approx(2 / 32)
    assert mcnemar_p(3, 3) == 1.0 and mcnemar_p(0, 0) == 1.0
    assert mcnemar_p(10, 0) == pytest.approx(2 / 1024)
    assert mean_std([0.5]) == (0.5, 0.0)
    mean, std = mean_std([1.0, 2.0, 3.0])
    assert mean == 2.0 and std == pytest.approx(1.0)


def test_paired_comparison_pairs_by_seed_and_point():
    generator = torch.Generator().manual_seed(0)
    base = [torch.rand(400, generator=generator) < 0.4 for _ in range(3)]
    same = paired_comparison(base, [flags.clone() for flags in base])
    assert same.mean == 0 and same.low == 0 and same.high == 0 and same.discordant == [(0, 0)] * 3
    better = [flags | (torch.arange(400) < 40) for flags in base]  # A keeps 40 more points at most
    comparison = paired_comparison(better, base)
    assert comparison.low > 0 and comparison.high <= 0.1 + 1e-9
    assert comparison.per_seed == pytest.approx([(b.float().mean() - a.float().mean()).item()
                                                 for a, b in zip(base, better)])
    assert all(c == 0 and b > 0 for b, c in comparison.discordant) and max(comparison.p_values) < 1e-3
    worse = paired_comparison(base, better)
    assert worse.high < 0 and worse.mean == pytest.approx(-comparison.mean)
    noisy = paired_comparison(base[:1], [base[1]])
    assert noisy.low < noisy.mean < noisy.high and math.isfinite(noisy.std)


def test_cached_evaluations_are_keyed_by_checkpoint_path_relative_to_the_checkout(tmp_path, monkeypatch):
    """A second checkout (a worktree, a fresh clone) reuses the evaluations cached under runs/: the start
    checkpoint's absolute path must not enter the key."""
    from reproduce.jobs import checkpoint_key

    for checkout in ("a", "b"):
        (tmp_path / checkout).mkdir()
        monkeypatch.chdir(tmp_path / checkout)
        assert checkpoint_key(tmp_path / checkout / "recipes" / "start.safetensors") == "recipes/start.safetensors"
        assert checkpoint_key("runs/reproduce/finetune/l1/seed0") == "runs/reproduce/finetune/l1/seed0"
    assert checkpoint_key(tmp_path / "elsewhere.safetensors") == str(tmp_path / "elsewhere.safetensors")


def test_training_attack_accuracy_is_the_training_attacks_and_is_cached(clean_model_dir, clean_model, fmnist_test,
                                                                          tmp_path, monkeypatch):
    from ramptool.attacks.apgd import apgd
    from reproduce import jobs

    x, y = fmnist_test[0][:32], fmnist_test[1][:32]
    eps = {"linf": 0.1, "l1": 10.0}
    accuracy = jobs.training_attack_run(clean_model_dir, tmp_path, x, y, eps, ["linf", "l1"], 5, torch.device("cpu"))
    for norm in eps:
        x_adv = apgd(clean_model, x, y, norm, eps[norm], steps=5).x_adv
        assert accuracy[norm] == (clean_model(x_adv).argmax(1) == y).float().mean().item()
    monkeypatch.setattr(jobs, "apgd", None)  # a second call reads the cache and attacks nothing
    assert jobs.training_attack_run(clean_model_dir, tmp_path, x, y, eps, ["linf", "l1"], 5,
                                    torch.device("cpu")) == accuracy


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_quick_reproduction_writes_the_results_page_and_resumes_without_redoing_work(tmp_path, capsys):
    from reproduce.__main__ import main

    out, page, evidence = tmp_path / "run", tmp_path / "RESULTS.md", tmp_path / "evidence"
    main(["--quick", "--out", str(out), "--results", str(page), "--device", "cpu", "--evidence", str(evidence)])
    text = page.read_text()
    assert text.startswith("# Reproducing RAMP on Fashion-MNIST") and "Smoke run" in text
    for key in QUICK.finetune_methods:
        assert f"| {FINETUNE_METHODS[key][0]} | " in text
    for heading in ("## How it was run", "## RAMP against each baseline", "## Fig. 1 at this scale",
                    "## From scratch", "## Where ramptool reproduces the paper, and where not"):
        assert heading in text
    for figure in ("fig1-finetune.png", "union-by-method.png", "learning-curves.png"):
        assert (tmp_path / "results" / figure).read_bytes()[:4] == b"\x89PNG"
    curves = json.loads((out / "curves.json").read_text())
    assert curves["validation_points"] == QUICK.curve_n
    first_seed = {job.folder for job in jobs(QUICK, "start") if job.seed == QUICK.seeds[0] and job.group == "finetune"}
    assert set(curves["curves"]) == {"start", *first_seed}  # the first seed's fine-tunes, and the start at step 0
    for folder in first_seed:
        assert sorted(map(int, curves["curves"][folder])) == list(QUICK.curve_steps)
        assert all(0 <= accuracy["union"] <= accuracy["clean"] <= 1 for accuracy in curves["curves"][folder].values())
    assert "## Learning curves" in text and f"({steps_of(QUICK)} optimizer steps)" in text
    log = [json.loads(line) for line in (out / "jobs.jsonl").read_text().splitlines()]
    trained = len(jobs(QUICK, "start"))
    assert sum(entry["kind"] == "train" for entry in log) == trained
    curve_points = len(QUICK.curve_steps) * len(first_seed) + 1  # and the start at step 0
    assert sum(entry["kind"] == "evaluate" for entry in log) == trained + 1 + curve_points  # and the start
    assert {path.name for path in evidence.rglob("*.safetensors")} == {"flags.safetensors"}  # no weights
    page.unlink()
    shutil.rmtree(out)  # another machine: only the evidence is left, no weights
    main(["--quick", "--out", str(out), "--results", str(page), "--device", "cpu", "--evidence", str(evidence)])
    assert len((out / "jobs.jsonl").read_text().splitlines()) == len(log)  # nothing was done again
    assert not list(out.rglob("model.safetensors"))  # not even trained
    assert page.read_text().split("## How it was run")[1].split("## ")[1:] == \
        text.split("## How it was run")[1].split("## ")[1:]  # the same tables from the cached results


@pytest.mark.slow
def test_quick_reproduction_under_torchrun_gives_the_single_process_flags(tmp_path):
    """`make reproduce` runs under torchrun: rank 0 writes, the evaluations share out the points, and an
    evaluation gives one process's per-point flags."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from reproduce.jobs import read_flags

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(root),
                                                                                 os.environ.get("PYTHONPATH", "")])}
    runs = {}
    for processes in (1, 2):
        out = tmp_path / f"procs{processes}"
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                    str(processes)]
        done = subprocess.run([*launcher, "-m", "reproduce", "--quick", "--out", str(out), "--device", "cpu"],
                              cwd=root, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.count("wrote ") == 1  # rank 0 alone writes the page
        runs[processes] = out
    log = [json.loads(line) for line in (runs[2] / "jobs.jsonl").read_text().splitlines()]
    assert {entry["processes"] for entry in log} == {2}
    assert len(log) == len([json.loads(line) for line in (runs[1] / "jobs.jsonl").read_text().splitlines()])
    one, two = (read_flags(runs[n] / "start" / f"test{QUICK.test_n}") for n in (1, 2))
    assert one.keys() == two.keys() and all(torch.equal(one[name], two[name]) for name in one)
    assert (runs[2] / "RESULTS.md").read_text().startswith("# Reproducing RAMP on Fashion-MNIST")


def test_investigation_section_says_what_ran_and_what_did_not(tmp_path):
    from reproduce.investigate import VARIANTS, section

    assert "Not run for this page" in "\n".join(section([tmp_path / "absent.json"]))
    flags = [1, 0, 1, 1]
    row = {"accuracy": {"clean": 0.8, "linf": 0.5, "l2": 0.4, "l1": 0.3, "union": 0.25},
           "versus_strongest": {"mean": 0.02, "low": -0.01, "high": 0.05}, "union_flags": flags}
    found = {"validation": {"n": 4}, "engine": "apgd", "strongest_baseline": "l1",
             "variants": {"l1": {**row, "label": VARIANTS["l1"][0]}, "ramp": {**row, "label": VARIANTS["ramp"][0]}},
             "not_run": [VARIANTS["ramp-gp"][0]]}
    evidence = tmp_path / "found.json"
    evidence.write_text(json.dumps(found))
    text = "\n".join(section([evidence]))
    assert f"| {VARIANTS['ramp'][0]} | 80.0 | 50.0 | 40.0 | 30.0 | 25.0 | +2.0 | [-1.0, +5.0] | - | - |" in text
    found["variants"]["ramp"]["training_attack"] = {"steps": 10, "accuracy": {"linf": 0.55, "l1": 0.5}}
    found["device"] = "NVIDIA H200"
    evidence.write_text(json.dumps(found))
    text = "\n".join(section([tmp_path / "absent.json", evidence]))
    assert "| +2.0 | [-1.0, +5.0] | 55.0 | 50.0 |" in text and "on NVIDIA H200" in text
    assert "At equal training-attack strength" not in text  # one strength only: nothing to compare across
    stronger = {**row, "union_flags": [1, 1, 1, 1], "training_attack": {"steps": 30, "accuracy": {}}}
    found["variants"] |= {"l1-steps30": {**row, "label": VARIANTS["l1-steps30"][0]},
                          "ramp-steps30": {**stronger, "label": VARIANTS["ramp-steps30"][0]}}
    evidence.write_text(json.dumps(found))
    text = "\n".join(section([evidence]))
    assert "- 10-step training attack: RAMP − l1-only AT +0.0 [+0.0, +0.0]." in text
    assert "- 30-step training attack: RAMP − l1-only AT +25.0 [" in text
    assert f"Not run yet (`--variants`): {VARIANTS['ramp-gp'][0]}." in text


def test_the_demo_says_when_its_budget_is_too_small_for_the_papers_claims():
    from ramptool.workflows.demo import budget_note

    shipped = build_train_config(recipe="fmnist-ramp-finetune", overrides={"out": "unused"})
    note = budget_note({"subset": shipped.subset, "batch_size": shipped.batch_size, "epochs": shipped.epochs,
                        "dataset": shipped.dataset})
    assert note.startswith("note: each fine-tune took 157 optimizer steps") and "too small to test them" in note
    paper = budget_note({"subset": 50_000, "batch_size": 128, "epochs": 3, "dataset": "fashion-mnist"})
    assert "1,173 optimizer steps" in paper and "the paper's or more" in paper

"""``ramptool benchmark`` (issue 26): the shipped model and a tiny fine-tune of it ranked by union accuracy, a broken
model recorded and skipped, a killed run resumed, RobustBench zoo models picked from a model folder, the HTML page
sorted in a real headless browser, and 2 gloo processes giving the leaderboard of one."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_data import write_cifar10_python
from test_distributed import finish, run_here, torchrun
from test_models_checkpoint import randomize_batchnorm

from ramptool.checkpoints.loading import load_checkpoint
from ramptool.evaluation.flags import union_flags
from ramptool.evaluation.union import FLAGS_FILE, evaluate_union, evaluation_points
from ramptool.runtime.files import file_sha256
from ramptool.threat import DEFAULT_EPS
from ramptool.training.config import TrainConfig
from ramptool.training.trainer import train
from ramptool.workflows.benchmark import RESULT_FILE, benchmark

SHIPPED = Path(__file__).resolve().parents[1] / "ramptool" / "recipes" / "checkpoints" / "fmnist-linf-at.safetensors"
QUICK = {"n_examples": 24, "steps": 5, "batch_size": 32}
QUICK_ARGS = ["--n-examples", "24", "--steps", "5", "--batch-size", "32", "--device", "cpu"]
ZOO = ["robustbench:cifar10/Linf/Wong2020Fast", "robustbench:cifar10/L2/Rice2020Overfitting"]  # PreActResNet-18s


@pytest.fixture(scope="module")
def models(tmp_path_factory, one_thread):
    """[shipped l∞-AT model, a 2-step l1-AT fine-tune of it, a 4-step clean fine-tune, a file that is no
    checkpoint]."""
    folder = tmp_path_factory.mktemp("benchmark_models")
    for name, method, norms, subset in (("l1-finetune", "at", ["l1"], 128), ("clean-finetune", "clean", ["linf"], 256)):
        train(TrainConfig(out=str(folder / name), dataset="fashion-mnist", init=str(SHIPPED), method=method,
                          norms=norms, subset=subset, epochs=1, batch_size=64, attack_steps=2, optimizer="sgd",
                          lr=0.05, eps=dict(DEFAULT_EPS["fashion-mnist"]), progress=False, overwrite=True,
                          device="cpu"))
    broken = folder / "broken.safetensors"
    broken.write_bytes(b"not a checkpoint")
    return [str(SHIPPED), str(folder / "l1-finetune"), str(folder / "clean-finetune"), str(broken)]


@pytest.fixture(scope="module")
def board(models, tmp_path_factory):
    out = tmp_path_factory.mktemp("board")
    return out, benchmark(models, out, device="cpu", **QUICK)


def test_models_are_ranked_by_union_and_a_broken_one_is_recorded(board, models):
    out, document = board
    rows = {row["name"]: row for row in document["models"]}
    evaluated = ["fmnist-linf-at", "l1-finetune", "clean-finetune"]
    assert list(rows) == sorted(evaluated, key=lambda n: -rows[n]["accuracy"]["union"]) + ["broken"]
    assert rows["broken"]["status"] == "failed" and "is not a checkpoint" in rows["broken"]["reason"]
    assert json.loads((out / "broken" / RESULT_FILE).read_text())["status"] == "failed"
    x, y = evaluation_points("fashion-mnist", None, 24)
    for name in evaluated:
        row = rows[name]
        flags = load_file(out / name / FLAGS_FILE)  # the leaderboard's numbers are its flags' numbers
        union = union_flags(flags, ["linf", "l2", "l1"]).float().mean().item()
        assert row["accuracy"]["union"] == pytest.approx(union, abs=1e-6)
        assert row["accuracy"]["clean"] == pytest.approx(flags["clean"].float().mean().item(), abs=1e-6)
        assert row["upper_bounds"] == ["linf", "l2", "l1"]  # the union-only cascade's per-norm numbers
        low, high = row["interval"]["union"]
        assert low < row["accuracy"]["union"] < high
        assert row["parameters"] == 828_938 and row["n"] == 24
        assert row["cost"]["forward_per_point"] > 0 and row["cost"]["device"] == "cpu"
        assert row["provenance"]["points_fingerprint"] == document["settings"]["points_fingerprint"]
    assert rows["fmnist-linf-at"]["threat_model"] == "at: linf 0.2"
    assert rows["l1-finetune"]["threat_model"] == "at: l1 10"
    assert rows["clean-finetune"]["threat_model"] == "clean: none"
    assert rows["fmnist-linf-at"]["provenance"]["weights_sha256"] == [file_sha256(SHIPPED)]
    assert document["settings"]["eps"] == DEFAULT_EPS["fashion-mnist"]

    # the shipped model's union agrees with eval union's own engine on the same points
    model, _ = load_checkpoint(SHIPPED)
    direct = evaluate_union(model, x, y, ["linf", "l2", "l1"], DEFAULT_EPS["fashion-mnist"], union_only=True,
                            steps=5, batch_size=32)
    assert direct["accuracy"]["union"] == pytest.approx(rows["fmnist-linf-at"]["accuracy"]["union"], abs=1e-6)

    with open(out / "leaderboard.csv") as handle:
        lines = list(csv.DictReader(handle))
    assert [line["name"] for line in lines] == list(rows)
    assert float(lines[0]["union"]) == pytest.approx(document["models"][0]["accuracy"]["union"])
    assert lines[0]["linf_upper_bound"] == "True" and lines[-1]["reason"] == rows["broken"]["reason"]
    text = (out / "leaderboard.md").read_text()
    assert "| 1 | " in text and "≤" in text and "upper bound" in text and "broken" in text
    assert json.loads((out / "leaderboard.json").read_text())["models"] == document["models"]


def test_resume_keeps_finished_models_and_refuses_other_settings(board, models, tmp_path):
    out, document = board
    before = (out / "fmnist-linf-at" / RESULT_FILE).read_text()
    again = benchmark(models, out, device="cpu", resume=True, **QUICK)
    assert (out / "fmnist-linf-at" / RESULT_FILE).read_text() == before
    assert [row["accuracy"] for row in again["models"] if row["status"] == "ok"] == \
        [row["accuracy"] for row in document["models"] if row["status"] == "ok"]
    with pytest.raises(Exception, match="already holds a benchmark"):
        benchmark(models, out, device="cpu", **QUICK)
    with pytest.raises(Exception, match="other settings"):
        benchmark(models, out, device="cpu", resume=True, **{**QUICK, "steps": 6})


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _rows_after_clicks(page: Path, headers: list[str], tmp_path: Path) -> list[list[str]]:
    """The model column of the page in a headless Chromium after clicking these headers in turn."""
    clicks = "".join(f"clickHeader({json.dumps(header)});" for header in headers)
    script = ("<script>function clickHeader(text){Array.from(document.querySelectorAll('#leaderboard th'))"
              ".find(function(th){return th.textContent.replace(/[\\u25B2\\u25BC ]+$/,'')===text;}).click();}"
              f"{clicks}document.body.setAttribute('data-order',Array.from(document.querySelectorAll("
              "'#leaderboard tbody tr')).map(function(r){return r.cells[1].textContent;}).join('|'));</script>")
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("</body>", script + "</body>"))
    dom = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                          probe.as_uri()], capture_output=True, text=True, timeout=120).stdout
    return dom.split('data-order="', 1)[1].split('"', 1)[0].split("|")


@pytest.mark.skipif(_chromium() is None, reason="no chromium: `make data` installs Debian's as root")
def test_the_html_page_sorts_by_a_clicked_header_in_a_real_browser(board, tmp_path):
    out, document = board
    page = out / "leaderboard.html"
    assert "http" not in page.read_text().lower().replace("http-equiv", "")  # nothing fetched from the network
    done = [row for row in document["models"] if row["status"] == "ok"]
    assert _rows_after_clicks(page, [], tmp_path) == [row["name"] for row in done]
    by_clean = [row["name"] for row in sorted(done, key=lambda row: -row["accuracy"]["clean"])]
    assert by_clean != [row["name"] for row in done]  # else a page that does not sort would pass
    assert _rows_after_clicks(page, ["clean"], tmp_path) == by_clean
    assert _rows_after_clicks(page, ["clean", "clean"], tmp_path) == by_clean[::-1]
    assert _rows_after_clicks(page, ["model"], tmp_path) == sorted(row["name"] for row in done)


def test_bad_input_is_one_error_line(ramptool_cli, tmp_path):
    code, _, err = ramptool_cli(["benchmark", "--out", str(tmp_path / "b")])
    assert code == 2 and "give at least one model" in err and "Traceback" not in err
    code, _, err = ramptool_cli(["benchmark", str(SHIPPED), "--version", "slow", "--out", str(tmp_path / "b")])
    assert code == 2 and "unknown --version 'slow'" in err
    code, _, err = ramptool_cli(["benchmark", str(tmp_path / "typo.safetensors"), "--out", str(tmp_path / "b")])
    assert code == 2 and "typo.safetensors" in err  # a path that is not there costs no evaluation of the others
    (tmp_path / "unreadable.safetensors").write_bytes(b"\0")
    code, out, _ = ramptool_cli(["benchmark", str(tmp_path / "unreadable.safetensors"), "--dataset", "fashion-mnist",
                                 "--out", str(tmp_path / "none")])
    assert code == 0 and "unreadable: not evaluated" in out  # a leaderboard of no model still says why
    assert "No model could be evaluated" in (tmp_path / "none" / "leaderboard.md").read_text()
    code, _, err = ramptool_cli(["benchmark", str(SHIPPED), "--corruptions", "smog", "--out", str(tmp_path / "b")])
    assert code == 2 and "unknown corruption 'smog'" in err
    code, _, err = ramptool_cli(["benchmark", str(SHIPPED), "--steps", "2", "--n-examples", "4", "--device", "cpu",
                                 "--out", str(tmp_path / "b")])
    assert code == 2 and "needs at least 3 steps" in err  # the settings, not a model: nothing is recorded
    assert not (tmp_path / "b" / "leaderboard.json").exists()
    code, _, err = ramptool_cli(["benchmark", "--zoo", "cifar10/Linf", "--model-dir", str(tmp_path),
                                 "--out", str(tmp_path / "b")])
    assert code == 2 and "no weights of its models" in err


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory):
    """Random-weight zoo models saved in RobustBench's layout, and a CIFAR-10 folder of random images."""
    from ramptool.models.robustbench import parse

    model_dir = tmp_path_factory.mktemp("robustbench_models")
    torch.manual_seed(0)
    for spec in ZOO:
        model = parse(spec)
        path = model.weight_files(model_dir)[0]
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(randomize_batchnorm(model.entry()["model"]()).state_dict(), path)
    data = tmp_path_factory.mktemp("cifar")
    write_cifar10_python(data, np.random.default_rng(0))
    return model_dir, data


def test_zoo_models_whose_weights_are_present_enter_the_leaderboard(zoo_dir, tmp_path, ramptool_cli):
    model_dir, data = zoo_dir
    code, out, err = ramptool_cli(["benchmark", "--zoo", "cifar10", "--model-dir", str(model_dir), "--data-dir",
                                   str(data), "--n-examples", "4", "--steps", "3", "--device", "cpu", "--out",
                                   str(tmp_path / "zoo")])
    assert code == 0, err
    document = json.loads((tmp_path / "zoo" / "leaderboard.json").read_text())
    rows = {row["name"]: row for row in document["models"]}
    assert set(rows) == {"Wong2020Fast", "Rice2020Overfitting"}
    assert all(row["status"] == "ok" for row in rows.values()), out
    assert rows["Wong2020Fast"]["threat_model"] == "RobustBench cifar10 Linf"
    assert rows["Rice2020Overfitting"]["threat_model"] == "RobustBench cifar10 L2"
    assert document["settings"]["eps"] == DEFAULT_EPS["cifar10"] and document["settings"]["n"] == 4
    weights = model_dir / "cifar10" / "Linf" / "Wong2020Fast.pt"
    assert rows["Wong2020Fast"]["provenance"]["weights_sha256"] == [file_sha256(weights)]
    assert rows["Wong2020Fast"]["provenance"]["robustbench"]
    code, _, _ = ramptool_cli(["benchmark", "--zoo", "cifar10/L2", "--model-dir", str(model_dir), "--data-dir",
                               str(data), "--n-examples", "4", "--steps", "3", "--device", "cpu", "--out",
                               str(tmp_path / "l2")])
    assert code == 0
    names = [row["name"] for row in json.loads((tmp_path / "l2" / "leaderboard.json").read_text())["models"]]
    assert names == ["Rice2020Overfitting"]


def _comparable(document: dict) -> list[dict]:
    """The rows without what the clock, the date and the number of processes change."""
    rows = []
    for row in document["models"]:
        row = {key: value for key, value in row.items() if key != "cost"}
        if "provenance" in row:
            row["provenance"] = {key: value for key, value in row["provenance"].items() if key != "date"}
        rows.append(row)
    return rows


@pytest.mark.slow
def test_a_killed_benchmark_resumes_model_by_model(models, tmp_path):
    args = ["benchmark", *models, *QUICK_ARGS, "--full"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = subprocess.Popen([sys.executable, "-m", "ramptool", *args, "--out", str(tmp_path / "killed")], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    first = tmp_path / "killed" / "fmnist-linf-at" / RESULT_FILE
    deadline = time.monotonic() + 300
    while not first.exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert first.exists() and not (tmp_path / "killed" / "leaderboard.json").exists()
    finished = first.read_text()

    run_here([*args, "--out", str(tmp_path / "killed"), "--resume"])
    run_here([*args, "--out", str(tmp_path / "whole")])
    assert first.read_text() == finished  # kept, not evaluated again
    resumed, whole = (json.loads((tmp_path / run / "leaderboard.json").read_text()) for run in ("killed", "whole"))
    assert _comparable(resumed) == _comparable(whole)
    assert all(row["upper_bounds"] == [] for row in whole["models"] if row["status"] == "ok")  # --full: exact


@pytest.mark.slow
def test_two_processes_give_the_leaderboard_of_one(models, tmp_path):
    # 21 points: shards of 11 and 10
    args = ["benchmark", *models, "--n-examples", "21", "--steps", "5", "--batch-size", "8", "--device", "cpu"]
    launched = torchrun([*args, "--out", str(tmp_path / "two")])
    run_here([*args, "--out", str(tmp_path / "one")])
    finish(launched)
    two, one = (json.loads((tmp_path / run / "leaderboard.json").read_text()) for run in ("two", "one"))
    assert _comparable(two) == _comparable(one)
    assert two["models"][0]["cost"]["processes"] == 2 and one["models"][0]["cost"]["processes"] == 1
    for name in ("fmnist-linf-at", "l1-finetune"):
        flags = [load_file(tmp_path / run / name / FLAGS_FILE) for run in ("two", "one")]
        assert all(torch.equal(flags[0][key], flags[1][key]) for key in flags[1])


def test_the_corruption_column_from_memory_or_from_a_cifar10c_style_folder(tmp_path, one_thread):
    from ramptool.evaluation.corruptions import corrupt_images, evaluate_corruptions, to_uint8_images
    from ramptool.workflows.benchmark import corruption_request

    x, y = evaluation_points("fashion-mnist", None, 16)
    stacked = np.concatenate([corrupt_images(to_uint8_images(x), "fog", s, seed=0) for s in range(1, 6)])
    np.save(tmp_path / "fog.npy", stacked[..., 0])  # CIFAR-10-C style grayscale: (5N, H, W)
    np.save(tmp_path / "labels.npy", np.tile(y.numpy(), 5))
    boards = {}
    for source, request in (("memory", corruption_request(["fog"], [1, 5], None)),
                            ("folder", corruption_request(None, [1, 5], tmp_path))):
        boards[source] = benchmark([str(SHIPPED)], tmp_path / source, corruptions=request,
                                   corruption_cache=tmp_path / "cache", device="cpu", n_examples=16, steps=5)
    model, _ = load_checkpoint(SHIPPED)
    expected = evaluate_corruptions(model, x, y, ["fog"], [1, 5], seed=0)["mean"]
    for source, document in boards.items():
        row = document["models"][0]
        assert row["accuracy"]["corruptions"] == pytest.approx(expected, abs=1e-6), source
        assert row["upper_bounds"] == ["linf", "l2", "l1"]  # the corruption column is no attack's bound
        assert "corruptions" in (tmp_path / source / "leaderboard.md").read_text()
    assert boards["folder"]["settings"]["corruptions"]["names"] == ["fog"]
    assert "pre-corrupted sets in" in (tmp_path / "folder" / "leaderboard.md").read_text()


def test_a_model_that_breaks_during_the_attacks_is_recorded_and_the_others_go_on(tmp_path, monkeypatch, one_thread):
    from ramptool.workflows import benchmark as workflow

    broken_copy = tmp_path / "fails-in-attacks.safetensors"
    shutil.copy(SHIPPED, broken_copy)
    loaded = workflow.load_for_evaluation

    class FailsOnItsSecondBatch(torch.nn.Module):  # a model whose forward fails once the attacks start
        def __init__(self, model):
            super().__init__()
            self.model, self.calls = model, 0

        def forward(self, x):
            self.calls += 1
            if self.calls > 1:
                raise RuntimeError("shape mismatch inside the model")
            return self.model(x)

    def load(path, *args, **kwargs):
        model, metadata, dataset = loaded(path, *args, **kwargs)
        return (FailsOnItsSecondBatch(model) if Path(path) == broken_copy else model), metadata, dataset

    monkeypatch.setattr(workflow, "load_for_evaluation", load)
    document = benchmark([str(broken_copy), str(SHIPPED)], tmp_path / "out", device="cpu", n_examples=8, steps=5)
    rows = {row["name"]: row for row in document["models"]}
    assert rows["fmnist-linf-at"]["status"] == "ok" and rows["fmnist-linf-at"]["rank"] == 1
    assert rows["fails-in-attacks"] == {"name": "fails-in-attacks", "model": str(broken_copy), "status": "failed",
                                      "reason": "shape mismatch inside the model", "rank": None}

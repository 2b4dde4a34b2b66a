"""``ramptool compare``: rows from run folders and eval reports, the refusal of incomparable numbers, groups."""

import csv
import json
import statistics
from pathlib import Path

import pytest

from ramptool.errors import RamptoolError
from ramptool.evaluation.compare import collect, compare, write_outputs
from ramptool.training.config import TrainConfig
from ramptool.training.trainer import train

EPS = {"linf": 0.1, "l2": 1.5, "l1": 10.0}
# the per-epoch evaluation's settings in small_run, as `eval union` options
WEAK_EVAL = ["--steps", "3", "--eps", "linf=0.1,l2=1.5,l1=10", "--device", "cpu"]


def small_run(out, seed, eps=EPS, method="clean"):
    """One epoch on 128 points with a per-epoch evaluation of the first 16 test points (3 APGD steps: the table
    logic is under test here, not the numbers)."""
    train(TrainConfig(out=str(out), subset=128, batch_size=64, method=method, optimizer="adam", lr=1e-3, epochs=1,
                      eval_n=16, eval_steps=3, eps=dict(eps), seed=seed, progress=False, device="cpu"))
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("runs")
    return {"a": small_run(root / "a", 0), "b": small_run(root / "b", 1), "c": small_run(root / "c", 2),
            "wide": small_run(root / "wide", 0, eps={**EPS, "linf": 0.2})}


def last_eval(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]["eval"]


def test_run_folders_give_their_last_evaluation_and_training_settings(runs):
    rows = collect([str(runs["a"]), str(runs["b"])])
    assert [row["name"] for row in rows] == ["a", "b"]
    assert rows[0]["accuracy"] == last_eval(runs["a"])
    assert rows[0]["n"] == 16 and rows[0]["eps"] == EPS and rows[0]["points"] == rows[1]["points"]
    assert (rows[0]["method"], rows[0]["seed"], rows[1]["seed"], rows[0]["epochs"]) == ("clean", 0, 1, 1)
    assert rows[0]["seconds_per_epoch"] > 0 and "metrics.jsonl [epoch 1]" in rows[0]["source"]


def test_an_eval_report_of_a_run_is_comparable_to_the_runs_own_evaluation(runs, tmp_path, ramptool_cli):
    code, _, err = ramptool_cli(["eval", "union", "--ckpt", str(runs["a"]), "--n-examples", "16", *WEAK_EVAL,
                                 "--out", str(tmp_path / "eval")])
    assert code == 0, err
    rows = compare([str(runs["a"]), str(tmp_path / "eval")])["rows"]
    # the same points (the fingerprint ramptool eval gives them), attack and eps: the same numbers
    assert rows[1]["source"].endswith("report.json [a]") and rows[1]["method"] == "clean"
    assert rows[0]["points"] == rows[1]["points"] and rows[0]["attack"] == rows[1]["attack"]
    assert rows[0]["accuracy"] == pytest.approx(rows[1]["accuracy"])
    # other points (the first 8): refused, naming them
    code, _, err = ramptool_cli(["eval", "union", "--ckpt", str(runs["b"]), "--n-examples", "8", *WEAK_EVAL,
                                 "--out", str(tmp_path / "eval8")])
    assert code == 0, err
    code, out, err = ramptool_cli(["compare", str(runs["a"]), str(tmp_path / "eval8" / "report.json")])
    assert code == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and "points" in err and "eps" not in err.split("|")[0]


def test_numbers_on_other_eps_are_refused_unless_mixing_is_allowed(runs, ramptool_cli):
    code, _, err = ramptool_cli(["compare", str(runs["a"]), str(runs["wide"])])
    assert code == 2 and err.startswith("error: these numbers are not comparable, eps: ")
    assert "linf 0.2" in err and "(wide)" in err and "--allow-mixed" in err and "attack" not in err
    rows = compare([str(runs["a"]), str(runs["wide"])], allow_mixed=True)["rows"]
    assert [row["eps"]["linf"] for row in rows] == [0.1, 0.2]


def test_grouping_gives_each_groups_mean_and_std_over_its_seeds(runs, tmp_path):
    paths = [str(runs[name]) for name in ("a", "b", "c")]
    result = compare(paths, group_by=["method"])
    (group,) = result["groups"]
    evals = [last_eval(runs[name]) for name in ("a", "b", "c")]
    assert group["models"] == ["a", "b", "c"] and group["seeds"] == [0, 1, 2] and group["method"] == "clean"
    for column in ("clean", "linf", "l2", "l1", "union"):
        values = [e[column] for e in evals]
        assert group["mean"][column] == pytest.approx(sum(values) / 3)
        assert group["std"][column] == pytest.approx(statistics.stdev(values))
    # grouped by seed: three groups of one, no std
    assert [g["std"]["union"] for g in compare(paths, group_by=["seed"])["groups"]] == [None] * 3
    with pytest.raises(RamptoolError, match="--group-by colour"):
        compare(paths, group_by=["colour"])
    written = write_outputs(result, tmp_path / "t.csv", tmp_path / "t.md", tmp_path / "t.json", tmp_path / "t.png")
    assert [path.name for path in written] == ["t.csv", "t.md", "t.json", "t.png"]
    table = list(csv.DictReader((tmp_path / "t.csv").open()))
    assert float(table[0]["union_mean"]) == pytest.approx(group["mean"]["union"], abs=1e-6)
    markdown = (tmp_path / "t.md").read_text()
    assert f"| method clean | {100 * group['mean']['clean']:.1f} ± {100 * group['std']['clean']:.1f} |" in markdown
    assert json.loads((tmp_path / "t.json").read_text())["groups"][0]["count"] == 3
    assert (tmp_path / "t.pdf").is_file()


def test_sources_that_hold_no_comparable_numbers_are_one_line(tmp_path, ramptool_cli):
    (tmp_path / "empty").mkdir()
    code, _, err = ramptool_cli(["compare", str(tmp_path / "empty")])
    assert code == 2 and "neither a run folder" in err
    code, _, err = ramptool_cli(["compare", str(tmp_path / "none-*")])
    assert code == 2 and "matches nothing" in err
    (tmp_path / "unseen.json").write_text(json.dumps({"models": {"m": {"adversaries": {}}}}))
    code, _, err = ramptool_cli(["compare", str(tmp_path / "unseen.json")])
    assert code == 2 and "not an `eval union` result" in err


def test_the_evaluations_make_reproduce_saved_are_rows_named_by_their_run():
    evidence = Path(__file__).resolve().parents[1] / "docs/evidence/reproduce-paper/finetune"
    rows = compare([str(evidence / "*/seed0/test1000")])["rows"]
    saved = sorted(f"{folder.parent.parent.name}/seed0" for folder in evidence.glob("*/seed0/test1000"))
    assert len(saved) >= 4  # the evidence grows as the reproduction runs
    assert [row["name"] for row in rows] == saved
    report = json.loads(Path(rows[0]["source"].split(" [")[0]).read_text())["report"]
    assert rows[0]["accuracy"] == report["accuracy"] and rows[0]["n"] == 1000 and rows[0]["grade"] == "AutoAttack-grade"

"""Union evaluation: flags, the union-only cascade, resume, sanity warnings, AutoAttack cross-check, CLI."""

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import ramptool
from ramptool.checkpoints.loading import load_model
from ramptool.cli.eval import _test_points, parse_n_examples
from ramptool.errors import RamptoolError
from ramptool.evaluation import suite as suite_module
from ramptool.evaluation.flags import union_flags
from ramptool.evaluation.report import curve_title, union_plot_title, wilson_interval
from ramptool.evaluation.union import (
    FLAGS_FILE,
    EvaluationInterrupted,
    evaluate_union,
    not_falling_warnings,
    sanity_warnings,
)
from ramptool.runtime.rundir import FolderLock
from ramptool.threat import DEFAULT_EPS, lp_norm

FMNIST_EPS = {"linf": 0.1, "l2": 1.5, "l1": 10.0}
NORMS = ["linf", "l2", "l1"]
SHIPPED = Path(__file__).resolve().parents[1] / "recipes" / "checkpoints" / "fmnist-linf-at.safetensors"
QUICK = {"steps": 10, "batch_size": 64}  # the default, AutoAttack-grade evaluation with fewer steps


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def points(fmnist_test):
    x, y = fmnist_test
    return x[:48], y[:48]


@pytest.fixture(scope="module")
def robust_model():
    return load_model(SHIPPED)


@pytest.fixture(scope="module")
def robust_points(fmnist_test):
    x, y = fmnist_test
    return x[:32], y[:32]


def read_flags(folder):
    with safe_open(str(folder / FLAGS_FILE), framework="pt") as handle:
        return {name: handle.get_tensor(name) for name in handle.keys()}, handle.metadata()


def run_cli(args, capsys):
    from ramptool.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(args)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_union_is_the_and_of_the_saved_per_norm_flags(clean_model, points, tmp_path):
    x, y = points
    report = evaluate_union(clean_model, x, y, NORMS, FMNIST_EPS, out_dir=tmp_path, **QUICK)
    flags, _ = read_flags(tmp_path)
    assert set(flags) == {"clean", *NORMS}
    union = flags["clean"] & flags["linf"] & flags["l2"] & flags["l1"]
    assert report["accuracy"]["union"] == pytest.approx(union.float().mean().item())
    for norm in NORMS:
        assert not (flags[norm] & ~flags["clean"]).any(), "a point wrong on clean data counted robust"
        assert report["accuracy"][norm] == pytest.approx(flags[norm].float().mean().item())
        assert report["attacked"][norm] == int(flags["clean"].sum())
        assert report["seconds"][norm] > 0 and report["passes"][norm]["backward"] > 0
    assert report["accuracy"]["clean"] == pytest.approx((clean_model(x).argmax(1) == y).float().mean().item())
    # the clean model is far from robust at these eps, and the union is below every norm
    assert report["accuracy"]["union"] < min(report["accuracy"][n] for n in NORMS) < report["accuracy"]["clean"]
    assert report["upper_bounds"] == [] and report["warnings"] == [] and report["grade"] == "AutoAttack-grade"
    # AutoAttack's runs: APGD-CE (l1: 5 restarts) then APGD-T (l∞, l2: 9 targets; l1: 5), norm by norm
    assert [entry["run"] for entry in report["runs"]] == (
        ["linf/apgd-ce/0"] + [f"linf/apgd-t/{t}" for t in range(9)] + ["l2/apgd-ce/0"]
        + [f"l2/apgd-t/{t}" for t in range(9)] + [f"l1/apgd-ce/{r}" for r in range(5)]
        + [f"l1/apgd-t/{t}" for t in range(5)])


def test_union_only_cascade_gives_the_full_unions_flags_with_fewer_passes(robust_model, robust_points, tmp_path):
    """Each point's attacks do not depend on the other points of its batch (random starts drawn per point, a
    point leaves its batch once fooled), so scheduling them differently cannot change any point's union flag."""
    x, y = robust_points
    full = evaluate_union(robust_model, x, y, NORMS, FMNIST_EPS, out_dir=tmp_path / "full", **QUICK)
    cascade = evaluate_union(robust_model, x, y, NORMS, FMNIST_EPS, out_dir=tmp_path / "cascade", union_only=True,
                             **QUICK)
    flags = {name: read_flags(tmp_path / name)[0] for name in ("full", "cascade")}
    assert torch.equal(union_flags(flags["full"], NORMS), union_flags(flags["cascade"], NORMS))
    assert 0 < cascade["accuracy"]["union"] == full["accuracy"]["union"] <= min(full["accuracy"][n] for n in NORMS)
    assert cascade["upper_bounds"] == NORMS
    for norm in NORMS:
        assert cascade["accuracy"][norm] >= full["accuracy"][norm]
    # each round of every norm runs together; points broken in any norm leave all of them
    assert cascade["runs"][0]["together"] == 3 and cascade["runs"][0]["points"] == full["attacked"]["linf"]

    def total(report, kind):
        return sum(report["passes"][norm][kind] for norm in NORMS)

    assert total(cascade, "backward") < 0.6 * total(full, "backward")


def test_a_shard_of_the_points_gets_the_flags_of_the_whole_set(clean_model, points):
    """Per-point random draws (named by the point's index), so any subset evaluated alone, as a distributed
    rank would, gets the flags it has in the whole evaluation."""
    x, y = points
    whole = evaluate_union(clean_model, x, y, NORMS, FMNIST_EPS, keep_adversarial=True, **QUICK)
    shard = torch.arange(10, 30)
    part = evaluate_union(clean_model, x[shard], y[shard], NORMS, FMNIST_EPS, index=shard, keep_adversarial=True,
                          **QUICK)
    for norm in NORMS:
        broken_whole = {int(i) for i in whole["adversarial"][norm]["index"] if 10 <= i < 30}
        broken_part = {int(shard[i]) for i in part["adversarial"][norm]["index"]}
        assert broken_part == broken_whole


def test_every_counted_success_is_misclassified_inside_the_ball_and_the_box(robust_model, robust_points):
    x, y = robust_points
    report = evaluate_union(robust_model, x, y, NORMS, FMNIST_EPS, keep_adversarial=True, **QUICK)
    with torch.no_grad():
        clean = robust_model(x).argmax(1) == y
    for norm in NORMS:
        found = report["adversarial"][norm]
        index, x_adv = found["index"], found["x_adv"]
        assert len(index) == int(clean.sum()) - round(report["accuracy"][norm] * len(y)) > 0
        assert clean[index].all()
        assert (lp_norm(x_adv - x[index], norm) <= FMNIST_EPS[norm] * (1 + 1e-5)).all()
        assert ((x_adv >= 0) & (x_adv <= 1)).all()
        with torch.no_grad():
            assert (robust_model(x_adv).argmax(1) != y[index]).all()


def test_claimed_successes_outside_the_ball_or_not_misclassified_do_not_count(clean_model, points, monkeypatch):
    """An attack that claims too much (a point beyond eps, or one the model still classifies right) gains
    nothing: every success is checked before it counts."""
    x, y = points

    def boastful(context, runs, x, y, index, clean_logits):
        beyond = (x + 2 * context.eps[runs[0].norm]).clamp(0, 1) if runs[0].norm == "linf" else x
        unchanged_but_moved = x + 1e-7 * (x < 1)
        return [beyond if run.norm == "linf" else unchanged_but_moved for run in runs]

    monkeypatch.setitem(suite_module.SUITES, "apgd", dataclasses.replace(suite_module.SUITES["apgd"],
                                                                          attack=boastful))
    report = evaluate_union(clean_model, x, y, NORMS, FMNIST_EPS, **QUICK)
    assert all(report["accuracy"][norm] == report["accuracy"]["clean"] for norm in NORMS)
    assert all(entry["broken"] == 0 for entry in report["runs"])


def test_resume_after_an_interruption_gives_the_same_report(clean_model, points, tmp_path, monkeypatch):
    x, y = points
    reference = evaluate_union(clean_model, x, y, NORMS, FMNIST_EPS, **QUICK)
    suite = suite_module.SUITES["apgd"]
    attacked = []

    def interrupted_at_l2(context, runs, *args):
        if runs[0].norm == "l2" and runs[0].attack == "apgd-t" and runs[0].round == 2:
            raise KeyboardInterrupt
        attacked.append(runs[0].key)
        return suite.attack(context, runs, *args)

    monkeypatch.setitem(suite_module.SUITES, "apgd", dataclasses.replace(suite, attack=interrupted_at_l2))
    with pytest.raises(EvaluationInterrupted, match="--resume"):
        evaluate_union(clean_model, x, y, NORMS, FMNIST_EPS, out_dir=tmp_path, **QUICK)
    flags, metadata = read_flags(tmp_path)
    done = [entry["run"] for entry in json.loads(metadata["runs"])]
    assert done == attacked and done[-1] == "l2/apgd-t/1"

    attacked.clear()
    monkeypatch.setitem(suite_module.SUITES, "apgd", dataclasses.replace(
        suite, attack=lambda context, runs, *args: attacked.append(runs[0].key) or suite.attack(context, runs, *args)))
    resumed = evaluate_union(clean_model, x, y, NORMS, FMNIST_EPS, out_dir=tmp_path, resume=True, **QUICK)
    assert attacked[0] == "l2/apgd-t/2" and not set(attacked) & set(done), "finished runs were attacked again"
    assert resumed["resumed"] == done
    assert resumed["accuracy"] == reference["accuracy"]
    assert set(read_flags(tmp_path)[0]) == {"clean", *NORMS}


def test_resume_refuses_flags_of_other_points_or_eps(clean_model, points, tmp_path):
    x, y = points
    evaluate_union(clean_model, x, y, ["linf"], FMNIST_EPS, out_dir=tmp_path, **QUICK)
    with pytest.raises(RamptoolError, match="linf eps 0.1, now 0.2"):
        evaluate_union(clean_model, x, y, ["linf"], {**FMNIST_EPS, "linf": 0.2}, out_dir=tmp_path, resume=True,
                       **QUICK)
    with pytest.raises(RamptoolError, match="other test points"):
        evaluate_union(clean_model, x[:40], y[:40], ["linf"], FMNIST_EPS, out_dir=tmp_path, resume=True, **QUICK)
    with pytest.raises(RamptoolError, match="union_only=False, now True"):
        evaluate_union(clean_model, x, y, ["linf"], FMNIST_EPS, out_dir=tmp_path, resume=True, union_only=True,
                       **QUICK)
    with pytest.raises(RamptoolError, match="seed=0, now 1"):
        evaluate_union(clean_model, x, y, ["linf"], FMNIST_EPS, out_dir=tmp_path, resume=True, seed=1, **QUICK)


def test_sanity_warnings_catch_impossible_and_suspicious_numbers(clean_model, points, capsys):
    impossible = {"clean": 0.9, "linf": 0.4, "l2": 0.5, "union": 0.45}
    assert any("above the linf accuracy" in m for m in sanity_warnings(impossible, ["linf", "l2"], 1000))
    plausible = {"clean": 0.9, "linf": 0.4, "l2": 0.5, "union": 0.35}
    assert sanity_warnings(plausible, ["linf", "l2"], 1000, recorded_clean=0.92) == []
    low_clean = {**plausible, "clean": 0.5}
    assert any("wrong normalisation?" in m for m in sanity_warnings(low_clean, ["linf", "l2"], 1000, 0.9))
    # 12 points of gap on 20 points is within sampling noise: no warning
    assert sanity_warnings({**plausible, "clean": 0.7}, ["linf", "l2"], 20, recorded_clean=0.82) == []

    x, y = points
    report = evaluate_union(clean_model, x, y, ["linf"], FMNIST_EPS, recorded_clean=1.0, **QUICK)
    assert any("wrong normalisation?" in m for m in report["warnings"])
    assert "WARNING" in capsys.readouterr().err

    rising = not_falling_warnings({"l2": [0.5, 1.0, 2.0]}, {"l2": [0.6, 0.4, 0.5]}, 100)
    assert len(rising) == 1 and "rises from 40.0% at eps 1 to 50.0% at eps 2" in rising[0]
    assert not_falling_warnings({"l2": [0.5, 1.0]}, {"l2": [0.6, 0.61]}, 100) == []


def direct_autoattack_flags(model, x, y, norm, eps):
    """pyautoattack's fast AutoAttack built by hand, nothing of ramptool on its path: robust flags per point."""
    import pyautoattack

    names = {"linf": "Linf", "l2": "L2", "l1": "L1"}
    adversary = pyautoattack.AutoAttack(model, attacks=["apgd-ce", "apgd-t"], norm=names[norm], eps=eps[norm],
                                        version="custom", device="cpu", seed=0)
    # AutoAttack's standard-version settings for each norm, set by hand
    adversary.apgd_targeted.n_restarts = 1
    if norm == "l1":
        adversary.apgd.use_largereps = adversary.apgd_targeted.use_largereps = True
        adversary.apgd.n_restarts, adversary.apgd_targeted.n_target_classes = 5, 5
    else:
        adversary.apgd.n_restarts, adversary.apgd_targeted.n_target_classes = 1, 9
    _, predictions = adversary.run_standard_evaluation(x, y, batch_size=500)
    return predictions == y


@pytest.mark.slow
def test_default_evaluation_agrees_with_pyautoattack_and_one_apgd_ce_run_does_not(robust_model, fmnist_test):
    """The default evaluation next to pyautoattack called directly, on the first 100 test points of the shipped
    l∞-AT model at the dataset's eps: within a point per norm and for the union (measured: 56, 35, 8, 7 against
    56, 33, 8, 7). l2 is allowed 2: AutoAttack's own seeds disagree about several points' l2 flags (on the
    former model's first 100 points, seeds 0 and 1 about 4). ``--attack autoattack`` is pyautoattack exactly
    (same flags), and one APGD-CE run from x, the quick upper bound, overstates l1 robustness by far more than a
    point (24 against 8)."""
    eps = DEFAULT_EPS["fashion-mnist"]
    x, y = fmnist_test[0][:100], fmnist_test[1][:100]
    ours = evaluate_union(robust_model, x, y, NORMS, eps)["accuracy"]
    direct = {norm: direct_autoattack_flags(robust_model, x, y, norm, eps) for norm in NORMS}
    direct_accuracy = {norm: flags.float().mean().item() for norm, flags in direct.items()}
    direct_accuracy["union"] = (direct["linf"] & direct["l2"] & direct["l1"]).float().mean().item()
    for key, tolerance in {"linf": 0.01, "l2": 0.02, "l1": 0.01, "union": 0.01}.items():
        assert abs(ours[key] - direct_accuracy[key]) <= tolerance + 1e-9, (key, ours[key], direct_accuracy[key])
    assert 0.05 < direct_accuracy["union"] < direct_accuracy["l2"] < direct_accuracy["linf"]

    adapter = evaluate_union(robust_model, x, y, ["l2"], eps, attack="autoattack", keep_adversarial=True)
    robust = robust_model(x).argmax(1) == y
    robust[adapter["adversarial"]["l2"]["index"]] = False
    assert torch.equal(robust, direct["l2"])

    quick = evaluate_union(robust_model, x, y, ["l1"], eps, attack="apgd-ce")["accuracy"]["l1"]
    assert quick > direct_accuracy["l1"] + 0.05


def test_cli_eval_union_writes_reports_with_provenance_keeps_them_and_resumes(clean_model_dir, tmp_path, capsys):
    out, adversarial = tmp_path / "eval", tmp_path / "adv"
    args = ["eval", "union", "--ckpt", str(clean_model_dir), "--n-examples", "16", "--out", str(out),
            "--device", "cpu", "--batch-size", "64", "--steps", "10", "--eps", "linf=26/255"]
    code, stdout, _ = run_cli(args + ["--save-adv", str(adversarial)], capsys)
    assert code == 0, stdout
    name = clean_model_dir.name
    document = json.loads((out / "report.json").read_text())
    report = document["models"][name]
    assert report["n"] == 16 and report["attack"] == "apgd" and report["grade"] == "AutoAttack-grade"
    assert report["eps"] == {**FMNIST_EPS, "linf": 26 / 255} and report["dataset"] == "fashion-mnist"
    assert report["eps_given"] == {"linf": "26/255", "l2": "1.5", "l1": "10"} and report["points"] == "first N"
    checkpoint = clean_model_dir / "model.safetensors"
    assert report["provenance"]["checkpoint_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    for record in (report["provenance"], document["provenance"]):
        assert record["ramptool"] == ramptool.__version__ and record["torch"] == torch.__version__
        assert record["autoattack"].startswith("pyautoattack ") and record["date"][:2] == "20"
    assert report["settings"]["l1"]["apgd-ce"]["restarts"] == 5 and report["settings"]["l1"]["apgd-t"]["targets"] == 5
    assert report["settings"]["linf"]["apgd-t"] == {"targets": 9, "restarts": 1, "steps": 10, "loss": "dlr-targeted"}
    assert all(report["seconds"][n] > 0 and report["passes"][n]["forward"] > 0 for n in NORMS)
    accuracy = report["accuracy"]
    assert accuracy["union"] <= min(accuracy[n] for n in NORMS) <= max(accuracy[n] for n in NORMS) <= accuracy["clean"]

    markdown = (out / "report.md").read_text().splitlines()
    assert markdown[0] == "robust accuracy (%), [95% Wilson interval]"
    assert markdown[2] == "| model | clean | linf | l2 | l1 | union |"
    low, high = wilson_interval(accuracy["clean"], 16)
    assert markdown[4].startswith(f"| {name} | {100 * accuracy['clean']:.1f} [{100 * low:.1f}, {100 * high:.1f}] |")
    assert "eps linf 26/255, l2 1.5, l1 10" in markdown[-1] and "16 points" in markdown[-1]
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "report.pdf").read_bytes()[:5] == b"%PDF-" and b"<svg" in (out / "report.svg").read_bytes()
    title = union_plot_title(document["models"])
    assert name in title and "APGD-CE + APGD-T" in title and "eps linf 26/255" in title and "n=16" in title
    assert (out / name / FLAGS_FILE).is_file() and "union" in stdout

    # the adversarial examples that counted, re-checkable by anyone: in the ball and the box, misclassified
    model = load_model(clean_model_dir)
    with safe_open(str(adversarial / f"{name}.safetensors"), framework="pt") as handle:
        saved = {key: handle.get_tensor(key) for key in handle.keys()}
    for norm in NORMS:
        x_adv, x, label = saved[f"{norm}/x_adv"], saved[f"{norm}/x"], saved[f"{norm}/label"]
        assert len(x_adv) == round((accuracy["clean"] - accuracy[norm]) * 16) > 0
        assert (lp_norm(x_adv - x, norm) <= report["eps"][norm] * (1 + 1e-5)).all()
        assert ((x_adv >= 0) & (x_adv <= 1)).all()
        with torch.no_grad():
            assert (model(x_adv).argmax(1) != label).all()

    code, _, err = run_cli(args, capsys)
    assert code == 2 and "already holds a report; pass --overwrite" in err
    code, _, _ = run_cli(args + ["--resume", "--save-adv", str(tmp_path / "again")], capsys)
    with safe_open(str(tmp_path / "again" / f"{name}.safetensors"), framework="pt") as handle:
        assert code == 0 and torch.equal(handle.get_tensor("l1/x_adv"), saved["l1/x_adv"])
    code, _, _ = run_cli(args + ["--resume"], capsys)
    again = json.loads((out / "report.json").read_text())["models"][name]
    assert code == 0 and again["resumed"] == [entry["run"] for entry in report["runs"]]
    assert again["accuracy"] == accuracy
    (out / "report.json").unlink()
    code, _, err = run_cli(args, capsys)
    assert code == 2 and "holds an unfinished evaluation; pass --resume" in err
    code, _, _ = run_cli(args + ["--overwrite"], capsys)
    assert code == 0 and json.loads((out / "report.json").read_text())["models"][name]["resumed"] == []
    code, _, err = run_cli(args + ["--resume", "--save-adv", str(adversarial)], capsys)
    assert code == 2 and "did not keep those of its finished runs" in err


def test_cli_quick_upper_bound_says_so_in_every_table_file_and_title(clean_model_dir, tmp_path, capsys):
    out = tmp_path / "quick"
    code, stdout, _ = run_cli(["eval", "union", "--ckpt", str(clean_model_dir), "--attack", "apgd-ce",
                               "--n-examples", "16", "--steps", "10", "--out", str(out), "--device", "cpu"], capsys)
    assert code == 0, stdout
    reports = json.loads((out / "report.json").read_text())["models"]
    assert next(iter(reports.values()))["grade"] == "upper bound (not AutoAttack)"
    assert "upper bound (not AutoAttack)" in " ".join(stdout.split())
    assert (out / "report.md").read_text().startswith("robust accuracy (%), upper bound (not AutoAttack)")
    assert union_plot_title(reports).splitlines()[1].startswith("upper bound (not AutoAttack): APGD-CE")
    assert "| ≤" in (out / "report.md").read_text()

    code, stdout, _ = run_cli(["eval", "curve", "--ckpt", str(clean_model_dir), "--attack", "apgd-ce",
                               "--n-examples", "16", "--steps", "5", "--norms", "l2", "--out", str(out),
                               "--device", "cpu"], capsys)
    assert code == 0, stdout
    curve = json.loads((out / "curve.json").read_text())
    assert curve["grade"] == "upper bound (not AutoAttack)"
    assert "upper bound (not AutoAttack)" in curve_title({"m": curve})
    assert "upper bound (not AutoAttack)" in " ".join(stdout.split())


def test_n_examples_all_is_the_whole_test_split(fmnist_test):
    x, y = _test_points("fashion-mnist", None, "all", None, {})
    assert len(y) == 10000 and torch.equal(x[:256], fmnist_test[0])
    assert parse_n_examples("all") is None and parse_n_examples("12") == 12
    with pytest.raises(RamptoolError, match="--sample-seed draws a random subset"):
        _test_points("fashion-mnist", None, "all", 3, {})


def test_cli_eval_curve_writes_json_and_png(clean_model_dir, tmp_path, capsys):
    out = tmp_path / "curve"
    code, stdout, _ = run_cli(["eval", "curve", "--ckpt", str(clean_model_dir), "--n-examples", "16", "--steps", "5",
                               "--norms", "linf,l2", "--eps-values", "linf=0.05,0.1,0.2", "--multiples", "0.5,1",
                               "--out", str(out), "--device", "cpu"], capsys)
    assert code == 0, stdout
    curve = json.loads((out / "curve.json").read_text())
    assert curve["eps_values"] == {"linf": [0.05, 0.1, 0.2], "l2": [0.75, 1.5]}
    assert curve["reference_eps"] == {"linf": 0.2, "l2": 1.5}
    assert all(0 <= a <= curve["clean"] for values in curve["accuracy"].values() for a in values)
    assert curve["accuracy"]["linf"][2] <= curve["accuracy"]["linf"][0]
    assert (out / "curve.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_eval_curve_compares_several_checkpoints_in_one_plot(clean_model_dir, tmp_path, capsys):
    out = tmp_path / "curves"
    code, stdout, _ = run_cli(["eval", "curve", "--ckpt", str(clean_model_dir), "--ckpt", str(clean_model_dir),
                               "--n-examples", "16", "--steps", "5", "--norms", "l1", "--multiples", "0.5,1",
                               "--out", str(out), "--device", "cpu"], capsys)
    assert code == 0, stdout
    names = (clean_model_dir.name, f"{clean_model_dir.name}-2")
    curves = [json.loads((out / name / "curve.json").read_text()) for name in names]
    assert curves[0]["accuracy"] == curves[1]["accuracy"] and curves[0]["eps_values"] == {"l1": [5.0, 10.0]}
    assert curves[0]["checkpoint"] == str(clean_model_dir / "model.safetensors")
    assert (out / "curve.png").read_bytes()[:4] == b"\x89PNG" and not (out / "curve.json").exists()
    assert names[1] in stdout


@pytest.mark.parametrize("extra, message", [
    (["--eps", "linf=-0.1"], "eps for linf must be positive"),
    (["--norms", "linf,l3"], "unknown norm 'l3'"),
    (["--version", "plus"], "unknown version 'plus'"),
    (["--n-examples", "0"], "--n-examples must be positive"),
    (["--n-examples", "many"], "--n-examples must be a positive number or 'all'"),
    (["--attack", "fgsm"], "unknown evaluation attack 'fgsm'"),
])
def test_cli_eval_union_rejects_bad_input_in_one_line(clean_model_dir, tmp_path, capsys, extra, message):
    code, _, err = run_cli(["eval", "union", "--ckpt", str(clean_model_dir), "--out", str(tmp_path), "--device",
                            "cpu", *extra], capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and message in err
    assert "Traceback" not in err


def test_cli_eval_curve_rejects_bad_eps_values(clean_model_dir, tmp_path, capsys):
    code, _, err = run_cli(["eval", "curve", "--ckpt", str(clean_model_dir), "--eps-values", "l1=5,-1",
                            "--out", str(tmp_path)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "must be positive" in err


def test_per_epoch_evaluation_is_the_default_autoattack_grade_one(tmp_path, fmnist_test):
    from ramptool.training.config import TrainConfig
    from ramptool.training.trainer import train

    out = tmp_path / "run"
    train(TrainConfig(out=str(out), dataset="fashion-mnist", subset=256, method="clean", optimizer="adam", lr=1e-3,
                      schedule="constant", epochs=1, eps=dict(FMNIST_EPS), eval_n=12, eval_steps=5, progress=False,
                      overwrite=True, device="cpu"))
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    expected = evaluate_union(load_model(out), fmnist_test[0][:12], fmnist_test[1][:12], NORMS, FMNIST_EPS, steps=5)
    assert record["eval"] == expected["accuracy"] and expected["grade"] == "AutoAttack-grade"


def test_the_wilson_interval_is_not_empty_at_zero_and_stays_in_the_unit_interval():
    assert wilson_interval(0.0, 20)[0] == 0.0 and 0.13 < wilson_interval(0.0, 20)[1] < 0.18  # not 0.0 ± 0.0
    assert wilson_interval(1.0, 20)[1] == 1.0 and wilson_interval(1.0, 20)[0] < 1.0
    low, high = wilson_interval(0.5, 10_000)
    assert low == pytest.approx(0.490, abs=1e-3) and high == pytest.approx(0.510, abs=1e-3)


def test_the_default_out_is_a_folder_per_model_and_arguments_are_checked_before_it(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default --out is relative: never the checkout's runs/
    quick = ["--attack", "apgd-ce", "--n-examples", "8", "--steps", "3", "--device", "cpu", "--threads", "1"]
    code, _, err = run_cli(["eval", "union", "--ckpt", str(SHIPPED), *quick], capsys)
    assert code == 0, err
    assert (tmp_path / "runs" / "eval" / "fmnist-linf-at" / "report.json").is_file()
    other = tmp_path / "other.safetensors"
    other.write_bytes(SHIPPED.read_bytes())
    code, _, err = run_cli(["eval", "union", "--ckpt", str(other), *quick], capsys)  # a second model: no --out
    assert code == 0, err
    assert (tmp_path / "runs" / "eval" / "other" / "report.json").is_file()
    code, _, err = run_cli(["eval", "union", "--ckpt", str(SHIPPED), *quick, "--eps", "linf=abc"], capsys)
    assert code == 2 and "not a finite number: 'abc'" in err and "already holds" not in err
    code, _, err = run_cli(["eval", "union", "--ckpt", str(SHIPPED), *quick], capsys)  # the same model again
    assert code == 2 and "already holds a report" in err


def test_eval_union_writes_nothing_through_links_and_checks_save_adv_before_any_work(clean_model_dir, tmp_path,
                                                                                      capsys):
    out, elsewhere, name = tmp_path / "eval", tmp_path / "elsewhere", clean_model_dir.name
    args = ["eval", "union", "--ckpt", str(clean_model_dir), "--n-examples", "8", "--out", str(out), "--device",
            "cpu", "--steps", "5", "--norms", "linf"]
    elsewhere.mkdir()
    out.mkdir()
    (out / name).symlink_to(elsewhere)  # a per-model folder someone else pointed elsewhere
    code, stdout, err = run_cli(args, capsys)
    assert code == 2 and "is a symbolic link" in err and not list(elsewhere.iterdir()) and "evaluating" not in stdout
    (out / name).unlink()

    (tmp_path / "a-file").write_text("keep me")
    code, stdout, err = run_cli(args + ["--save-adv", str(tmp_path / "a-file")], capsys)
    assert code == 2 and "--save-adv" in err and "evaluating" not in stdout
    assert (tmp_path / "a-file").read_text() == "keep me"

    run = tmp_path / "run"  # a run folder whose checkpoint has the model's name
    run.mkdir()
    (run / f"{name}.safetensors").write_bytes(b"a run's checkpoint")
    code, stdout, err = run_cli(args + ["--save-adv", str(run)], capsys)
    assert code == 2 and "already holds" in err and "evaluating" not in stdout
    assert (run / f"{name}.safetensors").read_bytes() == b"a run's checkpoint"
    with FolderLock(tmp_path / "busy"):
        code, stdout, err = run_cli(args + ["--save-adv", str(tmp_path / "busy"), "--overwrite"], capsys)
    assert code == 2 and "in use by another ramptool process" in err and "evaluating" not in stdout
    assert not (tmp_path / "busy" / f"{name}.safetensors").exists()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 1.5])
def test_non_finite_or_out_of_box_pixels_through_the_python_api_are_refused(clean_model, fmnist_test, bad):
    x, y = fmnist_test[0][:4].clone(), fmnist_test[1][:4]
    x[1, 0, 3, 3] = bad
    with pytest.raises(RamptoolError, match=r"finite pixels in \[0, 1\]"):
        evaluate_union(clean_model, x, y, ["linf"], {"linf": 0.1}, steps=3)

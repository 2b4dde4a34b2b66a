"""Unseen adversaries (l0 Sparse-RS; Kang et al.'s fog, snow, Gabor, elastic, JPEG-l∞) and `eval unseen` (issue 16)."""

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import ramptool
from ramptool.attacks import attack_for
from ramptool.attacks.unseen import ADVERSARIES, changed_pixels, sparse_rs
from ramptool.attacks.unseen.elastic import Elastic, smoothing_kernel
from ramptool.attacks.unseen.fog import fog_field
from ramptool.attacks.unseen.gabor import gabor_kernels, gabor_noise
from ramptool.attacks.unseen.jpeg import jpeg_perturb
from ramptool.attacks.unseen.snow import snow_layer, streak_kernel, whiten
from ramptool.errors import RamptoolError
from ramptool.evaluation import unseen as unseen_module
from ramptool.evaluation.union import FLAGS_FILE, EvaluationInterrupted
from ramptool.evaluation.unseen import DEFAULT_BUDGETS, evaluate_unseen, parse_budgets

pytestmark = pytest.mark.usefixtures("one_thread")

SHIPPED = Path(__file__).resolve().parents[1] / "recipes" / "checkpoints" / "fmnist-linf-at.safetensors"
REFERENCE = Path(__file__).resolve().parent / "reference" / "uar_reference.safetensors"
BUDGETS = DEFAULT_BUDGETS["fashion-mnist"]
QUICK = {"steps": 10, "queries": 100, "batch_size": 64}


@pytest.fixture(scope="module")
def shipped():
    return ramptool.load_model(SHIPPED)


@pytest.fixture(scope="module")
def points(fmnist_test):
    x, y = fmnist_test
    return x[:48], y[:48]


def run_attack(model, name, x, y, seed=0, budget=None, **options):
    budget = BUDGETS[name] if budget is None else budget
    generator = torch.Generator().manual_seed(seed)
    if name == "l0":
        return sparse_rs(model, x, y, eps=budget, steps=options.get("steps", 100), generator=generator)
    return ADVERSARIES[name](model, x, y, budget, steps=options.get("steps", 10), keep="misclassified",
                             generator=generator)


def test_fields_match_advex_uar_on_the_same_parameters():
    """advex-uar's own code on fixed inputs (tests/reference/make_uar_reference.py) against ramptool's."""
    ref = load_file(str(REFERENCE))
    assert torch.allclose(fog_field(ref["fog_theta"], 64), ref["fog_field"], atol=1e-6)
    draws, flip = ref["snow_kernel_draws"].tolist(), bool(ref["snow_flip"][0])
    kernels = torch.stack([streak_kernel(int(r), int(c), int(w), blur, flip) for r, c, w, blur in draws])[None]
    assert torch.allclose(kernels, ref["snow_kernels"], atol=1e-6)
    assert torch.allclose(snow_layer(ref["snow_theta"], ref["snow_kernels"], 32, 32), ref["snow_layer"], atol=1e-5)
    gabor = gabor_kernels(ref["gabor_sides"].long(), ref["gabor_sigma"], ref["gabor_frequency"], ref["gabor_angle"])
    assert torch.allclose(gabor, ref["gabor_kernels"], atol=1e-6)
    noise = gabor_noise(ref["gabor_theta"].double(), ref["gabor_kernels"].double()).float()
    assert torch.allclose(noise, ref["gabor_noise"], atol=1e-5)
    warped = Elastic().render(ref["elastic_images"], ref["elastic_theta"], {"kernel": smoothing_kernel(32, 32)}, 1.0)
    assert torch.allclose(warped, ref["elastic_warped"], atol=1e-5)
    decoded = jpeg_perturb(ref["jpeg_images"], ref["jpeg_theta"])
    assert torch.allclose(decoded, ref["jpeg_decoded"], atol=1e-5)
    assert (decoded - jpeg_perturb(ref["jpeg_images"], torch.zeros_like(ref["jpeg_theta"]))).abs().max() > 0.05


@pytest.mark.parametrize("name", ["l0", "fog", "snow", "gabor", "elastic", "jpeg-linf"])
def test_each_adversary_lowers_accuracy_and_stays_in_its_budget(shipped, points, name):
    x, y = points
    result = run_attack(shipped, name, x, y)
    with torch.no_grad():
        clean = shipped(x).argmax(1) == y
        robust = (shipped(result.x_adv).argmax(1) == y) & clean
    assert robust.float().mean() <= clean.float().mean() - 0.1, "the adversary hardly changes anything"
    assert torch.equal(result.fooled & clean, ~robust & clean), "fooled must mean misclassified at the kept point"
    assert result.x_adv.shape == x.shape and 0 <= result.x_adv.min() and result.x_adv.max() <= 1
    budget = BUDGETS[name]
    if name == "l0":
        changed = changed_pixels(x, result.x_adv)
        assert changed.max() <= budget and changed.max() > 0
        moved = result.x_adv != x
        assert set(result.x_adv[moved].unique().tolist()) <= {0.0, 1.0}
        return
    adversary = ADVERSARIES[name]
    assert adversary.contains(result.theta, result.context, budget).all()
    assert torch.allclose(adversary.render(x, result.theta, result.context, budget), result.x_adv, atol=1e-6)
    if name == "fog":  # x_adv = (x + s fog) / (max x + s) with fog in [0,1]
        strength, x_max = budget / 255, x.flatten(1).amax(1).view(-1, 1, 1, 1)
        fog = (result.x_adv * (x_max + strength) - x) / strength
        assert fog.min() >= -1e-4 and fog.max() <= 1 + 1e-4
    if name == "gabor":  # a one-sided l∞ perturbation of at most eps / 255
        delta = result.x_adv - x
        assert delta.min() >= -1e-6 and delta.max() <= budget / 255 + 1e-6


@pytest.mark.parametrize("name", ["l0", "snow", "jpeg-linf"])
def test_adversaries_are_deterministic_with_a_seed(shipped, points, name):
    x, y = points[0][:16], points[1][:16]
    first, again, other = (run_attack(shipped, name, x, y, seed=seed, steps=3) for seed in (7, 7, 8))
    assert torch.equal(first.x_adv, again.x_adv) and torch.equal(first.loss, again.loss)
    assert not torch.equal(first.x_adv, other.x_adv)


@pytest.mark.parametrize("channels,height,width", [(3, 30, 22), (4, 17, 17)])
def test_any_channel_count_and_image_size(channels, height, width):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(channels, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(5))
    x = torch.rand(6, channels, height, width)
    y = model(x).argmax(1)
    for name, budget in BUDGETS.items():
        result = run_attack(model, name, x, y, budget=budget, steps=3)
        assert result.x_adv.shape == x.shape and 0 <= result.x_adv.min() and result.x_adv.max() <= 1
        if name == "l0":
            assert changed_pixels(x, result.x_adv).max() <= budget
        else:
            assert ADVERSARIES[name].contains(result.theta, result.context, budget).all()


def test_zero_parameters_leave_the_image_as_the_threat_model_defines():
    x = torch.rand(2, 1, 28, 28)
    assert torch.allclose(Elastic().render(x, torch.zeros(2, 2, 28, 28), {"kernel": smoothing_kernel(28, 28)}, 1.0),
                          x, atol=1e-5), "a zero flow must be the identity (align_corners=True)"
    assert torch.allclose(jpeg_perturb(x, torch.zeros(2, 16 * 64)), x, atol=1e-5), "grayscale JPEG is lossless"
    kernels = torch.rand(1, 7, 13, 13)
    snowless = snow_layer(torch.full((2, 7, 7, 7), 1e-9), kernels, 28, 28)
    assert snowless.abs().max() < 1e-20 and torch.equal(whiten(x[:, :, :1, :1] * 0), torch.full((2, 1, 1, 1), 0.125))


def test_registered_as_attacks_usable_for_training(shipped, tmp_path):
    from ramptool.checkpoints.format import read_metadata
    from ramptool.data.datasets import load_split
    from ramptool.training.config import TrainConfig
    from ramptool.training.trainer import train

    assert attack_for("uar", "fog").norm == "fog" and attack_for("sparse-rs", "l0").norm == "l0"
    summary = train(TrainConfig(out=str(tmp_path), init=str(SHIPPED), method="at", attack="uar", norms=["elastic"],
                                eps={"linf": 0.1, "l2": 1.5, "l1": 10.0, "elastic": 1.0}, subset=128,
                                batch_size=64, attack_steps=3, optimizer="adam", lr=1e-3, weight_decay=0.0,
                                schedule="constant", progress=False, device="cpu"))
    x, y = load_split("fashion-mnist", "train", subset=128).tensors()
    with torch.no_grad():
        clean = (shipped(x).argmax(1) == y).float().mean().item()
    assert summary["history"][-1]["acc_elastic"] < clean - 0.1, "the training batches were not attacked"
    assert read_metadata(tmp_path)["trained_norms"] == ["elastic"]


def test_union_is_the_pointwise_and_and_resume_continues(shipped, points, tmp_path, monkeypatch):
    x, y = points[0][:32], points[1][:32]
    names = ["l0", "fog", "elastic"]
    attack = unseen_module.adversary_flags
    calls = []

    def interrupted_at_elastic(model, x, y, name, *args):
        if name == "elastic":
            raise KeyboardInterrupt
        calls.append(name)
        return attack(model, x, y, name, *args)

    monkeypatch.setattr(unseen_module, "adversary_flags", interrupted_at_elastic)
    with pytest.raises(EvaluationInterrupted, match="--resume"):
        evaluate_unseen(shipped, x, y, names, BUDGETS, out_dir=tmp_path, **QUICK)
    monkeypatch.setattr(unseen_module, "adversary_flags", lambda model, x, y, name, *a: (
        calls.append(name) or attack(model, x, y, name, *a)))
    report = evaluate_unseen(shipped, x, y, names, BUDGETS, out_dir=tmp_path, resume=True, **QUICK)
    assert calls == names and report["resumed"] == ["l0", "fog"]

    with safe_open(str(tmp_path / FLAGS_FILE), framework="pt") as handle:
        flags = {key: handle.get_tensor(key) for key in handle.keys()}
    union = flags["clean"] & flags["l0"] & flags["fog"] & flags["elastic"]
    accuracy = report["accuracy"]
    assert accuracy["union"] == pytest.approx(union.float().mean().item())
    assert accuracy["mean"] == pytest.approx(sum(accuracy[n] for n in names) / 3)
    assert accuracy["union"] <= min(accuracy[n] for n in names) <= accuracy["clean"]
    fresh = evaluate_unseen(shipped, x, y, names, BUDGETS, **QUICK)
    assert fresh["accuracy"] == accuracy, "a resumed evaluation must equal an uninterrupted one"
    with pytest.raises(RamptoolError, match="fog eps"):
        evaluate_unseen(shipped, x, y, names, {**BUDGETS, "fog": 2 * BUDGETS["fog"]}, out_dir=tmp_path,
                        resume=True, **QUICK)


def test_cli_eval_unseen_end_to_end(tmp_path, ramptool_cli):
    corrupted = tmp_path / "corruptions"
    code, stdout, _ = ramptool_cli(["eval", "corruptions", "--ckpt", str(SHIPPED), "--n-examples", "12",
                                    "--corruptions", "fog,contrast", "--severities", "1", "--out", str(corrupted),
                                    "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"])
    assert code == 0, stdout
    out = tmp_path / "unseen"
    args = ["eval", "unseen", "--ckpt", str(SHIPPED), "--n-examples", "12", "--steps", "4", "--queries", "30",
            "--out", str(out), "--device", "cpu", "--batch-size", "64", "--corruptions-from", str(corrupted)]
    code, stdout, _ = ramptool_cli(args)
    assert code == 0, stdout
    report = json.loads((out / "report.json").read_text())["models"]["fmnist-linf-at"]
    assert report["n"] == 12 and report["adversaries"] == list(unseen_module.ADVERSARIES)
    assert report["budgets"] == BUDGETS and report["steps"] == 4 and report["queries"] == 30
    accuracy = report["accuracy"]
    assert accuracy["union"] <= min(accuracy[n] for n in report["adversaries"]) <= accuracy["clean"]
    assert "upper bound" in report["bound"] and "upper bound" in stdout
    expected = json.loads((corrupted / "corruptions.json").read_text())["mean"]
    assert accuracy["corruptions"] == expected and report["corruptions"]["corruptions"] == ["fog", "contrast"]
    markdown = (out / "report.md").read_text()
    assert markdown.startswith("| model | clean | l0 | fog | snow | gabor | elastic | jpeg-linf | mean | union | "
                               "corruptions |")
    assert (out / "report.png").read_bytes()[:4] == b"\x89PNG" and (out / "fmnist-linf-at" / FLAGS_FILE).is_file()
    code, _, _ = ramptool_cli(args + ["--resume"])
    again = json.loads((out / "report.json").read_text())["models"]["fmnist-linf-at"]
    assert code == 0 and again["resumed"] == report["adversaries"] and again["accuracy"] == accuracy


@pytest.mark.parametrize("extra, message", [
    (["--budgets", "rain=3"], "unknown unseen adversary 'rain'"),
    (["--budgets", "fog=-1"], "budget for fog must be positive"),
    (["--budgets", "l0=2.5"], "l0 budget is a number of pixels"),
    (["--adversaries", "fog,fog"], "adversary listed twice"),
    (["--steps", "0"], "--steps must be positive"),
    (["--corruptions-from", "."], "no `eval corruptions` report for"),
])
def test_cli_eval_unseen_rejects_bad_input_in_one_line(tmp_path, ramptool_cli, extra, message):
    code, _, err = ramptool_cli(["eval", "unseen", "--ckpt", str(SHIPPED), "--out", str(tmp_path), "--device", "cpu",
                                 *extra])
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err and "Traceback" not in err


def test_budgets_default_per_dataset_and_are_required_elsewhere():
    assert parse_budgets("fog=300", "cifar10", ["fog", "l0"]) == {"fog": 300.0, "l0": 9}
    with pytest.raises(RamptoolError, match="no default budgets for imagenet: pass --budgets with snow=..."):
        parse_budgets("fog=1", "imagenet", ["fog", "snow"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["l0", "fog", "snow", "gabor", "elastic", "jpeg-linf"])
def test_on_cuda_the_same_draws_give_the_same_attack(shipped, points, name):
    """A CPU generator draws the same numbers for a CUDA batch: the start is the same point, and the search
    ends at the same accuracy up to a few sign flips of float-level gradient differences."""
    import copy

    x, y = points
    gpu_model = copy.deepcopy(shipped).cuda()
    cpu, gpu = (run_attack(model, name, x.to(device), y.to(device), seed=5, steps=5)
                for model, device in ((shipped, "cpu"), (gpu_model, "cuda")))
    assert gpu.x_adv.is_cuda and 0 <= gpu.x_adv.min() and gpu.x_adv.max() <= 1
    if name == "l0":
        assert changed_pixels(x.cuda(), gpu.x_adv).max() <= BUDGETS[name]
    else:
        adversary = ADVERSARIES[name]
        assert adversary.contains(gpu.theta, gpu.context, BUDGETS[name]).all()
        start = run_attack(gpu_model, name, x.cuda(), y.cuda(), seed=5, steps=0)
        assert torch.allclose(start.x_adv.cpu(), run_attack(shipped, name, x, y, seed=5, steps=0).x_adv, atol=1e-4)
    assert abs(cpu.fooled.float().mean().item() - gpu.fooled.cpu().float().mean().item()) <= 0.1
    report = evaluate_unseen(gpu_model, x, y, [name], BUDGETS, **QUICK)
    assert report["accuracy"][name] <= report["accuracy"]["clean"]

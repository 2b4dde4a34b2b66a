"""Common corruptions: every corruption and severity on 28x28 grayscale and 32x32 RGB, caching, folders, CLI."""

import json

import numpy as np
import pytest
import torch

from ramptool.data.datasets import load_split
from ramptool.errors import RamptoolError
from ramptool.evaluation.corruptions import (
    CORRUPTIONS,
    SEVERITIES,
    corrupt_images,
    evaluate_corruption_folder,
    evaluate_corruption_tree,
    evaluate_corruptions,
    parse_corruptions,
    parse_severities,
    to_tensor,
    to_uint8_images,
)
from ramptool.evaluation.report import write_corruption_report

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def gray_points(fmnist_test):
    x, y = fmnist_test
    return x[:8], y[:8]


@pytest.fixture(scope="module")
def rgb_model_and_points():
    from ramptool.models import build_model

    torch.manual_seed(0)
    model = build_model("small-cnn", 10, (3, 32, 32), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)).eval()
    generator = torch.Generator().manual_seed(1)
    # smooth colour blobs rather than white noise, so blurs and noise change the images in different ways
    coarse = torch.rand(8, 3, 4, 4, generator=generator)
    x = torch.nn.functional.interpolate(coarse, size=(32, 32), mode="bilinear", align_corners=False)
    return model, x, torch.randint(0, 10, (8,), generator=generator)


def run_cli(args, capsys):
    from ramptool.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(args)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def check_complete(report, n):
    assert report["n"] == n and report["corruptions"] == list(CORRUPTIONS)
    assert report["severities"] == list(SEVERITIES)
    for corruption in CORRUPTIONS:
        values = [report["accuracy"][corruption][str(s)] for s in SEVERITIES]
        assert all(0.0 <= v <= 1.0 and (v * n) == round(v * n) for v in values)
        assert report["corruption_mean"][corruption] == pytest.approx(np.mean(values))
    assert report["mean"] == pytest.approx(np.mean(list(report["corruption_mean"].values())))


def test_every_corruption_and_severity_on_28px_grayscale(clean_model, gray_points, tmp_path, monkeypatch):
    x, y = gray_points
    images = to_uint8_images(x)
    assert images.shape == (8, 28, 28, 1)
    for corruption in CORRUPTIONS:
        strongest = corrupt_images(images, corruption, 5, seed=0)
        assert strongest.shape == images.shape and strongest.dtype == np.uint8
        assert (strongest != images).any(), f"{corruption} left the images unchanged"
    report = evaluate_corruptions(clean_model, x, y, seed=0, dataset="fashion-mnist", cache_dir=tmp_path)
    check_complete(report, 8)
    assert report["clean"] == pytest.approx((clean_model(x).argmax(1) == y).float().mean().item())
    assert len(list(tmp_path.glob("fashion-mnist-*.npy"))) == len(CORRUPTIONS) * len(SEVERITIES)
    # the second run reads every set from the cache and gives the same numbers
    from ramptool.evaluation import corruptions as module

    calls = []
    original = module.corrupt_images
    monkeypatch.setattr(module, "corrupt_images",
                        lambda *args, **kwargs: calls.append(args) or original(*args, **kwargs))
    again = evaluate_corruptions(clean_model, x, y, seed=0, dataset="fashion-mnist", cache_dir=tmp_path)
    assert calls == [] and again["accuracy"] == report["accuracy"]


def test_every_corruption_and_severity_on_32px_rgb(rgb_model_and_points, tmp_path):
    model, x, y = rgb_model_and_points
    report = evaluate_corruptions(model, x, y, seed=0)
    check_complete(report, 8)
    written = write_corruption_report(report, tmp_path)
    saved = json.loads(written["json"].read_text())
    assert saved["accuracy"] == report["accuracy"] and saved["mean"] == pytest.approx(report["mean"])
    assert written["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_corruptions_are_seeded(gray_points):
    images = to_uint8_images(gray_points[0])
    for corruption in ("gaussian_noise", "impulse_noise", "glass_blur", "frost"):
        first = corrupt_images(images, corruption, 3, seed=0)
        assert np.array_equal(first, corrupt_images(images, corruption, 3, seed=0)), corruption
        assert not np.array_equal(first, corrupt_images(images, corruption, 3, seed=1)), corruption
    state = np.random.get_state()[1].copy()
    corrupt_images(images, "gaussian_noise", 1, seed=0)
    assert np.array_equal(np.random.get_state()[1], state), "numpy's global generator was disturbed"


def test_folder_evaluation_matches_corrupting_in_memory(clean_model, gray_points, tmp_path):
    x, y = gray_points
    images = to_uint8_images(x)
    for corruption in ("fog", "gaussian_noise"):
        stacked = np.concatenate([corrupt_images(images, corruption, s, seed=0) for s in SEVERITIES])
        np.save(tmp_path / f"{corruption}.npy", stacked[..., 0])  # CIFAR-10-C style grayscale: (5N, H, W)
    np.save(tmp_path / "labels.npy", np.tile(y.numpy(), len(SEVERITIES)))
    from_folder = evaluate_corruption_folder(clean_model, tmp_path, input_shape=(1, 28, 28))
    in_memory = evaluate_corruptions(clean_model, x, y, ["fog", "gaussian_noise"], seed=0)
    assert from_folder["corruptions"] == ["gaussian_noise", "fog"]
    assert from_folder["accuracy"] == {c: in_memory["accuracy"][c] for c in ("gaussian_noise", "fog")}
    first_four = evaluate_corruption_folder(clean_model, tmp_path, ["fog"], [1, 5], n=4, input_shape=(1, 28, 28))
    expected = evaluate_corruptions(clean_model, x[:4], y[:4], ["fog"], [1, 5], seed=0)
    assert first_four["n"] == 4 and first_four["accuracy"] == expected["accuracy"]
    with pytest.raises(RamptoolError, match=r"shape \(1, 28, 28\).*takes \(3, 32, 32\)"):
        evaluate_corruption_folder(clean_model, tmp_path, input_shape=(3, 32, 32))
    with pytest.raises(RamptoolError, match="model predicts 5 classes"):
        evaluate_corruption_folder(clean_model, tmp_path, num_classes=5)
    with pytest.raises(RamptoolError, match="has no snow.npy"):
        evaluate_corruption_folder(clean_model, tmp_path, ["snow"])


def write_imagenet_c_tree(root, images, labels, corruptions, severities):
    """ImageNet-C's layout: <corruption>/<severity>/<class>/<image>, in PNG to keep the pixels exact."""
    from PIL import Image

    for corruption in corruptions:
        for severity in severities:
            corrupted = corrupt_images(images, corruption, severity, seed=0)
            for index, (image, label) in enumerate(zip(corrupted, labels)):
                target = root / corruption / str(severity) / f"n{label:08d}"
                target.mkdir(parents=True, exist_ok=True)
                Image.fromarray(image).save(target / f"ILSVRC2012_val_{index:08d}.png")


def test_imagenet_c_tree_matches_corrupting_in_memory(rgb_model_and_points, tmp_path):
    model, x, y = rgb_model_and_points
    names, severities = ["fog", "gaussian_noise"], [1, 3]
    write_imagenet_c_tree(tmp_path, to_uint8_images(x), y.tolist(), names, severities)
    classes = sorted(set(y.tolist()))  # folder order numbers the classes, as ImageFolder does
    remapped = torch.tensor([classes.index(label) for label in y.tolist()])
    from_tree = evaluate_corruption_folder(model, tmp_path, severities=severities, input_shape=(3, 32, 32),
                                           num_classes=10)
    in_memory = evaluate_corruptions(model, x, remapped, names, severities, seed=0)
    assert from_tree["corruptions"] == ["gaussian_noise", "fog"] and from_tree["n"] == 8
    assert from_tree["accuracy"] == {c: in_memory["accuracy"][c] for c in ("gaussian_noise", "fog")}

    subset = evaluate_corruption_tree(model, tmp_path, ["fog"], [1], n=3, input_shape=(3, 32, 32))
    assert subset["n"] == 3 and 3 * subset["accuracy"]["fog"]["1"] == round(3 * subset["accuracy"]["fog"]["1"])

    with pytest.raises(RamptoolError, match=r"shape \(3, 32, 32\).*takes \(3, 224, 224\)"):
        evaluate_corruption_tree(model, tmp_path, ["fog"], [1], input_shape=(3, 224, 224))
    with pytest.raises(RamptoolError, match="model predicts 2 classes"):
        evaluate_corruption_tree(model, tmp_path, ["fog"], [1], num_classes=2)
    with pytest.raises(RamptoolError, match="no fog/5/ folder"):
        evaluate_corruption_tree(model, tmp_path, ["fog"], [1, 5])
    from PIL import Image

    jpeg_dir = tmp_path / "snow" / "2" / "n00000007"  # ImageNet-C's own files are upper-case .JPEG
    jpeg_dir.mkdir(parents=True)
    Image.fromarray(to_uint8_images(x[:1])[0]).save(jpeg_dir / "ILSVRC2012_val_00000001.JPEG", quality=95)
    jpeg = evaluate_corruption_tree(model, tmp_path, ["snow"], [2], input_shape=(3, 32, 32))
    assert jpeg["n"] == 1 and jpeg["accuracy"]["snow"]["2"] in (0.0, 1.0)
    next((tmp_path / "gaussian_noise" / "3").rglob("*.png")).unlink()
    with pytest.raises(RamptoolError, match="every corruption and severity must hold the same files"):
        evaluate_corruption_tree(model, tmp_path, ["fog", "gaussian_noise"], [1, 3])


def test_names_and_severities_are_validated():
    assert parse_corruptions(None) == list(CORRUPTIONS)
    assert parse_corruptions("Fog, gaussian-noise") == ["fog", "gaussian_noise"]
    with pytest.raises(RamptoolError, match="unknown corruption 'rain'"):
        parse_corruptions("fog,rain")
    assert parse_severities("1,5") == [1, 5]
    for bad in ("0", "6", "1,1", "x"):
        with pytest.raises(RamptoolError):
            parse_severities(bad)
    round_trip = to_tensor(to_uint8_images(torch.tensor([[[[0.0, 0.5, 1.0]]]])))
    assert torch.equal(round_trip, torch.tensor([[[[0.0, 128.0, 255.0]]]]) / 255)


def test_cli_eval_corruptions_writes_table_json_and_heatmap(clean_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, _ = run_cli(["eval", "corruptions", "--ckpt", str(clean_model_dir), "--n-examples", "8",
                               "--corruptions", "fog,gaussian_noise", "--severities", "1,5", "--out", str(out),
                               "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"], capsys)
    assert code == 0, stdout
    report = json.loads((out / "corruptions.json").read_text())
    assert report["corruptions"] == ["fog", "gaussian_noise"] and report["severities"] == [1, 5]
    assert report["dataset"] == "fashion-mnist" and report["n"] == 8
    assert (out / "corruptions.png").read_bytes()[:4] == b"\x89PNG"
    assert "gaussian_noise" in stdout and "mean" in stdout


def test_cli_eval_corruptions_compares_several_checkpoints(clean_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, _ = run_cli(["eval", "corruptions", "--ckpt", str(clean_model_dir), "--ckpt", str(clean_model_dir),
                               "--n-examples", "8", "--corruptions", "fog", "--severities", "1,5", "--out", str(out),
                               "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"], capsys)
    assert code == 0, stdout
    first, second = (clean_model_dir.name, f"{clean_model_dir.name}-2")
    summary = json.loads((out / "corruptions-comparison.json").read_text())
    assert list(summary) == [first, second]
    reports = [json.loads((out / name / "corruptions.json").read_text()) for name in (first, second)]
    assert reports[0]["accuracy"] == reports[1]["accuracy"]  # the same model twice
    assert summary[first]["mean"] == reports[0]["mean"]
    assert (out / first / "corruptions.png").is_file()
    fog = f"{100 * reports[0]['corruption_mean']['fog']:.1f}"
    assert f"| fog | {fog} | {fog} |" in (out / "corruptions-comparison.md").read_text()


@pytest.mark.parametrize("extra, message", [
    (["--corruptions", "fog,rain"], "unknown corruption 'rain'"),
    (["--severities", "0,3"], "severities must be distinct integers 1-5"),
    (["--dataset", "cifar100"], "predicts 10 classes but cifar100 has 100"),
    (["--from-dir", "/nonexistent/cifar10-c"], "is not a folder"),
])
def test_cli_eval_corruptions_rejects_bad_input_in_one_line(clean_model_dir, tmp_path, capsys, extra, message):
    code, _, err = run_cli(["eval", "corruptions", "--ckpt", str(clean_model_dir), "--out", str(tmp_path),
                            "--device", "cpu", *extra], capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and message in err
    assert "Traceback" not in err


def test_cli_eval_corruptions_reads_an_imagenet_c_tree(rgb_model_and_points, tmp_path, capsys):
    model, x, y = rgb_model_and_points
    write_imagenet_c_tree(tmp_path / "tree", to_uint8_images(x), y.tolist(), ["fog"], [1, 2])
    weights = tmp_path / "state_dict.pt"
    torch.save(model.backbone.state_dict(), weights)  # a foreign state_dict, imported with --arch
    code, stdout, err = run_cli(["eval", "corruptions", "--ckpt", str(weights), "--arch", "small-cnn",
                                 "--dataset", "cifar10", "--from-dir", str(tmp_path / "tree"), "--severities",
                                 "1,2", "--n-examples", "5", "--out", str(tmp_path / "out"), "--device", "cpu"],
                                capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "corruptions.json").read_text())
    assert report["corruptions"] == ["fog"] and report["n"] == 5 and report["source"] == str(tmp_path / "tree")


def _truncate(path, keep=200):
    path.write_bytes(path.read_bytes()[:keep])


@pytest.mark.parametrize("damage, message", [
    (lambda folder: _truncate(folder / "fog.npy"), "fog.npy is not a readable .npy array"),
    (lambda folder: (folder / "labels.npy").write_bytes(b"not numpy"), "labels.npy is not a readable .npy array"),
    (lambda folder: np.save(folder / "labels.npy", np.array([0.5, 1.5])), "non-empty list of integer labels"),
    (lambda folder: np.save(folder / "labels.npy", np.zeros(0, np.int64)), "non-empty list of integer labels"),
    (lambda folder: np.save(folder / "fog.npy", np.zeros((0, 28, 28), np.uint8)), "expected 5*N uint8 images"),
    (lambda folder: np.save(folder / "labels.npy", np.array([{"x": 1}]), allow_pickle=True), "not a readable"),
])
def test_a_damaged_or_empty_corrupted_set_is_one_line_and_exit_code_2(clean_model_dir, tmp_path, capsys, damage,
                                                                       message):
    folder = tmp_path / "c10c"
    folder.mkdir()
    np.save(folder / "fog.npy", np.zeros((5 * 4, 28, 28), np.uint8))
    np.save(folder / "labels.npy", np.zeros(4, np.int64))
    damage(folder)
    code, _, err = run_cli(["eval", "corruptions", "--ckpt", str(clean_model_dir), "--from-dir", str(folder),
                            "--out", str(tmp_path / "out"), "--device", "cpu"], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_a_damaged_image_in_an_imagenet_c_tree_is_named(rgb_model_and_points, tmp_path):
    model, x, y = rgb_model_and_points
    write_imagenet_c_tree(tmp_path, to_uint8_images(x), y.tolist(), ["fog"], [1])
    damaged = sorted((tmp_path / "fog" / "1").rglob("*.png"))[3]
    _truncate(damaged, 60)
    with pytest.raises(RamptoolError, match=f"{damaged} is not a readable image"):
        evaluate_corruption_tree(model, tmp_path, ["fog"], [1])


def test_cells_at_or_below_chance_are_named_as_measuring_nothing(clean_model, tmp_path):
    from ramptool.evaluation.corruptions import evaluate_corruptions
    from ramptool.evaluation.report import chance_note

    x, y = load_split("fashion-mnist", "test", subset=64).tensors()
    blank = torch.zeros_like(x)  # an "image" with the signal removed: every model is at chance on it
    report = evaluate_corruptions(clean_model, torch.cat([x, blank]), torch.cat([y, y]), ["brightness"], [5],
                                  cache_dir=None)
    assert report["chance"] == float(torch.bincount(torch.cat([y, y])).max()) / 128
    blank_only = evaluate_corruptions(clean_model, blank, y, ["brightness"], [5], cache_dir=None)
    assert blank_only["at_chance"] == ["brightness s5"]
    assert "measure nothing" in chance_note("m", blank_only) and chance_note("m", {"at_chance": []}) is None

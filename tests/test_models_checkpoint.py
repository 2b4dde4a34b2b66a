"""Backbones behind the Normalized wrapper, and checkpoints: round trip, imports, refusals, atomic writes."""

import json
import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ramptool.checkpoints.export import sidecar_path
from ramptool.checkpoints.format import read_metadata, read_weights, save_checkpoint
from ramptool.checkpoints.loading import load_checkpoint
from ramptool.cli import app
from ramptool.data.datasets import CIFAR10_MEAN, CIFAR10_STD
from ramptool.errors import RamptoolError
from ramptool.models import Normalized, bind_arch_options, build_model
from ramptool.models.preact_resnet import PreActResNet18
from ramptool.models.small_cnn import SmallCNN
from ramptool.plugins.options import parse_assignments
from ramptool.runtime.files import atomic_write, file_sha256
from ramptool.training.recipes import RECIPES_DIR

FMNIST_METADATA = {"arch": "small-cnn", "arch_options": {}, "num_classes": 10, "input_shape": [1, 28, 28],
                   "mean": [0.286], "std": [0.353], "dataset": "fashion-mnist", "method": "ramp", "epochs": 3,
                   "eps": {"linf": 0.1, "l2": 1.5, "l1": 10.0}}


def randomize_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """BatchNorm statistics that are not the defaults, so a lost buffer is noticed; returns the model in eval mode."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 1.5)
                module.num_batches_tracked.fill_(17)
    return model.eval()


def randomized_preact_resnet18(num_classes=10) -> PreActResNet18:
    return randomize_batchnorm(PreActResNet18(num_classes))


@pytest.fixture(scope="module")
def preact_source() -> PreActResNet18:
    """One randomized PreAct ResNet-18 shared by the import tests (building it is the slow part)."""
    return randomized_preact_resnet18()


def assert_same_tensors(actual: dict, expected: dict):
    assert actual.keys() == expected.keys()
    for name, tensor in expected.items():
        assert actual[name].dtype == tensor.dtype, name
        assert torch.equal(actual[name], tensor), name


class WritesMarkerWhenUnpickled:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


# ---------------------------------------------------------------- models

def test_normalized_feeds_the_backbone_standardised_pixels():
    backbone = SmallCNN(10, 3, 32).eval()
    mean, std = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
    model = Normalized(backbone, mean, std).eval()
    x = torch.rand(4, 3, 32, 32)

    by_hand = torch.stack([(x[:, c] - mean[c]) / std[c] for c in range(3)], dim=1)

    torch.testing.assert_close(model(x), backbone(by_hand), rtol=0, atol=1e-6)
    assert not torch.allclose(model(x), backbone(x))
    # mean and std travel with the weights, so a checkpoint knows its own normalisation
    assert {"mean", "std"} <= model.state_dict().keys()


@pytest.mark.parametrize("arch, in_chans, image_size, options", [
    ("small-cnn", 1, 28, {}),
    ("small-cnn", 3, 32, {}),
    ("small-cnn", 1, 32, {}),
    ("small-cnn", 3, 28, {}),
    ("preact-resnet18", 3, 32, {}),
    ("preact-resnet18-softplus", 3, 32, {}),
    ("wrn-28-10", 3, 32, {}),
    ("timm:resnet18", 3, 32, {}),
    ("timm:resnet18", 3, 32, {"cifar_stem": True}),
])
def test_backbones_give_one_logit_per_class(arch, in_chans, image_size, options):
    model = build_model(arch, 10, (in_chans, image_size, image_size), (0.5,) * in_chans, (0.25,) * in_chans,
                        **options).eval()
    with torch.no_grad():
        logits = model(torch.rand(2, in_chans, image_size, image_size))
    assert logits.shape == (2, 10)
    assert torch.isfinite(logits).all()


def test_timm_cifar_stem_keeps_full_resolution_in_the_stem():
    plain = build_model("timm:resnet18", 10, (3, 32, 32), CIFAR10_MEAN, CIFAR10_STD).backbone
    cifar = build_model("timm:resnet18", 10, (3, 32, 32), CIFAR10_MEAN, CIFAR10_STD, cifar_stem=True).backbone
    assert (plain.conv1.kernel_size, plain.conv1.stride) == ((7, 7), (2, 2))
    assert (cifar.conv1.kernel_size, cifar.conv1.stride) == ((3, 3), (1, 1))
    assert isinstance(cifar.maxpool, torch.nn.Identity)


def test_timm_fixed_size_models_are_built_for_the_dataset_image_size():
    model = build_model("timm:vit_tiny_patch16_224", 10, (1, 28, 28), None, None, patch_size=4, depth=1).eval()

    assert model.backbone.patch_embed.img_size == (28, 28)
    assert model.backbone.patch_embed.grid_size == (7, 7)
    with torch.no_grad():
        assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_arch_options_parse_to_typed_values():
    given = parse_assignments(["cifar_stem=true", "drop-rate=0.1", "depth=2", "global_pool=avg", "act=None"],
                              "--arch-option")
    parsed = bind_arch_options("timm:resnet18", given)

    assert parsed == {"cifar_stem": True, "drop_rate": 0.1, "depth": 2, "global_pool": "avg", "act": None}
    with pytest.raises(RamptoolError, match="must look like name=value"):
        parse_assignments(["cifar_stem"], "--arch-option")


def test_arch_options_reach_the_backbone_from_the_cli_and_are_recorded(tmp_path, capsys):
    from ramptool.cli import main

    options = {"patch_size": 7, "depth": 1, "embed_dim": 32, "num_heads": 2}
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--arch", "timm:vit_tiny_patch16_224", *[f"--arch-option={k}={v}" for k, v in options.items()],
              "--method", "clean", "--subset", "16", "--batch-size", "16", "--optimizer", "adam", "--lr", "1e-3",
              "--schedule", "constant", "--out", str(tmp_path / "vit"), "--no-progress", "--device", "cpu"])
    assert exit_info.value.code == 0, capsys.readouterr()

    model, metadata = load_checkpoint(tmp_path / "vit")
    assert metadata["arch_options"] == options and metadata["normalize"] == "dataset"
    assert len(model.backbone.blocks) == 1 and model.backbone.patch_embed.grid_size == (4, 4)


def test_unknown_timm_model_is_a_clear_error():
    with pytest.raises(RamptoolError, match="timm cannot build 'no_such_net'"):
        build_model("timm:no_such_net", 10, (3, 32, 32), CIFAR10_MEAN, CIFAR10_STD)


# ---------------------------------------------------------------- checkpoint round trip and import

def test_checkpoint_round_trip_keeps_metadata_and_every_tensor(tmp_path):
    model = build_model("small-cnn", 10, (1, 28, 28), FMNIST_METADATA["mean"], FMNIST_METADATA["std"])
    path = tmp_path / "model.safetensors"

    save_checkpoint(path, model, FMNIST_METADATA)
    loaded, metadata = load_checkpoint(tmp_path)  # a run folder resolves to its model.safetensors

    assert {k: v for k, v in metadata.items() if k != "ramptool_version"} == FMNIST_METADATA
    assert metadata["ramptool_version"]
    assert_same_tensors(loaded.state_dict(), model.state_dict())
    assert not loaded.training
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(loaded(x), model.eval()(x))


def test_checkpoint_round_trip_keeps_batchnorm_buffers(tmp_path, preact_source):
    model = Normalized(preact_source, CIFAR10_MEAN, CIFAR10_STD)
    metadata = {"arch": "preact-resnet18", "num_classes": 10, "input_shape": [3, 32, 32],
                "mean": list(CIFAR10_MEAN), "std": list(CIFAR10_STD)}
    save_checkpoint(tmp_path / "ckpt.safetensors", model, metadata)

    loaded, _ = load_checkpoint(tmp_path / "ckpt.safetensors")

    assert_same_tensors(loaded.state_dict(), model.state_dict())


@pytest.mark.parametrize("layout", ["plain", "module-prefix", "nested-state-dict"])
def test_an_eat_style_preact_state_dict_imports_with_the_original_logits(tmp_path, layout, preact_source):
    """E-AT and RAMP save PreAct ResNet-18 state_dicts of networks fed [0,1] pixels: the import adds nothing."""
    source = preact_source
    weights = source.state_dict()
    if layout == "module-prefix":  # what nn.DataParallel checkpoints look like
        weights = {f"module.{name}": tensor for name, tensor in weights.items()}
    saved = {"state_dict": weights, "epoch": 200} if layout == "nested-state-dict" else weights
    path = tmp_path / "preact.pt"
    torch.save(saved, path)

    model, metadata = load_checkpoint(path, arch="preact-resnet18", dataset="cifar10")

    assert_same_tensors(model.backbone.state_dict(), source.state_dict())
    assert {"mean", "std"}.isdisjoint(model.state_dict())
    assert metadata["arch"] == "preact-resnet18" and metadata["num_classes"] == 10
    assert (metadata["normalize"], metadata["mean"], metadata["std"]) == ("none", None, None)
    assert metadata["source"] == {"state_dict": str(path.resolve()), "sha256": file_sha256(path)}
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), source(x))


@pytest.mark.parametrize("normalize, mean, std", [
    ("dataset", CIFAR10_MEAN, CIFAR10_STD),
    ("0.5,0.4,0.3/0.2,0.25,0.3", (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)),
    ("0.5/0.25", (0.5,), (0.25,)),
])
def test_normalize_puts_exactly_that_normalisation_in_front_of_the_network(tmp_path, preact_source, normalize,
                                                                           mean, std):
    torch.save(preact_source.state_dict(), tmp_path / "preact.pt")

    model, metadata = load_checkpoint(tmp_path / "preact.pt", arch="preact-resnet18", dataset="cifar10",
                                      normalize=normalize)

    assert metadata["normalize"] == normalize
    assert (metadata["mean"], metadata["std"]) == (list(mean), list(std))
    x = torch.rand(2, 3, 32, 32)
    by_hand = (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    with torch.no_grad():
        assert torch.equal(model(x), preact_source(by_hand))


@pytest.mark.parametrize("normalize, message", [
    ("imagenet", "takes none, dataset or MEAN/STD"),
    ("0.5,0.5/0.2,0.2", "give 1 or 3 values"),
    ("0.5,0.5,0.5/0.2,0,0.2", "STD values must be positive"),
    ("a,b,c/1,1,1", "MEAN must be comma-separated finite numbers"),
])
def test_a_bad_normalize_is_a_clear_error(tmp_path, normalize, message):
    torch.save(SmallCNN(10, 3, 32).state_dict(), tmp_path / "small.pt")

    with pytest.raises(RamptoolError, match=message):
        load_checkpoint(tmp_path / "small.pt", arch="small-cnn", dataset="cifar10", normalize=normalize)


def test_a_ramptool_checkpoint_refuses_import_options_that_contradict_it(tmp_path):
    model = build_model("small-cnn", 10, (1, 28, 28), FMNIST_METADATA["mean"], FMNIST_METADATA["std"])
    save_checkpoint(tmp_path / "model.safetensors", model, FMNIST_METADATA)

    load_checkpoint(tmp_path, normalize="dataset", arch="small-cnn")  # what it records: fine
    # checkpoints written before --normalize existed record only mean and std
    with pytest.raises(RamptoolError, match=r"describes itself; --normalize none \(it records 0.286/0.353\)"):
        load_checkpoint(tmp_path, normalize="none")
    with pytest.raises(RamptoolError, match=r"--arch preact-resnet18 \(it records small-cnn\)"):
        load_checkpoint(tmp_path, arch="preact-resnet18")


# ---------------------------------------------------------------- export

@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_export_writes_the_bare_network_and_imports_back_exactly(tmp_path, preact_source, suffix, capsys):
    from ramptool.cli import main

    wrapped = Normalized(preact_source, CIFAR10_MEAN, CIFAR10_STD)
    metadata = {"arch": "preact-resnet18", "arch_options": {}, "num_classes": 10, "input_shape": [3, 32, 32],
                "normalize": "dataset", "mean": list(CIFAR10_MEAN), "std": list(CIFAR10_STD), "dataset": "cifar10"}
    save_checkpoint(tmp_path / "run" / "model.safetensors", wrapped, metadata)
    out = tmp_path / f"exported{suffix}"

    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(tmp_path / "run"), str(out)])
    assert exit_info.value.code == 0, capsys.readouterr()

    assert read_metadata(out) is None  # no ramptool keys: a plain state_dict
    assert_same_tensors(read_weights(out), preact_source.state_dict())
    plain = PreActResNet18()
    plain.load_state_dict(read_weights(out))  # plain PyTorch takes it as it is
    sidecar = json.loads(sidecar_path(out).read_text())
    assert sidecar["normalize"] == "dataset" and sidecar["mean"] == list(CIFAR10_MEAN)
    assert sidecar["import"] == f"--ckpt {out.name} --arch preact-resnet18 --dataset cifar10 --normalize dataset"

    with pytest.raises(SystemExit):
        main(["info", str(out)])
    assert f"import again with --ckpt {out.name} --arch preact-resnet18" in " ".join(capsys.readouterr().out.split())

    reimported, _ = load_checkpoint(out, arch=sidecar["arch"], dataset=sidecar["dataset"],
                                    normalize=sidecar["normalize"])
    assert_same_tensors(reimported.state_dict(), wrapped.state_dict())
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(reimported(x), wrapped.eval()(x))
    with pytest.raises(SystemExit) as exit_info:  # never replaces a file silently
        main(["export", str(tmp_path / "run"), str(out)])
    assert exit_info.value.code == 2 and "exists; pass --overwrite" in capsys.readouterr().err


# ---------------------------------------------------------------- refusals and clear errors

@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_a_malicious_pickle_is_refused_without_running_code(tmp_path, writer):
    marker = tmp_path / "pwned"
    payload = {"conv1.weight": WritesMarkerWhenUnpickled(marker)}
    path = tmp_path / "evil.pt"
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))  # the protocol torch's legacy format uses

    with pytest.raises(RamptoolError, match="refused"):
        load_checkpoint(path, arch="preact-resnet18", dataset="cifar10")
    with pytest.raises(RamptoolError, match="refused"):
        read_weights(path)
    assert not marker.exists()


def test_a_state_dict_that_does_not_fit_the_arch_names_the_mismatch(tmp_path, preact_source):
    weights = dict(preact_source.state_dict())
    del weights["linear.weight"]
    weights["head.extra.weight"] = torch.zeros(3)
    torch.save(weights, tmp_path / "odd.pt")

    with pytest.raises(RamptoolError) as error:
        load_checkpoint(tmp_path / "odd.pt", arch="preact-resnet18", dataset="cifar10")

    message = str(error.value)
    assert "do not fit the architecture" in message
    assert "1 missing (e.g. linear.weight)" in message
    assert "1 unexpected (e.g. head.extra.weight)" in message


def test_weights_for_another_number_of_classes_name_the_shape(tmp_path):
    torch.save(randomized_preact_resnet18(num_classes=100).state_dict(), tmp_path / "c100.pt")

    shape_mismatch = r"of another shape \(e.g. linear.weight: \(100, 512\) vs \(10, 512\)\)"
    with pytest.raises(RamptoolError, match=shape_mismatch):
        load_checkpoint(tmp_path / "c100.pt", arch="preact-resnet18", dataset="cifar10")


def test_a_small_cnn_state_dict_does_not_load_as_a_resnet(tmp_path):
    torch.save(SmallCNN(10, 3, 32).state_dict(), tmp_path / "small.pt")

    names = r"missing \(e.g. conv1.weight\).*unexpected \(e.g. features.0.weight\)"
    with pytest.raises(RamptoolError, match=names):
        load_checkpoint(tmp_path / "small.pt", arch="preact-resnet18", dataset="cifar10")


def test_a_plain_state_dict_without_arch_asks_for_it(tmp_path):
    torch.save(SmallCNN(10, 1, 28).state_dict(), tmp_path / "plain.pt")

    with pytest.raises(RamptoolError, match="plain state_dict without ramptool metadata: pass --arch"):
        load_checkpoint(tmp_path / "plain.pt")


def test_random_bytes_are_not_a_checkpoint(tmp_path):
    path = tmp_path / "noise.pt"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())

    with pytest.raises(RamptoolError, match=str(path)):
        load_checkpoint(path, arch="small-cnn", dataset="fashion-mnist")


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_a_truncated_checkpoint_is_a_clear_error(tmp_path, suffix):
    model = build_model("small-cnn", 10, (1, 28, 28), FMNIST_METADATA["mean"], FMNIST_METADATA["std"])
    path = tmp_path / f"cut{suffix}"
    if suffix == ".safetensors":
        save_checkpoint(path, model, FMNIST_METADATA)
    else:
        torch.save(model.backbone.state_dict(), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    with pytest.raises(RamptoolError, match=f"{path} is not a readable checkpoint"):
        load_checkpoint(path, arch="small-cnn", dataset="fashion-mnist")


def test_a_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(RamptoolError, match=f"checkpoint not found: {tmp_path / 'model.safetensors'}"):
        load_checkpoint(tmp_path)


# ---------------------------------------------------------------- atomic writes

def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"the previous checkpoint")

    def write_half_then_crash(tmp):
        with open(tmp, "wb") as handle:
            handle.write(b"half a new che")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, write_half_then_crash)

    assert path.read_bytes() == b"the previous checkpoint"
    assert list(tmp_path.iterdir()) == [path]


def test_save_checkpoint_failing_midway_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model = build_model("small-cnn", 10, (1, 28, 28), FMNIST_METADATA["mean"], FMNIST_METADATA["std"])
    path = tmp_path / "model.safetensors"
    save_checkpoint(path, model, FMNIST_METADATA)
    previous = path.read_bytes()

    def interrupted_save_file(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(previous[:100])
        raise KeyboardInterrupt

    monkeypatch.setattr("ramptool.checkpoints.format.save_file", interrupted_save_file)
    with torch.no_grad():
        model.backbone.features[0].weight.zero_()
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, model, {**FMNIST_METADATA, "epochs": 4})

    assert path.read_bytes() == previous
    assert list(tmp_path.iterdir()) == [path]
    assert load_checkpoint(path)[1]["epochs"] == 3


def test_a_successful_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"old")

    atomic_write(path, lambda tmp: Path(tmp).write_bytes(b"new"))

    assert path.read_bytes() == b"new"
    assert list(tmp_path.iterdir()) == [path]


@pytest.mark.parametrize("metadata, message", [
    ("{not json", "its ramptool metadata is not valid JSON"),
    ('["small-cnn"]', "its ramptool metadata is not a JSON object"),
    (json.dumps({k: v for k, v in FMNIST_METADATA.items() if k != "arch"}), "metadata lacks 'arch'"),
    (json.dumps({**FMNIST_METADATA, "input_shape": "1x28x28"}), "metadata 'input_shape' should be a list"),
    (json.dumps({**FMNIST_METADATA, "num_classes": -3}), "do not describe a model"),
    (json.dumps({**FMNIST_METADATA, "arch_options": {"depth": 3}}), "backbone 'small-cnn' has no option 'depth'"),
])
def test_damaged_checkpoint_metadata_is_one_clear_error(tmp_path, capsys, metadata, message):
    from safetensors.torch import save_file

    from ramptool.cli import main

    tensors = build_model("small-cnn", 10, (1, 28, 28), (0.286,), (0.353,)).state_dict()
    save_file({k: v.contiguous() for k, v in tensors.items()}, tmp_path / "model.safetensors",
              metadata={"ramptool": metadata})
    with pytest.raises(RamptoolError, match=message.replace("{", r"\{").replace("}", r"\}")):
        load_checkpoint(tmp_path)
    with pytest.raises(SystemExit) as exited:
        main(["eval", "union", "--ckpt", str(tmp_path), "--dataset", "fashion-mnist", "--n-examples", "4",
              "--out", str(tmp_path / "eval"), "--device", "cpu"])
    stderr = capsys.readouterr().err
    assert exited.value.code == 2 and message in stderr and len(stderr.strip().splitlines()) == 1, stderr


# ---------------------------------------------------------------- ramptool info

def test_info_says_what_input_the_checkpoint_expects_and_prints_the_metadata(tmp_path):
    model = build_model("small-cnn", 10, (1, 28, 28), FMNIST_METADATA["mean"], FMNIST_METADATA["std"])
    save_checkpoint(tmp_path / "model.safetensors", model, FMNIST_METADATA)

    result = CliRunner().invoke(app, ["info", str(tmp_path)])
    as_json = CliRunner().invoke(app, ["info", "--json", str(tmp_path)])

    assert result.exit_code == 0, result.output
    first_line = " ".join(result.output.split("{")[0].split())
    assert first_line == ("input: [0,1] pixels (1x28x28), normalised inside as (x - mean) / std with mean [0.286] "
                          "and std [0.353] (normalize: 0.286/0.353)")
    assert as_json.exit_code == 0, as_json.output
    printed = json.loads(as_json.output)
    assert {k: v for k, v in printed.items() if k != "ramptool_version"} == FMNIST_METADATA


def test_info_on_a_plain_state_dict_says_how_to_import_it(tmp_path):
    torch.save(SmallCNN(10, 1, 28).state_dict(), tmp_path / "plain.pt")

    result = CliRunner().invoke(app, ["info", str(tmp_path / "plain.pt")])

    assert result.exit_code == 0, result.output
    tensor_count = len(SmallCNN(10, 1, 28).state_dict())
    output = " ".join(result.output.split())  # rich wraps long lines
    assert f"plain state_dict, {tensor_count} tensors, no ramptool metadata" in output
    assert "--arch ARCH --dataset NAME --normalize none|dataset|MEAN/STD (default none" in output


def test_info_labels_the_recorded_evaluation_with_its_attack_and_an_unlabelled_one_as_an_upper_bound(tmp_path):
    model = build_model("small-cnn", 10, (1, 28, 28), FMNIST_METADATA["mean"], FMNIST_METADATA["std"])
    accuracy = {"clean": 0.78, "linf": 0.58, "l2": 0.45, "l1": 0.08, "union": 0.07}
    labelled = {"eval": accuracy, "eval_attack": "APGD-CE + APGD-T, AutoAttack's settings on ramptool's APGD "
                                                 "(100 steps), first 500 test points"}
    for name, metrics in (("old", {"eval": accuracy}), ("new", labelled)):
        save_checkpoint(tmp_path / f"{name}.safetensors", model, {**FMNIST_METADATA, "metrics": metrics})
    old = " ".join(CliRunner().invoke(app, ["info", str(tmp_path / "old.safetensors")]).output.split())
    new = " ".join(CliRunner().invoke(app, ["info", str(tmp_path / "new.safetensors")]).output.split())
    assert "last evaluation: clean 78.0, linf 58.0, l2 45.0, l1 8.0, union 7.0: upper bound (not AutoAttack)" in old
    assert "union 7.0 (APGD-CE + APGD-T, AutoAttack's settings on ramptool's APGD (100 steps), first 500" in new
    assert "upper bound" not in new


def test_the_shipped_checkpoint_records_an_autoattack_grade_evaluation_and_no_ramp_settings():
    metadata = read_metadata(RECIPES_DIR / "checkpoints" / "fmnist-linf-at.safetensors")
    assert metadata["method"] == "at" and "lambda" not in metadata and "pairing" not in metadata
    assert "pair" not in metadata["threat_model"]
    assert metadata["metrics"]["eval_attack"].startswith("APGD-CE + APGD-T, AutoAttack's settings")
    assert metadata["metrics"]["eval"]["union"] < 0.15  # the one-run APGD-CE said 0.266


@pytest.mark.parametrize("change, message", [
    ({"arch_options": {"checkpoint_path": "/etc/passwd"}}, "an option that loads files or weights"),
    ({"arch_options": {"pretrained": True}}, "an option that loads files or weights"),
    ({"arch_options": {"width": 10 ** 6}}, "beyond 65536"),
    ({"arch_options": {"act": "../../x"}}, "sets act to the text"),
    ({"num_classes": 10 ** 12}, "do not describe a model"),
    ({"input_shape": [1, 200_000, 200_000]}, "do not describe a model"),
    ({"mean": [0.5, 0.5]}, "'mean' should be 1 finite number(s)"),
    ({"std": [0.0]}, "'std' should be 1 finite number(s) above 0"),
    ({"mean": "0.5"}, "'mean' should be 1 finite number(s)"),
])
def test_a_crafted_header_is_refused_in_one_line_before_anything_is_built(tmp_path, change, message, monkeypatch):
    import ramptool.checkpoints.loading as loading

    model = build_model("small-cnn", 10, (1, 28, 28), FMNIST_METADATA["mean"], FMNIST_METADATA["std"])
    save_checkpoint(tmp_path / "crafted.safetensors", model, {**FMNIST_METADATA, **change})
    monkeypatch.setattr(loading, "build_model", lambda *a, **k: pytest.fail("a model was built from the header"))
    with pytest.raises(RamptoolError, match=re.escape(message)):
        load_checkpoint(tmp_path / "crafted.safetensors")


def test_a_deeply_nested_header_is_one_line(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "deep.safetensors"), metadata={"ramptool": "[" * 200_000})
    with pytest.raises(RamptoolError, match="nested too deeply"):
        read_metadata(tmp_path / "deep.safetensors")


@pytest.mark.parametrize("change", [{"arch_options": {"width": 65_536}}, {"num_classes": 100_000},
                                    {"input_shape": [1, 4096, 4096]}])
def test_header_sizes_within_bounds_are_checked_against_the_tensors_before_anything_is_allocated(tmp_path, change,
                                                                                                 monkeypatch):
    """Bounded sizes can still ask for far more than the file holds (width 65536: ~10^11 weights): the network is
    first built on the meta device, where nothing is allocated, and compared with the file's tensors."""
    import ramptool.checkpoints.loading as loading

    model = build_model("small-cnn", 10, (1, 28, 28), FMNIST_METADATA["mean"], FMNIST_METADATA["std"])
    save_checkpoint(tmp_path / "crafted.safetensors", model, {**FMNIST_METADATA, **change})
    build = loading.build_model

    def only_on_meta(*args, **kwargs):
        assert torch.empty(0).device.type == "meta", "a model was allocated from an unchecked header"
        return build(*args, **kwargs)

    monkeypatch.setattr(loading, "build_model", only_on_meta)
    with pytest.raises(RamptoolError, match="do not fit the architecture"):
        load_checkpoint(tmp_path / "crafted.safetensors")


def test_files_that_are_no_checkpoint_or_cannot_be_read_are_one_line_that_says_so(tmp_path):
    (tmp_path / "notes.txt").write_text("abc")
    with pytest.raises(RamptoolError, match="is not a checkpoint: neither a safetensors file nor one torch.save"):
        read_weights(tmp_path / "notes.txt")
    with pytest.raises(RamptoolError, match="cannot read /proc/self/mem"):
        load_checkpoint("/proc/self/mem", arch="small-cnn", dataset="fashion-mnist")

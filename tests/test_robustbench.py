"""The RobustBench bridge: zoo models load with RobustBench's own logits, fine-tune, and export back to RobustBench.

Weights cannot be downloaded here, so the zoo models are built by RobustBench's own zoo with seeded random weights
and saved in RobustBench's folder layout, in the two layouts its files come in.
"""

import numpy as np
import pytest
import torch
from test_data import write_cifar10_python
from test_models_checkpoint import randomize_batchnorm

from ramptool.checkpoints.format import read_metadata, read_weights
from ramptool.checkpoints.loading import load_checkpoint
from ramptool.errors import RamptoolError
from ramptool.models.robustbench import import_robustbench, parse
from ramptool.runtime.files import file_sha256

# the smallest zoo entries of the two families at the top of the leaderboard (both WRN-28-10)
WIDE_RESNET = "robustbench:cifar10/Linf/Carmon2019Unlabeled"  # WideResNet with TRADES' unused sub_block1
DM_WIDE_RESNET = "robustbench:cifar10/Linf/Gowal2020Uncovering_28_10_extra"  # DeepMind's, normalises inside
ZOO = [WIDE_RESNET, DM_WIDE_RESNET]


def run_cli(args, capsys):
    from ramptool.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(args)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


@pytest.fixture(scope="module")
def zoo(tmp_path_factory, one_thread):
    """{spec: RobustBench's network} with seeded random weights, saved under a model dir in RobustBench's layout."""
    model_dir = tmp_path_factory.mktemp("robustbench_models")
    networks = {}
    torch.manual_seed(0)
    for spec in ZOO:
        model = parse(spec)
        network = randomize_batchnorm(model.entry()["model"]())
        path = model.weight_files(model_dir)[0]
        path.parent.mkdir(parents=True, exist_ok=True)
        if spec == WIDE_RESNET:  # TRADES-era files: {'state_dict': {'module.<name>': tensor}}
            torch.save({"state_dict": {f"module.{k}": v for k, v in network.state_dict().items()}}, path)
        else:
            torch.save(network.state_dict(), path)
        networks[spec] = network
    return model_dir, networks


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    write_cifar10_python(root, np.random.default_rng(0))
    return root


@pytest.mark.parametrize("spec", ZOO)
def test_a_zoo_model_gives_robustbench_s_own_logits(zoo, spec):
    model_dir, networks = zoo
    zoo_model = parse(spec)
    robustbench = import_robustbench()
    reference = robustbench.utils.load_model(zoo_model.name, model_dir=str(model_dir), dataset="cifar10",
                                             threat_model="Linf")

    model, metadata = load_checkpoint(spec, model_dir=model_dir)

    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        logits = model(x)
        assert torch.equal(logits, reference(x))
        assert torch.equal(logits, networks[spec](x))
    assert model.mean is None, "RobustBench's input convention is kept: no normalisation around the network"
    assert metadata["arch"] == spec and metadata["normalize"] == "none" and metadata["trained_norms"] == ["linf"]
    weights = zoo_model.weight_files(model_dir)[0]
    assert metadata["source"]["weights"] == [{"path": str(weights.resolve()), "sha256": file_sha256(weights)}]
    assert metadata["source"]["robustbench"]["model_name"] == zoo_model.name


def test_robustbench_state_dicts_import_as_plain_files_too(zoo):
    """A RobustBench .pt given as a plain state_dict: the WideResNet with ramptool's wrn-28-10 (sub_block1 layout),
    the DeepMind WideResNet with its zoo architecture as --arch."""
    model_dir, networks = zoo
    x = torch.rand(2, 3, 32, 32)
    trades_file = parse(WIDE_RESNET).weight_files(model_dir)[0]

    with pytest.raises(RamptoolError, match="49 unexpected .*add --arch-option sub_block1=true"):
        load_checkpoint(trades_file, arch="wrn-28-10", dataset="cifar10")
    native, _ = load_checkpoint(trades_file, arch="wrn-28-10", dataset="cifar10", arch_options={"sub_block1": True})
    deepmind, metadata = load_checkpoint(parse(DM_WIDE_RESNET).weight_files(model_dir)[0], arch=DM_WIDE_RESNET)

    with torch.no_grad():
        assert torch.equal(native(x), networks[WIDE_RESNET](x))
        assert torch.equal(deepmind(x), networks[DM_WIDE_RESNET](x))
    assert metadata["dataset"] == "cifar10" and metadata["source"]["robustbench"]["model_name"].startswith("Gowal")


def test_finetune_steps_from_a_zoo_model_and_exports_back_to_robustbench(zoo, cifar_dir, tmp_path, capsys):
    """From the DeepMind WideResNet, the family ramptool has no native backbone for (the slowest to fine-tune
    here, so the only one: the other family's weights pass through the same bridge)."""
    model_dir, networks = zoo
    spec = DM_WIDE_RESNET
    zoo_model = parse(spec)
    run = tmp_path / "run"

    code, _, err = run_cli(["finetune", "--ckpt", spec, "--model-dir", str(model_dir), "--dataset", "cifar10",
                            "--data-dir", str(cifar_dir), "--subset", "2", "--batch-size", "2", "--method", "at",
                            "--norms", "linf", "--attack-steps", "1", "--lr", "0.01", "--out", str(run),
                            "--no-progress", "--device", "cpu"], capsys)
    assert code == 0, err

    metadata = read_metadata(run)
    assert metadata["init"] == spec and metadata["arch"] == spec and metadata["finished"]
    assert metadata["normalize"] == "none" and metadata["mean"] is None
    assert metadata["source"]["robustbench"]["model_name"] == zoo_model.name
    weights_file = zoo_model.weight_files(model_dir)[0]
    assert metadata["source"]["weights"][0]["sha256"] == file_sha256(weights_file)
    tuned = read_weights(run)
    original = networks[spec].state_dict()
    assert any(not torch.equal(tuned[f"backbone.{k}"], v) for k, v in original.items()), "the step changed nothing"

    back = tmp_path / "back"  # RobustBench reads what export writes, from its own folder layout
    exported = zoo_model.weight_files(back)[0]
    code, _, err = run_cli(["export", str(run), str(exported)], capsys)
    assert code == 0, err
    reference = import_robustbench().utils.load_model(zoo_model.name, model_dir=str(back), dataset="cifar10",
                                                      threat_model="Linf")
    fine_tuned, _ = load_checkpoint(run)  # rebuilt from the zoo architecture, without RobustBench's files
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(fine_tuned(x), reference(x))


def test_missing_weights_say_where_to_put_them_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    models, work = tmp_path / "models", tmp_path / "work"
    models.mkdir(), work.mkdir()
    monkeypatch.chdir(work)  # the default --out is relative: never the checkout's runs/

    code, _, err = run_cli(["eval", "union", "--ckpt", WIDE_RESNET, "--model-dir", str(models)], capsys)

    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "downloads are off (HF_HUB_OFFLINE=1)" in err
    assert f"put RobustBench's Carmon2019Unlabeled.pt in {models.resolve()}/cifar10/Linf/" in err
    assert list(models.iterdir()) == [], "nothing is created where the weights were looked for"


@pytest.mark.parametrize("spec, message", [
    ("robustbench:cifar10/Carmon2019Unlabeled", "write robustbench:<dataset>/<threat_model>/<model_name>"),
    ("robustbench:cifar10/L1/Carmon2019Unlabeled", "no cifar10 threat model 'L1'; known: L2, Linf, corruptions"),
    ("robustbench:svhn/Linf/Carmon2019Unlabeled", "no dataset 'svhn'"),
    ("robustbench:cifar10/linf/Carmon2019Unlabelled", "did you mean Carmon2019Unlabeled"),
])
def test_a_wrong_zoo_name_is_a_clear_error(spec, message):
    with pytest.raises(RamptoolError, match=message):
        load_checkpoint(spec)


def test_zoo_models_keep_their_input_convention_and_load_tensors_only(zoo, monkeypatch):
    with pytest.raises(RamptoolError, match="RobustBench's input convention: drop --arch, --arch-option and "
                                            "--normalize"):
        load_checkpoint(WIDE_RESNET, model_dir=zoo[0], normalize="dataset")
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # would let RobustBench's torch.load unpickle
    with pytest.raises(RamptoolError, match="unset TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"):
        load_checkpoint(WIDE_RESNET, model_dir=zoo[0])


def test_info_on_a_zoo_model_shows_its_convention_and_weights(zoo, tmp_path, capsys):
    model_dir, _ = zoo

    code, out, err = run_cli(["info", WIDE_RESNET, "--model-dir", str(model_dir)], capsys)
    _, missing, _ = run_cli(["info", WIDE_RESNET, "--model-dir", str(tmp_path)], capsys)

    assert code == 0, err
    text = " ".join(out.split())
    assert "input: [0,1] pixels (3x32x32) fed to the network as they are (normalize: none)" in text
    assert f"{parse(WIDE_RESNET).weight_files(model_dir)[0]} (present)" in text
    assert "(missing)" in " ".join(missing.split())

"""One validation layer (issue 14): CLI flags, recipes, resumed state and Python become a TrainConfig through the
same checks; the CLI options derive from TrainConfig; dataset defaults; recipes shipped in the package."""

import dataclasses
import json

import pytest
import torch

import ramptool.training.config
from ramptool.checkpoints.format import read_metadata, read_weights
from ramptool.cli import main
from ramptool.errors import RamptoolError
from ramptool.training.config import FIELDS, TrainConfig, flag_of, knob_of
from ramptool.training.recipes import RECIPES_DIR, recipe_keys, shipped_recipes
from ramptool.training.resolve import resolve_config
from ramptool.training.sources import build_train_config
from ramptool.training.trainer import Trainer, train

pytestmark = pytest.mark.usefixtures("one_thread")

SHIPPED_CHECKPOINT = RECIPES_DIR / "checkpoints" / "fmnist-linf-at.safetensors"


def run_main(args, capsys) -> tuple[int, str, str]:
    """The console script in-process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exited:
        main(args)
    captured = capsys.readouterr()
    return exited.value.code, captured.out, captured.err


def tiny(out, **overrides) -> dict:
    """Settings of a run that trains in about a second (clean training of the small CNN on 64 points)."""
    return dict(out=str(out), subset=64, batch_size=32, method="clean", schedule="constant", lr=1e-3,
                optimizer="adam", weight_decay=0.0, progress=False, device="cpu", **overrides)


@pytest.mark.parametrize("text,message", [
    ('epochs = "two"', "epochs must be a positive integer, got 'two'"),
    ("pair = 5", "pair must be a list of norms such as linf,l1, got 5"),
    ('arch_options = "wide"', "arch_options must be a table of name = value options, got 'wide'"),
    ("lambda = -1", "lambda must be a number >= 0, got -1"),
    ("momentum = 1.5", "momentum must be a number in [0, 1], got 1.5"),
    ("subset = 1.5", "subset must be a positive integer, got 1.5"),
    ('eps = "linf=1e400"', "eps: not a finite number: '1e400'"),
    ("eps = 5", "eps must be norm=value entries"),
    ('norms = ["linf", 5]', "norms must be a list of norms"),
    ("channels-last = 1", "channels-last must be true or false, got 1"),
    ('method = "nope"', "method must be one of: at, avg, clean, e-at"),
    ("learning_rate = 0.1", "unknown key 'learning_rate'"),
    ('out = "elsewhere"', "unknown key 'out'"),
    ("lr = 0.1\nlr = 0.2", "is not valid TOML"),
])
def test_a_bad_recipe_value_names_the_recipe_and_the_key(tmp_path, text, message):
    recipe = tmp_path / "r.toml"
    recipe.write_text(text + "\n")
    with pytest.raises(RamptoolError) as error:
        build_train_config({"out": str(tmp_path / "run")}, recipe=recipe)
    assert str(error.value).startswith(f"recipe {recipe}")
    assert message in str(error.value)


def test_a_recipe_that_is_not_utf8_is_one_clear_error(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_bytes(b'method = "\xff\xfe"\n')
    with pytest.raises(RamptoolError, match="not valid TOML"):
        build_train_config({"out": str(tmp_path)}, recipe=recipe)


@pytest.mark.parametrize("args,message", [
    (["--momentum", "2"], "--momentum must be a number in [0, 1], got 2"),
    (["--epochs", "two"], "--epochs must be a positive integer, got two"),
    (["--lr", "nan"], "--lr must be a positive number, got nan"),
    (["--eps", "linf=1e400"], "--eps: not a finite number: '1e400'"),
    (["--seed", "-1"], "--seed must be an integer >= 0, got -1"),
    (["--device", "gpu"], "--device must be auto, cpu, cuda or cuda:N, got gpu"),
    (["--optimizer", "lbfgs"], "--optimizer must be one of: sgd, adam, got lbfgs"),
    (["--arch-option", "width"], "--arch-option 'width' must look like name=value"),
    (["--config", "no-such-recipe"], "recipe not found: no-such-recipe"),
    (["--resume", "--overwrite"], "choose one"),
])
def test_a_bad_flag_is_one_line_naming_the_flag_and_exit_code_2(tmp_path, capsys, args, message):
    code, _, stderr = run_main(["train", "--out", str(tmp_path / "run"), *args], capsys)
    assert code == 2
    assert message in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert not (tmp_path / "run").exists()  # nothing was started


def test_python_api_goes_through_the_same_checks(tmp_path):
    with pytest.raises(RamptoolError, match=r"^TrainConfig: momentum must be a number in \[0, 1\], got 2$"):
        TrainConfig(out=str(tmp_path), momentum=2)
    with pytest.raises(RamptoolError, match="TrainConfig: epochs must be a positive integer, got '3'"):
        TrainConfig(out=str(tmp_path), epochs="3")
    cfg = TrainConfig(out=tmp_path, pair="l1,linf", eps={"l2": "1/2"})
    assert cfg.out == str(tmp_path) and cfg.pair == ["l1", "linf"]
    assert cfg.eps == {"l2": 0.5}  # as given: the defaults come from resolving it
    assert resolve_config(cfg).eps == {"linf": 0.2, "l2": 0.5, "l1": 10.0}  # the dataset's eps fill the rest


def test_constructing_a_config_reads_nothing_and_resolving_it_checks_everything(tmp_path, monkeypatch):
    def no_registry():
        raise AssertionError("TrainConfig(...) consulted the plugin registry")

    monkeypatch.setattr(ramptool.training.config, "registry", no_registry)
    monkeypatch.setattr(ramptool.training.config, "known_norms", no_registry)
    missing = tmp_path / "nowhere.safetensors"
    cfg = TrainConfig(out=str(tmp_path / "run"), init=str(missing), method="not-a-method", pair="linf,l1")
    assert cfg.dataset is None and cfg.lr is None  # nothing filled in: no file was read
    monkeypatch.undo()
    with pytest.raises(RamptoolError, match="^TrainConfig: method must be one of: .*got 'not-a-method'$"):
        resolve_config(cfg)
    resolved = resolve_config(TrainConfig(out=str(tmp_path / "run"), method="ramp"))
    assert resolved.dataset == "fashion-mnist" and resolved.lr is not None and resolved.lam == 2.0
    assert resolve_config(resolved) is resolved  # resolving twice changes nothing
    with pytest.raises(RamptoolError, match="resolved configuration"):
        Trainer(TrainConfig(out=str(tmp_path / "run")))


def test_every_knob_has_its_flag_default_and_recipe_key(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    code, help_text, _ = run_main(["finetune", "-h"], capsys)
    assert code == 0
    recipe_fields = set(recipe_keys().values())
    for name in FIELDS:
        assert flag_of(name) in help_text, name
        assert (name in recipe_fields) == knob_of(name).recipe, name
    for shown in ("[default: 128]", "[default: ramp]", "[default: linf,l1]", "[default: (the dataset's)]",
                  "[default: progress]", "[required]"):
        assert shown in help_text, shown
    _, train_help, _ = run_main(["train", "--help"], capsys)
    assert "│ --ckpt " not in train_help and "│ --epochs " in train_help


def test_version_flag(capsys):
    from ramptool import __version__

    code, out, _ = run_main(["--version"], capsys)
    assert code == 0 and out.strip() == f"ramptool {__version__}"


def test_defaults_come_from_the_dataset_and_the_mode_and_give_way_to_recipe_and_flags(tmp_path):
    finetune = resolve_config(TrainConfig(out=str(tmp_path), init=str(SHIPPED_CHECKPOINT)))
    assert (finetune.optimizer, finetune.lr, finetune.weight_decay) == ("adam", 5e-4, 0.0)
    assert (finetune.lam, finetune.schedule) == (0.5, "piecewise-ft")
    scratch = resolve_config(TrainConfig(out=str(tmp_path)))
    assert (scratch.optimizer, scratch.lr, scratch.lam, scratch.schedule) == ("adam", 1e-3, 2.0, "cosine")
    cifar = resolve_config(TrainConfig(out=str(tmp_path), dataset="cifar10"))
    assert (cifar.optimizer, cifar.lr, cifar.weight_decay, cifar.schedule) == ("sgd", 0.05, 5e-4, "static")
    assert cifar.eps["linf"] == pytest.approx(8 / 255)
    recipe = tmp_path / "r.toml"
    recipe.write_text('optimizer = "sgd"\nlr = 0.01\nepochs = 3\n[arch_options]\nwidth = 8\n')
    merged = build_train_config({"out": str(tmp_path), "lr": "0.02", "arch_options": ["depth=2"]}, recipe=recipe)
    assert (merged.optimizer, merged.lr, merged.epochs) == ("sgd", 0.02, 3)
    assert resolve_config(dataclasses.replace(merged, arch_options={})).weight_decay == 0.0  # the dataset's
    assert merged.arch_options == {"width": 8, "depth": "2"}  # merged key by key; the backbone types "2"


def test_recipe_paths_are_relative_to_the_recipe_and_shipped_recipes_load_by_name(tmp_path, capsys):
    folder = tmp_path / "recipes"
    (folder / "models").mkdir(parents=True)
    (folder / "models" / "start.safetensors").symlink_to(SHIPPED_CHECKPOINT)
    (folder / "r.toml").write_text('ckpt = "models/start.safetensors"\npair-from = "/abs/pair.json"\n')
    cfg = build_train_config({"out": str(tmp_path / "run")}, recipe=folder / "r.toml")
    assert cfg.init == str(folder / "models" / "start.safetensors") and cfg.pair_from == "/abs/pair.json"
    for name, path in shipped_recipes().items():
        loaded = build_train_config({"out": str(tmp_path / name)}, recipe=name)
        assert loaded.init is None or read_metadata(loaded.init)["arch"] == "small-cnn", path
    assert build_train_config({"out": str(tmp_path)}, recipe="fmnist-ramp-finetune").init == str(SHIPPED_CHECKPOINT)
    code, listing, _ = run_main(["recipes"], capsys)
    assert code in (0, None) and "fmnist-ramp-finetune" in listing and "fmnist-linf-at.safetensors" in listing


def test_train_refuses_a_checkpoint_and_finetune_needs_one(tmp_path, capsys):
    code, _, stderr = run_main(["train", "--config", "fmnist-ramp-finetune", "--out", str(tmp_path)], capsys)
    assert code == 2 and "use `ramptool finetune --ckpt`" in stderr
    code, _, stderr = run_main(["finetune", "--out", str(tmp_path)], capsys)
    assert code == 2 and "finetune needs --ckpt" in stderr


def test_resume_refuses_conflicting_flags_and_extends_epochs_when_asked(tmp_path):
    out = tmp_path / "run"
    train(TrainConfig(**tiny(out, seed=1)))
    flags = {"out": str(out), "resume": True}
    with pytest.raises(RamptoolError) as error:
        build_train_config({**flags, "lr": "0.1", "method": "max", "seed": "1", "device": "cpu"})
    message = str(error.value)
    assert "--lr 0.1 (saved: 0.001); --method max (saved: clean) differ" in message
    assert "--seed" not in message.split("differ")[0]  # the same as saved
    assert "--device" not in message.split("differ")[0]  # free to change
    with pytest.raises(RamptoolError, match="TrainConfig: lr must be a positive number"):
        TrainConfig(out=str(out), resume=True, lr=-1.0)
    with pytest.raises(RamptoolError, match=r"lr 0.5 \(saved: 0.001\) differs"):
        train(TrainConfig(out=str(out), resume=True, lr=0.5))

    extended = build_train_config({**flags, "epochs": "2"})
    assert extended.epochs == 2 and extended.seed == 1 and extended.method == "clean"
    train(extended)
    straight = tmp_path / "straight"
    train(TrainConfig(**tiny(straight, seed=1, epochs=2)))
    a, b = read_weights(out), read_weights(straight)
    assert all(torch.equal(a[k], b[k]) for k in a)  # constant lr: one epoch, then one more = two epochs
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    with pytest.raises(RamptoolError, match=r"--epochs 1 \(saved: 2\) differs"):
        build_train_config({**flags, "epochs": "1"})


def test_a_tampered_saved_configuration_is_named(tmp_path):
    out = tmp_path / "run"
    train(TrainConfig(**tiny(out)))
    state = torch.load(out / "state.pt", weights_only=True)
    state["config"]["epochs"] = "many"
    torch.save(state, out / "state.pt")
    with pytest.raises(RamptoolError, match=f"^{out / 'state.pt'}: epochs must be a positive integer, got 'many'"):
        train(TrainConfig(out=str(out), resume=True))
    state["config"] = {**state["config"], "epochs": 1, "warp_drive": True}
    torch.save(state, out / "state.pt")
    with pytest.raises(RamptoolError, match="unknown setting 'warp_drive'"):
        train(TrainConfig(out=str(out), resume=True))

"""The plugin registry: built-ins, a real third-party plugin installed with pip, clashes, broken plugins."""

import csv
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ramptool import hookimpl
from ramptool.checkpoints.format import read_metadata, read_weights
from ramptool.errors import RamptoolError
from ramptool.plugins.registry import Registry, build_plugin_manager

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_PLUGIN = REPO / "plugins" / "ramptool-example"
RAMPTOOL_SCRIPT = Path(sys.executable).parent / "ramptool"

BUILT_INS = {
    "attack": {"apgd-linf", "apgd-l2", "apgd-l1", "pgd-linf", "pgd-l2", "pgd-l1", "fgsm-rs", "msd"},
    "pairing-loss": {"kl", "mse", "cosine"},
    "combiner": {"none", "gp", "gp-step"},
    "backbone": {"small-cnn", "preact-resnet18", "preact-resnet18-softplus", "wrn-28-10", "wrn-34-20",
                 "wrn-70-16", "timm:<name>"},
    "dataset": {"fashion-mnist", "mnist", "cifar10", "cifar100", "imagenet", "imagefolder"},
    "method": {"ramp", "e-at", "max", "avg", "msd", "sat", "at", "clean"},
}


def run_ramptool(*args, pythonpath=None, timeout=120):
    # wide enough that rich never wraps a table row's first line; one thread (see conftest.one_thread)
    env = dict(os.environ, COLUMNS="250", OMP_NUM_THREADS="1")
    # this checkout first: the console script of a shared venv would otherwise import another ramptool
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in [REPO, *(pythonpath or [])])
    return subprocess.run([str(RAMPTOOL_SCRIPT), *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def table_rows(stdout: str) -> dict[tuple[str, str], str]:
    """(kind, name) -> plugin for every row of the `ramptool plugins` table."""
    rows = {}
    for line in stdout.splitlines():
        cells = [cell.strip() for cell in line.split("│")[1:-1]]
        if len(cells) == 4 and cells[0] and cells[0] != "kind":
            rows[(cells[0], cells[1])] = cells[2]
    return rows


def write_fake_distribution(folder: Path, dist_name: str, plugin_name: str, module: str, module_source: str):
    """A minimal installed distribution (dist-info with METADATA and entry_points.txt) plus its module."""
    (folder / f"{module}.py").write_text(module_source)
    dist_info = folder / f"{dist_name}-0.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist_name}\nVersion: 0.0\n")
    (dist_info / "entry_points.txt").write_text(f"[ramptool]\n{plugin_name} = {module}\n")


@pytest.fixture(scope="module")
def example_plugin_site(tmp_path_factory):
    """The example plugin installed for real by pip into a folder that subprocesses put on PYTHONPATH."""
    # build from a copy: an in-tree setuptools build would leave build/ and *.egg-info in the repository
    source = tmp_path_factory.mktemp("example-source") / "ramptool-example"
    shutil.copytree(EXAMPLE_PLUGIN, source)
    site = tmp_path_factory.mktemp("example-site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(site), str(source)], check=True, timeout=300)
    return site


def test_registry_lists_every_built_in_under_its_module():
    registry = Registry(build_plugin_manager(entry_points=False))
    for kind, expected in BUILT_INS.items():
        assert expected <= set(registry.names(kind)), kind
    for component in registry.all():
        assert component.plugin.startswith("ramptool."), component
        assert component.description, f"{component.kind} {component.name} has no description"


@pytest.mark.parametrize("kind", sorted(BUILT_INS))
def test_unknown_name_lists_the_known_ones(kind):
    registry = Registry(build_plugin_manager(entry_points=False))
    first_known = re.escape(sorted(BUILT_INS[kind])[0])
    with pytest.raises(RamptoolError, match=rf"unknown {kind} 'nope'; known: .*{first_known}"):
        registry.get(kind, "nope")


EXAMPLE_COMPONENTS = {("attack", "margin-linf"): "step_scale: float = 2.5", ("attack", "margin-l1"): "l1_topk",
                      ("pairing-loss", "js"): "temperature: float = 1.0",
                      ("combiner", "clip-grad"): "max_norm: float = 1.0", ("backbone", "tiny-mlp"): "hidden: int = 64",
                      ("dataset", "fashion-mnist-14"): "-", ("method", "trades"): "beta: float = 6.0",
                      ("logger", "csv"): "-"}


def test_installed_example_plugin_is_listed_with_its_options(example_plugin_site):
    assert (example_plugin_site / "ramptool_example" / "__init__.py").is_file()
    entry_points = next(example_plugin_site.glob("ramptool_example-*.dist-info")) / "entry_points.txt"
    assert "example = ramptool_example" in entry_points.read_text()

    result = run_ramptool("plugins", "-v", pythonpath=[example_plugin_site])

    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr and "skipped" not in result.stdout
    rows = {}
    for line in result.stdout.splitlines():
        cells = [cell.strip() for cell in line.split("│")[1:-1]]
        if len(cells) == 5 and cells[0] and cells[0] != "kind":
            rows[(cells[0], cells[1])] = cells
    for key, option in EXAMPLE_COMPONENTS.items():
        kind, name, plugin, description, first_option = rows[key]
        assert plugin == "example" and description, key
        assert option in first_option or option in result.stdout, key
    assert rows[("pairing-loss", "kl")][2] == "ramptool.pairing"
    assert "Jensen-Shannon divergence" in result.stdout


def test_every_example_component_works_from_the_cli_in_train_finetune_and_eval(example_plugin_site, tmp_path):
    """The pip-installed example plugin, each of its seven components (with an option, but the logger), through the
    command line."""
    eps = ["--eps", "linf=0.1,l2=0.75,l1=2.5"]
    common = ["--dataset", "fashion-mnist-14", "--attack", "margin", "--attack-steps", "3", "--subset", "1000",
              "--batch-size", "100", "--optimizer", "adam", "--no-progress", "--device", "cpu", *eps]
    scratch, tuned = tmp_path / "trades", tmp_path / "ramp-js"

    train = run_ramptool("train", *common, "--arch", "tiny-mlp", "--arch-option", "hidden=32", "--method", "trades",
                         "--method-option", "beta=3", "--norms", "linf,l1", "--attack-option", "step_scale=2",
                         "--combiner", "clip-grad", "--combiner-option", "max_norm=5", "--lr", "2e-3",
                         "--epochs", "2", "--out", str(scratch), pythonpath=[example_plugin_site])
    assert train.returncode == 0, train.stderr
    metadata = read_metadata(scratch)
    assert (metadata["dataset"], metadata["arch"], metadata["method"], metadata["attack"], metadata["combiner"]) == (
        "fashion-mnist-14", "tiny-mlp", "trades", "margin", "clip-grad")
    assert metadata["arch_options"] == {"hidden": 32} and metadata["method_options"] == {"beta": 3.0}
    assert metadata["attack_options"] == {"step_scale": 2.0} and metadata["combiner_options"] == {"max_norm": 5.0}
    assert tuple(read_weights(scratch)["backbone.1.weight"].shape) == (32, 196)  # hidden=32 on 14x14 inputs
    epochs = [json.loads(line) for line in (scratch / "metrics.jsonl").read_text().splitlines()]
    assert all({"loss_kl", "grad_norm", "clipped", "acc_linf", "acc_l1"} <= record.keys() for record in epochs)
    assert epochs[1]["loss"] < epochs[0]["loss"]  # it learns

    finetune = run_ramptool("finetune", *common, "--ckpt", str(scratch), "--pair", "linf,l1", "--pairing", "js",
                            "--pairing-option", "temperature=2", "--combiner", "clip-grad", "--combiner-option",
                            "max_norm=2", "--lr", "5e-4", "--out", str(tuned), "--logger",
                            f"csv={tmp_path / 'log.csv'}", "--log-every", "5", pythonpath=[example_plugin_site])
    assert finetune.returncode == 0, finetune.stderr
    rows = list(csv.DictReader((tmp_path / "log.csv").open()))
    assert {(row["kind"], row["step"]) for row in rows if row["name"] == "loss"} == {("step", "5"), ("step", "10"),
                                                                                    ("epoch", "10")}
    metadata = read_metadata(tuned)
    assert metadata["method"] == "ramp" and metadata["pairing"] == "js" and metadata["init"] == str(scratch)
    assert metadata["pairing_options"] == {"temperature": 2.0} and metadata["arch_options"] == {"hidden": 32}
    assert "loss_pair" in metadata["metrics"]

    union = run_ramptool("eval", "union", "--ckpt", str(tuned), "--attack", "margin", "--attack-option",
                         "random_start=false", "--steps", "10", "--n-examples", "100", *eps,
                         "--out", str(tmp_path / "union"), "--device", "cpu", pythonpath=[example_plugin_site])
    assert union.returncode == 0, union.stderr
    assert "upper bound (not AutoAttack)" in " ".join(union.stdout.split())
    report = json.loads((tmp_path / "union" / "report.json").read_text())["models"]["ramp-js"]
    accuracy = report["accuracy"]
    assert report["attack_options"] == {"random_start": False} and "union" in report["upper_bounds"]
    assert accuracy["union"] <= min(accuracy["linf"], accuracy["l2"], accuracy["l1"])
    assert max(accuracy["linf"], accuracy["l2"], accuracy["l1"]) < accuracy["clean"]

    curve = run_ramptool("eval", "curve", "--ckpt", str(tuned), "--attack", "margin", "--attack-option",
                         "l1_topk=0.05", "--norms", "linf,l1", "--multiples", "0.5,1,2", "--steps", "10",
                         "--n-examples", "100", *eps, "--out", str(tmp_path / "curve"), "--device", "cpu",
                         pythonpath=[example_plugin_site])
    assert curve.returncode == 0, curve.stderr
    result = json.loads((tmp_path / "curve" / "curve.json").read_text())
    assert result["attack"] == "margin" and result["upper_bound"] and not result["warnings"]
    for norm in ("linf", "l1"):
        values = result["accuracy"][norm]
        assert values[0] > values[2], (norm, values)  # robust accuracy falls as eps grows


def test_a_bad_component_option_on_the_cli_is_one_line_before_any_work(example_plugin_site, tmp_path):
    out = tmp_path / "run"
    result = run_ramptool("train", "--dataset", "fashion-mnist-14", "--arch", "tiny-mlp", "--subset", "64",
                          "--eps", "linf=0.1,l2=0.75,l1=2.5", "--combiner", "clip-grad", "--combiner-option",
                          "max_norm=big", "--out", str(out), pythonpath=[example_plugin_site])
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: combiner 'clip-grad': max_norm takes a float, got 'big'"]
    assert not out.exists()


def test_example_plugin_components_are_used_by_name(example_plugin_site):
    logits_q = torch.randn(5, 10, generator=torch.Generator().manual_seed(1))
    logits_r = torch.randn(5, 10, generator=torch.Generator().manual_seed(2))
    script = """
import json, sys
import torch
from ramptool.models import build_model
from ramptool.plugins import get, registry

logits_q, logits_r = (torch.tensor(t, requires_grad=True) for t in json.loads(sys.argv[1]))
model = build_model("tiny-mlp", 7, (1, 28, 28), (0.5,), (0.25,), hidden=16)
js = get("pairing-loss", "js")
loss = js(logits_q, logits_r)
loss.backward()
empty = js(logits_q[:0], logits_r[:0])
print(json.dumps({
    "logits_shape": list(model(torch.rand(2, 1, 28, 28)).shape),
    "hidden": model.backbone[1].out_features,
    "js": loss.item(),
    "js_swapped": js(logits_r, logits_q).item(),
    "js_self": js(logits_q, logits_q).item(),
    "js_hot": js(logits_q, logits_r, temperature=2.0).item(),
    "js_halved": js(logits_q / 2, logits_r / 2).item(),
    "gradient_reaches_both": bool(logits_q.grad.abs().sum() > 0 and logits_r.grad.abs().sum() > 0),
    "empty": empty.item(),
    "empty_has_graph": empty.requires_grad,
    "provider": registry().components["pairing-loss"]["js"].plugin,
}))
"""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(example_plugin_site)]))
    logits_json = json.dumps([logits_q.tolist(), logits_r.tolist()])
    result = subprocess.run([sys.executable, "-c", script, logits_json], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)

    p_q, p_r = F.softmax(logits_q, dim=1), F.softmax(logits_r, dim=1)
    mixture = (p_q + p_r) / 2
    kl_q, kl_r = (p_q * (p_q / mixture).log()).sum(1), (p_r * (p_r / mixture).log()).sum(1)
    expected = (0.5 * kl_q + 0.5 * kl_r).mean()
    assert report["logits_shape"] == [2, 7]
    assert report["hidden"] == 16
    assert report["js"] == pytest.approx(expected.item(), rel=1e-5)
    assert 0 < report["js"] < math.log(2)
    assert report["js_swapped"] == pytest.approx(report["js"], rel=1e-6)
    assert report["js_self"] == pytest.approx(0.0, abs=1e-7)
    assert report["js_hot"] == pytest.approx(report["js_halved"], rel=1e-6) and report["js_hot"] < report["js"]
    assert report["gradient_reaches_both"]
    assert report["empty"] == 0.0 and report["empty_has_graph"]
    assert report["provider"] == "example"


def test_a_name_registered_twice_keeps_the_first_and_names_both_plugins(capsys):
    class ClashingPlugin:
        @hookimpl
        def register_pairing_losses(self):
            return {"kl": lambda logits_q, logits_r: logits_q.sum() * 0.0, "zero": lambda q, r: q.sum() * 0.0}

    manager = build_plugin_manager(entry_points=False)
    manager.register(ClashingPlugin(), name="clashing-plugin")
    registry = Registry(manager)
    assert registry.components["pairing-loss"]["kl"].plugin == "ramptool.pairing"  # the built-in keeps its name
    assert registry.components["pairing-loss"]["zero"].plugin == "clashing-plugin"  # the rest of the plugin stays
    (warning,) = capsys.readouterr().err.strip().splitlines()
    assert "skipping plugin 'clashing-plugin'" in warning
    assert "pairing-loss 'kl' is already registered by plugin 'ramptool.pairing'" in warning


def test_a_clash_through_an_entry_point_leaves_every_command_working_with_one_warning(tmp_path):
    write_fake_distribution(tmp_path, "clashing", "clashing", "clashing_plugin", (
        "from ramptool import hookimpl\n\n\n"
        "@hookimpl\ndef register_methods():\n    return {'ramp': object}\n"))

    result = run_ramptool("plugins", pythonpath=[tmp_path])

    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines() == [
        "warning: skipping plugin 'clashing', hook register_methods: method 'ramp' is already registered by plugin "
        "'ramptool.methods'; this one is left out"]


def test_cli_rejects_an_unknown_method_before_creating_the_run_folder(tmp_path):
    out = tmp_path / "run"

    result = run_ramptool("train", "--method", "nope", "--out", str(out))

    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: --method must be one of: ") and line.endswith(", got nope")
    assert {"ramp", "e-at", "clean"} <= set(line.split("one of: ")[1].split(", got")[0].split(", "))
    assert not out.exists()


BROKEN_PLUGINS = {
    # plugin name: (module source, the hook the warning names (None: the import), what the warning says)
    "raising": ("from ramptool import hookimpl\n\n\n"
                "@hookimpl\ndef register_methods():\n    raise ValueError('no methods today')\n\n\n"
                "@hookimpl\ndef register_pairing_losses():\n"
                "    return {'still-here': lambda logits_q, logits_r: logits_q.sum() * 0.0}\n",
                "register_methods", "ValueError: no methods today"),
    "not-a-dict": ("from ramptool import hookimpl\n\n\n"
                   "@hookimpl\ndef register_backbones():\n    return ['tiny']\n",
                   "register_backbones", "returned a list, not a dict name -> backbone"),
    "wrong-kind": ("from ramptool import hookimpl\n\n\n"
                   "@hookimpl\ndef register_attacks():\n    return {'fake-linf': print}\n",
                   "register_attacks", "attack 'fake-linf' is a builtin_function_or_method, not a "
                                       "ramptool.api.Attack"),
    "exiting": ("import sys\n\nsys.exit('bye')\n", None, "SystemExit: bye"),
    "failing-import": ("raise ImportError('this plugin is broken on purpose')\n", None,
                       "ImportError: this plugin is broken on purpose"),
}


def install_broken_plugins(folder: Path, names) -> None:
    for name in names:
        write_fake_distribution(folder, name, name, f"{name.replace('-', '_')}_plugin", BROKEN_PLUGINS[name][0])


@pytest.mark.parametrize("plugin", sorted(BROKEN_PLUGINS))
def test_a_broken_hook_or_import_is_warned_about_once_and_skipped(tmp_path, monkeypatch, capsys, plugin):
    source, hook, reason = BROKEN_PLUGINS[plugin]
    install_broken_plugins(tmp_path, [plugin])
    monkeypatch.syspath_prepend(str(tmp_path))

    registry = Registry(build_plugin_manager())

    [skipped] = registry.skipped
    assert (skipped.plugin, skipped.hook) == (plugin, hook) and reason in skipped.reason
    [warning] = capsys.readouterr().err.strip().splitlines()
    assert warning == skipped.warning()
    module = f"{plugin.replace('-', '_')}_plugin"
    assert warning.startswith(f"warning: skipping plugin '{plugin}'" + (f", hook {hook}:" if hook else f" ({module}):"))
    for kind, names in BUILT_INS.items():
        assert names <= set(registry.names(kind))
    if plugin == "raising":  # the plugin's healthy hook still counts
        assert registry.components["pairing-loss"]["still-here"].plugin == "raising"


def test_ramptool_plugins_lists_what_it_skipped_and_why(tmp_path):
    install_broken_plugins(tmp_path, BROKEN_PLUGINS)

    result = run_ramptool("plugins", pythonpath=[tmp_path])

    assert result.returncode == 0, result.stderr
    warnings = result.stderr.strip().splitlines()
    assert len(warnings) == len(BROKEN_PLUGINS) and all(w.startswith("warning: skipping plugin '") for w in warnings)
    rows = table_rows(result.stdout)
    for kind, names in BUILT_INS.items():
        assert {(kind, name) for name in names} <= rows.keys()
    assert rows[("pairing-loss", "still-here")] == "raising"
    skipped = result.stdout.split("skipped plugins")[1]
    for plugin, (_, hook, reason) in BROKEN_PLUGINS.items():
        line = next(line for line in skipped.splitlines() if f"│ {plugin} " in line)
        assert (hook or "(import)") in line and reason[:40] in line


def test_a_plugin_that_raises_keyboardinterrupt_at_import_is_named_and_exits_130(tmp_path):
    write_fake_distribution(tmp_path, "interrupting", "interrupting", "interrupting_plugin",
                            "raise KeyboardInterrupt\n")

    result = run_ramptool("plugins", pythonpath=[tmp_path])

    assert result.returncode == 130
    assert result.stderr.strip().splitlines() == [
        "error: stopped by SIGINT while loading plugin 'interrupting' (interrupting_plugin)"]


def test_a_plugin_pairing_loss_that_fails_when_used_is_one_line_naming_its_plugin(tmp_path):
    write_fake_distribution(tmp_path, "failing-loss", "failing-loss", "failing_loss_plugin", (
        "from ramptool import hookimpl\n\n\n"
        "def fragile(logits_q, logits_r):\n    raise ZeroDivisionError('no pairing today')\n\n\n"
        "@hookimpl\ndef register_pairing_losses():\n    return {'fragile': fragile}\n"))

    result = run_ramptool("train", "--out", str(tmp_path / "run"), "--subset", "64", "--pairing", "fragile",
                          "--attack-steps", "1", "--device", "cpu", "--no-progress", pythonpath=[tmp_path])

    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: pairing-loss 'fragile' of plugin 'failing-loss' failed: ZeroDivisionError: no pairing today"]

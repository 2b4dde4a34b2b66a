"""docs/plugins.md, "Writing a plugin": every python snippet there is a complete plugin. Each is registered and
every component it adds is used through ramptool (trained with, evaluated with, loaded), so the documentation
cannot drift from the code."""

import json
import re
import types
from pathlib import Path

import pytest
import torch
from test_plugin_api import EPS, quick_config, registered

from ramptool import plugins
from ramptool.checkpoints.format import read_metadata
from ramptool.checkpoints.loading import load_model
from ramptool.data.datasets import load_split
from ramptool.evaluation.union import evaluate_union
from ramptool.training.trainer import train

PLUGINS_PAGE = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"


def plugin_section() -> str:
    """The whole page is the plugin guide (it was README's "Writing a plugin" section)."""
    text = PLUGINS_PAGE.read_text(encoding="utf-8")
    assert text.startswith("# Writing a plugin\n"), "docs/plugins.md no longer starts with its title"
    return text


SNIPPETS = re.findall(r"```python\n(.*?)```", plugin_section(), re.S)


def as_module(index: int) -> types.ModuleType:
    module = types.ModuleType(f"docs_plugin_{index}")
    exec(compile(SNIPPETS[index], f"docs/plugins.md plugin snippet {index}", "exec"), module.__dict__)
    return module


def use_attack(name, tmp_path, model, x, y):
    attack = plugins.get("attack", name)
    result = attack(model, x, y, EPS[attack.norm], steps=5)  # ramptool checks ball and box on every call
    assert result.x_adv.shape == x.shape and result.x_adv.dtype == x.dtype
    assert result.loss.shape == result.fooled.shape == y.shape
    with torch.no_grad():
        assert (model(result.x_adv).argmax(1) == y).float().mean() < (model(x).argmax(1) == y).float().mean()
    family = name[:-len(attack.norm) - 1]
    report = evaluate_union(model, x, y, [attack.norm], EPS, attack=family, steps=5)
    assert report["accuracy"][attack.norm] < report["accuracy"]["clean"] and "union" in report["upper_bounds"]
    if attack.norm == "linf":
        train(quick_config(tmp_path / name, method="at", norms=["linf"], attack=family))


def use_pairing_loss(name, tmp_path, model, x, y):
    loss = plugins.get("pairing-loss", name)
    logits_q, logits_r = torch.randn(4, 10, requires_grad=True), torch.randn(4, 10, requires_grad=True)
    assert loss(logits_q, logits_r).item() > 0 and loss(logits_q, logits_q).item() == pytest.approx(0, abs=1e-6)
    empty = loss(logits_q[:0], logits_r[:0])
    assert empty.item() == 0 and empty.requires_grad
    train(quick_config(tmp_path / name, method="ramp", pairing=name))
    assert "loss_pair" in read_metadata(tmp_path / name)["metrics"]


def use_combiner(name, tmp_path, model, x, y):
    train(quick_config(tmp_path / name, method="at", norms=["linf"], combiner=name))
    assert read_metadata(tmp_path / name)["combiner"] == name


def use_backbone(name, tmp_path, model, x, y):
    train(quick_config(tmp_path / name, method="clean", arch=name))
    assert load_model(tmp_path / name)(x).shape == (len(x), 10)


def use_dataset(name, tmp_path, model, x, y):
    spec = plugins.get("dataset", name)
    images, labels = load_split(name, "test", subset=64).tensors()
    assert images.shape[1:] == spec.input_shape and 0 <= images.min() and images.max() <= 1
    assert 0 <= labels.min() and labels.max() < spec.num_classes
    train(quick_config(tmp_path / name, method="clean", dataset=name))
    assert read_metadata(tmp_path / name)["num_classes"] == spec.num_classes


def use_method(name, tmp_path, model, x, y):
    train(quick_config(tmp_path / name, method=name, norms=["linf", "l1"]))
    assert torch.isfinite(torch.tensor(read_metadata(tmp_path / name)["metrics"]["loss"]))


def use_logger(name, tmp_path, model, x, y):
    log = tmp_path / f"{name}.log"
    train(quick_config(tmp_path / name, method="clean", loggers={name: str(log)}, log_every=1))
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 2] and lines[-1]["epoch"]["epoch"] == 1


USE = {"attack": use_attack, "pairing-loss": use_pairing_loss, "combiner": use_combiner, "backbone": use_backbone,
       "dataset": use_dataset, "method": use_method, "logger": use_logger}


def test_the_snippets_cover_every_kind_of_component():
    kinds = set()
    for index in range(len(SNIPPETS)):
        hooks = {name for name in vars(as_module(index)) if name.startswith("register_")}
        kinds |= {kind for kind, hook in plugins.KINDS.items() if hook in hooks}
    assert kinds == set(plugins.KINDS)


@pytest.mark.parametrize("index", range(len(SNIPPETS)))
def test_a_plugin_page_snippet_is_a_working_plugin(index, tmp_path, clean_model, fmnist_test, one_thread):
    x, y = fmnist_test[0][:32], fmnist_test[1][:32]
    with registered(as_module(index), name=f"docs-{index}"):
        added = [c for c in plugins.registry().all() if c.plugin == f"docs-{index}"]
        assert added, "the snippet registers nothing"
        for component in added:
            assert component.description, f"{component.kind} {component.name} has no description"
            USE[component.kind](component.name, tmp_path, clean_model, x, y)

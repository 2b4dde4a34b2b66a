"""The public plugin API (ramptool.api): component options, the combiner contract, attack families in training
and evaluation with the ball-and-box check, plugin API versions. In-process, with plugins registered by hand."""

import contextlib
import inspect
from typing import Literal

import pytest
import torch
import torch.nn.functional as F

import ramptool.api as api
from ramptool.checkpoints.format import read_metadata
from ramptool.errors import RamptoolError
from ramptool.evaluation.family import family_flags
from ramptool.evaluation.flags import clean_flags
from ramptool.evaluation.union import evaluate_union, robustness_curve
from ramptool.plugins.options import bind, options_of, parse_assignments
from ramptool.plugins.registry import Registry, build_plugin_manager, reset_registry
from ramptool.training.config import TrainConfig
from ramptool.training.sources import build_train_config
from ramptool.training.trainer import train

EPS = {"linf": 0.1, "l2": 1.5, "l1": 10.0}


@pytest.fixture(autouse=True)
def _threads(one_thread):
    yield


@contextlib.contextmanager
def registered(plugin, name="test-plugin"):
    """The process-wide registry with the built-ins and ``plugin``, for the duration of the block."""
    manager = build_plugin_manager(entry_points=False)
    manager.register(plugin, name=name)
    reset_registry(manager)
    try:
        yield
    finally:
        reset_registry(build_plugin_manager(entry_points=False))


def quick_config(out, **overrides):
    settings = dict(out=str(out), dataset="fashion-mnist", subset=128, batch_size=64, attack_steps=2, eps=EPS,
                    optimizer="adam", lr=1e-3, weight_decay=0.0, schedule="constant", epochs=1, progress=False,
                    device="cpu", pair=["linf", "l1"])
    return TrainConfig(**{**settings, **overrides})


# ------------------------------------------------------------------------------------------ options

def builder(num_classes, in_chans, image_size, *, hidden: int = 8, rate: float = 0.5, bias: bool = True,
            act: Literal["relu", "tanh"] = "relu", tag: str | None = None, frozen: torch.Tensor | None = None):
    """A builder declaring one option of every supported type (and one that is not an option)."""


def test_options_are_read_from_the_signature_with_their_types():
    options, open_ended = options_of("backbone", builder)
    assert [o.describe() for o in options] == [
        "hidden: int = 8", "rate: float = 0.5", "bias: bool = True", "act: relu|tanh = 'relu'",
        "tag: str | None = None"]
    assert not open_ended
    assert bind("backbone", "b", builder, {"hidden": "16", "rate": "1/4", "bias": "false", "act": "tanh",
                                           "tag": "none"}) == {"hidden": 16, "rate": 0.25, "bias": False,
                                                               "act": "tanh", "tag": None}
    # typed values (recipes, Python) pass when they fit; an int is a float, a bool is no int
    assert bind("backbone", "b", builder, {"rate": 1, "hidden": 3}) == {"rate": 1.0, "hidden": 3}


@pytest.mark.parametrize("given,message", [
    ({"hidden": "1.5"}, "hidden takes an int, got '1.5'"),
    ({"hidden": True}, "hidden takes an int, got True"),
    ({"bias": "maybe"}, "bias takes a bool"),
    ({"act": "gelu"}, "act must be one of relu, tanh"),
    ({"hiden": "3"}, "has no option 'hiden'; its options: hidden: int = 8"),
    ({"frozen": "1"}, "has no option 'frozen'"),
    ("hidden=3", "must be a table of name = value"),
])
def test_bad_options_are_one_clear_error(given, message):
    with pytest.raises(RamptoolError, match=message.replace("(", r"\(").replace("|", r"\|")):
        bind("backbone", "b", builder, given)


def test_a_required_option_names_the_flag_that_sets_it():
    class NeedsK(api.TrainingMethod):
        def __init__(self, ctx, *, k: int):
            super().__init__(ctx)

    with pytest.raises(RamptoolError, match="needs k: pass --method-option k=VALUE"):
        bind("method", "needs-k", NeedsK, {})
    assert bind("method", "needs-k", NeedsK, {"k": "2"}) == {"k": 2}


def test_assignments_from_the_command_line():
    assert parse_assignments(["beta=0.3", "keep = loss", "expr=a=b"], "--x") == {"beta": "0.3", "keep": "loss",
                                                                                "expr": "a=b"}
    for bad, message in ((["beta"], "must look like name=value"), (["=1"], "must look like"),
                         (["a=1", "a=2"], "given twice")):
        with pytest.raises(RamptoolError, match=message):
            parse_assignments(bad, "--x")


def test_recipe_tables_and_flags_merge_key_by_key(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('combiner = "gp"\n[combiner_options]\nbeta = 0.25\n[method_options]\na = 1\n')
    cfg = build_train_config({"out": "x", "combiner_options": ["extra=1"]}, recipe)
    assert cfg.combiner_options == {"beta": 0.25, "extra": "1"} and cfg.method_options == {"a": 1}


def test_gp_takes_beta_as_an_option_and_checks_its_range(tmp_path):
    with pytest.raises(RamptoolError, match=r"beta must be in \[0, 1\], got 1.5"):
        train(quick_config(tmp_path, method="clean", combiner="gp", combiner_options={"beta": "1.5"}))
    with pytest.raises(RamptoolError, match="combiner 'none' has no option 'beta' \\(it takes no options\\)"):
        train(quick_config(tmp_path, method="clean", combiner="none", combiner_options={"beta": 0.5}))
    assert not (tmp_path / "model.safetensors").exists()


# ------------------------------------------------------------------------------------------ combiners

class CountingCombiner(api.Combiner):
    """Counts the steps it saw and scales every update (a combiner written to the documented contract)."""

    def __init__(self, model, make_optimizer, *, scale: float = 1.0, label: str = "x"):
        super().__init__(model, make_optimizer)
        self.scale, self.label, self.steps = scale, label, 0
        self.spare_optimizer = make_optimizer(torch.nn.Linear(1, 1))

    def train_step(self, model, optimizer, compute_loss, x, y):
        loss, stats = compute_loss()
        optimizer.zero_grad(set_to_none=True)
        api.checked_backward(loss * self.scale)
        optimizer.step()
        self.steps += 1
        return loss.detach(), {**stats, "steps_seen": torch.tensor(float(self.steps))}

    def state_dict(self):
        return {"steps": self.steps}

    def load_state_dict(self, state):
        self.steps = state["steps"]


class CombinerPlugin:
    @api.hookimpl
    def register_combiners(self):
        return {"counting": CountingCombiner}


def test_a_combiner_written_to_the_documented_signature_trains_with_its_options(tmp_path):
    with registered(CombinerPlugin()):
        train(quick_config(tmp_path, method="clean", combiner="counting",
                           combiner_options={"scale": "0.5", "label": "half"}))
    metadata = read_metadata(tmp_path)
    assert metadata["combiner"] == "counting"
    assert metadata["combiner_options"] == {"scale": 0.5, "label": "half"}
    assert metadata["metrics"]["steps_seen"] == pytest.approx(1.5)  # steps 1 and 2 of a 2-step epoch
    assert metadata["config"]["combiner_options"] == {"scale": 0.5, "label": "half"}


# ------------------------------------------------------------------------------------------ attack families

def escape_the_ball(model, x, y, *, norm, eps, steps, factor: float = 2.0):
    """Moves every pixel by factor * eps: outside the linf ball (and the l2/l1 ones) whenever factor > 1."""
    x_adv = (x + factor * eps).clamp(0, 1)
    return api.AttackResult(x_adv, torch.zeros(len(x)), torch.ones(len(x), dtype=torch.bool))


def stay_put(model, x, y, *, norm, eps, steps):
    """Returns x itself while claiming to have fooled every point."""
    return api.AttackResult(x.clone(), torch.zeros(len(x)), torch.ones(len(x), dtype=torch.bool))


class AttackPlugin:
    @api.hookimpl
    def register_attacks(self):
        return {**api.attack_family("escape", escape_the_ball, "leaves the ball"),
                **api.attack_family("still", stay_put, "does nothing", norms=("linf", "l2"))}


def test_an_attack_leaving_the_ball_stops_training_and_evaluation(tmp_path, clean_model, fmnist_test):
    x, y = fmnist_test
    with registered(AttackPlugin()):
        with pytest.raises(RamptoolError, match=r"attack escape_the_ball \(.*\) in linf returned \d+ of 64 points "
                                                r"outside B_linf\(x, 0.1\)"):
            train(quick_config(tmp_path, method="at", norms=["linf"], attack="escape"))
        with pytest.raises(RamptoolError, match=r"outside B_l1\(x, 10\)"):
            evaluate_union(clean_model, x[:32], y[:32], ["l1"], EPS, attack="escape", steps=1)
        # within the ball the same attack is accepted
        flags = family_flags(clean_model, x[:32], y[:32], "escape", "linf", 0.1, steps=1, options={"factor": 1.0})
    assert flags.shape == (32,)


def test_family_evaluation_counts_only_misclassified_points_and_says_upper_bound(clean_model, fmnist_test):
    x, y = fmnist_test[0][:64], fmnist_test[1][:64]
    with registered(AttackPlugin()):
        report = evaluate_union(clean_model, x, y, ["linf", "l2"], EPS, attack="still", steps=1)
        with pytest.raises(RamptoolError, match="attack family 'still' has no l1 attack"):
            evaluate_union(clean_model, x, y, ["l1"], EPS, attack="still")
    clean = clean_flags(clean_model, x, y).float().mean().item()
    # the attack claims every point fooled but returns x: nothing is counted broken
    assert report["accuracy"]["linf"] == report["accuracy"]["l2"] == report["accuracy"]["union"] == clean
    assert report["upper_bounds"] == ["linf", "l2", "union"] and report["attack"] == "still"


def test_a_built_in_family_evaluates_like_any_plugin_one(clean_model, fmnist_test):
    x, y = fmnist_test[0][:48], fmnist_test[1][:48]
    report = evaluate_union(clean_model, x, y, ["linf", "l1"], EPS, attack="pgd", steps=5,
                            attack_options={"random_init": "false"})
    accuracy = report["accuracy"]
    assert accuracy["union"] <= min(accuracy["linf"], accuracy["l1"]) <= accuracy["clean"]
    assert accuracy["linf"] < accuracy["clean"]  # a clean-trained model falls to PGD at eps 0.1
    assert report["attack_options"] == {"random_init": False}
    curve = robustness_curve(clean_model, x, y, {"linf": [0.02, 0.05, 0.1]}, steps=5, attack="pgd")
    values = curve["accuracy"]["linf"]
    assert values[0] >= values[1] >= values[2] and curve["upper_bound"]
    with pytest.raises(RamptoolError, match="--attack-option applies to a registered attack family"):
        evaluate_union(clean_model, x, y, ["linf"], EPS, attack="apgd", attack_options={"steps": "3"})


# ------------------------------------------------------------------------------------------ the API surface

def test_every_public_name_is_documented():
    for name in api.__all__:
        obj = getattr(api, name)
        if name in ("API_VERSION", "hookimpl"):
            continue
        assert inspect.getdoc(obj), f"ramptool.api.{name} has no docstring"
    for base in (api.Combiner, api.TrainingMethod):  # construction is documented in the class docstring
        for method_name, method in vars(base).items():
            if callable(method) and not method_name.startswith("_"):
                assert method.__doc__, f"{base.__name__}.{method_name} has no docstring"


def test_a_plugin_for_another_api_version_is_skipped(tmp_path, monkeypatch):
    from test_plugins import write_fake_distribution

    write_fake_distribution(tmp_path, "future", "future", "future_plugin", (
        "from ramptool.api import hookimpl\n\nRAMPTOOL_API_VERSION = 2\n\n\n"
        "@hookimpl\ndef register_methods():\n    return {}\n"))
    write_fake_distribution(tmp_path, "typo", "typo", "typo_plugin", (
        "from ramptool.api import hookimpl\n\n\n@hookimpl\ndef register_method():\n    return {}\n"))
    monkeypatch.syspath_prepend(str(tmp_path))

    skipped = {entry.plugin: entry for entry in Registry(build_plugin_manager()).skipped}

    assert "written for ramptool's plugin API 2, this ramptool has API 1" in skipped["future"].reason
    assert skipped["future"].hook is None
    assert skipped["typo"].hook == "register_method" and "no such hook" in skipped["typo"].reason
    assert skipped["typo"].warning().startswith("warning: skipping plugin 'typo', hook register_method: ")


def test_trades_style_loss_of_the_example_equals_its_formula():
    """The example method's loss, checked against its formula (the plugin module imports only ramptool.api)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "plugins" / "ramptool-example" / "ramptool_example" / "methods.py"
    spec = importlib.util.spec_from_file_location("example_methods", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    x, y = torch.rand(6, 1, 4, 4), torch.randint(0, 3, (6,))
    method = module.TRADES(api.MethodContext(norms=["linf"], eps={"linf": 0.1}, attack_steps=2), beta=2.0)
    loss, stats = method.loss(model, x, y)
    x_adv = method.attack(model, x, y, "linf").x_adv  # the training attack is deterministic (APGD, no restart)
    p_clean = F.softmax(model(x), 1)
    expected = F.cross_entropy(model(x), y) + 2.0 * (p_clean * (p_clean.log() - F.log_softmax(model(x_adv), 1))
                                                     ).sum(1).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert set(stats) == {"acc_clean", "acc_linf", "loss_kl"}

"""Loggers: TensorBoard and W&B (offline) get the config, the per-step and per-epoch scalars, and a resumed run
continues both; a plugin's logger gets what the built-ins get; the GP combiner's angles and E-AT's probabilities."""

import contextlib
import glob
import json
import math
import struct
import types

import pytest
import torch

from ramptool.errors import RamptoolError
from ramptool.loggers import Logger
from ramptool.plugins.hookspecs import hookimpl
from ramptool.plugins.registry import build_plugin_manager, reset_registry
from ramptool.training.combiners import EpochGradientProjection
from ramptool.training.config import TrainConfig
from ramptool.training.trainer import train

EPS = {"linf": 0.1, "l2": 1.5, "l1": 10.0}


@pytest.fixture(autouse=True)
def _threads(one_thread):
    yield


def quick(out, **overrides):
    settings = dict(out=str(out), subset=128, batch_size=32, method="ramp", combiner="gp", pair=["linf", "l1"],
                    attack_steps=2, eps=EPS, optimizer="adam", lr=1e-3, schedule="constant", epochs=1,
                    progress=False, device="cpu")
    return TrainConfig(**{**settings, **overrides})


def metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def wandb_records(path):
    """The records of an offline W&B run file (its LevelDB-style log: 32 KiB blocks of checksummed chunks)."""
    from wandb.proto import wandb_internal_pb2

    data, block = open(path, "rb").read(), 32768
    assert data[:4] == b":W&B"
    position, pending = 7, b""
    while position + 7 <= len(data):
        room = block - position % block
        if room < 7:
            position += room
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        if length == 0 and kind == 0:
            position += room
            continue
        chunk = data[position + 7:position + 7 + length]
        position += 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):  # a whole record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def wandb_run(folder):
    """(run id, config, [(step, {key: value})]) of each offline W&B run in ``folder``, oldest first."""
    runs = []
    for path in sorted(glob.glob(str(folder / "wandb" / "offline-run-*" / "run-*.wandb"))):
        run_id, config, history = None, {}, []
        for record in wandb_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                run_id = record.run.run_id
                config = {item.key: json.loads(item.value_json) for item in record.run.config.update}
            elif kind == "history":
                values = {item.key or "/".join(item.nested_key): json.loads(item.value_json)
                          for item in record.history.item}
                history.append((values["_step"], values))
        runs.append((run_id, config, history))
    return runs


@pytest.mark.slow
def test_wandb_offline_and_tensorboard_get_config_and_scalars_and_a_resume_continues_both(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for variable in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(variable, str(tmp_path / "wandb-home"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    run, board = tmp_path / "run", tmp_path / "tb"
    train(quick(run, wandb="ramptool-test", tensorboard=str(board), log_every=2))
    train(TrainConfig(out=str(run), resume=True, epochs=2))  # --wandb, --tensorboard: kept from the run

    records = metrics(run)
    (first_id, config, first), (second_id, _, second) = wandb_run(run)
    assert first_id == second_id  # the same W&B run, continued
    assert (config["method"], config["combiner"]) == ("ramp", "gp")
    assert config["pair"] == ["linf", "l1"] and config["log_every"] == 2
    steps = {1: [step for step, values in first if "step/loss" in values],
             2: [step for step, values in second if "step/loss" in values]}
    assert steps == {1: [2, 4], 2: [6, 8]}  # 4 batches an epoch, every 2nd step, the second epoch after the first
    for epoch, history in ((1, first), (2, second)):
        (values,) = [values for _, values in history if "loss" in values]
        record = records[epoch - 1]
        assert values["_step"] == 4 * epoch and values["epoch"] == epoch
        assert values["loss"] == pytest.approx(record["loss"]) and values["gp/angle"] == record["gp"]["angle"]
        assert values["pair_kept"] == pytest.approx(record["pair_kept"])
    assert {"step/acc_linf", "step/acc_l1", "step/loss_pair", "step/lr", "step/img_per_s"} <= set(first[0][1])

    events = EventAccumulator(str(board))
    events.Reload()
    assert [event.step for event in events.Scalars("step/loss")] == [2, 4, 6, 8]  # one run, appended to
    assert [event.step for event in events.Scalars("loss")] == [1, 2]
    assert [event.value for event in events.Scalars("gp/projected")] == pytest.approx(
        [r["gp"]["projected"] for r in records])
    # what W&B and TensorBoard got at a step is the same mean
    wandb_losses = [values["step/loss"] for _, values in first + second if "step/loss" in values]
    assert [event.value for event in events.Scalars("step/loss")] == pytest.approx(wandb_losses)


@pytest.mark.slow
def test_an_evaluation_logs_its_table_and_figure_and_names_upper_bounds(tmp_path, monkeypatch, ramptool_cli):
    pytest.importorskip("wandb")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for variable in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(variable, str(tmp_path / "wandb-home"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    train(quick(tmp_path / "run", method="clean", combiner="none", subset=64))
    out = tmp_path / "eval"
    code, _, err = ramptool_cli(["eval", "union", "--ckpt", str(tmp_path / "run"), "--n-examples", "8", "--attack",
                                 "apgd-ce", "--steps", "3", "--device", "cpu", "--out", str(out), "--wandb",
                                 "ramptool-test", "--tensorboard", str(tmp_path / "tb")])
    assert code == 0, err
    accuracy = json.loads((out / "report.json").read_text())["models"]["run"]["accuracy"]
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert set(events.Tags()["scalars"]) == {"union/run/clean", *(f"union/run/{column} (upper bound)"
                                                                  for column in ("linf", "l2", "l1", "union"))}
    assert events.Scalars("union/run/union (upper bound)")[0].value == pytest.approx(accuracy["union"])
    assert events.Tags()["images"] == ["union/report"]
    ((_, config, history),) = wandb_run(out)
    assert config["evaluation"] == "union" and config["attack"] == "apgd-ce" and config["n_examples"] == "8"
    (values,) = [values for _, values in history]
    assert values["union/table/_type"] == "table-file" and values["union/report/_type"] == "image-file"
    table = json.loads(next((out / "wandb").glob("offline-run-*/files/" + values["union/table/path"])).read_text())
    assert table["columns"] == ["model", "clean", "l1 (upper bound)", "l2 (upper bound)", "linf (upper bound)",
                                "union (upper bound)"]
    assert table["data"][0][0] == "run" and table["data"][0][-1] == pytest.approx(accuracy["union"])


class Recorder(Logger):
    """A third-party logger: keeps what it is given."""

    logs: list = []

    def __init__(self, target, run):
        super().__init__(target, run)
        Recorder.logs.append(("open", target, run.kind, run.config["method"]))

    def log_step(self, values, step):
        Recorder.logs.append(("step", step, dict(values)))

    def log_epoch(self, record, step):
        Recorder.logs.append(("epoch", step, record))

    def close(self):
        Recorder.logs.append(("close",))


@contextlib.contextmanager
def recorder_plugin():
    plugin = types.SimpleNamespace(register_loggers=hookimpl(lambda: {"recorder": Recorder}))
    manager = build_plugin_manager(entry_points=False)
    manager.register(plugin, name="recorder-plugin")
    reset_registry(manager)
    Recorder.logs = []
    try:
        yield Recorder.logs
    finally:
        reset_registry(build_plugin_manager(entry_points=False))


def test_a_plugin_logger_gets_each_windows_mean_and_each_epoch_record(tmp_path):
    with recorder_plugin() as logs:
        train(quick(tmp_path / "run", method="e-at", combiner="none", loggers={"recorder": "anywhere"},
                    log_every=4))
    (record,) = metrics(tmp_path / "run")
    assert logs[0] == ("open", "anywhere", "train", "e-at") and logs[-1] == ("close",)
    (_, step, values), (_, epoch_step, logged_record) = logs[1], logs[2]
    # the window is the whole epoch (4 steps): its means are the epoch's
    assert step == epoch_step == 4 and logged_record == record
    assert values["loss"] == pytest.approx(record["loss"], abs=1e-5) and values["lr"] == record["lr"]
    # E-AT's sampling probabilities of the pair, averaged over the epoch's batches
    assert record["p_linf"] + record["p_l1"] == pytest.approx(1.0, abs=1e-4)


def test_an_unknown_logger_is_one_line_before_training(tmp_path, ramptool_cli):
    with pytest.raises(RamptoolError, match="unknown logger 'mlflow'; known: tensorboard, wandb"):
        train(quick(tmp_path / "run", loggers={"mlflow": "http://localhost:5000"}))
    code, _, err = ramptool_cli(["train", "--out", str(tmp_path / "cli"), "--logger", "mlflow"])
    assert code == 2 and "name=target" in err


def test_gp_reports_the_angle_between_natural_and_adversarial_updates_and_the_share_projected():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 2))
    combiner = EpochGradientProjection(model, lambda module: torch.optim.SGD(module.parameters(), lr=0.1), beta=0.5)
    combiner.start_epoch(model)
    anchor = {name: p.detach().clone() for name, p in model.named_parameters()}
    natural, adversarial = {}, {}
    with torch.no_grad():
        for index, ((name, p), (_, q)) in enumerate(zip(model.named_parameters(), combiner.natural.named_parameters())):
            step = torch.randn_like(p)
            q.add_(step)
            p.add_(-step if index == 0 else step + 0.5 * torch.randn_like(p))  # the first tensor: opposite updates
            natural[name], adversarial[name] = q - anchor[name], p - anchor[name]
    measured = combiner.end_epoch(model)["gp"]

    def angle(a, b):
        return math.degrees(math.acos(float((a * b).sum() / (a.norm() * b.norm()))))

    flat = [torch.cat([d[name].flatten() for name in anchor]) for d in (natural, adversarial)]
    assert measured["angle"] == pytest.approx(angle(*flat), abs=1e-3)
    for name in anchor:
        assert measured["angle_per_layer"][name] == pytest.approx(angle(natural[name], adversarial[name]), abs=1e-3)
    assert measured["angle_per_layer"]["0.weight"] == pytest.approx(180.0, abs=1e-3)
    assert measured["projected"] == pytest.approx(3 / 4)  # every tensor but the opposite one

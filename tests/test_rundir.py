"""Run folders (issue 14): checked before any work, locked while in use, never lost to --overwrite; atomic writes
that reach the disk, honour the umask and leave no orphans; names from user input stay inside --out."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from ramptool.checkpoints.format import resolve
from ramptool.cli import main
from ramptool.errors import RamptoolError, TrainingDiverged
from ramptool.runtime.files import atomic_write
from ramptool.runtime.rundir import SET_ASIDE, FolderLock, set_aside
from ramptool.training.config import TrainConfig
from ramptool.training.methods import Clean
from ramptool.training.trainer import RUN_FILES, train

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(out, **overrides) -> TrainConfig:
    return TrainConfig(out=str(out), subset=64, batch_size=32, method="clean", schedule="constant", lr=1e-3,
                       optimizer="adam", weight_decay=0.0, progress=False, device="cpu", **overrides)


def run_files(folder) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in RUN_FILES if (folder / name).exists()}


def test_a_folder_in_use_by_another_process_is_refused_with_its_pid(tmp_path, capsys):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from ramptool.rundir import FolderLock; "
                               f"FolderLock({str(out)!r}).acquire(); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RamptoolError, match=f"in use by another ramptool process \\(pid {holder.pid}\\)"):
            train(tiny(out))
        with pytest.raises(SystemExit) as exited:
            main(["eval", "union", "--ckpt", "nowhere", "--out", str(out)])
        assert exited.value.code == 2 and f"pid {holder.pid}" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()
    train(tiny(out))  # the kernel dropped the dead holder's lock
    assert (out / "model.safetensors").exists()


def test_out_that_is_a_file_fails_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    for out, message in ((blocker, "is a file, not a folder"), (blocker / "run", "a parent of it is a file")):
        with pytest.raises(SystemExit) as exited:
            main(["train", "--out", str(out), "--subset", "64"])
        stderr = capsys.readouterr().err
        assert exited.value.code == 2 and message in stderr and len(stderr.strip().splitlines()) == 1


def test_overwrite_keeps_the_old_run_until_the_new_one_has_a_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "run"
    train(tiny(out))
    old = run_files(out)
    assert set(old) == set(RUN_FILES) and old["metrics.jsonl"]

    clean_loss = Clean.loss

    def diverging(self, model, x, y):
        loss, stats = clean_loss(self, model, x, y)
        return loss * float("nan"), stats

    monkeypatch.setattr(Clean, "loss", diverging)
    with pytest.raises(TrainingDiverged):
        train(tiny(out, overwrite=True, seed=1))
    assert run_files(out) == old and not (out / SET_ASIDE).exists()  # failed first: the old run is back

    monkeypatch.undo()
    set_aside(out, RUN_FILES)  # what an --overwrite killed before its first checkpoint leaves behind
    assert not (out / "model.safetensors").exists()
    train(tiny(out, overwrite=True, seed=1))  # the next start restores it, then replaces it properly
    assert run_files(out)["model.safetensors"] != old["model.safetensors"]
    assert not (out / SET_ASIDE).exists()
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1


def test_after_an_overwrite_killed_before_its_first_checkpoint_resume_and_eval_find_the_old_run(tmp_path, capsys):
    out = tmp_path / "run"
    train(tiny(out))
    old = run_files(out)
    set_aside(out, RUN_FILES)  # what an --overwrite killed before its first checkpoint leaves behind
    assert resolve(out) == out / SET_ASIDE / "model.safetensors"  # eval, info, --ckpt: still the folder's run
    with pytest.raises(SystemExit) as exited:
        main(["train", "--out", str(out), "--resume", "--epochs", "2", "--no-progress"])
    assert exited.value.code in (0, None), capsys.readouterr().err
    assert not (out / SET_ASIDE).exists()
    assert (out / "metrics.jsonl").read_text().startswith(old["metrics.jsonl"].decode())  # epoch 1 kept, 2 added
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2


def test_atomic_write_honours_the_umask_and_syncs_before_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: events.append("fsync") or real_fsync(fd))
    monkeypatch.setattr(os, "replace", lambda a, b: events.append("replace") or real_replace(a, b))
    for mask, mode in ((0o022, 0o644), (0o002, 0o664), (0o077, 0o600)):
        previous = os.umask(mask)
        try:
            atomic_write(tmp_path / f"f{mask:o}", lambda tmp: open(tmp, "w").write("x"))
        finally:
            os.umask(previous)
        assert (tmp_path / f"f{mask:o}").stat().st_mode & 0o777 == mode
    assert events[:3] == ["fsync", "replace", "fsync"]  # file content, rename, then the folder entry


def test_a_writer_killed_mid_write_leaves_no_orphan_after_the_next_start(tmp_path):
    target = tmp_path / "run" / "model.safetensors"
    writer = subprocess.Popen([sys.executable, "-c", "import time; from ramptool.checkpoint import atomic_write; "
                               f"atomic_write({str(target)!r}, lambda tmp: (open(tmp, 'w').write('half'), "
                               "print('writing', flush=True), time.sleep(60)))"], stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "writing"
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    orphans = list(target.parent.glob(".model.safetensors.*.tmp"))
    assert len(orphans) == 1 and not target.exists()
    live = target.parent / f".model.safetensors.{os.getpid()}.abcdefgh.tmp"  # a writer still at work
    live.write_text("busy")
    train(tiny(target.parent))
    assert not orphans[0].exists() and live.exists() and target.exists()


def test_names_from_user_paths_stay_inside_out(tmp_path, clean_model_dir, capsys):
    from ramptool.cli.eval import checkpoint_names

    nested = tmp_path / "runs" / "x"
    (nested / "a").mkdir(parents=True)
    (nested / "model.safetensors").symlink_to(clean_model_dir / "model.safetensors")
    dotted = str(nested / "a" / "..")
    names = checkpoint_names([dotted, str(clean_model_dir / "model.safetensors"),
                              str(nested / "a" / ".." / "model.safetensors")])
    assert list(names) == ["x", clean_model_dir.name, "x-2"]
    out, cache = tmp_path / "out", tmp_path / "cache"
    before = set(tmp_path.rglob("*"))
    with pytest.raises(SystemExit) as exited:
        main(["eval", "corruptions", "--ckpt", dotted, "--ckpt", str(clean_model_dir), "--corruptions", "brightness",
              "--severities", "1", "--n-examples", "8", "--out", str(out), "--cache-dir", str(cache),
              "--device", "cpu"])
    assert exited.value.code == 0, capsys.readouterr().err
    written = set(tmp_path.rglob("*")) - before
    assert written and all(path.is_relative_to(out) or path.is_relative_to(cache) for path in written)
    assert (out / "x" / "corruptions.json").exists()


@pytest.mark.parametrize("tamper,message", [
    (lambda state: state.pop("optimizer"), "not a complete training state (no 'optimizer')"),
    (lambda state: state.update(step=10**6), "cannot be restored (ValueError: epoch 1, step 1000000"),
    (lambda state: state["model"].update({"backbone.fc.weight": torch.zeros(2, 2)}), "cannot be restored"),
    (lambda state: state.update(rng="seed"), "cannot be restored"),
])
def test_a_tampered_state_is_one_clear_error(tmp_path, tamper, message):
    out = tmp_path / "run"
    train(tiny(out))
    state = torch.load(out / "state.pt", weights_only=True)
    tamper(state)
    torch.save(state, out / "state.pt")
    with pytest.raises(RamptoolError, match="state.pt") as error:
        train(TrainConfig(out=str(out), resume=True))
    assert message in str(error.value)


def test_a_full_disk_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import errno

    import ramptool.training.trainer
    from ramptool.checkpoints.format import read_metadata

    saves, save_checkpoint = [], ramptool.training.trainer.save_checkpoint

    def disk_fills_up(path, model, metadata):
        saves.append(path)
        if len(saves) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        save_checkpoint(path, model, metadata)

    monkeypatch.setattr(ramptool.training.trainer, "save_checkpoint", disk_fills_up)
    with pytest.raises(RamptoolError, match="No space left on device; the previous checkpoint is intact"):
        train(tiny(tmp_path, epochs=2))
    assert read_metadata(tmp_path)["epoch"] == 1


def test_nothing_is_written_through_a_symlink_inside_the_run_folder(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "run"
    out.mkdir()
    (out / ".ramptool.lock").symlink_to(victim)
    with pytest.raises(RamptoolError, match="symbolic link"):
        FolderLock(out).acquire()
    (out / ".ramptool.lock").unlink()
    (out / "metrics.jsonl").symlink_to(victim)  # a folder without a model or a state: a new run may start here
    train(TrainConfig(out=str(out), subset=64, batch_size=32, attack_steps=1, method="at", norms=["linf"],
                      epochs=1, progress=False, device="cpu"))
    assert victim.read_text() == "precious"
    assert not (out / "metrics.jsonl").is_symlink() and len((out / "metrics.jsonl").read_text().splitlines()) == 1


def test_metrics_follow_the_checkpoint_after_a_kill_between_its_files(tmp_path, monkeypatch):
    """A kill after state.pt was renamed but before the model (and metrics.jsonl) were: --resume lists every
    epoch the state holds, once."""
    import ramptool.training.trainer as trainer_module

    out = tmp_path / "run"
    config = dict(out=str(out), subset=64, batch_size=32, attack_steps=1, method="at", norms=["linf"],
                  progress=False, device="cpu")
    train(TrainConfig(**config, epochs=1))
    save_checkpoint = trainer_module.save_checkpoint

    def killed_after_the_state(path, model, metadata):
        raise KeyboardInterrupt  # the process dies here: state.pt of epoch 2 is on disk, the rest is not

    monkeypatch.setattr(trainer_module, "save_checkpoint", killed_after_the_state)
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(out=str(out), resume=True, epochs=2))
    monkeypatch.setattr(trainer_module, "save_checkpoint", save_checkpoint)
    train(TrainConfig(out=str(out), resume=True, epochs=3))
    epochs = [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]


@pytest.mark.parametrize("library", ["safetensors", "torch.save"])
def test_a_full_disk_seen_by_the_libraries_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch,
                                                                                         library):
    """safetensors and torch.save report a full disk as SafetensorError and RuntimeError, not OSError."""
    from safetensors import SafetensorError

    import ramptool.checkpoints.format as checkpoint_format

    out = tmp_path / "run"
    config = dict(out=str(out), subset=64, batch_size=32, attack_steps=1, method="at", norms=["linf"],
                  progress=False, device="cpu")
    train(TrainConfig(**config, epochs=1))
    before = read_weights_of(out)

    def full(*args, **kwargs):
        if library == "safetensors":
            raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })")
        raise RuntimeError("[enforce fail at inline_container.cc:603] . PytorchStreamWriter failed writing file")

    monkeypatch.setattr(checkpoint_format, "save_file" if library == "safetensors" else "torch", _Full(full)
                        if library == "torch.save" else full)
    with pytest.raises(RamptoolError, match="cannot write the checkpoint in .*the previous checkpoint is intact"):
        train(TrainConfig(out=str(out), resume=True, epochs=2))
    monkeypatch.undo()
    assert all(torch.equal(before[k], v) for k, v in read_weights_of(out).items())
    train(TrainConfig(out=str(out), resume=True, epochs=2))  # and the run goes on from it


class _Full:
    """torch, with a save that finds the disk full."""

    def __init__(self, save):
        self.save = save

    def __getattr__(self, name):
        return getattr(torch, name)


def read_weights_of(out):
    from ramptool.checkpoints.format import read_weights

    return read_weights(out / "model.safetensors")

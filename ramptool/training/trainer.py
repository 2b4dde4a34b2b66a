"""One trainer for every training method and combiner.

Reproducibility: the batch order depends on (seed, epoch), each batch's augmentation on (seed, epoch, step),
and the global torch RNG is reseeded from (seed, epoch, step) before every step (random starts, E-AT/SAT norm
sampling). A run restarted from any checkpoint therefore replays the rest exactly; checkpoints are written at
every epoch end and on Ctrl-C (mid-epoch), always atomically, and hold the epoch's running metric sums, so a
resumed epoch reports the metrics of the uninterrupted one. The run folder is locked from the Trainer's creation
to the end of ``run()`` (ramptool.rundir).

Under torchrun the trainer runs data-parallel (``ramptool.distributed``): every process takes its slice of the
same global batches, the model is wrapped in DistributedDataParallel, and only rank 0 writes. A checkpoint holds
no trace of the number of processes, so a run resumes with any number of them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import signal
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

from ramptool.checkpoints.format import MODEL_FILE, STATE_FILE, load_state, run_finished, save_checkpoint, save_state
from ramptool.checkpoints.loading import load_checkpoint, recorded_normalize
from ramptool.data.batches import batch_loader, batch_seed, default_workers, iterate_batches, num_batches, to_unit_float
from ramptool.data.datasets import dataset_spec, held_out_split, load_split
from ramptool.errors import STOP_SIGNALS, RamptoolError, Stopped, TrainingDiverged
from ramptool.evaluation.report import attack_label
from ramptool.evaluation.union import evaluate_union
from ramptool.loggers import Loggers, open_loggers, wanted
from ramptool.models import build_model, check_forward, resolve_normalize
from ramptool.plugins.registry import get
from ramptool.runtime import distributed
from ramptool.runtime.device import eval_mode, resolve_device, set_threads
from ramptool.runtime.files import atomic_write, remove_orphans
from ramptool.runtime.progress import progress_display
from ramptool.runtime.rundir import (
    FolderLock,
    discard_set_aside,
    is_writer,
    prepare_folder,
    recover_set_aside,
    restore_set_aside,
    set_aside,
)
from ramptool.threat import eps_scale_warnings
from ramptool.training import attack_gap
from ramptool.training.config import TrainConfig
from ramptool.training.methods import MethodContext
from ramptool.training.resolve import is_resolved, resolve_config, resolve_resumed, trained_norms
from ramptool.training.schedules import learning_rate

__all__ = ["TrainConfig", "Trainer", "train"]

METRICS_FILE = "metrics.jsonl"
KEPT_DIR = "checkpoints"  # --keep-steps copies: KEPT_DIR/step<N>.safetensors
RUN_FILES = (MODEL_FILE, STATE_FILE, METRICS_FILE)
STATE_KEYS = ("model", "optimizer", "combiner", "method", "epoch", "step", "rng", "config", "history")
# a fine-tune checks its clean accuracy on this many test points before it starts and after every epoch
CLEAN_CHECK_POINTS = 1000
CLEAN_DROP_WARNING = 0.10
CHANCE_MARGIN = 0.02  # a fine-tune whose clean accuracy is within this of chance has been wrecked (too high an lr)
LAST_GOOD_FILE = "last-good.safetensors"  # the last epoch whose clean accuracy stayed within CLEAN_DROP_WARNING


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.no_decay_bn_bias:
        groups = [{"params": [p for p in params if p.dim() > 1], "weight_decay": cfg.weight_decay},
                  {"params": [p for p in params if p.dim() <= 1], "weight_decay": 0.0}]
    else:
        groups = [{"params": params, "weight_decay": cfg.weight_decay}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    raise RamptoolError(f"unknown optimizer {cfg.optimizer!r}; use sgd or adam")


def check_out_dir(out: Path, resume: bool, overwrite: bool) -> None:
    """Never wipe a folder; refuse to silently replace a run."""
    if resume:
        if not (out / STATE_FILE).exists():
            raise RamptoolError(f"nothing to resume in {out} (no {STATE_FILE})")
        return
    if ((out / MODEL_FILE).exists() or (out / STATE_FILE).exists()) and not overwrite:
        what = "a finished run" if run_finished(out) else "an unfinished run (continue it with --resume)"
        raise RamptoolError(f"{out} already holds {what}; pass --overwrite or choose another --out")


@contextmanager
def stop_requests():
    """Turn the first stop signal into a request (``state["signal"]``) the loop honours after the step in progress:
    it writes a checkpoint and stops. A second Ctrl-C interrupts at once."""
    state = {"signal": 0}

    def handler(signum, frame):
        if state["signal"] and signum == signal.SIGINT:
            raise Stopped(signum)
        state["signal"] = state["signal"] or signum

    previous = {}
    for signum in STOP_SIGNALS:
        try:
            previous[signum] = signal.signal(signum, handler)
        except ValueError:  # not the main thread: signals stay as they are
            break
    failing = False
    try:
        yield state
    except BaseException:
        failing = True
        raise
    finally:
        for signum, handling in previous.items():
            # once asked to stop, or failing (a lost peer), the process is on its way out: a SIGTERM now (torchrun
            # sends one when a peer died, and repeats it) must not replace the error that says what survives
            stopping = (state["signal"] or failing) and signum != signal.SIGINT
            signal.signal(signum, signal.SIG_IGN if stopping else handling)


class TrainingInterrupted(RamptoolError):
    """A stop signal honoured after a checkpoint; the exit code is the shell's for that signal (130, 143, 138)."""

    def __init__(self, message: str, signum: int = signal.SIGINT):
        super().__init__(message)
        self.exit_code = 128 + signum


class Trainer:
    """Owns the run folder from construction to the end of ``run()``: it is checked and locked before any work
    (by the first process, the one that writes), and an old run being replaced (``overwrite``) is kept aside until
    the new run's first checkpoint."""

    def __init__(self, cfg: TrainConfig):
        if not (cfg.resume or is_resolved(cfg)):
            raise RamptoolError("the Trainer takes a resolved configuration: pass it through "
                                "ramptool.training.resolve_config first (train() does)")
        if cfg.pair == "auto":
            raise RamptoolError("--pair auto is resolved before training, by ramptool.workflows.pair."
                                "resolve_auto_pair (the CLI does it)")
        self.out = Path(cfg.out)
        self.lock = FolderLock(self.out).acquire() if is_writer() else None
        try:
            self._setup(cfg)
        except BaseException:
            self._release()
            raise

    def _release(self) -> None:
        if self.lock is not None:
            self.lock.release()

    def _setup(self, cfg: TrainConfig) -> None:
        resumed_state = self._open_run_folder(cfg)
        cfg = self.cfg
        if cfg.data_dir and Path(cfg.data_dir).exists() and not Path(cfg.data_dir).is_dir():
            raise RamptoolError(f"--data-dir {cfg.data_dir} is a file, not a folder")
        if cfg.tensorboard and is_writer():
            prepare_folder(cfg.tensorboard, "--tensorboard")
        self.dist = distributed.setup(resolve_device(cfg.device))
        self.device = self.dist.device
        set_threads(cfg.threads, self.device)
        self._load_data()
        self._build_model()
        self._build_training()
        self.n_batches = num_batches(self.train_data, cfg.batch_size)
        self.epoch, self.step = 0, 0
        self.history: list[dict] = []
        self.running = _fresh_running()
        self.replacing = False
        self.loggers, self.saved_loggers = Loggers({}), {}
        # every rank sums the training scalars at the logged steps (a collective), so every rank must know
        self.log_steps = bool(wanted(cfg.tensorboard, cfg.wandb, cfg.loggers))
        # a fine-tune watches its clean accuracy against the checkpoint's (a too-high lr destroys it quietly)
        self.check_data = self._clean_check_points() if cfg.init else None
        self.start_clean = self.clean_accuracy() if self.check_data is not None and resumed_state is None else None
        if resumed_state is not None:
            self._load_state(resumed_state, self.out / STATE_FILE)
        check_n = attack_gap.check_size(cfg.check_n, len(self.train_data)) if trained_norms(cfg) else 0
        self.gap_points, self.gap_source = (held_out_split(cfg.dataset, cfg.data_dir, cfg.subset, check_n,
                                                           cfg.image_size) if check_n else (None, None))

    def _open_run_folder(self, cfg: TrainConfig) -> dict | None:
        """Recover the locked folder, settle the configuration (a resumed run's comes from the folder) and check
        that the folder may take the run; the saved training state of a resumed run."""
        if self.lock is not None:
            recover_set_aside(self.out, (MODEL_FILE, STATE_FILE))
            remove_orphans(self.out)
        if cfg.resume:  # after the recovery above: the run to continue may be one an --overwrite had set aside
            cfg = resolve_resumed(cfg)
        check_out_dir(self.out, cfg.resume, cfg.overwrite)
        self.cfg = cfg
        if not cfg.resume:
            return None
        state = load_state(self.out / STATE_FILE)
        if not isinstance(state, dict):
            raise RamptoolError(f"{self.out / STATE_FILE} is not a ramptool training state")
        return state

    def _load_data(self) -> None:
        cfg = self.cfg
        self.spec = dataset_spec(cfg.dataset, cfg.image_size)
        self.train_data = load_split(cfg.dataset, "train", cfg.data_dir, cfg.subset, image_size=cfg.image_size)
        if len(self.train_data) == 0:
            raise RamptoolError("the training set is empty")
        _check_every_rank_gets_points(len(self.train_data), cfg.batch_size, self.dist.world_size)
        if self.dist.is_main:
            trained = {norm: cfg.eps[norm] for norm in trained_norms(cfg) if norm in cfg.eps}
            for message in eps_scale_warnings(trained, math.prod(self.spec.input_shape)):
                print(f"warning: {message}", file=sys.stderr)
        self.workers = cfg.workers if cfg.workers is not None else default_workers(
            self.train_data, self.device, self.dist.local_world_size)

    def _build_model(self) -> None:
        """The checkpoint to fine-tune (checked against the data), or a new model from the run's seed."""
        cfg = self.cfg
        self.init_metadata = {}
        if cfg.init:
            self.model, self.init_metadata = load_checkpoint(
                cfg.init, arch=cfg.arch, dataset=cfg.dataset, normalize=cfg.normalize,
                arch_options=cfg.arch_options, model_dir=cfg.model_dir)
            if self.init_metadata["num_classes"] != self.train_data.num_classes:
                raise RamptoolError(f"checkpoint {cfg.init} has {self.init_metadata['num_classes']} classes, "
                                    f"dataset {cfg.dataset} has {self.train_data.num_classes}")
            if tuple(self.init_metadata["input_shape"]) != tuple(self.spec.input_shape):
                raise RamptoolError(f"checkpoint {cfg.init} takes inputs {tuple(self.init_metadata['input_shape'])}, "
                                    f"dataset {cfg.dataset} has {tuple(self.spec.input_shape)}: pass the --dataset "
                                    f"it was trained on")
            self.arch, self.arch_options = self.init_metadata["arch"], self.init_metadata.get("arch_options", {})
            self.normalization = {key: self.init_metadata.get(key) for key in ("mean", "std")}
            self.normalization["normalize"] = recorded_normalize(self.init_metadata)
        else:
            self.arch, self.arch_options = cfg.arch or "small-cnn", cfg.arch_options
            label, mean, std = resolve_normalize(cfg.normalize, "dataset", self.spec)
            self.normalization = {"normalize": label, "mean": mean, "std": std}
            torch.manual_seed(cfg.seed)  # the initial weights are part of the run's reproducibility
            self.model = build_model(self.arch, self.train_data.num_classes, self.spec.input_shape, mean, std,
                                     **cfg.arch_options)
            check_forward(self.model, self.spec.input_shape, self.arch, cfg.arch_options)
        self.model.to(self.device)
        if cfg.channels_last:
            self.model.to(memory_format=torch.channels_last)
        if cfg.sync_bn:
            self.model = distributed.sync_batchnorm(self.model)

    def _build_training(self) -> None:
        """The optimizer, the combiner and the method, and the data-parallel model the training step runs."""
        cfg = self.cfg
        self.optimizer = build_optimizer(self.model, cfg)
        self.combiner = get("combiner", cfg.combiner)(self.model, lambda m: build_optimizer(m, cfg),
                                                      **cfg.combiner_options)
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16) if cfg.amp == "bf16" else None
        # a CPU's cost grows linearly (or worse) with the batch, so concatenating only pays on a GPU
        batch_attacks = cfg.batch_attacks == "on" or (cfg.batch_attacks == "auto" and self.device.type == "cuda")
        self.context = MethodContext(norms=list(cfg.norms), eps=dict(cfg.eps),
                                     pair=tuple(cfg.pair) if cfg.pair else None, attack=cfg.attack,
                                     attack_steps=cfg.attack_steps, attack_options=cfg.attack_options, lam=cfg.lam,
                                     pairing=cfg.pairing, pairing_options=cfg.pairing_options, autocast=autocast,
                                     batch_attacks=batch_attacks)
        self.method = get("method", cfg.method)(self.context, **cfg.method_options)
        self.parallel_model = distributed.data_parallel(self.model)

    # ------------------------------------------------------------------ state

    def _state(self, running: dict) -> dict:
        return {"model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
                "optimizer": self.optimizer.state_dict(), "combiner": self.combiner.state_dict(),
                "method": self.method.state_dict(), "epoch": self.epoch, "step": self.step,
                "rng": torch.get_rng_state(), "config": dataclasses.asdict(self.cfg) | {"resume": False},
                "history": self.history, "running": running, "start_clean": self.start_clean,
                "loggers": self.loggers.state()}

    def _load_state(self, state: dict, path: Path) -> None:
        missing = [key for key in STATE_KEYS if key not in state]
        if missing:
            raise RamptoolError(f"{path} is not a complete training state (no {missing[0]!r}); it was damaged or "
                                f"edited")
        try:
            if not (isinstance(state["epoch"], int) and isinstance(state["step"], int) and state["epoch"] >= 0
                    and 0 <= state["step"] < self.n_batches):
                raise ValueError(f"epoch {state['epoch']!r}, step {state['step']!r} of {self.n_batches}")
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.combiner.load_state_dict(state["combiner"])
            self.method.load_state_dict(state["method"])
            self.history = list(state["history"])
            saved = dict(state.get("running") or _fresh_running())
            # the saved sums are over every rank: one rank carries them on, the others start from zero
            self.running = saved if self.dist.is_main else {**_fresh_running(), "seconds": saved["seconds"]}
            self.start_clean = state.get("start_clean")
            self.saved_loggers = state.get("loggers") or {}
            torch.set_rng_state(state["rng"])
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as error:
            first = (str(error).strip().splitlines() or [""])[0][:200]
            raise RamptoolError(f"{path} cannot be restored ({type(error).__name__}: {first}); it was damaged or "
                                f"edited") from None
        self.epoch, self.step = state["epoch"], state["step"]

    def metadata(self, finished: bool) -> dict:
        cfg = self.cfg
        return {"arch": self.arch, "arch_options": self.arch_options,
                "num_classes": self.train_data.num_classes, "input_shape": list(self.spec.input_shape),
                **self.normalization, "dataset": cfg.dataset,
                "method": cfg.method, "trained_norms": trained_norms(cfg),
                "threat_model": {"norms": list(cfg.norms), "eps": cfg.eps,
                                 **({"pair": cfg.pair} if self.method.uses == "pair" else {})},
                "method_options": cfg.method_options, "attack": cfg.attack, "attack_options": cfg.attack_options,
                # a method that pairs predictions (RAMP) records its weight and loss; the others have none
                **({"lambda": cfg.lam, "pairing": cfg.pairing, "pairing_options": cfg.pairing_options}
                   if hasattr(self.method, "pairing_loss") else {}),
                "combiner": cfg.combiner, "combiner_options": cfg.combiner_options,
                "epoch": self.epoch, "step": self.step, "epochs": cfg.epochs, "finished": finished,
                "metrics": self.history[-1] if self.history else {}, "init": cfg.init,
                "init_trained_norms": self.init_metadata.get("trained_norms"),
                "source": self.init_metadata.get("source"), "start_clean": self.start_clean,
                # epochs whose training attack missed what an AutoAttack-grade one found: its accuracies overstate
                "flagged_gaps": attack_gap.flagged(self.history, cfg.check_gap),
                "config": dataclasses.asdict(cfg)}

    def _write_metrics(self) -> None:
        """metrics.jsonl: one line per finished epoch, rewritten whole from the history the training state holds,
        so after any kill it lists what the checkpoint does (a resumed run rewrites it at its first checkpoint)."""
        lines = "".join(json.dumps(record) + "\n" for record in self.history)
        atomic_write(self.out / METRICS_FILE, lambda tmp: Path(tmp).write_text(lines))

    def save(self, finished: bool = False) -> None:
        running = _sum_over_ranks(self.running)  # every rank saves at the same points, so this collective matches
        if not self.dist.is_main:
            return
        try:
            save_state(self.out / STATE_FILE, self._state(running))
            save_checkpoint(self.out / MODEL_FILE, self.model, self.metadata(finished))
            self._write_metrics()
        except OSError as error:  # disk full, folder removed, ...: the previous checkpoint is still whole
            raise RamptoolError(f"cannot write the checkpoint in {self.out}: {error.strerror or error}; the previous "
                                f"checkpoint is intact") from None
        if self.replacing:  # the new run has its checkpoint: the old one may go
            discard_set_aside(self.out)
            self.replacing = False

    @property
    def global_step(self) -> int:
        """Optimizer steps taken since the run started."""
        return self.epoch * self.n_batches + self.step

    def _keep_copy(self) -> None:
        """The model as it is now, kept beside the run's checkpoint (``keep_steps``); a resumed run that replays
        the step writes the same weights again."""
        path = self.out / KEPT_DIR / f"step{self.global_step}.safetensors"
        try:
            path.parent.mkdir(exist_ok=True)
            save_checkpoint(path, self.model, self.metadata(finished=False) | {"global_step": self.global_step})
        except OSError as error:
            raise RamptoolError(f"cannot write {path}: {error.strerror or error}") from None

    # ------------------------------------------------------------------ loop

    def set_lr(self, t: float) -> float:
        lr = learning_rate(self.cfg.schedule, self.cfg.lr, t, self.cfg.epochs, self.cfg.lr_drop_epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.combiner.set_lr(lr)
        return lr

    def evaluate(self) -> dict:
        x, y = self.eval_data.tensors()
        norms = [n for n in ("linf", "l2", "l1") if n in self.cfg.eps] or list(self.cfg.eps)
        with eval_mode(self.model):
            report = evaluate_union(self.model, x, y, norms, self.cfg.eps, steps=self.cfg.eval_steps)
        return {"eval": report["accuracy"], "eval_attack": f"{attack_label(report)}, first {report['n']} test points"}

    def check_training_attack(self) -> dict:
        """The training-attack check's fields for metrics.jsonl (``attack_gap``), with a warning per norm whose gap
        exceeds --check-gap."""
        started, (x, y) = time.perf_counter(), self.gap_points.tensors()
        points = f"{len(y)} {self.gap_source}"
        record = attack_gap.measure(self.method, self.model, x, y, trained_norms(self.cfg), self.cfg.eps)
        if self.dist.is_main:
            for line in attack_gap.warnings(record, self.epoch, self.cfg.check_gap, self.cfg.attack,
                                            self.cfg.attack_steps, points):
                print(f"warning: {line}", file=sys.stderr, flush=True)
        return {"check_points": points, **record, "check_seconds": round(time.perf_counter() - started, 2)}

    def _stop_if_wrecked(self, clean: float) -> None:
        """A fine-tune fallen to chance clean accuracy stops before its epoch is saved: the last checkpoint stays the
        previous epoch's (or there is none, and the checkpoint it started from is untouched)."""
        chance = 1 / self.train_data.num_classes
        # a checkpoint that was itself near chance (random weights) has nothing to lose
        if self.start_clean is None or clean > chance + CHANCE_MARGIN or self.start_clean - clean <= CLEAN_DROP_WARNING:
            return
        kept = (f"the last checkpoint in {self.out} is intact" if (self.out / MODEL_FILE).exists() else
                f"no checkpoint was written; {self.cfg.init} is untouched")
        if (self.out / LAST_GOOD_FILE).exists():
            kept += f", and {LAST_GOOD_FILE} is the last epoch within {100 * CLEAN_DROP_WARNING:.0f} points"
        raise TrainingDiverged(f"clean accuracy on the check points fell to {100 * clean:.1f}% at epoch {self.epoch} "
                               f"(chance: {100 * chance:.1f}%, checkpoint: {100 * self.start_clean:.1f}%): the "
                               f"model is wrecked, most likely by too high a --lr; stopped, {kept}")

    def _log_steps(self, lr: float) -> None:
        """The training scalars since the last logged step, over every rank, to the loggers."""
        now, last = _sum_over_ranks(self.running), self.logged
        self.logged = now
        values = {key: (total - last["sums"].get(key, 0.0)) / (now["counts"][key] - last["counts"].get(key, 0.0))
                  for key, total in now["sums"].items() if now["counts"][key] > last["counts"].get(key, 0.0)}
        seconds = now["seconds"] - last["seconds"]
        self.loggers.log_step({**values, "lr": lr, "img_per_s": (now["images"] - last["images"]) / max(seconds, 1e-9)},
                              self.global_step)

    def _clean_check_points(self):
        try:
            return load_split(self.cfg.dataset, "test", self.cfg.data_dir, CLEAN_CHECK_POINTS,
                              image_size=self.cfg.image_size)
        except RamptoolError as error:  # e.g. an ImageFolder without val/: train anyway, unwatched
            print(f"note: no clean-accuracy check against the checkpoint ({error})", file=sys.stderr)
            return None

    @torch.no_grad()
    def clean_accuracy(self) -> float:
        """Clean accuracy on the fine-tune's check points (the first CLEAN_CHECK_POINTS test points)."""

        correct = 0
        with eval_mode(self.model):
            for x, y in iterate_batches(self.check_data, 500, shuffle=False):
                correct += int((self.model(x.to(self.device)).argmax(1).cpu() == y).sum())
        return correct / len(self.check_data)

    def run(self) -> dict:
        try:
            cfg = self.cfg
            main = self.dist.is_main
            if cfg.eval_n:
                self.eval_data = load_split(cfg.dataset, "test", cfg.data_dir, cfg.eval_n, image_size=cfg.image_size)
            if main:
                if not cfg.resume:
                    self.replacing = cfg.overwrite and set_aside(self.out, RUN_FILES)
                self._write_metrics()  # a resumed run's: the lines of the epochs its checkpoint holds
            progress = _progress(cfg.progress and main)
            self.loggers = open_loggers(wanted(cfg.tensorboard, cfg.wandb, cfg.loggers), "train", self.out,
                                        dataclasses.asdict(cfg), self.saved_loggers, main)
            lost = f"the last checkpoint in {self.out} is intact; continue with --resume"
            with distributed.guard(lost), stop_requests() as stop, progress, self.loggers:
                while self.epoch < cfg.epochs:
                    self._run_epoch(progress, stop)
            self.save(finished=True)
            return {"out": str(self.out), "epochs": self.epoch, "history": self.history}
        finally:
            if self.replacing:  # failed before its first checkpoint: the old run comes back
                restore_set_aside(self.out)
            self._release()

    def _run_epoch(self, progress, stop) -> None:
        cfg, epoch = self.cfg, self.epoch
        if self.step == 0:
            self.combiner.start_epoch(self.model)
            self.running = _fresh_running()
        task = progress.add_task(f"epoch {epoch + 1}/{cfg.epochs}", total=self.n_batches, completed=self.step,
                                 stats="") if not isinstance(progress, nullcontext) else None
        # sums, counts and time so far this epoch survive a mid-epoch checkpoint, so a resumed epoch reports what
        # the uninterrupted one would; each stat is averaged over the samples of the batches that produced it
        sums, counts = self.running["sums"], self.running["counts"]
        started = time.perf_counter() - self.running["seconds"]
        self.logged = _sum_over_ranks(self.running) if self.log_steps else None
        batches = batch_loader(self.train_data, cfg.batch_size, shuffle=True, seed=cfg.seed, epoch=epoch,
                               augment=self.spec.augment, start=self.step, rank=self.dist.rank,
                               world_size=self.dist.world_size, workers=self.workers,
                               pin_memory=self.device.type == "cuda")
        model = self.parallel_model
        for x, y in batches:
            lr = self.set_lr(epoch + (self.step + 1) / self.n_batches)
            # per-sample randomness differs between ranks; choices that must agree go through distributed.agree
            torch.manual_seed(batch_seed(cfg.seed, epoch, self.step) + 7919 + self.dist.rank)
            global_batch = min(cfg.batch_size, len(self.train_data) - self.step * cfg.batch_size)
            x = to_unit_float(x.to(self.device, non_blocking=True))
            y = y.to(self.device, non_blocking=True)
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            model.train()
            loss, stats = self.combiner.train_step(model, self.optimizer, lambda: self.method.loss(model, x, y), x, y)
            self.step += 1
            if cfg.keep_steps and self.dist.is_main and self.global_step in cfg.keep_steps:
                self._keep_copy()
            # every stat is a rank's term of a global mean (distributed.global_mean): weighting by the global
            # batch over the number of ranks makes the sums over ranks exact
            share = global_batch / self.dist.world_size
            self.running["images"] += share
            for key, value in {"loss": loss, **stats}.items():
                sums[key] = sums.get(key, 0.0) + float(value) * share
                counts[key] = counts.get(key, 0.0) + share
            self.running["seconds"] = time.perf_counter() - started
            if self.log_steps and self.global_step % cfg.log_every == 0:
                self._log_steps(lr)
            if task is not None:
                shown = "  ".join(f"{k} {v / counts[k]:.3f}" for k, v in sums.items())
                rate = self.running["images"] / max(self.running["seconds"], 1e-9)
                progress.update(task, advance=1, stats=f"{shown}  {rate:.0f} img/s  lr {lr:.4g}")
            # every rank stops after the same step, so that the checkpoint's collectives match; after the epoch's
            # last step the stop waits for the epoch's own checkpoint (a state saved at step n_batches is no state)
            signum = distributed.largest(stop["signal"])
            if signum and self.step < self.n_batches:
                self.save()
                raise TrainingInterrupted(f"stopped by {signal.Signals(signum).name} at epoch {epoch + 1}, step "
                                          f"{self.step}: checkpoint saved in {self.out}, continue with --resume",
                                          signum)
        combined = self.combiner.end_epoch(self.model) or {}  # what the combination measured (GP's angles)
        total = _sum_over_ranks(self.running)
        seconds = time.perf_counter() - started
        record = {"epoch": epoch + 1, "lr": lr, "seconds": round(seconds, 2),
                  "img_per_s": round(total["images"] / max(seconds, 1e-9), 1),
                  **{k: round(v / total["counts"][k], 5) for k, v in total["sums"].items()}, **combined}
        self.epoch, self.step = epoch + 1, 0
        if cfg.eval_n:
            record.update(self.evaluate())
        if self.check_data is not None:
            record["test_clean"] = round(self.clean_accuracy(), 5)
            self._stop_if_wrecked(record["test_clean"])
        if self.gap_points is not None and (self.epoch % cfg.check_every == 0 or self.epoch == cfg.epochs):
            record.update(self.check_training_attack())
        self.history.append(record)
        self.running = _fresh_running()
        self.save(finished=False)
        signum = distributed.largest(stop["signal"])  # a stop that came after the epoch's last step
        if self.dist.is_main:
            if self.start_clean is not None and record.get("test_clean", 0) >= self.start_clean - CLEAN_DROP_WARNING:
                atomic_write(self.out / LAST_GOOD_FILE, lambda tmp: shutil.copyfile(self.out / MODEL_FILE, tmp))
            self.loggers.log_epoch(record, self.global_step)
            _report_epoch(record, self.start_clean)
        if signum:
            raise TrainingInterrupted(f"stopped by {signal.Signals(signum).name} at the end of epoch {epoch + 1}: "
                                      f"checkpoint saved in {self.out}, continue with --resume", signum)


def _check_every_rank_gets_points(n: int, batch_size: int, world_size: int) -> None:
    smallest = min(batch_size, n % batch_size or batch_size)
    if smallest < world_size:
        raise RamptoolError(f"{world_size} processes need at least {world_size} points in every global batch, but "
                            f"one has {smallest} ({n} points, --batch-size {batch_size}): change --batch-size or "
                            f"--subset")


def _fresh_running() -> dict:
    return {"sums": {}, "counts": {}, "images": 0.0, "seconds": 0.0}


def _sum_over_ranks(running: dict) -> dict:
    """The epoch's running metric sums and counts over every rank (every rank holds the same keys: methods agree
    on their norms); the time is this process's."""
    keys = sorted(running["sums"])
    local = [running["sums"][k] for k in keys] + [running["counts"][k] for k in keys] + [running["images"]]
    totals = distributed.all_reduce_sum(torch.tensor(local, dtype=torch.float64)).tolist()
    return {"sums": dict(zip(keys, totals[:len(keys)])), "counts": dict(zip(keys, totals[len(keys):-1])),
            "images": totals[-1], "seconds": running["seconds"]}


def _report_epoch(record: dict, start_clean: float | None) -> None:
    """One line per epoch, readable in a log file where the live progress bar does not render."""

    parts = [f"epoch {record['epoch']}", f"{record['seconds']:.0f} s", f"{record['img_per_s']:.0f} img/s",
             *(f"{k} {v:.3f}" for k, v in record.items() if k.startswith(("loss", "acc")))]
    if "eval" in record:
        parts.append("eval " + " ".join(f"{k} {100 * v:.1f}" for k, v in record["eval"].items()))
    checked = [key.removeprefix("check_gap_") for key in record if key.startswith("check_gap_")]
    if checked:
        parts.append("check " + " ".join(f"{norm} {100 * record[f'check_train_attack_{norm}']:.1f}/"
                                         f"{100 * record[f'check_strong_{norm}']:.1f}" for norm in checked)
                     + " (training attack, an upper bound / AutoAttack-grade)")
    if "test_clean" in record and start_clean is not None:
        parts.append(f"test clean {100 * record['test_clean']:.1f} (checkpoint {100 * start_clean:.1f})")
        drop = start_clean - record["test_clean"]
        if drop > CLEAN_DROP_WARNING:
            parts.append(f"[bold red]WARNING: clean accuracy fell {100 * drop:.1f} points below the checkpoint's; "
                         f"lower --lr? ({LAST_GOOD_FILE} keeps the last epoch within "
                         f"{100 * CLEAN_DROP_WARNING:.0f} points)[/]")
    Console().print("  ".join(parts), highlight=False)


def _progress(enabled: bool):
    """A bar on a terminal, a line every LOG_EVERY_SECONDS in a log file, nothing with --no-progress."""
    if not enabled:
        return nullcontext()
    return progress_display(Console(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeRemainingColumn(), TextColumn("{task.fields[stats]}"))


def train(cfg: TrainConfig) -> dict:
    """Resolve ``cfg`` (``resolve_config``) and run it."""
    return Trainer(resolve_config(cfg)).run()

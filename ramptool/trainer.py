"""One trainer for every training method and combiner.

Reproducibility: the batch order depends on (seed, epoch), each batch's augmentation on (seed, epoch, step),
and the global torch RNG is reseeded from (seed, epoch, step) before every step (random starts, E-AT/SAT norm
sampling). A run restarted from any checkpoint therefore replays the rest exactly; checkpoints are written at
every epoch end and on Ctrl-C (mid-epoch), always atomically.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ramptool.checkpoint import (
    MODEL_FILE,
    STATE_FILE,
    load_checkpoint,
    load_state,
    run_finished,
    save_checkpoint,
    save_state,
)
from ramptool.data import batch_seed, get_dataset, iterate_batches, load_split, num_batches
from ramptool.errors import RamptoolError
from ramptool.methods import MethodContext
from ramptool.plugins import get
from ramptool.schedules import learning_rate


@dataclass
class TrainConfig:
    out: str
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    subset: int | None = None
    arch: str | None = None  # backbone to build (default small-cnn), or --arch of a foreign state_dict
    arch_options: dict = field(default_factory=dict)
    init: str | None = None  # fine-tuning: the checkpoint to start from
    method: str = "ramp"
    norms: list[str] = field(default_factory=lambda: ["linf", "l2", "l1"])
    pair: list[str] | None = None
    eps: dict[str, float] = field(default_factory=dict)
    attack: str = "apgd"
    attack_steps: int = 10
    lam: float = 0.5
    pairing: str = "kl"
    combiner: str = "none"
    beta: float = 0.5
    epochs: int = 1
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    no_decay_bn_bias: bool = False
    schedule: str = "piecewise-ft"
    lr_drop_epoch: float | None = None
    seed: int = 0
    device: str = "auto"
    eval_n: int = 0
    eval_steps: int = 100
    amp: str | None = None
    channels_last: bool = False
    batch_attacks: str = "auto"  # on, off, or auto = on for CUDA (see MethodContext.batch_attacks)
    resume: bool = False
    overwrite: bool = False
    progress: bool = True


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RamptoolError("--device cuda asked for, but no CUDA device is available")
    if name != "cpu" and not name.startswith("cuda"):
        raise RamptoolError(f"unknown device {name!r}; use auto, cpu or cuda")
    return torch.device(name)


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


def trained_norms(cfg: TrainConfig) -> list[str]:
    if cfg.method == "clean":
        return []
    if get("method", cfg.method).uses == "pair":
        return list(cfg.pair or [])
    return list(cfg.norms)


def check_out_dir(out: Path, resume: bool, overwrite: bool) -> None:
    """Never wipe a folder; refuse to silently replace a run."""
    if resume:
        if not (out / STATE_FILE).exists():
            raise RamptoolError(f"nothing to resume in {out} (no {STATE_FILE})")
        return
    if (out / MODEL_FILE).exists() and not overwrite:
        what = "a finished run" if run_finished(out) else "an unfinished run (continue it with --resume)"
        raise RamptoolError(f"{out} already holds {what}; pass --overwrite or choose another --out")


@contextmanager
def interrupt_flag():
    """Turn the first Ctrl-C into a flag the loop checks after each step, so the step completes and a
    checkpoint is written; a second Ctrl-C interrupts at once."""
    state = {"hit": False}
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum, frame):
        if state["hit"]:
            raise KeyboardInterrupt
        state["hit"] = True

    try:
        signal.signal(signal.SIGINT, handler)
        installed = True
    except ValueError:  # not the main thread: Ctrl-C handling stays as it is
        installed = False
    try:
        yield state
    finally:
        if installed:
            signal.signal(signal.SIGINT, previous)


class TrainingInterrupted(RamptoolError):
    exit_code = 130


class Trainer:
    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.out = Path(cfg.out)
        check_out_dir(self.out, cfg.resume, cfg.overwrite)
        resumed_state = load_state(self.out / STATE_FILE) if cfg.resume else None
        if resumed_state is not None:
            saved = resumed_state["config"]
            cfg = self.cfg = dataclasses.replace(TrainConfig(**{**saved, "resume": True, "out": cfg.out}),
                                                 progress=self.cfg.progress, device=self.cfg.device)
        self.device = resolve_device(cfg.device)
        self.spec = get_dataset(cfg.dataset)
        self.train_data = load_split(cfg.dataset, "train", cfg.data_dir, cfg.subset)
        if len(self.train_data) == 0:
            raise RamptoolError("the training set is empty")
        self.init_metadata = {}
        if cfg.init:
            self.model, self.init_metadata = load_checkpoint(cfg.init, arch=cfg.arch, dataset=cfg.dataset)
            if self.init_metadata["num_classes"] != self.train_data.num_classes:
                raise RamptoolError(f"checkpoint {cfg.init} has {self.init_metadata['num_classes']} classes, "
                                    f"dataset {cfg.dataset} has {self.train_data.num_classes}")
            self.arch, self.arch_options = self.init_metadata["arch"], self.init_metadata.get("arch_options", {})
        else:
            from ramptool.models import build_model

            self.arch, self.arch_options = cfg.arch or "small-cnn", cfg.arch_options
            torch.manual_seed(cfg.seed)  # the initial weights are part of the run's reproducibility
            self.model = build_model(self.arch, self.train_data.num_classes, self.spec.input_shape,
                                     self.spec.mean, self.spec.std, **cfg.arch_options)
        self.model.to(self.device)
        if cfg.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.optimizer = build_optimizer(self.model, cfg)
        self.combiner = get("combiner", cfg.combiner)(self.model, lambda m: build_optimizer(m, cfg), cfg.beta)
        autocast = None
        if cfg.amp == "bf16":
            autocast = torch.autocast(self.device.type, dtype=torch.bfloat16)
        elif cfg.amp not in (None, "none"):
            raise RamptoolError(f"unknown --amp {cfg.amp!r}; use bf16")
        if cfg.batch_attacks not in ("auto", "on", "off"):
            raise RamptoolError(f"unknown --batch-attacks {cfg.batch_attacks!r}; use auto, on or off")
        # a CPU's cost grows linearly (or worse) with the batch, so concatenating only pays on a GPU
        batch_attacks = cfg.batch_attacks == "on" or (cfg.batch_attacks == "auto" and self.device.type == "cuda")
        self.context = MethodContext(norms=list(cfg.norms), eps=dict(cfg.eps),
                                     pair=tuple(cfg.pair) if cfg.pair else None, attack=cfg.attack,
                                     attack_steps=cfg.attack_steps, lam=cfg.lam, pairing=cfg.pairing,
                                     autocast=autocast, batch_attacks=batch_attacks)
        self.method = get("method", cfg.method)(self.context)
        self.n_batches = num_batches(self.train_data, cfg.batch_size)
        self.epoch, self.step = 0, 0
        self.history: list[dict] = []
        if resumed_state is not None:
            self._load_state(resumed_state)

    # ------------------------------------------------------------------ state

    def _state(self) -> dict:
        return {"model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
                "optimizer": self.optimizer.state_dict(), "combiner": self.combiner.state_dict(),
                "method": self.method.state_dict(), "epoch": self.epoch, "step": self.step,
                "rng": torch.get_rng_state(), "config": dataclasses.asdict(self.cfg) | {"resume": False},
                "history": self.history}

    def _load_state(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.combiner.load_state_dict(state["combiner"])
        self.method.load_state_dict(state["method"])
        self.epoch, self.step, self.history = state["epoch"], state["step"], list(state["history"])
        torch.set_rng_state(state["rng"])

    def metadata(self, finished: bool) -> dict:
        cfg = self.cfg
        return {"arch": self.arch, "arch_options": self.arch_options,
                "num_classes": self.train_data.num_classes, "input_shape": list(self.spec.input_shape),
                "mean": list(self.spec.mean), "std": list(self.spec.std), "dataset": cfg.dataset,
                "method": cfg.method, "trained_norms": trained_norms(cfg),
                "threat_model": {"norms": list(cfg.norms), "pair": cfg.pair, "eps": cfg.eps},
                "lambda": cfg.lam, "beta": cfg.beta, "pairing": cfg.pairing, "combiner": cfg.combiner,
                "epoch": self.epoch, "step": self.step, "epochs": cfg.epochs, "finished": finished,
                "metrics": self.history[-1] if self.history else {}, "init": cfg.init,
                "init_trained_norms": self.init_metadata.get("trained_norms"),
                "config": dataclasses.asdict(cfg)}

    def save(self, finished: bool = False) -> None:
        save_state(self.out / STATE_FILE, self._state())
        save_checkpoint(self.out / MODEL_FILE, self.model, self.metadata(finished))

    # ------------------------------------------------------------------ loop

    def set_lr(self, t: float) -> float:
        lr = learning_rate(self.cfg.schedule, self.cfg.lr, t, self.cfg.epochs, self.cfg.lr_drop_epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.combiner.set_lr(lr)
        return lr

    def evaluate(self) -> dict:
        from ramptool.evaluation.union import evaluate_union
        from ramptool.methods import eval_mode

        x, y = self.eval_data.tensors()
        norms = [n for n in ("linf", "l2", "l1") if n in self.cfg.eps] or list(self.cfg.eps)
        with eval_mode(self.model):
            report = evaluate_union(self.model, x, y, norms, self.cfg.eps, steps=self.cfg.eval_steps)
        return report["accuracy"]

    def run(self) -> dict:
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        if cfg.eval_n:
            self.eval_data = load_split(cfg.dataset, "test", cfg.data_dir, cfg.eval_n)
        if not cfg.resume:
            (self.out / "metrics.jsonl").write_text("")
        progress = _progress(cfg.progress)
        with interrupt_flag() as interrupted, progress:
            while self.epoch < cfg.epochs:
                self._run_epoch(progress, interrupted)
        self.save(finished=True)
        return {"out": str(self.out), "epochs": self.epoch, "history": self.history}

    def _run_epoch(self, progress, interrupted) -> None:
        cfg, epoch = self.cfg, self.epoch
        if self.step == 0:
            self.combiner.start_epoch(self.model)
        task = progress.add_task(f"epoch {epoch + 1}/{cfg.epochs}", total=self.n_batches, completed=self.step,
                                 stats="") if not isinstance(progress, nullcontext) else None
        sums: dict[str, float] = {}
        seen, started = 0, time.perf_counter()
        batches = iterate_batches(self.train_data, cfg.batch_size, shuffle=True, seed=cfg.seed, epoch=epoch,
                                  augment=self.spec.augment, start=self.step)
        for x, y in batches:
            lr = self.set_lr(epoch + (self.step + 1) / self.n_batches)
            torch.manual_seed(batch_seed(cfg.seed, epoch, self.step) + 7919)
            x, y = x.to(self.device), y.to(self.device)
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            self.model.train()
            loss, stats = self.combiner.train_step(self.model, self.optimizer,
                                                   lambda: self.method.loss(self.model, x, y), x, y)
            self.step += 1
            seen += len(y)
            for key, value in {"loss": loss, **stats}.items():
                sums[key] = sums.get(key, 0.0) + float(value) * len(y)
            if task is not None:
                shown = "  ".join(f"{k} {v / seen:.3f}" for k, v in sums.items())
                rate = seen / max(time.perf_counter() - started, 1e-9)
                progress.update(task, advance=1, stats=f"{shown}  {rate:.0f} img/s  lr {lr:.4g}")
            if interrupted["hit"]:
                self.save()
                raise TrainingInterrupted(f"interrupted at epoch {epoch + 1}, step {self.step}; checkpoint "
                                          f"saved in {self.out}, continue with --resume")
        self.combiner.end_epoch(self.model)
        seconds = time.perf_counter() - started
        record = {"epoch": epoch + 1, "lr": lr, "seconds": round(seconds, 2),
                  "img_per_s": round(seen / max(seconds, 1e-9), 1),
                  **{k: round(v / max(seen, 1), 5) for k, v in sums.items()}}
        self.epoch, self.step = epoch + 1, 0
        if cfg.eval_n:
            record["eval"] = self.evaluate()
        self.history.append(record)
        self.save(finished=False)
        with open(self.out / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")
        _report_epoch(record)


def _report_epoch(record: dict) -> None:
    """One line per epoch, readable in a log file where the live progress bar does not render."""
    from rich.console import Console

    parts = [f"epoch {record['epoch']}", f"{record['seconds']:.0f} s", f"{record['img_per_s']:.0f} img/s",
             *(f"{k} {v:.3f}" for k, v in record.items() if k.startswith(("loss", "acc")))]
    if "eval" in record:
        parts.append("eval " + " ".join(f"{k} {100 * v:.1f}" for k, v in record["eval"].items()))
    Console().print("  ".join(parts), highlight=False)


def _progress(enabled: bool):
    from rich.console import Console

    if not enabled or not Console().is_terminal:  # in a log file the per-epoch lines say it all
        return nullcontext()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    TextColumn("{task.fields[stats]}"))


def train(cfg: TrainConfig) -> dict:
    return Trainer(cfg).run()

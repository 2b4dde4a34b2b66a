"""Data-parallel training and evaluation under torchrun (docs/METHOD.md#distributed-training).

ramptool never starts processes itself: ``torchrun --nproc_per_node N -m ramptool ...`` (or torchrun's
rendezvous across nodes) starts one process per device and describes the run in the environment (RANK,
WORLD_SIZE, LOCAL_RANK, ...). ``setup`` joins that process group, nccl on CUDA (one GPU per process) and gloo on
CPU. Every helper below acts on the default process group and is the identity in a single process, so the
trainer, the methods and the evaluation call them unconditionally and one process computes exactly what it did
before.

The conventions that make N processes reproduce one:
- ``--batch-size`` is the global batch; rank r trains on its ``rank_slice`` of the batch one process would use.
- DistributedDataParallel averages gradients over ranks, so a loss averaged over a subset of the global batch
  (the whole batch, or a data-dependent part such as RAMP's kept points) is written per rank as
  ``global_mean(local_mean, local_count)``: the local mean rescaled so that its average over ranks is the mean
  over the global subset. Its gradient, averaged by DDP, is the single-process gradient.
- Random choices that must agree (the norm attacked this step) are drawn on rank 0 and broadcast (``agree``).
- Evaluation shards test points over ranks and gathers per-point results in order (``map_points``).
- Only rank 0 writes (``is_main``).
- A process that dies or is stopped ends the others with one ``PeerLost`` line (``guard``), never a hang: gloo
  notices a closed connection at once, and every collective times out after ``RAMPTOOL_DIST_TIMEOUT`` seconds.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ramptool.errors import RamptoolError

TIMEOUT_ENV = "RAMPTOOL_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 1800.0  # gloo's default; long enough for an evaluation shard to wait for the slowest rank


class PeerLost(RamptoolError):
    """Another process of the run died, was stopped, or stopped answering: this one stops too."""

    exit_code = 1


class StopRequested(BaseException):
    """SIGTERM (torchrun sends it to every worker once one has failed or the run is interrupted)."""


@dataclass(frozen=True)
class Distributed:
    """Where this process sits in the run: its rank, the number of processes, and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched() -> bool:
    """Whether torchrun (or another launcher speaking its environment protocol) started this process."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def timeout_seconds() -> float:
    text = os.environ.get(TIMEOUT_ENV, "")
    try:
        value = float(text) if text else DEFAULT_TIMEOUT_S
    except ValueError:
        raise RamptoolError(f"{TIMEOUT_ENV}={text!r} is not a number of seconds") from None
    if value <= 0:
        raise RamptoolError(f"{TIMEOUT_ENV} must be positive, got {text}")
    return value


def setup(device: torch.device) -> Distributed:
    """Join torchrun's process group (once per process); a plain process stays alone on ``device``.

    Under torchrun a CUDA run puts process LOCAL_RANK on GPU LOCAL_RANK; a CPU run uses gloo."""
    if not launched():
        return Distributed(device=device)
    env = {key: int(os.environ[key]) for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
           if key in os.environ}
    if "LOCAL_RANK" not in env:
        raise RamptoolError("RANK and WORLD_SIZE are set but LOCAL_RANK is not: start ramptool with torchrun")
    local_world = env.get("LOCAL_WORLD_SIZE", env["WORLD_SIZE"])
    if device.type == "cuda":
        visible = torch.cuda.device_count()
        if local_world > visible:
            raise RamptoolError(f"{local_world} processes on this node but {visible} visible GPUs: start one "
                                f"process per GPU (torchrun --nproc_per_node {visible})")
        device = torch.device("cuda", env["LOCAL_RANK"])
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_seconds()),
                                device_id=device if device.type == "cuda" else None)
        _stop_on_sigterm()
    return Distributed(rank=env["RANK"], world_size=env["WORLD_SIZE"], local_rank=env["LOCAL_RANK"],
                       local_world_size=local_world, device=device)


def _stop_on_sigterm() -> None:
    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # torchrun may repeat it: one is enough to stop cleanly
        raise StopRequested

    with contextlib.suppress(ValueError):  # not the main thread: leave SIGTERM as it is
        signal.signal(signal.SIGTERM, handler)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------- where am I

def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def rank_slice(n: int, rank_index: int | None = None, world: int | None = None) -> slice:
    """The contiguous part of ``n`` items that a rank handles (sizes differ by at most one)."""
    rank_index = rank() if rank_index is None else rank_index
    world = world_size() if world is None else world
    return slice(n * rank_index // world, n * (rank_index + 1) // world)


# ---------------------------------------------------------------------------------------------- collectives

def global_mean(local_mean: torch.Tensor, count) -> torch.Tensor:
    """This rank's term of a mean over a subset of the global batch, in DDP's averaging convention.

    ``local_mean`` averages ``count`` points of this rank's slice (0 points: any finite value). The result
    averaged over ranks is the mean over all ranks' points, and so is its gradient once DDP has averaged it."""
    if not active():
        return local_mean
    local = torch.as_tensor(count, device=local_mean.device).to(torch.float64).reshape(())
    total = local.clone()
    dist.all_reduce(total)
    return local_mean * (local * dist.get_world_size() / total.clamp_min(1)).to(local_mean.dtype)


def barrier() -> None:
    """Every process gets here before any goes on (what rank 0 wrote is then there for all); alone, nothing."""
    if active():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum over ranks, as a new tensor (the input is left as it is)."""
    if not active():
        return tensor
    total = tensor.to(_collective_device(), copy=True)
    dist.all_reduce(total)
    return total.to(tensor.device)


def largest(value: int) -> int:
    """The largest of the ranks' ``value``: e.g. whether any rank was asked to stop."""
    if not active():
        return value
    tensor = torch.tensor([value], dtype=torch.int64, device=_collective_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


def agree(value: int) -> int:
    """Rank 0's ``value`` on every rank: random choices that must be the same everywhere."""
    if not active():
        return value
    tensor = torch.tensor([value], dtype=torch.int64, device=_collective_device())
    dist.broadcast(tensor, src=0)
    return int(tensor.item())


def _collective_device() -> torch.device:
    """nccl reduces CUDA tensors only, gloo CPU tensors."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def gather_points(local: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``local`` (its ``rank_slice`` of the points, any length) in rank order."""
    if not active():
        return local
    device = _collective_device()
    sizes = torch.zeros(dist.get_world_size(), dtype=torch.int64, device=device)
    sizes[dist.get_rank()] = len(local)
    dist.all_reduce(sizes)
    longest = int(sizes.max())
    # gloo and nccl want equal shapes and no bool: pad every part to the longest one
    as_sent = local.to(device=device, dtype=torch.uint8 if local.dtype == torch.bool else local.dtype)
    padded = torch.zeros((longest, *local.shape[1:]), dtype=as_sent.dtype, device=device)
    padded[:len(local)] = as_sent
    parts = [torch.empty_like(padded) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, padded)
    gathered = torch.cat([part[:int(size)] for part, size in zip(parts, sizes)])
    return gathered.to(device=local.device, dtype=local.dtype)


def map_points(fn: Callable, *tensors: torch.Tensor):
    """``fn(*tensors)`` computed point-parallel: each rank runs ``fn`` on its ``rank_slice`` of the points and
    every rank gets the full result, in order. ``fn`` returns one per-point tensor or a dict of them; a point's
    result must not depend on the other points it is computed with."""
    if not active():
        return fn(*tensors)
    part = rank_slice(len(tensors[0]))
    result = fn(*(tensor[part] for tensor in tensors))
    if isinstance(result, dict):
        return {key: gather_points(value) for key, value in result.items()}
    return gather_points(result)


# ---------------------------------------------------------------------------------------------- models

def data_parallel(module: torch.nn.Module) -> torch.nn.Module:
    """DistributedDataParallel around ``module`` (which keeps its own parameters and state_dict keys)."""
    if not active():
        return module
    parameter = next(module.parameters())
    device_ids = [parameter.device.index] if parameter.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside DDP. Attacks use it: their forwards and input gradients are per rank and must not
    register a gradient reduction or broadcast buffers."""
    return model.module if isinstance(model, DistributedDataParallel) else model


class _SumOverRanks(torch.autograd.Function):
    """all_reduce(sum) whose gradient is the all_reduce(sum) of the output gradients."""

    @staticmethod
    def forward(ctx, tensor):
        return all_reduce_sum(tensor)

    @staticmethod
    def backward(ctx, grad):
        return all_reduce_sum(grad.contiguous())


class CPUSyncBatchNorm(torch.nn.modules.batchnorm._BatchNorm):
    """BatchNorm synchronised over gloo ranks on CPU, where torch's SyncBatchNorm has no kernels (and DDP refuses
    it): batch statistics over every rank's slice, the same numbers as one BatchNorm over the global batch."""

    def _check_input_dim(self, x):
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x):
        if not (self.training and active()):
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = all_reduce_sum(torch.tensor(float(x.numel() // x.shape[1]), dtype=x.dtype))
        mean = _SumOverRanks.apply(x.sum(dims)) / count
        var = _SumOverRanks.apply((x - mean.view(shape)).pow(2).sum(dims)) / count
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach(), momentum)
                self.running_var.lerp_(var.detach() * count / (count - 1).clamp_min(1), momentum)
        out = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out


def sync_batchnorm(module: torch.nn.Module) -> torch.nn.Module:
    """Every BatchNorm layer synchronised over ranks (a no-op change in a single process): torch's SyncBatchNorm
    on GPUs, ``CPUSyncBatchNorm`` on CPU. Parameters, buffers and state_dict keys stay as they are."""
    parameter = next(module.parameters(), None)
    if parameter is not None and parameter.device.type != "cpu":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for layer in module.modules():
        if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm):
            layer.__class__ = CPUSyncBatchNorm  # same state, a forward that synchronises
    return module


# ---------------------------------------------------------------------------------------------- failures

_LOST_MARKERS = ("gloo", "nccl", "connection closed", "connection reset", "timed out", "broken pipe")


def _is_lost_peer(error: BaseException) -> bool:
    if isinstance(error, dist.DistError):
        return True
    return isinstance(error, RuntimeError) and any(marker in str(error).lower() for marker in _LOST_MARKERS)


@contextlib.contextmanager
def guard(note: str = ""):
    """Turn a lost peer (a dead rank's closed connection, a timeout, a failed rendezvous, torchrun's SIGTERM)
    into one PeerLost line; ``note`` says what survives (e.g. the last checkpoint)."""
    try:
        yield
    except BaseException as error:
        if isinstance(error, StopRequested):
            cause = "torchrun stopped this process (SIGTERM): another process failed or the run was interrupted"
        elif launched() and _is_lost_peer(error):
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            first = re.sub(r"^\[[^\]]*\]\s*", "", first).split(". ")[0]  # gloo starts with its source location
            cause = f"lost contact with another process ({type(error).__name__}: {first[:160]})"
        else:
            raise
        raise PeerLost(f"{cause}{'; ' + note if note else ''}") from None

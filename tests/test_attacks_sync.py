"""The training attack's loop never makes the host wait for the device: no value read back (``.item()``,
``.cpu()``, ``bool(tensor)``, ...), no boolean-mask gather or ``nonzero()`` (whose result size the host needs),
no tensor made from host data. Counted on a CPU through patched torch functions, and with CUDA's own sync
detector where a GPU is present."""

import collections

import pytest
import torch
from torch.overrides import TorchFunctionMode

from ramptool.attacks.apgd import apgd, apgd_joint
from ramptool.models.small_cnn import SmallCNN
from ramptool.plugins.registry import get
from ramptool.training.methods import MethodContext

pytestmark = pytest.mark.usefixtures("one_thread")

READ_BACK = ("item", "cpu", "tolist", "numpy", "nonzero", "__bool__", "__int__", "__float__", "__index__")
FROM_HOST = ("tensor", "as_tensor")
EPS = {"linf": 0.1, "l2": 1.5, "l1": 10.0}


class ReadBacks(TorchFunctionMode):
    """Counts the tensor methods that read a value back (``READ_BACK``, torch.nonzero included) and indexing by a
    boolean mask, a nonzero() in disguise. A mode, not patched Tensor methods: CPython does not give a C type back
    its sequence slots when a patched __getitem__ is removed, and torch.tensor then takes every 0-d tensor for a
    sequence for the rest of the process."""

    def __init__(self, counts: collections.Counter):
        super().__init__()
        self.counts = counts

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in READ_BACK:
            self.counts[name] += 1
        elif func in (torch.Tensor.__getitem__, torch.Tensor.__setitem__):
            index = args[1]
            if isinstance(index, torch.Tensor) and index.dtype == torch.bool:
                self.counts[f"{name}[bool]"] += 1
        return func(*args, **(kwargs or {}))


@pytest.fixture
def host_syncs(monkeypatch):
    """Counts, by name, the calls that would synchronise with a GPU."""
    counts = collections.Counter()

    def counted(name, original):
        def call(*args, **kwargs):
            counts[name] += 1
            return original(*args, **kwargs)
        return call

    for name in (*FROM_HOST, "masked_select"):  # module functions: patching them leaves no trace
        monkeypatch.setattr(torch, name, counted(f"torch.{name}", getattr(torch, name)))
    with ReadBacks(counts):
        yield counts


@pytest.fixture
def model_and_batch():
    torch.manual_seed(1)
    model = SmallCNN(num_classes=10, in_chans=1, image_size=28).eval()
    return model, torch.rand(16, 1, 28, 28), torch.randint(10, (16,))


@pytest.mark.parametrize("norm", list(EPS))
def test_apgd_makes_no_host_sync(norm, model_and_batch, host_syncs):
    model, x, y = model_and_batch
    x_adv = apgd(model, x, y, norm, EPS[norm], steps=10).x_adv
    assert dict(host_syncs) == {}
    assert not torch.equal(x_adv, x)  # it did attack, through the patched functions


def test_joint_batched_apgd_as_ramp_trains_makes_no_host_sync(model_and_batch, host_syncs):
    model, x, y = model_and_batch
    apgd_joint(model, x, y, [("linf", EPS["linf"]), ("l1", EPS["l1"])], steps=10, batched=True)
    apgd(model, x, y, "l1", EPS["l1"], steps=10, large_eps=True, random_init=True, keep="misclassified")
    assert dict(host_syncs) == {}


def test_the_counter_sees_a_sync(model_and_batch, host_syncs):
    """What the patched functions catch: the drop_fooled evaluation path asks after every step whether a point
    was fooled (a ball too small to fool any keeps them all in for the ten steps)."""
    model, x, y = model_and_batch
    apgd(model, x, y, "linf", 1e-4, steps=10, drop_fooled=True, keep="misclassified")
    assert host_syncs["__bool__"] >= 10


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
@pytest.mark.parametrize("norm", list(EPS))
def test_apgd_on_cuda_makes_no_sync(norm, model_and_batch):
    model, x, y = model_and_batch
    model, x, y = model.cuda(), x.cuda(), y.cuda()
    apgd(model, x, y, norm, EPS[norm], steps=2)  # lazy initialisation (cuDNN, allocator) may sync once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        apgd(model, x, y, norm, EPS[norm], steps=10)
        apgd_joint(model, x, y, [("linf", EPS["linf"]), ("l1", EPS["l1"])], steps=10, batched=True)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("method", ["ramp", "max"])
def test_a_training_step_waits_a_fixed_few_times_whatever_the_attack_steps(method, model_and_batch, host_syncs):
    """Outside the attack loop a step does wait: each norm's threat-model check (one reduction read back) and RAMP's
    gather of the points kept for the pairing loss; never once per attack iteration."""
    model, x, y = model_and_batch
    counts = []
    for steps in (3, 6):
        host_syncs.clear()
        ctx = MethodContext(eps=EPS, pair=("linf", "l1"), attack_steps=steps, batch_attacks=True)
        get("method", method)(ctx).loss(model.train(), x, y)
        counts.append(dict(host_syncs))
    assert counts[0] == counts[1]
    assert sum(counts[0].values()) <= 4  # ramp: 2 checks + 2 gathers; max: 3 checks

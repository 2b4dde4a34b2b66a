"""bf16 autocast and channels_last for training (--amp bf16, --channels-last): they run on a CPU too, the
training attacks keep their strength under autocast, and nothing leaves autocast switched on."""

from pathlib import Path

import pytest
import torch

from ramptool.attacks.apgd import apgd
from ramptool.checkpoints.format import read_weights
from ramptool.checkpoints.loading import load_model
from ramptool.training.config import TrainConfig
from ramptool.training.methods import RAMP, MethodContext
from ramptool.training.resolve import resolve_config
from ramptool.training.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

EPS = {"linf": 0.1, "l2": 1.5, "l1": 10.0}
SHIPPED = Path(__file__).resolve().parents[1] / "ramptool" / "recipes" / "checkpoints" / "fmnist-linf-at.safetensors"


@pytest.mark.parametrize("norm", list(EPS))
def test_the_training_attack_under_bf16_autocast_fools_the_same_points_within_noise(norm, fmnist_test):
    model = load_model(str(SHIPPED)).eval()  # l∞-AT: many points sit near the boundary the attack must cross
    x, y = fmnist_test[0][:128], fmnist_test[1][:128]
    full = apgd(model, x, y, norm, EPS[norm], steps=10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = apgd(model, x, y, norm, EPS[norm], steps=10)
    assert half.x_adv.dtype == torch.float32 and half.loss.dtype == torch.float32
    # measured on 256 points: at most 2 more or fewer fooled, at most 8 that only one of the two fools
    assert abs(int(half.fooled.sum()) - int(full.fooled.sum())) <= 4
    assert int((half.fooled ^ full.fooled).sum()) <= 8
    with torch.no_grad():  # and the float32 model is as wrong at the points found in bf16
        wrong_full, wrong_half = ((model(z.x_adv).argmax(1) != y).sum() for z in (full, half))
    assert abs(int(wrong_full) - int(wrong_half)) <= 4
    assert int(full.fooled.sum()) >= 10  # the attack does break points: the comparison is not vacuous


def test_bf16_and_channels_last_training_runs_on_a_cpu_evaluates_in_float32_and_keeps_float32_weights(tmp_path):
    losses, seen = {}, {}
    for amp in ("none", "bf16"):
        cfg = TrainConfig(out=str(tmp_path / amp), dataset="fashion-mnist", subset=128, batch_size=64,
                          arch="small-cnn-bn", method="ramp", attack_steps=2, eps=EPS, optimizer="adam", lr=1e-3,
                          weight_decay=0.0, schedule="constant", epochs=1, progress=False, device="cpu", amp=amp,
                          channels_last=True, seed=3, eval_n=16, eval_steps=3)
        trainer = Trainer(resolve_config(cfg))
        outputs = seen[amp] = set()
        trainer.model.register_forward_hook(lambda module, inputs, output, outputs=outputs: outputs.add(
            (module.training, output.dtype)))
        # the convolutions with several input channels (one-channel images and filters are both layouts at once)
        filters = [m.weight for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1]
        assert filters and all(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
                               for w in filters)
        losses[amp] = trainer.run()["history"][-1]["loss"]
        weights = read_weights(tmp_path / amp / "model.safetensors").values()
        assert {w.dtype for w in weights if w.is_floating_point()} == {torch.float32}
    # attacks (eval mode) and training forwards in bf16; the epoch's AutoAttack-grade evaluation in float32
    assert seen["bf16"] == {(True, torch.bfloat16), (False, torch.bfloat16), (False, torch.float32)}
    assert seen["none"] == {(True, torch.float32), (False, torch.float32)}
    assert losses["bf16"] == pytest.approx(losses["none"], rel=0.05)


def test_nested_autocast_blocks_leave_autocast_off():
    """A method may run its forward inside its own autocast block (a plugin's attack, say): one shared
    torch.autocast entered twice would stay switched on after both blocks."""
    method = RAMP(MethodContext(eps=EPS, pair=("linf", "l1"),
                                autocast=torch.autocast("cpu", dtype=torch.bfloat16)))
    model = torch.nn.Linear(4, 3)
    with method._autocast():
        assert method.forward(model, torch.rand(2, 4)).dtype == torch.float32
    assert not torch.is_autocast_enabled("cpu")

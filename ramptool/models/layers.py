"""Small building blocks shared by the backbones."""

import torch.nn as nn
import torch.nn.functional as F


class Softplus(nn.Module):
    """Softplus with a sharpness knob (PreAct ResNet-18 from scratch uses softplus, as in E-AT/RAMP)."""

    def __init__(self, beta: float = 10.0):
        super().__init__()
        self.beta = beta

    def forward(self, x):
        return F.softplus(x, beta=self.beta)


def activation(name: str) -> nn.Module:
    if name == "relu":
        return nn.ReLU()
    if name == "softplus":
        return Softplus()
    raise ValueError(f"unknown activation {name!r} (use relu or softplus)")

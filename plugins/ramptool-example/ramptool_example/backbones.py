"""A backbone: a tiny MLP (``tiny-mlp``), fast enough to train on a laptop CPU in seconds."""

import torch.nn as nn


def tiny_mlp(num_classes: int, in_chans: int, image_size: int, *, hidden: int = 64) -> nn.Module:
    """Tiny MLP (flatten, one hidden ReLU layer of ``hidden`` units): a fast backbone for smoke tests."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_chans * image_size * image_size, hidden),
        nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )

"""Counting the work of an evaluation in images sent forward and backward through the model."""

from __future__ import annotations

import torch


class PassCounter(torch.nn.Module):
    """Wraps a model and counts the images that go forward through it and the images whose input gradient is
    taken (a backward pass). Forward-only calls, batched or not, count as forward passes only."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.forward_images = 0
        self.backward_images = 0

    def forward(self, x):
        self.forward_images += x.shape[0]
        if x.requires_grad:
            x.register_hook(self._count_backward)
        return self.model(x)

    def _count_backward(self, grad):
        self.backward_images += grad.shape[0]

    def counts(self) -> dict[str, int]:
        return {"forward": self.forward_images, "backward": self.backward_images}

    def reset(self) -> None:
        self.forward_images = self.backward_images = 0

"""A combiner: clip the global gradient norm before every optimiser step (``clip-grad``)."""

import torch

from ramptool.api import Combiner, RamptoolError, checked_backward


class ClipGradNorm(Combiner):
    """Plain update with the gradient's global l2 norm clipped to max_norm (stabilises large learning rates).

    Adds two stats per step: the gradient norm before clipping and whether the step was clipped.
    """

    def __init__(self, model, make_optimizer, *, max_norm: float = 1.0):
        super().__init__(model, make_optimizer)
        if not max_norm > 0:
            raise RamptoolError(f"clip-grad: max_norm must be positive, got {max_norm:g}")
        self.max_norm = max_norm

    def train_step(self, model, optimizer, compute_loss, x, y):
        loss, stats = compute_loss()
        optimizer.zero_grad(set_to_none=True)
        checked_backward(loss)  # stops the run with one line, checkpoint intact, if the loss is not finite
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), self.max_norm)
        optimizer.step()
        return loss.detach(), {**stats, "grad_norm": norm.detach(), "clipped": (norm > self.max_norm).float()}

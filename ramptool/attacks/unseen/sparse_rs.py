"""Sparse-RS for l0 (Croce et al. 2022): a score-based random search over which k pixels to change.

A pixel is a spatial position: changing it sets all its channels, each to 0 or 1 (a corner of the colour cube),
so ``x_adv`` differs from ``x`` in at most k positions and stays in [0,1]. Starting from k random pixels at
random corners, every query swaps m of the perturbed pixels for m unperturbed ones (back to their clean value,
and new random corners) and keeps the candidate when its margin (true logit minus the best other) drops or it is
misclassified; a point is dropped from the search once misclassified. m follows Sparse-RS's schedule,
``alpha_init * k`` divided by 2, 4, 5, 6, 8, 10, 12, 15, 20 as the queries go (rescaled to the budget of
queries); when m is 1 the new pixel's colour is redrawn until it differs from the clean one. As fra31/sparse-rs's
``L0`` attack (its current version), vectorised over the batch (the same m positions in every image's lists of
perturbed and unperturbed pixels, as there), with one restart. Gradient-free: it needs no backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ramptool.attacks.base import AttackResult
from ramptool.attacks.unseen.latent import generator_device, random_uniform
from ramptool.errors import RamptoolError

ALPHA_INIT = 0.3  # sparse-rs's eval.py default
SCHEDULE = ((50, 2), (200, 4), (500, 5), (1000, 6), (2000, 8), (4000, 10), (6000, 12), (8000, 15))


def fraction_changed(query: int, queries: int, alpha_init: float = ALPHA_INIT) -> float:
    """Sparse-RS's ``p_selection`` for l0, its schedule written for 10,000 queries and rescaled to ``queries``."""
    at = int(query / queries * 10000)
    if at == 0:
        return alpha_init
    for limit, divisor in SCHEDULE:
        if at <= limit:
            return alpha_init / divisor
    return alpha_init / 20


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], float("-inf")).amax(1)
    return true - others


def random_corners(batch: int, channels: int, count: int, like: torch.Tensor, generator) -> torch.Tensor:
    return (random_uniform((batch, channels, count), 0.0, 1.0, like, generator) < 0.5).to(like.dtype)


def random_permutation(n: int, like: torch.Tensor, generator) -> torch.Tensor:
    return torch.randperm(n, generator=generator, device=generator_device(generator, like)).to(like.device)


def set_pixels(flat: torch.Tensor, positions: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``flat`` (B, C, H*W) with ``values`` (B, C, m) written at ``positions`` (B, m) in every channel."""
    return flat.scatter(2, positions[:, None, :].expand(-1, flat.shape[1], -1), values)


def sparse_rs(model, x, y, norm="l0", eps=9, steps=1000, alpha_init: float = ALPHA_INIT,
              generator=None) -> AttackResult:
    """Sparse-RS in {x' in [0,1]^d : x' differs from x in at most eps pixels}; ``steps`` is the query budget.

    Returns the accepted point (misclassified wherever ``fooled``), its cross-entropy, and ``fooled``."""
    k = int(eps)
    batch, channels, height, width = x.shape
    pixels = height * width
    if not 0 < k < pixels or k != eps:
        raise RamptoolError(f"l0 budget must be a whole number of pixels in 1..{pixels - 1}, got {eps}")
    x_flat = x.detach().flatten(2)
    with torch.no_grad():
        order = random_uniform((batch, pixels), 0.0, 1.0, x, generator).argsort(1)
        changed, unchanged = order[:, :k], order[:, k:]
        best = set_pixels(x_flat, changed, random_corners(batch, channels, k, x, generator))
        logits = model(best.view_as(x))
        best_margin, best_loss = margin(logits, y), F.cross_entropy(logits, y, reduction="none")
        fooled = logits.argmax(1) != y
        for query in range(1, int(steps)):
            active = (~fooled).nonzero().squeeze(1)
            if len(active) == 0:
                break
            count = max(int(fraction_changed(query, steps, alpha_init) * k), 1)
            restore = random_permutation(k, x, generator)[:count]
            move = random_permutation(pixels - k, x, generator)[:count]
            old, new = changed[active][:, restore], unchanged[active][:, move]
            clean_values = x_flat[active].gather(2, old[:, None, :].expand(-1, channels, -1))
            candidate = set_pixels(best[active], old, clean_values)
            colours = random_corners(len(active), channels, count, x, generator)
            if count == 1:  # a lone new pixel must change: redraw colours equal to the clean pixel
                clean_new = x_flat[active].gather(2, new[:, None, :].expand(-1, channels, -1))
                while (same := (colours == clean_new).all(1).squeeze(1)).any():
                    colours[same] = random_corners(int(same.sum()), channels, 1, x, generator)
            candidate = set_pixels(candidate, new, colours)
            logits = model(candidate.view(len(active), *x.shape[1:]))
            candidate_margin = margin(logits, y[active])
            wrong = logits.argmax(1) != y[active]
            accept = (candidate_margin < best_margin[active]) | wrong
            taken = active[accept]
            best[taken] = candidate[accept]
            best_margin[taken] = candidate_margin[accept]
            best_loss[taken] = F.cross_entropy(logits[accept], y[taken], reduction="none")
            fooled[taken] = wrong[accept]
            swapped_in, swapped_out = changed[taken], unchanged[taken]
            swapped_in[:, restore], swapped_out[:, move] = new[accept], old[accept]
            changed[taken], unchanged[taken] = swapped_in, swapped_out
    return AttackResult(best.view_as(x), best_loss, fooled)


def changed_pixels(x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
    """Per sample: how many spatial positions differ in any channel (Sparse-RS keeps it at most k)."""
    return (x_adv != x).any(1).flatten(1).sum(1)

"""Pairing losses between the source-norm (q) and target-norm (r) predictions, on probabilities.

Formulas: docs/METHOD.md#pairing-losses.

Each takes the logits of the kept subset (points the model classifies correctly under the q attack) and
returns the mean over that subset; an empty subset gives 0. Gradients flow through both sides.
"""

import torch
import torch.nn.functional as F

from ramptool.plugins.hookspecs import hookimpl


def _empty(logits_q: torch.Tensor) -> torch.Tensor:
    return logits_q.sum() * 0.0  # keeps the graph and device while contributing nothing


def kl_pairing(logits_q: torch.Tensor, logits_r: torch.Tensor) -> torch.Tensor:
    """KL(p_q || p_r) summed over classes, averaged over the kept points (RAMP's default)."""
    if logits_q.shape[0] == 0:
        return _empty(logits_q)
    log_p_q = F.log_softmax(logits_q, dim=1)
    log_p_r = F.log_softmax(logits_r, dim=1)
    return (log_p_q.exp() * (log_p_q - log_p_r)).sum(dim=1).mean()


def mse_pairing(logits_q: torch.Tensor, logits_r: torch.Tensor) -> torch.Tensor:
    """0.5 * ||p_q - p_r||^2 on probabilities, averaged over the kept points."""
    if logits_q.shape[0] == 0:
        return _empty(logits_q)
    return 0.5 * (F.softmax(logits_q, dim=1) - F.softmax(logits_r, dim=1)).pow(2).sum(dim=1).mean()


def cosine_pairing(logits_q: torch.Tensor, logits_r: torch.Tensor) -> torch.Tensor:
    """1 - cos(p_q, p_r) on probabilities, averaged over the kept points."""
    if logits_q.shape[0] == 0:
        return _empty(logits_q)
    return (1.0 - F.cosine_similarity(F.softmax(logits_q, dim=1), F.softmax(logits_r, dim=1), dim=1)).mean()


@hookimpl
def register_pairing_losses():
    return {"kl": kl_pairing, "mse": mse_pairing, "cosine": cosine_pairing}

"""Example ramptool plugin: a Jensen-Shannon pairing loss (``js``) and a tiny MLP backbone (``tiny-mlp``).

ramptool imports this module through its ``ramptool`` entry point and calls the ``@hookimpl`` functions
below; each returns a mapping ``name -> component``.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ramptool import hookimpl
from ramptool.errors import RamptoolError


def jensen_shannon_pairing(logits_q: torch.Tensor, logits_r: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence between p_q and p_r (symmetric, at most log 2), mean over kept points."""
    if logits_q.shape[0] == 0:
        return logits_q.sum() * 0.0  # an empty kept subset contributes nothing but keeps the graph
    log_p_q = F.log_softmax(logits_q, dim=1)
    log_p_r = F.log_softmax(logits_r, dim=1)
    # log of the mixture m = (p_q + p_r) / 2, computed in log space so tiny probabilities do not underflow
    log_m = torch.logsumexp(torch.stack([log_p_q, log_p_r]), dim=0) - math.log(2.0)
    kl_q_m = (log_p_q.exp() * (log_p_q - log_m)).sum(dim=1)
    kl_r_m = (log_p_r.exp() * (log_p_r - log_m)).sum(dim=1)
    return (0.5 * (kl_q_m + kl_r_m)).mean()


def tiny_mlp(num_classes: int, in_chans: int, image_size: int, hidden: int = 64, **options) -> nn.Module:
    """Tiny MLP (flatten, one hidden ReLU layer of ``hidden`` units): a fast backbone for smoke tests."""
    if options:
        raise RamptoolError(f"tiny-mlp takes only the option 'hidden', not {', '.join(sorted(options))}")
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_chans * image_size * image_size, hidden),
        nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )


@hookimpl
def register_pairing_losses():
    return {"js": jensen_shannon_pairing}


@hookimpl
def register_backbones():
    return {"tiny-mlp": tiny_mlp}

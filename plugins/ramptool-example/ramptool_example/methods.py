"""A training method: TRADES-style clean CE plus beta * KL(clean || adversarial) over several norms (``trades``)."""

import torch
import torch.nn.functional as F

from ramptool.api import RamptoolError, TrainingMethod


class TRADES(TrainingMethod):
    """TRADES-style: CE on clean inputs + beta * KL(p_clean || p_adv), averaged over the norms.

    The adversarial points come from the run's training attack (``--attack``, CE loss by default) rather than
    TRADES' own KL maximisation, so ``--attack`` and ``--attack-option`` apply as for any method.
    """

    uses = "norms"  # trains against --norms (use "pair" for --pair q,r)

    def __init__(self, ctx, *, beta: float = 6.0):
        super().__init__(ctx)
        if beta < 0:
            raise RamptoolError(f"trades: beta must be >= 0, got {beta:g}")
        self.beta = beta

    def loss(self, model, x, y):
        results = self.attack_all(model, x, y, self.norms)  # eval mode while attacking, inside ball and box
        logits_clean = self.forward(model, x)
        log_p_clean = F.log_softmax(logits_clean, dim=1)
        stats = {"acc_clean": (logits_clean.argmax(1) == y).float().mean().detach()}
        divergences = []
        for norm, result in zip(self.norms, results):
            logits_adv = self.forward(model, result.x_adv)
            divergences.append(F.kl_div(F.log_softmax(logits_adv, dim=1), log_p_clean, log_target=True,
                                        reduction="batchmean"))
            stats[f"acc_{norm}"] = (logits_adv.argmax(1) == y).float().mean().detach()
        robust = torch.stack(divergences).mean()
        stats["loss_kl"] = robust.detach()
        return F.cross_entropy(logits_clean, y) + self.beta * robust, stats

"""Adversaries a multi-norm model never trained on (RAMP's universal robustness, its Table 4): l0 (Sparse-RS,
Croce et al. 2022) and the unforeseen adversaries of Kang et al. (2019) as Laidlaw et al. (2021) use them:
fog, snow, Gabor, elastic, JPEG-l∞.

ramptool's own implementations, for any device, channel count and image size, on [0,1] inputs; the maths
follows advex-uar and fra31/sparse-rs (each module says where and why it departs). Each is a registered attack
whose ``norm`` names its threat model, so ``attack_for("uar", "fog")`` or ``--attack uar --norms fog`` works
like any other attack family.
"""

from ramptool.attacks.base import Attack
from ramptool.attacks.unseen.elastic import Elastic
from ramptool.attacks.unseen.fog import Fog
from ramptool.attacks.unseen.gabor import Gabor
from ramptool.attacks.unseen.jpeg import JPEGLinf
from ramptool.attacks.unseen.latent import Adversary, LatentAttackResult, latent_attack
from ramptool.attacks.unseen.snow import Snow
from ramptool.attacks.unseen.sparse_rs import changed_pixels, sparse_rs

ADVERSARIES: dict[str, Adversary] = {adversary.name: adversary
                                     for adversary in (Fog(), Snow(), Gabor(), Elastic(), JPEGLinf())}


def unseen_attacks() -> dict[str, Attack]:
    """``sparse-rs-l0`` and ``uar-<name>`` for each of Kang et al.'s adversaries."""
    attacks = {"sparse-rs-l0": Attack(sparse_rs, "l0", "Sparse-RS (l0): score-based random search over k pixels "
                                                      "set to corners of the colour cube (eps = k pixels)")}
    for name, adversary in ADVERSARIES.items():
        attacks[f"uar-{name}"] = Attack(adversary, name, f"{adversary.description}; eps: {adversary.unit}")
    return attacks


__all__ = ["ADVERSARIES", "Adversary", "LatentAttackResult", "latent_attack", "sparse_rs", "changed_pixels",
           "unseen_attacks"]

"""Built-in attacks, registered through the same hook third-party plugins use."""

from ramptool.attacks.apgd import apgd, apgd_joint
from ramptool.attacks.base import Attack, AttackResult, input_gradients_only
from ramptool.attacks.msd import msd
from ramptool.attacks.pgd import fgsm_rs, pgd
from ramptool.attacks.unseen import unseen_attacks
from ramptool.errors import RamptoolError
from ramptool.plugins.hookspecs import hookimpl
from ramptool.plugins.options import bind
from ramptool.plugins.registry import components, expect

expect("attack", Attack)


@hookimpl
def register_attacks():
    attacks = {}
    for norm in ("linf", "l2", "l1"):
        attacks[f"apgd-{norm}"] = Attack(apgd, norm, f"APGD-CE in the {norm} ball (adaptive step, momentum"
                                         + (", sparse steps, exact box-l1 projection)" if norm == "l1" else ")"),
                                         joint=apgd_joint)
        attacks[f"pgd-{norm}"] = Attack(pgd, norm, f"PGD in the {norm} ball, fixed step, random start"
                                        + (", SLIDE-style sparse steps" if norm == "l1" else ""))
    attacks["fgsm-rs"] = Attack(fgsm_rs, "linf", "FGSM with uniform random start, step 1.25*eps (linf)")
    attacks["msd"] = Attack(msd, None, "MSD: per step, the best of the linf/l2/l1 steepest-descent steps")
    return {**attacks, **unseen_attacks()}


def attack_families() -> dict[str, list[str]]:
    """Every attack family (registered attacks named ``{family}-{norm}``) and the norms it covers."""
    families: dict[str, list[str]] = {}
    for name, attack in components("attack").items():
        norm = attack.norm
        if norm and name.endswith(f"-{norm}"):
            families.setdefault(name[:-len(norm) - 1], []).append(norm)
    return families


def attack_for(family: str, norm: str) -> Attack:
    """The registered ``{family}-{norm}`` attack, e.g. ``attack_for('apgd', 'l1')``."""
    found = components("attack").get(f"{family}-{norm}")
    if found is None:
        families = attack_families()
        if family in families:
            raise RamptoolError(f"attack family {family!r} has no {norm} attack (no attack '{family}-{norm}' is "
                                f"registered); it covers {', '.join(families[family])}")
        raise RamptoolError(f"unknown attack family {family!r}; known: {', '.join(sorted(families))}")
    return found


def bind_family_options(family: str, norms: list[str], given: dict | None) -> dict:
    """``given`` options checked against, and typed for, the family's attack in each of ``norms``."""
    bound = dict(given or {})
    for norm in norms:
        bound = bind("attack", f"{family}-{norm}", attack_for(family, norm), given)
    return bound


def known_norms() -> list[str]:
    """Every norm some registered attack works in (plugins that add a norm take part)."""
    return sorted({attack.norm for attack in components("attack").values() if attack.norm})


__all__ = ["Attack", "AttackResult", "apgd", "apgd_joint", "pgd", "fgsm_rs", "msd", "input_gradients_only",
           "attack_for", "attack_families", "bind_family_options", "known_norms"]

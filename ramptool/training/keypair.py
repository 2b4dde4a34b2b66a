"""Key tradeoff pair (docs/METHOD.md#the-key-tradeoff-pair): which two norms RAMP should pair.

Rule: evaluate one single-norm AT model per norm against every norm (R[model][attack]); the two norms whose
own AT models are least robust against their own attack (lowest R[p][p]) form the pair, and q, the source
norm whose correctly classified points anchor the pairing loss, is the one of the two with the lower R[q][q].
When fine-tuning, q is the norm the pretrained model was trained for: if it is one of the pair, r is the other;
if not, r is the norm the pretrained norm's AT model is least robust against (where it trades off hardest).
"""

from __future__ import annotations

from ramptool.errors import RamptoolError


def choose_pair(matrix: dict[str, dict[str, float]], fine_tune_from: str | None = None) -> tuple[str, str, str]:
    """(q, r, evidence) from a robustness matrix R[model norm][attack norm]. Ties on R[p][p] keep the order in
    which the norms are listed."""
    norms = list(matrix)
    if len(norms) < 2:
        raise RamptoolError("the pair finder needs single-norm AT models for at least two norms")
    for norm in norms:
        if norm not in matrix[norm]:
            raise RamptoolError(f"the {norm}-AT model was not evaluated against {norm}")
    own = {p: matrix[p][p] for p in norms}
    ranked = sorted(norms, key=lambda p: (own[p], norms.index(p)))
    shown = ", ".join(f"R[{p}][{p}]={own[p]:.3f}" for p in ranked)
    if fine_tune_from is None:
        q, r = ranked[0], ranked[1]
        return q, r, f"lowest own-norm robustness: {shown}; q={q} (lowest), r={r}"
    if fine_tune_from not in own:
        raise RamptoolError(f"fine-tuning norm {fine_tune_from!r} is not among the evaluated norms {norms}")
    q = fine_tune_from
    if q in ranked[:2]:
        r = ranked[1] if q == ranked[0] else ranked[0]
        return q, r, f"fine-tuning from a {q} model fixes q={q}; the pair by {shown} is ({ranked[0]}, {ranked[1]})"
    others = [p for p in norms if p != q]
    r = min(others, key=lambda p: (matrix[q][p], norms.index(p)))
    weakest = ", ".join(f"R[{q}][{p}]={matrix[q][p]:.3f}" for p in others)
    return q, r, (f"fine-tuning from a {q} model fixes q={q}, outside the pair ({ranked[0]}, {ranked[1]}) of "
                  f"{shown}; r={r}, where the {q} model is least robust ({weakest})")


def pair_warnings(matrix: dict[str, dict[str, float]], q: str, r: str, chance: float | None = None) -> list[str]:
    """What makes a chosen pair meaningless: a tie the rule broke by the order of the norms, and models at chance
    level (clean accuracy no better than guessing: their robustness measures nothing)."""
    messages = []
    own = {p: matrix[p][p] for p in matrix}
    for chosen in (q, r):
        tied = [p for p in own if p not in (q, r) and abs(own[p] - own[chosen]) < 1e-9]
        if tied:
            messages.append(f"R[{chosen}][{chosen}] = R[{tied[0]}][{tied[0]}] = {own[chosen]:.3f}: the tie was "
                            f"broken by the order the norms are listed in, not by the models")
    if chance is not None:
        for norm, row in matrix.items():
            if "clean" in row and row["clean"] <= chance + 0.05:
                messages.append(f"the {norm}-AT model is at chance level (clean {100 * row['clean']:.1f}%, chance "
                                f"{100 * chance:.1f}%): its row measures nothing; train it longer")
    return messages


def single_trained_norm(metadata: dict, path: str) -> str:
    norms = metadata.get("trained_norms") or []
    if len(norms) != 1:
        raise RamptoolError(f"{path} was not trained for a single norm (trained_norms={norms}); the pair "
                            f"finder needs one single-norm AT model per norm")
    return norms[0]

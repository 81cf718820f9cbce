"""Power before and after the run: the minimum detectable effect, the n that would settle a claim, ``powered``.

The minimum detectable effect (MDE) is the true difference from the
threshold that a claim's test would detect with 80 % power at the level
Holm's first step uses (alpha / m for a family of m tests, two-sided):
``MDE = (z(1 - alpha / 2m) + z(0.8)) * SE``.

*Before* the run, only score differences have a standard error known from
the design: a paired difference of two scores on ``n`` shared test examples
has SE at most ``sqrt(0.5 / n)`` (two independent proportions at 0.5; pairing
only lowers it), averaged over the affective tasks. *After* the run, SE is the
standard deviation of the claim's bootstrap replicates.

"n to settle" an inconclusive claim: the distance ``d`` from our estimate to
the nearest decision boundary (the threshold, or the equivalence margin when
the estimate lies inside it) must reach the MDE. The variance is taken to
split into a seed part ``Vs`` and a unit part ``Vu`` (the bootstrap with only
seeds, or only units, resampled) that shrink as 1/seeds and 1/units; the
answer names its units (seeds, examples, layers, emotions), is capped by
what the data has, and otherwise says it cannot be settled with this data.
It assumes the estimate stays put, which it need not.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from statistics import NormalDist
from typing import Any

from .papers import MIN_SEEDS, PaperClaim
from .verdicts import ALPHA

POWER = 0.8


def z_sum(m_tests: int, alpha: float = ALPHA) -> float:
    """z(1 - alpha / 2m) + z(power): the multiple of SE a true effect must reach to be detected."""
    nd = NormalDist()
    return nd.inv_cdf(1 - alpha / (2 * max(m_tests, 1))) + nd.inv_cdf(POWER)


def paper_effect(claim: PaperClaim) -> float | None:
    """The paper's effect as a distance from our threshold (same units), or None when it gives no number."""
    if claim.paper_value is None:
        return None
    return abs(claim.paper_value - claim.threshold)


SCORE_STAGES = ("sufficiency", "efficiency", "necessity")


def planning_se(claim: PaperClaim, examples: int, tasks: int, intervention_examples: int) -> float | None:
    """A design-only SE (before any data): score differences and the interventions' paired accuracy
    changes; None for the rest (their spread is unknown until measured)."""
    if claim.stage in SCORE_STAGES and examples > 0:
        return math.sqrt(0.5 / (examples * max(tasks, 1)))
    if claim.stage == "circuits-intervention" and intervention_examples > 0:
        return math.sqrt(0.5 / intervention_examples)
    return None


def before(claims: Mapping[str, PaperClaim], examples: int, tasks: int, intervention_examples: int,
           m_tests: int) -> dict[str, dict[str, Any]]:
    """Per claim: the planning MDE at this design against the paper's effect (where either is known)."""
    z = z_sum(m_tests)
    out: dict[str, dict[str, Any]] = {}
    for cid, c in claims.items():
        se = planning_se(c, examples, tasks, intervention_examples)
        eff = paper_effect(c)
        row: dict[str, Any] = {"mde": None if se is None else z * se, "paper_effect": eff,
                               "basis": "SE <= sqrt(0.5 / test examples), from the design" if se is not None else
                               "no design-only SE: measured after the run"}
        if se is not None and eff is not None:
            row["detects_paper_effect"] = z * se <= eff
        out[cid] = row
    return out


def _distance(claim: PaperClaim, value: float) -> tuple[float, str]:
    """Distance from ``value`` to the nearest decision boundary, and what crossing it would decide."""
    t = claim.threshold
    if claim.upper is not None:
        return min(abs(value - t), abs(value - claim.upper)), "a band edge"
    gap = abs(value - t)
    if claim.margin is not None and gap < claim.margin:
        return claim.margin - gap, "equivalence"
    return gap, "a difference"


def n_to_settle(claim: PaperClaim, value: float, components: Mapping[str, float], design: Mapping[str, Any],
                available: int | None, m_tests: int) -> dict[str, Any]:
    """How many seeds or units would settle this claim (see the module doc), in words and numbers."""
    d, what = _distance(claim, value)
    unit = str(design.get("unit", "units"))
    k = int(design.get("seeds", 1))
    n = int(sum(design.get("units", [0])))
    if d <= 0:
        return {"text": "cannot be settled with this data: the estimate sits on the decision boundary"}
    target = (d / z_sum(m_tests)) ** 2
    vs, vu = float(components.get("seeds", 0.0)), float(components.get("units", 0.0))
    cap = n if available is None else max(int(available), n)
    opts: list[str] = []
    out: dict[str, Any] = {"boundary": what, "target_se": math.sqrt(target), "unit": unit}
    if claim.training and vu < target and vs > 0:
        kk = max(k + 1, math.ceil(k * vs / (target - vu)))
        opts.append(f"about {kk} seeds (at these {n} {unit})")
        out["seeds"] = kk
    if vs < target and vu > 0:
        nn = max(n + 1, math.ceil(n * vu / (target - vs)))
        if nn <= cap:
            opts.append(f"about {nn} {unit}" + (f" (at these {k} seeds)" if claim.training else ""))
            out["units"] = nn
        else:
            out["units_beyond_data"] = nn
    if not opts and claim.training and cap > n and vs > 0:
        vu_cap = vu * n / cap
        if vu_cap < target:
            kk = max(k + 1, math.ceil(k * vs / (target - vu_cap)))
            opts.append(f"about {kk} seeds with all {cap} {unit}")
            out["seeds"], out["units"] = kk, cap
    if not opts:
        beyond = out.get("units_beyond_data")
        out["text"] = ("cannot be settled with this data" + (f": it would take about {beyond} {unit} and there are "
                                                            f"{cap}" if beyond else ""))
    else:
        out["text"] = " or ".join(opts) + f" would settle it ({what}), if the estimate held"
    return out


def after(claim: PaperClaim, se: float, m_tests: int) -> dict[str, Any]:
    """The measured MDE against the paper's effect."""
    mde = z_sum(m_tests) * se
    eff = paper_effect(claim)
    row: dict[str, Any] = {"se": se, "mde": mde, "paper_effect": eff, "level": ALPHA / max(m_tests, 1),
                           "power": POWER}
    if eff is not None:
        row["detects_paper_effect"] = mde <= eff
        row["detects_half_paper_effect"] = mde <= eff / 2
    return row


def half_effect(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Which judged claims of paper A (the gate_proj study) with a paper number are powered for an effect of
    half the paper's size (the standard profile's design goal), with each claim's MDE and that half effect."""
    from .papers import CLAIMS, PAPER_A

    out: dict[str, Any] = {}
    for r in rows:
        c = CLAIMS.get(r["id"])
        p = (r.get("power") or {}).get("after") or {}
        if c is None or c.source != PAPER_A or p.get("paper_effect") is None:
            continue
        out[r["id"]] = {"mde": p["mde"], "half_paper_effect": p["paper_effect"] / 2,
                        "powered": bool(p["mde"] <= p["paper_effect"] / 2)}
    return {"claims": out, "all": bool(out) and all(v["powered"] for v in out.values())}


def powered(seeds: int, rows: list[dict[str, Any]], not_judged: list[dict[str, Any]]) -> tuple[bool, list[str]]:
    """``powered`` and its reasons: enough seeds, every judged paper effect detectable, nothing left unjudged
    by the design."""
    why: list[str] = []
    if seeds < MIN_SEEDS:
        why.append(f"{seeds} seed{'s' if seeds != 1 else ''}: training-dependent claims need >= {MIN_SEEDS}, so "
                   "none of them is judged")
    if not rows:
        why.append("no claim was judged")
    for r in rows:
        p = (r.get("power") or {}).get("after") or {}
        if p.get("detects_paper_effect") is False:
            why.append(f"{r['id']}: the minimum detectable effect ({p['mde']:.3g}) exceeds the paper's effect "
                       f"({p['paper_effect']:.3g})")
    for r in not_judged:
        if r.get("design") and r["design"] != "seeds":  # the seeds line above covers those
            why.append(f"{r['id']}: not judged ({r['reason']})")
    return not why, why


__all__ = ["POWER", "after", "before", "half_effect", "n_to_settle", "paper_effect", "planning_se", "powered", "z_sum"]

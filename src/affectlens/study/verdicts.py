"""The rule that turns our numbers into a verdict, with the family-wise error held by Holm.

A verdict is never written by hand: it follows from each claim's bootstrap
replicates (or, for evidence without replicates, from its 95 % CI read as a
normal interval), the claim's threshold and its practical-equivalence margin,
and Holm's step-down adjustment over every test of every judged claim.

Per claim, up to two tests (bootstrap p-values, ``(1 + #beyond) / (B + 1)``):

- *difference*, H0: theta = threshold, two-sided: ``2 min(P*(theta <= t), P*(theta >= t))``;
- *equivalence* (claims with a margin m), TOST, H0: |theta - t| >= m:
  ``max(P*(theta <= t - m), P*(theta >= t + m))``;
- a band claim (t, upper) has *inside* (TOST on the band) and *outside*
  (theta below t or above upper) instead.

Holm: all these p-values of all judged claims form one family; each is
multiplied by (m - rank + 1) and made monotone. Verdict, at alpha = 0.05 on the
adjusted p-values: *equivalent* when the equivalence test rejects (a
difference too small to matter, even if it is "significant"); else
*supported* / *contradicted* when the difference test rejects, by the side
the replicates lie on; else *inconclusive*. A band claim is supported when
*inside* rejects, contradicted when *outside* does. Each claim also shows a
Holm-compatible interval: the percentile interval at level 1 - alpha * p / p_adj of its
difference (or inside) test, which excludes the threshold exactly when the
adjusted test rejects (up to the replicates' granularity).

The uncalibrated scores are a second analysis of the same claims: they get
their own family and their own ``raw_verdict``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any, Literal

from ..errors import AffectlensError
from ..runs import find_non_finite
from .papers import CLAIMS, PAPER_A, PAPER_B, STAGES, PaperClaim

Verdict = Literal["supported", "contradicted", "equivalent", "inconclusive"]
VERDICTS: tuple[Verdict, ...] = ("supported", "contradicted", "equivalent", "inconclusive")
ALPHA = 0.05
Z95 = NormalDist().inv_cdf(0.975)


@dataclass(frozen=True)
class Evidence:
    """Our estimate: ``value`` with its 95 % CI over ``n`` units; ``replicates`` its bootstrap distribution."""

    value: float
    ci: tuple[float, float]
    n: int
    detail: dict[str, Any] = field(default_factory=dict)
    replicates: tuple[float, ...] | None = None


def _check(claim_id: str, ev: Evidence) -> tuple[float, float, float]:
    """(value, lo, hi) as floats, or a one-line error: a verdict from NaN/Inf or a reversed CI is no verdict."""
    try:
        value, lo, hi = float(ev.value), float(ev.ci[0]), float(ev.ci[1])
    except (TypeError, ValueError, IndexError) as e:
        raise AffectlensError(f"claim {claim_id}: evidence is not numeric ({e})") from None
    if len(ev.ci) != 2:
        raise AffectlensError(f"claim {claim_id}: the CI must be (low, high), got {len(ev.ci)} numbers")
    for name, x in (("value", value), ("CI low", lo), ("CI high", hi)):
        if not math.isfinite(x):
            raise AffectlensError(f"claim {claim_id}: {name} is {x}; a non-finite number cannot give a verdict")
    if lo > hi:
        raise AffectlensError(f"claim {claim_id}: CI low {lo:g} is above CI high {hi:g}")
    if isinstance(ev.n, bool) or not isinstance(ev.n, int) or ev.n < 1:
        raise AffectlensError(f"claim {claim_id}: n must be a positive integer, got {ev.n!r}")
    hit = find_non_finite(ev.detail, "detail") or find_non_finite(list(ev.replicates or []), "replicates")
    if hit:
        raise AffectlensError(f"claim {claim_id}: non-finite number {hit[1]} at {hit[0]}")
    return value, lo, hi


class _Dist:
    """P*(theta <= x), P*(theta >= x) and quantiles: from the replicates, else a normal read off the CI."""

    def __init__(self, claim_id: str, ev: Evidence) -> None:
        self.value, lo, hi = _check(claim_id, ev)
        self.reps = sorted(float(x) for x in ev.replicates) if ev.replicates else None
        self.se = (hi - lo) / (2 * Z95)

    def le(self, x: float) -> float:
        if self.reps is not None:
            import bisect

            return (1 + bisect.bisect_right(self.reps, x)) / (len(self.reps) + 1)
        if self.se <= 0:
            return 1.0 if self.value <= x else 0.0
        return NormalDist(self.value, self.se).cdf(x)

    def ge(self, x: float) -> float:
        if self.reps is not None:
            import bisect

            return (1 + len(self.reps) - bisect.bisect_left(self.reps, x)) / (len(self.reps) + 1)
        if self.se <= 0:
            return 1.0 if self.value >= x else 0.0
        return 1.0 - NormalDist(self.value, self.se).cdf(x)

    def quantile(self, q: float) -> float:
        if self.reps is not None:
            import numpy as np

            return float(np.quantile(self.reps, q))
        return self.value if self.se <= 0 else NormalDist(self.value, self.se).inv_cdf(min(max(q, 1e-12), 1 - 1e-12))


def p_values(claim: PaperClaim, ev: Evidence) -> dict[str, float]:
    """The claim's tests (see the module doc); ``above``/``below`` are the one-sided halves of *difference*."""
    d, t = _Dist(claim.id, ev), claim.threshold
    if claim.upper is not None:
        if claim.direction != ">" or claim.upper <= t:
            raise AffectlensError(f"claim {claim.id}: a band needs direction '>' and upper > threshold")
        return {"inside": max(d.le(t), d.ge(claim.upper)), "outside": min(1.0, 2 * min(d.ge(t), d.le(claim.upper)))}
    out = {"difference": min(1.0, 2 * min(d.le(t), d.ge(t))), "above": d.le(t), "below": d.ge(t)}
    if claim.margin is not None:
        out["equivalence"] = max(d.le(t - claim.margin), d.ge(t + claim.margin))
    return out


TESTED = ("difference", "equivalence", "inside", "outside")  # what Holm adjusts (above/below are halves)


def holm(ps: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order."""
    m = len(ps)
    order = sorted(range(m), key=lambda i: ps[i])
    out = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * ps[i]))
        out[i] = running
    return out


def adjust(family: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Holm over every tested p-value of every claim in ``family`` ({claim: {test: p}})."""
    keys = [(c, k) for c, ps in family.items() for k in TESTED if k in ps]
    adj = holm([family[c][k] for c, k in keys])
    out: dict[str, dict[str, float]] = {c: {} for c in family}
    for (c, k), p in zip(keys, adj, strict=True):
        out[c][k] = p
    return out


def decide(claim: PaperClaim, p: Mapping[str, float], p_adj: Mapping[str, float], alpha: float = ALPHA) -> Verdict:
    """The verdict from the claim's adjusted p-values (see the module doc)."""
    if claim.upper is not None:
        return "supported" if p_adj["inside"] < alpha else "contradicted" if p_adj["outside"] < alpha \
            else "inconclusive"
    if "equivalence" in p_adj and p_adj["equivalence"] < alpha:
        return "equivalent"
    if p_adj["difference"] < alpha:
        above = p["above"] < p["below"]
        return "supported" if above == (claim.direction == ">") else "contradicted"
    return "inconclusive"


def _holm_ci(claim: PaperClaim, ev: Evidence, p: Mapping[str, float], p_adj: Mapping[str, float],
             alpha: float) -> tuple[list[float], float]:
    key = "inside" if claim.upper is not None else "difference"
    a = alpha * (p[key] / p_adj[key]) if p_adj[key] > 0 else alpha
    d = _Dist(claim.id, ev)
    return [d.quantile(a / 2), d.quantile(1 - a / 2)], 1 - a


def judge(evidence: Mapping[str, Evidence], alpha: float = ALPHA) -> dict[str, dict[str, Any]]:
    """One family: {claim id: the numbers, p-values, Holm-adjusted p-values, Holm interval and verdict}."""
    ps = {cid: p_values(get_claim(cid), ev) for cid, ev in evidence.items()}
    adj = adjust(ps)
    out = {}
    for cid, ev in evidence.items():
        claim = get_claim(cid)
        value, lo, hi = _check(cid, ev)
        ci_holm, level = _holm_ci(claim, ev, ps[cid], adj[cid], alpha)
        out[cid] = {"ours": value, "ci": [lo, hi], "ci_level": 0.95, "ci_holm": ci_holm,
                    "ci_holm_level": round(level, 6), "n": ev.n, "p": ps[cid], "p_holm": adj[cid],
                    "verdict": decide(claim, ps[cid], adj[cid], alpha)}
    return out


def claim_row(claim_id: str) -> dict[str, Any]:
    """The paper's side of a study.json claim row."""
    c = get_claim(claim_id)
    return {"id": c.id, "stage": c.stage, "paper": c.paper, "paper_value": c.paper_value,
            "paper_note": c.paper_note, "source": c.source, "quantity": c.quantity, "threshold": c.threshold,
            "direction": c.direction, "upper": c.upper, "margin": c.margin, "margin_reason": c.margin_reason}


def claim_records(evidence: Mapping[str, Evidence], raw: Mapping[str, Evidence] | None = None,
                  alpha: float = ALPHA, raw_undefined: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """study.json rows: the verdict family (``evidence``) and the uncalibrated family (``raw``, default: the
    same evidence, for claims no calibration touches) judged separately, each Holm-adjusted. A claim in
    ``raw_undefined`` (its statistic has no value on raw scores) gets raw verdict ``not_judged`` and the why."""
    gone = dict(raw_undefined or {})
    raw = {cid: (raw or {}).get(cid, ev) for cid, ev in evidence.items() if cid not in gone}
    main, unc = judge(evidence, alpha), judge(raw, alpha)
    rows = []
    for cid in [c for c in CLAIMS if c in evidence]:
        u = unc.get(cid)
        r = {**claim_row(cid), **main[cid], "alpha": alpha,
             "raw_verdict": u["verdict"] if u else "not_judged",
             "raw": {k: u[k] for k in ("ours", "ci", "p", "p_holm", "verdict")} if u else {"undefined": gone[cid]},
             "detail": dict(evidence[cid].detail)}
        r["verdicts_differ"] = r["verdict"] != r["raw_verdict"]
        rows.append(r)
    return rows


def claim_record(claim_id: str, ev: Evidence) -> dict[str, Any]:
    """One claim judged alone (a family of one: no multiplicity adjustment)."""
    return claim_records({claim_id: ev})[0]


def verdict(claim: PaperClaim, ev: Evidence) -> Verdict:
    """The verdict of one claim judged alone."""
    p = p_values(claim, ev)
    return decide(claim, p, adjust({claim.id: p})[claim.id])


def get_claim(claim_id: str) -> PaperClaim:
    """The claim with this id, or a one-line error naming the known ids."""
    try:
        return CLAIMS[claim_id]
    except KeyError:
        raise AffectlensError(f"unknown claim {claim_id!r}; known: {', '.join(CLAIMS)}") from None


def _family_check(records: Sequence[Mapping[str, Any]], key: str | None) -> list[str]:
    """Re-run Holm over the stored p-values of ``records`` (``key``: the sub-record, e.g. ``raw``) and
    re-derive each verdict; refuse a stored adjusted p-value or verdict that does not follow."""
    subs: list[Mapping[str, Any]] = []
    fam: dict[str, dict[str, float]] = {}
    for r in records:
        sub = r if key is None else r.get(key)
        if not isinstance(sub, Mapping) or not isinstance(sub.get("p"), Mapping):
            raise AffectlensError(f"claim {r.get('id', '?')}: {key + '.' if key else ''}p is missing; no verdict "
                                  "can be checked without its p-values")
        subs.append(sub)
        fam[str(r["id"])] = {k: float(v) for k, v in sub["p"].items()}
    adj = adjust(fam)
    out: list[str] = []
    for r, s in zip(records, subs, strict=True):
        cid = str(r["id"])
        stored = s.get("p_holm") or {}
        for k, p in adj[cid].items():
            if not math.isclose(float(stored.get(k, math.nan)), p, rel_tol=1e-6, abs_tol=1e-12):
                raise AffectlensError(f"claim {cid}: stored Holm-adjusted p ({k}) {stored.get(k)!r} does not follow "
                                      f"from the family's p-values (they give {p:.6g})")
        v = decide(get_claim(cid), fam[cid], adj[cid], float(r.get("alpha", ALPHA)))
        if s.get("verdict") not in (None, v):
            raise AffectlensError(f"claim {cid}: stored {key + ' ' if key else ''}verdict {s.get('verdict')!r} does "
                                  f"not follow from its numbers (they give {v!r})")
        out.append(v)
    return out


def checked_verdicts(records: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """(verdict, raw verdict) of every row, re-derived from the stored p-values and Holm over each family
    (the raw family: the rows whose raw statistic is defined; the others' raw verdict is ``not_judged``)."""
    main = _family_check(records, None)
    if not all(isinstance(r.get("raw"), Mapping) for r in records):
        return list(zip(main, main, strict=True))
    keep = [i for i, r in enumerate(records) if "undefined" not in r["raw"]]
    got = dict(zip(keep, _family_check([records[i] for i in keep], "raw"), strict=True))
    return [(v, got.get(i, "not_judged")) for i, v in enumerate(main)]


def _bad_leaf(obj: Any, where: str) -> tuple[str, str] | None:
    """The first number in ``obj`` that is NaN, infinite or null (a NaN the cache wrote), as (path, what)."""
    if obj is None:
        return where, "missing (null)"
    if isinstance(obj, float) and not math.isfinite(obj):
        return where, str(obj)
    if isinstance(obj, Mapping):
        return next((hit for k, v in obj.items() if (hit := _bad_leaf(v, f"{where}.{k}" if where else str(k)))),
                    None)
    if isinstance(obj, list | tuple):
        return next((hit for i, v in enumerate(obj) if (hit := _bad_leaf(v, f"{where}[{i}]"))), None)
    return None


def evidence_problem(ev: Any) -> str | None:
    """Why a stage's evidence record cannot give a verdict (not_judged's reason), or None when it can.

    Every number in it must be finite: a NaN -- or the null a cache made of one -- anywhere in the
    value, the CI or the detail means the statistic was undefined on this run, and a verdict from an
    undefined statistic would be noise. The same record gives the same answer on a first run and on
    a rerun that reads it back from the cache.
    """
    if not isinstance(ev, Mapping) or not {"value", "ci", "n"} <= set(ev):
        return "its evidence record is incomplete (value, ci and n are required)"
    ci = ev["ci"]
    if not isinstance(ev.get("detail") or {}, Mapping):
        return "its evidence detail is not a mapping"
    if not isinstance(ci, list | tuple) or len(ci) != 2:
        return f"its evidence CI is not (low, high): {ci!r}"
    for key, x in (("value", ev["value"]), ("ci", ci), ("detail", ev.get("detail") or {})):
        hit = _bad_leaf(x, key)
        if hit:
            return f"non-finite evidence: {hit[0]} is {hit[1]}"
    for key, x in (("value", ev["value"]), ("ci[0]", ci[0]), ("ci[1]", ci[1]), ("n", ev["n"])):
        if isinstance(x, bool) or not isinstance(x, int | float):
            return f"its evidence {key} is not a number: {x!r}"
    if ci[0] > ci[1]:
        return f"its evidence CI is reversed ({ci[0]:g} > {ci[1]:g})"
    if ev["n"] < 1 or ev["n"] != int(ev["n"]):
        return f"its evidence n is not a positive count: {ev['n']!r}"
    return None


__all__ = ["ALPHA", "CLAIMS", "Evidence", "PAPER_A", "PAPER_B", "STAGES", "VERDICTS", "PaperClaim", "adjust",
           "checked_verdicts", "claim_record", "claim_records", "decide", "get_claim", "holm", "judge",
           "evidence_problem", "p_values", "verdict"]

"""From the stages' evidence to study.json's claim rows: design checks, Holm, power, the reasons.

Order of questions for each claim of a section that ran: did its stage fail;
did it produce evidence (else the stage's own reason); is every number finite;
can this design decide it (:func:`honesty.design_problem`: seeds, layers,
units, images). What passes forms one Holm family (and the uncalibrated
evidence a second one); every judged row then gets its power after the run
and, when inconclusive, the n that would settle it, in named units.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .context import Context
from .papers import CLAIMS, PaperClaim
from .verdicts import TESTED, Evidence, claim_records, evidence_problem


def pool(evs: list[Mapping[str, Any]]) -> dict[str, Any]:
    """Several bases' lead evidence as one: the mean over bases, its replicates the mean of theirs (the bases
    are fixed, each resampled on its own seeds and layers)."""
    reps = [np.asarray(e["replicates"], dtype=float) for e in evs]
    m = min(r.size for r in reps)
    mean = np.mean([r[:m] for r in reps], axis=0)
    lo, hi = np.quantile(mean, [0.025, 0.975])
    comps = {k: float(sum(e["components"][k] for e in evs)) / len(evs) ** 2 for k in ("seeds", "units")}
    return {"value": float(np.mean([e["value"] for e in evs])), "ci": [float(lo), float(hi)],
            "n": int(sum(e["n"] for e in evs)), "replicates": [float(x) for x in mean], "components": comps,
            "design": {"seeds": min(e["design"]["seeds"] for e in evs),
                       "units": [min(min(e["design"]["units"]) for e in evs)], "unit": "layers",
                       "resampling": "per base: seeds, then layers; averaged over the bases"},
            "detail": {"bases": len(evs), "per_base": [e["value"] for e in evs]}}


def gather(ctx: Context, failed: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The first base's evidence and unjudged reasons of every stage, plus locate.cross-architecture."""
    from .config import base_labels

    res = ctx.results
    evidence = {k: v for key, r in res.items() if "@" not in key for k, v in (r.get("evidence") or {}).items()}
    unjudged = {k: str(v) for key, r in res.items() if "@" not in key for k, v in (r.get("unjudged") or {}).items()}
    labels = base_labels(ctx.cfg)
    others = [res.get(f"locate@{labels[b]}") for b in ctx.cfg.other_bases]
    evs = [o["evidence"]["locate.gate-largest"] for o in others if o and "locate.gate-largest" in o.get("evidence", {})]
    cid = "locate.cross-architecture"
    if not ctx.cfg.other_bases:
        unjudged[cid] = "the config names one base; name more in models: [a, b] to test another architecture"
    elif not evs:
        gone = [f"locate@{labels[b]}" for b in ctx.cfg.other_bases if f"locate@{labels[b]}" in failed]
        unjudged[cid] = (f"the {', '.join(gone)} stage failed" if gone else
                         "the other bases' locate produced no gate_proj lead")
    else:
        evidence[cid] = pool(evs)
    return evidence, unjudged


def _ev(rec: Mapping[str, Any]) -> Evidence:
    reps = rec.get("replicates")
    return Evidence(float(rec["value"]), (float(rec["ci"][0]), float(rec["ci"][1])), int(rec["n"]),
                    dict(rec.get("detail") or {}), tuple(float(x) for x in reps) if reps else None)


def judge_claims(ctx: Context, sections: Mapping[str, Any], failed: Mapping[str, str], stage_of: Mapping[str, str],
                 facts: Mapping[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(claim rows, not_judged rows) for the claims whose section ran.

    ``facts``: ``seeds``, ``text_only`` {"base", "circuits"}, ``n_layers`` {"base", "circuits"},
    ``available`` {unit: how many the data has}, ``power_before`` {claim: planning MDE}."""
    from .honesty import design_problem
    from .power import after, n_to_settle

    evidence, unjudged = gather(ctx, failed)
    judged: dict[str, Mapping[str, Any]] = {}
    not_judged: list[dict[str, Any]] = []
    for cid, claim in CLAIMS.items():
        if claim.stage not in sections:
            continue
        ev = evidence.get(cid)
        src = stage_of[claim.stage]
        why = (f"the {src} stage {failed[src]}" if src in failed else
               unjudged.get(cid, "this run produced no evidence for it")) if ev is None else evidence_problem(ev)
        kind = None
        model = "circuits" if claim.stage.startswith("circuits") else "base"
        # The design first (seeds, images, depth: what no amount of this data fixes), then the evidence's own.
        hit = None if src in failed else design_problem(  # a failed stage is this run's own, first reason
            claim, ev if ev is not None and why is None else {}, int(facts["seeds"]),
            bool(facts["text_only"][model]), facts["n_layers"].get(model))
        if hit is not None:
            kind, why = hit[0], hit[1] + (f"; also, {why}" if why and hit[0] != "units" else "")
        if ev is None or why is not None:
            row: dict[str, Any] = {"id": cid, "stage": claim.stage, "reason": why, "paper_value": claim.paper_value}
            if kind is not None:
                row["design"] = kind
            if facts["power_before"].get(cid):
                row["power"] = {"before": facts["power_before"][cid]}
            not_judged.append(row)
            sections[claim.stage]["notes"].append(f"claim {cid} is not judged: {why}")
            continue
        judged[cid] = ev
    main = {cid: _ev(ev) for cid, ev in judged.items()}
    raw = {cid: _ev({**ev, **ev["raw"]}) for cid, ev in judged.items() if isinstance(ev.get("raw"), Mapping)}
    gone = {cid: str(ev["raw_undefined"]) for cid, ev in judged.items() if ev.get("raw_undefined")}
    rows = claim_records(main, raw, raw_undefined=gone)
    m_tests = sum(1 for r in rows for k in TESTED if k in r["p"])
    for r in rows:
        claim, ev = CLAIMS[r["id"]], judged[r["id"]]
        reps = ev.get("replicates")
        se = float(np.std(reps, ddof=1)) if reps and len(reps) > 1 else (r["ci"][1] - r["ci"][0]) / (2 * 1.96)
        r["power"] = {"before": facts["power_before"].get(r["id"]), "after": after(claim, se, m_tests)}
        design = dict(ev.get("design") or {})
        r["design"] = design
        r["calibration"] = _calibration(ctx, claim)
        if r["verdict"] == "inconclusive" and ev.get("components"):
            r["n_to_settle"] = n_to_settle(claim, r["ours"], ev["components"], design,
                                           facts["available"].get(design.get("unit")), m_tests)
        if r["verdict"] == "inconclusive" and "n_to_settle" not in r:
            r["n_to_settle"] = {"text": "unknown: this evidence carries no variance components"}
    return rows, not_judged


def _calibration(ctx: Context, claim: PaperClaim) -> str:
    """What the verdict's scores are: the scored stage's calibration and why, or that none applies."""
    stage = "efficiency" if claim.stage == "frontier" else claim.stage
    res = ctx.results.get(stage) or {}
    if "per_example" not in res:
        return "not applicable: no closed-set scores (the raw verdict reads the same numbers)"
    return f"{res.get('calibration', 'none')}: {res.get('calibration_why', '')}".rstrip(": ")


__all__ = ["gather", "judge_claims", "pool"]

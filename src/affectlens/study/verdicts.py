"""The two papers' claims, and the one rule that turns our numbers into a verdict.

A verdict is never written by hand: :func:`verdict` derives it from our
estimate's 95 % confidence interval and the claim's threshold, so a reader
can check every row of the report against its numbers. The rule is the
plain confidence-interval test: *supported* when the whole CI lies on the
claim's side of the threshold, *contradicted* when the whole CI lies on the
other side, *inconclusive* (at this n) when the CI straddles it. A CI that
touches the threshold counts as straddling.

Some claims name a band, not a side ("emotion is aggregated in the *middle*
layers"): such a claim has an ``upper`` bound and ``direction`` ``">"``; it
is supported when the CI lies inside ``(threshold, upper)``, contradicted
when the CI lies wholly outside the band (all below ``threshold`` or all
above ``upper``), otherwise inconclusive. One claim with a band reads better
in the report than two one-sided halves that would each be half the story.

Papers: A = Zhang, Zeng, Zhao, Hu 2026, "Opening the Black Box: Preliminary
Insights into Affective Modeling in Multimodal Foundation Models"
(arXiv 2601.15906); B = Zhang, Sun, Xie, Tian, ICML 2026, "Interpreting and
Enhancing Emotional Circuits in Large Vision-Language Models via Cross-Modal
Information Flow" (arXiv 2605.21980), which reports no single headline number
for these claims (``paper_value`` None).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import AffectlensError
from ..runs import find_non_finite

Verdict = Literal["supported", "contradicted", "inconclusive"]
VERDICTS: tuple[Verdict, ...] = ("supported", "contradicted", "inconclusive")
STAGES = ("locate", "sufficiency", "efficiency", "necessity", "frontier",
          "circuits-layers", "circuits-heads", "circuits-intervention")
PAPER_A = "Zhang et al. 2026, arXiv 2601.15906 (gate_proj)"
PAPER_B = "Zhang et al., ICML 2026, arXiv 2605.21980 (emotional circuits)"


@dataclass(frozen=True)
class PaperClaim:
    """One claim of a paper, and the number of ours that tests it.

    ``paper`` is the claim as the paper states it, with its number where it
    gives one; ``quantity`` says in words what our ``Evidence.value``
    measures and in which unit; ``threshold``/``direction`` (and ``upper``
    for a band) say which values support it.
    """

    id: str
    stage: str
    paper: str
    paper_value: float | None
    quantity: str
    threshold: float
    direction: Literal[">", "<"]
    upper: float | None = None
    source: str = PAPER_A


@dataclass(frozen=True)
class Evidence:
    """Our estimate: ``value`` with its 95 % CI over ``n`` units (seeds, examples, emotions, layers)."""

    value: float
    ci: tuple[float, float]
    n: int
    detail: dict[str, Any] = field(default_factory=dict)


_C = [
    PaperClaim(
        "locate.gate-largest", "locate",
        "Affective adaptation does not primarily focus on the attention module but localizes to the "
        "feed-forward gating projection: gate_proj changes most under emotion tuning (Figs. 4-6).",
        None, "gate_proj's size-fair change (relative change ||dW||/||W||, Eq. 2, mean over layers) minus "
        "the largest other module's, in units of relative change; CI over seeds x layers", 0.0, ">"),
    PaperClaim(
        "locate.emotion-specific", "locate",
        "The locus is task-specific: with the same base and budget, emotion tuning peaks in gate_proj "
        "while a non-affective task (GSM8K math) peaks in up_proj (Fig. 5).",
        None, "gate_proj's share of the total Eq.-1 change in the emotion adapter minus its share in the "
        "control-task adapter (same budget), as a fraction of 1", 0.0, ">"),
    PaperClaim(
        "sufficiency.gate-transfer", "sufficiency",
        "gate_proj is sufficient: transferring attention + gate_proj from the tuned model onto the base "
        "recovers more affective performance than attention + up_proj or attention + down_proj (Table 1).",
        None, "score(Att.+gate transferred onto the base) minus max(score(Att.+up), score(Att.+down)), "
        "in score points; paired bootstrap over examples x seeds", 0.0, ">"),
    PaperClaim(
        "efficiency.gate-lora", "efficiency",
        "gate_proj is efficient: LoRA on gate_proj alone outperforms LoRA on any other single module at "
        "an identical budget (Table 2, Fig. 8).",
        None, "score(gate_proj-only LoRA) minus the best other single-module LoRA at the identical budget, "
        "in score points", 0.0, ">"),
    PaperClaim(
        "frontier.get-share", "frontier",
        "GET (LoRA on gate_proj only) achieves 96.6 % of AffectGPT's average performance across eight "
        "affective tasks while tuning about 24.5 % of its parameters (Fig. 9).",
        0.966, "GET's share of the all-module LoRA's gain over max(base, majority-class yardstick), as a "
        "fraction of 1 (stricter than the paper's raw score ratio, which flatters a method that lands on "
        "the majority class); supported above 0.9", 0.9, ">"),
    PaperClaim(
        "necessity.gate-reset", "necessity",
        "gate_proj is necessary: destructive ablation of gate_proj in the tuned model degrades affective "
        "understanding and generation.",
        None, "drop in affective score when gate_proj's delta is reset to base inside the tuned model, minus "
        "the drop from resetting an equal-parameter control module (up_proj), in score points", 0.0, ">"),
    PaperClaim(
        "circuits-layers.middle-peak", "circuits-layers",
        "Adapt-Aggregate-Execute: emotional cues are aggregated in the middle layers, where steering with "
        "an emotion vector has its largest effect.",
        None, "relative depth layer/(L-1) of the layer with the largest steering effect, per emotion "
        "(0 = first, 1 = last); supported when the CI lies inside the middle band (0.2, 0.8)",
        0.2, ">", upper=0.8, source=PAPER_B),
    PaperClaim(
        "circuits-heads.general-deeper", "circuits-heads",
        "Sentiment-specific attention heads aggregate cues in the middle layers; emotion-general pathways "
        "in the deep layers turn them into the narrative (head overlap across emotions rises with depth).",
        None, "Spearman correlation between layer depth and the cross-emotion head overlap (Jaccard of "
        "top heads), from -1 to 1; CI over layers", 0.0, ">", source=PAPER_B),
    PaperClaim(
        "circuits-intervention.targeted-beats-random", "circuits-intervention",
        "Amplifying the identified emotional heads and neurons at inference improves emotional reasoning, "
        "beyond random heads/neurons of the same count.",
        None, "change in accuracy from amplifying the top emotional heads/neurons minus the change from "
        "random heads/neurons of the same count, in accuracy points (fraction of 1); paired bootstrap "
        "over examples", 0.0, ">", source=PAPER_B),
    PaperClaim(
        "circuits-intervention.less-hallucination", "circuits-intervention",
        "The inference-time interventions reduce emotional hallucination.",
        None, "change in the emotional-hallucination rate under the intervention (fraction of 1; negative "
        "= fewer hallucinations)", 0.0, "<", source=PAPER_B),
]
CLAIMS: dict[str, PaperClaim] = {c.id: c for c in _C}


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
    hit = find_non_finite(ev.detail, "detail")
    if hit:
        raise AffectlensError(f"claim {claim_id}: non-finite number {hit[1]} at {hit[0]}")
    return value, lo, hi


def verdict(claim: PaperClaim, ev: Evidence) -> Verdict:
    """supported / contradicted / inconclusive from the CI against the threshold (see the module doc)."""
    _, lo, hi = _check(claim.id, ev)
    t = claim.threshold
    if claim.upper is not None:
        if claim.direction != ">" or claim.upper <= t:
            raise AffectlensError(f"claim {claim.id}: a band needs direction '>' and upper > threshold")
        if t < lo and hi < claim.upper:
            return "supported"
        if hi < t or lo > claim.upper:
            return "contradicted"
        return "inconclusive"
    if claim.direction == ">":
        return "supported" if lo > t else "contradicted" if hi < t else "inconclusive"
    return "supported" if hi < t else "contradicted" if lo > t else "inconclusive"


def get_claim(claim_id: str) -> PaperClaim:
    """The claim with this id, or a one-line error naming the known ids."""
    try:
        return CLAIMS[claim_id]
    except KeyError:
        raise AffectlensError(f"unknown claim {claim_id!r}; known: {', '.join(CLAIMS)}") from None


def claim_record(claim_id: str, ev: Evidence) -> dict[str, Any]:
    """The study.json row for one claim: the paper's side, ours with its CI, and the derived verdict."""
    claim = get_claim(claim_id)
    value, lo, hi = _check(claim_id, ev)
    return {"id": claim.id, "stage": claim.stage, "paper": claim.paper, "paper_value": claim.paper_value,
            "source": claim.source, "quantity": claim.quantity, "threshold": claim.threshold,
            "direction": claim.direction, "upper": claim.upper, "ours": value, "ci": [lo, hi], "n": ev.n,
            "verdict": verdict(claim, ev), "detail": dict(ev.detail)}


def evidence_of(record: dict[str, Any]) -> Evidence:
    """The Evidence a study.json claim row was made from (for re-deriving its verdict)."""
    try:
        ci = record["ci"]
        return Evidence(record["ours"], (ci[0], ci[1]), record["n"], dict(record.get("detail") or {}))
    except (KeyError, TypeError, IndexError) as e:
        raise AffectlensError(f"claim row {record.get('id', '?')!r} lacks ours/ci/n ({e})") from None


def checked_verdict(record: dict[str, Any]) -> Verdict:
    """Re-derive a claim row's verdict from its numbers; refuse a row whose stored verdict disagrees."""
    claim = get_claim(str(record.get("id")))
    v = verdict(claim, evidence_of(record))
    if record.get("verdict") not in (None, v):
        raise AffectlensError(f"claim {claim.id}: stored verdict {record.get('verdict')!r} does not follow "
                              f"from its numbers (they give {v!r})")
    return v

"""Plain-language "what this means" paragraphs, generated from the numbers and the verdicts.

Nothing here is hand-written per run: every sentence is filled from a claim
row (value, CI, n, verdict, margin, power) or from a section's numbers, so a
paragraph cannot drift from the table above it. An inconclusive claim says
what would settle it in named units (seeds, examples, layers, emotions), from
the row's ``n_to_settle`` (see :mod:`.power`), or that this data cannot.

Section numbers read when present (all optional; a section without them is
explained from its claims alone):

- ``locate``: ``locus_by_seed`` {adapter label: [size-fair locus per seed]}, or
  ``loci`` {"<kind>-s<seed>": {"relative": module, ...}} from which it is built;
- any stage: ``scores`` {variant: score} (the table's headline scores),
  ``uncalibrated_scores`` and ``yardstick`` (max of the base and the majority-class score);
- ``frontier``: ``score_ratio`` and ``param_share`` (fractions: GET's score over the
  all-module LoRA's, and GET's share of its trainable parameters);
- ``necessity``: ``control_task_drop`` {module: drop on the non-affective task};
- ``circuits-layers``: ``peak_depth`` {emotion: relative depth of its peak}.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from .verdicts import CLAIMS, PaperClaim

# What each verdict means for each claim, in words a README-only reader follows: (supported, contradicted).
MEANING: dict[str, tuple[str, str]] = {
    "locate.gate-largest": (
        "gate_proj is the module the emotion tuning changed most, even after accounting for module size",
        "another module changed more than gate_proj once module size is accounted for"),
    "locate.emotion-specific": (
        "gate_proj takes a larger share of the change under emotion tuning than under the control task, "
        "so the locus is emotion-specific rather than a property of fine-tuning itself",
        "gate_proj takes no larger share under emotion tuning than under the control task, so its prominence "
        "reflects fine-tuning in general, not emotion"),
    "sufficiency.gate-transfer": (
        "transferring attention + gate_proj alone recovers more of the affective score than attention + "
        "up_proj or + down_proj",
        "attention + up_proj or + down_proj recovers more of the affective score than attention + gate_proj"),
    "efficiency.gate-lora": (
        "a LoRA on gate_proj alone scores better than on any other single module at the same budget",
        "another single-module LoRA scores better than gate_proj at the same budget"),
    "frontier.get-share": (
        "gate-only tuning keeps most (above 90 %) of the all-module adapter's gain over the trivial yardstick",
        "gate-only tuning keeps less than 90 % of the all-module adapter's gain over the trivial yardstick"),
    "necessity.gate-reset": (
        "undoing gate_proj's fine-tuning hurts the affective score more than undoing an equal-size control "
        "module",
        "undoing gate_proj's fine-tuning hurts the affective score less than undoing an equal-size control "
        "module"),
    "circuits-layers.middle-peak": (
        "steering works best in the middle layers, as the aggregate-in-the-middle picture predicts",
        "steering works best outside the middle layers"),
    "circuits-heads.general-deeper": (
        "deeper layers share more of their top heads across emotions (emotion-general), shallower ones fewer",
        "head overlap across emotions falls with depth, the opposite of the paper's picture"),
    "circuits-intervention.targeted-beats-random": (
        "amplifying the identified emotional heads/neurons helps accuracy more than amplifying random ones",
        "amplifying random heads/neurons of the same count helps at least as much as the identified ones"),
    "circuits-intervention.less-hallucination": (
        "the intervention lowers the emotional-hallucination rate",
        "the intervention raises the emotional-hallucination rate"),
    "locate.sft-same-locus": (
        "full fine-tuning, too, changes gate_proj most (size-fair), as LoRA does",
        "under full fine-tuning another module changes more than gate_proj"),
    "locate.cross-architecture": (
        "on the other base models too, gate_proj changes most (size-fair)",
        "on the other base models another module changes more than gate_proj"),
    "sufficiency.gate-over-attention": (
        "adding gate_proj to the transferred attention raises the affective score (Table 1's headline)",
        "adding gate_proj to the transferred attention lowers the affective score: Table 1's headline comes out "
        "reversed"),
    "sufficiency.single-gate-load": (
        "transferring gate_proj alone recovers more than transferring any other single module",
        "another single module transferred alone recovers more than gate_proj"),
    "sufficiency.down-negative": (
        "adding down_proj to attention + gate_proj lowers the transferred score (negative transfer)",
        "adding down_proj to attention + gate_proj raises the transferred score (no negative transfer)"),
    "sufficiency.fluency-kept": (
        "the transfer costs at most 1 point on the non-affective control task (fluency kept)",
        "the transfer costs more than 1 point on the non-affective control task"),
    "efficiency.gate-over-attention": (
        "tuning attention + gate_proj scores better than tuning attention alone",
        "tuning attention alone scores better than attention + gate_proj"),
    "efficiency.att-gate-lora": (
        "among attention + one MLP module, attention + gate_proj tunes best",
        "attention + up_proj or + down_proj tunes better than attention + gate_proj"),
    "efficiency.down-negative": (
        "adding down_proj to attention lowers the tuned score (negative transfer)",
        "adding down_proj to attention raises the tuned score"),
    "efficiency.o-gate-synergy": (
        "{o_proj, gate_proj} tunes better than {q,k,v,o,gate}",
        "{q,k,v,o,gate} tunes better than {o_proj, gate_proj}"),
    "frontier.get-ratio": (
        "GET reaches over 90 % of the all-module adapter's score",
        "GET reaches less than 90 % of the all-module adapter's score"),
    "circuits-intervention.improves": (
        "amplifying the identified heads/neurons raises accuracy",
        "amplifying the identified heads/neurons lowers accuracy"),
}
EQUIVALENT = "the difference lies inside the practical-equivalence margin: no effect worth the name either way"

# The claim in a few words, for sentences ("The test of <short>: ours ...").
SHORT: dict[str, str] = {
    "locate.gate-largest": "gate_proj changes most (size-fair)",
    "locate.emotion-specific": "the gate_proj locus is emotion-specific (vs the control task)",
    "sufficiency.gate-transfer": "gate_proj is sufficient (transfer)",
    "efficiency.gate-lora": "gate_proj is the most efficient single module (targeted LoRA)",
    "frontier.get-share": "GET keeps most of the all-module gain",
    "necessity.gate-reset": "gate_proj is necessary (reset to base)",
    "circuits-layers.middle-peak": "steering peaks in the middle layers",
    "circuits-heads.general-deeper": "emotion-general heads sit deeper",
    "circuits-intervention.targeted-beats-random": "targeted amplification beats random",
    "circuits-intervention.less-hallucination": "the intervention reduces hallucination",
    "locate.sft-same-locus": "full fine-tuning has the same locus",
    "locate.cross-architecture": "the locus holds on other bases",
    "sufficiency.gate-over-attention": "Att. -> Att.+gate (Table 1's headline, +14.02)",
    "sufficiency.single-gate-load": "gate_proj is the best single module to load (Fig. 7)",
    "sufficiency.down-negative": "down_proj transfers negatively",
    "sufficiency.fluency-kept": "transfer keeps fluency",
    "efficiency.gate-over-attention": "tuning Att.+gate beats Att.",
    "efficiency.att-gate-lora": "Att.+gate tunes best of Att.+one module",
    "efficiency.down-negative": "tuning Att.+down drops (negative transfer)",
    "efficiency.o-gate-synergy": "{o, gate} beats {q,k,v,o,gate}",
    "frontier.get-ratio": "GET keeps over 90 % of the score",
    "circuits-intervention.improves": "amplification improves accuracy",
}

CAVEAT = {
    "locate": "Weight change is correlational: it shows where training moved the weights, not that those "
              "weights carry emotion; sufficiency, efficiency and necessity are the causal tests.",
    "circuits-layers": "A steering peak says where adding the emotion direction moves the output most, "
                       "not where emotion is computed.",
}


def fmt(x: float) -> str:
    """A number as a reader wants it: 3 significant digits, no exponent for everyday sizes."""
    if x == 0:
        return "0"
    return f"{x:.3g}" if 1e-3 <= abs(x) < 1e4 else f"{x:.2e}"


def _side(claim: PaperClaim, other: bool = False) -> str:
    """Where the CI must lie for the claim ("above 0"), or with ``other`` where it lies when contradicted."""
    if claim.upper is not None:
        return f"{'outside' if other else 'inside'} ({fmt(claim.threshold)}, {fmt(claim.upper)})"
    above = (claim.direction == ">") != other
    return f"{'above' if above else 'below'} {fmt(claim.threshold)}"


def claim_sentence(record: Mapping[str, Any]) -> str:
    """One claim row in words: ours with its CI, the verdict, what it means, and what would settle it."""
    claim = CLAIMS.get(str(record.get("id")))
    value, (lo, hi), n, v = float(record["ours"]), record["ci"], int(record["n"]), str(record["verdict"])
    name = SHORT.get(str(record.get("id")), str(record.get("id")))
    head = f"The test of \"{name}\": ours {fmt(value)} (95 % CI {fmt(lo)} to {fmt(hi)}, n = {n})"
    if claim is None:
        return f"{head}: {v}."
    yes, no = MEANING.get(claim.id, ("the claim holds", "the claim fails"))
    raw = record.get("raw_verdict")
    tail = (f" Judged on uncalibrated scores instead, it would be {raw}." if raw not in (None, v) else "")
    if v == "supported":
        return f"{head} lies {_side(claim)} after Holm's adjustment: supported, i.e. {yes}.{tail}"
    if v == "contradicted":
        return (f"{head} lies {_side(claim, other=True)} after Holm's adjustment (the claim needs "
                f"{_side(claim)}): contradicted, i.e. {no}.{tail}")
    if v == "equivalent":
        m = claim.margin or 0.0
        return (f"{head} lies inside {fmt(claim.threshold)} +/- {fmt(m)} (the margin: {claim.margin_reason}): "
                f"equivalent, i.e. {EQUIVALENT}.{tail}")
    settle = (record.get("n_to_settle") or {}).get("text")
    more = f"; {settle}" if settle else ""
    return f"{head} neither clears the threshold ({_side(claim)}) nor its margin: inconclusive at this n{more}.{tail}"


def locus_sentence(loci: Mapping[str, Sequence[str]], metric: str = "the size-fair measure") -> str:
    """'gate_proj changed most in 2 of 3 seeds of emotion; in control it was up_proj (3 of 3)'."""
    parts = []
    for i, (label, seq) in enumerate(loci.items()):
        if not seq:
            continue
        top, k = Counter(seq).most_common(1)[0]
        parts.append(f"{top} changed most in {k} of {len(seq)} seed{'s' if len(seq) != 1 else ''} of the "
                     f"{label} adapter" if i == 0 else f"in the {label} adapter it was {top} ({k} of {len(seq)})")
    return f"By {metric}, " + "; ".join(parts) + "." if parts else ""


def locus_by_seed(numbers: Mapping[str, Any], metric: str = "relative") -> dict[str, list[str]]:
    """{adapter kind: [locus per seed]} from ``locus_by_seed``, or from ``loci`` {"<kind>-s<seed>": {metric: module}}."""
    given = numbers.get("locus_by_seed")
    if isinstance(given, Mapping):
        return {str(k): [str(x) for x in v] for k, v in given.items() if isinstance(v, list | tuple)}
    out: dict[str, list[str]] = {}
    for label, per_metric in (numbers.get("loci") or {}).items():
        m = re.fullmatch(r"(.+)-s\d+", str(label))
        if m and isinstance(per_metric, Mapping) and metric in per_metric:
            out.setdefault(m.group(1), []).append(str(per_metric[metric]))
    return out


def _lead(stage: str, numbers: Mapping[str, Any]) -> list[str]:
    """Stage-specific sentences from the section's numbers, for the keys the runner provides."""
    out = []
    loci = locus_by_seed(numbers) if stage == "locate" else {}
    if loci:
        out.append(locus_sentence(loci))
    by_base = numbers.get("loci_by_base") if stage == "locate" else None
    if isinstance(by_base, Mapping) and len(by_base) > 1:
        named = [f"{b} {x['emotion']['relative']}" for b, x in by_base.items()
                 if isinstance(x, Mapping) and isinstance(x.get("emotion"), Mapping) and "relative" in x["emotion"]]
        if named:
            out.append("Across base models, the affective adapter's size-fair locus is: " + ", ".join(named)
                       + "; the same module everywhere is a cross-architecture result, different ones are not.")
    if stage == "frontier" and {"score_ratio", "param_share"} <= set(numbers):
        out.append(f"GET reached {100 * float(numbers['score_ratio']):.1f} % of the all-module score with "
                   f"{100 * float(numbers['param_share']):.1f} % of its trainable parameters (the paper: "
                   "96.6 % at 24.5 %); the share of the gain over the trivial yardstick is judged beside it, "
                   "because a score ratio flatters a method that lands on the majority class.")
    scores = numbers.get("scores")
    if isinstance(scores, Mapping) and scores:
        best = max(scores, key=lambda k: float(scores[k]))
        out.append("Scores: " + ", ".join(f"{k} {fmt(float(v))}" for k, v in scores.items())
                   + f" (best: {best}).")
    raw = numbers.get("uncalibrated_scores")
    if isinstance(raw, Mapping) and raw:
        out.append("Uncalibrated, the same models score " + ", ".join(
            f"{k} {fmt(float(v))}" for k, v in raw.items() if isinstance(v, int | float)) + ".")
    if isinstance(numbers.get("yardstick"), int | float):
        out.append(f"The trivial yardstick (the better of the untuned base and always answering the majority "
                   f"class) scores {fmt(float(numbers['yardstick']))}; a score at or below it shows no learning.")
    drop = numbers.get("control_task_drop")
    if stage == "necessity" and isinstance(drop, Mapping) and drop:
        out.append("On the non-affective control task the resets cost " + ", ".join(
            f"{k} {fmt(float(v))}" for k, v in drop.items()) + "; a module whose reset hurts the control task "
            "as much as the affective one is necessary for everything, not for emotion.")
    if stage == "circuits-layers" and isinstance(numbers.get("peak_depth"), Mapping) and numbers["peak_depth"]:
        peaks = ", ".join(f"{k} {float(v):.2f}" for k, v in numbers["peak_depth"].items())
        out.append(f"The steering effect peaked at relative depth (0 = first layer, 1 = last): {peaks}.")
    return [s for s in out if s]


def explain_section(stage: str, section: Mapping[str, Any] | None, claims: Sequence[Mapping[str, Any]]) -> str:
    """The "what this means" paragraph of one report section."""
    if section is None:
        return "This stage was not run, so the report says nothing about its claims."
    mine = [c for c in claims if c.get("stage") == stage]
    sentences = _lead(stage, section.get("numbers") or {})
    sentences += [claim_sentence(c) for c in mine]
    if not mine:
        sentences.append("No claim of the papers was tested in this section (see its notes).")
    if stage in CAVEAT:
        sentences.append(CAVEAT[stage])
    return " ".join(sentences)


def _margin(mean: Mapping[str, float]) -> tuple[str, str, float, float]:
    """(top module, runner-up, top value, relative margin over the runner-up)."""
    order = sorted(mean, key=lambda k: -mean[k])
    top, second = order[0], (order[1] if len(order) > 1 else order[0])
    m = (mean[top] - mean[second]) / mean[second] if mean[second] > 0 else math.inf
    return top, second, mean[top], m


def _share(mean: Mapping[str, float], module: str) -> float:
    total = sum(mean.values())
    return mean.get(module, 0.0) / total if total > 0 else 0.0


NEAR_TIE = 0.10  # a lead of under 10 % over the runner-up is a near tie (one seed cannot separate them)


def demo_paragraph(rankings: Mapping[str, Mapping[str, Any]], emotion: str = "emotion",
                   control: str = "control") -> str:
    """The demo's answer in one paragraph, from locate's per-model ``ranking`` (mean change per module).

    Leads with the size-fair metric (relative change, Eq. 2) because the
    absolute change (Eq. 1) grows with matrix size, compares the emotion
    adapter's locus with the control adapter's, gives the margins, and says
    what a one-seed weight-change measurement does and does not show.
    """
    rel = {k: rankings[k]["relative"]["mean"] for k in (emotion, control)}
    l2 = {k: rankings[k]["l2"]["mean"] for k in (emotion, control)}
    (et, es, ev, em), (ct, cs, cv, cm) = _margin(rel[emotion]), _margin(rel[control])

    def margin(m: float, runner: str) -> str:
        if not math.isfinite(m):
            return f"nothing else changed ({runner})"
        size = "a near tie" if m < NEAR_TIE else "a clear lead" if m >= 0.25 else "a modest lead"
        return f"{100 * m:.0f} % more than the runner-up {runner}, {size}"

    s = [f"By the size-fair measure (relative change ||dW||/||W||, which does not favour big matrices), the "
         f"{emotion} adapter changed {et} most ({fmt(ev)}, {margin(em, es)}); the {control} adapter, trained "
         f"with the same budget on a non-emotional task, changed {ct} most ({fmt(cv)}, {margin(cm, cs)})."]
    tie = [k for k, m in ((emotion, em), (control, cm)) if math.isfinite(m) and m < NEAR_TIE]
    if et != ct and tie:
        s.append(f"The two loci differ, but the {' and the '.join(tie)} adapter's lead is a near tie, so "
                 f"this run cannot tell whether the {emotion} locus goes with the {emotion} data or is noise "
                 "between nearly equal modules; more seeds would settle it.")
    elif et != ct:
        s.append(f"The two loci differ: in this run the {emotion} locus ({et}) is not simply where any "
                 f"fine-tuning moves weights, it goes with the {emotion} data.")
    else:
        s.append(f"Both adapters peak in the same module, so this run does not show an {emotion}-specific "
                 f"locus: {et} may simply be where this fine-tuning moves weights on any task.")
    ge, gc = _share(l2[emotion], "gate_proj"), _share(l2[control], "gate_proj")
    s.append(f"By absolute change (Eq. 1, which grows with matrix size) gate_proj holds {100 * ge:.0f} % of "
             f"the {emotion} adapter's total change and {100 * gc:.0f} % of the {control} adapter's.")
    s.append("This is one seed on a small model and a correlational measurement of where training moved "
             "weights: it does not show that the module is sufficient or necessary for emotion; "
             "`affectlens study` tests that (module transfer, targeted tuning and ablation, with confidence "
             "intervals over seeds).")
    return " ".join(s)

"""Every claim of the two papers, with the paper's number, our measure, and the margin that decides a null.

Papers: A = Zhang, Zeng, Zhao, Hu 2026, "Opening the Black Box: Preliminary
Insights into Affective Modeling in Multimodal Foundation Models"
(arXiv 2601.15906; Qwen2.5-7B inside AffectGPT, scored as the MER-UniBench
mean); B = Zhang, Sun, Xie, Tian, ICML 2026, "Interpreting and Enhancing
Emotional Circuits in Large Vision-Language Models via Cross-Modal
Information Flow" (arXiv 2605.21980), whose numbers here come from secondary
summaries (``paper_note`` says so).

``paper_value`` is in *our* units (scores as fractions of 1: the paper's
74.02 - 63.75 points is 0.1027). ``margin`` is the practical-equivalence
margin around the threshold -- a CI inside it decides the null
(*equivalent*) -- stated with its reason; None where a claim is a band or a
non-inferiority bound (the threshold already is the margin). ``training``:
the claim depends on trained weights, so its replicate is the seed and it is
not judged on fewer than :data:`MIN_SEEDS`. ``depth``: a claim about where
in depth something happens (needs :data:`MIN_LAYERS` layers). ``images``: a
claim about cross-modal (image) information flow, which a text-only model
cannot test.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

PAPER_A = "Zhang et al. 2026, arXiv 2601.15906 (gate_proj)"
PAPER_B = "Zhang et al., ICML 2026, arXiv 2605.21980 (emotional circuits)"
SECONDARY = "from secondary summaries of paper B, not its text"
STAGES = ("locate", "sufficiency", "efficiency", "necessity", "frontier",
          "circuits-layers", "circuits-heads", "circuits-intervention")
MIN_SEEDS = 3
MIN_LAYERS = 5
MIN_UNITS = 5

# The margins and why (one sentence each; the report prints them beside the claim).
SCORE_MARGIN = 0.01
SCORE_WHY = ("1 point of a 0-100 score: the paper's Table 2 puts Att.+{up,down} and Att.+gate both at 74.06, "
             "so differences this small are not read as a module preference")
LEAD_MARGIN = 0.10
LEAD_WHY = ("a lead under 10 % over the runner-up module is a near tie (the demo's rule), not a locus")
SHARE_MARGIN = 0.05
SHARE_WHY = ("5 percentage points of the total weight change, about a third of an even share over 7 modules: a "
             "smaller shift does not make a module emotion-specific")
RATIO_MARGIN = 0.05
RATIO_WHY = "5 % of the all-module adapter's score (or gain) either side of the 90 % line"
RHO_MARGIN = 0.10
RHO_WHY = "|Spearman rho| below 0.1 is conventionally a negligible association"
ACC_MARGIN = 0.01
ACC_WHY = "1 accuracy point (fraction 0.01): below the smallest change paper B reports as a gain"


@dataclass(frozen=True)
class PaperClaim:
    """One claim of a paper, and the number of ours that tests it (see the module doc for the fields)."""

    id: str
    stage: str
    paper: str
    paper_value: float | None
    quantity: str
    threshold: float
    direction: Literal[">", "<"]
    upper: float | None = None
    source: str = PAPER_A
    margin: float | None = None
    margin_reason: str = ""
    training: bool = True
    depth: bool = False
    images: bool = False
    paper_note: str = ""


def _score(cid: str, stage: str, paper: str, value: float | None, quantity: str, direction: Literal[">", "<"] = ">",
           note: str = "") -> PaperClaim:
    return PaperClaim(cid, stage, paper, value, quantity + ", in score points (fraction of 1); paired "
                      "hierarchical bootstrap over seeds x test examples", 0.0, direction, margin=SCORE_MARGIN,
                      margin_reason=SCORE_WHY, paper_note=note)


_C = [
    PaperClaim(
        "locate.gate-largest", "locate",
        "Affective adaptation does not primarily focus on the attention module but localizes to the "
        "feed-forward gating projection: gate_proj changes most under emotion tuning (Figs. 4-6).",
        None, "gate_proj's lead over the runner-up module in size-fair change (relative change ||dW||/||W||, "
        "Eq. 2, mean over layers): gate / runner-up - 1, mean over seeds; bootstrap over seeds x layers",
        0.0, ">", margin=LEAD_MARGIN, margin_reason=LEAD_WHY),
    PaperClaim(
        "locate.emotion-specific", "locate",
        "The locus is task-specific: with the same base and budget, emotion tuning peaks in gate_proj "
        "while a non-affective task (GSM8K math) peaks in up_proj (Fig. 5).",
        None, "gate_proj's share of the total Eq.-1 change in the emotion adapter minus its share in the "
        "control-task adapter (same budget, same seed), as a fraction of 1; bootstrap over seeds x layers",
        0.0, ">", margin=SHARE_MARGIN, margin_reason=SHARE_WHY),
    PaperClaim(
        "locate.sft-same-locus", "locate",
        "LoRA and full fine-tuning (SFT) locate the same locus: gate_proj changes most under both (Fig. 6).",
        None, "in the full fine-tune, gate_proj's lead over the runner-up module in size-fair change "
        "(gate / runner-up - 1), mean over seeds; bootstrap over seeds x layers",
        0.0, ">", margin=LEAD_MARGIN, margin_reason=LEAD_WHY),
    PaperClaim(
        "locate.cross-architecture", "locate",
        "The locus holds across architectures: other base models also concentrate affective change in "
        "gate_proj (Fig. 6).",
        None, "on the other bases of `models:`, gate_proj's lead over the runner-up module in size-fair "
        "change, mean over bases of the seed mean; bootstrap over seeds x layers within each base",
        0.0, ">", margin=LEAD_MARGIN, margin_reason=LEAD_WHY),
    _score("sufficiency.gate-over-attention", "sufficiency",
           "Table 1's headline: loading attention + gate_proj from the tuned model raises the mean from 60.00 "
           "(attention alone) to 74.02, +14.02 points, while adding up_proj or down_proj adds +2.96 / +3.75.",
           0.1402, "score(Att.+gate transferred onto the base) minus score(Att. transferred)",
           note="Table 1: 74.02 - 60.00 points"),
    _score("sufficiency.gate-transfer", "sufficiency",
           "gate_proj is sufficient: transferring attention + gate_proj from the tuned model onto the base "
           "recovers more affective performance than attention + up_proj or attention + down_proj (Table 1).",
           0.1027, "score(Att.+gate transferred) minus the better of score(Att.+up) and score(Att.+down)",
           note="Table 1: 74.02 - max(62.96, 63.75) points"),
    _score("sufficiency.single-gate-load", "sufficiency",
           "Loading one module at a time, gate_proj gives the largest and most stable gain (Fig. 7).",
           None, "score(gate_proj alone transferred) minus the best other single module transferred alone"),
    _score("sufficiency.down-negative", "sufficiency",
           "down_proj transfers negatively: loading Att.+{gate,down} scores 65.97, far below Att.+gate's 74.02 "
           "(Table 1).", -0.0805, "score(Att.+{gate,down} transferred) minus score(Att.+gate transferred)",
           "<", note="Table 1: 65.97 - 74.02 points"),
    PaperClaim(
        "sufficiency.fluency-kept", "sufficiency",
        "Transferring the affective modules keeps general language ability (fluency) intact.",
        None, "control-task score of the base with Att.+gate transferred minus the base's, in score points "
        "(fraction of 1); supported when the CI lies above -0.01 (a loss of at most 1 point: non-inferiority)",
        -SCORE_MARGIN, ">", margin=None,
        margin_reason="non-inferiority: the threshold itself allows a 1-point loss, so no second margin"),
    _score("efficiency.gate-lora", "efficiency",
           "gate_proj is efficient: LoRA on gate_proj alone outperforms LoRA on any other single module at "
           "an identical budget (Fig. 8).",
           None, "score(gate_proj-only LoRA) minus the best other single-module LoRA at the identical budget"),
    _score("efficiency.gate-over-attention", "efficiency",
           "Tuning attention + gate_proj beats tuning attention alone (Table 2: 74.06 vs 73.91).",
           0.0015, "score(Att.+gate LoRA) minus score(Att. LoRA)", note="Table 2: 74.06 - 73.91 points"),
    _score("efficiency.att-gate-lora", "efficiency",
           "Among attention + one MLP module, tuning attention + gate_proj scores best (Table 2: 74.06 vs "
           "Att.+up 73.71, Att.+down 64.72).",
           0.0035, "score(Att.+gate LoRA) minus the better of score(Att.+up LoRA) and score(Att.+down LoRA)",
           note="Table 2: 74.06 - max(73.71, 64.72) points"),
    _score("efficiency.down-negative", "efficiency",
           "Negative transfer: tuning {q,k,v,o,down} drops sharply to 64.72 from attention's 73.91 (Table 2).",
           -0.0919, "score(Att.+down LoRA) minus score(Att. LoRA)", "<", note="Table 2: 64.72 - 73.91 points"),
    _score("efficiency.o-gate-synergy", "efficiency",
           "Synergy: {o_proj, gate_proj} is the best multi-module set; the full {q,k,v,o,gate} is worse.",
           None, "score({o_proj, gate_proj} LoRA) minus score(Att.+gate LoRA), i.e. {q,k,v,o,gate}"),
    PaperClaim(
        "frontier.get-ratio", "frontier",
        "GET (LoRA on gate_proj only) achieves 96.6 % of AffectGPT's average performance across eight "
        "affective tasks while tuning about 24.5 % of its parameters (Fig. 9).",
        0.966, "GET's mean score divided by the all-module LoRA's (the paper's own ratio), as a fraction of "
        "1; supported above 0.9", 0.9, ">", margin=RATIO_MARGIN, margin_reason=RATIO_WHY,
        paper_note="96.6 % of the mean at 24.5 % of the tuned parameters"),
    PaperClaim(
        "frontier.get-share", "frontier",
        "GET keeps most of what tuning every module gains (the stricter reading of Fig. 9's 96.6 %).",
        None, "GET's share of the all-module LoRA's gain over max(base, majority-class yardstick), as a "
        "fraction of 1 (stricter than the raw ratio, which flatters a method that lands on the majority "
        "class); supported above 0.9", 0.9, ">", margin=RATIO_MARGIN, margin_reason=RATIO_WHY),
    _score("necessity.gate-reset", "necessity",
           "gate_proj is necessary: destructive ablation of gate_proj in the tuned model degrades affective "
           "understanding and generation.",
           None, "drop in affective score when gate_proj's delta is reset to base inside the tuned model, "
           "minus the drop from resetting an equal-parameter control module"),
    PaperClaim(
        "circuits-layers.middle-peak", "circuits-layers",
        "Adapt-Aggregate-Execute: emotional cues from the image are aggregated in the middle layers, where "
        "steering with an emotion vector has its largest effect.",
        None, "relative depth layer/(L-1) of the layer with the largest steering effect, mean over emotions "
        "(0 = first, 1 = last); supported when the CI lies inside the middle band (0.2, 0.8); bootstrap "
        "over emotions", 0.2, ">", upper=0.8, source=PAPER_B, training=False, depth=True, images=True,
        margin_reason="a band claim: the band is the margin"),
    PaperClaim(
        "circuits-heads.general-deeper", "circuits-heads",
        "Sentiment-specific attention heads aggregate cross-modal cues in the middle layers; emotion-general "
        "pathways in the deep layers turn them into the narrative (head overlap across emotions rises "
        "with depth).",
        None, "Spearman correlation between layer depth and the cross-emotion head overlap (Jaccard of "
        "top heads), from -1 to 1; bootstrap over layers", 0.0, ">", source=PAPER_B, margin=RHO_MARGIN,
        margin_reason=RHO_WHY, training=False, depth=True, images=True),
    PaperClaim(
        "circuits-intervention.improves", "circuits-intervention",
        "Amplifying the identified emotional heads and neurons at inference improves emotional reasoning: "
        "the MER-UniBench mean rises from 58.1 % to 64.8 % (+6.7).",
        0.067, "accuracy after minus before amplifying the top emotional heads/neurons, as a fraction of 1; "
        "paired bootstrap over examples", 0.0, ">", source=PAPER_B, margin=ACC_MARGIN, margin_reason=ACC_WHY,
        training=False, paper_note=f"58.1 % -> 64.8 %, {SECONDARY}"),
    PaperClaim(
        "circuits-intervention.targeted-beats-random", "circuits-intervention",
        "Amplifying the identified emotional heads and neurons beats random heads/neurons of the same count "
        "(top-10 heads: MER2023 HIT 59.12, MOSI WAF 55.86, OV-MERD+ 47.42; top-30 neurons: MER2023 HIT "
        "59.12).",
        None, "accuracy after amplifying the top emotional heads/neurons minus after amplifying random "
        "heads/neurons of the same count, as a fraction of 1; paired bootstrap over examples", 0.0, ">",
        source=PAPER_B, margin=ACC_MARGIN, margin_reason=ACC_WHY, training=False,
        paper_note=f"no random-baseline number; the top-unit scores are {SECONDARY}"),
    PaperClaim(
        "circuits-intervention.less-hallucination", "circuits-intervention",
        "The inference-time interventions reduce emotional hallucination.",
        None, "change in the emotional-hallucination rate under the intervention (fraction of 1; negative "
        "= fewer hallucinations); paired bootstrap over examples", 0.0, "<", source=PAPER_B,
        margin=ACC_MARGIN, margin_reason=ACC_WHY, training=False),
]
CLAIMS: dict[str, PaperClaim] = {c.id: c for c in _C}

__all__ = ["CLAIMS", "MIN_LAYERS", "MIN_SEEDS", "MIN_UNITS", "PAPER_A", "PAPER_B", "STAGES", "PaperClaim"]

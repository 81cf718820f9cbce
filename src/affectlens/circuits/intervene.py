"""Training-free interventions and their evaluation.

* steering: add ``α·S_l^e`` at chosen layers, from the stimulus on;
* attention amplification (the paper's VEE): scale the attention of chosen
  heads from the stimulus span by β — to the query positions in layers up to
  the split layer (prefill), to the last position in deeper layers
  (decoding); default mode "after softmax, renormalised" (see
  ``hooks.amplify_attention``); β = 0 is knockout;
* neuron amplification (ENA): scale chosen MLP neurons by γ.

``intervened`` installs them for the duration of a ``with`` block, so any
evaluator — ``affectlens.evaluate`` included — runs the edited model.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch

from ..errors import AffectlensError
from .hallucination import correct_flags, hallucination_flags, paired_diff_ci
from .hooks import (
    Layout,
    add_steering,
    amplify_attention,
    decoder_layers,
    down_proj,
    hooks,
    scale_neurons,
)
from .vectors import SteeringVectors

SCALES = ("raw", "unit", "rms")


@dataclass
class Intervention:
    """Declarative: what to change. Identity when α = 0, β = γ = 1 or nothing is selected."""

    steer: list[tuple[str, int, float]] = field(default_factory=list)  # (emotion, layer, alpha)
    scale: str = "raw"
    vectors: SteeringVectors | None = None
    steer_where: str = "from_stimulus"
    heads: dict[int, list[int]] = field(default_factory=dict)
    beta: float = 1.0
    attn_mode: str = "after"
    split_layer: int | None = None  # heads in layers <= split: query positions; deeper: last
    neurons: dict[int, list[int]] = field(default_factory=dict)
    gamma: float = 1.0

    def describe(self) -> str:
        parts = [f"steer {e}@L{la}×{a:g} ({self.scale})" for e, la, a in self.steer]
        if self.heads:
            n = sum(len(v) for v in self.heads.values())
            parts.append(f"{n} heads β={self.beta:g} ({self.attn_mode})")
        if self.neurons:
            n = sum(len(v) for v in self.neurons.values())
            parts.append(f"{n} neurons γ={self.gamma:g}")
        return "; ".join(parts) or "none"


def steering_vector(sv: SteeringVectors, emotion: str, layer: int, alpha: float,
                    scale: str = "raw") -> tuple[torch.Tensor, bool]:
    """The vector to add and whether it is per-position norm-relative.

    ``raw``: α·S_l. ``unit``: α·Ŝ_l·mean‖h_l‖ (mean residual norm of neutral
    runs). ``rms``: α·Ŝ_l·‖h‖ at each position — the added vector's RMS is α
    times the residual's RMS there.
    """
    if scale not in SCALES:
        raise AffectlensError(f"unknown scale '{scale}'; use {', '.join(SCALES)}")
    v = sv.get(emotion)
    if not 0 <= layer < v.shape[0]:
        raise AffectlensError(f"layer {layer} out of range: the vectors have {v.shape[0]} layers")
    s = v[layer].float()
    if scale == "raw":
        return alpha * s, False
    unit = s / s.norm().clamp_min(1e-12)
    if scale == "unit":
        if not sv.resid_norm:
            raise AffectlensError("these vectors carry no residual norms; use --scale raw or rms")
        return alpha * sv.resid_norm[layer] * unit, False
    return alpha * unit, True


@contextlib.contextmanager
def intervened(model: Any, layout: Layout, iv: Intervention) -> Iterator[Any]:
    """Apply ``iv`` to ``model`` inside the block; everything is undone on exit."""
    n_layers = len(decoder_layers(model))
    with hooks(model) as h:
        tracker = h.track(layout)
        for emotion, layer, alpha in iv.steer:
            if iv.vectors is None:
                raise AffectlensError("--steer needs --vectors DIR")
            if alpha == 0:
                continue
            vec, rel = steering_vector(iv.vectors, emotion, layer, alpha, iv.scale)
            add_steering(h, tracker, layer, vec, iv.steer_where, per_position_norm=rel)
        _check_layers(iv.heads, n_layers, "head")
        _check_layers(iv.neurons, n_layers, "neuron")
        split = iv.split_layer if iv.split_layer is not None else n_layers // 2
        queries = {la: ("query" if la <= split else "last") for la in iv.heads}
        amplify_attention(h, tracker, iv.heads, iv.beta, iv.attn_mode, queries)
        for layer, ns in iv.neurons.items():
            ffn = down_proj(decoder_layers(model)[layer]).in_features
            bad = [n for n in ns if not 0 <= n < ffn]
            if bad:
                raise AffectlensError(f"neuron(s) {bad[:5]} out of range in layer {layer} (FFN size {ffn})")
            scale_neurons(h, layer, ns, iv.gamma)
        yield model


def _check_layers(sel: dict[int, list[int]], n_layers: int, what: str) -> None:
    bad = sorted(la for la in sel if not 0 <= la < n_layers)
    if bad:
        raise AffectlensError(f"{what} layer(s) {bad} out of range: the model has {n_layers} layers")


# ----------------------------------------------------------------------------- parsing


def parse_steer(specs: Sequence[str]) -> list[tuple[str, int, float]]:
    """``anger@12*4`` -> (anger, 12, 4.0); ``*α`` defaults to 1."""
    out = []
    for spec in specs:
        try:
            emo, rest = spec.split("@", 1)
            layer, _, alpha = rest.partition("*")
            a = float(alpha) if alpha else 1.0
            if not math.isfinite(a):
                raise ValueError(alpha)
            out.append((emo.strip().lower(), int(layer), a))
        except ValueError:
            raise AffectlensError(f"bad --steer '{spec}': use EMOTION@LAYER*ALPHA with a finite α, "
                                  "e.g. joy@12*4") from None
    return out


def parse_units(spec: str, what: str) -> dict[int, list[int]]:
    """``"10.3,12.5"`` -> {10: [3], 12: [5]} (layer.head or layer.neuron)."""
    out: dict[int, list[int]] = {}
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            la, u = item.replace(":", ".").split(".")
            out.setdefault(int(la), []).append(int(u))
        except ValueError:
            raise AffectlensError(f"bad {what} '{item}': use LAYER.INDEX, e.g. 10.3") from None
    if not out:
        raise AffectlensError(f"empty {what} selection")
    return out


def ranked_units(path: str, what: str, k: int, emotions: Sequence[str] | None = None
                 ) -> dict[str, list[tuple[int, int]]]:
    """Top-``k`` (layer, unit) by ``score`` of a ``heads.csv``/``neurons.csv`` from a previous run.

    Per named emotion, its own top ``k`` (so several emotions each get theirs,
    not one that outscores the rest); with no ``emotions`` one ranking, under
    ``"all"``, of the scores summed over every emotion.
    """
    import csv

    col = "head" if what == "head" else "neuron"
    if k < 1:
        raise AffectlensError(f"--top-k must be positive, not {k}")
    try:
        with open(path, newline="", encoding="utf-8", errors="replace") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise AffectlensError(f"cannot read {path}: {e.strerror}") from None
    except csv.Error as e:
        raise AffectlensError(f"{path} is not a valid CSV: {e}") from None
    if rows and (col not in rows[0] or "score" not in rows[0]):
        raise AffectlensError(f"{path} has no '{col}'/'score' columns (is it a circuits {what}s CSV?)")
    found = sorted({str(r.get("emotion")) for r in rows})
    groups = {"all": list(enumerate(rows, 2))} if not emotions else {
        e: [(i, r) for i, r in enumerate(rows, 2) if r.get("emotion") == e] for e in dict.fromkeys(emotions)}
    out: dict[str, list[tuple[int, int]]] = {}
    for name, rs in groups.items():
        agg: dict[tuple[int, int], float] = {}
        for i, r in rs:
            try:
                key = (int(r["layer"]), int(r[col]))
                score = float(r["score"])
            except (TypeError, ValueError, KeyError):
                raise AffectlensError(f"{path}: row {i}: layer/{col}/score are not numbers") from None
            if not math.isfinite(score):
                raise AffectlensError(f"{path}: row {i}: score is {score}")
            agg[key] = agg.get(key, 0.0) + score
        if not agg:
            raise AffectlensError(f"{path} selects no {what}s" + ("" if name == "all" else
                                  f" of {name} (its emotions: {', '.join(found) or 'none'})"))
        out[name] = sorted(agg, key=lambda x: -agg[x])[:k]
    return out


def joined_units(ranked: dict[str, list[tuple[int, int]]]) -> dict[int, list[int]]:
    """:func:`ranked_units` as ``{layer: [units]}``: every emotion's units, one shared by several taken once."""
    out: dict[int, list[int]] = {}
    for units in ranked.values():
        for la, u in units:
            if u not in out.setdefault(la, []):
                out[la].append(u)
    return out


# ----------------------------------------------------------------------------- evaluation


def guarded_perplexity(model: Any, tokenizer: Any, texts: Sequence[str],
                       iv: Intervention | None = None) -> float:
    """Perplexity on plain neutral texts (the harness's), optionally under ``iv``.

    The general-ability guard: an intervention that "helps" by breaking the
    language model shows up here. Plain text has no template, so its first
    half plays the stimulus and its second half the query: steering applies
    at every position, amplified heads (all layers) scale the attention of
    second-half tokens to the first half, neurons are scaled everywhere.
    """
    import dataclasses

    from ..evaluate.perplexity import perplexity

    ctx: Any = contextlib.nullcontext()
    if iv is not None:
        ctx = intervened(model, Layout(stimulus_fraction=0.5), dataclasses.replace(iv, split_layer=1 << 30))
    with ctx:
        return float(perplexity(model, tokenizer, list(texts))["perplexity"])


def eval_layout(tokenizer: Any, task_kind: str = "emotion") -> Layout:
    """Stimulus layout of the evaluation harness's prompts."""
    from ..tasks.prompts import render
    from .hooks import layout_for

    return layout_for(tokenizer, lambda t: render(tokenizer, t, task_kind))


def compare(before: Sequence[dict], after: Sequence[dict], n_boot: int = 1000, seed: int = 0) -> dict:
    """Accuracy and hallucination rate before/after with paired bootstrap CIs of the change."""
    if len(before) != len(after):
        raise AffectlensError("before/after evaluations cover different examples")
    out: dict[str, Any] = {"n": len(before)}
    for name, fn in (("accuracy", correct_flags), ("hallucination", hallucination_flags)):
        b, a = fn(before), fn(after)
        d, lo, hi = paired_diff_ci(b, a, n_boot, seed)
        out[name] = {"before": float(np.mean(b)) if len(b) else float("nan"),
                     "after": float(np.mean(a)) if len(a) else float("nan"),
                     "change": d, "ci_low": lo, "ci_high": hi}
    return out


@contextlib.contextmanager
def _under(iv: Intervention) -> Iterator[None]:
    """Name the intervention in a non-finite-result error raised inside the block."""
    from ..evaluate.metrics import NonFiniteResult

    try:
        yield
    except NonFiniteResult as e:
        raise NonFiniteResult(f"with intervention {iv.describe()}: {e}") from None


def run_intervention(model: Any, tokenizer: Any, tasks: Sequence[str], iv: Intervention,
                     limit: int | None = None, batch_size: int = 16, seed: int = 0, n_boot: int = 1000,
                     ppl_texts: Sequence[str] | None = None) -> dict[str, Any]:
    """Evaluate ``tasks`` (closed-set, through ``affectlens.evaluate``) before and under ``iv``."""
    return run_interventions(model, tokenizer, tasks, {"intervention": iv}, limit, batch_size, seed,
                             n_boot, ppl_texts)["intervention"]


def run_interventions(model: Any, tokenizer: Any, tasks: Sequence[str], ivs: dict[str, Intervention],
                      limit: int | None = None, batch_size: int = 16, seed: int = 0, n_boot: int = 1000,
                      ppl_texts: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """Several interventions against one baseline evaluation per task.

    Each task gets the stimulus layout of its own prompt template, so steering
    and attention amplification find the utterance inside the harness's
    batched, padded prompts. Changes come with paired bootstrap CIs.
    """
    from ..evaluate import evaluate, load_task, parse_task
    from ..evaluate.core import closed_prompt
    from ..progress import Progress
    from .hooks import layout_for

    out: dict[str, dict[str, Any]] = {k: {"intervention": iv.describe(), "tasks": {}} for k, iv in ivs.items()}
    loaded = [load_task(parse_task(t), limit) for t in tasks]
    # One evaluation before and one under each intervention, per task (then perplexity): each weighs its examples.
    runs = [len(lt.examples) for lt in loaded for _ in range(1 + len(ivs))]
    runs += [len(ppl_texts or ())] * (1 + len(ivs)) if ppl_texts else []
    bar = Progress(len(runs), "circuits intervene", unit="evaluation", weights=runs)
    for lt in loaded:
        spec = lt.spec
        labels = list(lt.labels)
        layout = layout_for(tokenizer, partial(closed_prompt, tokenizer, spec, labels))
        before = evaluate(model, tokenizer, [spec], "closed", limit, batch_size, seed, progress=False, n_boot=n_boot)
        bar.update()
        b = before.tasks[spec.name]
        for key, iv in ivs.items():
            with intervened(model, layout, iv), _under(iv):
                after = evaluate(model, tokenizer, [spec], "closed", limit, batch_size, seed, progress=False,
                                 n_boot=n_boot)
            bar.update()
            a = after.tasks[spec.name]
            row = compare(before.predictions, after.predictions, n_boot, seed)
            row["primary_metric"] = b.primary_metric
            row["primary"] = {"before": b.primary, "after": a.primary, "change": a.primary - b.primary}
            row["predictions"] = {"before": before.predictions, "after": after.predictions}
            out[key]["tasks"][spec.name] = row
    if ppl_texts:
        pb = guarded_perplexity(model, tokenizer, ppl_texts)
        bar.update()
        for key, iv in ivs.items():
            with _under(iv):
                pa = guarded_perplexity(model, tokenizer, ppl_texts, iv)
            bar.update()
            out[key]["perplexity"] = {"before": pb, "after": pa, "ratio": pa / pb}
    bar.close()
    return out

"""Neuron attribution: which MLP neurons hold the "explicit emotional state"?

A neuron is one input feature of ``down_proj`` (``act(gate·x) ⊙ up·x`` in
SwiGLU MLPs). Per neuron and emotion:

* attribution patching at the query positions, as for heads:
  ``drop ≈ (a⁺ − a⁻)·∂M/∂a`` on the emotional run, ``gain`` on the neutral
  run, ``score`` their mean;
* direct effect on the emotion direction at the last token:
  ``direct = a⁺_n · (W_down[:, n] · Ŝ_target)`` and ``direct_diff`` with
  ``a⁺_n − a⁻_n`` — what the neuron writes along ``Ŝ`` without any later layer.

The patching sums are ``attribution.patching_sums``, shared with heads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..models.devices import accum_dtype
from .attribution import make_metric, pairs_of, patching_sums, target_layer_of
from .hooks import decoder_layers, down_proj
from .pairs import Encoder, Pair, labels_of
from .vectors import SteeringVectors


@dataclass
class NeuronResult:
    rows: list[dict[str, Any]]  # top-k per emotion: emotion, layer, neuron, drop, gain, score, direct...
    per_layer: list[dict[str, Any]]  # emotion, layer, sum of |score|, max score
    target_layer: int
    options: dict[str, Any] = field(default_factory=dict)


def neuron_attribution(model: Any, enc: Encoder, pairs: Sequence[Pair], sv: SteeringVectors,
                       target_layer: int | None = None, metric: str = "proj", top_k: int = 50,
                       emotions: Sequence[str] | None = None, max_pairs: int | None = None,
                       batch_size: int = 8) -> NeuronResult:
    """Top-``top_k`` neurons per emotion by attribution score, plus per-layer totals.

    ``batch_size`` prompts run to a forward+backward pass (a pair is two); it changes no score
    beyond float rounding.
    """
    blocks = decoder_layers(model)
    n_layers = len(blocks)
    target = target_layer_of(model, target_layer)
    emotions = list(emotions) if emotions else labels_of(pairs)
    rows: list[dict[str, Any]] = []
    per_layer: list[dict[str, Any]] = []
    for e in emotions:
        sel = pairs_of(pairs, e, max_pairs)
        met = make_metric(metric, sv, e, target, enc)
        s = sv.get(e)[target].float()
        s_hat = s / s.norm().clamp_min(1e-12)
        # W_down[:, n]·Ŝ on each layer's device (float32), so the per-pair sums stay there
        readout = {}
        for la in range(n_layers):
            w = down_proj(blocks[la]).weight.detach()
            readout[la] = s_hat.to(w.device) @ w.float()
        direct = {la: torch.zeros(r.shape[0], dtype=accum_dtype(r.device), device=r.device)
                  for la, r in readout.items()}
        direct_diff = {la: torch.zeros_like(direct[la]) for la in range(n_layers)}

        def add_direct(la: int, ap: torch.Tensor, an: torch.Tensor, direct: dict = direct,
                       direct_diff: dict = direct_diff, readout: dict = readout) -> None:
            direct[la] += (ap * readout[la]).to(direct[la].dtype)
            direct_diff[la] += ((ap - an) * readout[la]).to(direct[la].dtype)

        sums = patching_sums(model, enc, sel, met, "down_in", [readout[la].shape[0] for la in range(n_layers)],
                             f"neurons {e}", last=add_direct, batch_size=batch_size)
        acc: dict[str, Sequence[torch.Tensor] | Mapping[int, torch.Tensor]] = {
            "drop": sums.drop, "gain": sums.gain,  # results leave for the CPU, once per emotion
            "direct": {la: t.cpu().double() for la, t in direct.items()},
            "direct_diff": {la: t.cpu().double() for la, t in direct_diff.items()}}
        n = len(sel)
        scores = torch.cat([(acc["drop"][la] + acc["gain"][la]) / (2 * n) for la in range(n_layers)])
        ffn = [readout[la].shape[0] for la in range(n_layers)]
        starts = [sum(ffn[:la]) for la in range(n_layers)]
        order = torch.argsort(scores, descending=True)[:top_k]
        for rank, flat in enumerate(order.tolist(), 1):
            la = max(i for i in range(n_layers) if starts[i] <= flat)
            nn_ = flat - starts[la]
            rows.append({"emotion": e, "rank": rank, "layer": la, "neuron": nn_,
                         "drop": float(acc["drop"][la][nn_] / n), "gain": float(acc["gain"][la][nn_] / n),
                         "score": float(scores[flat]), "direct": float(acc["direct"][la][nn_] / n),
                         "direct_diff": float(acc["direct_diff"][la][nn_] / n), "n_pairs": n})
        for la in range(n_layers):
            sc = scores[starts[la]: starts[la] + ffn[la]]
            per_layer.append({"emotion": e, "layer": la, "abs_score_sum": float(sc.abs().sum()),
                              "max_score": float(sc.max()), "n_in_top": sum(r["layer"] == la for r in rows
                                                                            if r["emotion"] == e)})
    return NeuronResult(rows, per_layer, target, {"metric": metric, "target_layer": target,
                                                  "top_k": top_k, "max_pairs": max_pairs})


__all__ = ["NeuronResult", "neuron_attribution"]

"""Head attribution: which attention heads carry the emotion into the answer?

A head's write is its slice of the ``o_proj`` input times the matching
columns of ``W_O`` (query heads, so GQA models have ``num_attention_heads``
of them). Per head we report

* ``cos``: cosine between the head's mean write difference (emotional −
  neutral, last token) and ``S_{target}``;
* activation patching of the head's ``o_proj`` input at the query positions
  (the tokens after the stimulus, identical in both members of a pair):
  ``drop`` = M(X⁺) − M(X⁺ with the head from X⁻), ``gain`` = M(X⁻ with the
  head from X⁺) − M(X⁻). By default estimated by attribution patching
  (``(z_src − z_dst)·∂M/∂z``, one forward+backward per side for all heads of
  all layers); ``exact_patch`` runs the real patched forward.

``M`` is the projection ``⟨h_target, Ŝ_target⟩`` at the last prompt token
(``metric="proj"``) or the closed-set log-probability of the emotion among the
labels' first tokens (``metric="score"``); the patching sums are
``attribution.patching_sums``, shared with neuron attribution. Heads that act
only *inside* the stimulus span are invisible here: the stimulus has no
aligned counterpart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import AffectlensError
from ..models.devices import accum_dtype
from .attribution import Metric, make_metric, pairs_of, patching_sums, target_layer_of
from .hooks import (
    capture,
    decoder_layers,
    head_geometry,
    head_outputs,
    hooks,
    o_proj,
    patch_attn_output,
    patch_neurons,
    patch_o_input,
    self_attn,
    to_model,
)
from .pairs import Encoder, Pair, labels_of
from .vectors import SteeringVectors

# ----------------------------------------------------------------------------- attribution


@dataclass
class HeadResult:
    rows: list[dict[str, Any]]  # emotion, layer, head, cos, drop, gain, score
    target_layer: int
    n_heads: int
    options: dict[str, Any] = field(default_factory=dict)


def head_attribution(model: Any, enc: Encoder, pairs: Sequence[Pair], sv: SteeringVectors,
                     target_layer: int | None = None, metric: str = "proj",
                     emotions: Sequence[str] | None = None, max_pairs: int | None = None,
                     batch_size: int = 8) -> HeadResult:
    """Attribution-patching scores of every head for every emotion (see module docstring).

    ``batch_size`` prompts run to a forward+backward pass (a pair is two); it changes no score
    beyond float rounding.
    """
    blocks = decoder_layers(model)
    n_layers = len(blocks)
    target = target_layer_of(model, target_layer)
    n_heads, _, _ = head_geometry(model)
    emotions = list(emotions) if emotions else labels_of(pairs)
    w_o = [o_proj(blocks[la]).weight.detach() for la in range(n_layers)]  # on each layer's device
    rows: list[dict[str, Any]] = []
    for e in emotions:
        sel = pairs_of(pairs, e, max_pairs)
        # per layer, on that layer's device: no host transfer per pair
        writes = [torch.zeros(n_heads, w.shape[0], dtype=accum_dtype(w.device), device=w.device) for w in w_o]

        def add_write(la: int, zp: torch.Tensor, zn: torch.Tensor, writes: list = writes) -> None:
            w = w_o[la].float()
            writes[la] += (head_outputs(zp, w, n_heads) - head_outputs(zn, w, n_heads)).to(writes[la].dtype)

        sums = patching_sums(model, enc, sel, make_metric(metric, sv, e, target, enc), "o_in",
                             [n_heads] * n_layers, f"heads {e}", last=add_write, batch_size=batch_size)
        write = torch.stack([w.cpu().double() for w in writes])  # results leave, once per emotion
        drop, gain = torch.stack(sums.drop), torch.stack(sums.gain)
        n = len(sel)
        s = sv.get(e)[target].double()
        for la in range(n_layers):
            for c in range(n_heads):
                w = write[la, c] / n
                cos = float(w @ s / (w.norm() * s.norm()).clamp_min(1e-30))
                dr, ga = float(drop[la, c] / n), float(gain[la, c] / n)
                rows.append({"emotion": e, "layer": la, "head": c, "cos": cos, "drop": dr,
                             "gain": ga, "score": (dr + ga) / 2, "n_pairs": n,
                             "reached": la <= target})
    return HeadResult(rows, target, n_heads, {"metric": metric, "target_layer": target,
                                              "max_pairs": max_pairs})


def exact_patch(model: Any, enc: Encoder, pair: Pair, metric: Metric, layer: int,
                units: Sequence[int] | None = None, site: str = "heads", direction: str = "denoise") -> float:
    """Real activation patching; returns M(patched) − M(clean) of the destination run.

    site ``heads`` (``units`` = head indices, None = all), ``attn`` (the whole
    attention output) or ``neurons`` (``units`` = MLP neuron indices).
    ``denoise`` patches X⁺ with values from X⁻; ``noise`` the reverse.
    """
    if direction not in ("denoise", "noise"):
        raise AffectlensError("direction must be denoise or noise")
    src, dst = (pair.neutral, pair.emotional) if direction == "denoise" else (pair.emotional, pair.neutral)
    src_img, dst_img = ((pair.image_neutral, pair.image_emotional) if direction == "denoise"
                        else (pair.image_emotional, pair.image_neutral))
    blk = decoder_layers(model)[layer]
    layout = enc.layout

    def query_span(stimulus: str, image: str | None) -> tuple[dict, int, int]:
        inputs = to_model(enc(stimulus, image), model)
        with hooks(model) as h, torch.no_grad():  # activations stay on the device: they are patched back
            tr = h.track(layout)
            cap_o = capture(h, [layer], resid=False, o_in=site == "heads", down_in=site == "neurons", to=None)
            store: dict[str, torch.Tensor] = {}
            if site == "attn":
                h.forward(self_attn(blk), lambda _m, _a, o: store.__setitem__(
                    "attn", (o[0] if isinstance(o, tuple) else o).detach().clone()))
            res = capture(h, [metric.target], to=None)
            out = model(**inputs)
            m = float(metric(out.logits, res.resid[metric.target]))
        r = tr.rows[0]
        assert r is not None  # one prompt, no cache: a prefill forward always records its span
        act = (cap_o.o_in.get(layer) if site == "heads" else cap_o.down_in.get(layer)
               if site == "neurons" else store["attn"])
        return {"inputs": inputs, "act": act, "m": m}, r.prompt_end - r.stim_end, r.offset + r.prompt_end

    s_info, s_q, s_end = query_span(src, src_img)
    d_info, d_q, d_end = query_span(dst, dst_img)
    q = max(1, min(s_q, d_q))
    source = d_info["act"].clone()
    source[0, d_end - q : d_end] = s_info["act"][0, s_end - q : s_end]
    positions = torch.zeros(source.shape[:2], dtype=torch.bool, device=source.device)
    positions[0, d_end - q : d_end] = True
    with hooks(model) as h, torch.no_grad():
        if site == "heads":
            patch_o_input(h, layer, units, source, positions)
        elif site == "neurons":
            patch_neurons(h, layer, list(units or []), source, positions)
        elif site == "attn":
            patch_attn_output(h, layer, source, positions)
        else:
            raise AffectlensError(f"unknown patch site '{site}'")
        res = capture(h, [metric.target], to=None)
        out = model(**d_info["inputs"])
        m = float(metric(out.logits, res.resid[metric.target]))
    return m - d_info["m"]


# ----------------------------------------------------------------------------- specific vs general


def top_heads(result: HeadResult, k: int, by: str = "score") -> dict[str, set[tuple[int, int]]]:
    """Top-``k`` (layer, head) per emotion by ``by`` (heads downstream of the target excluded)."""
    out: dict[str, set[tuple[int, int]]] = {}
    for e in sorted({r["emotion"] for r in result.rows}):
        rs = [r for r in result.rows if r["emotion"] == e and r["reached"]]
        rs.sort(key=lambda r: -r[by])
        out[e] = {(r["layer"], r["head"]) for r in rs[:k]}
    return out


def classify_heads(tops: dict[str, set[tuple[int, int]]]) -> dict[tuple[int, int], str]:
    """``specific`` (in exactly one emotion's top set), ``general`` (in all), else ``shared``."""
    n = len(tops)
    count: dict[tuple[int, int], int] = {}
    for s in tops.values():
        for hd in s:
            count[hd] = count.get(hd, 0) + 1
    return {hd: "general" if c == n and n > 1 else "specific" if c == 1 else "shared" for hd, c in count.items()}


def overlap_by_layer(tops: dict[str, set[tuple[int, int]]], n_layers: int) -> list[dict[str, Any]]:
    """Per layer: mean pairwise Jaccard of the emotions' top-head sets, and |∩|/|∪|."""
    emos = sorted(tops)
    out = []
    for la in range(n_layers):
        sets = [{h for h in tops[e] if h[0] == la} for e in emos]
        pair_j = []
        for i in range(len(sets)):
            for j in range(i + 1, len(sets)):
                u = sets[i] | sets[j]
                if u:
                    pair_j.append(len(sets[i] & sets[j]) / len(u))
        union = set().union(*sets) if sets else set()
        inter = set.intersection(*sets) if sets else set()
        out.append({"layer": la, "n_top_heads": len(union),
                    "jaccard_pairwise": sum(pair_j) / len(pair_j) if pair_j else float("nan"),
                    "jaccard_all": len(inter) / len(union) if union else float("nan")})
    return out


__all__ = ["HeadResult", "Metric", "classify_heads", "exact_patch", "head_attribution", "make_metric",
           "overlap_by_layer", "top_heads"]

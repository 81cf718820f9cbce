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
labels' first tokens (``metric="score"``). Heads that act only *inside* the
stimulus span are invisible here: the stimulus has no aligned counterpart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import AffectlensError
from ..runs import progress
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
)
from .pairs import Encoder, Pair, labels_of
from .vectors import SteeringVectors

METRICS = ("proj", "score")


# ----------------------------------------------------------------------------- metric


def _label_first_tokens(enc: Encoder, labels: Sequence[str]) -> list[int]:
    from ..prompts import encode_targets

    ids = [t[0] for t in encode_targets(enc.tokenizer, enc.prompt("x"), labels)]
    if len(set(ids)) != len(ids):
        raise AffectlensError("labels share a first token, so metric 'score' is ambiguous; use --metric proj")
    return ids


@dataclass
class Metric:
    """A differentiable scalar read at the last prompt token."""

    kind: str
    target: int
    direction: torch.Tensor | None = None  # unit S_target (proj)
    label_ids: list[int] | None = None  # first tokens of the labels (score)
    label_index: int = 0

    def __call__(self, logits: torch.Tensor, resid: torch.Tensor) -> torch.Tensor:
        if self.kind == "proj":
            assert self.direction is not None
            return resid[0, -1].float() @ self.direction.to(resid.device)
        assert self.label_ids is not None
        lp = torch.log_softmax(logits[0, -1, self.label_ids].float(), -1)
        return lp[self.label_index]


def make_metric(kind: str, sv: SteeringVectors, emotion: str, target: int, enc: Encoder) -> Metric:
    if kind not in METRICS:
        raise AffectlensError(f"unknown metric '{kind}'; use {', '.join(METRICS)}")
    s = sv.get(emotion)[target].float()
    if kind == "proj":
        if float(s.norm()) == 0:
            raise AffectlensError(f"the {emotion} vector is zero at layer {target}; choose another --target-layer")
        return Metric("proj", target, s / s.norm())
    labels = list(enc.labels)
    return Metric("score", target, label_ids=_label_first_tokens(enc, labels),
                  label_index=labels.index(emotion))


# ----------------------------------------------------------------------------- one side


@dataclass
class Side:
    """One run of one pair member: metric, activations and gradients at the query positions."""

    value: float
    o_in: dict[int, torch.Tensor]  # layer -> [q, H*hd]
    o_grad: dict[int, torch.Tensor]
    down_in: dict[int, torch.Tensor]  # layer -> [q, ffn]
    down_grad: dict[int, torch.Tensor]
    q: int  # number of aligned query positions (the last q prompt tokens)


def run_side(model: Any, enc: Encoder, stimulus: str, image: str | None, metric: Metric,
             heads: bool = True, neurons: bool = False, grad: bool = True) -> Side:
    """Forward (and backward) one prompt; keeps only the query positions, on CPU."""
    n_layers = len(decoder_layers(model))
    layers = list(range(n_layers))
    inputs = enc(stimulus, image)
    with hooks(model) as h, torch.set_grad_enabled(grad):
        tracker = h.track(enc.layout)
        cap = capture(h, layers, resid=False, o_in=heads, down_in=neurons, keep_grad=grad)
        res = capture(h, [metric.target], keep_grad=grad)
        out = model(**inputs)
        m = metric(out.logits, res.resid[metric.target])
        row = tracker.rows[0]
        q = max(1, row.prompt_end - row.stim_end)
        end = row.offset + row.prompt_end
        acts = list(cap.o_in.values()) + list(cap.down_in.values())
        grads = torch.autograd.grad(m, acts, allow_unused=True) if grad else [None] * len(acts)
    sl = slice(end - q, end)

    def cut(t: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
        t = torch.zeros_like(like) if t is None else t
        return t[0, sl].detach().float().cpu()

    o_keys, d_keys = list(cap.o_in), list(cap.down_in)
    o_in = {k: cut(cap.o_in[k], cap.o_in[k]) for k in o_keys}
    o_grad = {k: cut(grads[i], cap.o_in[k]) for i, k in enumerate(o_keys)}
    down = {k: cut(cap.down_in[k], cap.down_in[k]) for k in d_keys}
    d_grad = {k: cut(grads[len(o_keys) + i], cap.down_in[k]) for i, k in enumerate(d_keys)}
    return Side(float(m.detach()), o_in, o_grad, down, d_grad, q)


def _aligned(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    q = min(a.shape[0], b.shape[0])
    return a[-q:], b[-q:]


# ----------------------------------------------------------------------------- attribution


@dataclass
class HeadResult:
    rows: list[dict[str, Any]]  # emotion, layer, head, cos, drop, gain, score
    target_layer: int
    n_heads: int
    options: dict[str, Any] = field(default_factory=dict)


def head_attribution(model: Any, enc: Encoder, pairs: Sequence[Pair], sv: SteeringVectors,
                     target_layer: int | None = None, metric: str = "proj",
                     emotions: Sequence[str] | None = None, max_pairs: int | None = None) -> HeadResult:
    """Attribution-patching scores of every head for every emotion (see module docstring)."""
    blocks = decoder_layers(model)
    n_layers = len(blocks)
    target = n_layers - 1 if target_layer is None else target_layer
    if not 0 <= target < n_layers:
        raise AffectlensError(f"--target-layer {target} out of range (0-{n_layers - 1})")
    n_heads, _, _ = head_geometry(model)
    emotions = list(emotions) if emotions else labels_of(pairs)
    rows: list[dict[str, Any]] = []
    for e in emotions:
        sel = [p for p in pairs if p.label == e][:max_pairs]
        if not sel:
            raise AffectlensError(f"no pairs for emotion '{e}'")
        met = make_metric(metric, sv, e, target, enc)
        drop = torch.zeros(n_layers, n_heads, dtype=torch.float64)
        gain = torch.zeros_like(drop)
        write = torch.zeros(n_layers, n_heads, sv.get(e).shape[1], dtype=torch.float64)
        for p in progress(sel, desc=f"heads {e}"):
            pos = run_side(model, enc, p.emotional, p.image_emotional, met)
            neg = run_side(model, enc, p.neutral, p.image_neutral, met)
            for la in range(n_layers):
                zp, zn = _aligned(pos.o_in[la], neg.o_in[la])
                gp, gn = _aligned(pos.o_grad[la], neg.o_grad[la])
                d = (zp - zn).reshape(zp.shape[0], n_heads, -1)
                drop[la] += (d * gp.reshape_as(d)).sum((0, 2)).double()
                gain[la] += (d * gn.reshape_as(d)).sum((0, 2)).double()
                w_o = o_proj(blocks[la]).weight.detach().float().cpu()
                write[la] += (head_outputs(zp[-1], w_o, n_heads) - head_outputs(zn[-1], w_o, n_heads)).double()
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
        inputs = enc(stimulus, image)
        with hooks(model) as h, torch.no_grad():
            tr = h.track(layout)
            cap_o = capture(h, [layer], resid=False, o_in=site == "heads", down_in=site == "neurons")
            store: dict[str, torch.Tensor] = {}
            if site == "attn":
                h.forward(blk.self_attn, lambda _m, _a, o: store.__setitem__(
                    "attn", (o[0] if isinstance(o, tuple) else o).detach().cpu()))
            res = capture(h, [metric.target])
            out = model(**inputs)
            m = float(metric(out.logits, res.resid[metric.target]))
        r = tr.rows[0]
        act = (cap_o.o_in.get(layer) if site == "heads" else cap_o.down_in.get(layer)
               if site == "neurons" else store["attn"])
        return {"inputs": inputs, "act": act, "m": m}, r.prompt_end - r.stim_end, r.offset + r.prompt_end

    s_info, s_q, s_end = query_span(src, src_img)
    d_info, d_q, d_end = query_span(dst, dst_img)
    q = max(1, min(s_q, d_q))
    source = d_info["act"].clone()
    source[0, d_end - q : d_end] = s_info["act"][0, s_end - q : s_end]
    positions = torch.zeros(source.shape[:2], dtype=torch.bool)
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
        res = capture(h, [metric.target])
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


def plot_heads(result: HeadResult, overlap: list[dict[str, Any]], path_heatmap: str, path_overlap: str,
               by: str = "score") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    emos = sorted({r["emotion"] for r in result.rows})
    n_layers = max(r["layer"] for r in result.rows) + 1
    cols = min(3, len(emos))
    nrow = (len(emos) + cols - 1) // cols
    fig, axes = plt.subplots(nrow, cols, figsize=(4 * cols, 3.2 * nrow), squeeze=False)
    for ax, e in zip(axes.flat, emos, strict=False):
        m = np.zeros((n_layers, result.n_heads))
        for r in result.rows:
            if r["emotion"] == e:
                m[r["layer"], r["head"]] = r[by]
        lim = np.abs(m).max() or 1.0
        im = ax.imshow(m, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim, origin="lower")
        ax.set_title(e)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        fig.colorbar(im, ax=ax, shrink=0.8)
    for ax in list(axes.flat)[len(emos):]:
        ax.axis("off")
    fig.suptitle(f"head {by} (target layer {result.target_layer})")
    fig.tight_layout()
    fig.savefig(path_heatmap, dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 3.5))
    xs = [o["layer"] for o in overlap]
    ax.plot(xs, [o["jaccard_pairwise"] for o in overlap], marker="o", label="mean pairwise Jaccard")
    ax.plot(xs, [o["jaccard_all"] for o in overlap], marker="s", label="|∩| / |∪| over emotions")
    ax.set_xlabel("layer")
    ax.set_ylabel("overlap of top-K head sets")
    ax.set_ylim(-0.05, 1.05)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path_overlap, dpi=110)
    plt.close(fig)

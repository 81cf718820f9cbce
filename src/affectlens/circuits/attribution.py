"""Attribution patching, shared by head and neuron attribution.

Both ask the same question of different units: how much would metric ``M``
move if a unit's activation at the query positions were taken from the other
member of a contrast pair? Per pair, one forward+backward of each member
(``run_side``) gives activations ``a`` and gradients ``∂M/∂a``; summed over
the emotion's pairs (``patching_sums``):

* ``drop`` ≈ M(X⁺) − M(X⁺ with the unit from X⁻) = Σ (a⁺ − a⁻)·∂M/∂a⁺,
* ``gain`` ≈ M(X⁻ with the unit from X⁺) − M(X⁻) = Σ (a⁺ − a⁻)·∂M/∂a⁻,

per unit (a head is ``head_dim`` features of the ``o_proj`` input, a neuron
one feature of the ``down_proj`` input). ``M`` is the projection
``⟨h_target, Ŝ_target⟩`` at the last prompt token (``metric="proj"``) or the
closed-set log-probability of the emotion among the labels' first tokens
(``metric="score"``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import AffectlensError
from ..models.devices import accum_dtype
from ..runs import Progress
from .hooks import capture, decoder_layers, hooks, to_model
from .pairs import Encoder, Pair
from .vectors import SteeringVectors

METRICS = ("proj", "score")
SITES = ("o_in", "down_in")  # head writes (o_proj input), MLP neurons (down_proj input)


# ----------------------------------------------------------------------------- metric


def _label_first_tokens(enc: Encoder, labels: Sequence[str]) -> list[int]:
    from ..tasks.prompts import encode_targets

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

    def at(self, logits: torch.Tensor, resid: torch.Tensor, last: Sequence[int]) -> torch.Tensor:
        """``[batch]``: the metric of every row of a batch, read at that row's ``last`` position."""
        rows, pos = torch.arange(len(last)), torch.as_tensor(list(last))
        if self.kind == "proj":
            assert self.direction is not None
            return resid[rows, pos].float() @ self.direction.to(resid.device)
        assert self.label_ids is not None
        lp = torch.log_softmax(logits[rows, pos][:, self.label_ids].float(), -1)
        return lp[:, self.label_index]


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
    """Forward (and backward) one prompt; keeps only the query positions (see :func:`run_sides`)."""
    return run_sides(model, enc, [(stimulus, image)], metric, heads, neurons, grad)[0]


def run_sides(model: Any, enc: Encoder, prompts: Sequence[tuple[str, str | None]], metric: Metric,
              heads: bool = True, neurons: bool = False, grad: bool = True, batch_size: int = 1) -> list[Side]:
    """:class:`Side` of every (stimulus, image) prompt, text prompts ``batch_size`` to a forward pass.

    A batch is right-padded, so every real token keeps its position and causal
    attention never reads the padding: each row is its own prompt's run (up to
    float rounding), and the gradient of the rows' summed metric is each row's
    own. Image prompts run one at a time (their inputs do not pad alike).
    Activations and gradients stay on the device, where the sums over pairs
    run too; only the per-layer totals of ``patching_sums`` leave for the CPU.
    """
    out: list[Side] = []
    i = 0
    while i < len(prompts):
        n = 1
        while n < batch_size and i + n < len(prompts) and prompts[i][1] is None and prompts[i + n][1] is None:
            n += 1
        out += _run_batch(model, enc, prompts[i : i + n], metric, heads, neurons, grad)
        i += n
    return out


def _batch_inputs(enc: Encoder, prompts: Sequence[tuple[str, str | None]]) -> tuple[dict[str, Any], list[int]]:
    """The encoded prompts, right-padded into one batch, and each one's length."""
    encoded = [enc(s, im) for s, im in prompts]
    lengths = [int(e["input_ids"].shape[1]) for e in encoded]
    if len(encoded) == 1:
        return encoded[0], lengths
    pad = getattr(enc.tokenizer, "pad_token_id", None) or 0  # never attended: its id does not matter
    ids = torch.full((len(encoded), max(lengths)), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, (e, n) in enumerate(zip(encoded, lengths, strict=True)):
        ids[b, :n], mask[b, :n] = e["input_ids"][0], 1
    return {"input_ids": ids, "attention_mask": mask}, lengths


def _run_batch(model: Any, enc: Encoder, prompts: Sequence[tuple[str, str | None]], metric: Metric,
               heads: bool, neurons: bool, grad: bool) -> list[Side]:
    n_layers = len(decoder_layers(model))
    layers = list(range(n_layers))
    batch, lengths = _batch_inputs(enc, prompts)
    inputs = to_model(batch, model)
    with hooks(model) as h, torch.set_grad_enabled(grad):
        tracker = h.track(enc.layout)
        cap = capture(h, layers, resid=False, o_in=heads, down_in=neurons, keep_grad=grad)
        res = capture(h, [metric.target], keep_grad=grad)
        out = model(**inputs)
        m = metric.at(out.logits, res.resid[metric.target], [n - 1 for n in lengths])
        rows = list(tracker.rows)
        assert all(r is not None for r in rows)  # no cache: a prefill forward records every row's span
        acts = list(cap.o_in.values()) + list(cap.down_in.values())
        grads = torch.autograd.grad(m.sum(), acts, allow_unused=True) if grad else [None] * len(acts)
    o_keys, d_keys = list(cap.o_in), list(cap.down_in)
    sides = []
    for b, r in enumerate(rows):
        assert r is not None
        q = max(1, r.prompt_end - r.stim_end)
        end = r.offset + r.prompt_end
        sl = slice(end - q, end)

        def cut(t: torch.Tensor | None, like: torch.Tensor, b: int = b, sl: slice = sl) -> torch.Tensor:
            t = torch.zeros_like(like) if t is None else t
            return t[b, sl].detach().float()

        sides.append(Side(float(m[b].detach()),
                          {k: cut(cap.o_in[k], cap.o_in[k]) for k in o_keys},
                          {k: cut(grads[i], cap.o_in[k]) for i, k in enumerate(o_keys)},
                          {k: cut(cap.down_in[k], cap.down_in[k]) for k in d_keys},
                          {k: cut(grads[len(o_keys) + i], cap.down_in[k]) for i, k in enumerate(d_keys)}, q))
    return sides


def aligned(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The last ``q`` rows of both (the query positions the two pair members share)."""
    q = min(a.shape[0], b.shape[0])
    return a[-q:], b[-q:]


# ----------------------------------------------------------------------------- sums over pairs


def target_layer_of(model: Any, target_layer: int | None) -> int:
    """The layer whose residual the metric reads (default: the last); range-checked."""
    n_layers = len(decoder_layers(model))
    target = n_layers - 1 if target_layer is None else target_layer
    if not 0 <= target < n_layers:
        raise AffectlensError(f"--target-layer {target} out of range (0-{n_layers - 1})")
    return target


def pairs_of(pairs: Sequence[Pair], emotion: str, max_pairs: int | None) -> list[Pair]:
    """The first ``max_pairs`` pairs of ``emotion``; none is an error."""
    sel = [p for p in pairs if p.label == emotion][:max_pairs]
    if not sel:
        raise AffectlensError(f"no pairs for emotion '{emotion}'")
    return sel


@dataclass
class PatchSums:
    """Per layer, sums over ``n`` pairs of each unit's ``drop`` and ``gain`` terms (float64)."""

    n: int
    drop: list[torch.Tensor]  # layer -> [units]
    gain: list[torch.Tensor]


def patching_sums(model: Any, enc: Encoder, pairs: Sequence[Pair], metric: Metric, site: str,
                  units: Sequence[int], desc: str,
                  last: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
                  batch_size: int = 1) -> PatchSums:
    """Attribution-patching sums over ``pairs`` at ``site`` (see module docstring).

    ``units[l]`` is the number of units in layer ``l`` (its features are split
    evenly among them). ``last(layer, a_pos, a_neg)`` is called per pair and
    layer with both members' activations at the last prompt token (on that
    layer's device), for callers that also need what a unit writes there.
    Sums accumulate on each layer's device (float64; float32 on MPS, which
    has no float64) and are returned on the CPU as float64. Prompts run
    ``batch_size`` to a forward pass (:func:`run_sides`); the pairs are summed
    in their order either way, so the batch size changes no number beyond
    float rounding.
    """
    if site not in SITES:
        raise ValueError(f"site must be one of {SITES}, not {site!r}")
    drop: dict[int, torch.Tensor] = {}
    gain: dict[int, torch.Tensor] = {}
    heads, neurons = site == "o_in", site == "down_in"
    for pos, neg in _pair_sides(model, enc, pairs, metric, heads, neurons, batch_size, desc):
        acts_p, acts_n = (pos.o_in, neg.o_in) if heads else (pos.down_in, neg.down_in)
        grad_p, grad_n = (pos.o_grad, neg.o_grad) if heads else (pos.down_grad, neg.down_grad)
        for la, u in enumerate(units):
            ap, an = aligned(acts_p[la], acts_n[la])
            gp, gn = aligned(grad_p[la], grad_n[la])
            d = (ap - an).reshape(ap.shape[0], u, -1)
            acc = accum_dtype(d.device)
            for sums, g in ((drop, gp), (gain, gn)):
                term = (d * g.reshape_as(d)).sum((0, 2)).to(acc)
                sums[la] = sums[la] + term if la in sums else term
            if last is not None:
                last(la, ap[-1], an[-1])

    def cpu(sums: dict[int, torch.Tensor]) -> list[torch.Tensor]:
        return [sums[la].cpu().double() if la in sums else torch.zeros(u, dtype=torch.float64)
                for la, u in enumerate(units)]

    return PatchSums(len(pairs), cpu(drop), cpu(gain))


def _pair_sides(model: Any, enc: Encoder, pairs: Sequence[Pair], metric: Metric, heads: bool, neurons: bool,
                batch_size: int, desc: str) -> Iterator[tuple[Side, Side]]:
    """(emotional, neutral) sides of every pair in order, ``batch_size`` pairs' prompts run at a time."""
    with Progress(len(pairs), desc, unit="pair") as bar:
        for i in range(0, len(pairs), batch_size):
            chunk = pairs[i : i + batch_size]
            prompts = [x for p in chunk for x in ((p.emotional, p.image_emotional), (p.neutral, p.image_neutral))]
            sides = run_sides(model, enc, prompts, metric, heads, neurons, batch_size=batch_size)
            bar.update(len(chunk))
            yield from zip(sides[0::2], sides[1::2], strict=True)


__all__ = ["METRICS", "Metric", "PatchSums", "Side", "aligned", "make_metric", "pairs_of", "patching_sums",
           "run_side", "run_sides", "target_layer_of"]

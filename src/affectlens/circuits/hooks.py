"""Every forward hook affectlens installs lives here.

Hooks are registered inside a context manager and removed in ``finally``, so a
model is never left modified — also when the wrapped call raises. Captured
activations are detached (and, for results, moved to CPU at once) so that
repeated calls do not keep autograd graphs or device memory alive; what a hook
adds or patches in is moved to the hidden state's device and dtype once per
hook, not on every forward (``_Const``), so a GPU run pays no host round trip
per layer and call. Which positions a hook
touches comes from a ``SpanTracker`` (:mod:`affectlens.circuits.spans`);
``Layout``, ``SpanTracker`` and ``layout_for`` are importable from here too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, cast

import torch
from torch import nn

from ..errors import AffectlensError
from ..models.hfcompat import cached_length
from .spans import Layout, RowSpan, SpanTracker, layout_for

# ----------------------------------------------------------------------------- model anatomy


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The text decoder's block list (also inside VLM and PEFT wrappers)."""
    best: tuple[int, str, nn.ModuleList] | None = None
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.ModuleList) or not name.endswith("layers") or len(mod) == 0:
            continue
        low = name.lower()
        if any(v in low for v in ("visual", "vision", "image", "encoder.")):
            continue
        if not hasattr(mod[0], "self_attn") or not hasattr(mod[0], "mlp"):
            continue
        if best is None or len(mod) > best[0]:
            best = (len(mod), name, mod)
    if best is None:
        raise AffectlensError("cannot find the decoder layers (need blocks with self_attn and mlp)")
    return best[2]


def text_config(model: nn.Module) -> Any:
    cfg = model.config
    return getattr(cfg, "text_config", None) or cfg


def head_geometry(model: nn.Module) -> tuple[int, int, int]:
    """``(n_heads, n_kv_heads, head_dim)``: per-head work uses query heads (o_proj input)."""
    cfg = text_config(model)
    n = cfg.num_attention_heads
    kv = getattr(cfg, "num_key_value_heads", None) or n
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // n
    return n, kv, hd


def self_attn(layer: nn.Module) -> nn.Module:
    """A decoder block's attention module (``layer.self_attn``)."""
    return layer.get_submodule("self_attn")


def _linear(layer: nn.Module, path: str) -> nn.Linear:
    # Typed as nn.Linear for its ``weight``/``in_features``: PEFT's LoRA wrapper is
    # no nn.Linear subclass but has both, and torch types submodule access loosely.
    return cast(nn.Linear, layer.get_submodule(path))


def o_proj(layer: nn.Module) -> nn.Linear:
    return _linear(layer, "self_attn.o_proj")


def down_proj(layer: nn.Module) -> nn.Linear:
    return _linear(layer, "mlp.down_proj")


def _hidden(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def _replace_hidden(output: Any, new: torch.Tensor) -> Any:
    return (new, *output[1:]) if isinstance(output, tuple) else new


class _Const:
    """A tensor a hook applies on every call, moved to each device/dtype it meets once.

    With a ``device_map`` the layers sit on different GPUs, so the copy is per
    (device, dtype), not one global one. ``keep_dtype`` moves masks and indices
    without casting them.
    """

    def __init__(self, t: torch.Tensor, keep_dtype: bool = False) -> None:
        self.t, self.keep_dtype = t, keep_dtype
        self._on: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def like(self, x: torch.Tensor) -> torch.Tensor:
        dtype = self.t.dtype if self.keep_dtype else x.dtype
        key = (x.device, dtype)
        if key not in self._on:
            self._on[key] = self.t.to(device=x.device, dtype=dtype)
        return self._on[key]


def to_model(inputs: Mapping[str, Any], model: nn.Module) -> dict[str, Any]:
    """Encoded inputs on the model's (first) device; floating ones (pixels) in its dtype.

    Token ids keep their integer dtype; with a ``device_map`` accelerate moves
    activations between the GPUs itself, the inputs only need the first one.
    """
    p = next(model.parameters())
    return {k: (v.to(p.device, p.dtype) if v.is_floating_point() else v.to(p.device))
            if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}


# ----------------------------------------------------------------------------- hook set


class HookSet:
    """Registers hooks and removes every one of them on exit (also on error)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.handles: list[Any] = []
        self._restore: list[Callable[[], object]] = []

    def forward(self, module: nn.Module, fn: Callable) -> None:
        self.handles.append(module.register_forward_hook(fn))

    def pre(self, module: nn.Module, fn: Callable, with_kwargs: bool = False) -> None:
        self.handles.append(module.register_forward_pre_hook(fn, with_kwargs=with_kwargs))

    def on_exit(self, fn: Callable[[], object]) -> None:
        self._restore.append(fn)

    def track(self, layout: Layout) -> SpanTracker:
        """Install a ``SpanTracker`` on the model's forward."""
        tracker = SpanTracker(layout)

        def pre(_mod: nn.Module, args: tuple, kwargs: dict) -> None:
            ids = kwargs.get("input_ids", args[0] if args else None)
            mask = kwargs.get("attention_mask")
            ref = ids if ids is not None else kwargs.get("inputs_embeds")
            if ref is None:
                return
            tracker.observe(ids, mask, ref.shape[1], ref.shape[0], cached_length(kwargs))

        self.pre(self.model, pre, with_kwargs=True)
        return tracker

    def close(self) -> None:
        while self.handles:
            self.handles.pop().remove()
        while self._restore:
            self._restore.pop()()

    def __enter__(self) -> HookSet:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


@contextlib.contextmanager
def hooks(model: nn.Module) -> Iterator[HookSet]:
    """``with hooks(model) as h: h.forward(module, fn)`` — all removed afterwards."""
    hs = HookSet(model)
    try:
        yield hs
    finally:
        hs.close()


# ----------------------------------------------------------------------------- capture


@dataclass
class Captured:
    """Activations of one forward call, on CPU, detached."""

    resid: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [b, s, d]
    o_in: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [b, s, H*hd]
    down_in: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [b, s, ffn]


def _grad_from_here(_m: nn.Module, _a: tuple, output: torch.Tensor) -> torch.Tensor:
    if torch.is_grad_enabled() and isinstance(output, torch.Tensor) and not output.requires_grad:
        return output.detach().requires_grad_(True)
    return output


def capture(h: HookSet, layers: Sequence[int], resid: bool = True, o_in: bool = False,
            down_in: bool = False, keep_grad: bool = False, to: str | None = "cpu") -> Captured:
    """Record residual outputs / o_proj inputs / down_proj inputs of ``layers``.

    With ``keep_grad`` the tensors stay in the graph (for attribution patching,
    via ``torch.autograd.grad`` so no parameter ``.grad`` accumulates);
    otherwise they are detached copies on ``to`` (``"cpu"``: they leave as
    results; None: they stay where the layer ran, to be patched back in).
    """
    out = Captured()
    blocks = decoder_layers(h.model)
    if keep_grad:  # frozen weights (a PEFT-wrapped model): start the graph at the embeddings
        get_emb = getattr(h.model, "get_input_embeddings", None)
        emb = get_emb() if get_emb is not None else None
        if emb is not None:
            h.forward(emb, _grad_from_here)

    def keep(store: dict[int, torch.Tensor], layer: int, t: torch.Tensor) -> None:
        if keep_grad:  # stays in the graph: take gradients with torch.autograd.grad
            store[layer] = t
        else:
            store[layer] = t.detach().to(to or t.device, copy=True)

    for layer in layers:
        blk = blocks[layer]
        if resid:
            h.forward(blk, lambda _m, _a, o, layer=layer: keep(out.resid, layer, _hidden(o)))
        if o_in:
            h.pre(o_proj(blk), lambda _m, a, layer=layer: keep(out.o_in, layer, a[0]))
        if down_in:
            h.pre(down_proj(blk), lambda _m, a, layer=layer: keep(out.down_in, layer, a[0]))
    return out


def head_outputs(o_input: torch.Tensor, w_o: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Per-head writes into the residual: ``[..., H, d]``; sums to ``o_proj`` minus bias."""
    hd = o_input.shape[-1] // n_heads
    z = o_input.reshape(*o_input.shape[:-1], n_heads, hd)
    w = w_o.reshape(w_o.shape[0], n_heads, hd)  # [d, H, hd]
    return torch.einsum("...hk,dhk->...hd", z.to(w.dtype), w)


# ----------------------------------------------------------------------------- edits


def add_steering(h: HookSet, tracker: SpanTracker | None, layer: int, vector: torch.Tensor,
                 where: str = "from_stimulus", per_position_norm: bool = False) -> None:
    """Add ``vector`` to the residual after block ``layer`` at the positions ``where``.

    ``per_position_norm``: ``vector`` is multiplied by ``||h||`` at each position
    (so a unit vector times α adds α times the local residual norm).
    """
    blk = decoder_layers(h.model)[layer]
    vec = _Const(vector)

    def fn(_m: nn.Module, _a: tuple, output: Any) -> Any:
        x = _hidden(output)
        v = vec.like(x)
        if per_position_norm:
            v = v * x.norm(dim=-1, keepdim=True)
        if tracker is None or where == "all":
            return _replace_hidden(output, x + v)
        m = tracker.mask(where, x.shape[0], x.device)
        return _replace_hidden(output, x + m.unsqueeze(-1).to(x.dtype) * v)

    h.forward(blk, fn)


def scale_neurons(h: HookSet, layer: int, neurons: Sequence[int], gamma: float,
                  tracker: SpanTracker | None = None, where: str = "all") -> None:
    """Multiply MLP neurons (inputs of ``down_proj``) of ``layer`` by ``gamma``."""
    if gamma == 1.0 or not neurons:
        return
    idx = _Const(torch.as_tensor(list(neurons), dtype=torch.long), keep_dtype=True)

    def fn(_m: nn.Module, args: tuple) -> tuple:
        a = args[0]
        scale = torch.ones(a.shape[-1], dtype=a.dtype, device=a.device)
        scale[idx.like(a)] = gamma
        if tracker is None or where == "all":
            return (a * scale, *args[1:])
        m = tracker.mask(where, a.shape[0], a.device).unsqueeze(-1)
        return (torch.where(m, a * scale, a), *args[1:])

    h.pre(down_proj(decoder_layers(h.model)[layer]), fn)


def patch_input(h: HookSet, module: nn.Module, cols: torch.Tensor | None, source: torch.Tensor,
                positions: torch.Tensor) -> None:
    """Replace columns ``cols`` (bool ``[features]``, None = all) of ``module``'s input.

    ``source`` is ``[b, s, features]`` from another run laid out like the
    current one; ``positions`` a bool ``[b, s]`` mask of where to patch.
    """
    pos, src = _Const(positions.unsqueeze(-1), keep_dtype=True), _Const(source)
    col = _Const(cols, keep_dtype=True) if cols is not None else None

    def fn(_m: nn.Module, args: tuple) -> tuple:
        x = args[0]
        sel = pos.like(x)
        if col is not None:
            sel = sel & col.like(x)
        return (torch.where(sel, src.like(x), x), *args[1:])

    h.pre(module, fn)


def head_columns(model: nn.Module, heads: Sequence[int] | None) -> torch.Tensor:
    """Bool mask over the ``o_proj`` input features of the given query heads."""
    n, _, hd = head_geometry(model)
    cols = torch.zeros(n * hd, dtype=torch.bool)
    for c in range(n) if heads is None else heads:
        cols[c * hd : (c + 1) * hd] = True
    return cols


def patch_o_input(h: HookSet, layer: int, heads: Sequence[int] | None, source: torch.Tensor,
                  positions: torch.Tensor) -> None:
    """Replace heads' slices of the ``o_proj`` input (``heads=None``: all heads)."""
    patch_input(h, o_proj(decoder_layers(h.model)[layer]), head_columns(h.model, heads), source, positions)


def patch_neurons(h: HookSet, layer: int, neurons: Sequence[int], source: torch.Tensor,
                  positions: torch.Tensor) -> None:
    """Replace MLP neurons (``down_proj`` input features) by ``source`` at ``positions``."""
    mod = down_proj(decoder_layers(h.model)[layer])
    cols = torch.zeros(mod.in_features, dtype=torch.bool)
    cols[list(neurons)] = True
    patch_input(h, mod, cols, source, positions)


def patch_attn_output(h: HookSet, layer: int, source: torch.Tensor, positions: torch.Tensor) -> None:
    """Replace the whole attention block output (after ``o_proj``) at ``positions``."""
    pos, src = _Const(positions.unsqueeze(-1), keep_dtype=True), _Const(source)

    def fn(_m: nn.Module, _a: tuple, output: Any) -> Any:
        x = _hidden(output)
        return _replace_hidden(output, torch.where(pos.like(x), src.like(x), x))

    h.forward(self_attn(decoder_layers(h.model)[layer]), fn)


# ----------------------------------------------------------------------------- attention


ATTN_IMPL = "affectlens_eager"
_ATTN_RULES: dict[int, dict[str, Any]] = {}  # id(attention module) -> rule, set by amplify_attention


def _amp_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                   attention_mask: torch.Tensor | None, scaling: float, dropout: float = 0.0,
                   **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager attention with per-head scaling of stimulus→query attention."""
    from transformers.integrations.sdpa_attention import repeat_kv

    groups = query.shape[1] // key.shape[1]
    k = repeat_kv(key, groups)
    v = repeat_kv(value, groups)
    scores = torch.matmul(query, k.transpose(2, 3)) * scaling
    softcap = kwargs.get("softcap")
    if softcap:  # Gemma-2 style logit soft-capping, as in its eager attention
        scores = torch.tanh(scores / softcap) * softcap
    if attention_mask is not None:
        scores = scores + attention_mask[:, :, :, : k.shape[-2]]
    rule = _ATTN_RULES.get(id(module))
    sel = None
    if rule is not None:
        tracker: SpanTracker = rule["tracker"]
        b, nh, q_len, kv_len = scores.shape
        qm = tracker.mask(rule["queries"], b, scores.device)[:, -q_len:]  # [b, q]
        km = tracker.key_mask(b, kv_len, scores.device)  # [b, kv]
        hm = rule["head_mask"].like(scores)
        sel = hm[None, :, None, None] & qm[:, None, :, None] & km[:, None, None, :]
        if rule["mode"] == "before":
            scores = torch.where(sel, scores * rule["beta"], scores)
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    if sel is not None and rule is not None and rule["mode"] == "after":  # sel is set only with a rule
        weights = torch.where(sel, weights * rule["beta"], weights)
        weights = weights / weights.sum(-1, keepdim=True).clamp_min(torch.finfo(weights.dtype).tiny)
    out = torch.matmul(weights, v).transpose(1, 2).contiguous()
    return out, weights


def _register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    if ATTN_IMPL not in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
        AttentionInterface.register(ATTN_IMPL, _amp_attention)
        AttentionMaskInterface.register(ATTN_IMPL, ALL_MASK_ATTENTION_FUNCTIONS["eager"])


def amplify_attention(h: HookSet, tracker: SpanTracker, heads: Mapping[int, Sequence[int]],
                      beta: float, mode: str = "after", queries: Mapping[int, str] | str = "query") -> None:
    """Scale attention of ``heads`` ({layer: [head, ...]}) from stimulus keys by ``beta``.

    ``mode="after"`` (default): multiply post-softmax weights by β and
    renormalise each row — a monotone change of the stimulus' share, well
    defined for any sign of the scores, and β=0 is knockout. ``mode="before"``:
    multiply the pre-softmax scores by β (a temperature on those entries; its
    effect depends on the scores' sign). The model's attention implementation
    is switched to an eager variant for the duration and restored on exit.
    β=1 installs nothing, so it is exactly the unmodified model.
    """
    if mode not in ("after", "before"):
        raise AffectlensError(f"unknown attention amplification mode '{mode}'; use after or before")
    if beta == 1.0 or not heads:
        return
    _register_attention()
    blocks = decoder_layers(h.model)
    n, _, _ = head_geometry(h.model)
    for layer, hs in heads.items():
        bad = [c for c in hs if not 0 <= c < n]
        if bad:
            raise AffectlensError(f"head(s) {bad} out of range in layer {layer}: the model has {n} heads")
        attn = self_attn(blocks[layer])
        q = queries if isinstance(queries, str) else queries.get(layer, "query")
        head_mask = torch.zeros(n, dtype=torch.bool)
        head_mask[list(hs)] = True
        _ATTN_RULES[id(attn)] = {"head_mask": _Const(head_mask, keep_dtype=True), "beta": float(beta), "mode": mode,
                                 "tracker": tracker, "queries": q}
        h.on_exit(partial(_ATTN_RULES.pop, id(attn), None))
    # Only the text decoder's config: the vision tower keeps its own implementation.
    seen: set[int] = set()
    for blk in blocks:
        c: Any = self_attn(blk).config  # a transformers config (untyped)
        if id(c) in seen:
            continue
        seen.add(id(c))
        old = c._attn_implementation
        c._attn_implementation = ATTN_IMPL
        h.on_exit(partial(setattr, c, "_attn_implementation", old))


__all__ = ["ATTN_IMPL", "Captured", "HookSet", "Layout", "RowSpan", "SpanTracker", "add_steering",
           "amplify_attention", "capture", "decoder_layers", "down_proj", "head_columns", "head_geometry",
           "head_outputs", "hooks", "layout_for", "to_model", "o_proj", "patch_attn_output", "patch_input",
           "patch_neurons", "patch_o_input", "scale_neurons", "self_attn", "text_config"]

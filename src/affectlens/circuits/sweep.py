"""The layer sweep in few forwards: every (prompt, layer) variant of one emotion, batched.

Injecting ``α·S_l`` after block ``l`` from the stimulus on leaves two parts of
every run exactly as in the unsteered run:

* the template prefix before the stimulus, at every layer (causal attention:
  nothing there sees the injection) — its keys/values come from the base run;
* the stimulus and everything after it up to block ``l`` — its residual after
  block ``k <= l`` is the base run's.

So one unsteered forward per prompt (capturing the residual after each block
and the KV cache) is shared by all variants; a batch of variants starts at
block ``k + 1`` (``k`` the earliest injected layer in the batch) on the
suffix positions only, the prefix served from the cache, and each batch row
gets its own injection at its own layer. Multi-token labels continue from the
variant's cache (base keys/values for blocks ``<= k``), as the scorer does.
The result is the per-layer loop's (float rounding aside); a model where the
shortcut does not reproduce a plain forward (a one-prompt check at start)
falls back to that loop.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..evaluate.scorer import max_positions, model_device, padding_id, tokenize_pairs
from ..hfcompat import cache_kwarg, output_cache
from .hooks import HookSet, decoder_layers, hooks, text_config
from .intervene import steering_vector
from .pairs import Encoder
from .vectors import SteeringVectors


@dataclass
class _Base:
    """One prompt's unsteered run: suffix residuals after each block, and per-layer KV."""

    item: Any  # the scorer's tokenised item: prompt, common, rests
    resid: list[torch.Tensor]  # layer -> [S, d] (suffix positions)
    keys: list[torch.Tensor]  # layer -> [kvh, T, hd]
    values: list[torch.Tensor]
    cont: dict[int, list[torch.Tensor]]  # multi-token label j -> layer -> [len(rest) - 1, d]


def _hidden(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def _kv(cache: Any, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    if hasattr(cache, "layers"):
        return cache.layers[layer].keys, cache.layers[layer].values
    return cache.key_cache[layer], cache.value_cache[layer]


def _new_cache(model: Any, kv: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> Any:
    from transformers import DynamicCache

    try:
        cache = DynamicCache(config=text_config(model))
    except TypeError:
        cache = DynamicCache()
    for i, (k, v) in enumerate(kv):
        cache.update(k, v, i)
    return cache


@contextlib.contextmanager
def _from_block(model: Any, start: int, x0: torch.Tensor) -> Iterator[None]:
    """Run only blocks ``start..`` on ``x0`` (replacing the embeddings' output)."""
    blocks = decoder_layers(model)
    saved = blocks._modules
    kept = list(saved.values())[start:]
    emb = model.get_input_embeddings()
    handle = emb.register_forward_hook(lambda _m, _a, out: x0.to(out.dtype))
    blocks.__dict__["_modules"] = {str(i): m for i, m in enumerate(kept)}
    try:
        yield
    finally:
        blocks.__dict__["_modules"] = saved
        handle.remove()


class _Injector:
    """Per-row additions after chosen blocks: ``plan[layer] = (rows, vectors [n, d])``."""

    def __init__(self, h: HookSet, rel: bool) -> None:
        self.rel = rel
        self.plan: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for la, blk in enumerate(decoder_layers(h.model)):
            h.forward(blk, lambda _m, _a, out, la=la: self._add(la, out))

    def apply(self, x: torch.Tensor, rows: torch.Tensor, vecs: torch.Tensor) -> torch.Tensor:
        v = vecs.to(device=x.device, dtype=x.dtype)[:, None, :]
        sub = x[rows]
        if self.rel:
            v = v * sub.norm(dim=-1, keepdim=True)
        x = x.clone()
        x[rows] = sub + v
        return x

    def _add(self, layer: int, output: Any) -> Any:
        if layer not in self.plan:
            return output
        rows, vecs = self.plan[layer]
        x = self.apply(_hidden(output), rows, vecs)
        return (x, *output[1:]) if isinstance(output, tuple) else x


def _capture(model: Any, h: HookSet, store: dict[int, torch.Tensor]) -> None:
    for la, blk in enumerate(decoder_layers(model)):
        h.forward(blk, lambda _m, _a, o, la=la: store.__setitem__(la, _hidden(o).detach()))


def _base_runs(model: Any, items: Sequence[Any], start: int) -> list[_Base]:
    """Unsteered runs, one per prompt, and their multi-token label continuations (residuals, KV)."""
    import copy

    dev = model_device(model)
    n_layers = len(decoder_layers(model))
    out = []
    for it in items:
        seq = it.prompt + it.common
        resid: dict[int, torch.Tensor] = {}
        with hooks(model) as h:
            _capture(model, h, resid)
            ids = torch.tensor([seq], device=dev)
            res = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True, logits_to_keep=1)
        cache = output_cache(res)
        kv = [_kv(cache, la) for la in range(n_layers)]
        base = _Base(it, [resid[la][0, start:] for la in range(n_layers)], [k[0] for k, _ in kv],
                     [v[0] for _, v in kv], {})
        groups: dict[int, list[int]] = {}
        for j, rest in enumerate(it.rests):
            if len(rest) > 1:
                groups.setdefault(len(rest) - 1, []).append(j)
        for m, js in groups.items():
            sub = copy.deepcopy(cache)
            sub.batch_repeat_interleave(len(js))
            cids = torch.tensor([it.rests[j][:-1] for j in js], device=dev)
            am = torch.ones(len(js), len(seq) + m, dtype=torch.long, device=dev)
            pos = (len(seq) + torch.arange(m, device=dev))[None].expand(len(js), m)
            cres: dict[int, torch.Tensor] = {}
            with hooks(model) as h:
                _capture(model, h, cres)
                model(input_ids=cids, attention_mask=am, position_ids=pos, use_cache=True, logits_to_keep=1,
                      **{cache_kwarg(model): sub})
            for c, j in enumerate(js):
                base.cont[j] = [cres[la][c] for la in range(n_layers)]
        out.append(base)
    return out


def _logprobs(model: Any, bases: Sequence[_Base], layers: Sequence[int], vecs: Sequence[torch.Tensor],
              start: int, rel: bool, pad_id: int, n_labels: int) -> torch.Tensor:
    """Closed-set log-likelihoods ``[B, n_labels]`` of one batch of variants (row b: bases[b] at layers[b])."""
    dev = model_device(model)
    n_layers = len(decoder_layers(model))
    B = len(bases)
    k = min(layers)
    seqs = [b.item.prompt + b.item.common for b in bases]
    S = max(len(s) for s in seqs) - start
    d = bases[0].resid[0].shape[-1]
    ids = torch.full((B, S), pad_id, dtype=torch.long)
    mask = torch.zeros(B, start + S, dtype=torch.long)
    mask[:, :start] = 1
    x0 = torch.zeros(B, S, d, dtype=bases[0].resid[0].dtype, device=dev)
    for r, (b, s) in enumerate(zip(bases, seqs, strict=True)):
        n = len(s) - start
        ids[r, S - n:] = torch.tensor(s[start:])
        mask[r, start + S - n:] = 1
        x0[r, S - n:] = b.resid[k]
    pos = (start + (mask[:, start:].cumsum(-1) - 1)).clamp(min=start)
    lay = torch.tensor(list(layers))
    V = torch.stack([v.float() for v in vecs]).to(dev)  # once: the hooks add its rows on every call
    kv = [(torch.stack([b.keys[la][:, :start] for b in bases]), torch.stack([b.values[la][:, :start] for b in bases]))
          for la in range(n_layers)]
    cache = _new_cache(model, kv)
    kmax = max(len(b.item.common) for b in bases)
    need_cache = any(len(r) > 1 for b in bases for r in b.item.rests)
    with hooks(model) as h:
        inj = _Injector(h, rel)
        now = (lay == k).nonzero().flatten()
        x0 = inj.apply(x0, now.to(dev), V[now])
        inj.plan = {la: ((lay == la).nonzero().flatten().to(dev), V[lay == la]) for la in set(layers) if la > k}
        with _from_block(model, k + 1, x0):
            res = model(input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev),
                        use_cache=need_cache, logits_to_keep=kmax + 1, **{cache_kwarg(model): cache})
        logp = res.logits[:, -(kmax + 1):].float().log_softmax(-1).double().cpu()
        out = torch.zeros(B, n_labels, dtype=torch.float64)
        for r, b in enumerate(bases):
            it = b.item
            kk = len(it.common)
            base = sum(float(logp[r, kmax - (kk - j), t]) for j, t in enumerate(it.common))
            out[r] = base + logp[r, kmax, torch.tensor([rest[0] for rest in it.rests])]
        if not need_cache:
            return out
        cache = output_cache(res)
        for la in range(k + 1):  # blocks <= k are unsteered: the base run's keys/values
            kb = torch.zeros(B, *bases[0].keys[la].shape[:1], S, bases[0].keys[la].shape[-1],
                             dtype=bases[0].keys[la].dtype, device=dev)
            vb = torch.zeros_like(kb)
            for r, s in enumerate(seqs):
                n = len(s) - start
                kb[r, :, S - n:] = bases[r].keys[la][:, start:]
                vb[r, :, S - n:] = bases[r].values[la][:, start:]
            cache.update(kb, vb, la)
        _continue(model, k, cache, bases, seqs, mask, inj, lay, V, out)
    return out


def _continue(model: Any, k: int, cache: Any, bases: Sequence[_Base], seqs: Sequence[list[int]],
              mask: torch.Tensor, inj: _Injector, lay: torch.Tensor, V: torch.Tensor, out: torch.Tensor) -> None:
    """Label tokens after the first, from the variants' cache, from block ``k + 1`` on.

    Up to block ``k`` a continuation token sees only unsteered states: its
    residual there is the base run's continuation's. Grouped by length (no padding).
    """
    import copy

    dev = model_device(model)
    groups: dict[int, list[tuple[int, int]]] = {}
    for r, b in enumerate(bases):
        for j, rest in enumerate(b.item.rests):
            if len(rest) > 1:
                groups.setdefault(len(rest) - 1, []).append((r, j))
    lengths = torch.tensor([len(s) for s in seqs])
    for m, pairs in groups.items():
        ids = torch.tensor([bases[r].item.rests[j][:-1] for r, j in pairs])
        sel = torch.tensor([r for r, _ in pairs])
        sub = copy.deepcopy(cache)
        sub.batch_select_indices(sel.to(dev))
        am = torch.cat([mask[sel], torch.ones(len(pairs), m, dtype=torch.long)], dim=1)
        pos = lengths[sel][:, None] + torch.arange(m)[None, :]
        rl, rv = lay[sel], V[sel]
        x = torch.stack([bases[r].cont[j][k] for r, j in pairs])
        now = (rl == k).nonzero().flatten()
        x = inj.apply(x, now.to(dev), rv[now])
        inj.plan = {la: ((rl == la).nonzero().flatten().to(dev), rv[rl == la]) for la in set(rl.tolist()) if la > k}
        with _from_block(model, k + 1, x):
            res = model(input_ids=ids.to(dev), attention_mask=am.to(dev), position_ids=pos.to(dev),
                        use_cache=True, **{cache_kwarg(model): sub})
        logp = res.logits.float().log_softmax(-1).double().cpu()
        for c, (r, j) in enumerate(pairs):
            tgt = torch.tensor(bases[r].item.rests[j][1:])
            out[r, j] += logp[c, torch.arange(len(tgt)), tgt].sum()


def sweep_supported(enc: Encoder, images: Sequence[str | None]) -> bool:
    """Text prompts with a template prefix: the shortcut's preconditions (else the per-layer loop)."""
    lay = enc.layout
    return (enc.processor is None and not any(images) and lay.image_token_id is None
            and lay.stimulus_fraction is None)


def batched_probs(model: Any, enc: Encoder, stimuli: Sequence[str], labels: Sequence[str], sv: SteeringVectors,
                  emotion: str, alpha: float, scale: str, layers: Sequence[int], batch_size: int = 16,
                  tick: Callable[[int], None] | None = None, verify: bool = True) -> dict[int, torch.Tensor] | None:
    """Closed-set probabilities ``{layer: [n, n_labels]}`` with ``α·S_layer`` injected.

    Layers whose vector is exactly zero are left out (injecting nothing is the
    unsteered run); None: the shortcut does not apply to this model/prompt.
    ``verify``: check first that the shortcut reproduces a plain forward on this
    model (once per model is enough).
    """
    tok = enc.tokenizer
    items = tokenize_pairs(tok, [enc.prompt(s) for s in stimuli], labels, None, max_positions(model))
    start = enc.layout.prefix_len
    if not items or start < 1 or any(len(it.prompt) + len(it.common) <= start for it in items):
        return None
    with torch.inference_mode():
        bases = _base_runs(model, items, start)
        vec, rel = {}, False
        for la in layers:
            vec[la], rel = steering_vector(sv, emotion, la, alpha, scale)
        if verify and not _shortcut_ok(model, bases[0], start, rel, padding_id(tok), len(labels)):
            return None
        rows = [(la, i) for la in sorted(layers) for i in range(len(items))]
        rows = [(la, i) for la, i in rows if bool(vec[la].any())]
        lp: dict[tuple[int, int], torch.Tensor] = {}
        for s in range(0, len(rows), batch_size):
            chunk = rows[s:s + batch_size]
            res = _logprobs(model, [bases[i] for _, i in chunk], [la for la, _ in chunk],
                            [vec[la] for la, _ in chunk], start, rel, padding_id(tok), len(labels))
            for r, key in enumerate(chunk):
                lp[key] = res[r]
            if tick is not None:
                tick(len(chunk))
    if tick is not None:
        tick(len(layers) * len(items) - len(rows))
    done = {la for la, _ in rows}
    return {la: torch.stack([torch.softmax(lp[(la, i)], -1).float() for i in range(len(items))]) for la in done}


def _shortcut_ok(model: Any, base: _Base, start: int, rel: bool, pad_id: int, n_labels: int) -> bool:
    """Starting at block 1 with nothing injected must reproduce the plain forward (else: per-layer loop)."""
    try:
        zero = torch.zeros_like(base.resid[0][0])
        a = _logprobs(model, [base], [0], [zero], start, rel, pad_id, n_labels)
        b = _logprobs(model, [base], [len(base.resid) - 1], [zero], start, rel, pad_id, n_labels)
    except (TypeError, AttributeError, RuntimeError, ValueError, KeyError, IndexError):
        return False
    from ..evaluate.scorer import score_items

    ref = score_items(model, [base.item], n_labels, pad_id, 1)
    # a structural mismatch is O(1) in log-likelihood; half precision rounds differently per batch shape
    tol = 1e-4 if base.resid[0].dtype == torch.float32 else 5e-2
    return bool(torch.allclose(a, ref, rtol=tol, atol=tol) and torch.allclose(b, ref, rtol=tol, atol=tol))

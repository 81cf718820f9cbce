"""Closed-set scoring: the log-likelihood of every label after every prompt.

Cost model: the naive way runs one forward per (example, label). Here each
example costs one forward over its prompt; the logits at its last position
give every label's first token at once (the single-token fast path: with
single-token labels that is all there is). Tokens every label shares (e.g.
the newline after a chat template) are folded into that forward; labels with
more tokens continue from the prompt's KV cache, so the prompt is never
recomputed.

Shared prompt prefix: with a chat template every prompt of a task starts with
the same system instruction (for SmolLM2 about 30 of a prompt's ~56 tokens),
so about half of those forwards would repeat one computation. ``score_items``
finds the longest token prefix ``P`` all prompts share (capped so each prompt
keeps at least one own token), runs it once (batch 1), and per batch feeds
only each row's suffix (``prompt[P:] + common``) on a copy of that KV cache
repeated to the batch's rows. Forward cost drops from ``sum_i L_i`` to
``P + sum_i (L_i - P)`` tokens, i.e. by ``(n - 1) * P``; what it adds is one
cache copy per batch (``P`` key/value vectors per layer and row, no FLOPs of
note). Below ``MIN_SHARED_PREFIX`` tokens, for a single example, on a
vision-language model (whose forward derives its own, multi-axis, positions),
or where a sliding attention window could cut between prefix and suffix (a
window counts cache slots, and the pads now sit inside the sequence) the old
one-forward-per-batch path runs.

Why the result is the same: suffixes are left padded *after* the prefix, so
pads sit between the prefix and a row's own tokens; the attention mask is
``[ones(P), suffix_mask]`` (pads masked out) and positions are explicit
(``P + index among the row's real suffix tokens``). Every real token thus
attends to exactly the keys, at exactly the rotary positions, that it does in
the unshared computation, and the prefix's keys and values are the same
function of the same tokens; only the shapes of the matrix products differ,
so scores agree up to float rounding (float64: ~1e-12 relative; bfloat16: as
far as changing the batch size moves them, ~0.5 nat at worst on SmolLM2). Continuations
of multi-token labels receive the full ``[prefix, suffix]`` mask, so they too
see the same keys. ``share_prefix=False`` opts out: callers whose forward
hooks track token positions per prefill call (``affectlens.circuits``) do.

Tokenisation: prompts and labels are encoded by ``affectlens.tasks.prompts``
(:func:`~affectlens.prompts.encode_prompts`, :func:`~affectlens.prompts.encode_targets`),
the encoder training uses, so prompt + label ids here are exactly the ids a
tuned adapter was trained on. With BPE tokenisers that never merge across
the boundary (SmolLM2, Qwen, Llama-3) this equals lm-evaluation-harness'
whole-string slicing.

Batch-size independence: prompts are left padded, positions come from the
attention mask, and batches are sorted by length; an example's scores
therefore depend on other examples only through float rounding.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import AffectlensError
from ..models.hfcompat import cache_kwarg, output_cache
from ..runs import Progress
from ..tasks.prompts import encode_prompts, encode_targets, target_delimiter
from .metrics import NonFiniteResult


@dataclass
class _Item:
    """Tokens of one example: shared prompt ids, label-common ids, per-label rests."""

    prompt: list[int]
    common: list[int]
    rests: list[list[int]]


def _lcp(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def tokenize_pairs(tokenizer, prompts: Sequence[str], labels: Sequence[str],
                   delimiter: str | None = None, max_length: int | None = None) -> list[_Item]:
    """Split each example into (prompt ids, label-common ids, per-label remaining ids).

    ``prompt + common + rests[j]`` is exactly :func:`affectlens.prompts.encode`
    of (prompt, label j), the sequence training builds (less its EOS), so a
    tuned model is scored on the token sequence it was trained to produce.
    """
    if tokenizer is None:
        raise AffectlensError("closed-set scoring needs the model's tokenizer; the model has none")
    prompts = list(prompts)
    p_ids = encode_prompts(tokenizer, prompts)
    by_delim: dict[str, tuple[list[int], list[list[int]]]] = {}
    items = []
    for prompt_text, p in zip(prompts, p_ids, strict=True):
        d = target_delimiter(tokenizer, prompt_text) if delimiter is None else delimiter
        if d not in by_delim:
            conts = encode_targets(tokenizer, prompt_text, labels, delimiter=d)
            if any(len(c) == 0 for c in conts):
                raise AffectlensError(f"a label tokenises to nothing: {list(labels)}")
            k = min(min(len(c) for c in conts) - 1, min(_lcp(conts[0], c) for c in conts))
            by_delim[d] = (conts[0][:k], [c[k:] for c in conts])
        common, rests = by_delim[d]
        prompt = list(p)
        if max_length is not None:
            longest = len(prompt) + len(common) + max(len(r) for r in rests)
            if longest > max_length:  # keep the end of the prompt (the question), and BOS
                drop = longest - max_length
                head = 1 if prompt and prompt[0] == getattr(tokenizer, "bos_token_id", None) else 0
                if drop >= len(prompt) - head:
                    raise AffectlensError(f"labels do not fit in the model context ({max_length})")
                prompt = prompt[:head] + prompt[head + drop:]
        items.append(_Item(prompt=prompt, common=common, rests=rests))
    return items


def model_device(model) -> torch.device:
    """Where the model's (first) parameters live: inputs go there."""
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def padding_id(tokenizer) -> int:
    """The id that fills padded positions (pad, else eos, else unk, else 0): never attended to."""
    for attr in ("pad_token_id", "eos_token_id", "unk_token_id"):
        v = getattr(tokenizer, attr, None)
        if v is not None:
            return int(v)
    return 0


def model_name(model) -> str:
    """What a user calls ``model``: the path it was loaded from, else its class."""
    cfg = getattr(model, "config", None)
    return str(getattr(cfg, "_name_or_path", "") or getattr(model, "name_or_path", "")
               or type(model).__name__)


def non_finite_weight(model) -> str | None:
    """Name of the first parameter/buffer holding NaN/Inf (a diagnosis for a non-finite output)."""
    try:
        tensors = [*model.named_parameters(), *model.named_buffers()]
    except AttributeError:
        return None
    with torch.no_grad():
        for name, t in tensors:
            if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
                return name
    return None


def text_start(text: str, n: int = 40) -> str:
    """The first ``n`` characters of ``text`` on one line, quoted (for error messages)."""
    t = " ".join(str(text).split())
    return repr(t[:n] + ("..." if len(t) > n else ""))


def non_finite_error(model, where: str, what: str) -> NonFiniteResult:
    """One line: which output is NaN/Inf, for which input, under which model (and weight)."""
    bad = non_finite_weight(model)
    hint = f" (non-finite weights in {bad})" if bad else ""
    return NonFiniteResult(f"{where}: {what} under model {model_name(model)}{hint}; not a result")


def max_positions(model) -> int | None:
    """The text decoder's context length, when the config states one."""
    cfg: Any = getattr(model, "config", None)  # a transformers config (untyped), or None
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    return getattr(cfg, "max_position_embeddings", None)


MIN_SHARED_PREFIX = 8
"""Fewest shared prompt tokens worth a separate prefix forward (and a cache copy per batch)."""


def shared_prefix_length(items: Sequence[_Item]) -> int:
    """Tokens every item's prompt starts with, capped so each prompt keeps one own token."""
    if not items:
        return 0
    first = items[0].prompt
    p = min(len(it.prompt) for it in items) - 1
    for it in items[1:]:
        p = min(p, _lcp(first, it.prompt))
        if p <= 0:
            return 0
    return max(p, 0)


def _can_share(model, longest: int) -> bool:
    """A text decoder whose forward takes a KV cache and explicit positions (not a VLM), and
    whose sequences fit any sliding attention window (windows count cache slots, pads included)."""
    cfg: Any = getattr(model, "config", None)  # a transformers config (untyped), or None
    if cfg is None or getattr(cfg, "vision_config", None) is not None:
        return False
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    window = getattr(text, "sliding_window", None)
    return not (isinstance(window, int) and 0 < window < 2 * longest)


def _prefix_cache(model, prefix: list[int], dev: torch.device) -> Any:
    """The KV cache of ``prefix`` (one row), computed once for every batch."""
    ids = torch.tensor([prefix], dtype=torch.long)
    res = model(input_ids=ids.to(dev), attention_mask=torch.ones_like(ids).to(dev),
                position_ids=torch.arange(len(prefix))[None].to(dev), use_cache=True, logits_to_keep=1)
    cache = output_cache(res)
    if cache is None or not hasattr(cache, "batch_repeat_interleave"):
        return None
    return cache


@torch.inference_mode()
def score_items(model, items: list[_Item], n_labels: int, pad_id: int, batch_size: int = 16,
                progress: bool = False, desc: str = "scoring", share_prefix: bool = True) -> torch.Tensor:
    """Log-likelihoods [n, n_labels] (float64) for pre-tokenised items.

    ``share_prefix``: run the prompt prefix all items share once and reuse its
    KV cache (module docstring: same scores up to float rounding). False: every
    prompt goes through the model whole.
    """
    if batch_size < 1:
        raise AffectlensError(f"batch size must be positive, not {batch_size}")
    dev = model_device(model)
    n = len(items)
    out = torch.zeros(n, n_labels, dtype=torch.float64)
    longest = max((len(it.prompt) + len(it.common) + max(map(len, it.rests)) for it in items), default=0)
    P = shared_prefix_length(items) if share_prefix and n > 1 and _can_share(model, longest) else 0
    prefix = _prefix_cache(model, items[0].prompt[:P], dev) if P >= MIN_SHARED_PREFIX else None
    if prefix is None:
        P = 0
    order = sorted(range(n), key=lambda i: (-(len(items[i].prompt) + len(items[i].common)), i))
    bar = Progress(n, desc, unit="ex", enabled=progress)
    for start in range(0, n, batch_size):
        rows = order[start:start + batch_size]
        seqs = [items[i].prompt[P:] + items[i].common for i in rows]
        T = max(len(s) for s in seqs)
        ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), T), dtype=torch.long)
        for r, s in enumerate(seqs):
            ids[r, T - len(s):] = torch.tensor(s)
            mask[r, T - len(s):] = 1
        pos = P + (mask.cumsum(-1) - 1).clamp(min=0)
        kmax = max(len(items[i].common) for i in rows)
        need_cache = any(len(rest) > 1 for i in rows for rest in items[i].rests)
        kw: dict[str, Any] = {}
        if prefix is not None:  # pads sit between the prefix and each row's suffix, masked out
            kv = copy.deepcopy(prefix)
            kv.batch_repeat_interleave(len(rows))
            kw[cache_kwarg(model)] = kv
            mask = torch.cat([torch.ones(len(rows), P, dtype=torch.long), mask], dim=1)
        res = model(input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev),
                    use_cache=need_cache or prefix is not None, logits_to_keep=kmax + 1, **kw)
        logp = res.logits[:, -(kmax + 1):].float().log_softmax(-1).double().cpu()
        for r, i in enumerate(rows):
            it = items[i]
            k = len(it.common)
            base = 0.0
            for j, tok in enumerate(it.common):  # logits at -1-(k-j) predict common[j]
                base += float(logp[r, kmax - (k - j), tok])
            first = torch.tensor([rest[0] for rest in it.rests])
            out[i] = base + logp[r, kmax, first]
        if need_cache:
            _continue(model, output_cache(res), rows, items, mask, pad_id, batch_size, out, dev)
        bar.update(len(rows))
    bar.close()
    return out


def _continue(model, cache, rows: list[int], items: list[_Item], mask: torch.Tensor, pad_id: int,
              batch_size: int, out: torch.Tensor, dev: torch.device) -> None:
    """Score label tokens after the first, reusing the prompt's KV cache (no prompt recompute)."""
    pairs = [(r, i, lab) for r, i in enumerate(rows) for lab, rest in enumerate(items[i].rests)
             if len(rest) > 1]
    pairs.sort(key=lambda p: -len(items[p[1]].rests[p[2]]))
    lengths = mask.sum(-1)
    for s in range(0, len(pairs), batch_size):
        chunk = pairs[s:s + batch_size]
        m = max(len(items[i].rests[lab]) - 1 for _, i, lab in chunk)
        ids = torch.full((len(chunk), m), pad_id, dtype=torch.long)
        for c, (_, i, lab) in enumerate(chunk):
            inp = items[i].rests[lab][:-1]
            ids[c, :len(inp)] = torch.tensor(inp)
        sel = torch.tensor([r for r, _, _ in chunk])
        sub = copy.deepcopy(cache)
        sub.batch_select_indices(sel.to(dev))
        am = torch.cat([mask[sel], torch.ones(len(chunk), m, dtype=torch.long)], dim=1)
        pos = lengths[sel][:, None] + torch.arange(m)[None, :]
        res = model(input_ids=ids.to(dev), attention_mask=am.to(dev), position_ids=pos.to(dev),
                    use_cache=True, **{cache_kwarg(model): sub})
        logp = res.logits.float().log_softmax(-1).double().cpu()
        for c, (_, i, lab) in enumerate(chunk):
            tgt = torch.tensor(items[i].rests[lab][1:])
            out[i, lab] += logp[c, torch.arange(len(tgt)), tgt].sum()


def score_labels(model, tokenizer, prompts: Sequence[str], labels: Sequence[str],
                 batch_size: int = 16, delimiter: str | None = None,
                 progress: bool = False, desc: str = "scoring", share_prefix: bool = True) -> torch.Tensor:
    """Log-likelihood of each label continuation after each prompt: tensor [n, n_labels].

    ``delimiter`` goes between prompt and label (default: a space unless the
    prompt ends in whitespace). Works with any HF causal LM, PEFT-wrapped or
    hooked, in float32 or bfloat16 (log-softmax is taken in float32).
    ``share_prefix``: compute the prompts' common token prefix once (see
    :func:`score_items`); pass False under hooks that track positions per call.
    """
    labels = list(labels)
    if not labels:
        raise AffectlensError("no labels to score")
    if not prompts:
        return torch.zeros(0, len(labels), dtype=torch.float64)
    items = tokenize_pairs(tokenizer, prompts, labels, delimiter, max_positions(model))
    return score_items(model, items, len(labels), padding_id(tokenizer), batch_size, progress, desc,
                       share_prefix)


__all__ = ["score_labels", "tokenize_pairs", "score_items", "shared_prefix_length", "MIN_SHARED_PREFIX", "max_positions", "model_device", "model_name",
           "padding_id", "non_finite_error", "non_finite_weight", "text_start"]

"""Where the stimulus sits in every row of every forward call.

Positions are the hard part of hooking a black-box evaluator: batches may be
left- or right-padded, labels may be appended, generation feeds one token at a
time. ``SpanTracker`` solves this once: a pre-hook on the model (installed by
``HookSet.track``) reads the real ``input_ids``/``attention_mask`` of every
call and finds, per row, the stimulus span (image tokens, or the text between
a known template prefix and suffix) and the end of the prompt. Every hook that
edits some positions asks the tracker which positions of the current chunk to
touch. ``layout_for`` derives a prompt template's prefix and suffix tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..tasks.prompts import encode


@dataclass
class Layout:
    """How to find the stimulus inside a prompt's tokens.

    Text prompts: the template's token prefix (same for every prompt) and a
    distinctive run of suffix tokens after the stimulus. Image prompts: the
    image placeholder token id (the stimulus is every image token).
    """

    prefix_len: int = 0
    suffix_ids: tuple[int, ...] = ()
    image_token_id: int | None = None
    search_from: int = 0  # the suffix is searched for after the full template prefix
    stimulus_fraction: float | None = None  # plain text: the first share of tokens is the stimulus


@dataclass
class RowSpan:
    offset: int  # index of the first real (non-pad) token in the full sequence
    stim_start: int  # in unpadded coordinates
    stim_end: int  # exclusive
    prompt_end: int  # exclusive: positions >= stim_end and < prompt_end are the query


@dataclass
class SpanTracker:
    """Per-row stimulus spans of the current forward call (see module docstring)."""

    layout: Layout
    rows: list[RowSpan | None] = field(default_factory=list)
    seq_len: int = 0  # full length (incl. cache) after the current chunk
    chunk_start: int = 0  # full-sequence index of the current chunk's first position
    _prefill_rows: list[RowSpan | None] = field(default_factory=list)
    _prefill_mask: torch.Tensor | None = None

    def observe(self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None,
                chunk_len: int, batch: int, cached: int = 0) -> None:
        """Record the spans of a prefill call, or follow a cached continuation.

        ``cached``: tokens already in the KV cache (generation may omit the mask).
        """
        past = cached
        if attention_mask is not None:
            past = attention_mask.shape[1] - chunk_len
        if past > 0 and self._prefill_rows:
            self.chunk_start, self.seq_len = past, past + chunk_len
            self.rows = self._match_rows(attention_mask, batch)
            return
        self.chunk_start, self.seq_len = 0, chunk_len
        # span finding is host work on token ids: one copy per prefill, not a device sync per row
        input_ids = input_ids.cpu() if input_ids is not None else None
        attention_mask = attention_mask.cpu() if attention_mask is not None else None
        rows: list[RowSpan | None] = []
        for b in range(batch):
            if attention_mask is not None:
                m = attention_mask[b].bool()
                idx = torch.nonzero(m).flatten()
                off = int(idx[0]) if len(idx) else 0
                end = int(idx[-1]) + 1 if len(idx) else chunk_len
            else:
                off, end = 0, chunk_len
            ids = input_ids[b, off:end].tolist() if input_ids is not None else []
            rows.append(self._span(ids, off, end - off))
        self.rows = rows
        self._prefill_rows = list(rows)
        self._prefill_mask = attention_mask.bool().cpu() if attention_mask is not None else None

    def _match_rows(self, attention_mask: torch.Tensor | None, batch: int) -> list[RowSpan | None]:
        """Rows of a cached continuation (generation, or a scorer's re-selected batch).

        A continuation row is matched to the prefill row with the same prefix
        mask; when that is ambiguous the row gets ``None`` (steering from the
        stimulus still applies, attention amplification does not).
        """
        pm = self._prefill_mask
        if pm is None or attention_mask is None:
            same = batch == len(self._prefill_rows)
            return list(self._prefill_rows) if same else [None] * batch
        prefix = attention_mask[:, : pm.shape[1]].bool().cpu()
        out: list[RowSpan | None] = []
        for b in range(prefix.shape[0]):
            cands = {i for i in range(pm.shape[0]) if torch.equal(prefix[b], pm[i])}
            spans = {(r.offset, r.stim_start, r.stim_end, r.prompt_end)
                     for i in cands if (r := self._prefill_rows[i]) is not None}
            if len(cands) == pm.shape[0] == prefix.shape[0] and b < len(self._prefill_rows):
                out.append(self._prefill_rows[b])  # same batch (generation): keep the order
            elif len(spans) == 1:
                out.append(RowSpan(*spans.pop()))
            else:
                out.append(None)
        return out

    def _span(self, ids: list[int], off: int, n: int) -> RowSpan:
        lay = self.layout
        if lay.image_token_id is not None:
            pos = [i for i, t in enumerate(ids) if t == lay.image_token_id]
            if pos:
                return RowSpan(off, pos[0], pos[-1] + 1, n)
            return RowSpan(off, n, n, n)
        if lay.stimulus_fraction is not None:
            return RowSpan(off, 0, max(1, int(n * lay.stimulus_fraction)), n)
        start = min(lay.prefix_len, n)
        suf = list(lay.suffix_ids)
        if suf:  # the last occurrence: the template's suffix closes the prompt
            k = len(suf)
            for i in range(n - k, max(lay.search_from, start) - 1, -1):
                if ids[i : i + k] == suf:
                    return RowSpan(off, start, i, i + k)
        return RowSpan(off, start, n, n)

    def mask(self, kind: str, batch: int, device: torch.device) -> torch.Tensor:
        """Bool ``[batch, chunk]`` of positions in the current chunk.

        kind: ``from_stimulus`` (stimulus onwards, incl. generated tokens),
        ``stimulus``, ``query`` (after the stimulus up to the prompt end),
        ``last`` (last prompt token and every generated token), ``all``.
        """
        n = self.seq_len - self.chunk_start
        pos = torch.arange(self.chunk_start, self.seq_len, device=device)
        out = torch.zeros(batch, n, dtype=torch.bool, device=device)
        for b in range(batch):
            r = self.rows[b] if b < len(self.rows) else None
            if r is None:  # unmatched continuation row: only "after the prompt" kinds apply
                out[b] = kind in ("all", "from_stimulus", "last")
                continue
            p = pos - r.offset
            if kind == "all":
                out[b] = p >= 0
            elif kind == "from_stimulus":
                out[b] = p >= r.stim_start
            elif kind == "stimulus":
                out[b] = (p >= r.stim_start) & (p < r.stim_end)
            elif kind == "query":
                out[b] = (p >= r.stim_end) & (p < r.prompt_end)
            elif kind == "last":
                out[b] = p >= r.prompt_end - 1
            else:
                raise ValueError(kind)
        return out

    def key_mask(self, batch: int, kv_len: int, device: torch.device) -> torch.Tensor:
        """Bool ``[batch, kv_len]``: which key positions hold the stimulus."""
        pos = torch.arange(kv_len, device=device)
        out = torch.zeros(batch, kv_len, dtype=torch.bool, device=device)
        for b in range(batch):
            r = self.rows[b] if b < len(self.rows) else None
            if r is not None:
                p = pos - r.offset
                out[b] = (p >= r.stim_start) & (p < r.stim_end)
        return out


def layout_for(tokenizer: Any, render: Callable[[str], str], margin: int = 1) -> Layout:
    """Derive the prefix length and suffix tokens of a prompt template.

    ``render(text)`` formats a prompt around ``text``; its ids are
    :func:`affectlens.prompts.encode`'s, as everywhere. Two sentinels reveal the
    shared token prefix and suffix; ``margin`` tokens at each boundary are left
    out because BPE may merge the stimulus with its neighbours.
    """
    a, _ = encode(tokenizer, render("alpha beta gamma delta"))
    b, _ = encode(tokenizer, render("Zq 7 xylophones, quietly!"))
    p = 0
    while p < min(len(a), len(b)) and a[p] == b[p]:
        p += 1
    s = 0
    while s < min(len(a), len(b)) - p and a[-1 - s] == b[-1 - s]:
        s += 1
    suffix = tuple(a[len(a) - s + margin :]) if s > margin else ()
    return Layout(prefix_len=max(0, p - margin), suffix_ids=suffix, search_from=p)


__all__ = ["Layout", "RowSpan", "SpanTracker", "layout_for"]

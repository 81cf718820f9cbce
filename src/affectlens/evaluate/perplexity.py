"""Perplexity on held-out text: the fluency check for transferred/ablated models.

Each text (file paragraph) is scored on its own, with the tokenizer's BOS
first (:func:`affectlens.prompts.encode_text`: a document is never
chat-templated, also for chat models); texts longer
than the context are cut into windows that overlap by ``max_length -
stride`` tokens and only the new tokens of each window are scored (the
Hugging Face sliding-window recipe), so every token is predicted once.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import AffectlensError
from ..runs import Progress
from ..tasks.prompts import encode_text
from .scorer import max_positions, model_device, non_finite_error, padding_id, text_start


def _texts(path_or_texts: str | os.PathLike | Sequence[str]) -> list[str]:
    if isinstance(path_or_texts, str | os.PathLike):
        p = Path(path_or_texts)
        if not p.is_file():
            raise AffectlensError(f"perplexity text file {p} does not exist")
        raw = p.read_bytes().decode("utf-8-sig", errors="replace").replace("\r\n", "\n")
        texts = [t.strip() for t in raw.split("\n\n") if t.strip()]
    else:
        texts = [t for t in path_or_texts if t.strip()]
    if not texts:
        raise AffectlensError("no text to compute perplexity on")
    return texts


@torch.inference_mode()
def perplexity(model, tokenizer, path_or_texts: str | os.PathLike | Sequence[str],
               max_length: int | None = None, stride: int | None = None, batch_size: int = 8,
               progress: bool = False) -> dict[str, Any]:
    """``{"perplexity", "nll_per_token", "tokens", "texts"}`` over a file or a list of texts."""
    if tokenizer is None:
        raise AffectlensError("perplexity needs the model's tokenizer; the model has none")
    texts = _texts(path_or_texts)
    if max_length is not None and max_length < 2:
        raise AffectlensError(f"max_length must be at least 2 (a token and its successor), not {max_length}")
    max_length = max_length or min(max_positions(model) or 1024, 1024)
    stride = max(1, max_length // 2) if stride is None else stride
    if not 0 < stride <= max_length:
        raise AffectlensError(f"stride must be in 1..{max_length}, not {stride}")
    windows: list[tuple[list[int], int, int]] = []  # (ids, trailing targets to score, text index)
    for ti, t in enumerate(texts):
        ids = encode_text(tokenizer, t)
        if len(ids) < 2:
            continue
        prev_end = 1  # token 0 (BOS or first token) is never predicted
        for begin in range(0, len(ids), stride):
            end = min(begin + max_length, len(ids))
            n_new = end - prev_end
            if n_new > 0:
                windows.append((ids[begin:end], n_new, ti))
            prev_end = end
            if end == len(ids):
                break
    if not windows:
        raise AffectlensError("texts are too short (need at least 2 tokens)")
    dev = model_device(model)
    pad = padding_id(tokenizer)
    nll, count = 0.0, 0
    order = sorted(range(len(windows)), key=lambda i: -len(windows[i][0]))
    bar = Progress(len(windows), "perplexity", unit="window", enabled=progress)
    for s in range(0, len(order), batch_size):
        rows = [windows[i] for i in order[s:s + batch_size]]
        T = max(len(w) for w, _, _ in rows)
        batch_ids = torch.full((len(rows), T), pad, dtype=torch.long)
        mask = torch.zeros_like(batch_ids)
        for r, (w, _, _) in enumerate(rows):  # right padding: real tokens keep positions 0..n-1
            batch_ids[r, :len(w)] = torch.tensor(w)
            mask[r, :len(w)] = 1
        on_dev = batch_ids.to(dev)  # once: the forward and the gather share it
        logits = model(input_ids=on_dev, attention_mask=mask.to(dev)).logits
        logp = logits[:, :-1].float().log_softmax(-1)
        # gathered on the device; only [batch, T] log-probs leave, once per batch
        tok_lp = logp.gather(-1, on_dev[:, 1:, None])[..., 0].double().cpu()
        for r, (w, n_new, ti) in enumerate(rows):
            part = float(tok_lp[r, len(w) - 1 - n_new:len(w) - 1].sum())
            if not math.isfinite(part):
                raise non_finite_error(model, "perplexity", f"text {ti} ({text_start(texts[ti])}) has "
                                       f"log-likelihood {part}")
            nll -= part
            count += n_new
        bar.update(len(rows))
    bar.close()
    try:
        ppl = math.exp(nll / count)
    except OverflowError:
        raise non_finite_error(model, "perplexity", f"perplexity overflows (mean NLL {nll / count:.1f} "
                               "per token)") from None
    return {"perplexity": ppl, "nll_per_token": nll / count, "tokens": count,
            "texts": len(texts), "max_length": max_length, "stride": stride}


__all__ = ["perplexity"]

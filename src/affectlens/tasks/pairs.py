"""Contrast-pair files (the circuits format): each line an emotional and a neutral stimulus with one label.

Task data like any other: the evaluation loaders read a pairs file as two
examples per pair, the circuits stage reads it as contrasts, so the reader
lives here, below both.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import AffectlensError
from ..runs import parse_jsonl_lines

NEUTRAL = "neutral"


@dataclass(frozen=True)
class Pair:
    emotional: str
    neutral: str
    label: str
    query: str | None = None
    image_emotional: str | None = None
    image_neutral: str | None = None


def default_pairs_path() -> Path:
    """The bundled contrast pairs (written by ``affectlens.tasks.corpus``)."""
    try:
        from ..tasks.corpus import bundled_path
    except ImportError:
        raise AffectlensError("no bundled contrast pairs in this install; pass --pairs FILE") from None
    return Path(bundled_path("pairs"))


def load_pairs(path: str | os.PathLike | None = None, split: str | None = None) -> list[Pair]:
    """Read a pairs JSONL; every problem is one clear error naming the line."""
    p = Path(path) if path is not None else default_pairs_path()
    if not p.is_file():
        raise AffectlensError(f"pairs file {p} does not exist")
    pairs: list[Pair] = []
    text = p.read_bytes().decode("utf-8-sig", errors="replace")
    for i, row in parse_jsonl_lines(text, p):
        missing = [k for k in ("emotional", "neutral", "label") if k not in row]
        if missing:
            raise AffectlensError(f"{p}:{i}: missing field(s) {', '.join(missing)}")
        for k in ("emotional", "neutral", "label", "query", "image_emotional", "image_neutral"):
            v = row.get(k)
            if v is None and k in ("emotional", "neutral", "label"):
                raise AffectlensError(f"{p}:{i}: field '{k}' is null")
            if v is not None and not isinstance(v, str):
                raise AffectlensError(f"{p}:{i}: field '{k}' is {type(v).__name__}, not a string")
        if not row["label"].strip():
            raise AffectlensError(f"{p}:{i}: field 'label' is empty")
        for side in ("emotional", "neutral"):  # a side's stimulus is its text, or its image
            if not row[side].strip() and not (row.get(f"image_{side}") or "").strip():
                raise AffectlensError(f"{p}:{i}: field '{side}' is empty (a pair needs a text or an "
                                      f"image_{side} on each side)")
        if split is not None and row.get("split", split) != split:
            continue
        pairs.append(Pair(row["emotional"], row["neutral"], row["label"].strip().lower(),
                          row.get("query"), row.get("image_emotional"), row.get("image_neutral")))
    if not pairs:
        raise AffectlensError(f"{p} holds no pairs" + (f" in split '{split}'" if split else ""))
    for pr in pairs:
        if pr.label == NEUTRAL:
            raise AffectlensError(f"{p}: label 'neutral' is the contrast side, not an emotion")
    return pairs


def labels_of(pairs: Sequence[Pair]) -> list[str]:
    return sorted({p.label for p in pairs})


def answer_labels(pairs: Sequence[Pair]) -> list[str]:
    """The closed label set a prompt offers: the pairs' emotions plus neutral."""
    return [*labels_of(pairs), NEUTRAL]

"""Which file holds which split, and what kind of data a bare path is.

Public data sets ship their splits in two ways: one file per split, named
after it (MELD's ``train_sent_emo.csv``/``dev_sent_emo.csv``/``test_sent_emo.csv``,
dair-ai emotion's ``train``/``validation``/``test.jsonl``, GoEmotions'
``train``/``dev``/``test.tsv``), or one file with a ``split`` column (EmoBank).
Both are read here by the split's name, so ``split=train`` means the same
thing for every loader, and a task's other splits can be found from the
evaluated one (few-shot examples must never come from the evaluated split).
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

from ..errors import AffectlensError

SPLITS = ("train", "dev", "test")
# Names a split goes by in public releases (dair-ai emotion says "validation").
_SYNONYMS = {"train": ("train", "training"), "dev": ("dev", "validation", "val", "valid"), "test": ("test",)}
_TOKEN = re.compile(r"([_.\-])")
DATA_EXTS = (".csv", ".tsv", ".jsonl", ".json", ".txt")


def canonical_split(name: str) -> str:
    """``train``/``dev``/``test`` for a split name or synonym (``validation`` -> ``dev``)."""
    key = str(name).strip().lower()
    for split, names in _SYNONYMS.items():
        if key in names:
            return split
    raise AffectlensError(f"unknown split '{name}'; choose from {', '.join(SPLITS)} (or validation/val for dev)")


def split_of_name(path: Path) -> str | None:
    """The split a file's name says (``dev_sent_emo.csv`` -> ``dev``), or None."""
    found = {s for tok in _TOKEN.split(path.stem.lower()) for s, names in _SYNONYMS.items() if tok in names}
    return found.pop() if len(found) == 1 else None


def split_file(directory: Path, split: str, exts: tuple[str, ...] = DATA_EXTS) -> Path | None:
    """The one data file in ``directory`` named after ``split``; None when there is none.

    Two candidates (``train.csv`` and ``train.jsonl``) are an error, not a guess.
    """
    split = canonical_split(split)
    found = [f for f in sorted(directory.iterdir())
             if f.is_file() and f.suffix.lower() in exts and split_of_name(f) == split]
    if len(found) > 1:
        raise AffectlensError(f"{directory}: several files for split '{split}': {', '.join(f.name for f in found)}; "
                              "name the file instead of the directory")
    return found[0] if found else None


def sibling_file(path: Path, split: str) -> Path | None:
    """The file for ``split`` beside ``path``, named as ``path`` with its split word replaced."""
    if split_of_name(path) is None:
        return None
    parts = _TOKEN.split(path.stem)
    for i, tok in enumerate(parts):
        if tok.lower() in {n for names in _SYNONYMS.values() for n in names}:
            for name in _SYNONYMS[canonical_split(split)]:
                cand = path.with_name("".join([*parts[:i], name, *parts[i + 1:]]) + path.suffix)
                if cand.is_file():
                    return cand
    return None


def _head(path: Path, n: int = 4096) -> str:
    with open(path, "rb") as f:
        return f.read(n).decode("utf-8-sig", errors="replace")


_TEXT_COLS = ("text", "utterance", "sentence", "content")
_LABEL_COLS = ("label", "emotion", "label_text")
_SCORE_COLS = ("score", "valence", "sentiment_score")


def _columns_spec(path: Path, cols: list[str], extra: str = "") -> str | None:
    """A spec from a header (CSV columns or JSONL keys), or None when no known layout fits."""
    low = {c.strip().lower(): c.strip() for c in cols}
    ext = path.suffix.lower()
    if {"utterance", "emotion", "sentiment"} <= set(low):  # MELD; EmoryNLP has no Sentiment column
        return f"meld:{path}{extra}"
    if {"v", "a", "d", "text"} <= set(low):  # EmoBank: valence 1-5, neutral at 3
        return f"sentiment:{path},score={low['v']},center=3{extra}"
    texts = [low[c] for c in _TEXT_COLS if c in low]
    labels = [low[c] for c in _LABEL_COLS if c in low]
    scores = [low[c] for c in _SCORE_COLS if c in low]
    if len(texts) != 1:
        return None
    kind = "jsonl" if ext in (".jsonl", ".json") else "csv"
    if len(labels) >= 1 and not scores:
        if kind == "jsonl" and set(labels) <= {"label", "label_text"}:
            return f"jsonl:{path}{extra}"  # the loader prefers label_text to label ids
        if len(labels) == 1:
            opts = "" if (texts[0], labels[0]) == ("text", "label") else f",text={texts[0]},label={labels[0]}"
            return f"{kind}:{path}{opts}{extra}"
    if len(scores) == 1 and not labels:
        return f"sentiment:{path},text={texts[0]},score={scores[0]}{extra}"
    return None


def infer_spec(path: Path) -> str:
    """A ``KIND:PATH,opt=...`` spec for a bare path, by extension and header; ambiguous is an error.

    The error says what was seen and which explicit spec would read it.
    """
    if not path.exists():
        raise AffectlensError(f"data file {path} does not exist")
    if path.is_dir():
        return _infer_dir(path)
    ext = path.suffix.lower()
    head = _head(path)
    first = head.splitlines()[0] if head.strip() else ""
    if not first and ext in (".jsonl", ".json", ".csv", ".tsv"):
        return f"{'jsonl' if ext in ('.jsonl', '.json') else 'csv'}:{path}"  # its reader names the problem
    if not first:
        raise AffectlensError(f"data file {path} is empty")
    extra = ""
    if ext in (".jsonl", ".json"):
        try:
            row = json.loads(first)
        except json.JSONDecodeError:
            row = None
        if not isinstance(row, dict):
            raise AffectlensError(f"cannot tell the kind of {path}: its first line is not a JSON object; "
                                  f"expected JSONL rows such as {{\"text\", \"label\"}}")
        seen = ", ".join(row)
        spec = _columns_spec(path, list(row))
    elif ext == ".tsv" and _goemotions_line(first) and any((path.parent / n).is_file()
                                                           for n in ("labels.txt", "emotions.txt")):
        return f"goemotions:{path}"
    elif ext in (".csv", ".tsv", ".txt"):
        delim = _sniff(first, ext)
        cols = next(csv.reader(io.StringIO(first), delimiter=delim))
        seen = ", ".join(cols) + (f" (separated by {delim!r})" if delim != "," else "")
        extra = "" if delim == ("\t" if ext == ".tsv" else ",") else (",delimiter=tab" if delim == "\t"
                                                                       else f",delimiter={delim}")
        spec = _columns_spec(path, cols, extra)
        if spec is None and ext == ".txt":
            return f"ppl:{path}"
    else:
        raise AffectlensError(f"cannot tell the kind of {path} from its extension '{ext}'; "
                              "use KIND:PATH (csv:, jsonl:, meld:, goemotions:, sentiment:, ppl:)")
    if spec is None:
        raise AffectlensError(f"cannot tell the kind of {path}: columns {seen}; use e.g. "
                              f"csv:{path}{extra},text=COLUMN,label=COLUMN (or sentiment:{path}{extra},text=COLUMN,score=COLUMN)")
    return spec


def _goemotions_line(line: str) -> bool:
    cols = line.split("\t")
    return len(cols) >= 2 and bool(re.fullmatch(r"\d+(,\d+)*", cols[1].strip()))


def _sniff(first: str, ext: str) -> str:
    """The delimiter of a header line: the most frequent of tab, ``|``, ``;`` and comma."""
    if ext == ".tsv":
        return "\t"
    counts = {d: first.count(d) for d in (",", "\t", "|", ";")}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] > counts[","] else ","


def _infer_dir(path: Path) -> str:
    files = sorted(f for f in path.iterdir() if f.is_file() and f.suffix.lower() in DATA_EXTS)
    if any((path / n).is_file() for n in ("labels.txt", "emotions.txt")) and any(f.suffix == ".tsv" for f in files):
        return f"goemotions:{path}"
    per_split = {s: split_file(path, s) for s in SPLITS}
    present = [f for f in per_split.values() if f is not None]
    if not present:
        raise AffectlensError(f"cannot tell the kind of directory {path}: no train/dev/test files "
                              f"(seen: {', '.join(f.name for f in files) or 'none'}); name a file")
    spec = infer_spec(present[0])
    kind, rest = spec.split(":", 1)
    return f"{kind}:{path}{rest[len(str(present[0])):]}"


__all__ = ["SPLITS", "canonical_split", "infer_spec", "sibling_file", "split_file", "split_of_name"]

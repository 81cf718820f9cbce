"""Loaders: local files -> a list of :class:`Example`, strictly.

Real emotion files are messy (MELD has curly quotes, mojibake and stray
bytes); we read text as it is (undecodable bytes become U+FFFD) rather than
cleaning it, so scores stay comparable with other tools. Labels outside the
declared set are an error that lists them: silently dropping rows would
change the benchmark.
"""

from __future__ import annotations

import math
import random
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import AffectlensError
from .labelmaps import load_label_map, mapped_labels
from .spec import EMOTIONS, SENTIMENTS2, SENTIMENTS3, TaskSpec
from .tables import (
    FIELD_LIMIT,
    SKIPPED,
    Row,
    data_file,
    read_rows,
    read_table,
    read_text,
    spec_path,
    split_filter,
)


@dataclass
class Example:
    """One item: the text, its gold label (closed set) and, for sentiment, a signed score."""

    text: str
    label: str | None = None
    score: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def gold(self) -> str:
        """The label of a closed-set example (perplexity texts have none)."""
        if self.label is None:
            raise AffectlensError(f"example {self.text[:40]!r} has no label; a closed-set task needs one")
        return self.label


@dataclass
class LoadedTask:
    """Examples plus the label set they were validated against."""

    spec: TaskSpec
    examples: list[Example]
    labels: tuple[str, ...]
    dropped: int = 0  # rows removed by the protocol (sentiment 0, multi-label, labelmap null), not by errors
    skipped: int = 0  # malformed rows dropped under bad_rows=skip|report


def _where(r: dict) -> str:
    return getattr(r, "where", "a row")


def _scalar(r: dict, key: str, path: Path, what: str, expected: str) -> Any:
    """A row's field that must be a string or a number: null and containers are refused, naming the row."""
    v = r[key]
    if v is None:
        raise AffectlensError(f"{path}: {_where(r)}: {what} '{key}' is null")
    if isinstance(v, dict | list | bool):
        raise AffectlensError(f"{path}: {_where(r)}: {what} '{key}' is {type(v).__name__}, not {expected}")
    return v


def _text(r: dict, key: str, path: Path) -> str:
    """The text field of a row: a string (numbers are read as text); null is refused, and so is a text
    over ``FIELD_LIMIT`` (a JSONL row gets the limit a CSV field gets while it is read)."""
    text = str(_scalar(r, key, path, "text", "a string"))
    if len(text) > FIELD_LIMIT:
        raise AffectlensError(f"{path}: {_where(r)}: text '{key}' has {len(text):,} characters, over the limit "
                              f"of {FIELD_LIMIT:,} for one field")
    return text


def _label(r: dict, key: str, path: Path) -> str:
    """The label of a row, normalised; null, empty and non-scalar labels are refused."""
    lab = _norm(_scalar(r, key, path, "label", "a label"))
    if not lab:
        raise AffectlensError(f"{path}: {_where(r)}: label '{key}' is empty")
    return lab


def _column(rows: Sequence[dict], key: str, path: Path, what: str) -> None:
    if rows and key not in rows[0]:
        cols = ", ".join(str(c) for c in rows[0])
        raise AffectlensError(f"{path}: no {what} column '{key}' (columns: {cols})")


def _check_labels(examples: list[Example], labels: tuple[str, ...], where: str) -> None:
    bad = Counter(e.label for e in examples if e.label not in labels)
    if bad:
        listed = ", ".join(f"'{k}' ({v}x)" for k, v in bad.most_common(10))
        raise AffectlensError(f"{where}: labels outside the declared set {'|'.join(labels)}: {listed}")


def _norm(label: Any) -> str:
    return str(label).strip().lower()


def load_bundled(spec: TaskSpec) -> tuple[list[Example], tuple[str, ...] | None, int]:
    try:
        from . import corpus
    except ImportError:
        raise AffectlensError("the bundled corpus (affectlens.tasks.corpus) is not available in this install") from None
    return load_jsonl_file(Path(corpus.bundled_path(spec_path(spec))), spec)


def _image(value: Any, path: Path, where: str, key: str) -> dict[str, Any]:
    """``{"image": file}`` of a row's image field (relative to the data file's folder); checked now."""
    if value is None or value == "":
        return {}  # a text-only row (empty, null or absent): scored as text
    if not isinstance(value, str):
        raise AffectlensError(f"{path}: {where}: image '{key}' is {type(value).__name__}, not a path")
    img = Path(value) if Path(value).is_absolute() else path.parent / value
    if not img.is_file():
        raise AffectlensError(f"{path}: {where}: image {img} does not exist")
    return {"image": str(img)}


def _examples(rows: Sequence[dict], spec: TaskSpec, path: Path, text_key: str, label_key: str) -> list[Example]:
    _column(rows, text_key, path, "text")
    _column(rows, label_key, path, "label")
    img = spec.option("image")
    if img is not None:
        _column(rows, img, path, "image")
    return [Example(text=_text(r, text_key, path), label=_label(r, label_key, path),
                    meta=_image(r.get(img), path, _where(r), img) if img is not None else {}) for r in rows]


def load_jsonl_file(path: Path, spec: TaskSpec) -> tuple[list[Example], None, int]:
    rows = split_filter(read_rows(path), spec, path)
    label_key = spec.option("label") or ("label_text" if rows and "label_text" in rows[0] else "label")
    return _examples(rows, spec, path, spec.option("text", "text"), label_key), None, 0


def load_csv(spec: TaskSpec) -> tuple[list[Example], None, int]:
    path = data_file(spec)
    rows = split_filter(read_table(spec), spec, path)
    return _examples(rows, spec, path, spec.option("text", "text"), spec.option("label", "label")), None, 0


def load_pairs(spec: TaskSpec) -> tuple[list[Example], tuple[str, ...], int]:
    """Contrast pairs (the circuits format): each pair is two examples, the emotional side with its
    emotion and the neutral side with ``neutral``, each with its image when it has one."""
    from .pairs import NEUTRAL, answer_labels
    from .pairs import load_pairs as read_pairs

    path = Path(spec_path(spec))
    pairs = read_pairs(path, spec.option("split"))
    if any(p.query for p in pairs):
        raise AffectlensError(f"{path}: pairs with their own 'query' are not evaluable as a task; "
                              "drop the field (the task's question is the default one)")
    out = []
    for i, p in enumerate(pairs, 1):
        for text, label, im, side in ((p.emotional, p.label, p.image_emotional, "image_emotional"),
                                      (p.neutral, NEUTRAL, p.image_neutral, "image_neutral")):
            out.append(Example(text=text, label=label, meta=_image(im, path, f"pair {i}", side)))
    return out, tuple(answer_labels(pairs)), 0


def load_jsonl(spec: TaskSpec) -> tuple[list[Example], None, int]:
    return load_jsonl_file(data_file(spec), spec)


def _meld_rows(spec: TaskSpec) -> tuple[Path, list[Row]]:
    path = data_file(spec)
    rows = split_filter(read_table(spec), spec, path)
    _column(rows, spec.option("text", "Utterance"), path, "text")
    return path, rows


def load_meld(spec: TaskSpec) -> tuple[list[Example], tuple[str, ...], int]:
    path, rows = _meld_rows(spec)
    text_key, label_key = spec.option("text", "Utterance"), spec.option("label", "Emotion")
    _column(rows, label_key, path, "label")
    out = [Example(text=_text(r, text_key, path), label=_label(r, label_key, path),
                   meta={k: r.get(k) for k in ("Dialogue_ID", "Utterance_ID", "Speaker") if k in r})
           for r in rows]
    return out, EMOTIONS, 0


_POLARITY = {"positive": 1.0, "negative": -1.0, "neutral": 0.0}


def load_meld_sentiment(spec: TaskSpec) -> tuple[list[Example], tuple[str, ...], int]:
    path, rows = _meld_rows(spec)
    text_key, label_key = spec.option("text", "Utterance"), spec.option("label", "Sentiment")
    _column(rows, label_key, path, "label")
    out = []
    for r in rows:
        lab = _label(r, label_key, path)
        out.append(Example(text=_text(r, text_key, path), label=lab, score=_POLARITY.get(lab)))
    return out, SENTIMENTS3, 0


def load_goemotions(spec: TaskSpec) -> tuple[list[Example], tuple[str, ...], int]:
    """``text \\t id[,id...] \\t comment_id`` with ids into ``labels.txt`` beside it."""
    p = Path(spec_path(spec))
    split = spec.option("split", "test")
    tsv = p / f"{split}.tsv" if p.is_dir() else p
    where = p if p.is_dir() else p.parent
    # labels.txt (monologg's redistribution) or emotions.txt (google-research's release)
    labels_file = next((where / n for n in ("labels.txt", "emotions.txt") if (where / n).is_file()),
                       where / "labels.txt")
    if not p.exists():
        raise AffectlensError(f"GoEmotions path {p} does not exist")
    if not labels_file.is_file():
        raise AffectlensError(f"GoEmotions needs {labels_file} or emotions.txt beside it (one label name per line)")
    names = [ln.strip().lower() for ln in read_text(labels_file).splitlines() if ln.strip()]
    multi = spec.option("multi", "single")
    if multi not in ("single", "first"):
        raise AffectlensError(f"goemotions option multi must be single or first, not '{multi}'")
    out, dropped = [], 0
    for i, line in enumerate(read_text(tsv).splitlines(), 1):
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) < 2:
            raise AffectlensError(f"{tsv}:{i}: expected 'text<TAB>label_ids[<TAB>id]'")
        try:
            ids = [int(x) for x in cols[1].split(",") if x.strip()]
        except ValueError:
            raise AffectlensError(f"{tsv}:{i}: label ids '{cols[1]}' are not integers") from None
        bad = [x for x in ids if not 0 <= x < len(names)]
        if bad or not ids:
            raise AffectlensError(f"{tsv}:{i}: label id(s) {bad or cols[1]!r} outside labels.txt (0..{len(names) - 1})")
        if len(ids) > 1 and multi == "single":
            dropped += 1
            continue
        out.append(Example(text=cols[0], label=names[ids[0]],
                           meta={"all_labels": [names[x] for x in ids]} if len(ids) > 1 else {}))
    return out, tuple(names), dropped


def load_sentiment(spec: TaskSpec) -> tuple[list[Example], tuple[str, ...], int]:
    """Continuous valence -> polarity; ``|score - center| <= margin`` is dropped (MER-UniBench drops 0)."""
    path = data_file(spec)
    rows = split_filter(read_table(spec), spec, path)
    text_key, score_key = spec.option("text", "text"), spec.option("score", "score")
    _column(rows, text_key, path, "text")
    _column(rows, score_key, path, "score")
    try:
        center = float(spec.option("center", 0.0))
        margin = float(spec.option("margin", 0.0))
    except ValueError:
        raise AffectlensError(f"task {spec.name}: center and margin must be numbers") from None
    three = spec.labels == SENTIMENTS3
    out, dropped = [], 0
    for r in rows:
        text = _text(r, text_key, path)
        try:
            if isinstance(r[score_key], bool):
                raise TypeError
            s = float(r[score_key])
        except (TypeError, ValueError):
            raise AffectlensError(f"{path}: {_where(r)}: score '{r[score_key]}' is not a number") from None
        if not math.isfinite(s):
            raise AffectlensError(f"{path}: {_where(r)}: score is {s}")
        d = s - center
        if abs(d) <= margin and not three:
            dropped += 1
            continue
        label = "neutral" if abs(d) <= margin else ("positive" if d > 0 else "negative")
        out.append(Example(text=text, label=label, score=0.0 if label == "neutral" else d))
    return out, (SENTIMENTS3 if three else SENTIMENTS2), dropped


def load_text(spec: TaskSpec) -> tuple[list[Example], None, int]:
    """Plain text for perplexity: paragraphs separated by blank lines."""
    text = read_text(Path(spec_path(spec)))
    paras = [p.strip() for p in text.replace("\r\n", "\n").split("\n\n") if p.strip()]
    return [Example(text=p) for p in paras], None, 0


_LOADERS = {
    "bundled": load_bundled,
    "jsonl": load_jsonl,
    "csv": load_csv,
    "meld": load_meld,
    "meld_sentiment": load_meld_sentiment,
    "goemotions": load_goemotions,
    "sentiment": load_sentiment,
    "text": load_text,
    "pairs": load_pairs,
}


def load_task(spec: TaskSpec | str, limit: int | None = None) -> LoadedTask:
    """Load and validate a task; ``limit`` keeps the first N examples (after validation of all).

    Order of work: read (``bad_rows``), split, label map (``labelmap``), label
    check, class balancing (``balance``/``per_class``, seeded), then ``limit``.
    """
    from .spec import parse_task

    spec = parse_task(spec)
    if spec.loader not in _LOADERS:
        raise AffectlensError(f"task {spec.name}: unknown loader '{spec.loader}'")
    skipped: list[str] = []
    token = SKIPPED.set(skipped)
    try:
        examples, file_labels, dropped = _LOADERS[spec.loader](spec)
    finally:
        SKIPPED.reset(token)
    if skipped and spec.option("bad_rows", "").lower() == "report":
        shown = ", ".join(skipped[:10]) + (f", ... ({len(skipped) - 10} more)" if len(skipped) > 10 else "")
        print(f"task {spec.name}: skipped {len(skipped)} malformed row(s): {shown}", file=sys.stderr)
    if spec.option("labelmap"):
        examples, file_labels, n = _apply_label_map(spec, examples)
        dropped += n
    if not examples:
        raise AffectlensError(f"task {spec.name}: no examples in {spec.path}"
                              + (f" ({dropped} dropped by the protocol)" if dropped else ""))
    labels = spec.labels or file_labels
    if spec.kind != "perplexity":
        if labels is None:  # declared by the data itself: the set over the whole file
            labels = tuple(sorted({e.label for e in examples if e.label is not None}))
        _check_labels(examples, tuple(labels), f"task {spec.name}")
        if len(labels) < 2:
            raise AffectlensError(f"task {spec.name}: needs at least 2 labels, found {list(labels)}")
    if spec.kind == "sentiment":  # categorical polarity labels -> signed score (generative protocol)
        for e in examples:
            if e.score is None:
                e.score = _POLARITY.get(e.gold)
    if str(spec.option("drop_train_rows", "false")).lower() in ("true", "1", "yes"):
        examples, n = drop_train_rows(examples, spec)
        dropped += n
    examples = balance_examples(examples, spec)
    if limit is not None:
        if limit < 1:
            raise AffectlensError(f"--limit must be positive, not {limit}")
        examples = examples[:limit]
    return LoadedTask(spec=spec, examples=examples, labels=tuple(labels or ()), dropped=dropped,
                      skipped=len(skipped))


def _apply_label_map(spec: TaskSpec, examples: list[Example]) -> tuple[list[Example], tuple[str, ...], int]:
    table = load_label_map(str(spec.option("labelmap")))
    unknown = Counter(e.label for e in examples if e.label not in table)
    if unknown:
        listed = ", ".join(f"'{k}' ({v}x)" for k, v in unknown.most_common(10))
        raise AffectlensError(f"task {spec.name}: labelmap {spec.option('labelmap')} does not map {listed}")
    kept = []
    for e in examples:
        target = table[e.gold]
        if target is not None:
            e.meta.setdefault("raw_label", e.label)
            e.label = target
            kept.append(e)
    return kept, mapped_labels(table), len(examples) - len(kept)


def drop_train_rows(examples: list[Example], spec: TaskSpec) -> tuple[list[Example], int]:
    """``drop_train_rows=true``: the rows whose text (normalised as the train-overlap check does) also occurs
    in the same data set's train split, dropped -- real sets repeat texts across splits (dair-ai emotion's test
    split holds 11 of its train texts), and a row a model was trained on is never scored."""
    from .tables import sibling_split
    from .trained import normalise

    if spec.option("split") == "train":
        raise AffectlensError(f"task {spec.name}: drop_train_rows=true on the train split would drop every row")
    train = sibling_split(spec, "train")
    if train is None:
        raise AffectlensError(f"task {spec.name}: drop_train_rows=true needs a train split beside it, and the "
                              "data has none")
    # every train row counts, not the sample the test spec's balance/per_class would take of it
    whole = train.with_options(drop_train_rows=None, balance=None, per_class=None, seed=None)
    seen = {normalise(e.text) for e in load_task(whole).examples}
    kept = [e for e in examples if normalise(e.text) not in seen]
    return kept, len(examples) - len(kept)


def balance_examples(examples: list[Example], spec: TaskSpec) -> list[Example]:
    """``balance=true``: every class cut to the rarest class's count; ``per_class=N``: at most N each.

    The kept rows are a seeded random sample per class (``seed=``, default 0),
    returned in file order so ``--limit`` and batching stay deterministic.
    """
    cap = int(spec.option("per_class")) if spec.option("per_class") else None
    if str(spec.option("balance", "false")).lower() in ("true", "1", "yes"):
        rarest = min(Counter(e.label for e in examples).values())
        cap = rarest if cap is None else min(cap, rarest)
    if cap is None:
        return examples
    rng = random.Random(int(spec.option("seed", 0)))
    by_label: dict[str | None, list[int]] = {}
    for i, e in enumerate(examples):
        by_label.setdefault(e.label, []).append(i)
    keep = sorted(i for idx in by_label.values() for i in (rng.sample(idx, cap) if len(idx) > cap else idx))
    return [examples[i] for i in keep]


def load_examples(spec: TaskSpec | str, limit: int | None = None) -> list[Example]:
    """Just the examples of a task (validated)."""
    return load_task(spec, limit).examples


def load_rows(spec: TaskSpec | str, limit: int | None = None) -> list[tuple[str, str]]:
    """``(text, label)`` rows of a labelled task: what training and few-shot prompts read."""
    task = load_task(spec, limit)
    if task.spec.kind == "perplexity":
        raise AffectlensError(f"task {task.spec.name} has no labels (perplexity text)")
    return [(e.text, e.gold) for e in task.examples]


__all__ = ["Example", "LoadedTask", "balance_examples", "load_examples", "load_rows", "load_task", "SENTIMENTS2",
           "SENTIMENTS3"]

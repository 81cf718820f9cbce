"""Which rows train, which rows score, and the record that keeps the two apart.

A task *name* (``emotion``) trains at its train split and scores at its test
split, so ``tune --data emotion`` and ``evaluate --task emotion`` never read
the same rows; so does a directory of split files, or a file whose ``split``
column holds a train split. A file named after its split, or a spec with
``split=``, means what it says.

Names and paths can still point at the same rows (a copied file, a train file
passed as a task), so what a model was trained on is recorded with it:
``affectlens_tune.json``'s ``train_rows`` holds a digest of every distinct
row text (``DIGEST_BYTES`` bytes of the SHA-256 of the normalised text, sorted,
base64), the spec and the row count. Scoring compares the scored rows' digests
with it, whatever the files are called, and refuses the rows a model saw.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import AffectlensError
from .spec import TaskSpec, parse_task, registered_tasks
from .splits import split_of_name
from .tables import sibling_split, split_values

FORMAT = "affectlens-train-rows/1"
DIGEST_BYTES = 8  # 2^64 digests: a false match among a million rows each way is ~1e-7
DIGEST = f"sha256(NFKC, casefolded, whitespace-collapsed text)[:{DIGEST_BYTES}]"
INFO_FILE = "affectlens_tune.json"  # beside every adapter or model dir tune writes
RECORD_KEY = "train_rows"
_TABLE_LOADERS = ("csv", "jsonl", "meld", "meld_sentiment", "sentiment")  # files that may carry a split column
_SPACE = re.compile(r"\s+")


def training_spec(data: str | TaskSpec) -> tuple[TaskSpec, str | None]:
    """The spec training reads for ``data``, and a note when it has no train split to read.

    A registered task name, a directory of split files and a file with a
    ``split`` column read their train split; everything else (a bundled file
    such as ``emotion_test``, a file named after a split, a spec with
    ``split=``, a plain file) is read as given.
    """
    spec = parse_task(data)
    named = not isinstance(data, TaskSpec) and str(data).strip() in registered_tasks()
    if spec.option("split") is not None or spec.path is None or spec.loader in ("text", "pairs"):
        return spec, None
    if spec.loader == "bundled" and not named:
        return spec, None
    path = Path(spec.path)
    if spec.loader != "bundled" and not path.is_dir():
        if split_of_name(path) is not None and not named:
            return spec, None  # the file's name says its split
        splits = _splits(spec)
        if "train" in splits:
            return spec.with_options(split="train"), None
        if splits:
            return spec, (f"{spec.name} has no train rows in its split column ({', '.join(sorted(splits))}); "
                          "training on all its rows")
        if not named:
            return spec, None  # one plain file: all of it trains
    train = sibling_split(spec, "train")
    if train is not None:
        return train, None
    what = "its test split" if path.is_dir() else f"{spec.path}"
    return spec, f"{spec.name} has no train split; training on {what} as given"


def _splits(spec: TaskSpec) -> set[str]:
    """The split column's splits of a table file; none when it has no column or cannot be read (its
    loader then says why, in its own words)."""
    if spec.loader not in _TABLE_LOADERS:
        return set()
    try:
        return split_values(spec)
    except AffectlensError:
        return set()


def recorded_as(data: str | TaskSpec, spec: TaskSpec, path: Path) -> str:
    """How a run names what it trained on: the file of a plain JSONL/bundled spec, else the spec as
    written (with the train split ``data`` was resolved to)."""
    if spec.loader in ("jsonl", "bundled") and not spec.options:
        return str(path)
    given = parse_task(data)
    if spec == given:
        return str(data)
    if isinstance(data, str) and spec.path == given.path:
        return f"{data},split={spec.option('split')}"
    return spec.name


def normalise(text: str) -> str:
    """What two rows must share to count as one: NFKC, case-folded, whitespace collapsed and trimmed."""
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def row_digest(text: str) -> bytes:
    return hashlib.sha256(normalise(text).encode("utf-8")).digest()[:DIGEST_BYTES]


@dataclass(frozen=True)
class TrainRows:
    """The rows a model was trained on, as digests of their texts; ``source`` is where it was read."""

    data: str
    rows: int
    digests: frozenset[bytes]
    source: str = ""

    @classmethod
    def of(cls, texts: Iterable[str], data: str) -> TrainRows:
        texts = list(texts)
        return cls(data, len(texts), frozenset(row_digest(t) for t in texts))

    def to_json(self) -> dict[str, Any]:
        """The record as ``affectlens_tune.json`` keeps it (8 bytes per distinct row, ~11 base64 characters)."""
        blob = b"".join(sorted(self.digests))
        return {"format": FORMAT, "digest": DIGEST, "data": self.data, "rows": self.rows,
                "unique": len(self.digests), "hashes": base64.b64encode(blob).decode("ascii")}

    @classmethod
    def from_json(cls, rec: Any, source: str) -> TrainRows:
        bad = AffectlensError(f"{source}: '{RECORD_KEY}' is not a {FORMAT} record; retune, or pass "
                              "--allow-train-overlap to score without the check")
        if not isinstance(rec, dict) or rec.get("format") != FORMAT or not isinstance(rec.get("hashes"), str):
            raise bad
        try:
            blob = base64.b64decode(rec["hashes"], validate=True)
        except (binascii.Error, ValueError):
            raise bad from None
        if len(blob) % DIGEST_BYTES:
            raise bad
        digests = frozenset(blob[i:i + DIGEST_BYTES] for i in range(0, len(blob), DIGEST_BYTES))
        rows = rec.get("rows")
        return cls(str(rec.get("data", "")), rows if isinstance(rows, int) else len(digests), digests, source)

    def count(self, texts: Iterable[str]) -> int:
        """How many of ``texts`` (each row counted) were trained on."""
        return sum(row_digest(t) in self.digests for t in texts)


def read_train_rows(model_dir: str | Path) -> tuple[bool, TrainRows | None]:
    """``(tuned by affectlens, its record)`` of a model or adapter dir; a dir tuned before records has none."""
    info = Path(model_dir) / INFO_FILE
    if not info.is_file():
        return False, None
    try:
        doc = json.loads(info.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise AffectlensError(f"{info} is not readable JSON; cannot tell which rows it was trained on") from None
    rec = doc.get(RECORD_KEY) if isinstance(doc, dict) else None
    return True, None if rec is None else TrainRows.from_json(rec, str(model_dir))


def records_of(dirs: Iterable[str | Path]) -> tuple[list[TrainRows], list[str]]:
    """The train-row records of the tuned dirs among ``dirs``, and the tuned dirs that carry none."""
    records: list[TrainRows] = []
    unchecked: list[str] = []
    for d in dirs:
        if not Path(d).is_dir():
            continue
        tuned, rec = read_train_rows(d)
        if rec is not None:
            records.append(rec)
        elif tuned:
            unchecked.append(str(d))
    return records, unchecked


@dataclass
class Overlap:
    """The scored rows of each task that some model here was trained on (``allowed``: scored anyway)."""

    trained: list[TrainRows]
    tasks: dict[str, tuple[int, int]] = field(default_factory=dict)  # task -> (rows scored, rows trained on)
    unchecked: list[str] = field(default_factory=list)  # tuned dirs without a record
    allowed: bool = False

    def first(self) -> tuple[str, int, int] | None:
        return next(((t, n, k) for t, (n, k) in self.tasks.items() if k), None)

    def to_json(self) -> dict[str, Any]:
        """What a manifest and ``scores.json`` keep: every task's count (0 normally) and what was compared."""
        return {"allowed": self.allowed, "digest": DIGEST,
                "trained_on": [{"model": r.source, "data": r.data, "rows": r.rows} for r in self.trained],
                "tasks": {t: {"rows": n, "overlap": k} for t, (n, k) in self.tasks.items()},
                **({"unchecked": self.unchecked} if self.unchecked else {})}


def count_overlap(trained: Sequence[TrainRows], tasks: Sequence[tuple[str, Sequence[str]]],
                  unchecked: Sequence[str] = ()) -> Overlap:
    """Per task ``(name, texts)``: its rows and how many of them any of ``trained`` saw."""
    seen = frozenset().union(*(r.digests for r in trained))
    out = Overlap(list(trained), unchecked=list(unchecked))
    for name, texts in tasks:
        out.tasks[name] = (len(texts), sum(row_digest(t) in seen for t in texts))
    return out


def refuse_overlap(ov: Overlap, who: str, owner: str, how: str, hint: str | None = None) -> None:
    """One line naming the first task whose scored rows were trained on, unless ``ov.allowed``."""
    hit = ov.first()
    if hit is None or ov.allowed:
        return
    task, n, k = hit
    where = ", ".join(r.source for r in ov.trained)
    extra = f" ({hint})" if hint else ""
    raise AffectlensError(f"{who}: {k} of {n} rows of task '{task}' were in {owner} training data ({where}){extra}; "
                          f"{how} to score them anyway")


def split_hint(spec: TaskSpec) -> str | None:
    """Advice for a scored spec that reads every row of a file whose split column has a test split."""
    if spec.option("split") is not None or spec.loader not in _TABLE_LOADERS or spec.path is None:
        return None
    p = Path(spec.path)
    if p.is_dir() or split_of_name(p) is not None or "test" not in _splits(spec):
        return None
    return "it reads every split of its file; add split=test to score the test split alone"


__all__ = ["DIGEST", "DIGEST_BYTES", "FORMAT", "INFO_FILE", "RECORD_KEY", "Overlap", "TrainRows", "count_overlap",
           "normalise", "read_train_rows", "recorded_as", "records_of", "refuse_overlap", "row_digest", "split_hint", "training_spec"]

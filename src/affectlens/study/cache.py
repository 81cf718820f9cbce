"""The study's stage cache: one result file per stage, keyed by the fingerprint of its inputs.

A study dir holds ``stages/<stage>/result.json`` = ``{"fingerprint", "result",
"seconds"}``, each written atomically when its stage finishes, and the
stage's own work (adapters, grid dirs, circuits runs) beside it. A stage's
fingerprint hashes its slice of the config, the *content* of the files it
reads (base model, data, tasks) and the fingerprints of the stages it reads,
so a killed study resumes at the first unfinished stage and a changed config
recomputes exactly the stages that depend on the change. The report files
(``study.json``, ``report.html`` ...) are re-made from the cache every run.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

from ..errors import AffectlensError

MARKER = "stages/study.json"
MARKER_KIND = "affectlens-study"


def fingerprint(*parts: Any) -> str:
    """A short digest of JSON-able parts (keys sorted, so dict order never matters)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def is_study_dir(out: Path) -> bool:
    m = out / MARKER
    if not m.is_file():
        return False
    try:
        return json.loads(m.read_text(encoding="utf-8")).get("kind") == MARKER_KIND
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return False


def check_study_out(out: Path, force: bool) -> bool:
    """Whether ``out`` is resumed. An existing non-study output needs ``force`` (it is then replaced)."""
    if out.exists() and not out.is_dir():
        raise AffectlensError(f"output {out} exists and is not a directory")
    if not out.exists() or not any(out.iterdir()):
        return False
    if is_study_dir(out):
        return True
    if not force:
        raise AffectlensError(f"output {out} already exists and is not a study dir; pass --force to replace it")
    return False


class StageStore:
    """Reads and writes ``stages/<stage>/result.json`` under a study dir."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.stages = root / "stages"

    def init(self) -> None:
        from ..runs import write_json

        self.stages.mkdir(parents=True, exist_ok=True)
        write_json(self.root / MARKER, {"kind": MARKER_KIND})

    def dir(self, stage: str) -> Path:
        d = self.stages / stage
        d.mkdir(parents=True, exist_ok=True)
        return d

    def get(self, stage: str, fp: str) -> dict[str, Any] | None:
        """The cached result when its fingerprint is ``fp``; None when missing, stale or unreadable.

        The non-finite numbers ``put`` wrote as null are NaN/Inf again, so a resumed study judges its
        claims on exactly the numbers the first run had."""
        p = self.stages / stage / "result.json"
        try:
            rec = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        if not isinstance(rec, dict) or rec.get("fingerprint") != fp or not isinstance(rec.get("result"), dict):
            return None
        if not _restore(rec["result"], rec.get("nonfinite") or []):
            return None  # a damaged record: recompute rather than guess
        return rec

    def put(self, stage: str, fp: str, result: dict[str, Any], seconds: float) -> None:
        from ..runs import write_json

        write_json(self.dir(stage) / "result.json", {"fingerprint": fp, "result": result, "seconds": seconds,
                                                     "nonfinite": _nonfinite(result)}, nonfinite="null")


def _nonfinite(obj: Any, path: tuple[str | int, ...] = ()) -> list[list[Any]]:
    """``[[key path], "nan" | "inf" | "-inf"]`` for every non-finite float (strict JSON writes them null)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return [[list(path), "nan" if obj != obj else "inf" if obj > 0 else "-inf"]]
    if isinstance(obj, dict):
        return [x for k, v in obj.items() for x in _nonfinite(v, (*path, str(k)))]
    if isinstance(obj, list | tuple):
        return [x for i, v in enumerate(obj) for x in _nonfinite(v, (*path, i))]
    return []


def _restore(result: dict[str, Any], marks: Any) -> bool:
    """Put ``_nonfinite``'s numbers back in place; False when a mark does not fit the result."""
    if not isinstance(marks, list):
        return False
    for mark in marks:
        if not (isinstance(mark, list) and len(mark) == 2 and isinstance(mark[0], list) and mark[0]
                and mark[1] in ("nan", "inf", "-inf")):
            return False
        *parents, last = mark[0]
        node: Any = result
        try:
            for k in parents:
                node = node[k]
            if node[last] is not None:
                return False
            node[last] = float(mark[1])
        except (KeyError, IndexError, TypeError):
            return False
    return True


__all__ = ["MARKER", "StageStore", "check_study_out", "fingerprint", "is_study_dir"]

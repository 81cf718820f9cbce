"""Run directories: one writer (``RunDir``), manifests, fingerprints, strict JSON.

Every command writes one directory through ``RunDir``: the output is claimed
(see ``affectlens.claims``: no two runs write one output, leftovers of killed
runs are cleaned), built in a temporary sibling, given its ``manifest.json``
(inputs with content hashes, options, seed, versions), and renamed into place
only when complete. An existing result is never replaced without ``force``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import sys
import time
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from .claims import atomic_dir as atomic_dir
from .claims import check_out_dir as check_out_dir
from .claims import claim_file as claim_file
from .claims import claim_output as claim_output
from .claims import holds_claim as holds_claim
from .claims import note as note
from .claims import sweep as sweep
from .claims import temp_file as temp_file
from .errors import AffectlensError
from .progress import Progress as Progress
from .progress import progress as progress

try:  # POSIX: the claim is an flock, released by the kernel when its owner dies
    import fcntl
except ImportError:  # pragma: no cover - Windows: O_EXCL placeholder + pid liveness
    fcntl = None  # type: ignore[assignment]

_VERSIONED = ("affectlens", "torch", "transformers", "safetensors", "peft", "numpy", "gguf")


# ---------------------------------------------------------------------------
# RunDir: the one writer of run directories


class RunDir:
    """``with RunDir(out, command=..., ...) as run: run.json("scores.json", obj)``.

    The only way affectlens writes a run directory: claim ``out`` -> build in
    a temporary sibling -> ``manifest.json`` -> rename into place, all or
    nothing. Every file goes through a method that refuses non-finite numbers
    (JSON/CSV/JSONL) or saves and closes a figure, so no command re-implements
    the sequence. ``run.path`` is the temporary directory while the block runs
    (for writers of their own, e.g. safetensors), ``run.final`` the result.
    """

    def __init__(self, out: str | os.PathLike, *, command: str, force: bool = False,
                 inputs: dict[str, Any] | None = None, options: dict[str, Any] | None = None,
                 seed: int | None = None) -> None:
        self.final = Path(out)
        self.force = force
        self.command = command
        self.inputs = dict(inputs or {})
        self.options = dict(options or {})
        self.seed = seed
        self.extra: dict[str, Any] = {}
        self._stack = contextlib.ExitStack()
        self._path: Path | None = None

    @property
    def path(self) -> Path:
        if self._path is None:
            raise RuntimeError("RunDir.path is only available inside its `with` block")
        return self._path

    def __enter__(self) -> RunDir:
        self._path = self._stack.enter_context(atomic_dir(self.final, self.force))
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool | None:
        if exc_type is None:
            try:
                write_manifest(self.path, self.command, self.inputs, self.options, self.seed, self.extra)
            except BaseException:
                self._stack.__exit__(*sys.exc_info())
                raise
        return self._stack.__exit__(exc_type, exc, tb)

    def file(self, name: str) -> Path:
        """Where to write ``name`` inside the run (sub-folders are made)."""
        p = self.path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def json(self, name: str, obj: Any, *, nonfinite: str = "error") -> Path:
        p = self.file(name)
        write_json(p, obj, nonfinite=nonfinite)
        return p

    def jsonl(self, name: str, rows: Iterable[Any]) -> Path:
        p = self.file(name)
        with open(p, "w", encoding="utf-8") as f:
            for i, row in enumerate(rows, 1):
                f.write(to_json(row, f"{p} line {i}") + "\n")
        return p

    def csv(self, name: str, rows: Sequence[dict[str, Any]], header: Sequence[str] | None = None) -> Path:
        """A CSV of dict rows; a non-finite float is refused (an empty cell means 'no value')."""
        import csv

        p = self.file(name)
        cols = list(header) if header is not None else list(dict.fromkeys(k for r in rows for k in r))
        for i, row in enumerate(rows, 2):
            for k, v in row.items():
                if isinstance(v, float) and not math.isfinite(v):
                    raise AffectlensError(f"refusing to write a non-finite number (NaN/Inf) to {p} "
                                          f"row {i} column {k}")
        with open(p, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
        return p

    def text(self, name: str, text: str) -> Path:
        p = self.file(name)
        p.write_text(text, encoding="utf-8")
        return p

    def figure(self, name: str, fig: Any) -> Path:
        """Save a matplotlib figure (PNG) and close it."""
        from .plots import save

        return save(fig, self.file(name))


# ---------------------------------------------------------------------------
# JSON


def write_json(path: str | os.PathLike, obj: Any, *, nonfinite: str = "error") -> None:
    """Write JSON atomically (temp file + rename) so readers never see half a file.

    The temp file is ``claims.temp_file``'s: a kill leaves one a claim vouches for (swept).

    JSON has no NaN/Infinity, and a bare ``NaN`` is never written. With
    ``nonfinite="error"`` (the default) a non-finite number is a one-line
    ``AffectlensError`` naming the file and the key (``variants.GET.mean``),
    and nothing is written; ``nonfinite="null"`` writes it as ``null`` -- for
    callers whose NaN legitimately means "no value" (a confidence interval over
    one seed), never for a result itself.
    """
    path = Path(path)
    text = to_json(obj, path, nonfinite=nonfinite, indent=2)
    tmp = temp_file(path)  # made exclusively, named with the claim's run id: never someone else's file
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text + "\n")
        tmp.replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def to_json(obj: Any, where: str | os.PathLike, *, nonfinite: str = "error", indent: int | None = None) -> str:
    """``obj`` as JSON text (one JSONL line with ``indent=None``), under :func:`write_json`'s NaN rule.

    ``where`` (a file, or "file line N") names the place in the error message.
    """
    if nonfinite not in ("error", "null"):
        raise ValueError(f"nonfinite must be 'error' or 'null', not {nonfinite!r}")
    if nonfinite == "null":
        obj = nonfinite_to_null(obj)
    try:
        return json.dumps(obj, indent=indent, sort_keys=False, default=_json_default, allow_nan=False)
    except ValueError as e:
        if "JSON compliant" not in str(e):
            raise
        hit = find_non_finite(obj)
        key = hit[0] if hit else "?"
        raise AffectlensError(f"refusing to write a non-finite number (NaN/Inf) to {where} at key {key}") from None


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict | list | str | int | float | bool) or obj is None:
        return obj
    try:
        return _json_default(obj)
    except TypeError:
        return obj


def find_non_finite(obj: Any, where: str = "") -> tuple[str, float] | None:
    """The first non-finite number (NaN/Inf) in nested dicts/lists/arrays: ``(path, value)``.

    ``path`` is dotted (``tasks.emotion.metrics.accuracy``, ``rows[3].score``);
    None when every number is finite. Booleans, strings and None are skipped;
    numpy/torch values are read through ``tolist``.
    """
    obj = _plain(obj)
    if isinstance(obj, float):
        return None if math.isfinite(obj) else (where or "value", obj)
    if isinstance(obj, dict):
        for k, v in obj.items():
            hit = find_non_finite(v, f"{where}.{k}" if where else str(k))
            if hit:
                return hit
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            hit = find_non_finite(v, f"{where}[{i}]")
            if hit:
                return hit
    return None


def nonfinite_to_null(obj: Any) -> Any:
    """A copy of ``obj`` with every NaN/Inf float replaced by None."""
    obj = _plain(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: nonfinite_to_null(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [nonfinite_to_null(v) for v in obj]
    return obj


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, set | frozenset | tuple):
        return sorted(obj) if isinstance(obj, set | frozenset) else list(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def parse_jsonl_lines(text: str, where: str | os.PathLike) -> list[tuple[int, dict[str, Any]]]:
    """``(line number, row)`` of every non-blank JSONL line; a malformed line is a one-line
    error naming file and line (the numbers are the file's, blank lines included)."""
    rows = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise AffectlensError(f"{where} line {i}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise AffectlensError(f"{where} line {i}: expected a JSON object per line")
        rows.append((i, row))
    return rows


def parse_jsonl(text: str, where: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of JSONL text (see :func:`parse_jsonl_lines`)."""
    return [row for _, row in parse_jsonl_lines(text, where)]


def sha256_file(path: str | os.PathLike, limit: int | None = None) -> str:
    """sha256 of a file, or of its first ``limit`` bytes (headers identify checkpoints cheaply)."""
    h = hashlib.sha256()
    remaining = limit
    with open(path, "rb") as f:
        while True:
            n = 1 << 20 if remaining is None else min(1 << 20, remaining)
            if n == 0:
                break
            chunk = f.read(n)
            if not chunk:
                break
            h.update(chunk)
            if remaining is not None:
                remaining -= len(chunk)
    return h.hexdigest()


def fingerprint_path(path: str | os.PathLike) -> dict[str, Any]:
    """Identify an input by content hashes of its headers/configs (not whole weights)."""
    p = Path(path)
    if not p.exists():
        return {"path": str(p), "exists": False}
    info: dict[str, Any] = {"path": str(p.resolve())}
    files = sorted(p.iterdir()) if p.is_dir() else [p]
    hashes: dict[str, Any] = {}
    for f in files:
        if not f.is_file():
            continue
        if f.suffix in {".json", ".txt", ".yaml", ".yml", ".jsonl", ".tsv", ".csv", ".model"}:
            hashes[f.name] = {"sha256": sha256_file(f), "bytes": f.stat().st_size}
        elif f.suffix in {".safetensors", ".gguf", ".bin", ".pt"}:
            # Header plus size: cheap, and changes whenever the tensors' layout does.
            hashes[f.name] = {"sha256_head": sha256_file(f, 1 << 20), "bytes": f.stat().st_size}
    info["files"] = hashes
    return info


def versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in _VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def write_manifest(
    run_dir: str | os.PathLike,
    command: str,
    inputs: dict[str, Any],
    options: dict[str, Any],
    seed: int | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``manifest.json``: enough to trace and re-make every file in the run."""
    manifest = {
        "command": command,
        "argv": sys.argv,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "inputs": {k: fingerprint_path(v) if isinstance(v, str | Path) else v for k, v in inputs.items()},
        "options": options,
        "seed": seed,
        "versions": versions(),
    }
    if extra:
        manifest.update(extra)
    write_json(Path(run_dir) / "manifest.json", manifest)
    return manifest


def slug(name: str, default: str = "item") -> str:
    """A file-name-safe form of a task/variant/emotion name (``meld:x.csv`` -> ``meld_x.csv``)."""
    import re

    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or default

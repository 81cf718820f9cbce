"""What a grid reads, checked before the first cell and fingerprinted by content.

``validate_config`` opens the base once and lets every variant check itself
against its weights (selections in range, tuned modules unfused, transfers
inside what their donor trains), then loads the data and every task, so a
mistake costs seconds, not the cells before it. ``fingerprint_inputs`` hashes
the content of the base, data, task files and path references for the cell keys.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .config import GridConfig
from .variants import Checks

_BIG = 256 << 20  # files above this are identified by head, size and mtime, not a full hash


def content_id(path: Path) -> str:
    """A digest of a file's (or a dir's top-level files') content."""
    from ..runs import sha256_file

    p = Path(path)
    files = [p] if p.is_file() else sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith("."))
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        part = sha256_file(f) if st.st_size <= _BIG else f"{sha256_file(f, 1 << 20)}:{st.st_size}:{st.st_mtime_ns}"
        h.update(f"{f.name}\0{part}\0".encode())
    return h.hexdigest()[:16]


def _task_file(task: str) -> Path | None:
    from ..tasks.spec import get_task

    spec = get_task(task)
    if spec.loader == "bundled":
        from ..tasks.corpus import bundled_path

        return bundled_path(str(spec.path))
    return Path(str(spec.path)) if spec.path else None


def fingerprint_inputs(cfg: GridConfig, base_path: Path) -> dict[str, Any]:
    """Content fingerprints of the base, the data file, every task file and path references."""
    from ..models.resolve import resolve_model_path

    fp: dict[str, Any] = {"base": content_id(base_path), "tasks": []}
    for t in cfg.tasks:
        f = _task_file(t)
        fp["tasks"].append(content_id(f) if f is not None and f.exists() else None)
    if cfg.data:
        from ..tune.run import resolve_data

        fp["data"] = content_id(resolve_data(cfg.data))
    names = {v.name for v in cfg.variants}
    fp["refs"] = {str(v.ref): content_id(resolve_model_path(str(v.ref))) for v in cfg.variants
                  if v.ref is not None and v.ref != "base" and v.ref not in names}
    return fp


def check_train_overlap(data: str | None, tasks: Sequence[str], limit: int | None, models: Sequence[str | Path],
                        allow: bool, where: str) -> dict[str, Any]:
    """Load ``data`` (what the run trains; None: nothing) and ``tasks``, and count the scored rows that it,
    or a model among ``models`` that ``tune`` wrote, was trained on (by text digest); refused in one
    line naming the config (``where``) unless ``allow``. Returns the counts, for the manifest."""
    import dataclasses

    from ..claims import note
    from ..tasks.loaders import load_task
    from ..tasks.trained import TrainRows, count_overlap, records_of, refuse_overlap

    records, unchecked = records_of(models)
    for d in unchecked:
        note(f"{d} was tuned before affectlens recorded training rows: its overlap with the scored rows is "
             "not checked")
    if data is not None:
        from ..tune.run import load_dataset

        ds = load_dataset(str(data))
        rec = TrainRows.of((r["text"] for r in ds.rows), ds.source)
        records.insert(0, dataclasses.replace(rec, source=str(data)))
    loaded = [(t, [e.text for e in load_task(t, limit=limit).examples]) for t in tasks]
    ov = count_overlap(records, loaded, unchecked)
    ov.allowed = allow
    refuse_overlap(ov, where, "the", "set eval: {allow_train_overlap: true} in the config")
    return ov.to_json()


def validate_config(cfg: GridConfig, allow_pickle: bool = False) -> Path:
    """Everything a cell will need, checked before the first cell; returns the base model's path.
    The tasks' rows that a cell was trained on are refused (``cfg.train_overlap`` keeps the counts)."""
    from ..models.resolve import resolve_model_path
    from ..weights import open_weights

    base_path = resolve_model_path(cfg.base)
    by_name = {v.name: v for v in cfg.variants}
    with open_weights(base_path, allow_pickle=allow_pickle) as store:
        checks = Checks(store, f"base {base_path.name}", by_name, cfg.where)
        for v in cfg.variants:
            v.validate(checks)
    names = {v.name for v in cfg.variants}
    models = [base_path, *dict.fromkeys(resolve_model_path(str(v.ref)) for v in cfg.variants
                                        if v.ref is not None and v.ref != "base" and v.ref not in names)]
    data = str(cfg.data) if any(v.tuned for v in cfg.variants) else None
    cfg.train_overlap = check_train_overlap(data, cfg.tasks, cfg.eval.limit, models, cfg.eval.allow_train_overlap,
                                            cfg.where)
    return base_path


__all__ = ["check_train_overlap", "content_id", "fingerprint_inputs", "validate_config"]

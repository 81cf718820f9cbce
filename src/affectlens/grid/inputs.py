"""What a grid reads, checked before the first cell and fingerprinted by content.

``validate_config`` opens the base once and lets every variant check itself
against its weights (selections in range, tuned modules unfused, transfers
inside what their donor trains), then loads the data and every task, so a
mistake costs seconds, not the cells before it. ``fingerprint_inputs`` hashes
the content of the base, data, task files and path references for the cell keys.
"""

from __future__ import annotations

import hashlib
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


def validate_config(cfg: GridConfig, allow_pickle: bool = False) -> Path:
    """Everything a cell will need, checked before the first cell; returns the base model's path."""
    from ..models.resolve import resolve_model_path
    from ..tasks.loaders import load_task
    from ..weights import open_weights

    base_path = resolve_model_path(cfg.base)
    by_name = {v.name: v for v in cfg.variants}
    with open_weights(base_path, allow_pickle=allow_pickle) as store:
        checks = Checks(store, f"base {base_path.name}", by_name, cfg.where)
        for v in cfg.variants:
            v.validate(checks)
    if any(v.tuned for v in cfg.variants):
        from ..tune.run import load_dataset

        load_dataset(str(cfg.data))
    for t in cfg.tasks:
        load_task(t, limit=cfg.eval.limit)
    return base_path


__all__ = ["content_id", "fingerprint_inputs", "validate_config"]

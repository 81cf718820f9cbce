"""``scores.npz``: what a closed-set run's decisions are made from, so ``rescore`` needs no model.

Recomputing a calibration used to cost a second model pass that reproduced
identical raw scores. The run now keeps, per closed-set task, the numbers every
calibration starts from, in float64 as the scorer returned them:

- ``t<i>.loglik`` [n, labels]: each example's label log-likelihoods;
- ``t<i>.gold`` [n]: the gold label's index into the task's labels;
- ``t<i>.reference`` [3, labels]: the content-free prompts' scores (``CONTENT_FREE``
  order; 0 rows for image tasks, whose prompts have no text-only reference);
- ``meta``: JSON text: format, bootstrap resamples, seed, and per task its
  name, key, labels and reference texts.

Plain arrays only (read with ``allow_pickle=False``); the manifest records the
file's sha256, and ``read_scores`` refuses a file that no longer matches it.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import AffectlensError
from ..runs import sha256_file
from .calibration import CONTENT_FREE

FORMAT = "affectlens.scores.v1"
NAME = "scores.npz"


@dataclass
class TaskArrays:
    """One task's saved scores (see the module docstring)."""

    labels: list[str]
    loglik: np.ndarray
    gold: np.ndarray
    reference: np.ndarray | None  # None: no reference scores kept


def write_scores(path: str | os.PathLike, arrays: dict[str, dict[str, Any]], n_boot: int | None,
                 seed: int) -> dict[str, Any]:
    """Write ``arrays`` (``EvalResult.arrays``) to ``path``; returns the manifest's record of the file."""
    data: dict[str, Any] = {}  # arrays by name (Any: numpy types savez_compressed's **kwds loosely)
    tasks = []
    for i, (name, a) in enumerate(arrays.items()):
        key, labels = f"t{i}", list(a["labels"])
        ref = a.get("reference")
        data[f"{key}.loglik"] = np.asarray(a["loglik"], dtype=np.float64)
        data[f"{key}.gold"] = np.asarray(a["gold"], dtype=np.int64)
        data[f"{key}.reference"] = (np.asarray(ref, dtype=np.float64) if ref is not None
                                    else np.zeros((0, len(labels))))
        tasks.append({"task": name, "key": key, "labels": labels, "n": int(len(a["gold"])),
                      "reference_texts": list(CONTENT_FREE) if ref is not None else []})
    meta = {"format": FORMAT, "n_boot": n_boot, "seed": seed, "tasks": tasks}
    data["meta"] = np.array(json.dumps(meta))
    with open(path, "wb") as f:
        np.savez_compressed(f, **data)
    return {"file": Path(path).name, "format": FORMAT, "sha256": sha256_file(path),
            "tasks": {t["task"]: {k: t[k] for k in ("n", "labels", "reference_texts")} for t in tasks}}


def read_scores(path: str | os.PathLike, record: dict[str, Any] | None = None
                ) -> tuple[dict[str, TaskArrays], dict[str, Any]]:
    """``({task: TaskArrays}, meta)`` of a ``scores.npz``, checked against the manifest's ``record``."""
    p = Path(path)
    if not p.is_file():
        raise AffectlensError(f"{p} does not exist: the run was written before runs kept their scores, or is "
                              "not a closed-set evaluate run; evaluate it once more to re-score it later")
    if record and record.get("sha256") and sha256_file(p) != record["sha256"]:
        raise AffectlensError(f"{p} does not match the sha256 its manifest.json records; it was changed "
                              "after the run")
    try:
        with np.load(p, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"][()]))
            if meta.get("format") != FORMAT:
                raise AffectlensError(f"{p} has format {meta.get('format')!r}, not {FORMAT}")
            out = {t["task"]: _task(z, t, p) for t in meta["tasks"]}
    except AffectlensError:
        raise
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as e:
        raise AffectlensError(f"{p} is not a scores file affectlens wrote ({type(e).__name__}: {e})") from None
    return out, meta


def _task(z: Any, t: dict[str, Any], p: Path) -> TaskArrays:
    key, labels = t["key"], list(t["labels"])
    ll, gold, ref = z[f"{key}.loglik"], z[f"{key}.gold"], z[f"{key}.reference"]
    n, k = len(gold), len(labels)
    if ll.shape != (n, k) or ref.ndim != 2 or ref.shape[1] != k or gold.ndim != 1:
        raise AffectlensError(f"{p}: task {t['task']} has arrays of mismatched shapes "
                              f"(loglik {ll.shape}, gold {gold.shape}, reference {ref.shape}, {k} labels)")
    if n and (gold.min() < 0 or gold.max() >= k):
        raise AffectlensError(f"{p}: task {t['task']} has a gold index outside its {k} labels")
    if not bool(np.isfinite(ll).all()):
        raise AffectlensError(f"{p}: task {t['task']} holds a non-finite log-likelihood; not a result")
    if len(ref) not in (0, len(CONTENT_FREE)):
        raise AffectlensError(f"{p}: task {t['task']} has {len(ref)} reference rows, not {len(CONTENT_FREE)}")
    return TaskArrays(labels, ll.astype(np.float64), gold.astype(np.int64),
                      ref.astype(np.float64) if len(ref) else None)


__all__ = ["FORMAT", "NAME", "TaskArrays", "read_scores", "write_scores"]

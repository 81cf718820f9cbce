"""What a study ran on, for its methods: the data (checked up front), the resolved device and dtype,
and how much of its wall time a resume reused.

Every data spec of the config -- ``data``, ``control_data``, ``tasks``,
``control_tasks``, in any syntax ``evaluate --task`` and ``tune --data``
accept -- is loaded here before the first stage, exactly as the stages will
load it, so a missing file, a wrong column or an unlabelled file is one line
naming the field before hours of training, and the report can name each
data set with its file, row counts and (where the loader knows it) licence.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import AffectlensError
from .config import StudyConfig

# Licences a loader knows because its format is one data set's own.
KNOWN_LICENCES = {"goemotions": "GoEmotions (Demszky et al. 2020): data CC BY 4.0"}
LICENCE_FILES = ("LICENSE", "LICENCE", "LICENSE.txt", "LICENCE.txt", "LICENSE.md", "LICENCE.md")
UNKNOWN = "not known to the loader (see the data set's terms)"


def _kind(k: Any) -> str:
    return str(getattr(k, "value", k))


def _bundled_licence() -> str:
    from ..tasks.corpus import README

    return " ".join(README.split("Licence:", 1)[1].split())


def licence(loader: str, file: Path) -> str:
    """The data's licence line: the bundled corpus' own, a format's known data set's, or the first line of
    a LICENSE file beside the data; else that it is not known."""
    if loader == "bundled":
        return _bundled_licence()
    if loader in KNOWN_LICENCES:
        return KNOWN_LICENCES[loader]
    for name in LICENCE_FILES:  # the data's own folder only: a repository's LICENSE further up is not the data's
        f = file.parent / name
        if f.is_file():
            first = next((ln.strip() for ln in f.read_text(encoding="utf-8", errors="replace").splitlines()
                          if ln.strip()), "")
            if first:
                return f"{first} ({f})"
    return UNKNOWN


def _training(field: str, spec: str, cfg: StudyConfig) -> dict[str, Any]:
    from ..tasks.spec import parse_task
    from ..tune.run import load_dataset, resolve_data

    try:
        ds = load_dataset(spec)  # what tune reads: a directory at its train split, labels checked
        path = resolve_data(spec)
        loader = parse_task(spec).loader
    except (AffectlensError, OSError, ValueError) as e:
        raise AffectlensError(f"{field} {spec!r}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") \
            from None
    per_adapter = cfg.budget.steps * cfg.budget.batch_size
    return {"spec": spec, "file": str(path), "kind": _kind(ds.task_kind), "rows": len(ds.rows),
            "labels": len(ds.labels), "examples_per_adapter": f"{per_adapter} ({cfg.budget.steps} steps x "
                                                                 f"batch {cfg.budget.batch_size})",
            "licence": licence(loader, path)}


def _task(field: str, spec: str, limits: Mapping[str, int | None]) -> dict[str, Any]:
    import re

    from ..tasks.loaders import load_task
    from ..tasks.tables import data_file

    if re.fullmatch(r"[A-Za-z_]\w*=.*", spec):
        raise AffectlensError(f"{field} {spec!r} is an option without its task: a YAML list [a,b] splits at "
                              f"every comma, so quote the spec (\"jsonl:DIR,{spec}\")")
    try:
        loaded = load_task(spec)
        if _kind(loaded.spec.kind) == "perplexity":
            raise AffectlensError("a perplexity text (ppl:) has no labels; the study scores closed-set "
                                  "classification tasks")
        path = data_file(loaded.spec) if loaded.spec.path else None
    except (AffectlensError, OSError, ValueError) as e:
        raise AffectlensError(f"{field} {spec!r}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") \
            from None
    rows = len(loaded.examples)
    out: dict[str, Any] = {"spec": spec, "file": str(path) if path is not None else "(built in)",
                           "kind": _kind(loaded.spec.kind), "rows": rows, "labels": len(loaded.labels)}
    for what, limit in limits.items():
        out[what] = min(rows, limit) if limit else rows
    if loaded.dropped or loaded.skipped:
        out["dropped"] = loaded.dropped + loaded.skipped
    out["licence"] = licence(loaded.spec.loader, path) if path is not None else UNKNOWN
    return out


def describe_data(cfg: StudyConfig) -> dict[str, Any]:
    """Load every data spec the asked stages read, as they will (refusing a bad one, naming its field),
    and describe it: spec, file, kind, row counts (how many are scored), labels, licence. A spec no asked
    stage reads (the training data of a circuits-only study) is left out: it was not used."""
    from .config import needed

    run = set(needed(cfg.stages))
    limits: dict[str, int | None] = {}
    if run & {"sufficiency", "efficiency", "necessity", "frontier"}:
        limits["scored"] = cfg.eval["limit"]
    if "circuits" in run:
        limits["scored_by_interventions"] = cfg.circuits.get("limit")
    out: dict[str, Any] = {}
    if "adapters" in run:
        out["training"] = {"affective": _training("data", cfg.data, cfg),
                           "control": _training("control_data", cfg.control_data, cfg)}
    if limits:
        out["tasks"] = {"affective": [_task("tasks", t, limits) for t in cfg.tasks]}
    if "necessity" in run:  # the one stage that scores the control tasks
        out.setdefault("tasks", {})["control"] = [_task("control_tasks", t, {"scored": cfg.eval["limit"]})
                                                  for t in cfg.control_tasks]
    return out


def device_dtype(device: str, dtype: str, circuits: bool = False) -> dict[str, Any]:
    """The device and dtype "auto" resolves to here (what the scored stages load models in), and what
    was asked; with ``circuits``, that stage's own dtype (float32 unless one is asked)."""
    from ..models.devices import resolve_device, resolve_dtype

    dev = resolve_device(device)
    dt = str(resolve_dtype(dtype, dev)).removeprefix("torch.")
    out = {"device": str(dev), "dtype": dt, "device_dtype_asked": f"{device} / {dtype}"}
    if circuits:
        out["circuits_dtype"] = dtype if dtype != "auto" else "float32"
    return out


def training_ran_on(adapters: Mapping[str, Any]) -> list[str]:
    """Where the adapters stage's training ran, as each adapter recorded it (device, dtype, precision)."""
    return sorted(set(adapters.get("ran_on") or []))


def time_parts(timing: Mapping[str, Mapping[str, Any]], run_now_s: float) -> tuple[float, dict[str, Any]]:
    """The study's wall time counting its cached stages at the seconds they took when they ran, and the
    split: a resume that reused 3 h of stages is not a 0 s study."""
    cached = {k: v.get("seconds") for k, v in timing.items() if v.get("cached")}
    known = [float(s) for s in cached.values() if isinstance(s, int | float)]
    ran = [k for k, v in timing.items() if not v.get("cached")]
    total = run_now_s + sum(known)
    missing = len(cached) - len(known)
    now = f"{run_now_s:.0f} s run now ({len(ran)} stage(s) computed)"
    line = (f"{sum(known):.0f} s from {len(cached)} cached stage(s), at the time they took when they ran"
            + (f" ({missing} without a recorded time)" if missing else "") + f"; {now}") if cached else \
        f"nothing cached: {now}"
    return total, {"wall_time_parts": line, "wall_time_cached_s": round(sum(known), 1),
                   "wall_time_run_now_s": round(run_now_s, 1)}


__all__ = ["describe_data", "device_dtype", "licence", "time_parts", "training_ran_on"]

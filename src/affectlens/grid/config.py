"""A grid's YAML as a typed, validated ``GridConfig`` (problems are one clear line each).

The budget is one :class:`~affectlens.tuneconfig.TuneConfig` plus the seeds;
each variant is an instance of its kind's class (``grid.variants``), which
checks its own fields. Cells are (variant, seed); each variant's ``hash`` keys
its cells by everything they depend on -- the config and, once
:func:`assign_keys` is given the inputs' fingerprints, the *content* of the
base model, data file, task files and path references -- so a changed input
recomputes exactly the cells that read it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import AffectlensError
from ..runs import slug
from ..tuneconfig import BUDGET_FIELDS, SEED_MAX, TuneConfig
from .variants import KINDS, Variant, config_error

TOP_KEYS = frozenset({"name", "base", "data", "tasks", "control_tasks", "eval", "budget", "reference", "variants",
                      "description"})
REQUIRED_FOR_TUNING = ("steps", "rank", "lr")  # a study states its budget; it never inherits it silently


@dataclass(frozen=True)
class EvalSpec:
    """How every cell is scored (``evaluate``'s mode, limit, batch size and closed-set calibration);
    ``allow_train_overlap`` scores rows the cells were trained on (refused by default; not in the key)."""

    mode: str = "closed"
    limit: int | None = None
    batch_size: int = 16
    calibration: str = "none"
    allow_train_overlap: bool = False

    @classmethod
    def from_mapping(cls, raw: dict[str, Any], where: str) -> EvalSpec:
        from ..evaluate.core import MODES
        from ..vocab import CALIBRATIONS

        allowed = ("mode", "limit", "batch_size", "calibration", "allow_train_overlap")
        bad = sorted(set(raw) - set(allowed))
        if bad:
            raise config_error(where, f"eval has unknown field(s) {', '.join(bad)}; allowed: {', '.join(sorted(allowed))}")
        mode = raw.get("mode", "closed")
        if mode not in MODES:
            raise config_error(where, f"eval.mode must be one of {', '.join(MODES)}, not {mode!r}")
        for key in ("limit", "batch_size"):
            val = raw.get(key)
            if val is not None and (isinstance(val, bool) or not isinstance(val, int) or val < 1):
                raise config_error(where, f"eval.{key} must be a positive integer, not {val!r}")
        cal = raw.get("calibration", "none")
        if cal not in CALIBRATIONS or (cal != "none" and mode != "closed"):
            raise config_error(where, f"eval.calibration must be one of {', '.join(CALIBRATIONS)} "
                                      f"(closed mode only), not {cal!r}")
        allow = raw.get("allow_train_overlap", False)
        if not isinstance(allow, bool):
            raise config_error(where, f"eval.allow_train_overlap must be true or false, not {allow!r}")
        return cls(mode, raw.get("limit"), int(raw.get("batch_size", 16)), cal, allow)

    def to_dict(self) -> dict[str, Any]:
        """The cell key's eval part; ``calibration`` only when asked, so existing grids keep their keys."""
        out: dict[str, Any] = {"mode": self.mode, "limit": self.limit, "batch_size": self.batch_size}
        if self.calibration != "none":
            out["calibration"] = self.calibration
        return out


@dataclass
class GridConfig:
    name: str
    base: str
    data: str | None
    tasks: list[str]
    control_tasks: list[str]
    eval: EvalSpec
    budget: TuneConfig
    seeds: list[int]
    reference: str | None
    variants: list[Variant]
    raw: dict[str, Any] = field(default_factory=dict)
    path: str = ""
    train_overlap: dict[str, Any] | None = None  # scored rows trained on, per task (grid.inputs.validate_config)

    @property
    def where(self) -> str:
        """How errors name this config."""
        return Path(self.path).name if self.path else "grid config"

    def variant(self, name: str) -> Variant:
        for v in self.variants:
            if v.name == name:
                return v
        raise KeyError(name)

    def seeds_of(self, v: Variant) -> list[int]:
        return self.seeds if v.seeded else self.seeds[:1]

    def cells(self) -> list[tuple[Variant, int]]:
        return [(v, s) for v in self.variants for s in self.seeds_of(v)]


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _read(path: str | os.PathLike | dict) -> tuple[dict[str, Any], str]:
    import yaml

    if isinstance(path, dict):
        return path, "grid config"
    p = Path(path)
    if not p.is_file():
        raise AffectlensError(f"grid config {p} does not exist")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise config_error(p.name, f"not valid YAML ({str(e).splitlines()[0]})") from None
    return raw, p.name


def _seeds(budget: dict[str, Any], where: str) -> list[int]:
    seeds = budget.get("seeds", [0])
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = [seeds]
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                           for s in seeds):
        raise config_error(where, "budget.seeds must be a non-empty list of integers")
    bad = next((s for s in seeds if not 0 <= s <= SEED_MAX), None)
    if bad is not None:  # numpy's seeders refuse the rest, mid-run
        raise config_error(where, f"budget.seeds must be integers from 0 to {SEED_MAX}, not {bad}")
    if len(set(seeds)) != len(seeds):
        raise config_error(where, "budget.seeds has duplicates")
    return list(seeds)


def _budget(raw: dict[str, Any], tuning: bool, where: str) -> tuple[TuneConfig, list[int]]:
    budget = dict(raw.get("budget") or {})
    allowed = (*BUDGET_FIELDS, "seeds")
    bad = sorted(set(budget) - set(allowed))
    if bad:
        raise config_error(where, f"budget has unknown field(s) {', '.join(bad)}; allowed: {', '.join(sorted(allowed))}")
    seeds = _seeds(budget, where)
    if tuning:
        for key in REQUIRED_FOR_TUNING:
            if key not in budget:
                raise config_error(where, f"budget is missing field '{key}' (tune variants need it)")
    budget.pop("seeds", None)
    return TuneConfig.from_mapping(budget, f"{where}: budget"), seeds


def _file_key(name: str) -> str:
    """What a variant's cell and adapter files are named by (case-folded: a grid dir may move to a
    case-insensitive file system)."""
    return slug(name, "variant").casefold()


def _variants(raw: Any, where: str) -> list[Variant]:
    if not isinstance(raw, list):
        raise config_error(where, "variants must be a list")
    variants: list[Variant] = []
    for i, vs in enumerate(raw):
        if not isinstance(vs, dict):
            raise config_error(where, f"variant #{i + 1} must be a mapping")
        name = str(vs.get("name", "")).strip()
        if not name:
            raise config_error(where, f"variant #{i + 1} is missing field 'name'")
        if any(v.name == name for v in variants):
            raise config_error(where, f"variant name '{name}' is used twice")
        clash = next((v.name for v in variants if _file_key(v.name) == _file_key(name)), None)
        if clash is not None:  # cells/<slug>__s<seed>.json: two such variants would share one result
            raise config_error(where, f"variant names '{clash}' and '{name}' map to one file name "
                                      f"'{slug(name, 'variant')}'; rename one")
        kind = vs.get("kind")
        if kind not in KINDS:
            raise config_error(where, f"variant '{name}': kind must be one of {', '.join(KINDS)}"
                                      + ("" if kind else " (missing field 'kind')"))
        variants.append(KINDS[kind].parse(vs, name, where))
    by_name = {v.name: v for v in variants}
    for v in variants:
        v.check_refs(by_name, where)
    return variants


def load_config(path: str | os.PathLike | dict) -> GridConfig:
    """Read and validate a grid YAML (a dict works too); every problem is one clear line."""
    raw, where = _read(path)
    if not isinstance(raw, dict):
        raise config_error(where, "must be a mapping with base, tasks and variants")
    unknown = sorted(set(raw) - TOP_KEYS)
    if unknown:
        raise config_error(where, f"unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(TOP_KEYS))}")
    for key in ("base", "tasks", "variants"):
        if key not in raw or raw[key] in (None, "", []):
            raise config_error(where, f"missing field '{key}'")
    tasks = [str(t) for t in (raw["tasks"] if isinstance(raw["tasks"], list) else [raw["tasks"]])]
    variants = _variants(raw["variants"], where)
    tuning = any(v.tuned for v in variants)
    budget, seeds = _budget(raw, tuning, where)
    ev = EvalSpec.from_mapping(dict(raw.get("eval") or {}), where)
    if tuning and not raw.get("data"):
        raise config_error(where, "missing field 'data' (tune variants need training data)")
    ref = raw.get("reference")
    names = [v.name for v in variants]
    if ref is not None and ref not in names:
        raise config_error(where, f"reference '{ref}' is not a variant name")
    if ref is None:  # the first tuned reference, else the first reference
        refs = [v.name for v in variants if v.kind == "reference" and v.tuned] or \
               [v.name for v in variants if v.kind == "reference"]
        ref = refs[0] if refs else None
    is_dict = isinstance(path, dict)
    cfg = GridConfig(name=str(raw.get("name") or ("grid" if is_dict else Path(str(path)).stem)),
                     base=str(raw["base"]), data=raw.get("data"), tasks=tasks,
                     control_tasks=[str(t) for t in raw.get("control_tasks") or []], eval=ev, budget=budget,
                     seeds=seeds, reference=ref, variants=variants, raw=raw, path="" if is_dict else str(path))
    assign_keys(cfg)
    return cfg


def assign_keys(cfg: GridConfig, fingerprints: dict[str, Any] | None = None) -> None:
    """Which variants run per seed, and each variant's cell key.

    A variant is seeded if it trains, starts from a trained variant, or draws
    noise. ``fingerprints`` (from ``grid.inputs.fingerprint_inputs``) puts the
    *content* of the inputs into every key.
    """
    fp = fingerprints or {}
    common: dict[str, Any] = {"base": cfg.base, "tasks": cfg.tasks, "eval": cfg.eval.to_dict()}
    train: dict[str, Any] = {"data": cfg.data, "budget": cfg.budget.budget()}
    if fp:
        common["content"] = {"base": fp.get("base"), "tasks": fp.get("tasks")}
        train["data_content"] = fp.get("data")
    refs = fp.get("refs") or {}
    by_name = {v.name: v for v in cfg.variants}
    for v in cfg.variants:  # tuned first: others depend on them
        if v.tuned:
            v.seeded = True
            v.hash = _hash({**common, **train, "kind": "tuned", "modules": v.modules, "layers": v.layers})
    for v in cfg.variants:
        if v.tuned:
            continue
        dep = by_name.get(str(v.ref))
        trained_dep = dep is not None and dep.tuned
        v.seeded = trained_dep or v.noisy
        v.hash = _hash({**common, "spec": {k: val for k, val in v.spec.items() if k != "name"},
                        "dep": dep.hash if dep is not None and trained_dep else None,
                        **({"ref_content": refs[str(v.ref)]} if str(v.ref) in refs else {})})


__all__ = ["EvalSpec", "GridConfig", "assign_keys", "load_config"]

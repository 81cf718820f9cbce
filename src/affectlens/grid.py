"""Grids: Tables 1-2 and Fig. 9 of the gate_proj study as one YAML each.

A grid is a list of *variants* of one base model, each evaluated on every task:

- ``tune``      LoRA on a module selection (Table 2, Fig. 8); every tune variant
                gets the identical budget (steps, rank, alpha, lr, batch) and seeds.
- ``reference`` the yardstick: a tuned selection (all-module LoRA, AffectGPT's
                role) or a fixed model (``model: base`` or a path).
- ``transfer``  BASE + the selected modules of a donor (a tuned variant or a
                path), no training (Table 1).
- ``ablate``    a tuned model with the selected (or control) modules destroyed;
                the report puts the drop on affective tasks next to the drop on
                non-affective control tasks (zeroing an MLP module can destroy
                everything, so a necessity claim needs that control).

Cells are (variant, seed). Each cell's result is one JSON file written
atomically, keyed by a hash of everything it depends on -- the config and the
*content* of the base model, data file, task files and path references -- so
an interrupted grid resumes where it stopped, a changed variant is recomputed
alone, and an edited input file is never answered from stale cells. Variants
are built in memory on one loaded base model (``transfer.applied``).

A grid dir is recognised by its ``grid_config.json`` marker; a grid never
writes into any other non-empty directory, even with ``force``. The whole
config is validated before the first cell, and the report files are removed
before any cell is computed, so an interrupted run never leaves an old table
looking complete. A cell with a non-finite score stops the grid (one line
naming the cell); it is not written.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import AffectlensError

KINDS = ("tune", "reference", "transfer", "ablate")
_TOP_KEYS = {"name", "base", "data", "tasks", "control_tasks", "eval", "budget", "reference", "variants",
             "description"}
_VARIANT_KEYS = {
    "tune": ({"name", "kind", "modules"}, {"layers"}),
    "reference": ({"name", "kind"}, {"modules", "layers", "model"}),
    "transfer": ({"name", "kind", "donor", "modules"}, {"layers"}),
    "ablate": ({"name", "kind", "model", "modules", "mode"}, {"layers", "control"}),
}
_BUDGET_KEYS = {"steps", "rank", "alpha", "lr", "seeds", "batch_size", "dropout", "max_length"}
_EVAL_KEYS = {"mode", "limit", "batch_size"}
_CONTROL_KINDS = ("control", "perplexity")


# ---------------------------------------------------------------------------
# Config


@dataclass
class Variant:
    name: str
    kind: str
    spec: dict[str, Any]
    seeded: bool = False
    hash: str = ""

    @property
    def tuned(self) -> bool:
        """Trained by the grid itself (tune, or a reference with modules)."""
        return self.kind == "tune" or (self.kind == "reference" and "modules" in self.spec)


@dataclass
class GridConfig:
    name: str
    base: str
    data: str | None
    tasks: list[str]
    control_tasks: list[str]
    eval: dict[str, Any]
    budget: dict[str, Any]
    reference: str | None
    variants: list[Variant]
    raw: dict[str, Any] = field(default_factory=dict)
    path: str = ""

    @property
    def seeds(self) -> list[int]:
        return [int(s) for s in self.budget.get("seeds", [0])]

    def variant(self, name: str) -> Variant:
        for v in self.variants:
            if v.name == name:
                return v
        raise KeyError(name)

    def cells(self) -> list[tuple[Variant, int]]:
        return [(v, s) for v in self.variants for s in (self.seeds if v.seeded else self.seeds[:1])]


def _err(where: str, msg: str) -> AffectlensError:
    return AffectlensError(f"{where}: {msg}")


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def load_config(path: str | os.PathLike | dict) -> GridConfig:
    """Read and validate a grid YAML (a dict works too); every problem is one clear line."""
    import yaml

    from .modules import parse_selection

    where = "grid config"
    if isinstance(path, dict):
        raw = path
    else:
        p = Path(path)
        where = p.name
        if not p.is_file():
            raise AffectlensError(f"grid config {p} does not exist")
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise _err(where, f"not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise _err(where, "must be a mapping with base, tasks and variants")
    unknown = sorted(set(raw) - _TOP_KEYS)
    if unknown:
        raise _err(where, f"unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_TOP_KEYS))}")
    for key in ("base", "tasks", "variants"):
        if key not in raw or raw[key] in (None, "", []):
            raise _err(where, f"missing field '{key}'")
    tasks = raw["tasks"] if isinstance(raw["tasks"], list) else [raw["tasks"]]
    tasks = [str(t) for t in tasks]
    budget = dict(raw.get("budget") or {})
    bad = sorted(set(budget) - _BUDGET_KEYS)
    if bad:
        raise _err(where, f"budget has unknown field(s) {', '.join(bad)}; allowed: {', '.join(sorted(_BUDGET_KEYS))}")
    seeds = budget.get("seeds", [0])
    if isinstance(seeds, int):
        seeds = [seeds]
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise _err(where, "budget.seeds must be a non-empty list of integers")
    if len(set(seeds)) != len(seeds):
        raise _err(where, "budget.seeds has duplicates")
    budget["seeds"] = seeds
    ev = dict(raw.get("eval") or {})
    bad = sorted(set(ev) - _EVAL_KEYS)
    if bad:
        raise _err(where, f"eval has unknown field(s) {', '.join(bad)}; allowed: {', '.join(sorted(_EVAL_KEYS))}")
    if not isinstance(raw["variants"], list):
        raise _err(where, "variants must be a list")

    variants: list[Variant] = []
    names: set[str] = set()
    for i, vs in enumerate(raw["variants"]):
        if not isinstance(vs, dict):
            raise _err(where, f"variant #{i + 1} must be a mapping")
        vname = str(vs.get("name", "")).strip()
        if not vname:
            raise _err(where, f"variant #{i + 1} is missing field 'name'")
        if vname in names:
            raise _err(where, f"variant name '{vname}' is used twice")
        names.add(vname)
        kind = vs.get("kind")
        if kind not in KINDS:
            raise _err(where, f"variant '{vname}': kind must be one of {', '.join(KINDS)}"
                              + ("" if kind else " (missing field 'kind')"))
        required, optional = _VARIANT_KEYS[kind]
        missing = sorted(required - set(vs))
        if missing:
            raise _err(where, f"variant '{vname}' ({kind}) is missing field '{missing[0]}'")
        extra = sorted(set(vs) - required - optional)
        if extra:
            raise _err(where, f"variant '{vname}' ({kind}) has unknown field(s) {', '.join(extra)}")
        if kind == "reference" and "modules" not in vs and "model" not in vs:
            raise _err(where, f"variant '{vname}' (reference) needs 'modules' (tuned) or 'model' (a fixed model)")
        if kind == "reference" and "modules" in vs and "model" in vs:
            raise _err(where, f"variant '{vname}' (reference) takes 'modules' or 'model', not both")
        if "modules" in vs:
            try:
                parse_selection(str(vs["modules"]))
            except AffectlensError as e:
                raise _err(where, f"variant '{vname}': {e}") from None
        if kind == "ablate":
            from .ablate import MODES

            if vs["mode"] not in MODES:
                raise _err(where, f"variant '{vname}': unknown mode '{vs['mode']}'; choose from {', '.join(MODES)}")
        variants.append(Variant(vname, kind, dict(vs)))

    by_name = {v.name: v for v in variants}
    for v in variants:
        for key in ("donor", "model"):
            ref = v.spec.get(key)
            if ref is None or str(ref) == "base":
                continue
            if str(ref) in by_name:
                if not by_name[str(ref)].tuned:
                    raise _err(where, f"variant '{v.name}': {key} '{ref}' must name a tune/reference variant "
                                      "with modules, or be a path")
            elif not Path(str(ref)).exists():
                raise _err(where, f"variant '{v.name}': {key} '{ref}' is neither a variant nor an existing path")
    if any(v.tuned for v in variants):
        if not raw.get("data"):
            raise _err(where, "missing field 'data' (tune variants need training data)")
        for key in ("steps", "rank", "lr"):
            if key not in budget:
                raise _err(where, f"budget is missing field '{key}' (tune variants need it)")
    ref = raw.get("reference")
    if ref is not None and ref not in by_name:
        raise _err(where, f"reference '{ref}' is not a variant name")
    if ref is None:
        tuned_refs = [v.name for v in variants if v.kind == "reference" and v.tuned]
        refs = tuned_refs or [v.name for v in variants if v.kind == "reference"]
        ref = refs[0] if refs else None

    cfg = GridConfig(name=str(raw.get("name") or (Path(str(path)).stem if not isinstance(path, dict) else "grid")),
                     base=str(raw["base"]), data=raw.get("data"), tasks=tasks,
                     control_tasks=[str(t) for t in raw.get("control_tasks") or []], eval=ev, budget=budget,
                     reference=ref, variants=variants, raw=raw, path=str(path) if not isinstance(path, dict) else "")
    _resolve_seeding_and_hashes(cfg)
    return cfg


def _resolve_seeding_and_hashes(cfg: GridConfig, fingerprints: dict[str, Any] | None = None) -> None:
    """A variant is seeded if it trains, depends on a trained variant, or draws noise.

    ``fingerprints`` (from :func:`fingerprint_inputs`) puts the *content* of the
    base model, data file, task files and path references into every key, so
    editing a file recomputes the cells that read it.
    """
    fp = fingerprints or {}
    common = {"base": cfg.base, "tasks": cfg.tasks, "eval": cfg.eval}
    train = {"data": cfg.data, "budget": {k: v for k, v in cfg.budget.items() if k != "seeds"}}
    if fp:
        common["content"] = {"base": fp.get("base"), "tasks": fp.get("tasks")}
        train["data_content"] = fp.get("data")
    refs = fp.get("refs") or {}
    by_name = {v.name: v for v in cfg.variants}
    for v in cfg.variants:  # tuned first: others depend on them
        if v.tuned:
            v.seeded = True
            v.hash = _hash({**common, **train, "kind": "tuned", "modules": v.spec["modules"],
                            "layers": v.spec.get("layers")})
    for v in cfg.variants:
        if v.tuned:
            continue
        dep = by_name.get(str(v.spec.get("donor", v.spec.get("model"))))
        v.seeded = bool(dep is not None and dep.tuned) or v.spec.get("mode") == "noise"
        ref = str(v.spec.get("donor", v.spec.get("model")))
        v.hash = _hash({**common, "spec": {k: val for k, val in v.spec.items() if k != "name"},
                        "dep": dep.hash if dep is not None and dep.tuned else None,
                        **({"ref_content": refs[ref]} if ref in refs else {})})


# ---------------------------------------------------------------------------
# Running


Evaluator = Callable[..., Any]


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "variant"


def _cell_path(out: Path, v: Variant, seed: int) -> Path:
    return out / "cells" / f"{_slug(v.name)}__s{seed}.json"


def _adapter_dir(out: Path, v: Variant, seed: int) -> Path:
    return out / "adapters" / f"{_slug(v.name)}__s{seed}__{v.hash}"


def _scores(res: Any) -> dict[str, Any]:
    scores = getattr(res, "scores", res)
    if not isinstance(scores, dict) or "tasks" not in scores:
        raise AffectlensError("the evaluator returned no scores")
    return scores


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def _primary(entry: dict[str, Any]) -> float:
    p = entry.get("primary")
    if isinstance(p, dict):
        p = p.get("value")
    if isinstance(p, str):
        p = entry.get("metrics", {}).get(p)
    return float(p) if p is not None else float("nan")


@dataclass
class GridResult:
    out: Path
    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    computed: int
    reused: int


MARKER = "grid_config.json"
_MARKER_KIND = "affectlens-grid"
# Derived from the cells; removed before any cell is (re)computed, so an
# interrupted run never leaves an old table looking complete.
REPORT_FILES = ("grid.csv", "table.md", "summary.json", "frontier.png", "manifest.json")
_BIG = 256 << 20  # files above this are identified by head, size and mtime, not a full hash


def _content_id(path: Path) -> str:
    """A digest of a file's (or a dir's top-level files') content."""
    from .runs import sha256_file

    p = Path(path)
    files = [p] if p.is_file() else sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith("."))
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        if st.st_size <= _BIG:
            part = sha256_file(f)
        else:
            part = f"{sha256_file(f, 1 << 20)}:{st.st_size}:{st.st_mtime_ns}"
        h.update(f"{f.name}\0{part}\0".encode())
    return h.hexdigest()[:16]


def _task_file(task: str) -> Path | None:
    from .evaluate.tasks import get_task

    spec = get_task(task)
    if spec.loader == "bundled":
        from .corpus import bundled_path

        return bundled_path(str(spec.path))
    return Path(str(spec.path)) if spec.path else None


def fingerprint_inputs(cfg: GridConfig, base_path: Path) -> dict[str, Any]:
    """Content fingerprints of the base, the data file, every task file and path references."""
    fp: dict[str, Any] = {"base": _content_id(base_path), "tasks": []}
    for t in cfg.tasks:
        f = _task_file(t)
        fp["tasks"].append(_content_id(f) if f is not None and f.exists() else None)
    if cfg.data:
        from .tune import resolve_data

        fp["data"] = _content_id(resolve_data(cfg.data))
    names = {v.name for v in cfg.variants}
    refs: dict[str, str] = {}
    for v in cfg.variants:
        ref = v.spec.get("donor", v.spec.get("model"))
        if ref is not None and str(ref) != "base" and str(ref) not in names:
            from .models import resolve_model_path

            refs[str(ref)] = _content_id(resolve_model_path(str(ref)))
    fp["refs"] = refs
    return fp


def validate_config(cfg: GridConfig, allow_pickle: bool = False) -> Path:
    """Everything a cell will need, checked before the first cell; returns the base model's path.

    The base path opens, every variant's module/layer selection matches the base
    (tuned variants on unfused projections only), a transfer from a tuned
    variant stays inside what that variant trains, the data and every task load.
    """
    from .evaluate.core import MODES
    from .models import resolve_model_path
    from .modules import MODULES, parse_selection
    from .selection import select
    from .weights import open_weights

    where = Path(cfg.path).name if cfg.path else "grid config"
    mode = cfg.eval.get("mode", "closed")
    if mode not in MODES:
        raise _err(where, f"eval.mode must be one of {', '.join(MODES)}, not {mode!r}")
    for key in ("limit", "batch_size"):
        val = cfg.eval.get(key)
        if val is not None and (isinstance(val, bool) or not isinstance(val, int) or val < 1):
            raise _err(where, f"eval.{key} must be a positive integer, not {val!r}")
    base_path = resolve_model_path(cfg.base)
    by_name = {v.name: v for v in cfg.variants}
    with open_weights(base_path, allow_pickle=allow_pickle) as store:
        for v in cfg.variants:
            if "modules" not in v.spec:
                continue
            try:
                sel = select(store, str(v.spec["modules"]), _layers_arg(v), echo=lambda _: None,
                             label=f"base {base_path.name}")
            except AffectlensError as e:
                raise _err(where, f"variant '{v.name}': {e}") from None
            if v.tuned:
                for key in sel.report.matched:
                    for parsed in store.inventory.modules[key]:
                        if parsed.fused:
                            others = [m for m in MODULES if m != key.module and m in _fused(parsed.fused)]
                            raise _err(where, f"variant '{v.name}': {parsed.name} is a fused {parsed.fused}: "
                                              f"LoRA on it would also train {', '.join(others)}; targeted tuning "
                                              "of a single module needs unfused projections")
            donor = by_name.get(str(v.spec.get("donor", "")))
            if v.kind == "transfer" and donor is not None and donor.tuned:
                dsel = select(store, str(donor.spec["modules"]), _layers_arg(donor), echo=lambda _: None)
                lacking = [m for m in parse_selection(str(v.spec["modules"])) if m not in dsel.modules]
                lay = [x for x in sel.layers if x not in dsel.layers]
                if lacking or lay:
                    what = (f"module(s) {', '.join(lacking)}" if lacking else "") + \
                           (" and " if lacking and lay else "") + (f"layer(s) {lay}" if lay else "")
                    raise _err(where, f"variant '{v.name}': donor '{donor.name}' does not train {what}")
    if any(v.tuned for v in cfg.variants):
        from .tune import load_dataset

        load_dataset(str(cfg.data))
    from .evaluate.loaders import load_task

    limit = cfg.eval.get("limit")
    for t in cfg.tasks:
        load_task(t, limit=None if limit is None else int(limit))
    return base_path


def _layers_arg(v: Variant) -> str | None:
    lay = v.spec.get("layers")
    return None if lay is None else str(lay)


def _fused(fused: str) -> tuple[str, ...]:
    from .modules import FUSED

    return FUSED.get(fused, ())


def _read_marker(out: Path) -> dict[str, Any] | None:
    """The grid marker of ``out``; None for an empty dir; an error for any other directory."""
    marker = out / MARKER
    if not marker.is_file():
        if any(out.iterdir()):
            raise AffectlensError(f"output {out} exists and is not a grid run dir (no {MARKER}); "
                                  "a grid never writes into another command's output: choose another --out")
        return None
    try:
        old = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        old = None
    if not isinstance(old, dict) or "config" not in old or old.get("kind", _MARKER_KIND) != _MARKER_KIND:
        raise AffectlensError(f"{marker} is not a grid marker; choose another --out")
    return old


def run_grid(config: str | os.PathLike | dict, out: str | os.PathLike, force: bool = False,
             evaluator: Evaluator | None = None, tuner: Callable[..., Any] | None = None,
             echo: Callable[[str], None] = print, allow_pickle: bool = False) -> GridResult:
    """Run (or resume) a grid; ``evaluator``/``tuner`` default to affectlens' own.

    ``allow_pickle`` lets a pickle (``.bin``) base load (``weights_only``); off by default.

    ``out`` is claimed for the whole run (a second run on it is refused). Only an
    empty dir or a grid dir is used; ``force`` allows a grid dir whose config
    differs (changed cells are recomputed), never another command's output.
    """
    from .runs import claim_output

    cfg = load_config(config)
    with claim_output(out):
        return _run_grid(cfg, Path(out), force, evaluator, tuner, echo, allow_pickle)


def _run_grid(cfg: GridConfig, out: Path, force: bool, evaluator: Evaluator | None,
              tuner: Callable[..., Any] | None, echo: Callable[[str], None],
              allow_pickle: bool = False) -> GridResult:
    from .runs import note, progress, write_json, write_manifest

    if out.exists():
        old = _read_marker(out)
        if old is not None and old.get("config") != json.loads(json.dumps(cfg.raw, default=str)) and not force:
            raise AffectlensError(
                f"{out} holds a grid with another config; pass --force to recompute the changed cells")
    base_path = validate_config(cfg, allow_pickle)
    _resolve_seeding_and_hashes(cfg, fingerprint_inputs(cfg, base_path))
    for name in REPORT_FILES:
        with contextlib.suppress(FileNotFoundError):
            (out / name).unlink()
    # Half-written files of a killed run (this run holds the dir's claim, so no one else writes here).
    for d in (out, out / "cells"):
        for f in sorted(d.glob(".*.tmp-*")) if d.is_dir() else []:
            if f.is_file():
                f.unlink()
                note(f"removed {f.relative_to(out.parent)}, a half-written file of a killed grid run")
    out.mkdir(exist_ok=True)
    write_json(out / MARKER, {"kind": _MARKER_KIND, "config": cfg.raw, "config_path": cfg.path})
    (out / "cells").mkdir(exist_ok=True)
    if evaluator is None:
        from .evaluate import evaluate as evaluator  # noqa: N813
    if tuner is None:
        from .tune import tune as tuner

    todo, reused = [], 0
    for v, seed in cfg.cells():
        cp = _cell_path(out, v, seed)
        if cp.is_file():
            try:
                if json.loads(cp.read_text()).get("hash") == v.hash:
                    reused += 1
                    continue
            except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
                pass
        todo.append((v, seed))
    echo(f"grid {cfg.name}: {len(cfg.cells())} cells ({len(cfg.variants)} variants x seeds {cfg.seeds}); "
         f"{reused} done, {len(todo)} to run")
    if todo:
        runner = _Runner(cfg, out, evaluator, tuner, echo, base_path, allow_pickle)
        try:
            for v, seed in progress(todo, "grid cells", total=len(todo), unit="cell"):
                t0 = time.perf_counter()
                cell = runner.cell(v, seed)
                cell["cell_seconds"] = time.perf_counter() - t0
                write_json(_cell_path(out, v, seed), cell)
                echo(f"  {v.name} seed {seed}: mean {cell['mean']:.4f} "
                     f"({cell['cell_seconds']:.1f} s)")
        finally:
            runner.close()
    rows, summary = report(cfg, out, echo)
    write_manifest(out, "grid", {"config": cfg.path or "<dict>", "base": str(base_path)},
                   {"config": cfg.raw}, seed=cfg.seeds[0], extra={"seeds": cfg.seeds})
    return GridResult(out, rows, summary, len(todo), reused)


def _check_cell_finite(v: Variant, seed: int, tasks: dict[str, dict[str, Any]]) -> None:
    """A cell whose numbers are not all finite is no result: stop the grid, name the cell."""
    for t, e in tasks.items():
        for key, val in [("primary", e["primary"]), *sorted(e["metrics"].items())]:
            if not math.isfinite(val):
                raise AffectlensError(f"grid cell '{v.name}' seed {seed}: task {t} scored a non-finite {key} "
                                      f"({val}); the cell was not written (finished cells are kept)")


class _Runner:
    """Holds the one loaded base model and builds each variant in memory."""

    def __init__(self, cfg: GridConfig, out: Path, evaluator: Evaluator, tuner: Callable[..., Any],
                 echo: Callable[[str], None], base_path: Path | None = None,
                 allow_pickle: bool = False) -> None:
        from .models import load_model, resolve_model_path
        from .weights import open_weights

        self.cfg, self.out, self.evaluator, self.tuner, self.echo = cfg, out, evaluator, tuner, echo
        self.base_path = base_path or resolve_model_path(cfg.base)
        self.allow_pickle = allow_pickle
        self.model, self.tok = load_model(self.base_path, allow_pickle=allow_pickle)
        self.base_store = open_weights(self.base_path, allow_pickle=allow_pickle)

    def close(self) -> None:
        self.base_store.close()

    def _quiet(self, _: str) -> None:
        pass

    def adapter(self, v: Variant, seed: int) -> tuple[Path, dict[str, Any]]:
        """The trained adapter of a tuned variant (trained now unless already on disk)."""
        ad = _adapter_dir(self.out, v, seed)
        if not (ad / "adapter_config.json").is_file():
            b = self.cfg.budget
            self.echo(f"  training {v.name} seed {seed} ({v.spec['modules']}, {b['steps']} steps)")
            kw = {k: b[k] for k in ("alpha", "batch_size", "dropout", "max_length") if k in b}
            self.tuner(str(self.base_path), self.cfg.data, str(v.spec["modules"]), layers=v.spec.get("layers"),
                       rank=int(b["rank"]), steps=int(b["steps"]), lr=float(b["lr"]), seed=int(seed),
                       out=ad, force=ad.exists(), verbose=False, **kw)
        info_path = ad / "affectlens_tune.json"
        info = json.loads(info_path.read_text()) if info_path.is_file() else {}
        return ad, info

    def _source(self, ref: str, seed: int) -> Any:
        """A donor/model reference: 'base', a tuned variant (its adapter for this seed), or a path."""
        from .weights import LoraAdapter, MergedStore, as_store

        if ref == "base":
            return self.base_store
        if ref in {v.name for v in self.cfg.variants}:
            ad, _ = self.adapter(self.cfg.variant(ref), seed)
            return MergedStore(self.base_store, LoraAdapter(ad))
        return as_store(ref, base=self.base_store, allow_pickle=self.allow_pickle)

    def _all_of(self, src: Any) -> dict[str, Any]:
        """Every tensor in which a whole source model differs from the loaded base."""
        from .weights import MergedStore

        if isinstance(src, MergedStore):
            return {n: src.get(n) for n in src.names() if src.adapted(n)}
        params = dict(self.model.named_parameters())
        return {n: src.get(n) for n in src.names() if n in params}

    def cell(self, v: Variant, seed: int) -> dict[str, Any]:
        from .ablate import ablate_tensors
        from .params import count_params
        from .transfer import applied, transfer_tensors
        from .weights import LoraAdapter, MergedStore

        cfg = self.cfg
        info: dict[str, Any] = {"variant": v.name, "kind": v.kind, "seed": seed, "hash": v.hash,
                                "modules": v.spec.get("modules")}
        tensors: dict[str, Any] = {}
        if v.tuned:
            ad, tinfo = self.adapter(v, seed)
            tensors = self._all_of(MergedStore(self.base_store, LoraAdapter(ad)))
            n_params = tinfo.get("trainable_params")
            if n_params is None:
                n_params = count_params(self.base_store.config, v.spec["modules"], int(cfg.budget["rank"]),
                                        layers=v.spec.get("layers")).lora_total
            info.update(trainable_params=int(n_params), param_basis="lora",
                        seconds_per_step=tinfo.get("seconds_per_step"), adapter=str(ad.relative_to(self.out)))
        elif v.kind == "reference":
            ref = str(v.spec["model"])
            if ref != "base":
                tensors = self._all_of(self._source(ref, seed))
            info.update(trainable_params=0 if ref == "base" else None, param_basis="none")
        elif v.kind == "transfer":
            donor_ref = str(v.spec["donor"])
            donor = self._source(donor_ref, seed)
            tensors, sel = transfer_tensors(self.base_store, donor, str(v.spec["modules"]), v.spec.get("layers"),
                                            echo=self._quiet)
            if isinstance(donor, MergedStore):
                n = sum(donor.adapter.store.numel(m.a_name) + donor.adapter.store.numel(m.b_name)
                        for m in donor.adapter.modules.values() if m.path in (donor.only or ()))
                info.update(trainable_params=n, param_basis="lora")
            else:
                info.update(trainable_params=sel.numel(self.base_store), param_basis="full")
        else:  # ablate
            model_ref = str(v.spec["model"])
            src = self._source(model_ref, seed)
            abl, ainfo = ablate_tensors(src, str(v.spec["modules"]), v.spec["mode"], base=self.base_store,
                                        layers=v.spec.get("layers"), seed=seed,
                                        control=bool(v.spec.get("control")), echo=self._quiet)
            if src is not self.base_store:
                tensors = self._all_of(src)
            tensors.update(abl)
            info.update(trainable_params=None, ablated=ainfo["ablated"], params_ablated=ainfo["params_ablated"],
                        param_basis="ablated", source=model_ref)
        t0 = time.perf_counter()
        ev = cfg.eval
        with applied(self.model, tensors):
            res = self.evaluator(self.model, self.tok, list(cfg.tasks), mode=ev.get("mode", "closed"),
                                 limit=ev.get("limit"), batch_size=int(ev.get("batch_size", 16)), seed=seed)
        scores = _scores(res)
        info["eval_seconds"] = time.perf_counter() - t0
        got = scores["tasks"]
        if len(got) != len(cfg.tasks):
            raise AffectlensError(f"the evaluator scored {len(got)} task(s), the grid asked for {len(cfg.tasks)}")
        # Results come back in the order asked, under the evaluator's own task names.
        info["tasks"] = {t: {"primary": _primary(e), "metrics": _scalars(e.get("metrics", {})), "n": e.get("n"),
                             "kind": e.get("kind"), "name": name}
                         for t, (name, e) in zip(cfg.tasks, got.items(), strict=True)}
        _check_cell_finite(v, seed, info["tasks"])
        info["mean"] = _affective_mean(cfg, info["tasks"])
        info["changed_tensors"] = len(tensors)
        return info


# ---------------------------------------------------------------------------
# Reporting


def _task_kind(name: str) -> str | None:
    try:
        from .evaluate.tasks import get_task

        return get_task(name).kind
    except Exception:  # an unknown task name is the evaluator's business, not the report's
        return None


def control_task_names(cfg: GridConfig) -> list[str]:
    if cfg.control_tasks:
        return list(cfg.control_tasks)
    return [t for t in cfg.tasks if _task_kind(t) in _CONTROL_KINDS]


def _lower_is_better(task: str) -> bool:
    return _task_kind(task) == "perplexity"


def _affective_mean(cfg: GridConfig, tasks: dict[str, dict[str, Any]]) -> float:
    """The Mean column: affective tasks only (control tasks are reported beside it)."""
    ctrl = set(control_task_names(cfg))
    keys = [t for t in tasks if t not in ctrl] or list(tasks)
    vals = [tasks[t]["primary"] for t in keys]
    return sum(vals) / len(vals) if vals else float("nan")


def mean_ci(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean and the half-width of its 95 % t-interval over seeds (nan for one seed)."""
    xs = [float(x) for x in values if x == x]
    n = len(xs)
    if n == 0:
        return float("nan"), float("nan"), 0
    m = sum(xs) / n
    if n < 2:
        return m, float("nan"), n
    from scipy.stats import t as student_t

    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1))
    return m, float(student_t.ppf(0.975, n - 1)) * sd / math.sqrt(n), n


def _fmt(x: float | None, scale: float = 100.0) -> str:
    if x is None or x != x:
        return "—"
    return f"{x * scale:.2f}"


def report(cfg: GridConfig, out: Path, echo: Callable[[str], None] = print) -> tuple[list[dict], dict]:
    """grid.csv, table.md, summary.json and the frontier from the finished cells."""
    cells: dict[tuple[str, int], dict[str, Any]] = {}
    for v, seed in cfg.cells():
        cp = _cell_path(out, v, seed)
        if not cp.is_file():
            raise AffectlensError(f"cell {v.name} seed {seed} has no result in {out}/cells")
        cells[(v.name, seed)] = json.loads(cp.read_text())
    tasks = list(cfg.tasks)
    ctrl = control_task_names(cfg)

    rows: list[dict[str, Any]] = []
    metric_keys: list[str] = []
    for c in cells.values():
        for t in tasks:
            for k, val in (c["tasks"].get(t, {}).get("metrics") or {}).items():
                if isinstance(val, int | float) and k not in metric_keys:
                    metric_keys.append(k)
    for (vname, seed), c in cells.items():
        for t in tasks:
            e = c["tasks"].get(t, {})
            row = {"variant": vname, "kind": c["kind"], "seed": seed, "task": t,
                   "primary": e.get("primary"), "n": e.get("n"),
                   "trainable_params": c.get("trainable_params"),
                   "seconds_per_step": c.get("seconds_per_step")}
            for k in metric_keys:
                val = (e.get("metrics") or {}).get(k)
                row[k] = val if isinstance(val, int | float) else None
            rows.append(row)
    fields = ["variant", "kind", "seed", "task", "primary", *metric_keys, "n", "trainable_params",
              "seconds_per_step"]
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    w.writerows(rows)
    _write_text(out / "grid.csv", buf.getvalue())

    # Per-variant means with 95 % CIs over seeds.
    summary: dict[str, Any] = {"reference": cfg.reference, "tasks": tasks, "control_tasks": ctrl, "variants": {}}
    for v in cfg.variants:
        cs = [cells[(v.name, s)] for s in (cfg.seeds if v.seeded else cfg.seeds[:1])]
        per_task = {t: mean_ci([c["tasks"].get(t, {}).get("primary", float("nan")) for c in cs]) for t in tasks}
        mean = mean_ci([c["mean"] for c in cs])
        ctrl_mean = mean_ci([sum(c["tasks"][t]["primary"] for t in ctrl) / len(ctrl) for c in cs]) if ctrl else None
        sps = [c["seconds_per_step"] for c in cs if c.get("seconds_per_step")]
        summary["variants"][v.name] = {
            "kind": v.kind, "seeds": [c["seed"] for c in cs],
            "tasks": {t: {"mean": m, "ci95": h, "n_seeds": n} for t, (m, h, n) in per_task.items()},
            "mean": {"mean": mean[0], "ci95": mean[1], "n_seeds": mean[2]},
            "control_mean": None if ctrl_mean is None else {"mean": ctrl_mean[0], "ci95": ctrl_mean[1]},
            "trainable_params": cs[0].get("trainable_params"),
            "params_ablated": cs[0].get("params_ablated"), "ablated": cs[0].get("ablated"),
            "seconds_per_step": sum(sps) / len(sps) if sps else None,
            "source": cs[0].get("source"),
        }
    frontier = _frontier(cfg, summary)
    summary["frontier"] = frontier
    md = _markdown(cfg, summary, tasks, ctrl)
    _write_text(out / "table.md", md)
    from .runs import write_json

    # NaN in the summary means "no value" (a 95 % CI over one seed): written as null.
    write_json(out / "summary.json", summary, nonfinite="null")
    _plot_frontier(cfg, summary, out / "frontier.png")
    echo(md)
    for line in frontier.get("lines", []):
        echo(line)
    echo(f"wrote {out}/grid.csv, table.md, summary.json, frontier.png")
    return rows, summary


def _write_text(path: Path, text: str) -> None:
    """Temp file + rename: a report file is whole or absent."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            f.write(text)
        tmp.replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _markdown(cfg: GridConfig, summary: dict[str, Any], tasks: list[str], ctrl: list[str]) -> str:
    variants = summary["variants"]
    cols = [*tasks, "Mean"]
    best: dict[str, float] = {}
    for col in cols:
        vals = [(variants[v]["tasks"][col]["mean"] if col != "Mean" else variants[v]["mean"]["mean"])
                for v in variants]
        vals = [x for x in vals if x == x]
        if vals:
            best[col] = min(vals) if col != "Mean" and _lower_is_better(col) else max(vals)
    multi = len(cfg.seeds) > 1
    lines = [f"# {cfg.name}", "",
             f"Primary metric x100 (mean over seeds{' ± 95 % CI' if multi else ''}); "
             f"Mean = affective tasks only" + (f" (control: {', '.join(ctrl)})" if ctrl else "") + "; best in bold.",
             "", "| variant | kind | params | " + " | ".join(cols) + " |",
             "|---|---|---:|" + "---:|" * len(cols)]
    for name, s in variants.items():
        cells = []
        for col in cols:
            e = s["mean"] if col == "Mean" else s["tasks"][col]
            scale = 1.0 if col != "Mean" and _lower_is_better(col) else 100.0
            txt = _fmt(e["mean"], scale)
            if multi and e.get("ci95") == e.get("ci95") and e.get("ci95") is not None:
                txt += f" ± {_fmt(e['ci95'], scale)}"
            if col in best and e["mean"] == best[col]:
                txt = f"**{txt}**"
            cells.append(txt)
        p = s["trainable_params"] if s["kind"] != "ablate" else s["params_ablated"]
        ptxt = "—" if p is None else f"{p:,}" + (" (abl.)" if s["kind"] == "ablate" else "")
        lines.append(f"| {name} | {s['kind']} | {ptxt} | " + " | ".join(cells) + " |")
    abl = {n: s for n, s in variants.items() if s["kind"] == "ablate"}
    if abl:
        lines += ["", "## Necessity: drop on affective vs control tasks (same ablation)", "",
                  "| ablation | ablated modules | params | affective Mean (drop) | control (drop) |",
                  "|---|---|---:|---:|---:|"]
        for n, s in abl.items():
            src = variants.get(s["source"] or "", None)
            da = dc = "—"
            if src is not None:
                da = _fmt(src["mean"]["mean"] - s["mean"]["mean"])
                if s["control_mean"] and src["control_mean"]:
                    dc = _fmt(src["control_mean"]["mean"] - s["control_mean"]["mean"])
            cm = _fmt(s["control_mean"]["mean"]) if s["control_mean"] else "—"
            lines.append(f"| {n} | {','.join(s['ablated'] or [])} | {s['params_ablated'] or 0:,} | "
                         f"{_fmt(s['mean']['mean'])} ({da}) | {cm} ({dc}) |")
    fr = summary.get("frontier", {})
    if fr.get("lines"):
        lines += ["", "## Cost-performance frontier", "", *[f"- {x}" for x in fr["lines"]]]
    return "\n".join(lines) + "\n"


def _frontier(cfg: GridConfig, summary: dict[str, Any]) -> dict[str, Any]:
    """Each trained variant's share of the reference's mean score and of its parameters."""
    variants = summary["variants"]
    ref = cfg.reference
    pts = [{"variant": n, "params": s["trainable_params"], "mean": s["mean"]["mean"], "ci95": s["mean"]["ci95"],
            "kind": s["kind"]} for n, s in variants.items()
           if s["kind"] in ("tune", "reference", "transfer") and s["trainable_params"]]
    out: dict[str, Any] = {"reference": ref, "points": pts, "lines": []}
    r = variants.get(ref or "")
    if r is None or not r["trainable_params"] or not (r["mean"]["mean"] > 0):
        return out
    for p in pts:
        if p["variant"] == ref:
            continue
        p["score_share"] = p["mean"] / r["mean"]["mean"]
        p["param_share"] = p["params"] / r["trainable_params"]
        out["lines"].append(
            f"{p['variant']}: {100 * p['score_share']:.1f} % of {ref}'s mean score at "
            f"{100 * p['param_share']:.1f} % of its parameters ({p['params']:,} vs {r['trainable_params']:,})")
    # Pareto front: no other point has fewer params and a higher score.
    front = [p["variant"] for p in pts if not any(
        q["params"] <= p["params"] and q["mean"] > p["mean"] for q in pts if q is not p)]
    out["pareto"] = front
    return out


def _plot_frontier(cfg: GridConfig, summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = summary["frontier"]["points"]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    markers = {"tune": "o", "reference": "s", "transfer": "^"}
    for p in pts:
        err = p["ci95"] if p["ci95"] == p["ci95"] else None
        ax.errorbar(p["params"], 100 * p["mean"], yerr=None if err is None else 100 * err,
                    fmt=markers.get(p["kind"], "o"), capsize=3,
                    color="C3" if p["variant"] == cfg.reference else "C0")
        ax.annotate(p["variant"], (p["params"], 100 * p["mean"]), textcoords="offset points", xytext=(5, 4),
                    fontsize=8)
    front = sorted((p for p in pts if p["variant"] in summary["frontier"].get("pareto", [])),
                   key=lambda p: p["params"])
    if len(front) > 1:
        ax.plot([p["params"] for p in front], [100 * p["mean"] for p in front], "--", color="gray", lw=1)
    for n, s in summary["variants"].items():
        if s["kind"] == "reference" and not s["trainable_params"]:
            ax.axhline(100 * s["mean"]["mean"], color="gray", lw=0.8, ls=":")
            ax.annotate(n, (ax.get_xlim()[0] if pts else 0, 100 * s["mean"]["mean"]), fontsize=8)
    if pts:
        ax.set_xscale("log")
    ax.set_xlabel("trainable parameters")
    ax.set_ylabel("mean affective score (x100)")
    ax.set_title(f"{cfg.name}: cost-performance frontier")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


__all__ = ["GridConfig", "GridResult", "Variant", "fingerprint_inputs", "load_config", "mean_ci", "report",
           "run_grid", "validate_config"]

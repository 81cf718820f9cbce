"""Where did fine-tuning change the model? Module-wise weight change (paper Eqs. 1-2).

For every tuned model, layer, module and param: ``l2 = ‖ΔW‖_F`` (Eq. 1),
``relative = ‖ΔW‖_F / (‖W_base‖_F + 1e-12)`` (Eq. 2) and ``rms = ‖ΔW‖_F/√n``
(fair across module sizes), plus a streaming histogram of element-wise
relative changes (Fig. 10). Tensors are read one row-chunk at a time, so
peak memory is O(largest tensor chunk), not O(model); LoRA norms use r×r
Grams and never form BA.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import AffectlensError
from .modules import FUSED, MODULES, ModuleKey, ParsedName, split_rows
from .runs import atomic_dir, progress, write_json, write_manifest
from .weights.compat import check_adapter_fits, check_architecture
from .weights.lora import LoraAdapter, LoraModule, lora_delta_norm
from .weights.store import SafetensorsStore, WeightStore, open_weights

METRICS = ("l2", "relative", "rms")
CSV_HEADER = ["model", "layer", "module", "param", "numel", "l2", "relative", "rms"]
EPS_NORM = 1e-12
EPS_ELEM = 1e-8
# log10 of |ΔW|/(|W|+ε): bins from 1e-6 to 10, plus under/overflow; exact zeros counted apart.
HIST_LO, HIST_HI, HIST_BINS = -6.0, 1.0, 70
BF16_REL_RESOLUTION = 2.0**-8  # half an ulp at ε = 2⁻⁷: smaller relative changes round away


@dataclass
class Tuned:
    """One tuned model to compare with the base: a full checkpoint or a PEFT adapter."""

    label: str
    path: Path
    store: WeightStore | None = None
    adapter: LoraAdapter | None = None

    @property
    def kind(self) -> str:
        return "adapter" if self.adapter is not None else "full"


@dataclass
class _Acc:
    """Running sums for one (model, layer, module, param, expert) cell."""

    numel: int = 0
    ssq_delta: float = 0.0
    ssq_base: float = 0.0
    exact_l2: float | None = None


@dataclass
class LocateResult:
    """Everything ``locate`` computed; ``out`` is the run dir when one was written."""

    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    histograms: dict[str, dict[str, np.ndarray]]
    other_rows: list[dict[str, Any]]
    out: Path | None = None

    def table(self) -> str:
        """A readable per-model summary for the terminal."""
        lines: list[str] = []
        for label, info in self.summary["models"].items():
            lines.append(f"== {label} ({info['kind']}) ==")
            lines.append(f"{'module':<10} {'mean l2':>11} {'mean rel':>11} {'mean rms':>11} "
                         f"{'top layers (rel)':>17}")
            rk = info["ranking"]
            for mod in rk["relative"]["mean"]:
                lines.append(
                    f"{mod:<10} {rk['l2']['mean'][mod]:>11.4g} {rk['relative']['mean'][mod]:>11.4g} "
                    f"{rk['rms']['mean'][mod]:>11.4g} {100 * rk['relative']['top_share'][mod]:>16.0f}%"
                )
            loc = info["locus"]
            lines.append(f"locus: l2={loc['l2']}  relative={loc['relative']}  rms={loc['rms']}")
        return "\n".join(lines)


def _label_for(path: Path) -> str:
    return path.stem if path.is_file() else path.name


def open_tuned(path: str | os.PathLike, label: str, allow_pickle: bool = False) -> Tuned:
    p = Path(path)
    if not p.exists():
        raise AffectlensError(f"tuned model {p} does not exist")
    if p.is_dir() and (p / "adapter_config.json").is_file():
        return Tuned(label, p, adapter=LoraAdapter(p, allow_pickle=allow_pickle))
    return Tuned(label, p, store=open_weights(p, allow_pickle=allow_pickle))


def _row_reader(store: WeightStore, name: str) -> Callable[[int, int], torch.Tensor]:
    """Row-chunk access: file reads for safetensors, one load for formats that need decoding."""
    if isinstance(store, SafetensorsStore):
        return lambda r0, r1: store.read_rows(name, r0, r1)
    full = store.get(name)
    return lambda r0, r1: full[r0:r1]


def _segments(p: ParsedName, rows: int, config: dict[str, Any]) -> list[tuple[ModuleKey, int, int]]:
    """Canonical (key, row range) cells of one tensor; fused tensors give several."""
    assert p.key is not None
    if not p.fused:
        return [(p.key, 0, rows)]
    ranges = split_rows(p.fused, rows, config)
    return [(ModuleKey(p.key.layer, mod, p.key.param, p.key.expert), a, b)
            for mod in FUSED[p.fused] for a, b in [ranges[mod]]]


def _ssq(t: torch.Tensor, what: str) -> float:
    """Σx² of a float32 chunk; torch's cascade sum keeps ~1e-9 relative error at 4M elements.

    A non-finite sum means a NaN/Inf element: checked here instead of a separate pass.
    """
    v = float(torch.sum(t * t))
    if not math.isfinite(v):
        raise AffectlensError(f"non-finite values (NaN/Inf) in {what}")
    return v


def _hist(delta: torch.Tensor, base: torch.Tensor) -> tuple[np.ndarray, int]:
    """Histogram of log10 |ΔW|/(|W|+ε) over the fixed bins, and the count of exact zeros.

    One log pass and one histc; under/overflow come from the totals, not extra masks.
    """
    logs = torch.log10(delta.abs().div_(base.abs().add_(EPS_ELEM)))  # exact zeros -> -inf
    n = logs.numel()
    zero = int(torch.count_nonzero(delta == 0))
    over = int(torch.count_nonzero(logs > HIST_HI))
    inner = torch.histc(logs, bins=HIST_BINS, min=HIST_LO, max=HIST_HI).numpy().astype(np.int64)
    counts = np.zeros(HIST_BINS + 2, dtype=np.int64)
    counts[1:-1] = inner
    counts[-1] = over
    counts[0] = n - zero - over - int(inner.sum())
    return counts, zero


def _quantiles(counts: np.ndarray, zeros: int, qs: Sequence[float]) -> dict[str, float]:
    """Quantiles of the relative change read off the histogram (bin-resolution)."""
    total = int(counts.sum()) + zeros
    edges = np.linspace(HIST_LO, HIST_HI, HIST_BINS + 1)
    out: dict[str, float] = {}
    if total == 0:
        return {f"q{int(q * 100)}": float("nan") for q in qs}
    cum = np.cumsum(np.concatenate([[zeros], counts]))
    for q in qs:
        target = q * total
        i = int(np.searchsorted(cum, target, side="left"))
        if i == 0:
            v = 0.0
        elif i == 1:
            v = 10 ** HIST_LO
        elif i >= len(cum) - 1:
            v = 10 ** HIST_HI
        else:
            v = float(10 ** edges[i - 2])  # lower edge of the bin holding the quantile
        out[f"q{int(round(q * 100))}"] = v
    return out


def _lora_seg_norm(ad: LoraAdapter, mod: LoraModule, r0: int, r1: int) -> float:
    A = ad.store.get(mod.a_name)
    B = ad.store.get(mod.b_name)[r0:r1]
    v = lora_delta_norm(A, B, mod.scale)
    if not math.isfinite(v):
        raise AffectlensError(f"non-finite values (NaN/Inf) in the LoRA tensors of {mod.path}")
    return v


def locate(
    base: str | os.PathLike,
    tuned: Sequence[str | os.PathLike],
    labels: Sequence[str] | None = None,
    out: str | os.PathLike | None = None,
    force: bool = False,
    allow_pickle: bool = False,
    distribution: bool = True,
    chunk_elems: int = 1 << 22,
    show_progress: bool = True,
) -> LocateResult:
    """Measure module-wise weight change of each tuned model against ``base``."""
    if not tuned:
        raise AffectlensError("give at least one tuned model or adapter")
    if labels is None:
        labels = [_label_for(Path(t)) for t in tuned]
    labels = list(labels)
    if len(labels) != len(tuned):
        raise AffectlensError(f"{len(labels)} labels for {len(tuned)} tuned models")
    if len(set(labels)) != len(labels):
        raise AffectlensError(f"labels must be distinct: {labels}")
    if out is not None:
        from .runs import check_out_dir

        check_out_dir(out, force)
    base_store = open_weights(base, allow_pickle=allow_pickle)
    models = [open_tuned(t, lab, allow_pickle) for t, lab in zip(tuned, labels, strict=True)]
    only_in_tuned: dict[str, list[str]] = {}
    for m in models:
        if m.adapter is not None:
            check_adapter_fits(base_store, m.adapter, what=f"adapter {m.label} ({m.path})")
        else:
            assert m.store is not None
            only_in_tuned[m.label] = check_architecture(base_store, m.store, f"{m.label} ({m.path})")

    inv = base_store.inventory
    if not inv.modules:
        raise AffectlensError(f"no layer projections found in {base}: is it a causal LM checkpoint?")
    config = base_store.config
    module_tensors: dict[str, ParsedName] = {}
    for parsed_list in inv.modules.values():
        for p in parsed_list:
            module_tensors[p.name] = p
    names = sorted(module_tensors, key=lambda n: (module_tensors[n].key, n))

    accs: dict[tuple[str, ModuleKey], _Acc] = {}
    hists: dict[tuple[str, str], np.ndarray] = {}
    zeros: dict[tuple[str, str], int] = {}
    it = progress(names, desc="tensors", total=len(names), unit="tensor") if show_progress else names
    for name in it:
        p = module_tensors[name]
        shape = base_store.shape(name)
        rows = shape[0]
        cols = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        segs = _segments(p, rows, config)
        base_rows = _row_reader(base_store, name)
        readers: dict[str, Callable[[int, int], torch.Tensor] | None] = {}
        lora_mod: dict[str, LoraModule | None] = {}
        for m in models:
            if m.store is not None:
                readers[m.label] = _row_reader(m.store, name)
            else:
                assert m.adapter is not None
                rep = m.adapter.replacement_for(name)
                readers[m.label] = _row_reader(m.adapter.store, rep) if rep else None
                lora_mod[m.label] = m.adapter.module_for(name)
                if readers[m.label] is None and lora_mod[m.label] is not None:
                    for key, a, b in segs:
                        acc = accs.setdefault((m.label, key), _Acc())
                        if not m.adapter.use_dora:
                            prev = acc.exact_l2 or 0.0
                            acc.exact_l2 = math.sqrt(prev**2 + _lora_seg_norm(m.adapter, lora_mod[m.label], a, b) ** 2)
        step = max(1, chunk_elems // max(cols, 1))
        for key, a, b in segs:
            for r0 in range(a, b, step):
                r1 = min(b, r0 + step)
                w = base_rows(r0, r1).to(torch.float32)
                ssq_b = _ssq(w, f"{name} of the base")
                for m in models:
                    acc = accs.setdefault((m.label, key), _Acc())
                    acc.ssq_base += ssq_b
                    acc.numel += w.numel()
                    hk = (m.label, key.module) if key.param == "weight" else None
                    d: torch.Tensor | None
                    reader = readers[m.label]
                    if reader is not None:
                        d = reader(r0, r1).to(torch.float32) - w
                        what = f"{name} of {m.label}"
                    elif lora_mod.get(m.label) is not None:
                        assert m.adapter is not None
                        if not distribution and not m.adapter.use_dora:
                            continue
                        d = m.adapter.delta_rows(lora_mod[m.label], r0, r1, base_rows=w)
                        what = f"LoRA change of {name} in {m.label}"
                    else:
                        if hk is not None and distribution:
                            zeros[hk] = zeros.get(hk, 0) + w.numel()
                        continue
                    ssq_d = _ssq(d, what)
                    if acc.exact_l2 is None:
                        acc.ssq_delta += ssq_d
                    if hk is not None and distribution:
                        c, z = _hist(d, w)
                        hists[hk] = hists.get(hk, np.zeros(HIST_BINS + 2, np.int64)) + c
                        zeros[hk] = zeros.get(hk, 0) + z

    rows_out, expert_rows = _rows(models, accs)
    other_rows = _other_tensors(base_store, models, inv.others, chunk_elems)
    summary = _summary(models, rows_out, hists, zeros, inv, base_store)
    for m in models:
        if m.store is None:
            continue
        # Tensors one side lacks cannot be compared; they are listed, never silently dropped.
        summary["models"][m.label]["only_in_tuned"] = only_in_tuned[m.label]
        summary["models"][m.label]["only_in_base"] = sorted(n for n in base_store.names() if n not in m.store)
    histograms = {m.label: {mod: hists.get((m.label, mod), np.zeros(HIST_BINS + 2, np.int64))
                            for mod in MODULES if (m.label, mod) in hists or (m.label, mod) in zeros}
                  for m in models}
    for lab, per in histograms.items():
        for mod in per:
            per[mod] = np.concatenate([[zeros.get((lab, mod), 0)], per[mod]])
    result = LocateResult(rows_out, summary, histograms, other_rows)
    if out is not None:
        options = {"labels": labels, "allow_pickle": allow_pickle, "distribution": distribution,
                   "eps_norm": EPS_NORM, "eps_elem": EPS_ELEM,
                   "hist": {"lo": HIST_LO, "hi": HIST_HI, "bins": HIST_BINS}}
        with atomic_dir(out, force) as tmp:
            _write(tmp, result, expert_rows)
            write_manifest(tmp, "locate", {"base": str(base), **{f"tuned:{m.label}": str(m.path) for m in models}},
                           options)
        result.out = Path(out)
    return result


def _rows(models: Sequence[Tuned], accs: dict[tuple[str, ModuleKey], _Acc]
          ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One row per (model, layer, module, param); MoE experts are pooled, and listed apart."""
    pooled: dict[tuple[str, int, str, str], _Acc] = {}
    expert_rows: list[dict[str, Any]] = []
    for (label, key), acc in accs.items():
        l2sq = acc.exact_l2**2 if acc.exact_l2 is not None else acc.ssq_delta
        if key.expert is not None:
            l2 = math.sqrt(l2sq)
            expert_rows.append({"model": label, "layer": key.layer, "module": key.module, "param": key.param,
                                "expert": key.expert, "numel": acc.numel, "l2": l2,
                                "relative": l2 / (math.sqrt(acc.ssq_base) + EPS_NORM),
                                "rms": l2 / math.sqrt(max(acc.numel, 1))})
        p = pooled.setdefault((label, key.layer, key.module, key.param), _Acc())
        p.numel += acc.numel
        p.ssq_base += acc.ssq_base
        p.ssq_delta += l2sq
    order = {m.label: i for i, m in enumerate(models)}
    mod_order = {m: i for i, m in enumerate(MODULES)}
    rows = []
    for (label, layer, module, param), acc in sorted(
        pooled.items(), key=lambda kv: (order[kv[0][0]], kv[0][1], mod_order.get(kv[0][2], 99), kv[0][3])
    ):
        l2 = math.sqrt(acc.ssq_delta)
        rows.append({"model": label, "layer": layer, "module": module, "param": param, "numel": acc.numel,
                     "l2": l2, "relative": l2 / (math.sqrt(acc.ssq_base) + EPS_NORM),
                     "rms": l2 / math.sqrt(max(acc.numel, 1))})
    return rows, expert_rows


def _other_tensors(base: WeightStore, models: Sequence[Tuned], others: dict[str, list[str]],
                   chunk_elems: int) -> list[dict[str, Any]]:
    """Embeddings, norms, heads, routers, encoders: reported with their change, never dropped."""
    out = []
    for scope, names in sorted(others.items()):
        for name in names:
            row: dict[str, Any] = {"tensor": name, "scope": scope, "numel": base.numel(name)}
            shape = base.shape(name)
            for m in models:
                src = None
                if m.store is not None and name in m.store:
                    src = (m.store, name)
                elif m.adapter is not None and m.adapter.replacement_for(name):
                    src = (m.adapter.store, m.adapter.replacement_for(name))
                if src is None:
                    # An adapter leaves it unchanged; a full checkpoint lacking it has no value (empty cell,
                    # listed under only_in_base in summary.json), never a NaN.
                    row[f"l2:{m.label}"] = 0.0 if m.adapter is not None else None
                    continue
                if tuple(src[0].shape(src[1])) != shape:
                    raise AffectlensError(
                        f"shape mismatch for {name}: base {list(shape)} vs {m.label} {list(src[0].shape(src[1]))}")
                b_rows, t_rows = _row_reader(base, name), _row_reader(*src)
                rows = shape[0] if shape else 1
                step = max(1, chunk_elems // max(1, base.numel(name) // max(rows, 1)))
                ssq = 0.0
                for r0 in range(0, rows, step):
                    r1 = min(rows, r0 + step)
                    d = t_rows(r0, r1).to(torch.float32) - b_rows(r0, r1).to(torch.float32)
                    ssq += _ssq(d, f"{name} of {m.label} or the base")
                row[f"l2:{m.label}"] = math.sqrt(ssq)
            out.append(row)
    return out


def _summary(models: Sequence[Tuned], rows: list[dict[str, Any]], hists: dict, zeros: dict,
             inv: Any, base: WeightStore) -> dict[str, Any]:
    out: dict[str, Any] = {"models": {}, "tensors": inv.summary(),
                           "unmatched": sorted(inv.others.get("unknown", [])),
                           "layers": len(inv.layers)}
    for m in models:
        mrows = [r for r in rows if r["model"] == m.label and r["param"] == "weight"]
        mods = [mod for mod in MODULES if any(r["module"] == mod for r in mrows)]
        layers = sorted({r["layer"] for r in mrows})
        ranking: dict[str, Any] = {}
        locus: dict[str, str] = {}
        for metric in METRICS:
            mean = {mod: float(np.mean([r[metric] for r in mrows if r["module"] == mod])) for mod in mods}
            top = {mod: 0 for mod in mods}
            for layer in layers:
                cells = {r["module"]: r[metric] for r in mrows if r["layer"] == layer}
                if cells and max(cells.values()) > 0:
                    top[max(cells, key=lambda k: cells[k])] += 1
            order = sorted(mods, key=lambda k: -mean[k])
            ranking[metric] = {"mean": {k: mean[k] for k in order},
                               "top_share": {k: top[k] / max(len(layers), 1) for k in order},
                               "order": order}
            locus[metric] = order[0] if order and mean[order[0]] > 0 else "none"
        dist = {}
        for mod in mods:
            c = hists.get((m.label, mod), np.zeros(HIST_BINS + 2, np.int64))
            z = zeros.get((m.label, mod), 0)
            if c.sum() + z:
                dist[mod] = {"zero_share": z / (c.sum() + z), **_quantiles(c, z, (0.05, 0.25, 0.5, 0.75, 0.95))}
        bias_rows = [r for r in rows if r["model"] == m.label and r["param"] == "bias"]
        out["models"][m.label] = {
            "kind": m.kind, "path": str(m.path), "locus": locus, "ranking": ranking,
            "distribution": dist,
            "bias_l2_total": math.sqrt(sum(r["l2"] ** 2 for r in bias_rows)) if bias_rows else None,
        }
        if m.adapter is not None:
            out["models"][m.label]["adapter"] = {
                "rank": m.adapter.config.get("r"), "alpha": m.adapter.config.get("lora_alpha"),
                "use_rslora": m.adapter.rslora, "use_dora": m.adapter.use_dora,
                "modules": len(m.adapter.modules), "replacements": sorted(m.adapter.replacements),
                "unmatched": m.adapter.unmatched}
    return out


def _write(tmp: Path, result: LocateResult, expert_rows: list[dict[str, Any]]) -> None:
    with open(tmp / "weight_change.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_HEADER)
        w.writeheader()
        for r in result.rows:
            w.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in r.items()})
    if expert_rows:
        with open(tmp / "weight_change_experts.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=[*CSV_HEADER[:4], "expert", *CSV_HEADER[4:]])
            w.writeheader()
            w.writerows(expert_rows)
    if result.other_rows:
        keys: list[str] = []
        for r in result.other_rows:
            keys.extend(k for k in r if k not in keys)
        with open(tmp / "other_tensors.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(result.other_rows)
    write_json(tmp / "summary.json", result.summary)
    np.savez(tmp / "distribution.npz",
             edges=np.linspace(HIST_LO, HIST_HI, HIST_BINS + 1),
             **{f"{lab}|{mod}": c for lab, per in result.histograms.items() for mod, c in per.items()})
    from .report import distribution_plot, heatmaps

    heatmaps(result.rows, tmp)
    distribution_plot(result.histograms, tmp / "distribution.png",
                      edges=np.linspace(HIST_LO, HIST_HI, HIST_BINS + 1),
                      bf16_resolution=BF16_REL_RESOLUTION)


"""Where did fine-tuning change the model? Module-wise weight change (paper Eqs. 1-2).

For every tuned model, layer, module and param: ``l2 = ‖ΔW‖_F`` (Eq. 1),
``relative = ‖ΔW‖_F / (‖W_base‖_F + 1e-12)`` (Eq. 2) and ``rms = ‖ΔW‖_F/√n``
(fair across module sizes), plus a streaming histogram of element-wise
relative changes (Fig. 10) binned by the float32 exponent and top mantissa
bits (one shift and one bincount; ``locate_stats``). Tensors are spread over
worker threads (``tensor_pool``) and read one row-chunk at a time, so
peak memory is O(largest tensor chunk), not O(model); LoRA norms use r×r
Grams and never form BA. This module reads and accumulates; the statistics
on the sums live in ``locate_stats``, the figures in ``plots``.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import AffectlensError
from .locate_stats import (
    BF16_REL_RESOLUTION,
    CSV_HEADER,
    EPS_ELEM,
    EPS_NORM,
    EXPERT_HEADER,
    HIST_BINS,
    HIST_HI,
    HIST_LO,
    HIST_MANT_BITS,
    METRICS,
    Acc,
    ExpertRow,
    LocateRow,
    fold_codes,
    format_table,
    hist_edges,
    layer_module_grid,
    notes,
    pool_rows,
    ratio_codes,
    ratio_denominator,
    summarize,
)
from .modules import FUSED, MODULES, ModuleKey, ParsedName, split_rows
from .runs import Progress, RunDir
from .tensor_pool import Scratch, TensorWorkers
from .weights.compat import check_adapter_fits, check_architecture
from .weights.lora import LoraAdapter, LoraModule, lora_delta_norm
from .weights.store import SafetensorsStore, WeightStore, open_weights


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
class LocateResult:
    """Everything ``locate`` computed; ``out`` is the run dir when one was written."""

    rows: list[LocateRow]
    summary: dict[str, Any]
    histograms: dict[str, dict[str, np.ndarray]]  # model -> module -> [zeros, under, bins..., over]
    other_rows: list[dict[str, Any]]  # embeddings, norms, heads: ``tensor, scope, numel, l2:<model>``
    expert_rows: list[ExpertRow] = field(default_factory=list)
    out: Path | None = None

    def table(self) -> str:
        """A readable per-model summary for the terminal."""
        return format_table(self.summary)

    def notes(self) -> list[str]:
        """Tensors that could not be compared (unmatched, only on one side), as terminal lines."""
        return notes(self.summary)


def label_for(path: Path) -> str:
    """The default label of a tuned model: its file stem or dir name."""
    return path.stem if path.is_file() else path.name


def open_tuned(path: str | os.PathLike, label: str, allow_pickle: bool = False) -> Tuned:
    p = Path(path)
    if not p.exists():
        raise AffectlensError(f"tuned model {p} does not exist")
    if p.is_dir() and (p / "adapter_config.json").is_file():
        return Tuned(label, p, adapter=LoraAdapter(p, allow_pickle=allow_pickle))
    return Tuned(label, p, store=open_weights(p, allow_pickle=allow_pickle))


def _segments(p: ParsedName, rows: int, config: dict[str, Any]) -> list[tuple[ModuleKey, int, int]]:
    """Canonical (key, row range) cells of one tensor; fused tensors give several."""
    assert p.key is not None
    if not p.fused:
        return [(p.key, 0, rows)]
    ranges = split_rows(p.fused, rows, config)
    return [(ModuleKey(p.key.layer, mod, p.key.param, p.key.expert), a, b)
            for mod in FUSED[p.fused] for a, b in [ranges[mod]]]


def _lora_seg_norm(ad: LoraAdapter, mod: LoraModule, r0: int, r1: int) -> float:
    A = ad.store.get(mod.a_name)
    B = ad.store.get(mod.b_name)[r0:r1]
    v = lora_delta_norm(A, B, mod.scale)
    if not math.isfinite(v):
        raise AffectlensError(f"non-finite values (NaN/Inf) in the LoRA tensors of {mod.path}")
    return v


def _labels(tuned: Sequence[str | os.PathLike], labels: Sequence[str] | None) -> list[str]:
    if not tuned:
        raise AffectlensError("give at least one tuned model or adapter")
    if labels is None:
        labels = [label_for(Path(t)) for t in tuned]
    labels = list(labels)
    if len(labels) != len(tuned):
        raise AffectlensError(f"{len(labels)} labels for {len(tuned)} tuned models")
    if len(set(labels)) != len(labels):
        raise AffectlensError(f"labels must be distinct: {labels}")
    return labels


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
    workers: int | None = None,
) -> LocateResult:
    """Measure module-wise weight change of each tuned model against ``base``; with ``out``, write a run.

    The run dir holds ``weight_change.csv`` (one ``LocateRow`` a line),
    ``weight_change_experts.csv`` (MoE), ``other_tensors.csv``,
    ``summary.json``, ``distribution.npz``, heatmaps, the distribution plot
    and the manifest. ``out`` is claimed before any tensor is read.
    """
    labels = _labels(tuned, labels)
    if out is None:
        return measure(base, tuned, labels, allow_pickle, distribution, chunk_elems, show_progress, workers)
    inputs = {"base": str(base), **{f"tuned:{lab}": str(Path(t)) for t, lab in zip(tuned, labels, strict=True)}}
    options = {"labels": labels, "allow_pickle": allow_pickle, "distribution": distribution,
               "eps_norm": EPS_NORM, "eps_elem": EPS_ELEM,
               "hist": {"lo": HIST_LO, "hi": HIST_HI, "bins": HIST_BINS,
                        "edges": f"2^e*(1+j/{1 << HIST_MANT_BITS}), log10 in distribution.npz"}}
    with RunDir(out, command="locate", force=force, inputs=inputs, options=options) as run:
        # matplotlib's import (~1 s) overlaps the tensor pass, whose torch ops release the GIL.
        warm = threading.Thread(target=_import_plots, daemon=True)
        warm.start()
        result = measure(base, tuned, labels, allow_pickle, distribution, chunk_elems, show_progress, workers)
        write_run(run, result)
    result.out = run.final
    return result


def _import_plots() -> None:
    from .plots import pyplot

    pyplot()


def measure(base: str | os.PathLike, tuned: Sequence[str | os.PathLike], labels: Sequence[str],
            allow_pickle: bool = False, distribution: bool = True, chunk_elems: int = 1 << 22,
            show_progress: bool = True, workers: int | None = None) -> LocateResult:
    """The numbers of ``locate`` (nothing written): stream every module tensor once for all models.

    Tensors go to ``workers`` threads (default: the thread policy's count); the
    sums are added in tensor order, so the numbers do not depend on them.
    """
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
    module_tensors = {p.name: p for parsed_list in inv.modules.values() for p in parsed_list}
    names = sorted(module_tensors, key=lambda n: (module_tensors[n].key, n))

    accs: dict[tuple[str, ModuleKey], Acc] = {}
    codes: dict[tuple[str, str], torch.Tensor] = {}
    zeros: dict[tuple[str, str], int] = {}
    labels = [m.label for m in models]
    jobs = [(n, module_tensors[n]) for n in names]
    with Progress(len(names), "tensors", "tensor", enabled=show_progress) as bar, TensorWorkers(workers) as pool:
        for contribs in pool.map(lambda job, scratch: tensor_job(job[0], job[1], base_store, models, distribution,
                                                                 chunk_elems, scratch), jobs):
            add_contributions(contribs, labels, accs, codes, zeros)
            bar.update(1)
        other_rows = other_tensors(base_store, models, inv.others, chunk_elems, pool)
    hists: dict[tuple[str, str], np.ndarray] = {}
    for hk, cc in codes.items():
        hists[hk], z = fold_codes(cc.numpy())
        zeros[hk] = zeros.get(hk, 0) + z

    rows, expert_rows = pool_rows([m.label for m in models], accs)
    summary = summarize(models, rows, hists, zeros, inv)
    for m in models:
        if m.store is None:
            continue
        # Tensors one side lacks cannot be compared; they are listed, never silently dropped.
        summary["models"][m.label]["only_in_tuned"] = only_in_tuned[m.label]
        summary["models"][m.label]["only_in_base"] = sorted(n for n in base_store.names() if n not in m.store)
    histograms = {m.label: {mod: np.concatenate([[zeros.get((m.label, mod), 0)],
                                                 hists.get((m.label, mod), np.zeros(HIST_BINS + 2, np.int64))])
                            for mod in MODULES if (m.label, mod) in hists or (m.label, mod) in zeros}
                  for m in models}
    return LocateResult(rows, summary, histograms, other_rows, expert_rows)


def chunk_reader(store: WeightStore, name: str, into: torch.Tensor | None) -> Callable[[int, int], torch.Tensor]:
    """Rows [r0, r1) of ``name``: file reads into the raw buffer ``into`` for safetensors, else one decode."""
    if isinstance(store, SafetensorsStore):
        return lambda r0, r1: store.read_rows(name, r0, r1, out=into)
    full = store.get(name)
    return lambda r0, r1: full[r0:r1]


def _ssq_of(t: torch.Tensor, sq: torch.Tensor, what: str) -> float:
    """Σx² of a float32 chunk (squared into the scratch ``sq``; torch's cascade sum, ~1e-9 relative error).

    A non-finite sum means a NaN/Inf element: checked here instead of a separate pass.
    """
    v = float(torch.sum(torch.mul(t, t, out=sq)))
    if not math.isfinite(v):
        raise AffectlensError(f"non-finite values (NaN/Inf) in {what}")
    return v


# What one tensor contributes, in order: ("base", key, numel, Σw²), ("delta", label, key, Σd² | None,
# codes | None), ("zeros", label, module, n), ("exact", label, key, ‖ΔW‖ of a LoRA segment).
Contribution = tuple[Any, ...]


def tensor_job(name: str, p: ParsedName, base_store: WeightStore, models: Sequence[Tuned], distribution: bool,
               chunk_elems: int, scratch: Scratch) -> list[Contribution]:
    """Read one base tensor (and each model's change of it) chunk by chunk; return its contributions.

    Runs in a worker thread: touches no shared state, so the caller adds the
    contributions in tensor order and the sums do not depend on the workers.
    """
    shape = base_store.shape(name)
    rows = shape[0]
    cols = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    segs = _segments(p, rows, base_store.config)
    out: list[Contribution] = []
    lora_mod: dict[str, LoraModule | None] = {}
    sources: dict[str, tuple[WeightStore, str] | None] = {}
    for m in models:
        if m.store is not None:
            sources[m.label] = (m.store, name)
            continue
        assert m.adapter is not None
        rep = m.adapter.replacement_for(name)
        sources[m.label] = (m.adapter.store, rep) if rep else None
        mod = lora_mod[m.label] = m.adapter.module_for(name)
        if sources[m.label] is None and mod is not None and not m.adapter.use_dora:
            # DoRA rescales W: its change needs the rows, read below
            out.extend(("exact", m.label, key, _lora_seg_norm(m.adapter, mod, a, b)) for key, a, b in segs)
    step = max(1, chunk_elems // max(cols, 1))
    scratch.get(step * cols)
    base_rows = chunk_reader(base_store, name, scratch.raw[0])
    readers = {lab: chunk_reader(*src, scratch.raw[1]) for lab, src in sources.items() if src is not None}
    for key, a, b in segs:
        for r0 in range(a, b, step):
            r1 = min(b, r0 + step)
            n = (r1 - r0) * cols
            w, d, denom, r = scratch.get(n)
            w_rows = base_rows(r0, r1)
            w.copy_(w_rows.reshape(-1))
            out.append(("base", key, n, _ssq_of(w, r, f"{name} of the base")))
            hist = distribution and key.param == "weight"
            have_denom = False
            for m in models:
                mod = lora_mod.get(m.label)
                if m.label in readers:
                    d.copy_(readers[m.label](r0, r1).reshape(-1)).sub_(w)
                    dd, what = d, f"{name} of {m.label}"
                elif mod is not None:
                    assert m.adapter is not None
                    if not distribution and not m.adapter.use_dora:
                        continue
                    dd = m.adapter.delta_rows(mod, r0, r1, base_rows=w.view(r1 - r0, cols)).reshape(-1)
                    what = f"LoRA change of {name} in {m.label}"
                else:
                    if hist:
                        out.append(("zeros", m.label, key.module, n))
                    continue
                ssq_d = _ssq_of(dd, r, what)
                codes = None
                if hist:
                    if not have_denom:
                        ratio_denominator(w, out=denom)
                        have_denom = True
                    codes = ratio_codes(dd, denom, out=r)
                out.append(("delta", m.label, key, ssq_d, codes))
    return out


def add_contributions(contribs: Sequence[Contribution], labels: Sequence[str], accs: dict[tuple[str, ModuleKey], Acc],
                      codes: dict[tuple[str, str], torch.Tensor], zeros: dict[tuple[str, str], int]) -> None:
    """Add one tensor's contributions to the running sums, in order."""
    for c in contribs:
        kind = c[0]
        if kind == "base":
            _, key, n, ssq_b = c
            for lab in labels:
                acc = accs.setdefault((lab, key), Acc())
                acc.ssq_base += ssq_b
                acc.numel += n
        elif kind == "delta":
            _, lab, key, ssq_d, cc = c
            acc = accs.setdefault((lab, key), Acc())
            if acc.exact_l2 is None:
                acc.ssq_delta += ssq_d
            if cc is not None:
                hk = (lab, key.module)
                codes[hk] = codes[hk] + cc if hk in codes else cc
        elif kind == "zeros":
            _, lab, mod, n = c
            zeros[(lab, mod)] = zeros.get((lab, mod), 0) + n
        else:  # exact
            _, lab, key, v = c
            acc = accs.setdefault((lab, key), Acc())
            acc.exact_l2 = math.sqrt((acc.exact_l2 or 0.0) ** 2 + v**2)


def other_tensors(base: WeightStore, models: Sequence[Tuned], others: dict[str, list[str]],
                  chunk_elems: int, pool: TensorWorkers | None = None) -> list[dict[str, Any]]:
    """Embeddings, norms, heads, routers, encoders: reported with their change, never dropped."""
    jobs = [(scope, name) for scope, names in sorted(others.items()) for name in names]
    pool = pool or TensorWorkers(1)
    return list(pool.map(lambda job, scratch: other_tensor_row(base, models, job[0], job[1], chunk_elems, scratch),
                         jobs))


def other_tensor_row(base: WeightStore, models: Sequence[Tuned], scope: str, name: str, chunk_elems: int,
                     scratch: Scratch) -> dict[str, Any]:
    """One row of ``other_tensors.csv``: ``tensor, scope, numel, l2:<model>``."""
    row: dict[str, Any] = {"tensor": name, "scope": scope, "numel": base.numel(name)}
    shape = base.shape(name)
    for m in models:
        src: tuple[WeightStore, str] | None = None
        rep = m.adapter.replacement_for(name) if m.adapter is not None else None
        if m.store is not None and name in m.store:
            src = (m.store, name)
        elif m.adapter is not None and rep:
            src = (m.adapter.store, rep)
        if src is None:
            # An adapter leaves it unchanged; a full checkpoint lacking it has no value (empty cell,
            # listed under only_in_base in summary.json), never a NaN.
            row[f"l2:{m.label}"] = 0.0 if m.adapter is not None else None
            continue
        if tuple(src[0].shape(src[1])) != shape:
            raise AffectlensError(
                f"shape mismatch for {name}: base {list(shape)} vs {m.label} {list(src[0].shape(src[1]))}")
        rows = shape[0] if shape else 1
        cols = max(1, base.numel(name) // max(rows, 1))
        step = max(1, chunk_elems // cols)
        scratch.get(step * cols)
        b_read, t_read = chunk_reader(base, name, scratch.raw[0]), chunk_reader(*src, scratch.raw[1])
        ssq = 0.0
        for r0 in range(0, rows, step):
            r1 = min(rows, r0 + step)
            b_rows = b_read(r0, r1)
            _, d, _, sq = scratch.get(b_rows.numel())
            d.copy_(t_read(r0, r1).reshape(-1)).sub_(b_rows.reshape(-1))
            ssq += _ssq_of(d, sq, f"{name} of {m.label} or the base")
        row[f"l2:{m.label}"] = math.sqrt(ssq)
    return row


def write_run(run: RunDir, result: LocateResult) -> None:
    """The files of a locate run (the manifest is RunDir's)."""
    from .plots import locate_distribution, locate_heatmap

    run.csv("weight_change.csv", [r.as_dict() for r in result.rows], CSV_HEADER)
    if result.expert_rows:
        run.csv("weight_change_experts.csv", [r.as_dict() for r in result.expert_rows], EXPERT_HEADER)
    if result.other_rows:
        run.csv("other_tensors.csv", result.other_rows)
    run.json("summary.json", result.summary)
    arrays: dict[str, Any] = {f"{lab}|{mod}": c for lab, per in result.histograms.items() for mod, c in per.items()}
    np.savez(run.file("distribution.npz"), edges=hist_edges(), **arrays)
    labels = list(dict.fromkeys(r.model for r in result.rows))
    for metric in METRICS:
        panels = {lab: (lab, *layer_module_grid(result.rows, lab, metric)) for lab in labels}
        for lab in labels:
            run.figure(f"heatmap_{metric}_{lab}.png", locate_heatmap([panels[lab]], metric))
        if len(labels) > 1:  # side by side on one colour scale
            run.figure(f"heatmap_{metric}.png", locate_heatmap(list(panels.values()), metric))
    run.figure("distribution.png", locate_distribution(result.histograms, hist_edges(), BF16_REL_RESOLUTION))


__all__ = ["CSV_HEADER", "HIST_BINS", "HIST_HI", "HIST_LO", "ExpertRow", "LocateResult", "LocateRow", "Tuned",
           "add_contributions", "label_for", "locate", "measure", "open_tuned", "other_tensors", "chunk_reader",
           "tensor_job", "write_run"]

"""Where did fine-tuning change the model? Module-wise weight change (paper Eqs. 1-2).

For every tuned model, layer, module and param: ``l2 = ‖ΔW‖_F`` (Eq. 1),
``relative = ‖ΔW‖_F / (‖W_base‖_F + 1e-12)`` (Eq. 2) and ``rms = ‖ΔW‖_F/√n``
(fair across module sizes), plus a streaming histogram of element-wise
relative changes (Fig. 10) binned by the float32 exponent and top mantissa
bits (one shift and one bincount; ``locate_stats``). Tensors are spread over
worker threads (``tensor_pool``) and read one row-chunk at a time, every
statistic taken in one in-cache pass over it (``locate_pass``), so peak
memory is O(largest tensor chunk), not O(model); LoRA norms use r×r Grams
and never form BA. This module orchestrates and writes the run; the
statistics on the sums live in ``locate_stats``, the figures in ``plots``
(drawn by ``locate_figures``, in a child process during long passes).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import AffectlensError
from ..models.adapters import check_adapter_targets
from ..modules import MODULES, ModuleKey
from ..plots.locate import heatmap_vmax
from ..runs import Progress, RunDir
from ..weights.compat import check_adapter_fits, check_architecture
from ..weights.lora import LoraAdapter
from ..weights.pool import TensorWorkers
from ..weights.store import WeightStore, open_weights
from .figures import FigureProcess, Job, draw_here
from .stats import (
    BF16_REL_RESOLUTION,
    CSV_HEADER,
    DIST_SAMPLE,
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
    sample_strides,
    summarize,
)
from .tensor_pass import add_contributions, chunk_reader, other_tensors, segments, tensor_job
from .tuned import Tuned


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
    distribution_sample: int = DIST_SAMPLE,
) -> LocateResult:
    """Measure module-wise weight change of each tuned model against ``base``; with ``out``, write a run.

    The run dir holds ``weight_change.csv`` (one ``LocateRow`` a line),
    ``weight_change_experts.csv`` (MoE), ``other_tensors.csv``,
    ``summary.json``, ``distribution.npz``, heatmaps, the distribution plot
    and the manifest. ``out`` is claimed before any tensor is read. A module
    with more than ``distribution_sample`` elements (0: no limit) gets its
    distribution from a systematic sample; summary.json says how (the norms
    always read every element).
    """
    labels = _labels(tuned, labels)
    if distribution_sample < 0:
        raise AffectlensError(f"--distribution-sample must be >= 0 (0: every element), got {distribution_sample}")
    if out is None:
        return measure(base, tuned, labels, allow_pickle, distribution, chunk_elems, show_progress, workers,
                       distribution_sample)
    inputs = {"base": str(base), **{f"tuned:{lab}": str(Path(t)) for t, lab in zip(tuned, labels, strict=True)}}
    options = {"labels": labels, "allow_pickle": allow_pickle, "distribution": distribution,
               "distribution_sample": distribution_sample,
               "eps_norm": EPS_NORM, "eps_elem": EPS_ELEM,
               "hist": {"lo": HIST_LO, "hi": HIST_HI, "bins": HIST_BINS,
                        "edges": f"2^e*(1+j/{1 << HIST_MANT_BITS}), log10 in distribution.npz"}}
    with RunDir(out, command="locate", force=force, inputs=inputs, options=options) as run:
        # matplotlib's import (1-2 s) overlaps a long tensor pass in a child process that draws the figures.
        figures = FigureProcess(sum(_weight_bytes(p) for p in (base, *tuned)))
        try:
            result = measure(base, tuned, labels, allow_pickle, distribution, chunk_elems, show_progress, workers,
                             distribution_sample)
            write_run(run, result, figures)
        finally:
            figures.close()
    result.out = run.final
    return result


def _weight_bytes(path: str | os.PathLike) -> int:
    """Bytes of weight files at ``path`` (a file, or a dir's top-level weight files): the pass's size."""
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    if not p.is_dir():
        return 0
    return sum(f.stat().st_size for f in p.iterdir() if f.is_file() and f.suffix in (".safetensors", ".bin", ".gguf"))


def measure(base: str | os.PathLike, tuned: Sequence[str | os.PathLike], labels: Sequence[str],
            allow_pickle: bool = False, distribution: bool = True, chunk_elems: int = 1 << 22,
            show_progress: bool = True, workers: int | None = None,
            distribution_sample: int = DIST_SAMPLE) -> LocateResult:
    """The numbers of ``locate`` (nothing written): stream every module tensor once for all models.

    Tensors go to ``workers`` threads (default: the thread policy's count); the
    sums are added in tensor order, so the numbers do not depend on them.
    """
    base_store = open_weights(base, allow_pickle=allow_pickle)
    models = [open_tuned(t, lab, allow_pickle) for t, lab in zip(tuned, labels, strict=True)]
    only_in_tuned: dict[str, list[str]] = {}
    for m in models:
        if m.adapter is not None:
            what = f"adapter {m.label} ({m.path})"
            check_adapter_fits(base_store, m.adapter, what=what)
            check_adapter_targets(m.adapter.config, base_store.names(), m.adapter.modules, what, base)
        else:
            assert m.store is not None
            only_in_tuned[m.label] = check_architecture(base_store, m.store, f"{m.label} ({m.path})")

    inv = base_store.inventory
    if not inv.modules:
        raise AffectlensError(f"no layer projections found in {base}: is it a causal LM checkpoint?")
    module_tensors = {p.name: p for parsed_list in inv.modules.values() for p in parsed_list}
    names = sorted(module_tensors, key=lambda n: (module_tensors[n].key, n))
    sizes = module_sizes(base_store, module_tensors)
    strides = sample_strides(sizes, distribution_sample)

    accs: dict[tuple[str, ModuleKey], Acc] = {}
    codes: dict[tuple[str, str], torch.Tensor] = {}
    zeros: dict[tuple[str, str], int] = {}
    labels = [m.label for m in models]
    jobs = [(n, module_tensors[n]) for n in names]
    with Progress(len(names), "tensors", "tensor", enabled=show_progress) as bar, TensorWorkers(workers) as pool:
        for contribs in pool.map(lambda job, scratch: tensor_job(job[0], job[1], base_store, models, distribution,
                                                                 chunk_elems, scratch, strides), jobs):
            add_contributions(contribs, labels, accs, codes, zeros)
            bar.update(1)
        other_rows = other_tensors(base_store, models, inv.others, chunk_elems, pool)
    hists: dict[tuple[str, str], np.ndarray] = {}
    for hk, cc in codes.items():
        hists[hk], z = fold_codes(cc.numpy())
        zeros[hk] = zeros.get(hk, 0) + z

    rows, expert_rows = pool_rows([m.label for m in models], accs)
    summary = summarize(models, rows, hists, zeros, inv, strides, sizes)
    if distribution:
        summary["distribution_sample"] = {
            "per_module": distribution_sample or None,
            "method": "every element" if all(k == 1 for k in strides.values()) else
            "systematic: the elements whose flat index in their tensor is a multiple of the module's stride "
            "(a prime dividing no row length); norms always use every element"}
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


def module_sizes(store: WeightStore, tensors: dict[str, Any]) -> dict[str, tuple[int, set[int]]]:
    """Per module: its weight elements over all layers (fused tensors split) and its tensors' row lengths."""
    out: dict[str, tuple[int, set[int]]] = {}
    for name, p in tensors.items():
        if p.key is None or p.key.param != "weight":
            continue
        shape = store.shape(name)
        cols = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        for key, a, b in segments(p, shape[0], store.config):
            total, colset = out.get(key.module, (0, set()))
            out[key.module] = (total + (b - a) * cols, colset | {cols})
    return out


def sample_notes(summary: dict[str, Any]) -> dict[str, str]:
    """Per model, one line for the distribution figure when any module's distribution is a sample."""
    out = {}
    for lab, info in summary["models"].items():
        samples = [d["sample"] for d in info.get("distribution", {}).values() if d["sample"]["stride"] > 1]
        if samples:
            out[lab] = (f"sampled: ≥{min(s['elements'] for s in samples):,} per module; "
                        f"shares ±{100 * max(s['max_bin_ci95'] for s in samples):.2f} pp (95 %)")
    return out


def write_run(run: RunDir, result: LocateResult, figures: FigureProcess | None = None) -> None:
    """The files of a locate run (the manifest is RunDir's); ``figures`` draws the PNGs (default: here)."""
    run.csv("weight_change.csv", [r.as_dict() for r in result.rows], CSV_HEADER)
    if result.expert_rows:
        run.csv("weight_change_experts.csv", [r.as_dict() for r in result.expert_rows], EXPERT_HEADER)
    if result.other_rows:
        run.csv("other_tensors.csv", result.other_rows)
    run.json("summary.json", result.summary)
    arrays: dict[str, Any] = {f"{lab}|{mod}": c for lab, per in result.histograms.items() for mod, c in per.items()}
    np.savez(run.file("distribution.npz"), edges=hist_edges(), **arrays)
    labels = list(dict.fromkeys(r.model for r in result.rows))
    jobs: list[Job] = []
    for metric in METRICS:
        panels = {lab: (lab, *layer_module_grid(result.rows, lab, metric)) for lab in labels}
        vmax = heatmap_vmax(p[1] for p in panels.values())  # every model's file of a metric: one colour scale
        for lab in labels:
            jobs.append((str(run.file(f"heatmap_{metric}_{lab}.png")), "locate_heatmap",
                         ([panels[lab]], metric, vmax)))
        if len(labels) > 1:  # side by side on one colour scale
            jobs.append((str(run.file(f"heatmap_{metric}.png")), "locate_heatmap", (list(panels.values()), metric)))
    jobs.append((str(run.file("distribution.png")), "locate_distribution",
                 (result.histograms, hist_edges(), BF16_REL_RESOLUTION, sample_notes(result.summary))))
    if figures is None:
        draw_here(jobs)
    else:
        figures.draw(jobs)


__all__ = ["CSV_HEADER", "HIST_BINS", "HIST_HI", "HIST_LO", "ExpertRow", "LocateResult", "LocateRow", "Tuned",
           "add_contributions", "label_for", "locate", "measure", "open_tuned", "other_tensors", "chunk_reader",
           "tensor_job", "write_run"]

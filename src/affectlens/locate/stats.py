"""locate's numbers once the tensors are read: rows, histograms, quantiles, rankings, the locus.

``affectlens.locate`` streams the tensors and fills running sums; everything
here works on those sums and on plain rows, so it is testable without a
checkpoint and the same rows feed the CSV, the summary and the heatmaps.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Self

import numpy as np
import torch

from ..modules import MODULES, ModuleKey

if TYPE_CHECKING:
    from .tuned import Tuned

METRICS = ("l2", "relative", "rms")
CSV_HEADER = ["model", "layer", "module", "param", "numel", "l2", "relative", "rms"]
EXPERT_HEADER = [*CSV_HEADER[:4], "expert", *CSV_HEADER[4:]]
EPS_NORM = 1e-12
EPS_ELEM = 1e-8
# The element-wise relative change r = |ΔW|/(|W|+ε) is binned by its float32 exponent and top
# HIST_MANT_BITS mantissa bits: bin edges are 2^e·(1 + j/4), exact float32 values, quarter octaves
# (0.058-0.097 decades wide) from 2^-20 (≈ 9.5e-7) to 2^4 = 16, plus under/overflow; exact zeros
# apart. A bin is [edge_i, edge_{i+1}): a value exactly on an edge counts in the bin above it.
# (Before issue 13: 70 uniform log10 bins of 0.1 decade from 1e-6 to 10, filled by log10 + histc,
# 3x the cost of the norms; the integer code of the bits is one shift and one bincount.)
HIST_MANT_BITS = 2
HIST_EXP_LO, HIST_EXP_HI = -20, 4
HIST_BINS = (HIST_EXP_HI - HIST_EXP_LO) << HIST_MANT_BITS
HIST_LO, HIST_HI = HIST_EXP_LO * math.log10(2.0), HIST_EXP_HI * math.log10(2.0)  # log10 of the end edges
CODE_SHIFT = 23 - HIST_MANT_BITS  # float32 bits >> CODE_SHIFT: (biased exponent, top mantissa bits)
N_CODES = 1 << (31 - CODE_SHIFT)  # codes of the non-negative float32 values (sign bit clear)
CODE_LO = (127 + HIST_EXP_LO) << HIST_MANT_BITS  # code of 2^HIST_EXP_LO, the first inner edge
CODE_HI = (127 + HIST_EXP_HI) << HIST_MANT_BITS  # code of 2^HIST_EXP_HI: overflow from here
# Elements per (model, module) distribution: above it the distribution is a systematic sample (issue 13:
# coding and counting every element costs ~3x the norms; 4M elements put every bin's share within
# ±0.05 percentage points at 95 %). 0: every element.
DIST_SAMPLE = 1 << 22
BF16_REL_RESOLUTION = 2.0**-8  # half an ulp at ε = 2⁻⁷: smaller relative changes round away


@dataclass(frozen=True)
class LocateRow:
    """One (model, layer, module, param) cell of weight change: a line of ``weight_change.csv``."""

    model: str
    layer: int
    module: str
    param: str
    numel: int
    l2: float  # ‖ΔW‖_F (Eq. 1)
    relative: float  # ‖ΔW‖_F / (‖W_base‖_F + EPS_NORM) (Eq. 2)
    rms: float  # ‖ΔW‖_F / √n: fair across module sizes

    @classmethod
    def from_sums(cls, model: str, key: ModuleKey, numel: int, l2sq: float, ssq_base: float,
                  **extra: Any) -> Self:
        """The three metrics from Σ(ΔW)² and Σ(W_base)²."""
        l2 = math.sqrt(l2sq)
        return cls(model=model, layer=key.layer, module=key.module, param=key.param, numel=numel, l2=l2,
                   relative=l2 / (math.sqrt(ssq_base) + EPS_NORM), rms=l2 / math.sqrt(max(numel, 1)),
                   **extra)

    def as_dict(self) -> dict[str, Any]:
        """The CSV row (keys in ``CSV_HEADER`` order; ``expert`` too for an expert row)."""
        return asdict(self)


@dataclass(frozen=True)
class ExpertRow(LocateRow):
    """One MoE expert's cell (``weight_change_experts.csv``); the main rows pool the experts."""

    expert: int = 0


@dataclass
class Acc:
    """Running sums for one (model, layer, module, param, expert) cell."""

    numel: int = 0
    ssq_delta: float = 0.0
    ssq_base: float = 0.0
    exact_l2: float | None = None  # a LoRA norm from r×r Grams, when BA is never formed

    @property
    def l2sq(self) -> float:
        return self.exact_l2**2 if self.exact_l2 is not None else self.ssq_delta


def ratio_denominator(base: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """|W| + ε in float32 (one buffer per chunk, shared by every tuned model)."""
    return torch.abs(base, out=out).add_(EPS_ELEM) if out is not None else base.abs().add_(EPS_ELEM)


def ratio_codes(delta: torch.Tensor, denom: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Counts of the bit codes of r = |ΔW|/(|W|+ε) (float32), ``N_CODES`` of them; fold with ``fold_codes``.

    ``delta`` (float32) is overwritten; ``out`` is a float32 scratch buffer of
    its size. Code 0 holds exactly the zeros of ``delta``: a non-zero float32
    difference over ``|W| + 1e-8`` is at least ~2^-122 (a difference of two
    distinct floats is at least 2^-149, and at least ~2^-25·|W| once |W|
    dominates), above the 2^-126·1.25 where code 1 starts, so no extra pass
    counts them.
    """
    r = torch.div(delta.abs_(), denom, out=out) if out is not None else delta.abs_().div_(denom)
    codes = r.view(torch.int32).bitwise_right_shift_(CODE_SHIFT)
    return torch.bincount(codes.reshape(-1), minlength=N_CODES)


def fold_codes(codes: np.ndarray | torch.Tensor) -> tuple[np.ndarray, int]:
    """Code counts -> ([under, bins..., over], exact zeros) over ``hist_edges()``."""
    c = np.asarray(codes, dtype=np.int64)
    counts = np.empty(HIST_BINS + 2, dtype=np.int64)
    counts[0] = c[1:CODE_LO].sum()
    counts[1:-1] = c[CODE_LO:CODE_HI]
    counts[-1] = c[CODE_HI:].sum()
    return counts, int(c[0])


def hist_counts(delta: torch.Tensor, base: torch.Tensor) -> tuple[np.ndarray, int]:
    """Histogram of |ΔW|/(|W|+ε) over the fixed bins, and the count of exact zeros.

    ``delta`` and ``base`` are overwritten (they are per-chunk temporaries).
    """
    return fold_codes(ratio_codes(delta.to(torch.float32), ratio_denominator(base.to(torch.float32))).numpy())


def hist_edge_values() -> np.ndarray:
    """The bin edges as values of r: 2^e·(1 + j/2^HIST_MANT_BITS), exact in float32 (and float64)."""
    k = 1 << HIST_MANT_BITS
    e = np.arange(HIST_EXP_LO, HIST_EXP_HI, dtype=np.float64)
    inner = (np.exp2(e)[:, None] * (1.0 + np.arange(k) / k)[None, :]).ravel()
    return np.concatenate([inner, [2.0**HIST_EXP_HI]])


def hist_edges() -> np.ndarray:
    """The bin edges in log10 (what the plot's axis and ``distribution.npz`` use)."""
    return np.log10(hist_edge_values())


def quantiles(counts: np.ndarray, zeros: int, qs: Sequence[float]) -> dict[str, float]:
    """Quantiles of the relative change read off the histogram (bin-resolution)."""
    total = int(counts.sum()) + zeros
    edges = hist_edge_values()
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
            v = float(edges[0])
        elif i >= len(cum) - 1:
            v = float(edges[-1])
        else:
            v = float(edges[i - 2])  # lower edge of the bin holding the quantile
        out[f"q{int(round(q * 100))}"] = v
    return out


def pool_rows(labels: Sequence[str], accs: dict[tuple[str, ModuleKey], Acc]
              ) -> tuple[list[LocateRow], list[ExpertRow]]:
    """One row per (model, layer, module, param); MoE experts are pooled, and listed apart."""
    pooled: dict[tuple[str, int, str, str], Acc] = {}
    expert_rows: list[ExpertRow] = []
    for (label, key), acc in accs.items():
        if key.expert is not None:
            expert_rows.append(ExpertRow.from_sums(label, key, acc.numel, acc.l2sq, acc.ssq_base,
                                                   expert=key.expert))
        p = pooled.setdefault((label, key.layer, key.module, key.param), Acc())
        p.numel += acc.numel
        p.ssq_base += acc.ssq_base
        p.ssq_delta += acc.l2sq
    order = {lab: i for i, lab in enumerate(labels)}
    mod_order = {m: i for i, m in enumerate(MODULES)}
    rows = [LocateRow.from_sums(label, ModuleKey(layer, module, param), acc.numel, acc.ssq_delta, acc.ssq_base)
            for (label, layer, module, param), acc in sorted(
                pooled.items(), key=lambda kv: (order[kv[0][0]], kv[0][1], mod_order.get(kv[0][2], 99), kv[0][3]))]
    return rows, expert_rows


def ranking(rows: Sequence[LocateRow]) -> tuple[dict[str, Any], dict[str, str]]:
    """Per metric: mean over layers per module, share of layers each module tops, order; and the locus.

    ``rows`` are one model's weight rows. The locus is the module with the
    highest mean change ("none" when nothing changed).
    """
    mods = [mod for mod in MODULES if any(r.module == mod for r in rows)]
    layers = sorted({r.layer for r in rows})
    out: dict[str, Any] = {}
    locus: dict[str, str] = {}
    for metric in METRICS:
        mean = {mod: float(np.mean([getattr(r, metric) for r in rows if r.module == mod])) for mod in mods}
        top = {mod: 0 for mod in mods}
        for layer in layers:
            cells = {r.module: getattr(r, metric) for r in rows if r.layer == layer}
            if cells and max(cells.values()) > 0:
                top[max(cells, key=lambda k: cells[k])] += 1
        order = sorted(mods, key=lambda k: -mean[k])
        out[metric] = {"mean": {k: mean[k] for k in order},
                       "top_share": {k: top[k] / max(len(layers), 1) for k in order},
                       "order": order}
        locus[metric] = order[0] if order and mean[order[0]] > 0 else "none"
    return out, locus


def sample_strides(sizes: Mapping[str, tuple[int, set[int]]], target: int) -> dict[str, int]:
    """Per module, the stride of its distribution's systematic sample (1: every element).

    ``sizes[module]`` = (elements over all layers, the row lengths of its
    tensors). Above ``target`` elements the stride is the smallest prime at
    least total/target that divides no row length: consecutive rows then
    start their sampled columns at different phases, so a change confined to
    some columns is sampled like any other.
    """
    out: dict[str, int] = {}
    for mod, (total, cols) in sizes.items():
        k = 1 if target <= 0 or total <= target else -(-total // target)
        while k > 1 and (any(k % q == 0 for q in range(2, math.isqrt(k) + 1)) or any(c % k == 0 for c in cols)):
            k += 1
        out[mod] = k
    return out


def sample_info(counts: np.ndarray, zeros: int, stride: int, total: int) -> dict[str, Any]:
    """How a distribution was sampled, and the largest 95 % half-width of a bin's share (binomial)."""
    n = int(counts.sum()) + zeros
    p = np.concatenate([[zeros], counts]) / max(n, 1)
    se = float(np.sqrt(p * (1 - p) / max(n, 1)).max()) if stride > 1 else 0.0
    return {"stride": stride, "elements": n, "of": total, "max_bin_ci95": 1.96 * se}


def summarize(models: Sequence[Tuned], rows: Sequence[LocateRow], hists: dict[tuple[str, str], np.ndarray],
              zeros: dict[tuple[str, str], int], inv: Any, strides: Mapping[str, int] | None = None,
              sizes: Mapping[str, tuple[int, set[int]]] | None = None) -> dict[str, Any]:
    """``summary.json``: tensor counts, and per model its ranking, locus and change distribution."""
    out: dict[str, Any] = {"models": {}, "tensors": inv.summary(),
                           "unmatched": sorted(inv.others.get("unknown", [])),
                           "layers": len(inv.layers)}
    for m in models:
        mrows = [r for r in rows if r.model == m.label and r.param == "weight"]
        rank, locus = ranking(mrows)
        dist = {}
        for mod in (mod for mod in MODULES if any(r.module == mod for r in mrows)):
            c = hists.get((m.label, mod), np.zeros(HIST_BINS + 2, np.int64))
            z = zeros.get((m.label, mod), 0)
            if c.sum() + z:
                dist[mod] = {"zero_share": z / (c.sum() + z), **quantiles(c, z, (0.05, 0.25, 0.5, 0.75, 0.95)),
                             "sample": sample_info(c, z, (strides or {}).get(mod, 1),
                                                   (sizes or {}).get(mod, (int(c.sum()) + z, set()))[0])}
        bias_rows = [r for r in rows if r.model == m.label and r.param == "bias"]
        out["models"][m.label] = {
            "kind": m.kind, "path": str(m.path), "locus": locus, "ranking": rank,
            "distribution": dist,
            "bias_l2_total": math.sqrt(sum(r.l2**2 for r in bias_rows)) if bias_rows else None,
        }
        if m.adapter is not None:
            out["models"][m.label]["adapter"] = {
                "rank": m.adapter.config.get("r"), "alpha": m.adapter.config.get("lora_alpha"),
                "use_rslora": m.adapter.rslora, "use_dora": m.adapter.use_dora,
                "modules": len(m.adapter.modules), "replacements": sorted(m.adapter.replacements),
                "unmatched": m.adapter.unmatched}
    return out


def layer_module_grid(rows: Sequence[LocateRow], label: str, metric: str
                      ) -> tuple[np.ndarray, list[str], list[int]]:
    """One model's weight rows as a layers × modules matrix of ``metric`` (NaN where absent)."""
    mine = [r for r in rows if r.model == label and r.param == "weight"]
    mods = [m for m in MODULES if any(r.module == m for r in mine)]
    layers = sorted({r.layer for r in mine})
    g = np.full((len(layers), len(mods)), np.nan)
    for r in mine:
        g[layers.index(r.layer), mods.index(r.module)] = getattr(r, metric)
    return g, mods, layers


def format_table(summary: dict[str, Any]) -> str:
    """A readable per-model summary for the terminal."""
    lines: list[str] = []
    for label, info in summary["models"].items():
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


def notes(summary: dict[str, Any]) -> list[str]:
    """What locate could not compare, as lines for the terminal (details are in summary.json)."""
    out = []
    unmatched = summary["unmatched"]
    if unmatched:
        out.append(f"{len(unmatched)} tensor(s) matched no known role (see summary.json): {', '.join(unmatched[:5])}")
    for label, info in summary["models"].items():
        extra = info.get("only_in_tuned") or []
        if extra:
            out.append(f"note: {len(extra)} tensor(s) of {label} are not in the base and were not compared "
                       f"(see summary.json): {', '.join(extra[:5])}")
        lacking = info.get("only_in_base") or []
        if lacking:
            out.append(f"note: {len(lacking)} tensor(s) of the base are not in {label} and were not compared "
                       f"(see summary.json): {', '.join(lacking[:5])}")
    return out

"""locate's numbers once the tensors are read: rows, histograms, quantiles, rankings, the locus.

``affectlens.locate`` streams the tensors and fills running sums; everything
here works on those sums and on plain rows, so it is testable without a
checkpoint and the same rows feed the CSV, the summary and the heatmaps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Self

import numpy as np
import torch

from .modules import MODULES, ModuleKey

if TYPE_CHECKING:
    from .locate import Tuned

METRICS = ("l2", "relative", "rms")
CSV_HEADER = ["model", "layer", "module", "param", "numel", "l2", "relative", "rms"]
EXPERT_HEADER = [*CSV_HEADER[:4], "expert", *CSV_HEADER[4:]]
EPS_NORM = 1e-12
EPS_ELEM = 1e-8
# log10 of |ΔW|/(|W|+ε): bins from 1e-6 to 10, plus under/overflow; exact zeros counted apart.
HIST_LO, HIST_HI, HIST_BINS = -6.0, 1.0, 70
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


def hist_counts(delta: torch.Tensor, base: torch.Tensor) -> tuple[np.ndarray, int]:
    """Histogram of log10 |ΔW|/(|W|+ε) over the fixed bins, and the count of exact zeros.

    One log pass and one histc; under/overflow come from the totals, not extra masks.
    ``delta`` and ``base`` are overwritten (they are per-chunk temporaries).
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


def hist_edges() -> np.ndarray:
    return np.linspace(HIST_LO, HIST_HI, HIST_BINS + 1)


def quantiles(counts: np.ndarray, zeros: int, qs: Sequence[float]) -> dict[str, float]:
    """Quantiles of the relative change read off the histogram (bin-resolution)."""
    total = int(counts.sum()) + zeros
    edges = hist_edges()
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


def summarize(models: Sequence[Tuned], rows: Sequence[LocateRow], hists: dict[tuple[str, str], np.ndarray],
              zeros: dict[tuple[str, str], int], inv: Any) -> dict[str, Any]:
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
                dist[mod] = {"zero_share": z / (c.sum() + z), **quantiles(c, z, (0.05, 0.25, 0.5, 0.75, 0.95))}
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

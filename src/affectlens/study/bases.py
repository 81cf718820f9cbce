"""The locate section over every base of ``models:``: loci per base, heatmaps on one colour scale.

``adapters`` and ``locate`` run per base (cached as ``<stage>@<base label>``
beside the first base's plain keys); the later stages and every claim read the
first base only. The section keeps the first base's numbers and rankings
unchanged, and adds a locus-per-base table and one heatmap figure whose panels
(each base's first-seed adapters) share one colour scale per metric -- the
absolute change (Eq. 1) above the size-fair one (Eq. 2) -- so the bases'
module x layer changes can be compared by eye.
"""

from __future__ import annotations

from typing import Any

from .config import base_labels
from .context import Context


def _first_seed(r: dict[str, Any]) -> list[str]:
    seed = r["labels"][0].split("-s")[-1]
    return [lab for lab in r["labels"] if lab.endswith(f"-s{seed}")]


def _panels(r: dict[str, Any], prefix: str, key: str = "heat") -> list[tuple[str, Any, list[str], list[int]]]:
    """The first seed's layers x modules matrices of ``r[key]`` ("heat": Eq. 2, "heat_l2": Eq. 1)."""
    import numpy as np

    mods, layers = r["modules"], r["layers"]
    out = []
    for lab in _first_seed(r):
        mat = np.full((len(layers), len(mods)), np.nan)
        for i, la in enumerate(layers):
            for j, m in enumerate(mods):
                mat[i, j] = r[key][lab].get(str(la), {}).get(m, np.nan)
        out.append((prefix + lab, mat, mods, layers))
    return out


def locate_bases(sec: dict[str, Any], ctx: Context, run: Any, failed: dict[str, str]) -> None:
    """Fill the locate section from the first base's result and every other base's."""
    from .. import plots

    cfg, res = ctx.cfg, ctx.results
    labels = base_labels(cfg)
    per_base = {labels[cfg.model]: res["locate"]}
    per_base.update({labels[b]: res[f"locate@{labels[b]}"] for b in cfg.other_bases
                     if f"locate@{labels[b]}" in res})
    r = res["locate"]
    st = r["stability"]
    sec["numbers"] = {"loci": r["loci"]}
    sec["numbers"].update({f"{kind} locus ({m})": v["locus"] for kind, ms in st.items() for m, v in ms.items()})
    sec["numbers"].update({f"{kind} locus stability ({m})": v["share_of_seeds"] for kind, ms in st.items()
                           for m, v in ms.items()})
    for lab in _first_seed(r):
        rk = r["ranking"][lab]
        sec["tables"].append({"title": f"{lab}: module ranking, Eq. 1 (l2) next to size-fair Eq. 2 and RMS",
                              "columns": ["rank", "l2 (Eq. 1)", "relative (Eq. 2)", "rms"],
                              "rows": [[i + 1, rk["l2"][i], rk["relative"][i], rk["rms"][i]]
                                       for i in range(len(rk["l2"]))]})
    several = len(cfg.bases) > 1
    if several:
        sec["numbers"]["loci_by_base"] = {b: {kind: {m: v["locus"] for m, v in ms.items()}
                                              for kind, ms in x["stability"].items()} for b, x in per_base.items()}
        sec["tables"].append({
            "title": "the locus per base (most-changed module over seeds; share of seeds agreeing, relative)",
            "columns": ["base", "adapter", "l2 (Eq. 1)", "relative (Eq. 2)", "rms", "stability (relative)"],
            "rows": [[b, kind, ms["l2"]["locus"], ms["relative"]["locus"], ms["rms"]["locus"],
                      ms["relative"]["share_of_seeds"]] for b, x in per_base.items()
                     for kind, ms in x["stability"].items()]})
        rest = ", ".join(labels[b] for b in cfg.other_bases)
        sec["notes"].append(
            f"adapters and locate ran on every base ({', '.join(labels.values())}); the later stages "
            f"(sufficiency, efficiency, necessity, frontier, circuits) and every claim ran on the first base, "
            f"{labels[cfg.model]}, only -- not on {rest}. To run them on another base, name it in model: "
            "(its adapters are reused from this study's cache).")
    for key, why in failed.items():
        if "@" in key:
            sec["notes"].append(f"base {key.split('@', 1)[1]}: the {key.split('@')[0]} stage {why}")
    rows = [(metric, [p for b, x in per_base.items() for p in _panels(x, f"{b}: " if several else "", key)])
            for metric, key in (("l2", "heat_l2"), ("relative", "heat"))
            if all(key in x for x in per_base.values())]  # Eq. 1 (absolute) above Eq. 2 (size-fair)
    fig = plots.locate_heatmaps(rows)
    for metric, _ in rows:
        limits = plots.image_limits(fig, metric)
        sec["numbers"]["heatmap_scale" + ("" if metric == "relative" else f"_{metric}")] = {
            "vmin": min(lo for lo, _ in limits), "vmax": max(hi for _, hi in limits), "panels": len(limits),
            "shared": len(set(limits)) == 1}
    run.figure("figures/locate_heatmap.png", fig)
    sec["figures"]["locate_heatmap"] = "figures/locate_heatmap.png"


__all__ = ["locate_bases"]

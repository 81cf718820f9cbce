"""study.json from the stage results: claims (via ``verdicts.claim_record``), sections, figures, methods.

Built in a temporary run dir (``runs.RunDir``) with the stage cache hard-linked
into it, then swapped in whole; ``report.write_report`` renders report.html
and report.md from the same dict. Every number here comes from a stage
result; every verdict from ``verdicts``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from .context import Context
from .stages_grid import ALL, affective, control

TITLES = {
    "locate": "Where did fine-tuning change the model? (Figs. 4-6, 10)",
    "sufficiency": "Is one module's change sufficient? Transfer onto the base (Table 1)",
    "efficiency": "Is tuning one module efficient? Targeted LoRA at an identical budget (Table 2, Fig. 8)",
    "necessity": "Is the module necessary? Its delta reset inside the tuned model",
    "frontier": "GET's cost-performance frontier (Fig. 9)",
    "circuits-layers": "Which layers carry emotion? Steering by layer",
    "circuits-heads": "Which heads? Emotion-specific vs general by depth",
    "circuits-intervention": "Does amplifying the emotional heads/neurons help?",
}
SOURCE = {"locate": "locate", "sufficiency": "sufficiency", "efficiency": "efficiency", "necessity": "necessity",
          "frontier": "frontier", "circuits-layers": "circuits", "circuits-heads": "circuits",
          "circuits-intervention": "circuits"}


def _section(key: str) -> dict[str, Any]:
    return {"title": TITLES[key], "numbers": {}, "tables": [], "figures": {}, "notes": []}


def _score_table(res: dict[str, Any], title: str, reference: str | None = None) -> dict[str, Any]:
    cols = ["variant", "affective mean", *(["control mean"] if res["control_tasks"] else []), "trainable params"]
    rows = []
    for v in res["scores"]:
        aff = affective(res, v)
        row: list[Any] = [v, round(sum(aff) / len(aff), 4)]
        ctl = control(res, v)
        if ctl is not None:
            row.append(round(sum(ctl) / len(ctl), 4))
        row.append(res["params"].get(v))
        rows.append(row)
    return {"title": title, "columns": cols, "rows": rows}


def _score_numbers(res: dict[str, Any], stage: str) -> dict[str, Any]:
    """``scores`` (affective mean per variant) and, for necessity, ``control_task_drop`` per reset."""
    scores = {v: sum(affective(res, v)) / len(res["scores"][v][res["tasks"][0]]) for v in res["scores"]}
    nums: dict[str, Any] = {"scores": scores}
    ref = control(res, ALL) if ALL in res["scores"] else None
    if stage == "necessity" and ref is not None:
        drops = {}
        for v in res["scores"]:
            c = control(res, v)
            if v != ALL and c is not None:
                drops[v] = sum(a - b for a, b in zip(ref, c, strict=True)) / len(c)
        nums["control_task_drop"] = drops
    return nums


def _locate(sec: dict[str, Any], r: dict[str, Any], run: Any) -> None:
    import numpy as np

    from .. import plots

    st = r["stability"]
    sec["numbers"] = {"loci": r["loci"]}
    sec["numbers"].update({f"{kind} locus ({m})": v["locus"] for kind, ms in st.items() for m, v in ms.items()})
    sec["numbers"].update({f"{kind} locus stability ({m})": v["share_of_seeds"] for kind, ms in st.items()
                           for m, v in ms.items()})
    for lab in [x for x in r["labels"] if x.endswith(f"-s{r['labels'][0].split('-s')[-1]}")]:
        rk = r["ranking"][lab]
        sec["tables"].append({"title": f"{lab}: module ranking, Eq. 1 (l2) next to size-fair Eq. 2 and RMS",
                              "columns": ["rank", "l2 (Eq. 1)", "relative (Eq. 2)", "rms"],
                              "rows": [[i + 1, rk["l2"][i], rk["relative"][i], rk["rms"][i]]
                                       for i in range(len(rk["l2"]))]})
    mods, layers = r["modules"], r["layers"]
    panels = []
    for lab in r["labels"]:
        if lab.endswith(f"-s{r['labels'][0].split('-s')[-1]}"):
            mat = np.full((len(layers), len(mods)), np.nan)
            for i, la in enumerate(layers):
                for j, m in enumerate(mods):
                    mat[i, j] = r["heat"][lab].get(str(la), {}).get(m, np.nan)
            panels.append((lab, mat, mods, layers))
    run.figure("figures/locate_heatmap.png", plots.locate_heatmap(panels, "relative"))
    sec["figures"]["locate_heatmap"] = "figures/locate_heatmap.png"


def _frontier(sec: dict[str, Any], r: dict[str, Any], run: Any) -> None:
    from .. import plots

    nums = {"raw_share": r["raw_share"], "param_share": r["param_share"], "yardstick": r["yardstick"],
            "base": r["base"], "majority_class": r["majority"]}
    sec["numbers"] = {k: v for k, v in nums.items() if v is not None and v == v}  # undefined: left out
    sec["notes"].append(r["line"])
    sec["tables"].append({"title": "score vs trainable parameters", "columns": ["variant", "params", "mean"],
                          "rows": [[p["variant"], p["params"], round(p["mean"], 4)] for p in r["points"]]})
    pts = [{**p, "ci95": None} for p in r["points"]]
    pareto = [p["variant"] for p in pts if not any(q["params"] <= p["params"] and q["mean"] > p["mean"]
                                                    for q in pts if q is not p)]
    run.figure("figures/frontier.png", plots.frontier(pts, pareto, {"base": r["base"], "majority": r["yardstick"]},
                                                      ALL, "GET frontier"))
    sec["figures"]["frontier"] = "figures/frontier.png"


def _circuits(sections: dict[str, Any], r: dict[str, Any], ctx: Context, run: Any) -> None:
    d = ctx.root / r["dir"]
    for key, sub, png in (("circuits-layers", "layers", "layer_profile.png"),
                          ("circuits-heads", "heads", "overlap.png"),
                          ("circuits-intervention", "intervene-heads-top", "changes.png")):
        sec = sections[key]
        src = d / sub / png
        if src.is_file():
            shutil.copyfile(src, run.file(f"figures/{key}.png"))
            sec["figures"][sub] = f"figures/{key}.png"
    if "layers" in r:
        nums = sections["circuits-layers"]["numbers"]
        nums.update({f"critical layer ({e})": la for e, la in r["layers"]["critical"].items()})
        nums["layers"] = r["layers"]["n_layers"]
        ev = r.get("evidence", {}).get("circuits-layers.middle-peak")
        if ev:
            nums["peak_depth"] = ev["detail"]["relative_depth"]
    if "heads" in r:
        sections["circuits-heads"]["tables"].append({"title": "top-head overlap by layer (mean pairwise Jaccard)",
                                                     "columns": ["layer", "jaccard"],
                                                     "rows": [[o["layer"], o["jaccard"]] for o in r["heads"]["overlap"]]})
    rows = []
    for unit, got in r.get("interventions", {}).items():
        for side in ("top", "random"):
            for t, m in got[f"{side}_results"]["tasks"].items():
                rows.append([unit, side, t, m["accuracy"]["before"], m["accuracy"]["after"],
                             m["hallucination"]["before"], m["hallucination"]["after"]])
            ppl = got[f"{side}_results"].get("perplexity")
            if ppl:
                sections["circuits-intervention"]["numbers"][f"perplexity ratio ({unit}, {side})"] = ppl.get("ratio")
    if rows:
        sections["circuits-intervention"]["tables"].append({
            "title": "accuracy and hallucination rate before/after amplifying top vs random units",
            "columns": ["units", "which", "task", "acc before", "acc after", "halluc. before", "halluc. after"],
            "rows": rows})
    for note in r.get("notes", []):
        key = "circuits-heads" if "head" in note and "intervention" not in note else \
            "circuits-intervention" if "interven" in note else "circuits-layers"
        sections[key]["notes"].append(note)


def write_study(ctx: Context, out: Path, expected: dict[str, Any], timing: dict[str, Any], failed: dict[str, str],
                wall: float, fps: dict[str, str]) -> dict[str, Any]:
    """Assemble study.json, the figures and the report into ``out`` (atomically, stage cache kept)."""
    from ..runs import RunDir, nonfinite_to_null, versions
    from .verdicts import CLAIMS, Evidence, claim_record

    cfg, res = ctx.cfg, ctx.results
    with RunDir(out, command="study", force=True, inputs={"config": cfg.path or "<built-in>",
                                                          "model": str(ctx.base_path)},
                options={"profile": cfg.profile, "stages": cfg.stages, "config": cfg.raw},
                seed=cfg.seeds[0]) as run:
        shutil.copytree(ctx.store.stages, run.path / "stages", copy_function=os.link)
        sections: dict[str, Any] = {}
        for key, stage in SOURCE.items():
            if stage not in cfg.stages:
                continue
            sec = sections[key] = _section(key)
            if stage in failed:
                sec["notes"].append(f"this section is missing: the {stage} stage {failed[stage]}")
        if "locate" in res and "locate" in sections:
            _locate(sections["locate"], res["locate"], run)
            sections["locate"]["notes"] += res["locate"].get("notes", [])
        for stage, title in (("sufficiency", "transfer onto the base (mean over seeds)"),
                             ("efficiency", "targeted LoRA at an identical budget (mean over seeds)"),
                             ("necessity", "delta reset inside the tuned model (mean over seeds)")):
            if stage in res and stage in sections:
                sections[stage]["tables"].append(_score_table(res[stage], title))
                sections[stage]["numbers"] = _score_numbers(res[stage], stage)
        if "frontier" in res and "frontier" in sections:
            _frontier(sections["frontier"], res["frontier"], run)
            sections["frontier"]["notes"] += res["frontier"].get("notes", [])
        if "circuits" in res and "circuits-layers" in sections:
            _circuits(sections, res["circuits"], ctx, run)
        evidence = {k: v for r in res.values() for k, v in (r.get("evidence") or {}).items()}
        claims, not_judged = [], []
        for cid, claim in CLAIMS.items():
            if claim.stage not in sections:
                continue
            ev = evidence.get(cid) or next((v for k, v in evidence.items() if cid.startswith(k + ".")), None)
            if ev is None or not all(x == x for x in (ev["value"], *ev["ci"])):
                not_judged.append({"id": cid, "stage": claim.stage, "reason": "no finite evidence from this run"})
                sections[claim.stage]["notes"].append(f"claim {cid} is not judged: this run produced no finite "
                                                      "evidence for it")
                continue
            claims.append(claim_record(cid, Evidence(float(ev["value"]), (float(ev["ci"][0]), float(ev["ci"][1])),
                                                     int(ev["n"]), dict(ev.get("detail") or {}))))
        # A number a stage could not define (a share of a zero score) is "no value", never NaN in the report.
        sections = nonfinite_to_null(sections)
        study: dict[str, Any] = {
            "version": 1, "name": cfg.name, "claims": claims, "not_judged": not_judged, "sections": sections,
            "methods": {
                "profile": cfg.profile, "seeds": cfg.seeds, "stages": cfg.stages,
                "budgets": {"lora": cfg.budget.to_dict(), "full_fine_tune": cfg.full_budget.to_dict(),
                            "eval": cfg.eval, "circuits": cfg.circuits,
                            "modules": {"single": cfg.single, "groups": cfg.groups}},
                "models": {"base": str(ctx.base_path), "base_spec": cfg.model, "circuits": cfg.circuits_model,
                           "full_fine_tune": bool(res.get("adapters", {}).get("full"))},
                "data_fingerprints": ctx.fps, "stage_fingerprints": fps, "packages": versions(),
                "expected_time_s": expected["total"], "wall_time_s": round(wall, 1),
                "expected_time_by_stage_s": {k: v for k, v in expected.items() if k not in ("total", "basis")},
                "expected_time_basis": expected["basis"], "stage_times_s": timing,
                "failed_stages": failed, "device": ctx.device, "dtype": ctx.dtype,
            },
        }
        run.json("study.json", study, nonfinite="null")
        try:
            from .report import write_report
        except ImportError:
            ctx.echo("note: the report renderer is not installed in this affectlens; wrote study.json only")
        else:
            write_report(run, study)
    return study


__all__ = ["write_study"]

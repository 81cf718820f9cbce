"""study.json from the stage results: claims (via ``verdicts.claim_record``), sections, figures, methods.

Built in a temporary run dir (``runs.RunDir``) with the stage cache hard-linked
into it, then swapped in whole; ``report.write_report`` renders report.html
and report.md from the same dict. Every number here comes from a stage
result; every verdict from ``verdicts``.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .context import Context
from .stages_grid import ALL, affective, control, raw_view

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


def _mean(xs: list[float] | None) -> float | None:
    return None if xs is None else round(sum(xs) / len(xs), 4)


def _score_table(res: dict[str, Any], title: str, reference: str | None = None) -> dict[str, Any]:
    """Per variant: the affective (and control) mean, calibrated beside raw when the stage calibrated."""
    cal = res.get("calibration", "none")
    raw = raw_view(res) if cal != "none" else None
    cols = ["variant"]
    for what in ["affective", *(["control"] if res["control_tasks"] else [])]:
        cols += [f"{what} mean ({cal})", f"{what} mean (raw)"] if raw is not None else [f"{what} mean"]
    cols.append("trainable params")
    rows = []
    for v in res["scores"]:
        row: list[Any] = [v]
        for fn in [affective, *([control] if res["control_tasks"] else [])]:
            row.append(_mean(fn(res, v)))
            if raw is not None:
                row.append(_mean(fn(raw, v)))
        row.append(res["params"].get(v))
        rows.append(row)
    return {"title": title, "columns": cols, "rows": rows}


def _score_numbers(res: dict[str, Any], stage: str) -> dict[str, Any]:
    """``scores`` (affective mean per variant) and, for necessity, ``control_task_drop`` per reset."""
    scores = {v: sum(affective(res, v)) / len(res["scores"][v][res["tasks"][0]]) for v in res["scores"]}
    nums: dict[str, Any] = {"scores": scores}
    if res.get("calibration", "none") != "none":
        nums["raw_scores"] = {v: _mean(affective(raw_view(res), v)) for v in res["scores"]}
    ref = control(res, ALL) if ALL in res["scores"] else None
    if stage == "necessity" and ref is not None:
        drops = {}
        for v in res["scores"]:
            c = control(res, v)
            if v != ALL and c is not None:
                drops[v] = sum(a - b for a, b in zip(ref, c, strict=True)) / len(c)
        nums["control_task_drop"] = drops
    return nums


def _frontier(sec: dict[str, Any], r: dict[str, Any], run: Any) -> None:
    nums = {"raw_share": r["raw_share"], "param_share": r["param_share"], "yardstick": r["yardstick"],
            "base": r["base"], "majority_class": r["majority"]}
    sec["numbers"] = {k: v for k, v in nums.items() if v is not None and v == v}  # undefined: left out
    sec["notes"].append(r["line"])
    cal = r.get("calibration", "none")
    if cal != "none":
        sec["tables"].append({"title": "score vs trainable parameters (calibrated beside raw)",
                              "columns": ["variant", "params", f"mean ({cal})", "mean (raw)"],
                              "rows": [[p["variant"], p["params"], round(p["mean"], 4),
                                        round(p["uncalibrated_mean"], 4)] for p in r["points"]]})
        sec["numbers"]["base_uncalibrated"] = r["base_uncalibrated"]
    else:
        sec["tables"].append({"title": "score vs trainable parameters", "columns": ["variant", "params", "mean"],
                              "rows": [[p["variant"], p["params"], round(p["mean"], 4)] for p in r["points"]]})


def _circuits(sections: dict[str, Any], r: dict[str, Any], ctx: Context, run: Any) -> None:
    d = ctx.root / r["dir"]
    for key, sub, png in (("circuits-layers", "layers", "layer_profile.png"),
                          ("circuits-heads", "heads", "overlap.png")):
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


def _bad_leaf(obj: Any, where: str) -> tuple[str, str] | None:
    """The first number in ``obj`` that is NaN, infinite or null (a NaN the cache wrote), as (path, what)."""
    if obj is None:
        return where, "missing (null)"
    if isinstance(obj, float) and not math.isfinite(obj):
        return where, str(obj)
    if isinstance(obj, Mapping):
        return next((hit for k, v in obj.items() if (hit := _bad_leaf(v, f"{where}.{k}" if where else str(k)))),
                    None)
    if isinstance(obj, list | tuple):
        return next((hit for i, v in enumerate(obj) if (hit := _bad_leaf(v, f"{where}[{i}]"))), None)
    return None


def evidence_problem(ev: Any) -> str | None:
    """Why a stage's evidence record cannot give a verdict (not_judged's reason), or None when it can.

    Every number in it must be finite: a NaN -- or the null a cache made of one -- anywhere in the
    value, the CI or the detail means the statistic was undefined on this run, and a verdict from an
    undefined statistic would be noise. The same record gives the same answer on a first run and on
    a rerun that reads it back from the cache.
    """
    if not isinstance(ev, Mapping) or not {"value", "ci", "n"} <= set(ev):
        return "its evidence record is incomplete (value, ci and n are required)"
    ci = ev["ci"]
    if not isinstance(ev.get("detail") or {}, Mapping):
        return "its evidence detail is not a mapping"
    if not isinstance(ci, list | tuple) or len(ci) != 2:
        return f"its evidence CI is not (low, high): {ci!r}"
    for key, x in (("value", ev["value"]), ("ci", ci), ("detail", ev.get("detail") or {})):
        hit = _bad_leaf(x, key)
        if hit:
            return f"non-finite evidence: {hit[0]} is {hit[1]}"
    for key, x in (("value", ev["value"]), ("ci[0]", ci[0]), ("ci[1]", ci[1]), ("n", ev["n"])):
        if isinstance(x, bool) or not isinstance(x, int | float):
            return f"its evidence {key} is not a number: {x!r}"
    if ci[0] > ci[1]:
        return f"its evidence CI is reversed ({ci[0]:g} > {ci[1]:g})"
    if ev["n"] < 1 or ev["n"] != int(ev["n"]):
        return f"its evidence n is not a positive count: {ev['n']!r}"
    return None


def failure_summary(timing: dict[str, Any], failed: dict[str, str]) -> dict[str, Any]:
    """How many stages ran and which failed (or were skipped for a failed input): study.json's
    ``failures``, the report's "Failed stages" section and the command's exit status."""
    return {"failed": len(failed), "stages": len(timing) + len(failed), "by_stage": dict(failed)}


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
            from .bases import locate_bases

            locate_bases(sections["locate"], ctx, run, failed)
            sections["locate"]["notes"] += res["locate"].get("notes", [])
        for stage, title in (("sufficiency", "transfer onto the base (mean over seeds)"),
                             ("efficiency", "targeted LoRA at an identical budget (mean over seeds)"),
                             ("necessity", "delta reset inside the tuned model (mean over seeds)")):
            if stage in res and stage in sections:
                sections[stage]["tables"].append(_score_table(res[stage], title))
                sections[stage]["numbers"] = _score_numbers(res[stage], stage)
                sections[stage]["notes"] += res[stage].get("notes", [])
        if "frontier" in res and "frontier" in sections:
            _frontier(sections["frontier"], res["frontier"], run)
            sections["frontier"]["notes"] += res["frontier"].get("notes", [])
        if "circuits" in res and "circuits-layers" in sections:
            _circuits(sections, res["circuits"], ctx, run)
        from .figures import add_figures

        add_figures(sections, ctx, run)  # frontier with CIs, every intervention run, the adapters' losses
        evidence = {k: v for key, r in res.items() if "@" not in key  # claims: the first base only
                    for k, v in (r.get("evidence") or {}).items()}
        unjudged = {k: str(v) for key, r in res.items() if "@" not in key  # a stage's own word on why not
                    for k, v in (r.get("unjudged") or {}).items()}
        claims, not_judged = [], []
        for cid, claim in CLAIMS.items():
            if claim.stage not in sections:
                continue
            ev = evidence.get(cid) or next((v for k, v in evidence.items() if cid.startswith(k + ".")), None)
            src = SOURCE[claim.stage]
            why = (f"the {src} stage {failed[src]}" if src in failed else
                   unjudged.get(cid, "this run produced no evidence for it")) if ev is None else evidence_problem(ev)
            if ev is None or why is not None:
                not_judged.append({"id": cid, "stage": claim.stage, "reason": why})
                sections[claim.stage]["notes"].append(f"claim {cid} is not judged: {why}")
                continue
            claims.append(claim_record(cid, Evidence(float(ev["value"]), (float(ev["ci"][0]), float(ev["ci"][1])),
                                                     int(ev["n"]), dict(ev.get("detail") or {}))))
        # A number a stage could not define (a share of a zero score) is "no value", never NaN in the report.
        sections = nonfinite_to_null(sections)
        study: dict[str, Any] = {
            "version": 1, "name": cfg.name, "claims": claims, "not_judged": not_judged, "sections": sections,
            "failures": failure_summary(timing, failed),
            "methods": {
                "profile": cfg.profile, "seeds": cfg.seeds, "stages": cfg.stages,
                "budgets": {"lora": cfg.budget.to_dict(), "full_fine_tune": cfg.full_budget.to_dict(),
                            "eval": cfg.eval, "circuits": cfg.circuits,
                            "modules": {"single": cfg.single, "groups": cfg.groups}},
                "scoring": {"calibration": cfg.calibration,
                            "claims_use": f"calibrated ({cfg.calibration})" if cfg.calibration != "none" else "raw",
                            "tables": "calibrated beside raw" if cfg.calibration != "none" else "raw"},
                "models": {"base": str(ctx.base_path), "base_spec": cfg.model, "bases": cfg.bases,
                           "circuits": cfg.circuits_model,
                           "full_fine_tune": bool(res.get("adapters", {}).get("full"))},
                "data_fingerprints": ctx.fps, "stage_fingerprints": fps, "packages": versions(),
                "expected_time_s": expected["total"], "wall_time_s": round(wall, 1),
                "expected_time_by_stage_s": {k: v for k, v in expected.items() if k not in ("total", "basis")},
                "expected_time_basis": expected["basis"], "stage_times_s": timing,
                "failed_stages": failed, "device": ctx.device, "dtype": ctx.dtype,
                **ctx.provenance,  # the data, the resolved device/dtype, cached vs run-now time (runner)
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


__all__ = ["evidence_problem", "failure_summary", "write_study"]

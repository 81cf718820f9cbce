"""study.json from the stage results: claims (via ``judging``), sections, figures, methods, the banner.

Built in a temporary run dir (``runs.RunDir``) with the stage cache hard-linked
into it, then swapped in whole; ``report.write_report`` renders report.html
and report.md from the same dict. Every number here comes from a stage
result; every verdict from ``verdicts``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from .context import Context
from .stages_grid import ALL, affective, control, raw_view
from .verdicts import evidence_problem

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
            got = fn(res, v)  # None: this variant was not scored on the control tasks (no claim reads it)
            row.append(_mean(got) if got is not None else "not scored")
            if raw is not None:
                row.append(_mean(fn(raw, v)) if got is not None else "not scored")
        row.append(res["params"].get(v))
        rows.append(row)
    return {"title": title, "columns": cols, "rows": rows}


def _score_numbers(res: dict[str, Any], stage: str) -> dict[str, Any]:
    """``scores`` (affective mean per variant) and, for necessity, ``control_task_drop`` per reset."""
    scores = {v: sum(affective(res, v)) / len(res["scores"][v][res["tasks"][0]]) for v in res["scores"]}
    nums: dict[str, Any] = {"scores": scores}
    if res.get("calibration", "none") != "none":
        nums["uncalibrated_scores"] = {v: _mean(affective(raw_view(res), v)) for v in res["scores"]}
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
    nums = {"score_ratio": r.get("score_ratio"), "score_ratio_uncalibrated": r.get("score_ratio_uncalibrated"),
            "param_share": r["param_share"], "yardstick": r["yardstick"], "base": r["base"],
            "majority_class": r["majority"]}
    sec["numbers"] = {k: v for k, v in nums.items() if v is not None and v == v}  # undefined: left out
    sec["notes"].append(r["line"])
    cal = r.get("calibration", "none")
    if cal != "none":
        sec["tables"].append({"title": "score vs trainable parameters (the claims' scores beside raw)",
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
        if r["layers"].get("relative_depth"):
            nums["peak_depth"] = r["layers"]["relative_depth"]
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


def facts(ctx: Context, res: dict[str, Any]) -> dict[str, Any]:
    """What the design checks and the power calculation need to know about this run."""
    from ..models.resolve import resolve_model_path
    from .honesty import is_vlm, task_size

    cfg = ctx.cfg
    circ = resolve_model_path(cfg.circuits_model) if "circuits" in cfg.stages else ctx.base_path

    def layers(path: Path) -> int | None:
        f = path / "config.json"
        return int(json.loads(f.read_text()).get("num_hidden_layers", 0)) or None if f.is_file() else None

    sizes = [task_size(t) for t in cfg.tasks]
    vec = (res.get("circuits") or {}).get("vectors") or {}
    n_layers = {"base": layers(ctx.base_path), "circuits": layers(circ)}
    ex = sum(s for s in sizes if s) if all(sizes) else None
    return {"seeds": len(cfg.seeds), "text_only": {"base": not is_vlm(ctx.base_path), "circuits": not is_vlm(circ)},
            "n_layers": n_layers, "power_before": power_before(cfg)["claims"],
            "available": {"examples": ex, "layers": n_layers["base"], "layers with top heads": n_layers["circuits"],
                          "emotions": len(vec.get("counts") or {}) or None,
                          "intervention examples": ex}}


def power_before(cfg: Any) -> dict[str, Any]:
    """The planning MDEs of this design (before any data), per claim; see :mod:`.power`."""
    from .honesty import task_size
    from .papers import CLAIMS
    from .power import before

    sizes = [task_size(t, cfg.eval["limit"]) or 0 for t in cfg.tasks]
    n = min(sizes) if sizes else 0
    circ = min(int(cfg.circuits.get("limit") or 0), n or int(cfg.circuits.get("limit") or 0)) * len(cfg.tasks) * 2
    m = sum(2 if c.margin is not None or c.upper is not None else 1 for c in CLAIMS.values())
    return {"examples_per_task": n, "tasks": len(cfg.tasks), "tests_if_all_judged": m,
            "claims": before(CLAIMS, n, len(cfg.tasks), circ, m)}


def scoring(cfg: Any, res: dict[str, Any]) -> dict[str, Any]:
    """How the scored stages' claims were scored: the calibration asked for, and what each stage chose."""
    out: dict[str, Any] = {"calibration": cfg.calibration,
                           "rule": "auto: chosen per model on the affective tasks' dev split, applied on test; "
                                   "none where no dev split exists" if cfg.calibration == "auto" else
                                   f"{cfg.calibration}, as the config names it",
                           "raw_verdict": "every claim is judged a second time on uncalibrated scores"}
    for stage in ("sufficiency", "efficiency", "necessity"):
        r = res.get(stage) or {}
        if "per_example" in r:
            out[stage] = {"scores": r.get("calibration"), "why": r.get("calibration_why"),
                          "choice": r["per_example"].get("choice")}
    return out


def failure_summary(timing: dict[str, Any], failed: dict[str, str]) -> dict[str, Any]:
    """How many stages ran and which failed (or were skipped for a failed input): study.json's
    ``failures``, the report's "Failed stages" section and the command's exit status."""
    return {"failed": len(failed), "stages": len(timing) + len(failed), "by_stage": dict(failed)}


def write_study(ctx: Context, out: Path, expected: dict[str, Any], timing: dict[str, Any], failed: dict[str, str],
                wall: float, fps: dict[str, str]) -> dict[str, Any]:
    """Assemble study.json, the figures and the report into ``out`` (atomically, stage cache kept)."""
    from ..models.resolve import resolve_model_path
    from ..runs import RunDir, nonfinite_to_null, versions
    from .honesty import learned_nothing, scope_limits, smoke_test_reasons
    from .judging import judge_claims
    from .verdicts import ALPHA, TESTED

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
        claims, not_judged = judge_claims(ctx, sections, failed, SOURCE, facts(ctx, res))
        from .power import half_effect
        from .power import powered as is_powered

        power_ok, power_why = is_powered(len(cfg.seeds), claims, not_judged)
        circ = resolve_model_path(cfg.circuits_model) if "circuits" in cfg.stages else None
        full_ft = bool(res.get("adapters", {}).get("full"))
        smoke = smoke_test_reasons(cfg, full_ft)
        nothing = learned_nothing(res.get("frontier"))
        if nothing:
            smoke.append(nothing)
        scope = scope_limits(cfg, ctx.base_path, circ, full_ft)
        m_tests = sum(1 for r in claims for k in TESTED if k in r["p"])
        # A number a stage could not define (a share of a zero score) is "no value", never NaN in the report.
        sections = nonfinite_to_null(sections)
        study: dict[str, Any] = {
            "version": 1, "name": cfg.name, "smoke_test": bool(smoke), "smoke_test_reasons": smoke,
            "scope_limits": scope,
            "powered": power_ok, "powered_reasons": power_why, "powered_for_half_paper_effect": half_effect(claims),
            "claims": claims, "not_judged": not_judged,
            "sections": sections, "failures": failure_summary(timing, failed),
            "family": {"method": "Holm", "alpha": ALPHA, "tests": m_tests, "claims_judged": len(claims),
                       "what": "every difference/equivalence (or band inside/outside) test of every judged claim "
                               "is one family; the uncalibrated analysis (raw_verdict) is a second family"},
            "methods": {
                "profile": cfg.profile, "seeds": cfg.seeds, "stages": cfg.stages,
                "budgets": {"lora": cfg.budget.to_dict(), "full_fine_tune": cfg.full_budget.to_dict(),
                            "eval": cfg.eval, "circuits": cfg.circuits,
                            "modules": {"single": cfg.single, "groups": cfg.groups}},
                "scoring": scoring(cfg, res),
                "power_before": power_before(cfg),
                "models": {"base": str(ctx.base_path), "base_spec": cfg.model, "bases": cfg.bases,
                           "circuits": cfg.circuits_model,
                           "full_fine_tune": bool(res.get("adapters", {}).get("full"))},
                "data_fingerprints": ctx.fps, "stage_fingerprints": fps, "packages": versions(),
                "expected_time_s": expected["total"], "wall_time_s": round(wall, 1),
                "expected_time_by_stage_s": {k: v for k, v in expected.items() if k not in ("total", "basis")},
                "expected_time_basis": expected["basis"], "stage_times_s": timing,
                "failed_stages": failed, "device": ctx.device, "dtype": ctx.dtype,
                "train_overlap": ctx.train_overlap,
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

"""Stages scored through ``grid.run_grid``: sufficiency (Table 1), efficiency (Table 2 / Fig. 8),
necessity, and the GET frontier (Fig. 9) read from efficiency's scores.

One grid per seed, generated from the study config: its donors and tuned
models are that seed's adapters from the ``adapters`` stage, so nothing is
trained twice, and the grid's own per-cell cache makes a resumed stage
rescore only the cells it had not finished.
"""

from __future__ import annotations

import inspect
import math
from collections import defaultdict
from typing import Any

from ..errors import AffectlensError
from .context import Context
from .stats import evidence_dict, score_difference, share_of_gain

ALL = "all-module"


def _grid_base(ctx: Context, name: str, seed: int, with_control: bool) -> dict[str, Any]:
    cfg = ctx.cfg
    ctrl = list(cfg.control_tasks) if with_control else []
    return {"name": name, "base": str(ctx.base_path), "data": cfg.data,
            "tasks": [*cfg.tasks, *ctrl], "control_tasks": ctrl,
            "eval": {"mode": "closed", "batch_size": cfg.eval["batch_size"],
                     **({"limit": cfg.eval["limit"]} if cfg.eval["limit"] else {}),
                     **({"calibration": cfg.calibration} if cfg.calibration != "none" else {}),
                     **({"allow_train_overlap": True} if cfg.allow_train_overlap else {})},
            "budget": {**cfg.budget.budget(), "seeds": [seed]}}


def _run(ctx: Context, stage: str, variants_of: Any, with_control: bool = False) -> dict[str, Any]:
    """Run one grid per seed; collect per-variant, per-task primary scores over seeds, params and n.

    Only necessity scores the non-affective control tasks (the only stage whose claim reads them),
    which keeps the quick profile inside its time budget."""
    from ..grid import run_grid

    kw: dict[str, Any] = {}
    accepted = inspect.signature(run_grid).parameters
    if ctx.executor not in (None, "serial"):
        if "executor" not in accepted:
            raise AffectlensError(f"this affectlens' grid cannot run cells on {ctx.executor!r} (no executor "
                                  "support installed); leave --executor out")
        kw["executor"] = ctx.executor
    for key, val in (("device", ctx.device), ("dtype", ctx.dtype)):
        if val != "auto" and key in accepted:
            kw[key] = val
    scores: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    raw: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    params: dict[str, int | None] = {}
    n: dict[str, int] = {}
    for s in ctx.cfg.seeds:
        adapter = ctx.abs(ctx.results["adapters"]["emotion"][str(s)])
        gcfg = {**_grid_base(ctx, f"{stage}-s{s}", s, with_control), "variants": variants_of(adapter)}
        res = run_grid(gcfg, ctx.store.dir(stage) / f"grid-s{s}", force=True, evaluator=ctx.evaluator,
                       tuner=ctx.tuner, echo=lambda line: None, allow_pickle=ctx.allow_pickle, **kw)
        for r in res.rows:
            scores[r["variant"]][r["task"]].append(float(r["primary"]))
            # The uncalibrated decision of the same forward passes (a task calibration leaves alone: itself).
            u = r.get("uncalibrated_primary")
            raw[r["variant"]][r["task"]].append(float(r["primary"] if u is None else u))
            if r.get("n"):
                n[r["task"]] = int(r["n"])
            params.setdefault(r["variant"], r.get("trainable_params"))
    p_all = ctx.results["adapters"].get("params") or {}
    if p_all and params.get(ALL) is None:
        params[ALL] = int(sum(p_all.values()) / len(p_all))
    return {"scores": {v: dict(t) for v, t in scores.items()}, "raw_scores": {v: dict(t) for v, t in raw.items()},
            "calibration": ctx.cfg.calibration, "params": params, "n": n,
            "tasks": list(ctx.cfg.tasks), "control_tasks": list(ctx.cfg.control_tasks) if with_control else []}


def raw_view(res: dict[str, Any]) -> dict[str, Any]:
    """The same stage result read on its uncalibrated scores (itself when nothing was calibrated)."""
    return {**res, "scores": res["raw_scores"]} if res.get("raw_scores") else res


def affective(res: dict[str, Any], variant: str) -> list[float]:
    """Per seed, the mean primary score over the affective tasks (the calibrated one when calibrated)."""
    per_task = [res["scores"][variant][t] for t in res["tasks"]]
    return [sum(xs) / len(xs) for xs in zip(*per_task, strict=True)]


def control(res: dict[str, Any], variant: str) -> list[float] | None:
    if not res["control_tasks"]:
        return None
    per_task = [res["scores"][variant][t] for t in res["control_tasks"]]
    return [sum(xs) / len(xs) for xs in zip(*per_task, strict=True)]


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def _n(res: dict[str, Any]) -> int | None:
    ns = [res["n"][t] for t in res["tasks"] if t in res["n"]]
    return min(ns) if ns else None


def with_raw(res: dict[str, Any], evidence: Any) -> dict[str, Any]:
    """``evidence(res)`` on the scores the claims use, with the same statistic on the raw scores in
    each record's ``detail.uncalibrated`` (so the report can show what calibration changed)."""
    ev = evidence(res)
    cal = res.get("calibration", "none")
    for rec in ev.values():
        rec["detail"]["scores"] = f"calibrated ({cal})" if cal != "none" else "raw"
    if cal != "none":
        for k, e in evidence(raw_view(res)).items():
            if k in ev:
                ev[k]["detail"]["uncalibrated"] = {"value": e["value"], "ci": e["ci"]}
    return ev


def run_sufficiency(ctx: Context) -> dict[str, Any]:
    """Table 1: each module's delta transferred alone onto the base, against the full adapter."""
    single = ctx.cfg.single

    def variants(adapter: str) -> list[dict[str, Any]]:
        vs: list[dict[str, Any]] = [{"name": "base", "kind": "reference", "model": "base"},
                                    {"name": ALL, "kind": "reference", "model": adapter},
                                    {"name": "Att.", "kind": "transfer", "donor": adapter, "modules": "attn"}]
        vs += [{"name": f"Att.+{m.split('_')[0]}", "kind": "transfer", "donor": adapter,
                "modules": f"attn,{m}"} for m in ("gate_proj", "up_proj", "down_proj")]
        vs += [{"name": m, "kind": "transfer", "donor": adapter, "modules": m} for m in single]
        return vs

    res = _run(ctx, "sufficiency", variants)

    def evidence(r: dict[str, Any]) -> dict[str, Any]:
        gate = affective(r, "Att.+gate")
        best_other = [max(u, d) for u, d in zip(affective(r, "Att.+up"), affective(r, "Att.+down"), strict=True)]
        v, ci, n = score_difference(gate, best_other, _n(r))
        return {"sufficiency.gate-transfer": evidence_dict(
            v, ci, n, interval="score_difference", units="seeds x examples",
            att_gate=sum(gate) / len(gate), best_of_up_down=sum(best_other) / len(best_other))}

    res["evidence"] = with_raw(res, evidence)
    return res


def run_efficiency(ctx: Context) -> dict[str, Any]:
    """Table 2 / Fig. 8: LoRA on one module (or group) at a time, at the adapters' identical budget."""
    cfg = ctx.cfg

    def variants(adapter: str) -> list[dict[str, Any]]:
        vs: list[dict[str, Any]] = [{"name": "base", "kind": "reference", "model": "base"},
                                    {"name": ALL, "kind": "reference", "model": adapter}]
        vs += [{"name": m, "kind": "tune", "modules": m} for m in cfg.single]
        vs += [{"name": g, "kind": "tune", "modules": sel} for g, sel in cfg.groups.items() if g not in cfg.single]
        return vs

    res = _run(ctx, "efficiency", variants)
    others = [m for m in cfg.single if m != "gate_proj"]
    if not others:  # the claim compares gate_proj with the other single modules: none were asked for
        why = "modules.single lists gate_proj alone, so there is no other single module to compare it with"
        res["evidence"], res["unjudged"] = {}, {"efficiency.gate-lora": why}  # the report notes it
        return res

    def evidence(r: dict[str, Any]) -> dict[str, Any]:
        gate = affective(r, "gate_proj")
        best = [max(xs) for xs in zip(*[affective(r, m) for m in others], strict=True)]
        v, ci, n = score_difference(gate, best, _n(r))
        return {"efficiency.gate-lora": evidence_dict(
            v, ci, n, interval="score_difference", units="seeds x examples", gate=sum(gate) / len(gate),
            best_other=sum(best) / len(best))}

    res["evidence"] = with_raw(res, evidence)
    return res


def run_necessity(ctx: Context) -> dict[str, Any]:
    """Each module's delta reset inside the tuned model, the equal-parameter control, the control task."""
    cfg = ctx.cfg

    def variants(adapter: str) -> list[dict[str, Any]]:
        vs: list[dict[str, Any]] = [{"name": ALL, "kind": "reference", "model": adapter}]
        vs += [{"name": f"reset {m}", "kind": "ablate", "model": adapter, "modules": m, "mode": "zero-delta"}
               for m in cfg.single]
        vs.append({"name": "reset control (equal params)", "kind": "ablate", "model": adapter,
                   "modules": "gate_proj", "mode": "zero-delta", "control": True})
        return vs

    res = _run(ctx, "necessity", variants, with_control=True)

    def evidence(r: dict[str, Any]) -> dict[str, Any]:
        tuned = affective(r, ALL)
        gate, ctrl = affective(r, "reset gate_proj"), affective(r, "reset control (equal params)")
        drop_gate = [t - g for t, g in zip(tuned, gate, strict=True)]
        drop_ctrl = [t - c for t, c in zip(tuned, ctrl, strict=True)]
        v, ci, n = score_difference(gate, ctrl, _n(r))  # drop_gate - drop_ctrl = ctrl - gate
        detail: dict[str, Any] = {"interval": "score_difference", "units": "seeds x examples",
                                  "drop_gate": sum(drop_gate) / len(drop_gate),
                                  "drop_control_module": sum(drop_ctrl) / len(drop_ctrl)}
        ct, cg = control(r, ALL), control(r, "reset gate_proj")
        if ct is not None and cg is not None:
            detail["drop_gate_on_control_task"] = sum(a - b for a, b in zip(ct, cg, strict=True)) / len(ct)
        return {"necessity.gate-reset": evidence_dict(-v, (-ci[1], -ci[0]), n, **detail)}

    res["evidence"] = with_raw(res, evidence)
    return res


def task_file(task: str) -> Any:
    """The file a task reads (for its content fingerprint), or None."""
    from ..grid.inputs import _task_file

    return _task_file(task)


def majority_yardstick(task: str, limit: int | None = None) -> float:
    """The primary score of always answering the most frequent label of the scored examples."""
    from ..evaluate import classification_metrics, get_task, load_task
    from ..tasks.spec import primary_metric

    loaded = load_task(get_task(task), limit)
    labels = list(loaded.labels)
    golds = [labels.index(str(ex.label)) for ex in loaded.examples]
    top = max(set(golds), key=golds.count)
    metrics = classification_metrics(golds, [top] * len(golds), labels, n_boot=10)
    return float(metrics[primary_metric(loaded.spec, "closed")])


def run_frontier(ctx: Context, eff: dict[str, Any]) -> dict[str, Any]:
    """Fig. 9: score vs trainable parameters; GET's share of the all-module gain over max(base, majority)."""
    cfg = ctx.cfg
    yard = {t: majority_yardstick(t, cfg.eval["limit"]) for t in cfg.tasks}
    majority = sum(yard.values()) / len(yard)
    base = affective(eff, "base")
    y = max(sum(base) / len(base), majority)
    points = []
    for name in eff["scores"]:
        if name == "base" or not eff["params"].get(name):
            continue
        xs = affective(eff, name)
        points.append({"variant": name, "params": int(eff["params"][name]), "mean": sum(xs) / len(xs),
                       "kind": "reference" if name == ALL else "tune"})
    raw = raw_view(eff)
    for p in points:
        xs = affective(raw, p["variant"])
        p["uncalibrated_mean"] = sum(xs) / len(xs)
    by_name = {p["variant"]: p for p in points}
    if ALL not in by_name or "gate_proj" not in by_name:
        raise AffectlensError("the frontier needs the trainable-parameter counts of the all-module and the "
                              "gate_proj LoRA, and the efficiency stage recorded none")
    ref, get = by_name[ALL], by_name["gate_proj"]
    raw_share = get["mean"] / ref["mean"] if ref["mean"] > 0 else None
    v, ci, n = share_of_gain(affective(eff, "gate_proj"), affective(eff, ALL), y, _n(eff))
    base_raw = affective(raw, "base")
    y_raw = max(sum(base_raw) / len(base_raw), majority)
    rv, rci, _ = share_of_gain(affective(raw, "gate_proj"), affective(raw, ALL), y_raw, _n(eff))
    cal = eff.get("calibration", "none")
    line = (f"GET: {100 * raw_share:.1f} % of the all-module LoRA's mean score at "
            f"{100 * get['params'] / ref['params']:.1f} % of its parameters" if raw_share is not None else
            "GET's raw score share is undefined: the all-module LoRA scored 0")
    res: dict[str, Any] = {"points": points, "majority": yard, "yardstick": y, "base": sum(base) / len(base),
                           "raw_share": raw_share, "param_share": get["params"] / ref["params"], "line": line,
                           "calibration": cal, "base_uncalibrated": sum(base_raw) / len(base_raw),
                           "evidence": {}}
    if v == v:  # the all-module LoRA gained over the yardstick: the share is defined
        extra: dict[str, Any] = {}
        if cal != "none" and all(math.isfinite(x) for x in (rv, *rci)):
            extra["uncalibrated"] = {"value": rv, "ci": list(rci)}
        elif cal != "none":
            # The raw share is undefined: say so in words. As a NaN it was a number that is not one -- it
            # broke the claim on a first run and became null in the cache, so a rerun read it differently.
            raw_all = _mean(affective(raw, ALL))
            why = (f"uncalibrated, the all-module LoRA ({raw_all:.4f}) did not beat max(base, majority class) "
                   f"({y_raw:.4f}), so GET's raw share of its gain is undefined" if rv != rv else
                   "uncalibrated, GET's share of the gain has no bootstrap interval (the resampled gains "
                   "were never positive)")
            extra["uncalibrated"] = {"undefined": why}
            res["notes"] = [f"{why}; the claim reads the calibrated scores, where the share is defined"]
        res["evidence"]["frontier.get-share"] = evidence_dict(
            v, ci, n, interval="share_of_gain", yardstick=y, raw_share=raw_share,
            param_share=get["params"] / ref["params"],
            scores=f"calibrated ({cal})" if cal != "none" else "raw", **extra)
    else:
        why = ("the all-module LoRA did not beat max(base, majority class) on the affective tasks, so GET's "
               "share of its gain is undefined")
        res["unjudged"] = {"frontier.get-share": why}  # the report notes it with the claim
    return res


__all__ = ["affective", "control", "raw_view", "with_raw", "majority_yardstick", "task_file", "run_efficiency", "run_frontier", "run_necessity",
           "run_sufficiency"]

"""Stages scored through ``grid.run_grid``: sufficiency (Table 1), efficiency (Table 2 / Fig. 8),
necessity, and the GET frontier (Fig. 9) read from efficiency's scores.

One grid per seed, generated from the study config: its donors and tuned
models are that seed's adapters from the ``adapters`` stage, so nothing is
trained twice, and the grid's own per-cell cache makes a resumed stage
rescore only the cells it had not finished.
"""

from __future__ import annotations

import inspect
from collections import defaultdict
from typing import Any

import numpy as np

from ..errors import AffectlensError
from .context import Context
from .scored import (
    cells_of,
    collect,
    dev_task,
    grid_calibration,
    point,
    score_evidence,
    seed_scores,
    task_preds,
)

ALL = "all-module"


def _grid_base(ctx: Context, name: str, seed: int, with_control: bool, dev: list[str], cal: str) -> dict[str, Any]:
    cfg = ctx.cfg
    ctrl = list(cfg.control_tasks) if with_control else []
    return {"name": name, "base": str(ctx.base_path), "data": cfg.data,
            "tasks": [*cfg.tasks, *ctrl, *dev], "control_tasks": ctrl,
            "eval": {"mode": "closed", "batch_size": cfg.eval["batch_size"],
                     **({"limit": cfg.eval["limit"]} if cfg.eval["limit"] else {}),
                     **({"calibration": cal} if cal != "none" else {}),
                     **({"allow_train_overlap": True} if cfg.allow_train_overlap else {})},
            "budget": {**cfg.budget.budget(), "seeds": [seed]}}


def _grid_kw(ctx: Context) -> dict[str, Any]:
    """run_grid's placement options from the study's executor, device and dtype."""
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
    return kw


REFERENCES = "references"  # the study dir's shared grids of the base and the all-module LoRA


def _references(ctx: Context, dev: dict[str, str], gcal: str, kw: dict[str, Any]
                ) -> tuple[dict[int, dict[str, Any]], list[dict[str, Any]]]:
    """The reference models, each scored once per study on every task any scored stage reads.

    Sufficiency, efficiency and necessity all compare against the untuned base and the all-module LoRA.
    Scored inside each stage's grid they were scored 2 (base) and 3 (all-module) times per seed, and the
    base once per seed although it does not depend on one. Here the base is scored once (in the first
    seed's grid: its predictions do not depend on the seed) and the all-module LoRA once per seed, on the
    union of the affective, control and dev tasks; the grids' own cell cache makes every later call free.
    Returns ``{seed: {variant: cells}}`` (the base under every seed) and the grids' rows."""
    from ..grid import run_grid

    cfg = ctx.cfg
    cells: dict[int, dict[str, Any]] = {}
    rows: list[dict[str, Any]] = []
    for s in cfg.seeds:
        adapter = ctx.abs(ctx.results["adapters"]["emotion"][str(s)])
        gdir = ctx.store.dir(REFERENCES) / f"grid-s{s}"
        _drop_cells_without_examples(gdir)
        vs: list[dict[str, Any]] = [{"name": ALL, "kind": "reference", "model": adapter}]
        if s == cfg.seeds[0]:
            vs.insert(0, {"name": "base", "kind": "reference", "model": "base"})
        gcfg = {**_grid_base(ctx, f"{REFERENCES}-s{s}", s, True, list(dev.values()), gcal), "variants": vs}
        res = run_grid(gcfg, gdir, force=True, evaluator=ctx.evaluator, tuner=ctx.tuner, echo=lambda line: None,
                       allow_pickle=ctx.allow_pickle, **kw)
        rows += [r for r in res.rows if r["variant"] == ALL or s == cfg.seeds[0]]
        cells[s] = cells_of(gdir)
    first = cells[cfg.seeds[0]]
    for s in cfg.seeds[1:]:
        cells[s]["base"] = first["base"]
    return cells, rows


def _run(ctx: Context, stage: str, variants_of: Any, with_control: bool = False,
         references: tuple[str, ...] = ("base", ALL), control_for: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Run one grid per seed; collect per-variant, per-task scores over seeds, params, n, and the paired
    per-example predictions (calibration chosen on dev, see :mod:`.scored`) the claims are judged on.

    ``references`` (base, all-module) are not scored in the stage's grid but read from the study's shared
    reference grids (:func:`_references`). Sufficiency and necessity score the non-affective control tasks
    too (the fluency claim and the control-task drop read them); efficiency does not. ``control_for`` names
    the only variants scored on the control tasks (in a second, control-only grid per seed), where a stage's
    claims read the control scores of a few variants only; None: every variant."""
    from ..grid import run_grid

    kw = _grid_kw(ctx)
    cfg = ctx.cfg
    dev = ({t: d for t in cfg.tasks if (d := dev_task(t, cfg.eval.get("dev_per_class"))) is not None}
           if cfg.calibration == "auto" else {})
    gcal = grid_calibration(cfg.calibration, list(dev.values()))
    ctrl = list(cfg.control_tasks) if with_control else []
    wanted = {*cfg.tasks, *ctrl}
    scores: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    raw: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    params: dict[str, int | None] = {}
    n: dict[str, int] = {}
    per_seed: dict[int, dict[str, Any]] = {}
    ref_cells, ref_rows = _references(ctx, dev, gcal, kw) if references else ({}, [])
    split = bool(ctrl) and control_for is not None
    for s in cfg.seeds:
        adapter = ctx.abs(ctx.results["adapters"]["emotion"][str(s)])
        gdir = ctx.store.dir(stage) / f"grid-s{s}"
        _drop_cells_without_examples(gdir)
        vs = variants_of(adapter)
        gcfg = {**_grid_base(ctx, f"{stage}-s{s}", s, with_control and not split, list(dev.values()), gcal),
                "variants": vs}
        res = run_grid(gcfg, gdir, force=True, evaluator=ctx.evaluator, tuner=ctx.tuner, echo=lambda line: None,
                       allow_pickle=ctx.allow_pickle, **kw)
        rows = list(res.rows)
        extra: dict[str, Any] = {}
        cvs = [v for v in vs if split and v["name"] in (control_for or ())]
        if cvs:  # the control tasks, for the few variants that need them
            cdir = ctx.store.dir(stage) / f"grid-s{s}-control"
            _drop_cells_without_examples(cdir)
            ccfg = {**_grid_base(ctx, f"{stage}-s{s}-control", s, True, [], gcal), "tasks": ctrl, "variants": cvs}
            rows += run_grid(ccfg, cdir, force=True, evaluator=ctx.evaluator, tuner=ctx.tuner,
                             echo=lambda line: None, allow_pickle=ctx.allow_pickle, **kw).rows
            extra = cells_of(cdir)
        mine = [r for r in ref_rows if r["variant"] in references and (r["variant"] == "base" or r["seed"] == s)]
        for r in [*mine, *rows]:
            if r["task"] not in wanted:
                continue
            scores[r["variant"]][r["task"]].append(float(r["primary"]))
            u = r.get("uncalibrated_primary")
            raw[r["variant"]][r["task"]].append(float(r["primary"] if u is None else u))
            if r.get("n"):
                n[r["task"]] = int(r["n"])
            params.setdefault(r["variant"], r.get("trainable_params"))
        per_seed[s] = {**{v: ref_cells[s][v] for v in references}, **cells_of(gdir)}
        for v, tasks in extra.items():
            per_seed[s][v] = {**per_seed[s].get(v, {}), **tasks}
    p_all = ctx.results["adapters"].get("params") or {}
    if p_all and params.get(ALL) is None:
        params[ALL] = int(sum(p_all.values()) / len(p_all))
    out: dict[str, Any] = {"scores": {v: dict(t) for v, t in scores.items()},
                           "raw_scores": {v: dict(t) for v, t in raw.items()}, "calibration": gcal,
                           "params": params, "n": n, "tasks": list(cfg.tasks), "control_tasks": ctrl,
                           "dev_tasks": dev, "notes": []}
    if split:  # every variant on the affective tasks; the control tasks for those that were scored on them
        block = collect(per_seed, list(cfg.tasks), dev, cfg.calibration)
        on_ctrl = {*references, *(control_for or ())}
        cblock = collect({s: {v: c for v, c in cells.items() if v in on_ctrl} for s, cells in per_seed.items()},
                         ctrl, dev, cfg.calibration)
        if block is not None and cblock is not None:
            block["tasks"].update(cblock["tasks"])
            for v, preds in cblock["preds"].items():
                block["preds"][v].update(preds)
        else:
            block = None
    else:
        block = collect(per_seed, [*cfg.tasks, *ctrl], dev, cfg.calibration)
    if block is None:
        out["notes"].append("the evaluator gave no per-example predictions, so examples cannot be paired across "
                            "variants: this stage's claims are not judged")
        return out
    out["per_example"] = block
    chosen = {m for per in block["choice"].values() for m in per.values()}
    out["calibration"] = chosen.pop() if len(chosen) == 1 else "chosen per model"
    out["calibration_why"] = block.get("why", "")
    for t in [*cfg.tasks, *ctrl]:  # the table's scores: exactly the predictions the claims are judged on
        tp, tr = task_preds(out, "chosen", [t]), task_preds(out, "raw", [t])
        for v in block["preds"]:
            if t in block["preds"][v]:
                out["scores"][v][t], out["raw_scores"][v][t] = seed_scores(tp, v), seed_scores(tr, v)
    return out


def _drop_cells_without_examples(gdir: Any) -> None:
    """Cells a study wrote before cells kept per-example records (no ``examples`` key at all) are rescored:
    the grid would otherwise reuse them, their variant keys being unchanged."""
    import json

    for f in sorted(gdir.glob("cells/*.json")):
        try:
            tasks = json.loads(f.read_text(encoding="utf-8")).get("tasks") or {}
        except (OSError, ValueError):
            continue  # the grid decides what an unreadable cell is
        if any(isinstance(e, dict) and "examples" not in e for e in tasks.values()):
            f.unlink()


def raw_view(res: dict[str, Any]) -> dict[str, Any]:
    """The same stage result read on its uncalibrated scores (itself when nothing was calibrated)."""
    return {**res, "scores": res["raw_scores"]} if res.get("raw_scores") else res


def affective(res: dict[str, Any], variant: str) -> list[float]:
    """Per seed, the mean primary score over the affective tasks (the chosen calibration's)."""
    per_task = [res["scores"][variant][t] for t in res["tasks"]]
    return [sum(xs) / len(xs) for xs in zip(*per_task, strict=True)]


def control(res: dict[str, Any], variant: str) -> list[float] | None:
    """Per seed, the mean primary score over the control tasks; None where the variant was not scored on them."""
    if not res["control_tasks"] or any(t not in res["scores"][variant] for t in res["control_tasks"]):
        return None
    per_task = [res["scores"][variant][t] for t in res["control_tasks"]]
    return [sum(xs) / len(xs) for xs in zip(*per_task, strict=True)]


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def _judge(res: dict[str, Any], specs: dict[str, tuple[list[str], Any] | str], src: dict[str, Any] | None = None,
           **kw: Any) -> None:
    """Fill ``res["evidence"]``/``res["unjudged"]`` from {claim: (variants, combine) or the reason it cannot be};
    the predictions are ``src``'s (default ``res``'s); ``kw`` maps a claim to ``score_evidence`` options."""
    src = res if src is None else src
    res.setdefault("evidence", {})
    res.setdefault("unjudged", {})
    for cid, spec in specs.items():
        if isinstance(spec, str):
            res["unjudged"][cid] = spec
            continue
        if "per_example" not in src:
            res["unjudged"][cid] = ("the evaluator gave no per-example predictions, so the paired bootstrap over "
                                    "examples cannot be run")
            continue
        variants, combine = spec
        missing = [v for v in variants if v not in src["per_example"]["preds"] and v != "majority"]
        if missing:
            res["unjudged"][cid] = f"the stage scored no {', '.join(missing)} variant"
            continue
        ev = score_evidence(src, variants, combine, majority="majority" in variants, **kw.get(cid, {}))
        if "undefined" in ev:
            res["unjudged"][cid] = ev["undefined"]
        else:
            res["evidence"][cid] = ev


def _best(s: dict[str, np.ndarray], names: list[str]) -> np.ndarray:
    return np.max(np.stack([s[m] for m in names]), axis=0)


def _group(cfg: Any, selection: str) -> str | None:
    """The efficiency group tuning exactly ``selection`` (by module set, whatever the config named it)."""
    from ..modules import parse_selection

    want = parse_selection(selection)
    return next((g for g, sel in cfg.groups.items() if parse_selection(sel) == want and g not in cfg.single), None)


GATE_DOWN = "Att.+{gate,down}"


def run_sufficiency(ctx: Context) -> dict[str, Any]:
    """Table 1: each module's delta transferred alone onto the base, against the full adapter."""
    single = ctx.cfg.single

    def variants(adapter: str) -> list[dict[str, Any]]:
        vs: list[dict[str, Any]] = [{"name": "Att.", "kind": "transfer", "donor": adapter, "modules": "attn"}]
        vs += [{"name": f"Att.+{m.split('_')[0]}", "kind": "transfer", "donor": adapter,
                "modules": f"attn,{m}"} for m in ("gate_proj", "up_proj", "down_proj")]
        vs.append({"name": GATE_DOWN, "kind": "transfer", "donor": adapter, "modules": "attn,gate_proj,down_proj"})
        vs += [{"name": m, "kind": "transfer", "donor": adapter, "modules": m} for m in single]
        return vs

    # Only the fluency claim reads a transferred model's control score (Att.+gate's, against the base's).
    res = _run(ctx, "sufficiency", variants, with_control=True, control_for=("Att.+gate",))
    others = [m for m in single if m != "gate_proj"]
    _judge(res, {
        "sufficiency.gate-over-attention": (["Att.+gate", "Att."], lambda s: s["Att.+gate"] - s["Att."]),
        "sufficiency.gate-transfer": (["Att.+gate", "Att.+up", "Att.+down"],
                                      lambda s: s["Att.+gate"] - np.maximum(s["Att.+up"], s["Att.+down"])),
        "sufficiency.single-gate-load": (["gate_proj", *others], lambda s: s["gate_proj"] - _best(s, others))
        if others else "modules.single lists gate_proj alone, so no other single module is transferred",
        "sufficiency.down-negative": ([GATE_DOWN, "Att.+gate"], lambda s: s[GATE_DOWN] - s["Att.+gate"]),
        "sufficiency.fluency-kept": (["Att.+gate", "base"], lambda s: s["Att.+gate"] - s["base"])
        if res["control_tasks"] else "the config names no control_tasks to measure fluency on",
    }, **{"sufficiency.fluency-kept": {"tasks": res["control_tasks"]}})
    return res


def run_efficiency(ctx: Context) -> dict[str, Any]:
    """Table 2 / Fig. 8: LoRA on one module (or group) at a time, at the adapters' identical budget."""
    cfg = ctx.cfg

    def variants(adapter: str) -> list[dict[str, Any]]:
        vs: list[dict[str, Any]] = [{"name": m, "kind": "tune", "modules": m} for m in cfg.single]
        vs += [{"name": g, "kind": "tune", "modules": sel} for g, sel in cfg.groups.items() if g not in cfg.single]
        return vs

    res = _run(ctx, "efficiency", variants)
    others = [m for m in cfg.single if m != "gate_proj"]
    g = {sel: _group(cfg, sel) for sel in ("attn", "attn,gate_proj", "attn,up_proj", "attn,down_proj",
                                             "o_proj,gate_proj")}

    def need(*sels: str) -> str | None:
        gone = [s for s in sels if g[s] is None]
        return (f"modules.groups has no group tuning {' / '.join(gone)} (add e.g. "
                f"\"{gone[0]}\": \"{gone[0]}\")") if gone else None

    att, ag, au, ad, og = (g[s] or s for s in ("attn", "attn,gate_proj", "attn,up_proj", "attn,down_proj",
                                              "o_proj,gate_proj"))
    _judge(res, {
        "efficiency.gate-lora": (["gate_proj", *others], lambda s: s["gate_proj"] - _best(s, others)) if others
        else "modules.single lists gate_proj alone, so there is no other single module to compare it with",
        "efficiency.gate-over-attention": need("attn,gate_proj", "attn") or ([ag, att], lambda s: s[ag] - s[att]),
        "efficiency.att-gate-lora": need("attn,gate_proj", "attn,up_proj", "attn,down_proj")
        or ([ag, au, ad], lambda s: s[ag] - np.maximum(s[au], s[ad])),
        "efficiency.down-negative": need("attn,down_proj", "attn") or ([ad, att], lambda s: s[ad] - s[att]),
        "efficiency.o-gate-synergy": need("o_proj,gate_proj", "attn,gate_proj") or ([og, ag], lambda s: s[og] - s[ag]),
    })
    return res


def run_necessity(ctx: Context) -> dict[str, Any]:
    """Each module's delta reset inside the tuned model, the equal-parameter control, the control task."""
    cfg = ctx.cfg
    ctl = "reset control (equal params)"

    def variants(adapter: str) -> list[dict[str, Any]]:
        vs: list[dict[str, Any]] = [{"name": f"reset {m}", "kind": "ablate", "model": adapter, "modules": m, "mode": "zero-delta"}
               for m in cfg.single]
        vs.append({"name": ctl, "kind": "ablate", "model": adapter,
                   "modules": "gate_proj", "mode": "zero-delta", "control": True})
        return vs

    res = _run(ctx, "necessity", variants, with_control=True, references=(ALL,))
    # drop_gate - drop_control = (tuned - reset gate) - (tuned - reset control) = reset control - reset gate
    _judge(res, {"necessity.gate-reset": ([ctl, "reset gate_proj"], lambda s: s[ctl] - s["reset gate_proj"])})
    ev = res["evidence"].get("necessity.gate-reset")
    if ev is not None:
        tuned, gate, cm = (_mean(affective(res, v)) for v in (ALL, "reset gate_proj", ctl))
        ev["detail"].update({"drop_gate": tuned - gate, "drop_control_module": tuned - cm})
        ct, cg = control(res, ALL), control(res, "reset gate_proj")
        if ct is not None and cg is not None:
            ev["detail"]["drop_gate_on_control_task"] = _mean(ct) - _mean(cg)
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
    """Fig. 9: score vs trainable parameters; GET's score ratio (the paper's measure) and its share of the
    all-module gain over max(base, majority class), both judged by the paired bootstrap on efficiency's
    predictions."""
    cfg = ctx.cfg
    raw = raw_view(eff)
    points = []
    for name in eff["scores"]:
        if name == "base" or not eff["params"].get(name):
            continue
        points.append({"variant": name, "params": int(eff["params"][name]), "mean": _mean(affective(eff, name)),
                       "uncalibrated_mean": _mean(affective(raw, name)),
                       "kind": "reference" if name == ALL else "tune"})
    by_name = {p["variant"]: p for p in points}
    if ALL not in by_name or "gate_proj" not in by_name:
        raise AffectlensError("the frontier needs the trainable-parameter counts of the all-module and the "
                              "gate_proj LoRA, and the efficiency stage recorded none")
    ref, get = by_name[ALL], by_name["gate_proj"]
    if "per_example" in eff:
        yard = {t: point(eff, ["majority"], tasks=[t], majority=True)["majority"] for t in eff["tasks"]}
        yard_raw = yard  # always answering one label needs no calibration
    else:
        yard = yard_raw = {t: majority_yardstick(t, cfg.eval["limit"]) for t in cfg.tasks}
    majority = sum(yard.values()) / len(yard)
    base, base_raw = _mean(affective(eff, "base")), _mean(affective(raw, "base"))
    y, y_raw = max(base, majority), max(base_raw, sum(yard_raw.values()) / len(yard_raw))
    ratio = get["mean"] / ref["mean"] if ref["mean"] > 0 else None
    ratio_raw = get["uncalibrated_mean"] / ref["uncalibrated_mean"] if ref["uncalibrated_mean"] > 0 else None
    cal = eff.get("calibration", "none")
    line = (f"GET: {100 * ratio:.1f} % of the all-module LoRA's mean score at "
            f"{100 * get['params'] / ref['params']:.1f} % of its parameters" if ratio is not None else
            "GET's score ratio is undefined: the all-module LoRA scored 0")
    res: dict[str, Any] = {"points": points, "majority": yard, "yardstick": y, "base": base,
                           "score_ratio": ratio, "score_ratio_uncalibrated": ratio_raw,
                           "param_share": get["params"] / ref["params"], "line": line, "calibration": cal,
                           "base_uncalibrated": base_raw, "yardstick_uncalibrated": y_raw, "notes": []}

    def share(s: dict[str, np.ndarray]) -> np.ndarray:
        yy = np.maximum(s["base"], s["majority"])
        gain = s[ALL] - yy
        return np.where(gain > 1e-9, (s["gate_proj"] - yy) / np.where(gain > 1e-9, gain, 1.0), np.nan)

    def rat(s: dict[str, np.ndarray]) -> np.ndarray:
        return np.where(s[ALL] > 1e-9, s["gate_proj"] / np.where(s[ALL] > 1e-9, s[ALL], 1.0), np.nan)

    no_gain = ref["mean"] <= y
    _judge(res, {
        "frontier.get-ratio": (["gate_proj", ALL], rat) if ref["mean"] > 0 else
        "the all-module LoRA scored 0, so GET's score ratio is undefined",
        "frontier.get-share": (["gate_proj", ALL, "base", "majority"], share) if not no_gain else
        "the all-module LoRA did not beat max(base, majority class) on the affective tasks, so GET's share of "
        "its gain is undefined",
    }, src=eff)
    if not no_gain and ref["uncalibrated_mean"] <= y_raw and cal != "none":
        res["notes"].append(f"uncalibrated, the all-module LoRA ({ref['uncalibrated_mean']:.4f}) did not beat "
                            f"max(base, majority class) ({y_raw:.4f}), so GET's raw share of its gain is undefined; "
                            "raw_verdict then reads the calibrated share's numbers")
    for ev in res["evidence"].values():
        ev["detail"].update({"yardstick": y, "score_ratio": ratio, "param_share": res["param_share"]})
    return res


__all__ = ["affective", "control", "raw_view", "majority_yardstick", "task_file", "run_efficiency", "run_frontier",
           "run_necessity", "run_sufficiency"]

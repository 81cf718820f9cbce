"""Stages that train and measure weights: ``adapters`` (LoRA on both tasks, full FT) and ``locate``.

Every adapter lives in ``stages/adapters/<task>__s<seed>__<hash>`` where the
hash covers the base's and data's content and the budget, so a resumed study
reuses each finished adapter and a changed budget trains new ones.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

import numpy as np

from ..errors import AffectlensError
from ..modules import MODULES
from .bootstrap import Draws, summarise
from .cache import fingerprint
from .context import Context

METRICS = ("l2", "relative", "rms")
GATE = "gate_proj"


def run_adapters(ctx: Context) -> dict[str, Any]:
    """All-module LoRA on the affective and the control data (identical budget) and full FT, per seed."""
    import json

    cfg, tune = ctx.cfg, ctx.tune_fn()
    d = ctx.store.dir("adapters")
    out: dict[str, Any] = {"seeds": cfg.seeds, "emotion": {}, "control": {}, "full": {}, "params": {},
                           "seconds_per_step": {}, "losses": {"emotion": {}, "control": {}, "full": {}},
                           "notes": []}
    full_ok = ctx.full_ft_supported()
    if not full_ok:
        out["notes"].append("full fine-tuning skipped: this affectlens' tune() has no method='full' yet, so "
                            "the LoRA-vs-full-FT comparison (paper Fig. 6) is missing")
    jobs: list[tuple[str, str, Any, int]] = []
    for s in cfg.seeds:
        jobs.append(("emotion", cfg.data, cfg.budget.replace(modules="all", seed=s), s))
        jobs.append(("control", cfg.control_data, cfg.budget.replace(modules="all", seed=s), s))
        if full_ok:
            jobs.append(("full", cfg.data, cfg.full_budget.replace(modules="all", seed=s), s))
    from ..runs import progress

    # The ETA weights each adapter by its steps x batch (a full-FT step ~3 LoRA steps); a cached one is free.
    costs = [0.0 if _adapter_dir(ctx, d, k, b, s).is_dir() else b.steps * b.batch_size * (3 if k == "full" else 1)
             for k, _, b, s in jobs]
    for kind, data, budget, s in progress(jobs, "study adapters", total=len(jobs), unit="adapter", weights=costs):
        ad = _adapter_dir(ctx, d, kind, budget, s)
        if not ad.is_dir():
            ctx.echo(f"  training {kind} adapter seed {s} ({budget.steps} steps)")
            extra: dict[str, Any] = {"method": "full"} if kind == "full" else {}
            if ctx.device != "auto" and _accepts(tune, "device"):
                extra["device"] = ctx.device
            tune(str(ctx.base_path), data, config=budget, out=ad, force=False, verbose=False,
                 allow_pickle=ctx.allow_pickle, **extra)
        rel = str(ad.relative_to(ctx.root))
        out[kind][str(s)] = rel
        info_path = ad / "affectlens_tune.json"
        info = json.loads(info_path.read_text()) if info_path.is_file() else {}
        if info.get("loss_curve"):  # the report's loss-curve figure
            out["losses"][kind][str(s)] = [float(x) for x in info["loss_curve"]]
        opts = info.get("options") or {}
        if opts.get("device"):  # the methods: where training really ran
            out.setdefault("ran_on", []).append(f"{opts['device']} {str(opts.get('dtype', '')).removeprefix('torch.')}"
                                                f", precision {opts.get('precision_used', '?')}")
        if kind == "emotion":
            if info.get("trainable_params"):
                out["params"][str(s)] = int(info["trainable_params"])
            if info.get("seconds_per_step"):
                out["seconds_per_step"][str(s)] = float(info["seconds_per_step"])
    if not out["params"]:
        from ..params import count_params
        from ..weights import open_weights

        with open_weights(ctx.base_path, allow_pickle=ctx.allow_pickle) as store:
            n = count_params(store.config, "all", cfg.budget.rank).lora_total
        out["params"] = {str(s): int(n) for s in cfg.seeds}
    return out


def _adapter_dir(ctx: Context, d: Any, kind: str, budget: Any, s: int) -> Any:
    """Where the ``kind`` adapter of seed ``s`` lives: its hash covers base, data and budget."""
    data_fp = ctx.fps["data"] if kind != "control" else ctx.fps["control_data"]
    return d / f"{kind}__s{s}__{fingerprint(ctx.fps['base'], data_fp, budget.to_dict(), kind)}"


def _accepts(fn: Any, name: str) -> bool:
    import inspect

    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _module_means(rows: list[Any], label: str, metric: str) -> dict[str, float]:
    vals: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        if r.model == label and r.param == "weight":
            vals[r.module].append(float(getattr(r, metric)))
    return {m: sum(v) / len(v) for m, v in vals.items() if v}


def _per_layer(rows: list[Any], label: str, metric: str) -> dict[int, dict[str, float]]:
    out: dict[int, dict[str, float]] = defaultdict(dict)
    for r in rows:
        if r.model == label and r.param == "weight":
            out[int(r.layer)][r.module] = out[int(r.layer)].get(r.module, 0.0) + float(getattr(r, metric))
    return out


def _ranked(d: dict[str, float]) -> list[str]:
    return sorted(d, key=lambda k: -d[k])


def run_locate(ctx: Context, adapters: dict[str, Any]) -> dict[str, Any]:
    """Module x layer change per adapter; the locus per metric and its stability; the two locate claims."""
    from ..locate.weight_change import measure

    models: list[tuple[str, str]] = []
    for kind in ("emotion", "control", "full"):
        for s, rel in sorted(adapters.get(kind, {}).items()):
            models.append((f"{kind}-s{s}", ctx.abs(rel)))
    if not models:
        raise AffectlensError("locate needs the adapters stage's models")
    res = measure(str(ctx.base_path), [p for _, p in models], [lab for lab, _ in models], ctx.allow_pickle,
                  distribution=False, show_progress=False)
    rows = res.rows
    labels = [lab for lab, _ in models]
    means = {lab: {m: _module_means(rows, lab, m) for m in METRICS} for lab in labels}
    loci = {lab: {m: max(means[lab][m], key=means[lab][m].__getitem__) for m in METRICS} for lab in labels}
    stability: dict[str, dict[str, Any]] = {}
    for kind in ("emotion", "control", "full"):
        labs = [lab for lab in labels if lab.startswith(kind + "-")]
        if not labs:
            continue
        stability[kind] = {}
        for m in METRICS:
            c = Counter(loci[lab][m] for lab in labs)
            mod, k = c.most_common(1)[0]
            stability[kind][m] = {"locus": mod, "share_of_seeds": k / len(labs), "n_seeds": len(labs)}
    # The replicate is the seed (a training run); layers are the units within it, paired across modules
    # (and across the emotion and control adapters of one seed): bootstrap over seeds x layers.
    rel = {lab: _per_layer(rows, lab, "relative") for lab in labels}
    l2 = {lab: _per_layer(rows, lab, "l2") for lab in labels}
    emo = [lab for lab in labels if lab.startswith("emotion-")]
    evidence: dict[str, Any] = {}
    for cid, kind in (("locate.gate-largest", "emotion"), ("locate.sft-same-locus", "full")):
        labs = [lab for lab in labels if lab.startswith(kind + "-")]
        if labs:
            evidence[cid] = lead_evidence([rel[lab] for lab in labs], kind)
    pairs = [(lab, lab.replace("emotion-", "control-")) for lab in emo if lab.replace("emotion-", "control-") in labels]
    if pairs:
        evidence["locate.emotion-specific"] = share_evidence([l2[e] for e, _ in pairs], [l2[c] for _, c in pairs])
    unjudged = {cid: ev.pop("undefined") for cid, ev in list(evidence.items()) if "undefined" in ev}
    for cid in unjudged:
        evidence.pop(cid)
    if not any(lab.startswith("full-") for lab in labels):
        unjudged["locate.sft-same-locus"] = ("no full fine-tune was trained (this tune() has no method='full'), "
                                             "so LoRA and SFT cannot be compared")
    layers = sorted({int(r.layer) for r in rows})
    heat = {lab: {str(la): mods for la, mods in _per_layer(rows, lab, "relative").items()} for lab in labels}
    heat_l2 = {lab: {str(la): mods for la, mods in _per_layer(rows, lab, "l2").items()} for lab in labels}
    ranking = {lab: {m: _ranked(means[lab][m]) for m in METRICS} for lab in labels}
    return {"labels": labels, "means": means, "loci": loci, "stability": stability, "ranking": ranking,
            "layers": layers, "modules": [m for m in MODULES if any(m in means[lab]["l2"] for lab in labels)],
            "heat": heat, "heat_l2": heat_l2, "evidence": evidence, "unjudged": unjudged,
            "notes": list(adapters.get("notes", []))}


def _cube(per_seed: list[dict[int, dict[str, float]]]) -> tuple[np.ndarray, list[int], list[str]]:
    """[seeds, layers, modules] from per-seed {layer: {module: value}} (the layers and modules all share)."""
    layers = sorted(set.intersection(*(set(d) for d in per_seed)))
    mods = [m for m in MODULES if all(m in d[la] for d in per_seed for la in layers)]
    arr = np.array([[[d[la][m] for m in mods] for la in layers] for d in per_seed], dtype=np.float64)
    return arr, layers, mods


def lead_evidence(per_seed: list[dict[int, dict[str, float]]], kind: str = "emotion", seed: int = 0) -> dict[str, Any]:
    """gate_proj's lead over the runner-up module (module means over layers: gate / runner-up - 1), mean over
    seeds; bootstrap over seeds x layers."""
    arr, layers, mods = _cube(per_seed)
    if GATE not in mods or len(mods) < 2 or not layers:
        return {"undefined": f"the {kind} adapters changed no gate_proj and another module in the same layers"}
    gi = mods.index(GATE)

    def stat(d: Draws) -> np.ndarray:
        out = []
        for j in range(d.seeds.shape[1]):
            means = arr[d.seeds[:, j][:, None], d.units[j][0]].mean(1)  # [B, modules]
            runner = np.delete(means, gi, axis=1).max(1)
            out.append(np.where(runner > 0, means[:, gi] / np.where(runner > 0, runner, 1.0) - 1.0, np.nan))
        return np.mean(out, axis=0)

    return summarise(stat, arr.shape[0], [len(layers)], seed=seed, unit="layers", adapters=kind,
                     n_layers=len(layers), metric="relative change (Eq. 2): gate_proj / runner-up - 1")


def share_evidence(emotion: list[dict[int, dict[str, float]]], control: list[dict[int, dict[str, float]]],
                   seed: int = 0) -> dict[str, Any]:
    """gate_proj's share of the total Eq.-1 change, emotion minus control adapter of the same seed; bootstrap
    over seeds x layers (the same drawn layers for both adapters)."""
    e, layers, mods = _cube(emotion)
    c, layers_c, mods_c = _cube(control)
    if GATE not in mods or (layers, mods) != (layers_c, mods_c):
        return {"undefined": "the emotion and control adapters do not change the same modules and layers"}
    gi = mods.index(GATE)

    def stat(d: Draws) -> np.ndarray:
        out = []
        for j in range(d.seeds.shape[1]):
            idx = (d.seeds[:, j][:, None], d.units[j][0])
            se, sc = e[idx].sum(1), c[idx].sum(1)  # [B, modules]
            te, tc = se.sum(1), sc.sum(1)
            ok = (te > 0) & (tc > 0)
            out.append(np.where(ok, se[:, gi] / np.where(ok, te, 1.0) - sc[:, gi] / np.where(ok, tc, 1.0), np.nan))
        return np.mean(out, axis=0)

    return summarise(stat, e.shape[0], [len(layers)], seed=seed, unit="layers", n_layers=len(layers),
                     metric="gate_proj's share of the Eq. 1 change: emotion adapter minus control adapter")


__all__ = ["lead_evidence", "run_adapters", "run_locate", "share_evidence"]

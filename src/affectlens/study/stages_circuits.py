"""The circuits stage: vectors -> layer profile -> heads -> neurons -> interventions with baselines.

Each step is one ``circuits.api`` run written under ``stages/circuits/<fp>/``
(atomic run dirs, so a finished step is reused after a kill). A step that
fails is a note, not a crash: later steps that need it are skipped with a
note too. The interventions amplify the top heads (neurons) and, as the
paper's baseline, the same number of random heads (neurons) drawn with the
study's first seed; the claims compare them example by example.
"""

from __future__ import annotations

import csv
import json
import random
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .context import Context
from .stats import mean_evidence, spearman_evidence


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


class Steps:
    """The stage's progress: one item per step, weighted by its expected seconds (so the ETA counts
    work), and a start line with its estimate and an end line with its time for each step that runs.
    A step found finished (a resumed stage) is skipped; a retried step counts once."""

    def __init__(self, costs: dict[str, float]) -> None:
        from ..progress import Progress

        self.costs, self.counted = costs, set[str]()
        self.bar = Progress(len(costs), "study circuits", unit="step", weights=list(costs.values()))

    def count(self, name: str, cached: bool) -> None:
        if name in self.counted or name not in self.costs:
            return
        self.counted.add(name)
        (self.bar.skip if cached else self.bar.update)(cost=self.costs[name])

    def close(self) -> None:
        self.bar.close()


def _step(d: Path, name: str, notes: list[str], fn: Callable[[str], Any], steps: Steps | None = None
          ) -> Path | None:
    """Run ``fn(out)`` unless ``d/name`` is already a finished run; a failure becomes a note."""
    from ..progress import step

    out = d / name
    if (out / "manifest.json").is_file():
        if steps is not None:
            steps.count(name, cached=True)
        return out
    try:
        with step(f"study circuits: {name}", (steps.costs.get(name) if steps is not None else None)):
            fn(str(out))
    except Exception as e:  # one failed step is a note; the steps that do not need it still run
        why = str(e).splitlines()[0] if str(e) else ""
        notes.append(f"circuits {name} failed and was skipped ({type(e).__name__}{': ' + why if why else ''})")
        return None
    finally:
        if steps is not None:
            steps.count(name, cached=False)
    return out


def top_units(rows: list[dict[str, str]], col: str, k: int) -> list[tuple[int, int]]:
    """The ``k`` units with the largest mean ``score`` over emotions."""
    agg: dict[tuple[int, int], list[float]] = defaultdict(list)
    for r in rows:
        agg[(int(r["layer"]), int(r[col]))].append(float(r["score"]))
    ranked = sorted(agg, key=lambda u: (-sum(agg[u]) / len(agg[u]), u))
    return ranked[:k]


def random_units(chosen: list[tuple[int, int]], layers: list[int], width: int, seed: int) -> list[tuple[int, int]]:
    """As many units as ``chosen``, drawn uniformly from ``layers`` x ``range(width)`` without them."""
    rng = random.Random(seed)
    pool = [(la, i) for la in layers for i in range(width) if (la, i) not in set(chosen)]
    return sorted(rng.sample(pool, min(len(chosen), len(pool))))


def spec_of(units: list[tuple[int, int]]) -> str:
    return ",".join(f"{la}.{i}" for la, i in units)


def _predictions(run: Path, side: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for f in sorted(run.glob(f"predictions_*_{side}.jsonl")):
        rows += [json.loads(line) for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
    return rows


def run_circuits(ctx: Context, fp: str) -> dict[str, Any]:
    """All circuits steps and the three circuits claims' evidence, with a progress line per step."""
    from ..models.resolve import resolve_model_path
    from .budget import circuits_seconds

    steps = Steps(circuits_seconds(ctx.cfg, resolve_model_path(ctx.cfg.circuits_model), ctx.dtype))
    try:
        return _run_circuits(ctx, fp, steps)
    finally:
        steps.close()


def _run_circuits(ctx: Context, fp: str, steps: Steps) -> dict[str, Any]:
    from ..circuits import api
    from ..models.resolve import resolve_model_path

    c, seed = ctx.cfg.circuits, ctx.cfg.seeds[0]
    model = str(resolve_model_path(ctx.cfg.circuits_model))
    d = ctx.store.dir("circuits") / fp
    d.mkdir(parents=True, exist_ok=True)
    dtype = ctx.dtype if ctx.dtype != "auto" else "float32"
    pairs, emos = c.get("pairs"), c.get("emotions")
    common: dict[str, Any] = {"pairs_path": pairs, "dtype": dtype, "seed": seed, "allow_pickle": ctx.allow_pickle}
    sel = {"emotions": emos, "max_pairs": c.get("max_pairs"), "min_score": c.get("min_score", 0.5)}
    notes: list[str] = []
    res: dict[str, Any] = {"model": model, "dir": str(d.relative_to(ctx.root)), "notes": notes, "evidence": {}}
    n_layers = json.loads((Path(model) / "config.json").read_text())["num_hidden_layers"] \
        if (Path(model) / "config.json").is_file() else None

    vec = _step(d, "vectors", notes, lambda o: api.vectors_run(model, o, min_score=sel["min_score"], **common),
                steps)
    if vec is None and notes and "min-score" in notes[-1] and sel["min_score"]:
        # tau left an emotion without pairs: keep every pair (a weaker vector beats no section), and say so
        notes.append(f"retried the circuits steps with min_score 0 (every pair kept) because "
                     f"min_score {sel['min_score']} left an emotion without pairs")
        sel["min_score"] = 0.0
        vec = _step(d, "vectors", notes, lambda o: api.vectors_run(model, o, min_score=0.0, **common), steps)
    if vec is not None:
        summ = json.loads((vec / "summary.json").read_text())
        n_layers = int(summ.get("num_layers") or n_layers or 0) or n_layers
        res["vectors"] = {"counts": summ.get("counts"), "totals": summ.get("totals")}
    lay = _step(d, "layers", notes, lambda o: api.layers_run(model, o, layers=c.get("layers"),
                                                             batch_size=int(c.get("batch_size", 16)),
                                                             **sel, **common), steps)
    if lay is not None:
        crit = json.loads((lay / "summary.json").read_text())["critical_layer"]
        res["layers"] = {"critical": crit, "n_layers": n_layers}
        per = {e: int(la) / max(int(n_layers or 1) - 1, 1) for e, la in crit.items() if e != "mean"}
        res["layers"]["relative_depth"] = per
        if per:
            ev = mean_evidence(list(per.values()), "emotions", seed, relative_depth=per, n_layers=n_layers)
            if "undefined" in ev:
                res.setdefault("unjudged", {})["circuits-layers.middle-peak"] = ev["undefined"]
            else:
                res["evidence"]["circuits-layers.middle-peak"] = ev
    heads = _step(d, "heads", notes, lambda o: api.heads_run(model, o, top_k=int(c.get("top_k", 10)),
                                                             **sel, **common), steps)
    if heads is not None:
        ov = [r for r in _rows(heads / "overlap.csv") if r.get("jaccard_pairwise") not in (None, "")]
        res["heads"] = {"overlap": [{"layer": int(r["layer"]), "jaccard": float(r["jaccard_pairwise"])} for r in ov]}
        xs, ys = [float(r["layer"]) for r in ov], [float(r["jaccard_pairwise"]) for r in ov]
        ev = spearman_evidence(xs, ys, "layers with top heads", seed, n_layers=n_layers)
        if "undefined" not in ev:
            res["evidence"]["circuits-heads.general-deeper"] = ev
        else:  # the report notes it with the claim
            res.setdefault("unjudged", {})["circuits-heads.general-deeper"] = (
                f"{len(ov)} layer(s) hold top heads: {ev['undefined']}")
    neurons = _step(d, "neurons", notes, lambda o: api.neurons_run(model, o, top_k=int(c.get("top_neurons", 50)),
                                                                   **sel, **common), steps)
    res["interventions"] = _interventions(ctx, d, model, heads, neurons, notes, c, common, seed, steps)
    res["evidence"].update(_intervention_evidence(ctx, res, seed))
    for cid, why in res.pop("_unjudged", {}).items():
        res.setdefault("unjudged", {})[cid] = why
    return res


def _intervention_evidence(ctx: Context, res: dict[str, Any], seed: int) -> dict[str, Any]:
    """The three intervention claims, paired per example: a change is after minus before (or targeted minus
    random); with both heads and neurons amplified, an example's value is the mean of its two changes, so
    the bootstrap resamples examples, not rows."""
    from ..circuits.hallucination import correct_flags, hallucination_flags

    per: dict[str, list[np.ndarray]] = defaultdict(list)
    for unit in ("heads", "neurons"):
        runs = res["interventions"].get(unit)
        if not runs:
            continue
        top, rnd = Path(ctx.abs(runs["top"])), Path(ctx.abs(runs["random"]))
        acc_a, acc_b = correct_flags(_predictions(top, "after")), correct_flags(_predictions(top, "before"))
        acc_r = correct_flags(_predictions(rnd, "after"))
        hal_a, hal_b = hallucination_flags(_predictions(top, "after")), hallucination_flags(_predictions(top, "before"))
        if not acc_a.size or len({x.size for x in (acc_a, acc_b, acc_r, hal_a, hal_b)}) != 1:
            continue
        for key, x in (("acc_a", acc_a), ("acc_b", acc_b), ("acc_r", acc_r), ("hal_a", hal_a), ("hal_b", hal_b)):
            per[key].append(np.asarray(x, dtype=float))
    if not per or len({x.size for xs in per.values() for x in xs}) != 1:
        return {}
    m = {k: np.mean(xs, axis=0) for k, xs in per.items()}  # per example, averaged over heads/neurons
    out: dict[str, Any] = {}
    checks: tuple[tuple[str, np.ndarray, dict[str, Any]], ...] = (("circuits-intervention.improves", m["acc_a"] - m["acc_b"],
               {"before": float(m["acc_b"].mean()), "after": float(m["acc_a"].mean())}),
              ("circuits-intervention.targeted-beats-random", m["acc_a"] - m["acc_r"], {}),
              ("circuits-intervention.less-hallucination", m["hal_a"] - m["hal_b"],
               {"before": float(m["hal_b"].mean()), "after": float(m["hal_a"].mean())}))
    for cid, diffs, extra in checks:
        ev = mean_evidence(list(diffs), "intervention examples", seed, units_amplified=len(per["acc_a"]), **extra)
        if "undefined" in ev:
            res.setdefault("_unjudged", {})[cid] = ev["undefined"]
        else:
            out[cid] = ev
    return out


def _intervene(model: str, tasks: list[str], kw: dict[str, Any]) -> Callable[[str], Any]:
    from ..circuits import api

    def go(out: str) -> Any:
        return api.intervene_run(model, out, tasks, **kw)

    return go


def _interventions(ctx: Context, d: Path, model: str, heads: Path | None, neurons: Path | None,
                   notes: list[str], c: dict[str, Any], common: dict[str, Any], seed: int,
                   steps: Steps | None = None) -> dict[str, Any]:
    """Amplify the top units and as many random ones: ``top_k`` heads, ``top_neurons`` neurons -- the
    numbers the attribution runs rank, so the count reported is the count amplified."""

    cfgj = json.loads((Path(model) / "config.json").read_text()) if (Path(model) / "config.json").is_file() else {}
    tasks = list(ctx.cfg.tasks)
    kw = {"limit": c.get("limit"), "batch_size": int(c.get("batch_size", 16)), "seed": seed,
          "pairs_path": common["pairs_path"], "dtype": common["dtype"], "allow_pickle": ctx.allow_pickle}
    out: dict[str, Any] = {}
    for unit, src, col, width_key, knob, key in (
            ("heads", heads, "head", "num_attention_heads", "amplify_heads", "top_k"),
            ("neurons", neurons, "neuron", "intermediate_size", "amplify_neurons", "top_neurons")):
        if src is None:
            notes.append(f"the {unit} interventions were skipped: no {unit} attribution")
            continue
        rows = _rows(src / f"{unit}.csv")
        k = int(c.get(key) or (10 if unit == "heads" else 50))
        top = top_units(rows, col, k)
        width = int(cfgj.get(width_key) or 0) or (max(u for _, u in top) + 1)
        rnd = random_units(top, sorted({la for la, _ in top}), width, seed)
        got: dict[str, Any] = {"top_units": spec_of(top), "random_units": spec_of(rnd),
                               "n_units": {"top": len(top), "random": len(rnd)}}
        notes.append(f"the {unit} interventions amplified the top {len(top)} {unit} (circuits.{key} = {k}) and "
                     f"{len(rnd)} random {unit} of the same layers")
        ok = True
        for side, units in (("top", top), ("random", rnd)):
            extra = {knob: spec_of(units), "top": len(units)}
            if unit == "heads":
                extra["beta"] = float(c.get("beta", 2.0))
            else:
                extra["gamma"] = float(c.get("gamma", 2.0))
            run = _step(d, f"intervene-{unit}-{side}", notes, _intervene(model, tasks, {**extra, **kw}), steps)
            if run is None:
                ok = False
                break
            got[side] = str(run.relative_to(ctx.root))
            r = json.loads((run / "results.json").read_text())
            got[f"{side}_results"] = {"tasks": {t: {**{m: r["tasks"][t][m] for m in ("accuracy", "hallucination")},
                                                    "n": r["tasks"][t].get("n")} for t in r["tasks"]},
                                      "perplexity": r.get("perplexity")}
        if ok:
            out[unit] = got
    return out


__all__ = ["random_units", "run_circuits", "spec_of", "top_units"]

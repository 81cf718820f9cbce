"""The study's statistics against independent implementations: Holm, the verdict rule with equivalence,
the paired hierarchical bootstrap against exact enumeration, calibration chosen on dev, power, and a
planted effect found (and a planted null judged equivalent) on constructed per-example predictions.

The independent implementations here are written differently from the code on purpose: Holm from its
definition (a max over the ordered prefix), p-values by counting in plain Python, the bootstrap
distribution by enumerating every resample with itertools, metrics with scikit-learn.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
from statistics import NormalDist

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score

from affectlens.study import bootstrap as B
from affectlens.study import verdicts as V
from affectlens.study.papers import CLAIMS, MIN_SEEDS
from affectlens.study.power import n_to_settle, powered, z_sum
from affectlens.study.scored import collect, predict, score_evidence

from conftest import TINYSTORIES
from faults import run_cli

# --- Holm ------------------------------------------------------------------------------------------------


def holm_by_definition(ps: list[float]) -> list[float]:
    """adj(p_i) = max over every p_j <= p_i (in Holm's order) of min(1, (m - rank_j) * p_j)."""
    m = len(ps)
    ranked = sorted(range(m), key=lambda i: (ps[i], i))
    rank = {i: r for r, i in enumerate(ranked)}
    return [max(min(1.0, (m - rank[j]) * ps[j]) for j in range(m) if rank[j] <= rank[i]) for i in range(m)]


@pytest.mark.parametrize("seed", range(6))
def test_holm_matches_its_definition(seed):
    rng = np.random.default_rng(seed)
    ps = [float(x) for x in rng.uniform(0, 0.2, size=int(rng.integers(1, 12)))]
    if len(ps) > 2:
        ps[1] = ps[0]  # ties
    assert V.holm(ps) == pytest.approx(holm_by_definition(ps))


def test_holm_textbook_example():
    # m = 4: sorted 0.01, 0.02, 0.03, 0.04 -> 0.04, 0.06, 0.06, 0.06 (monotone)
    assert V.holm([0.03, 0.01, 0.04, 0.02]) == pytest.approx([0.06, 0.04, 0.06, 0.06])


# --- the verdict rule ----------------------------------------------------------------------------------------


def p_by_counting(reps: list[float], claim) -> dict[str, float]:
    """The module doc's p-values, counted in plain Python."""
    b, t = len(reps), claim.threshold

    def le(x):
        return (1 + sum(1 for r in reps if r <= x)) / (b + 1)

    def ge(x):
        return (1 + sum(1 for r in reps if r >= x)) / (b + 1)

    if claim.upper is not None:
        return {"inside": max(le(t), ge(claim.upper)), "outside": min(1.0, 2 * min(ge(t), le(claim.upper)))}
    out = {"difference": min(1.0, 2 * min(le(t), ge(t))), "above": le(t), "below": ge(t)}
    if claim.margin is not None:
        out["equivalence"] = max(le(t - claim.margin), ge(t + claim.margin))
    return out


def verdict_by_hand(claim, p, adj, alpha=0.05):
    if claim.upper is not None:
        return "supported" if adj["inside"] < alpha else "contradicted" if adj["outside"] < alpha else "inconclusive"
    if adj.get("equivalence", 1.0) < alpha:
        return "equivalent"
    if adj["difference"] < alpha:
        return "supported" if (p["above"] < p["below"]) == (claim.direction == ">") else "contradicted"
    return "inconclusive"


def _reps(center: float, sd: float, seed: int = 0, b: int = 999) -> tuple[float, ...]:
    return tuple(float(x) for x in np.random.default_rng(seed).normal(center, sd, b))


def _ev(reps: tuple[float, ...]) -> V.Evidence:
    lo, hi = np.quantile(reps, [0.025, 0.975])
    return V.Evidence(float(np.mean(reps)), (float(lo), float(hi)), 30, {}, reps)


@pytest.mark.parametrize("cid,center,sd,expected", [
    ("necessity.gate-reset", 0.10, 0.02, "supported"),        # clear of 0 and of the 0.01 margin
    ("necessity.gate-reset", -0.10, 0.02, "contradicted"),
    ("necessity.gate-reset", 0.001, 0.002, "equivalent"),      # CI inside +/- 0.01
    ("necessity.gate-reset", 0.006, 0.0015, "equivalent"),     # significant, but too small to matter
    ("necessity.gate-reset", 0.01, 0.02, "inconclusive"),
    ("sufficiency.down-negative", -0.08, 0.02, "supported"),   # a '<' claim
    ("sufficiency.down-negative", 0.08, 0.02, "contradicted"),
    ("circuits-layers.middle-peak", 0.5, 0.05, "supported"),   # a band
    ("circuits-layers.middle-peak", 0.95, 0.02, "contradicted"),
    ("circuits-layers.middle-peak", 0.78, 0.05, "inconclusive"),
    ("sufficiency.fluency-kept", 0.0, 0.002, "supported"),     # non-inferiority: above -0.01
    ("sufficiency.fluency-kept", -0.05, 0.01, "contradicted"),
])
def test_verdict_rule_alone(cid, center, sd, expected):
    claim = CLAIMS[cid]
    ev = _ev(_reps(center, sd))
    p = p_by_counting(list(ev.replicates), claim)
    assert V.p_values(claim, ev) == pytest.approx(p)
    adj = dict(zip([k for k in V.TESTED if k in p], holm_by_definition([p[k] for k in V.TESTED if k in p]),
                   strict=True))
    assert verdict_by_hand(claim, p, adj) == expected
    assert V.verdict(claim, ev) == expected


def test_family_verdicts_match_an_independent_holm():
    """A family of 12 claims with random replicates: every adjusted p-value and verdict agrees with the
    hand-written counting + Holm-by-definition; and the Holm adjustment changes at least one verdict
    compared with judging each claim alone (the family-wise correction bites)."""
    rng = np.random.default_rng(3)
    ids = list(CLAIMS)[:12]
    evs = {cid: _ev(_reps(float(rng.normal(0, 0.02)) + CLAIMS[cid].threshold, 0.012, seed=i))
           for i, cid in enumerate(ids)}
    ids.append("necessity.gate-reset")  # two-sided p about 0.012: significant alone, not after Holm
    evs["necessity.gate-reset"] = _ev(_reps(0.03, 0.012, seed=50))
    rows = {r["id"]: r for r in V.claim_records(evs)}
    keys = [(c, k) for c in ids for k in V.TESTED if k in p_by_counting(list(evs[c].replicates), CLAIMS[c])]
    flat = [p_by_counting(list(evs[c].replicates), CLAIMS[c])[k] for c, k in keys]
    adj = dict(zip(keys, holm_by_definition(flat), strict=True))
    for c in ids:
        p = p_by_counting(list(evs[c].replicates), CLAIMS[c])
        mine = {k: adj[(c, k)] for k in V.TESTED if k in p}
        assert rows[c]["p_holm"] == pytest.approx(mine)
        assert rows[c]["verdict"] == verdict_by_hand(CLAIMS[c], p, mine)
    alone = {c: V.verdict(CLAIMS[c], evs[c]) for c in ids}
    assert alone["necessity.gate-reset"] == "supported" and rows["necessity.gate-reset"]["verdict"] == "inconclusive"
    assert [v for v, _ in V.checked_verdicts(list(rows.values()))] == [rows[c]["verdict"] for c in rows]


def test_stored_verdict_or_holm_that_does_not_follow_is_refused():
    from affectlens.errors import AffectlensError

    rows = V.claim_records({"necessity.gate-reset": _ev(_reps(0.1, 0.02)),
                            "efficiency.gate-lora": _ev(_reps(0.0, 0.05, 1))})
    bad = [dict(r) for r in rows]
    bad[0]["verdict"] = "contradicted"
    with pytest.raises(AffectlensError, match="does not follow"):
        V.checked_verdicts(bad)
    bad = [dict(r) for r in rows]
    bad[1] = {**bad[1], "p_holm": {k: v / 10 for k, v in bad[1]["p_holm"].items()}}
    with pytest.raises(AffectlensError, match="Holm-adjusted"):
        V.checked_verdicts(bad)


def test_holm_interval_excludes_the_threshold_exactly_when_the_adjusted_test_rejects():
    rng = np.random.default_rng(11)
    for i in range(20):
        ev = _ev(_reps(float(rng.normal(0.02, 0.02)), 0.01, seed=i))
        r = V.claim_records({"efficiency.gate-lora": ev, "necessity.gate-reset": _ev(_reps(0.0, 0.01, 99))})[0]
        lo, hi = r["ci_holm"]
        excludes = lo > 0 or hi < 0
        p = r["p_holm"]["difference"]
        if abs(p - 0.05) > 0.01:  # away from the replicates' granularity
            assert excludes == (p < 0.05), (r["ci_holm"], p)


# --- the paired hierarchical bootstrap vs exact enumeration --------------------------------------------------

GOLD = np.array([0, 1, 2])
PRED_A = np.array([[0, 1, 1], [0, 2, 2]])  # [seed, example]
PRED_B = np.array([[1, 1, 2], [0, 0, 0]])


@functools.cache
def _diff(seed: int, idx: tuple[int, ...], metric: str) -> float:
    """metric(a) - metric(b) of one seed on the examples ``idx`` (memoised: the enumeration repeats them)."""
    i = list(idx)
    return _metric_sklearn(GOLD[i], PRED_A[seed][i], metric) - _metric_sklearn(GOLD[i], PRED_B[seed][i], metric)


def _metric_sklearn(gold, pred, metric):
    if metric == "accuracy":
        return accuracy_score(gold, pred)
    return f1_score(gold, pred, average="weighted", zero_division=0)


def exact_distribution(metric: str, shared: bool) -> tuple[np.ndarray, np.ndarray]:
    """Every bootstrap resample of 2 seeds x 3 examples, each with its probability, enumerated."""
    k, n = PRED_A.shape
    seeds = list(itertools.product(range(k), repeat=k))
    units = list(itertools.product(range(n), repeat=n))
    vals, probs = [], []
    per_j = [units] if shared else [units] * k
    for s in seeds:
        for us in itertools.product(*per_j):
            draws = [us[0]] * k if shared else list(us)
            vals.append(sum(_diff(s[j], tuple(draws[j]), metric) for j in range(k)) / k)
            probs.append(1.0)
    p = np.asarray(probs)
    return np.asarray(vals), p / p.sum()


@pytest.mark.parametrize("metric", ["accuracy", "weighted_f1"])
@pytest.mark.parametrize("shared", [True, False])
def test_hierarchical_bootstrap_matches_exact_enumeration(metric, shared):
    """The Monte Carlo replicates' mean, variance and P(theta* <= 0) agree with the exact bootstrap
    distribution within 4 Monte Carlo standard errors, each derived from the exact distribution:
    sd/sqrt(B) for the mean, sqrt((mu4 - sigma^4) / B) for the variance, sqrt(p (1 - p) / B) for a tail."""
    vals, prob = exact_distribution(metric, shared)
    mu = float(prob @ vals)
    var = float(prob @ (vals - mu) ** 2)
    mu4 = float(prob @ (vals - mu) ** 4)
    tail = float(prob[vals <= 0].sum())
    tasks = [B.TaskPreds(GOLD, 3, metric, {"a": PRED_A, "b": PRED_B})]
    b = 20000
    reps = B.replicates(lambda d: (lambda s: s["a"] - s["b"])(B.scores(tasks, ["a", "b"], d)), 2, [3], b,
                        seed=7, shared=shared)
    assert reps.shape == (b,)
    assert abs(reps.mean() - mu) < 4 * math.sqrt(var / b)
    assert abs(reps.var() - var) < 4 * math.sqrt((mu4 - var ** 2) / b)
    assert abs((reps <= 0).mean() - tail) < 4 * math.sqrt(tail * (1 - tail) / b) + 1e-12
    # the point estimate is the statistic on the data itself
    point = B.scores(tasks, ["a", "b"], B.identity(2, [3]))
    direct = np.mean([_metric_sklearn(GOLD, PRED_A[s], metric) - _metric_sklearn(GOLD, PRED_B[s], metric)
                      for s in range(2)])
    assert float(point["a"][0] - point["b"][0]) == pytest.approx(direct)


def test_shared_examples_keep_the_test_set_error_nested_draws_average_it_away():
    """With k seeds that agree perfectly, the test-set error is all there is: a shared draw keeps its full
    variance, a nested one divides it by about k (why the study shares the example draw)."""
    rng = np.random.default_rng(0)
    gold = rng.integers(0, 2, 200)
    a = np.tile(rng.integers(0, 2, 200), (4, 1))
    t = [B.TaskPreds(gold, 2, "accuracy", {"a": a})]

    def stat(d):
        return B.scores(t, ["a"], d)["a"]

    shared = B.replicates(stat, 4, [200], 4000, 1, shared=True).var()
    nested = B.replicates(stat, 4, [200], 4000, 1, shared=False).var()
    assert shared / nested == pytest.approx(4, rel=0.2)


def test_paired_bootstrap_is_tighter_than_unpaired_for_correlated_variants():
    """Two variants that agree on most examples: pairing (same drawn examples for both) gives a narrower
    interval for their difference than drawing each variant's examples independently would."""
    rng = np.random.default_rng(2)
    gold = rng.integers(0, 2, 300)
    a = np.where(rng.random(300) < 0.7, gold, 1 - gold)[None, :].repeat(3, 0)
    b = np.where(rng.random((3, 300)) < 0.05, 1 - a, a)
    t = [B.TaskPreds(gold, 2, "accuracy", {"a": a, "b": b})]
    ev = B.summarise(lambda d: (lambda s: s["a"] - s["b"])(B.scores(t, ["a", "b"], d)), 3, [300], 2000, 0)
    sa, sb = (B.replicates(lambda d, v=v: B.scores(t, [v], d)[v], 3, [300], 2000, s) for v, s in (("a", 4), ("b", 5)))
    unpaired = np.quantile(sa - sb, [0.025, 0.975])
    assert ev["ci"][1] - ev["ci"][0] < 0.5 * (unpaired[1] - unpaired[0])


# --- a planted effect found at the stated power; a planted null judged equivalent ----------------------------


def stage_result(a: np.ndarray, b: np.ndarray, gold: np.ndarray) -> dict:
    """A scored stage's per-example block holding variants 'a' and 'b' (no calibration: chosen == raw)."""
    preds = {v: {"t": {"chosen": x.tolist(), "raw": x.tolist()}} for v, x in (("a", a), ("b", b))}
    return {"tasks": ["t"], "per_example": {"tasks": {"t": {"labels": ["x", "y"], "gold": gold.tolist(),
                                                            "metric": "accuracy"}}, "preds": preds}}


def planted(delta: float, n: int, k: int, rng: np.random.Generator) -> dict:
    """Variant a correct with p = 0.5 + delta/2, b with 0.5 - delta/2, independently per seed and example."""
    gold = rng.integers(0, 2, n)
    ok_a = rng.random((k, n)) < 0.5 + delta / 2
    ok_b = rng.random((k, n)) < 0.5 - delta / 2
    return stage_result(np.where(ok_a, gold, 1 - gold), np.where(ok_b, gold, 1 - gold), gold)


def judged(res: dict, b: int = 1000) -> dict:
    ev = score_evidence(res, ["a", "b"], lambda s: s["a"] - s["b"], b=b)
    return V.claim_records({"necessity.gate-reset": V.Evidence(ev["value"], tuple(ev["ci"]), ev["n"], {},
                                                               tuple(ev["replicates"]))})[0]


def test_planted_effect_is_found_at_the_stated_power():
    """The planning MDE for n examples (power.before's SE bound, Holm over this claim's 2 tests) is the
    effect the design claims to detect 80 % of the time: planting exactly it, about 80 % of 40 simulated
    studies say supported (binomial sd 0.063: at least 0.6 required); planting nothing, at most a few do."""
    n, k = 400, 3
    mde = z_sum(2) * math.sqrt(0.5 / n)
    rng = np.random.default_rng(12)
    hits = [judged(planted(mde, n, k, rng), 600)["verdict"] == "supported" for _ in range(40)]
    nulls = [judged(planted(0.0, n, k, rng), 600)["verdict"] in ("supported", "contradicted") for _ in range(40)]
    assert np.mean(hits) >= 0.6, np.mean(hits)
    assert np.mean(nulls) <= 0.1, np.mean(nulls)
    big = judged(planted(0.3, n, k, rng))
    assert big["verdict"] == "supported" and big["ours"] == pytest.approx(0.3, abs=0.08)


def test_planted_null_comes_out_equivalent():
    """b is a with 1 % of its predictions flipped at random (no effect, 3 seeds x 4000 examples): the CI
    lies inside the claim's 1-point margin, so the null is decided -- equivalent, raw verdict too."""
    rng = np.random.default_rng(5)
    gold = rng.integers(0, 2, 4000)
    a = np.where(rng.random((3, 4000)) < 0.7, gold, 1 - gold)
    b = np.where(rng.random((3, 4000)) < 0.01, 1 - a, a)
    row = judged(stage_result(a, b, gold))
    assert row["verdict"] == "equivalent" and row["raw_verdict"] == "equivalent"
    assert -0.01 < row["ci"][0] < row["ci"][1] < 0.01


def test_no_variation_is_not_certainty_rule_of_three():
    """Identical predictions everywhere: the bootstrap has no spread, and the interval is +/- 3/n (the rule
    of three), not a point -- 14 examples cannot show equivalence within 1 point."""
    gold = np.arange(14) % 2
    same = np.tile(gold, (3, 1))
    ev = score_evidence(stage_result(same, same, gold), ["a", "b"], lambda s: s["a"] - s["b"])
    assert ev["ci"] == pytest.approx([-3 / 14, 3 / 14]) and ev["replicates"] is None
    row = V.claim_record("necessity.gate-reset", V.Evidence(ev["value"], tuple(ev["ci"]), ev["n"]))
    assert row["verdict"] == "inconclusive"


# --- power: n to settle in named units, powered ----------------------------------------------------------------


def test_n_to_settle_names_its_units_and_is_capped_by_the_data():
    claim = CLAIMS["efficiency.gate-lora"]
    design = {"seeds": 3, "units": [140], "unit": "examples"}
    z = z_sum(2)
    # all variance from examples: more examples settle it -- unless the task has no more
    need = n_to_settle(claim, 0.05, {"seeds": 0.0, "units": (0.05 / z) ** 2 * 4}, design, 5000, 2)
    assert need["units"] == pytest.approx(560, abs=2) and need["unit"] == "examples" and "560 examples" in need["text"]
    capped = n_to_settle(claim, 0.05, {"seeds": 0.0, "units": (0.05 / z) ** 2 * 4}, design, 200, 2)
    assert capped["text"].startswith("cannot be settled with this data") and "200" in capped["text"]
    # all variance from seeds: more seeds, whatever the examples
    seeds = n_to_settle(claim, 0.05, {"seeds": (0.05 / z) ** 2 * 3, "units": 0.0}, design, 140, 2)
    assert seeds["seeds"] == 9 and "seeds" in seeds["text"]
    # a layer-level claim on a model whose every layer is already used
    lead = n_to_settle(CLAIMS["locate.gate-largest"], 0.3, {"seeds": 0.0, "units": 1.0},
                       {"seeds": 3, "units": [30], "unit": "layers"}, 30, 2)
    assert lead["text"].startswith("cannot be settled with this data")


def test_powered_needs_seeds_and_a_detectable_paper_effect():
    ok, why = powered(1, [], [])
    assert not ok and any("1 seed" in w for w in why) and any("no claim was judged" in w for w in why)
    row = {"id": "sufficiency.gate-transfer", "power": {"after": {"mde": 0.2, "paper_effect": 0.1027,
                                                                  "detects_paper_effect": False}}}
    ok, why = powered(MIN_SEEDS, [row], [])
    assert not ok and "sufficiency.gate-transfer" in why[0]
    row["power"]["after"].update(mde=0.05, detects_paper_effect=True)
    assert powered(MIN_SEEDS, [row], []) == (True, [])
    assert powered(MIN_SEEDS, [row], [{"id": "x", "reason": "r", "design": "layers"}])[0] is False


def test_half_effect_power_is_judged_against_half_the_papers_number():
    from affectlens.study.power import half_effect

    def row(cid: str, mde: float) -> dict:
        eff = abs(CLAIMS[cid].paper_value - CLAIMS[cid].threshold)
        return {"id": cid, "power": {"after": {"mde": mde, "paper_effect": eff}}}

    eff = 0.1402  # Table 1's +14.02 points, as a fraction
    rows = [row("sufficiency.gate-over-attention", eff / 2 - 1e-6), row("sufficiency.gate-transfer", 0.06),
            row("circuits-intervention.improves", 0.001),  # paper B: not a gate_proj-study claim
            {"id": "efficiency.gate-lora", "power": {"after": {"mde": 0.01, "paper_effect": None}}}]  # no number
    got = half_effect(rows)
    assert set(got["claims"]) == {"sufficiency.gate-over-attention", "sufficiency.gate-transfer"}
    assert got["claims"]["sufficiency.gate-over-attention"]["powered"] is True
    assert got["claims"]["sufficiency.gate-transfer"] == {"mde": 0.06, "half_paper_effect": 0.1027 / 2,
                                                         "powered": False}  # 0.06 > 0.05135
    assert got["all"] is False
    assert half_effect(rows[:1])["all"] is True and half_effect([])["all"] is False


def test_standard_profile_is_the_powered_design():
    """3 seeds, 500 scored rows, the modules every gate_proj claim compares, the dev sample per label."""
    from affectlens.study.config import load_study_config
    from affectlens.study.stages_grid import _group

    cfg = load_study_config(None, profile="standard")
    assert len(cfg.seeds) >= MIN_SEEDS and cfg.eval["limit"] >= 500 and cfg.eval["dev_per_class"] == 20
    assert {"gate_proj", "up_proj", "down_proj"} <= set(cfg.single)
    for sel in ("attn", "attn,gate_proj", "attn,up_proj", "attn,down_proj", "o_proj,gate_proj"):
        assert _group(cfg, sel) is not None, sel
    # a file's own profiles.standard entry still wins over the built-in overlay
    own = load_study_config({"profiles": {"standard": {"eval": {"limit": 20}}}}, profile="standard")
    assert own.eval["limit"] == 20 and own.seeds == cfg.seeds


def test_dev_rows_per_label_are_capped_by_dev_per_class(tmp_path):
    from affectlens.study.scored import dev_task
    from affectlens.tasks.loaders import load_task

    d = tmp_path / "set"
    d.mkdir()
    for split, n in (("train", 4), ("validation", 50), ("test", 4)):
        rows = [{"text": f"{split} row {i}", "label": ("a", "b")[i % 2]} for i in range(n)]
        (d / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    full, capped = dev_task(f"jsonl:{d},split=test"), dev_task(f"jsonl:{d},split=test", 7)
    assert len(load_task(full).examples) == 50
    got = load_task(capped).examples
    assert sorted(e.label for e in got) == ["a"] * 7 + ["b"] * 7
    assert {e.text for e in got} <= {f"validation row {i}" for i in range(50)}


def test_planning_mde_formula():
    from affectlens.study.power import before

    got = before({"efficiency.gate-lora": CLAIMS["efficiency.gate-lora"]}, 140, 1, 0, 40)["efficiency.gate-lora"]
    nd = NormalDist()
    assert got["mde"] == pytest.approx((nd.inv_cdf(1 - 0.05 / 80) + nd.inv_cdf(0.8)) * math.sqrt(0.5 / 140))


# --- calibration chosen on dev, applied on test --------------------------------------------------------------


def test_post_hoc_calibration_matches_evaluate(tmp_path):
    """The grid keeps each example's raw label log-likelihoods and the contextual references; from them the
    study re-derives none, contextual and pmi predictions that equal evaluate()'s own for each mode."""
    from affectlens.evaluate import evaluate
    from affectlens.grid.results import per_example
    from affectlens.models.loading import load_model

    model, tok = load_model(TINYSTORIES)
    kw = {"limit": 20, "batch_size": 8, "progress": False, "n_boot": 0}
    ctx = evaluate(model, tok, ["emotion"], calibration="contextual", **kw)
    ex = per_example(ctx.predictions, "emotion", ctx.scores["tasks"]["emotion"])
    assert ex is not None and set(ex["reference"]) == {"N/A", "", "[MASK]"}
    for mode in ("none", "contextual", "pmi"):
        direct = evaluate(model, tok, ["emotion"], calibration=mode, **kw)
        want = [ex["labels"].index(r["pred"]) for r in direct.predictions]
        assert predict(ex, mode).tolist() == want, mode
        entry = direct.scores["tasks"]["emotion"]
        codes = np.asarray(ex["gold"]) * len(ex["labels"]) + predict(ex, mode)
        got = B.metric_of(B.confusions(codes[None, :], len(ex["labels"])), entry["primary_metric"])[0]
        assert got == pytest.approx(entry["primary"]), mode


def _ex(ll: list[list[float]], gold: list[int], ref: dict | None = None) -> dict:
    return {"labels": ["a", "b"], "gold": gold, "loglik": ll, "metric": "accuracy", **({"reference": ref} if ref else {})}


def test_calibration_is_chosen_per_model_on_dev_and_applied_on_test():
    """Model x: its raw scores always say 'a' though dev's gold is mixed; pmi removes the prior and wins on
    dev, so x is scored with pmi on test. Model y is right raw; calibrating would hurt it, so it keeps none.
    The raw predictions are kept beside the chosen ones."""
    # pmi removes the empty input's prior (label b 3 nats down); contextual averages it with two flat ones
    ref = {"N/A": [0.0, 0.0], "": [0.0, -3.0], "[MASK]": [0.0, 0.0]}
    dev_x = _ex([[0.0, -2.0], [0.0, -4.0], [0.0, -2.0], [0.0, -4.0]], [1, 0, 1, 0], ref)
    test_x = _ex([[0.0, -2.5], [0.0, -3.5]], [1, 0], ref)
    dev_y = _ex([[-1.0, 0.0], [0.0, -2.0], [-1.0, 0.0], [0.0, -2.0]], [1, 0, 1, 0], ref)
    test_y = _ex([[-1.0, 0.0], [0.0, -2.0]], [1, 0], ref)
    cells = {0: {"x": {"t": test_x, "t@dev": dev_x}, "y": {"t": test_y, "t@dev": dev_y}}}
    block = collect(cells, ["t"], {"t": "t@dev"}, "auto")
    assert block["choice"] == {"x": {"0": "pmi"}, "y": {"0": "none"}}
    assert block["preds"]["x"]["t"] == {"chosen": [[1, 0]], "raw": [[0, 0]]}
    assert block["preds"]["y"]["t"] == {"chosen": [[1, 0]], "raw": [[1, 0]]}
    assert block["dev_scores"]["x"]["0"] == {"none": 0.5, "contextual": 0.5, "pmi": 1.0}
    assert block["dev_scores"]["y"]["0"] == {"none": 1.0, "contextual": 1.0, "pmi": 0.5}
    nodev = collect(cells, ["t"], {}, "auto")
    assert nodev["choice"] == {"x": {"0": "none"}, "y": {"0": "none"}} and "no affective task has a dev" in nodev["why"]
    forced = collect(cells, ["t"], {}, "contextual")
    assert forced["choice"]["y"] == {"0": "contextual"} and "as the config names it" in forced["why"]


def test_dev_split_of_tasks(tmp_path):
    from affectlens.study.scored import dev_task

    assert dev_task("emotion") is None  # the bundled set has no dev split
    d = tmp_path / "meld"
    d.mkdir()
    for split in ("train", "dev", "test"):
        (d / f"{split}_sent_emo.csv").write_text("Utterance,Emotion\nhi,joy\n", encoding="utf-8")
    got = dev_task(f"meld:{d}")
    assert got is not None and "dev" in got


# --- the done criterion: a one-seed quick study on the tiny model decides nothing trained ---------------------


def test_one_seed_quick_tiny_study_is_an_honest_smoke_test(tmp_path, capfd):
    out = tmp_path / "q"
    rc, stdout, err = run_cli(capfd, "study", "--profile", "quick", "--model", TINYSTORIES, "--out", out)
    assert rc == 0, err
    study = json.loads((out / "study.json").read_text())
    assert study["powered"] is False and any("1 seed" in w for w in study["powered_reasons"])
    assert study["smoke_test"] and any("one seed" in r for r in study["smoke_test_reasons"])
    assert any("text-only" in r for r in study["scope_limits"])  # a limit of scope, not a smoke reason
    assert not any("text-only" in r for r in study["smoke_test_reasons"])
    assert any("< 500 per task" in r for r in study["smoke_test_reasons"])
    assert any("synthetic" in r for r in study["smoke_test_reasons"])  # the bundled affective data
    assert not [c["id"] for c in study["claims"] if CLAIMS[c["id"]].training]
    rows = study["claims"] + study["not_judged"]
    assert {r["id"] for r in rows} == set(CLAIMS)
    assert sum(r.get("paper_value") is not None for r in rows) >= 8
    assert all(c.get("raw_verdict") in V.VERDICTS for c in study["claims"])
    for r in study["not_judged"]:
        if CLAIMS[r["id"]].training:
            assert r["reason"].startswith("needs >= 3 seeds")
    assert study["family"]["method"] == "Holm"
    md = (out / "report.md").read_text()
    assert md.index("SMOKE TEST") < md.index("## Verdicts") and "raw verdict" in md
    assert "SMOKE TEST, not a result" in stdout


def test_smoke_reasons_and_scope_limits_split_by_what_they_mean():
    """A design too small to be evidence is a smoke test; a well-designed run on a stand-in model, with a
    synthetic control and short budgets, is a result with stated limits of scope."""
    from affectlens.study.config import load_study_config
    from affectlens.study.honesty import scope_limits, smoke_test_reasons

    real = {"data": "jsonl:/x/train.jsonl", "tasks": ["emotion"], "control_tasks": ["control_eval"],
            "eval": {"limit": 600}}
    cfg = load_study_config({**real, "budget": {"steps": 16}, "full_budget": {"steps": 4}})
    smoke = smoke_test_reasons(cfg, True)
    # only the bundled affective test set (140 rows, synthetic) makes this a smoke test
    assert smoke and all("emotion" in r for r in smoke), smoke
    scope = scope_limits(cfg, TINYSTORIES, TINYSTORIES, True)
    text = " | ".join(scope)
    for part in ("text-only", "stand-in", "16 optimizer steps", "full fine-tune of 4", "control task(s) control_eval",
                 "synthetic contrast pairs", "circuits interventions score 70"):
        assert part in text, part
    tiny = load_study_config({**real, "profiles": {"quick": {"budget": {"steps": 9}, "full_budget": {"steps": 1}}}},
                             profile="quick")
    smoke = " | ".join(smoke_test_reasons(tiny, True))
    for part in ("quick profile", "one seed", "9 optimizer steps (< 10)", "full fine-tune of 1", "< 500 per task"):
        assert part in smoke, part
    assert not any("optimizer steps x" in r for r in scope_limits(tiny, TINYSTORIES, None, True))


def test_an_all_module_lora_that_learned_nothing_makes_a_smoke_test():
    from affectlens.study.honesty import learned_nothing

    pts = [{"variant": "all-module", "mean": 0.30}, {"variant": "gate_proj", "mean": 0.5}]
    assert learned_nothing({"points": pts, "yardstick": 0.29}) is None
    why = learned_nothing({"points": pts, "yardstick": 0.30})  # not above: equal learns nothing
    assert why is not None and "0.3000" in why and "learned nothing" in why
    assert learned_nothing(None) is None and learned_nothing({"points": [], "yardstick": 0.1}) is None


# --- locate: seeds x layers; cross-architecture pooling; degenerate designs -------------------------------------


def _layers(gate: float, other: float, n_layers: int, rng: np.random.Generator) -> dict[int, dict[str, float]]:
    mods = ("q_proj", "k_proj", "o_proj", "gate_proj", "up_proj")
    return {la: {m: (gate if m == "gate_proj" else other) * float(rng.uniform(0.8, 1.2)) for m in mods}
            for la in range(n_layers)}


def test_locate_lead_is_gates_margin_over_the_runner_up_per_seed():
    """gate_proj planted at 1.5x the other modules on 6 layers x 3 seeds: the lead (gate / runner-up - 1,
    module means over layers, mean over seeds) equals the hand computation and clears the 10 % margin;
    a planted tie comes out equivalent to no lead."""
    from affectlens.study.stages_tune import lead_evidence

    rng = np.random.default_rng(0)
    seeds = [_layers(1.5, 1.0, 6, rng) for _ in range(3)]
    ev = lead_evidence(seeds)
    by_hand = []
    for d in seeds:
        means = {m: sum(d[la][m] for la in d) / len(d) for m in d[0]}
        by_hand.append(means["gate_proj"] / max(v for m, v in means.items() if m != "gate_proj") - 1)
    assert ev["value"] == pytest.approx(sum(by_hand) / 3)
    assert ev["design"] == {**ev["design"], "seeds": 3, "units": [6], "unit": "layers"}
    row = V.claim_record("locate.gate-largest", V.Evidence(ev["value"], tuple(ev["ci"]), ev["n"], {},
                                                           tuple(ev["replicates"])))
    assert row["verdict"] == "supported"
    tie = lead_evidence([{la: {m: 1.0 + 0.001 * ((la + len(m)) % 3) for m in ("gate_proj", "up_proj", "o_proj")}
                          for la in range(8)} for _ in range(3)])
    row = V.claim_record("locate.gate-largest", V.Evidence(tie["value"], tuple(tie["ci"]), tie["n"], {},
                                                           tuple(tie["replicates"])))
    assert row["verdict"] == "equivalent"


def test_cross_architecture_pools_the_bases():
    from affectlens.study.judging import pool
    from affectlens.study.stages_tune import lead_evidence

    rng = np.random.default_rng(1)
    a = lead_evidence([_layers(2.0, 1.0, 5, rng) for _ in range(3)])
    b = lead_evidence([_layers(1.4, 1.0, 7, rng) for _ in range(3)], seed=1)
    got = pool([a, b])
    assert got["value"] == pytest.approx((a["value"] + b["value"]) / 2)
    m = min(len(a["replicates"]), len(b["replicates"]))
    assert got["replicates"][:5] == pytest.approx([(x + y) / 2 for x, y in zip(a["replicates"][:m],
                                                                                b["replicates"][:m], strict=True)][:5])
    assert got["design"]["units"] == [5] and got["detail"]["bases"] == 2


@pytest.mark.parametrize("cid,ev,seeds,text_only,n_layers,kind", [
    ("locate.gate-largest", {}, 1, False, 30, "seeds"),
    ("circuits-layers.middle-peak", {}, 3, True, 30, "images"),
    ("circuits-layers.middle-peak", {"detail": {"n_layers": 2}}, 3, False, 2, "layers"),
    ("circuits-intervention.improves", {"design": {"units": [4], "unit": "intervention examples"}}, 1, True, 2,
     "units"),
    ("locate.gate-largest", {"design": {"units": [2], "unit": "layers"}}, 3, False, 2, "units"),
])
def test_degenerate_designs_are_not_judged(cid, ev, seeds, text_only, n_layers, kind):
    from affectlens.study.honesty import design_problem

    hit = design_problem(CLAIMS[cid], ev, seeds, text_only, n_layers)
    assert hit is not None and hit[0] == kind and hit[1]
    assert design_problem(CLAIMS[cid], {"design": {"units": [40], "unit": "x"}}, 3, False, 30) is None


def test_grid_cell_keeps_per_example_records():
    """The grid's additive field: a cell's per-example record survives its JSON round trip, and a generative
    evaluator's rows (no log-likelihoods) leave it None."""
    from affectlens.grid.results import Cell, TaskResult, per_example

    rows = [{"task": "t", "gold": "b", "loglik": {"a": -1.0, "b": -0.5}},
            {"task": "t", "gold": "a", "loglik": {"a": -0.2, "b": -0.9}}, {"task": "u", "gold": "a"}]
    entry = {"primary": 1.0, "primary_metric": "accuracy",
             "reference_loglik": {"": {"a": -1.0, "b": -2.0}}}
    ex = per_example(rows, "t", entry)
    assert ex == {"labels": ["a", "b"], "gold": [1, 0], "loglik": [[-1.0, -0.5], [-0.2, -0.9]], "metric": "accuracy",
                  "reference": {"": [-1.0, -2.0]}}
    assert per_example(rows, "u", entry) is None
    cell = Cell("v", "tune", 0, "h", None, {"t": TaskResult(1.0, {}, 2, "emotion", "t", ex)}, 1.0)
    assert Cell.from_json(json.loads(json.dumps(cell.to_json()))).tasks["t"].examples == ex
    old = cell.to_json()
    del old["tasks"]["t"]["examples"]  # a cell written before the field
    assert Cell.from_json(old).tasks["t"].examples is None


def test_report_banner_names_every_smoke_test_reason(tmp_path):
    from affectlens.runs import RunDir
    from affectlens.study.report import write_report

    study = {"claims": [], "sections": {}, "smoke_test": True, "powered": False,
             "smoke_test_reasons": ["one seed", "task emotion: 14 test examples (< 500 per task) <b>"],
             "powered_reasons": ["1 seed: training-dependent claims need >= 3"]}
    with RunDir(tmp_path / "r", command="study") as run:
        write_report(run, study)
    page, md = (tmp_path / "r" / "report.html").read_text(), (tmp_path / "r" / "report.md").read_text()
    banner = page[page.index('id="smoke-test"'):page.index('id="verdicts"')]
    assert "SMOKE TEST" in banner and "<li>one seed</li>" in banner and "&lt;b&gt;" in banner
    assert "Not powered" in banner and "need &gt;= 3" in banner
    assert md.startswith("# affectlens study report\n\n> **SMOKE TEST") and "> - one seed" in md


def test_cells_from_before_per_example_records_are_rescored(tmp_path):
    from affectlens.study.stages_grid import _drop_cells_without_examples

    cells = tmp_path / "cells"
    cells.mkdir()
    (cells / "old.json").write_text(json.dumps({"tasks": {"emotion": {"primary": 0.5}}}))
    (cells / "none.json").write_text(json.dumps({"tasks": {"emotion": {"primary": 0.5, "examples": None}}}))
    _drop_cells_without_examples(tmp_path)
    assert sorted(f.name for f in cells.iterdir()) == ["none.json"]

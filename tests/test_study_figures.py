"""The study's figures as a reviewer reads them: CIs drawn, every line labelled, every run shown, both
locate equations, and no two texts printed over each other (measured on the drawn figure)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from matplotlib.container import ErrorbarContainer

from affectlens import plots


def text_overlaps(fig) -> list[tuple[str, str]]:
    """Pairs of drawn texts whose rendered boxes intersect (written here, independent of plots.layout).

    Tick labels count only inside their axis' view: a locator also makes ticks outside it, never drawn."""
    from matplotlib.text import Text

    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ticks, shown = set(), []
    for ax in fig.axes:
        for axis, lim in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
            lo, hi = sorted(lim)
            for t in axis.get_major_ticks() + axis.get_minor_ticks():
                for lab in (t.label1, t.label2):
                    ticks.add(id(lab))
                    if lab.get_visible() and lab.get_text() and lo <= t.get_loc() <= hi:
                        shown.append(lab)
    shown += [t for t in fig.findobj(Text) if id(t) not in ticks and t.get_visible() and t.get_text().strip()]
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in shown]
    return [(a, b) for i, (a, ba) in enumerate(boxes) for b, bb in boxes[i + 1:]
            if min(ba.x1, bb.x1) > max(ba.x0, bb.x0) and min(ba.y1, bb.y1) > max(ba.y0, bb.y0)]


def legend_texts(fig) -> list[str]:
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None] + list(fig.legends)
    return [t.get_text() for lg in legends for t in lg.get_texts()]


def yerr_of(container: ErrorbarContainer) -> list[tuple[float, float]]:
    """(low, high) of each vertical error bar, read from the drawn line segments."""
    (segments,) = container.lines[2]
    return [(float(s[0][1]), float(s[1][1])) for s in segments.get_segments()]


# --- the frontier ------------------------------------------------------------------------------------------


def test_frontier_has_error_bars_bands_and_a_legend_for_every_line():
    pts = [{"variant": m, "kind": "tune", "params": 2048, "mean": 0.40 + 0.01 * i, "ci95": (0.30 + 0.01 * i, 0.50)}
           for i, m in enumerate(("gate_proj", "up_proj", "down_proj"))]
    pts.append({"variant": "all-module", "kind": "reference", "params": 9728, "mean": 0.6, "ci95": 0.05})
    fig = plots.frontier(pts, ["down_proj", "all-module"], {"untuned base": (0.2, (0.15, 0.25)),
                                                             "majority class": 0.3}, "all-module", "GET")
    ax = fig.axes[0]
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 4 and all(c.has_yerr for c in bars)
    by_x = {round(float(c.lines[0].get_xdata()[0])): yerr_of(c)[0] for c in bars}
    assert by_x[9728] == pytest.approx((55.0, 65.0))  # a half-width, x100
    spans = sorted(yerr_of(c)[0] for c in bars if round(float(c.lines[0].get_xdata()[0])) == 2048)
    assert np.allclose(spans, [(30.0, 50.0), (31.0, 50.0), (32.0, 50.0)])  # given as (low, high), x100
    names = legend_texts(fig)
    assert "Pareto front" in names and "targeted LoRA ± 95 % CI" in names
    assert "all-module (reference) ± 95 % CI" in names
    assert "untuned base (20.0, band: 95 % CI)" in names and "majority class (30.0)" in names
    assert len(ax.patches) == 1  # the base's CI band
    # Three modules of one size: their labels are stacked, not printed over each other.
    assert not text_overlaps(fig)


# --- every intervention run --------------------------------------------------------------------------------


def test_wilson_interval_matches_scipy():
    from scipy.stats import binomtest

    from affectlens.study.figures import wilson

    for k, n in ((2, 14), (0, 7), (7, 7), (30, 70)):
        ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert wilson(k / n, n) == pytest.approx((ci.low, ci.high), abs=1e-9)


def intervention_rows():
    from affectlens.study.figures import wilson

    rows = []
    for run, (acc_b, acc_a) in (("heads, top 8", (0.286, 0.286)), ("heads, random 8", (0.286, 0.286)),
                                ("neurons, top 20", (0.286, 0.143)), ("neurons, random 20", (0.286, 0.286))):
        for metric, (b, a) in (("accuracy", (acc_b, acc_a)), ("hallucination", (0.5, 0.5))):
            rows.append({"run": run, "task": "emotion", "metric": metric, "before": b, "after": a, "n": 14,
                         "before_ci": wilson(b, 14), "after_ci": wilson(a, 14)})
    return rows


def test_intervention_figure_shows_every_run_before_and_after_with_cis():
    from affectlens.study.figures import wilson

    rows = intervention_rows()
    fig = plots.intervention_runs(rows, "interventions")
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["accuracy", "hallucination"]
    acc = panels[0]
    assert [t.get_text().replace("\n", " ") for t in acc.get_xticklabels()] == [
        "heads, top 8", "heads, random 8", "neurons, top 20", "neurons, random 20"]
    before, after = [c for c in acc.containers if isinstance(c, ErrorbarContainer)]
    heights = [[p.get_height() for p in c] for c in acc.containers if not isinstance(c, ErrorbarContainer)]
    assert heights == [pytest.approx([0.286] * 4), pytest.approx([0.286, 0.286, 0.143, 0.286])]
    assert yerr_of(after)[2] == pytest.approx(wilson(0.143, 14))  # the neurons' real effect, with its CI
    assert yerr_of(before)[0] == pytest.approx(wilson(0.286, 14))
    assert legend_texts(fig) == ["before amplification", "after amplification"]
    assert "-0.143" in {t.get_text() for t in acc.texts}  # the change written above its pair
    assert not text_overlaps(fig)


def test_intervention_rows_read_every_run_and_its_n(tmp_path):
    """The study's rows: heads and neurons, top and random; n from the stage result, else the run's JSON."""
    import json
    from types import SimpleNamespace

    from affectlens.study.figures import intervention_rows as rows_of

    run = tmp_path / "stages" / "c" / "intervene-heads-random"
    run.mkdir(parents=True)
    (run / "results.json").write_text(json.dumps({"tasks": {"emotion": {"n": 7}}}))

    def res(b, a, n=None):
        m = {"accuracy": {"before": b, "after": a}, "hallucination": {"before": 0.5, "after": 0.25}}
        return {"tasks": {"emotion": {**m, **({"n": n} if n else {})}}}

    got = {"heads": {"top_units": "0.1,1.2", "random_units": "0.3,1.0", "top": "x", "random": "stages/c/"
                     "intervene-heads-random", "top_results": res(0.5, 0.5, 14), "random_results": res(0.5, 0.5)},
           "neurons": {"n_units": {"top": 20, "random": 20}, "top_results": res(2 / 7, 1 / 7, 14),
                       "random_results": res(2 / 7, 2 / 7, 14)}}
    rows = rows_of(SimpleNamespace(root=tmp_path), got)
    assert [(r["run"], r["metric"]) for r in rows][::2] == [("heads, top 2", "accuracy"), ("heads, random 2", "accuracy"),
                                                            ("neurons, top 20", "accuracy"),
                                                            ("neurons, random 20", "accuracy")]
    assert [r["n"] for r in rows][::2] == [14, 7, 14, 14]
    nt = rows[4]
    assert (nt["before"], nt["after"]) == pytest.approx((2 / 7, 1 / 7))
    lo, hi = nt["after_ci"]
    assert lo < 1 / 7 < hi and hi - lo > 0.2  # 14 examples: a wide interval, drawn as such


# --- locate: Eq. 1 beside Eq. 2, and titles that fit ----------------------------------------------------


def panels(scale: float, labels: list[str]):
    g = np.arange(14, dtype=float).reshape(2, 7) * scale
    mods = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    return [(lab, g + i, mods, [0, 1]) for i, lab in enumerate(labels)]


def test_locate_figure_shows_eq1_and_eq2_each_on_its_own_scale():
    labs = ["emotion-s0", "control-s0", "full-s0"]
    fig = plots.locate_heatmaps([("l2", panels(10.0, labs)), ("relative", panels(0.01, labs))])
    assert len([ax for ax in fig.axes if ax.get_images()]) == 6
    assert plots.image_limits(fig, "l2") == [(0.0, 132.0)] * 3  # max over the row: 13 * 10 + 2
    assert plots.image_limits(fig, "relative") == [(0.0, pytest.approx(2.13))] * 3
    cbar = [ax.get_ylabel() for ax in fig.axes if not ax.get_images() and ax.get_ylabel() != "layer"]
    assert any("Eq. 1" in c for c in cbar) and any("Eq. 2" in c for c in cbar)
    heads = {t.get_text() for t in fig.texts}
    assert any(h.startswith("Eq. 1") for h in heads) and any(h.startswith("Eq. 2") for h in heads)
    assert not text_overlaps(fig)


def test_heatmap_panel_titles_do_not_run_together():
    """Several bases name their panels "<base>: <adapter>"; side by side the titles used to overlap."""
    labs = [f"{b}: {k}-s0" for b in ("SmolLM2-135M-Instruct", "stories260k") for k in ("emotion", "control", "full")]
    fig = plots.locate_heatmap(panels(1.0, labs), "relative")
    titles = [ax.get_title() for ax in fig.axes if ax.get_images()]
    assert [t.replace("\n", " ") for t in titles] == labs
    assert not text_overlaps(fig)


# --- the forest's ticks ----------------------------------------------------------------------------------


def test_forest_tick_labels_stay_apart_whatever_the_values():
    ids = ["locate.gate-largest", "locate.emotion-specific", "sufficiency.gate-transfer", "efficiency.gate-lora",
           "frontier.get-share", "necessity.gate-reset", "circuits-layers.middle-peak",
           "circuits-heads.general-deeper", "circuits-intervention.targeted-beats-random",
           "circuits-intervention.less-hallucination", "circuits-intervention.improves-accuracy-by-a-long-name"]
    vals = [(-0.1, (-0.1, 0.1), 0.0), (1.2e-5, (1.1e-5, 1.4e-5), 0.0), (12345.6, (12000.2, 13000.9), 12500.0),
            (-3e-4, (-9e-4, 6e-4), 0.0)]
    rows = [{"label": cid, "value": v, "ci": ci, "threshold": t, "upper": None, "direction": ">",
             "verdict": "inconclusive"} for cid, (v, ci, t) in zip(ids, vals * 3, strict=False)]
    fig = plots.verdict_forest(rows)
    assert not text_overlaps(fig)
    for ax in fig.axes:
        shown = [t for t in ax.get_xticklabels() if t.get_text()]
        assert 2 <= len(shown) <= 6
    assert all(ax.get_ylabel().replace("\n", "") in ids for ax in fig.axes)


# --- the adapters' loss curves --------------------------------------------------------------------------


def test_loss_curves_one_labelled_line_per_adapter():
    curves = {"emotion-s0": [3.0, 2.0, 1.0], "emotion-s1": [3.1, 2.5, 1.2], "control-s0": [2.0, 1.9, 1.9],
              "full-s0": [4.0, 1.0]}
    fig = plots.loss_curves(curves)
    ax = fig.axes[0]
    lines = ax.get_lines()
    assert [list(ln.get_ydata()) for ln in lines] == list(curves.values())
    assert legend_texts(fig) == ["emotion-s0 (3 steps)", "emotion-s1 (3 steps)", "control-s0 (3 steps)",
                                 "full-s0 (2 steps)"]
    assert lines[0].get_color() == lines[1].get_color() != lines[2].get_color()  # colour: kind; style: seed
    assert lines[0].get_linestyle() != lines[1].get_linestyle()


def test_frontier_point_ci_is_the_seed_and_example_error():
    """score_half_width against the formula by hand: between-seed variance / k + sum p(1-p)/n / k^2."""
    from affectlens.study.figures import score_half_width

    xs, n = [0.6, 0.7, 0.65], 50
    m = sum(xs) / 3
    var = sum((x - m) ** 2 for x in xs) / 2 / 3 + sum(x * (1 - x) for x in xs) / n / 9
    assert score_half_width(xs, n) == pytest.approx(1.959964 * math.sqrt(var), rel=1e-6)
    assert score_half_width([0.0], 20) == pytest.approx(1.959964 * math.sqrt(0.025 * 0.975 / 20), rel=1e-6)

"""The study report: verdicts follow their numbers, the HTML is self-contained and escaped, the demo's answer.

Hand-made numbers only (no model): a fixture study dict whose verdicts are
known by construction, then flipped to show each verdict moves with its CI.
"""

from __future__ import annotations

import base64
import math
import re
import types

import pytest

from affectlens import plots
from affectlens.errors import AffectlensError
from affectlens.runs import RunDir
from affectlens.study import verdicts as V
from affectlens.study.explain import claim_sentence, demo_paragraph, explain_section
from affectlens.study.report import TITLES, write_report

from faults import run_cli

SCRIPT = "<script>alert(1)</script>"


def _ci_for(claim: V.PaperClaim, where: str) -> tuple[float, tuple[float, float]]:
    """A (value, CI) placed by hand: 'claim' side, 'other' side, or 'straddle' the threshold."""
    t = claim.threshold
    if claim.upper is not None:  # the band (t, upper)
        mid = (t + claim.upper) / 2
        return {"claim": (mid, (mid - 0.05, mid + 0.05)), "other": (t - 0.1, (t - 0.15, t - 0.05)),
                "straddle": (t, (t - 0.05, t + 0.05))}[where]
    sign = 1 if claim.direction == ">" else -1
    return {"claim": (t + sign * 0.2, (t + sign * 0.2 - 0.1, t + sign * 0.2 + 0.1)),
            "other": (t - sign * 0.2, (t - sign * 0.2 - 0.1, t - sign * 0.2 + 0.1)),
            "straddle": (t + sign * 0.02, (t + sign * 0.02 - 0.1, t + sign * 0.02 + 0.1))}[where]


def _ev(claim: V.PaperClaim, where: str, n: int = 6) -> V.Evidence:
    value, (lo, hi) = _ci_for(claim, where)
    return V.Evidence(value, (min(lo, hi), max(lo, hi)), n, {"note": "hand-made"})


@pytest.mark.parametrize("cid", list(V.CLAIMS))
@pytest.mark.parametrize("where,expected", [("claim", "supported"), ("other", "contradicted"),
                                            ("straddle", "inconclusive")])
def test_every_verdict_follows_its_ci(cid, where, expected):
    claim = V.CLAIMS[cid]
    rec = V.claim_record(cid, _ev(claim, where))
    assert rec["verdict"] == expected and V.verdict(claim, _ev(claim, where)) == expected
    assert set(rec) >= {"id", "stage", "paper", "paper_value", "quantity", "ours", "ci", "n", "verdict", "detail"}
    assert rec["stage"] in V.STAGES and rec["id"] == cid


def test_band_and_edges():
    band = V.CLAIMS["circuits-layers.middle-peak"]
    assert (band.threshold, band.upper) == (0.2, 0.8)
    assert V.verdict(band, V.Evidence(0.9, (0.85, 0.95), 5)) == "contradicted"  # all above the band
    assert V.verdict(band, V.Evidence(0.75, (0.7, 0.85), 5)) == "inconclusive"  # straddles the upper edge
    gt = V.CLAIMS["locate.gate-largest"]
    assert V.verdict(gt, V.Evidence(0.1, (0.0, 0.2), 3)) == "inconclusive"  # touching counts as straddling
    lt = V.CLAIMS["circuits-intervention.less-hallucination"]
    assert V.verdict(lt, V.Evidence(-0.1, (-0.2, -0.05), 3)) == "supported"
    assert V.verdict(lt, V.Evidence(0.1, (0.05, 0.2), 3)) == "contradicted"
    assert V.CLAIMS["frontier.get-ratio"].paper_value == 0.966 and "24.5 %" in V.CLAIMS["frontier.get-ratio"].paper


@pytest.mark.parametrize("ev", [
    V.Evidence(math.nan, (0.0, 1.0), 3), V.Evidence(0.5, (0.0, math.inf), 3), V.Evidence(0.5, (-math.inf, 1), 3),
    V.Evidence(0.5, (0.0, 1.0), 3, {"drop": {"control": math.nan}}), V.Evidence(0.5, (1.0, 0.0), 3),
    V.Evidence(0.5, (0.0, 1.0), 0)])
def test_bad_evidence_is_refused(ev):
    with pytest.raises(AffectlensError):
        V.verdict(V.CLAIMS["locate.gate-largest"], ev)
    with pytest.raises(AffectlensError):
        V.claim_record("locate.gate-largest", ev)


def test_unknown_claim_refused():
    with pytest.raises(AffectlensError, match="unknown claim"):
        V.claim_record("locate.nope", V.Evidence(0.1, (0.0, 0.2), 3))


def test_explain_says_inconclusive_equivalent_and_what_would_settle_it():
    rec = V.claim_record("efficiency.gate-lora", V.Evidence(0.02, (-0.01, 0.05), 3))
    rec["n_to_settle"] = {"text": "about 9 seeds (at these 140 examples) would settle it (a difference), if the "
                                 "estimate held"}
    s = claim_sentence(rec)
    assert rec["verdict"] == "inconclusive" and "inconclusive at this n" in s and "about 9 seeds" in s
    eq = V.claim_record("efficiency.gate-lora", V.Evidence(0.001, (-0.004, 0.006), 3))
    assert eq["verdict"] == "equivalent" and "0 +/- 0.01" in claim_sentence(eq) and "1 point" in claim_sentence(eq)
    rec = V.claim_record("locate.gate-largest", V.Evidence(0.5, (0.3, 0.7), 3))
    assert "supported" in claim_sentence(rec) and "inconclusive" not in claim_sentence(rec)
    para = explain_section("locate", {"numbers": {"locus_by_seed": {
        "emotion": ["gate_proj", "gate_proj", "up_proj"], "control": ["up_proj"] * 3}}}, [rec])
    assert "gate_proj changed most in 2 of 3 seeds of the emotion adapter" in para
    assert "in the control adapter it was up_proj (3 of 3)" in para
    assert "not run" in explain_section("necessity", None, [rec])


def test_verdict_and_raw_verdict_disagreement_is_said_and_flagged(tmp_path):
    ev, raw = V.Evidence(0.2, (0.1, 0.3), 6), V.Evidence(-0.2, (-0.3, -0.1), 6)
    rows = V.claim_records({"necessity.gate-reset": ev}, {"necessity.gate-reset": raw})
    assert (rows[0]["verdict"], rows[0]["raw_verdict"], rows[0]["verdicts_differ"]) == ("supported", "contradicted",
                                                                                        True)
    assert "Judged on uncalibrated scores instead, it would be contradicted" in claim_sentence(rows[0])
    with RunDir(tmp_path / "d", command="study") as run:
        write_report(run, {"claims": rows, "sections": {}})
    page = (tmp_path / "d" / "report.html").read_text()
    assert 'class="contradicted differ">contradicted (differs)</td>' in page


def _png(run: RunDir, name: str) -> str:
    plt = plots.pyplot()
    fig, ax = plt.subplots(figsize=(1, 1))
    ax.plot([0, 1], [0, 1])
    run.figure(f"figures/{name}.png", fig)
    return f"figures/{name}.png"


def _study(run: RunDir, flip: bool = False) -> dict:
    """Every claim on its supported side (or, flipped, its other side); circuits-heads not run."""
    claims = V.claim_records({cid: _ev(c, "other" if flip else "claim") for cid, c in V.CLAIMS.items()})
    sections = {}
    for stage in V.STAGES:
        if stage == "circuits-heads":
            continue
        sections[stage] = {"title": TITLES[stage], "numbers": {"mean": 0.25, "per_seed": [0.1, 0.2]},
                           "tables": [{"title": f"{stage} table", "columns": ["module", "score"],
                                       "rows": [["gate_proj", 0.5], {"module": "up_proj", "score": 0.4}]}],
                           "figures": {f"{stage} fig": _png(run, stage.replace("-", "_"))},
                           "notes": [f"note for {stage} {SCRIPT}"]}
    sections["locate"]["numbers"]["locus_by_seed"] = {"emotion": ["gate_proj", "gate_proj", "up_proj"],
                                                      "control": ["up_proj", "up_proj", "up_proj"]}
    sections["necessity"]["figures"]["missing one"] = "figures/never_made.png"
    sections["necessity"]["status"] = "failed"
    return {"claims": claims, "sections": sections, "version": 1,
            "methods": {"profile": "quick", "seeds": [0, 1, 2], "budgets": {"steps": 32, "rank": 8},
                        "data_fingerprints": {"emotion": "ab12"}, "packages": {"torch": "2.x"},
                        "expected_time_s": 1200, "wall_time_s": 1100.5}}


def _report(tmp_path, name: str, flip: bool = False) -> tuple[str, str, dict, object]:
    with RunDir(tmp_path / name, command="study") as run:
        study = _study(run, flip)
        write_report(run, study)
    out = tmp_path / name
    return (out / "report.html").read_text(), (out / "report.md").read_text(), study, out


def test_report_is_complete_self_contained_and_escaped(tmp_path):
    page, md, study, out = _report(tmp_path, "r")
    for stage in V.STAGES:
        assert TITLES[stage].replace("'", "&#x27;") in page, stage
    assert "Stage <code>circuits-heads</code> was not run" in page and "was not run" in md
    assert "status: failed" in page and "figure missing one: not available in this run" in page
    # every figure embedded as a PNG data URI: the runner's, the verdict forest, the locus stability bars
    figs = {v for s in study["sections"].values() for v in s["figures"].values() if "never" not in v}
    figs |= {"figures/report_verdicts.png", "figures/report_locus_stability.png"}
    srcs = re.findall(r'src="([^"]*)"', page)
    assert len(srcs) == len(figs)
    for rel in figs:
        data = (out / rel).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        assert f'src="data:image/png;base64,{base64.b64encode(data).decode()}"' in page, rel
        assert f"]({rel})" in md, rel
    assert "never_made" not in md
    low = page.lower()
    for bad in ('src="http', "href=", "url(", "<link", "@import", "figures/", "<script", str(tmp_path).lower()):
        assert bad not in low, bad
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;script&gt;" in md and "<script" not in md
    # verdict table up front, coloured by class, one row per claim
    head = page[:page.index('id="locate"')]
    assert head.count('<td class="supported">supported</td>') == 2 * len(V.CLAIMS)  # verdict and raw verdict
    assert "96.6 %" in head and "0.966" in head
    assert "expected 1200 s (20.0 min), actual 1100 s (18.3 min)" in page and "budgets.steps" in page


def test_flipped_numbers_flip_the_report(tmp_path):
    page, md, study, _ = _report(tmp_path, "f", flip=True)
    assert page.count('<td class="contradicted">contradicted</td>') == 2 * len(V.CLAIMS)  # verdict and raw
    assert "supported</td>" not in page and "| supported |" not in md


def test_report_refuses_inconsistent_or_non_finite_studies(tmp_path):
    with RunDir(tmp_path / "x", command="study") as run:
        study = _study(run)
        study["claims"][0]["verdict"] = "contradicted"  # hand-written verdict that its numbers do not give
        with pytest.raises(AffectlensError, match="does not follow"):
            write_report(run, study)
        study = _study(run)
        study["sections"]["frontier"]["numbers"]["mean"] = math.inf
        with pytest.raises(AffectlensError, match="non-finite"):
            write_report(run, study)
        write_report(run, {"claims": [], "sections": {}})  # nothing run: every section says so
        assert run.file("report.html").read_text().count("was not run") == len(V.STAGES)


def test_locus_stability_bars_count_seeds():
    fig = plots.locus_stability({"emotion": ["gate_proj", "gate_proj", "up_proj"], "control": ["up_proj"] * 3},
                                ["gate_proj", "up_proj"])
    heights = [p.get_height() for p in fig.axes[0].patches]
    plots.pyplot().close(fig)
    assert heights == [2, 1, 0, 3]


def _rank(rel: dict, l2: dict) -> dict:
    return {"relative": {"mean": rel}, "l2": {"mean": l2}}


def test_demo_paragraph_follows_planted_numbers():
    differ = demo_paragraph({
        "emotion": _rank({"gate_proj": 0.012, "q_proj": 0.010, "up_proj": 0.002}, {"gate_proj": 3.0, "q_proj": 1.0}),
        "control": _rank({"gate_proj": 0.010, "up_proj": 0.020}, {"gate_proj": 1.0, "up_proj": 3.0})})
    assert "the emotion adapter changed gate_proj most (0.012, 20 % more than the runner-up q_proj" in differ
    assert "the control adapter" in differ and "changed up_proj most (0.02, 100 % more than the runner-up gate_proj" \
        in differ
    assert "The two loci differ" in differ and "75 % of the emotion adapter's" in differ and "25 % of the control" \
        in differ
    assert "sufficient or necessary" in differ and "affectlens study" in differ
    same = demo_paragraph({
        "emotion": _rank({"gate_proj": 0.0102, "up_proj": 0.0100}, {"gate_proj": 1.0, "up_proj": 1.0}),
        "control": _rank({"gate_proj": 0.02, "up_proj": 0.01}, {"gate_proj": 1.0, "up_proj": 1.0})})
    assert "same module" in same and "near tie" in same and "The two loci differ" not in same
    # loci differ but one lead is a near tie (as on SmolLM2): no claim that the locus goes with the data
    tied = demo_paragraph({
        "emotion": _rank({"v_proj": 0.0151, "q_proj": 0.0150}, {"v_proj": 1.0, "q_proj": 1.0}),
        "control": _rank({"o_proj": 0.03, "v_proj": 0.01}, {"o_proj": 1.0, "v_proj": 1.0})})
    assert "The two loci differ, but the emotion adapter's lead is a near tie" in tied
    assert "goes with the emotion data." not in tied and "more seeds" in tied


def test_demo_cli_prints_the_paragraph(capfd, monkeypatch, tmp_path):
    """`affectlens demo` prints the paragraph made from locate's numbers (planted here; no training)."""
    import affectlens.study.demo as demo

    models = {"emotion": {"locus": {"relative": "gate_proj", "l2": "gate_proj", "rms": "q_proj"},
                          "ranking": _rank({"gate_proj": 0.03, "up_proj": 0.01}, {"gate_proj": 2.0, "up_proj": 2.0})},
              "control": {"locus": {"relative": "down_proj", "l2": "gate_proj", "rms": "down_proj"},
                          "ranking": _rank({"down_proj": 0.05, "gate_proj": 0.04}, {"gate_proj": 1.0,
                                                                                    "down_proj": 3.0})}}
    loc = types.SimpleNamespace(summary={"models": models}, table=lambda: "TABLE")
    training = {k: {"loss_first": 2.0, "loss_last10": 1.0, "trainable_params": 10, "seconds": 1.0} for k in models}
    fake = demo.DemoResult(tmp_path, {}, True, loc, {"training": training})
    monkeypatch.setattr(demo, "run_demo", lambda **kw: fake)
    rc, out, err = run_cli(capfd, "demo", "--out", tmp_path / "d")
    assert rc == 0, err
    flat = " ".join(out.split())
    assert "the emotion adapter changed gate_proj most (0.03, 200 % more than the runner-up up_proj" in flat
    assert "the control adapter" in flat and "changed down_proj most (0.05, 25 % more than the runner-up gate_proj" \
        in flat
    assert "The two loci differ" in flat and "50 % of the emotion adapter's total change and 25 %" in flat


def test_explain_reads_the_section_numbers():
    rec = V.claim_record("necessity.gate-reset", V.Evidence(0.2, (0.1, 0.3), 6))
    para = explain_section("necessity", {"numbers": {"scores": {"tuned": 0.6, "reset gate": 0.4},
                                                     "yardstick": 0.35,
                                                     "control_task_drop": {"gate_proj": 0.01, "up_proj": 0.02}}},
                           [rec])
    assert "Scores: tuned 0.6, reset gate 0.4 (best: tuned)." in para
    assert "scores 0.35" in para and "gate_proj 0.01, up_proj 0.02" in para
    para = explain_section("frontier", {"numbers": {"score_ratio": 0.73, "param_share": 0.25}}, [])
    assert "73.0 % of the all-module score with 25.0 % of its trainable parameters" in para


def test_locus_by_seed_from_per_label_loci():
    from affectlens.study.explain import locus_by_seed

    numbers = {"loci": {"emotion-s0": {"relative": "gate_proj", "l2": "up_proj"},
                        "emotion-s1": {"relative": "q_proj", "l2": "up_proj"},
                        "control-s0": {"relative": "up_proj", "l2": "up_proj"}}}
    assert locus_by_seed(numbers) == {"emotion": ["gate_proj", "q_proj"], "control": ["up_proj"]}
    assert locus_by_seed(numbers, "l2") == {"emotion": ["up_proj", "up_proj"], "control": ["up_proj"]}
    assert "gate_proj changed most in 1 of 2 seeds of the emotion adapter" in explain_section(
        "locate", {"numbers": numbers}, [])

"""``report.html`` and ``report.md``: the papers' claims beside ours, then one section per stage.

The HTML is one self-contained file (inline CSS, figures as base64
``data:image/png`` URIs, no link, script, font or URL), so it can be mailed
or opened offline in any browser. The Markdown links the PNGs under
``figures/``. Both are built from one document model (:func:`document`), so
they cannot disagree. Every verdict is re-derived from its numbers
(:func:`verdicts.checked_verdicts`: Holm re-run over the stored p-values):
a study.json whose stored verdict does not follow from its numbers is
refused, never reported. A smoke test says so in a banner above everything. All text from study.json
is escaped, so a note containing markup renders as text. A stage that was
not run, or failed with a note, is shown as such.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from ..errors import AffectlensError
from ..runs import find_non_finite
from .explain import explain_section, fmt, locus_by_seed
from .schema import check_study
from .verdicts import CLAIMS, PAPER_A, PAPER_B, STAGES, checked_verdicts

if TYPE_CHECKING:
    from ..runs import RunDir

TITLES = {
    "locate": "Locate: where did tuning change the model? (paper A, Figs. 4-6, 10)",
    "sufficiency": "Sufficiency: each module's delta transferred alone (paper A, Table 1)",
    "efficiency": "Efficiency: single-module LoRA at an identical budget (paper A, Table 2, Fig. 8)",
    "necessity": "Necessity: a module's fine-tuning reset inside the tuned model (paper A)",
    "frontier": "GET frontier: score vs trainable parameters (paper A, Fig. 9)",
    "circuits-layers": "Circuits: layer profile of emotion steering (paper B)",
    "circuits-heads": "Circuits: emotion-specific vs emotion-general heads by depth (paper B)",
    "circuits-intervention": "Circuits: interventions on emotional heads and neurons (paper B)",
}
MAX_NUMBERS = 60
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
table{border-collapse:collapse;margin:.8em 0;font-size:.9em}th,td{border:1px solid #ccc;padding:.3em .5em;
vertical-align:top;text-align:left}th{background:#f3f3f3}
.supported{background:#dcf5e3;color:#1a7f37;font-weight:600}.contradicted{background:#fde2e1;color:#c62828;
font-weight:600}.inconclusive{background:#fdf1d6;color:#8a5a00;font-weight:600}.untested{color:#777}
.equivalent{background:#dde8f6;color:#1f5fa8;font-weight:600}.differ{outline:2px solid #c62828}
.banner{background:#fde2e1;border:2px solid #c62828;padding:.6em 1em;margin:1em 0}
.missing{color:#777;font-style:italic}.meaning{background:#f6f8fa;border-left:4px solid #888;padding:.6em 1em}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #ddd}figcaption{font-size:.85em;color:#555}
code{background:#f3f3f3;padding:0 .2em}
"""


def write_report(run: RunDir, study: dict[str, Any]) -> None:
    """Write ``report.html`` (self-contained) and ``report.md`` (+ report figures) into the run dir."""
    doc = document(run, study)
    run.text("report.md", render_md(doc))
    run.text("report.html", render_html(doc, run.path))


def document(run: RunDir, study: Mapping[str, Any]) -> dict[str, Any]:
    """The report's content, independent of format: verdict rows, sections, methods."""
    check_study(study)
    if study.get("version", 1) != 1:
        raise AffectlensError(f"study.json version {study.get('version')!r} is not supported (expected 1)")
    hit = find_non_finite(study, "study")
    if hit:
        raise AffectlensError(f"study results hold a non-finite number ({hit[1]} at {hit[0]}); refusing to report")
    claims = [dict(c) for c in study.get("claims") or []]
    for c, (v, rv) in zip(claims, checked_verdicts(claims), strict=True):
        c["verdict"], c["raw_verdict"] = v, rv
    sections: Mapping[str, Any] = study.get("sections") or {}
    rows = []
    by_id = {c["id"]: c for c in claims}
    unjudged = {str(c["id"]): str(c.get("reason") or "no verdict") for c in study.get("not_judged") or []}
    for cid, claim in CLAIMS.items():
        rec = by_id.get(cid)
        paper = ("A: " if claim.source == PAPER_A else "B: " if claim.source == PAPER_B else "") + claim.paper
        rows.append({"id": cid, "stage": claim.stage, "source": claim.source, "paper": paper,
                     "paper_value": _paper_value(claim.paper_value, claim.paper_note), "quantity": claim.quantity,
                     "record": rec, "margin": _margin(rec, claim), "raw": _raw(rec),
                     "not_judged": None if rec else unjudged.get(cid)})
    figures: dict[str, list[tuple[str, str]]] = {}
    if claims:
        from ..plots import verdict_forest

        forest = [{"label": c["id"], "value": c["ours"], "ci": c["ci"], "threshold": CLAIMS[c["id"]].threshold,
                   "upper": CLAIMS[c["id"]].upper, "direction": CLAIMS[c["id"]].direction,
                   "verdict": c["verdict"]} for c in claims]
        run.figure("figures/report_verdicts.png", verdict_forest(forest))
        figures["_verdicts"] = [("verdicts", "figures/report_verdicts.png")]
    out_sections = []
    for stage in list(STAGES) + [s for s in sections if s not in STAGES]:
        sec = sections.get(stage)
        if not isinstance(sec, Mapping):
            out_sections.append({"stage": stage, "title": TITLES.get(stage, stage), "missing": True,
                                 "paragraph": explain_section(stage, None, claims), "claims": [],
                                 "numbers": [], "tables": [], "figures": [], "notes": []})
            continue
        figs = [(str(k), str(v)) for k, v in (sec.get("figures") or {}).items()
                if _figure_uri(run.path, str(v), read=False) is not None]
        gone = [str(k) for k, v in (sec.get("figures") or {}).items() if (str(k), str(v)) not in figs]
        loci = locus_by_seed(sec.get("numbers") or {}) if stage == "locate" else {}
        if loci:
            from ..plots import locus_stability

            mods = sorted({m for seq in loci.values() for m in seq})
            run.figure("figures/report_locus_stability.png", locus_stability(loci, mods))
            figs.append(("locus stability over seeds", "figures/report_locus_stability.png"))
        out_sections.append({
            "stage": stage, "title": str(sec.get("title") or TITLES.get(stage, stage)), "missing": False,
            "status": sec.get("status"), "paragraph": explain_section(stage, sec, claims),
            "claims": [c for c in claims if c.get("stage") == stage],
            "numbers": _flatten(sec.get("numbers") or {})[:MAX_NUMBERS],
            "tables": [_table(t) for t in sec.get("tables") or []], "figures": figs,
            "notes": [str(n) for n in sec.get("notes") or []]
            + [f"figure {g}: not available in this run" for g in gone]})
    fails = study.get("failures") or {}
    failed = [(str(k), str(v)) for k, v in (fails.get("by_stage") or {}).items()]
    return {"rows": rows, "figures": figures, "sections": out_sections, "banner": _banner(study),
            "family": dict(study.get("family") or {}), "methods": dict(study.get("methods") or {}),
            "failures": {"failed": int(fails.get("failed") or len(failed)),
                         "stages": int(fails.get("stages") or 0), "rows": failed}}


def _banner(study: Mapping[str, Any]) -> dict[str, Any]:
    """The smoke-test reasons and whether the run was powered, for the top of the report."""
    smoke = [str(x) for x in study.get("smoke_test_reasons") or []]
    why = [str(x) for x in study.get("powered_reasons") or []]
    return {"smoke": smoke, "powered": study.get("powered"), "powered_reasons": why,
            "scope": [str(x) for x in study.get("scope_limits") or []],
            "half": _half_line(study.get("powered_for_half_paper_effect") or {})}


def _half_line(half: Mapping[str, Any]) -> str:
    """One line: which gate_proj-study claims with a paper number could detect half the paper's effect."""
    rows = half.get("claims") or {}
    if not rows:
        return ""
    yes = [c for c, r in rows.items() if r.get("powered")]
    no = [f"{c} (MDE {r['mde']:.3g} > {r['half_paper_effect']:.3g})" for c, r in rows.items() if not r.get("powered")]
    return (f"Powered for half the paper's effect: {len(yes)} of {len(rows)} judged gate_proj-study claims with a "
            "paper number" + (f"; not: {'; '.join(no)}" if no else "") + ".")


def _lead(family: Mapping[str, Any]) -> str:
    a = family.get("alpha", 0.05)
    return ("Each claim of the two papers beside our estimate. The verdict is computed from bootstrap p-values "
            "(replicate: the seed for anything trained, paired over test examples, layers or emotions within "
            f"it) with Holm's adjustment over all {family.get('tests', 'the')} tests of the "
            f"{family.get('claims_judged', '')} judged claims at alpha {a}: "
            "supported / contradicted when the difference from the claim's threshold is significant in the "
            "claim's / the other direction, equivalent when the CI lies inside the claim's practical-equivalence "
            "margin (its reason is given), inconclusive otherwise; not judged when the design cannot decide it "
            "(fewer than 3 seeds for a trained claim, fewer than 5 layers or units, a text-only model for an "
            "image claim). The raw verdict repeats the judgement on uncalibrated scores; a disagreement is "
            "flagged.")


def _failure_lead(f: Mapping[str, Any]) -> str:
    of = f" of {f['stages']}" if f.get("stages") else ""
    return (f"{f['failed']}{of} stages failed or were skipped for a failed input: their sections and claims are "
            "missing from this report. Rerunning the same command retries only these stages (finished ones "
            "are reused from the cache).")


def _flatten(obj: Any, prefix: str = "") -> list[tuple[str, str]]:
    """Nested numbers as (dotted key, formatted value) pairs."""
    if isinstance(obj, Mapping):
        out: list[tuple[str, str]] = []
        for k, v in obj.items():
            out += _flatten(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    return [(prefix, _value(obj))]


def _value(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, int | float):
        return fmt(float(v)) if isinstance(v, float) else str(v)
    if isinstance(v, list | tuple):
        return ", ".join(_value(x) for x in v)
    if isinstance(v, Mapping):
        return "; ".join(f"{k}: {_value(x)}" for k, x in v.items())
    return str(v)


def _table(t: Mapping[str, Any]) -> dict[str, Any]:
    cols = [str(c) for c in t.get("columns") or []]
    rows = []
    for r in t.get("rows") or []:
        cells = [r.get(c) for c in cols] if isinstance(r, Mapping) else list(r)
        rows.append([_value(c) for c in cells])
    return {"title": str(t.get("title") or ""), "columns": cols, "rows": rows}


def _ours(rec: Mapping[str, Any] | None, not_judged: str | None = None) -> str:
    if rec is None:
        return f"not judged: {not_judged}" if not_judged else "not tested (stage not run)"
    out = f"{fmt(float(rec['ours']))} [{fmt(float(rec['ci'][0]))}, {fmt(float(rec['ci'][1]))}]"
    h = rec.get("ci_holm")
    if isinstance(h, list | tuple) and len(h) == 2:
        out += f"; Holm {100 * float(rec.get('ci_holm_level') or 0):.2f} %: [{fmt(float(h[0]))}, {fmt(float(h[1]))}]"
    return out + f" (n = {rec['n']})"


def _paper_value(v: float | None, note: str = "") -> str:
    return "-" if v is None else f"{v:.4g}" + (f" ({note})" if note else "")


def _margin(rec: Mapping[str, Any] | None, claim: Any) -> str:
    m = claim.margin
    if claim.upper is not None:
        return f"band ({fmt(claim.threshold)}, {fmt(claim.upper)})"
    return "-" if m is None else f"+/- {fmt(m)}: {claim.margin_reason}"


def _raw(rec: Mapping[str, Any] | None) -> str:
    if rec is None:
        return "-"
    rv = str(rec.get("raw_verdict") or "-")
    return rv + (" (differs)" if rv != rec.get("verdict") else "")


def _methods_rows(methods: Mapping[str, Any]) -> list[tuple[str, str]]:
    rows = []
    exp, wall = methods.get("expected_time_s"), methods.get("wall_time_s")
    if exp is not None or wall is not None:
        def t(x: Any) -> str:
            return "unknown" if x is None else f"{float(x):.0f} s ({float(x) / 60:.1f} min)"
        rows.append(("wall time", f"expected {t(exp)}, actual {t(wall)}"))
    for k, v in methods.items():
        if k not in ("expected_time_s", "wall_time_s"):
            rows += _flatten(v, str(k)) if isinstance(v, Mapping) and v else [(str(k), _value(v))]
    return rows


# ---------------------------------------------------------------------------
# HTML


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _figure_uri(root: Path, rel: str, read: bool = True) -> str | None:
    """The PNG at ``rel`` inside the run as a data URI; None when it is absent or points outside the run.

    With ``read=False`` only checks (returns ``rel``), so the Markdown links nothing the HTML could not embed.
    """
    p = PurePosixPath(rel)
    if p.is_absolute() or ".." in p.parts or p.suffix.lower() != ".png":
        return None
    f = root / Path(*p.parts)
    if not f.is_file():
        return None
    if not read:
        return rel
    return "data:image/png;base64," + base64.b64encode(f.read_bytes()).decode("ascii")


def _html_figure(root: Path, name: str, rel: str) -> str:
    uri = _figure_uri(root, rel)
    if uri is None:
        return f'<p class="missing">figure {_e(name)}: not available in this run</p>'
    return f'<figure><img alt="{_e(name)}" src="{uri}"><figcaption>{_e(name)}</figcaption></figure>'


def _html_table(cols: list[str], rows: list[list[str]], title: str = "") -> str:
    head = "".join(f"<th>{_e(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in rows)
    cap = f"<caption>{_e(title)}</caption>" if title else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(doc: Mapping[str, Any], root: Path) -> str:
    """The self-contained HTML page."""
    h = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
         "<title>affectlens study report</title>", f"<style>{CSS}</style></head><body>",
         "<h1>affectlens study report</h1>",
         *_html_banner(doc.get("banner") or {}),
         f"<p>{_e(_lead(doc.get('family') or {}))} Paper A: {_e(PAPER_A)}; paper B: {_e(PAPER_B)}.</p>",
         *(['<h2 id="failures">Failed stages</h2>', f'<p class="missing">{_e(_failure_lead(doc["failures"]))}</p>',
            _html_table(["stage", "what happened"], [list(x) for x in doc["failures"]["rows"]])]
           if doc.get("failures", {}).get("rows") else []),
         '<h2 id="verdicts">Verdicts</h2>', "<table><thead><tr><th>claim</th><th>paper's statement</th>"
         "<th>paper's number</th><th>what we measure</th><th>ours [95 % CI; Holm CI]</th><th>margin</th>"
         "<th>verdict</th><th>raw verdict</th></tr></thead><tbody>"]
    for r in doc["rows"]:
        rec = r["record"]
        v = rec["verdict"] if rec else "untested"
        word = v if rec else "not judged" if r.get("not_judged") else "not tested"
        differ = ' differ' if rec and rec.get("raw_verdict") != v else ""
        h.append(f"<tr><td><code>{_e(r['id'])}</code></td><td>{_e(r['paper'])}</td>"
                 f"<td>{_e(r['paper_value'])}</td><td>{_e(r['quantity'])}</td>"
                 f"<td>{_e(_ours(rec, r.get('not_judged')))}</td><td>{_e(r['margin'])}</td>"
                 f"<td class=\"{_e(v)}\">{_e(word)}</td><td class=\"{_e(rec['raw_verdict'] if rec else '')}{differ}\">"
                 f"{_e(r['raw'])}</td></tr>")
    h.append("</tbody></table>")
    for name, rel in doc["figures"].get("_verdicts", []):
        h.append(_html_figure(root, name, rel))
    for s in doc["sections"]:
        h.append(f'<h2 id="{_e(s["stage"])}">{_e(s["title"])}</h2>')
        if s["missing"]:
            h.append(f'<p class="missing">Stage <code>{_e(s["stage"])}</code> was not run in this study.</p>')
            continue
        if s.get("status"):
            h.append(f'<p class="missing">status: {_e(s["status"])}</p>')
        h.append(f'<p class="meaning"><strong>What this means.</strong> {_e(s["paragraph"])}</p>')
        for t in s["tables"]:
            h.append(_html_table(t["columns"], t["rows"], t["title"]))
        for name, rel in s["figures"]:
            h.append(_html_figure(root, name, rel))
        if s["numbers"]:
            h.append("<details><summary>numbers</summary>"
                     + _html_table(["quantity", "value"], [list(x) for x in s["numbers"]]) + "</details>")
        if s["notes"]:
            h.append("<ul>" + "".join(f"<li>{_e(n)}</li>" for n in s["notes"]) + "</ul>")
    h.append('<h2 id="methods">Methods</h2>')
    rows = _methods_rows(doc["methods"])
    h.append(_html_table(["item", "value"], [list(x) for x in rows]) if rows
             else '<p class="missing">no methods recorded</p>')
    h.append("</body></html>")
    return "\n".join(h) + "\n"


def _html_banner(b: Mapping[str, Any]) -> list[str]:
    out = []
    if b.get("smoke"):
        out.append('<div class="banner" id="smoke-test"><strong>SMOKE TEST &mdash; not a result.</strong> This run '
                   "checks that the pipeline works; it is not evidence for or against either paper, because:<ul>"
                   + "".join(f"<li>{_e(x)}</li>" for x in b["smoke"]) + "</ul></div>")
    if b.get("powered") is False:
        out.append('<div class="banner" id="underpowered"><strong>Not powered.</strong><ul>'
                   + "".join(f"<li>{_e(x)}</li>" for x in b.get("powered_reasons") or []) + "</ul></div>")
    if b.get("scope"):
        out.append('<div class="banner" id="scope"><strong>What this run cannot speak to.</strong><ul>'
                   + "".join(f"<li>{_e(x)}</li>" for x in b["scope"]) + "</ul></div>")
    if b.get("half"):
        out.append(f"<p id=\"half-effect\">{_e(b['half'])}</p>")
    return out


# ---------------------------------------------------------------------------
# Markdown


def _m(x: Any) -> str:
    """Text for a Markdown table cell: HTML-escaped (renderers pass raw HTML through), pipes escaped."""
    return html.escape(" ".join(str(x).split()), quote=False).replace("|", "\\|")


def _md_table(cols: list[str], rows: list[list[str]]) -> list[str]:
    return (["| " + " | ".join(_m(c) for c in cols) + " |", "|" + "---|" * len(cols)]
            + ["| " + " | ".join(_m(c) for c in r) + " |" for r in rows] + [""])


def render_md(doc: Mapping[str, Any]) -> str:
    """The Markdown report; figures are relative links to ``figures/*.png``."""
    md = ["# affectlens study report", ""]
    b = doc.get("banner") or {}
    if b.get("smoke"):
        md += ["> **SMOKE TEST — not a result.** This run checks that the pipeline works; it is not evidence for "
               "or against either paper, because:", ">"] + [f"> - {_m(x)}" for x in b["smoke"]] + [""]
    if b.get("powered") is False:
        md += ["> **Not powered.**", ">"] + [f"> - {_m(x)}" for x in b.get("powered_reasons") or []] + [""]
    if b.get("scope"):
        md += ["> **What this run cannot speak to.**", ">"] + [f"> - {_m(x)}" for x in b["scope"]] + [""]
    if b.get("half"):
        md += [_m(b["half"]), ""]
    md += [f"{_m(_lead(doc.get('family') or {}))} Paper A: {_m(PAPER_A)}; paper B: {_m(PAPER_B)}.", ""]
    if doc.get("failures", {}).get("rows"):
        md += ["## Failed stages", "", _m(_failure_lead(doc["failures"])), ""]
        md += _md_table(["stage", "what happened"], [list(x) for x in doc["failures"]["rows"]])
    md += ["## Verdicts", ""]
    md += _md_table(["claim", "paper's statement", "paper's number", "ours [95 % CI; Holm CI]", "margin", "verdict",
                     "raw verdict"],
                    [[r["id"], r["paper"], r["paper_value"], _ours(r["record"], r.get("not_judged")), r["margin"],
                      r["record"]["verdict"] if r["record"] else "not judged" if r.get("not_judged")
                      else "not tested", r["raw"]] for r in doc["rows"]])
    for name, rel in doc["figures"].get("_verdicts", []):
        md += [f"![{_m(name)}]({rel})", ""]
    for s in doc["sections"]:
        md += [f"## {_m(s['title'])}", ""]
        if s["missing"]:
            md += [f"*Stage `{_m(s['stage'])}` was not run in this study.*", ""]
            continue
        if s.get("status"):
            md += [f"*status: {_m(s['status'])}*", ""]
        md += [f"**What this means.** {_m(s['paragraph'])}", ""]
        for t in s["tables"]:
            md += ([f"**{_m(t['title'])}**", ""] if t["title"] else []) + _md_table(t["columns"], t["rows"])
        for name, rel in s["figures"]:
            md += [f"![{_m(name)}]({rel})", ""]
        if s["numbers"]:
            md += _md_table(["quantity", "value"], [list(x) for x in s["numbers"]])
        md += [f"- {_m(n)}" for n in s["notes"]] + ([""] if s["notes"] else [])
    md += ["## Methods", ""]
    rows = _methods_rows(doc["methods"])
    md += _md_table(["item", "value"], [list(x) for x in rows]) if rows else ["*no methods recorded*", ""]
    return "\n".join(md)

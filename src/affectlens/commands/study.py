"""``affectlens study [CONFIG.yaml] --out DIR``: both papers' protocols as stages, and one report."""

from __future__ import annotations

import argparse
import sys

from . import options as o

STAGE_NAMES = "adapters, locate, sufficiency, efficiency, necessity, frontier, circuits"


def register(sub: argparse._SubParsersAction) -> None:
    g = sub.add_parser(
        "study",
        help="run the gate_proj and circuits studies as cached stages; write report.html/md and study.json",
        description="Run the whole study on one base model: LoRA on the affective and on the control task "
                    "(identical budget) and full fine-tuning, locate, transfer (sufficiency), targeted LoRA "
                    "(efficiency), delta reset (necessity), the GET frontier and the circuits pipeline. "
                    "Each stage is cached in DIR by the fingerprint of its inputs: rerunning the same "
                    "command resumes after a kill, and a changed config recomputes only what it changes. "
                    "Every claim of the two papers gets our number, its 95 % CI and a verdict computed "
                    "from bootstrap p-values with Holm's adjustment (supported, contradicted, equivalent inside "
                    "the claim's margin, inconclusive, or not judged when the design cannot decide it), judged "
                    "again on uncalibrated scores (raw verdict); a smoke test says so, and study.json says "
                    f"whether the run was powered. Stages: {STAGE_NAMES}. Exit status: 0 when every stage ran; 1 when any stage "
                    "failed (the report is still written, each failure a noted section in it and in "
                    "study.json, and a rerun retries only those stages); 2 for bad input, refused before "
                    "any work.",
    )
    g.add_argument("config", nargs="?", default=None,
                   help="study YAML (see examples/study.yaml; default: the bundled tasks on the embedded model)")
    g.add_argument("--model", default=None, help="base model (overrides the config's model:)")
    g.add_argument("--profile", choices=("quick", "standard", "default"), default="default",
                   help="quick: 1 seed, short budgets, a subset of modules/emotions (a smoke test); standard: "
                        "3 seeds, 500 scored rows per task, the modules the gate_proj claims compare, short "
                        "budgets (44 min on 2 CPU cores for SmolLM2-135M in bfloat16); default: >= 3 seeds, "
                        "every module, longer budgets")
    g.add_argument("--stages", default=None, help=f"comma-separated subset of: {STAGE_NAMES} "
                   "(the stages they read run too)")
    g.add_argument("--seeds", type=int, default=None, help="number of seeds (0..N-1; overrides the profile)")
    g.add_argument("--out", required=True,
                   help="study dir (an existing study dir is resumed; any other existing dir needs --force)")
    g.add_argument("--force", action="store_true",
                   help="replace an existing non-study --out, or start a study dir over (drop its stage cache)")
    g.add_argument("--executor", choices=("serial", "ray", "slurm"), default=None,
                   help="where the scoring stages' grid cells run (handed to `affectlens grid`'s executor; "
                        "default: in this process)")
    o.device(g)
    o.dtype(g)
    o.allow_pickle(g)
    g.set_defaults(func=_study)


def _study(args: argparse.Namespace) -> int:
    from ..study import run_study

    study = run_study(args.config, args.out, profile=args.profile, stages=args.stages, model=args.model,
                      seeds=args.seeds, force=args.force, device=args.device, dtype=args.dtype,
                      executor=args.executor,
                      allow_pickle=args.allow_pickle)
    for c in study["claims"]:
        flag = " (raw differs)" if c.get("raw_verdict") != c["verdict"] else ""
        print(f"{c['id']:<45} {c['verdict']:<13} raw {c.get('raw_verdict', '-'):<13} ours {c['ours']:+.4f} "
              f"[{c['ci'][0]:+.4f}, {c['ci'][1]:+.4f}]{flag}")
    for c in study.get("not_judged") or []:
        print(f"{c['id']:<45} {'not judged':<13} {c['reason']}")
    if study.get("smoke_test_reasons"):
        print(f"SMOKE TEST, not a result ({len(study['smoke_test_reasons'])} reasons: see the report's banner)")
    if study.get("powered") is False:
        print("not powered: " + "; ".join(study.get("powered_reasons") or []))
    fails = study.get("failures") or {}
    if fails.get("failed"):
        sys.stdout.flush()  # the summary is the last line, after the table
        names = ", ".join(fails.get("by_stage") or {})
        print(f"study: {fails['failed']} of {fails['stages']} stages failed ({names}); report written to "
              f"{args.out}/report.html, report.md and study.json", file=sys.stderr, flush=True)
        return 1
    print(f"wrote {args.out}/report.html, report.md and study.json")
    return 0

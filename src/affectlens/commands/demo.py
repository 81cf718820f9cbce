"""``affectlens demo``: emotion vs control adapter on the embedded SmolLM2, then locate both."""

from __future__ import annotations

import argparse
import textwrap

from . import options as o


def register(sub: argparse._SubParsersAction) -> None:
    from ..study.demo import BUDGET, EXPECTED_TIME

    p = sub.add_parser(
        "demo",
        help="tune SmolLM2 on emotion and on a control task (same budget) and locate what changed",
        description="Loads the embedded SmolLM2-135M-Instruct, trains (or reuses from the cache) an "
        "all-module LoRA on the bundled emotion corpus and one on the bundled arithmetic control "
        "task with the same steps/rank/lr/seed, runs `locate` on both and prints where each changed "
        f"the model most. Takes {EXPECTED_TIME}.",
    )
    o.out(p, "run directory; locate's outputs go to OUT/locate/ (default: runs/demo-YYYYmmdd-HHMMSS)",
          required=False)
    o.force(p)
    p.add_argument("--retrain", action="store_true", help="ignore cached adapters and train again")
    o.add_number(p, "--steps", o.integer(1), default=BUDGET.steps,
                 help="training steps per adapter (default: %(default)s; the rest of the budget is fixed: "
                 f"rank {BUDGET.rank}, alpha {BUDGET.alpha:g}, lr {BUDGET.lr:g}, batch {BUDGET.batch_size})")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..study.demo import run_demo

    result = run_demo(out=args.out, force=args.force, retrain=args.retrain, steps=args.steps)
    print(result.locate.table())
    print()
    for label, t in result.summary["training"].items():
        print(f"{label:<8} loss {t['loss_first']:.3f} -> {t['loss_last10']:.3f} "
              f"({t['trainable_params']:,} trainable params, {t['seconds']:.0f} s training)")
    for line in result.lines():
        print(line)
    print()
    print(textwrap.fill(result.paragraph(), width=100, break_on_hyphens=False, break_long_words=False))
    print("(one small model, one seed, a synthetic corpus: a demonstration of the workflow, "
          "not evidence about where emotion lives in large models)")
    print(f"wrote {result.out}")
    return 0

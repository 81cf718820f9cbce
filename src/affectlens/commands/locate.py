"""``affectlens locate BASE TUNED [TUNED ...]``: where did fine-tuning change the model?"""

from __future__ import annotations

import argparse

from . import options as o


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "locate",
        help="module-wise weight change (paper Eqs. 1-2) of tuned models or adapters vs a base",
        description="For every tuned model (full checkpoint dir/file, or a PEFT adapter dir) and every "
        "layer x module x param: l2=||dW||_F, relative=||dW||_F/||W||_F, rms=||dW||_F/sqrt(n); "
        "element-wise change distributions; heatmaps; a module ranking and the locus.",
    )
    p.add_argument("base", help="base checkpoint: HF dir, .safetensors, .gguf, or 'smollm2'")
    p.add_argument("tuned", nargs="+", help="tuned checkpoints or PEFT adapter dirs")
    p.add_argument("--labels", help="comma-separated names for the tuned models (default: their paths)")
    p.add_argument("--no-distribution", action="store_true",
                   help="skip element-wise histograms (LoRA norms then never form BA)")
    o.add_number(p, "--distribution-sample", o.integer(0), metavar="N", default=None,
                 help="elements per module distribution; a larger module is sampled systematically and "
                      "summary.json gives the sample and its error (default 4194304; 0: every element)")
    o.run_dir(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..locate.weight_change import locate

    labels = o.split_list(args.labels)
    extra = {} if args.distribution_sample is None else {"distribution_sample": args.distribution_sample}
    result = locate(args.base, args.tuned, labels=labels, out=args.out, force=args.force,
                    allow_pickle=args.allow_pickle, distribution=not args.no_distribution, **extra)
    print(result.table())
    for line in result.notes():
        print(line)
    print(f"wrote {result.out}")
    return 0

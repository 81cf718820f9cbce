"""``affectlens params CONFIG_OR_MODEL --modules SEL``: trainable parameters from config.json."""

from __future__ import annotations

import argparse

from . import options as o


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "params",
        help="LoRA / full fine-tuning parameter counts of a module selection (config only)",
        description="Count LoRA parameters r*(in+out) per layer and module (GQA aware) and full "
        "fine-tuning parameters in*out(+bias), and the share of a reference selection. Reads only "
        "config.json (or GGUF metadata); no weights are loaded. The LoRA rank defaults to tune's "
        "(AffectGPT used 16: --rank 16).",
    )
    p.add_argument("model", help="config.json, model dir, .gguf file, or 'smollm2'")
    o.modules(p)
    o.rank(p)
    p.add_argument("--reference", default="all", help="selection to compare against")
    o.layers(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..params import count_params

    report = count_params(args.model, args.modules, rank=args.rank, reference=args.reference,
                          layers=args.layers)
    print(o.json_text(report.to_dict()) if args.json else report.table())
    return 0

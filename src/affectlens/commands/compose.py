"""``affectlens transfer`` (sufficiency) and ``affectlens ablate`` (necessity)."""

from __future__ import annotations

import argparse

from ..vocab import ABLATION_MODES
from . import options as o


def register(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser(
        "transfer",
        help="BASE with only the selected modules taken from a fine-tuned DONOR (full or LoRA)",
        description="Parameter inheritance: write BASE with the selected modules from DONOR. A full "
                    "donor gives an HF model dir; a LoRA donor gives a PEFT adapter dir restricted "
                    "to the selection (and OUT/merged with --merge).",
    )
    t.add_argument("base", help="base model: HF dir, .safetensors, or 'smollm2'")
    t.add_argument("donor", help="fine-tuned model dir or PEFT LoRA adapter dir")
    o.modules(t)
    o.layers(t)
    t.add_argument("--merge", action="store_true", help="LoRA donor: also write the merged model to OUT/merged")
    t.add_argument("--max-shard-size", default="5GB", help="shard size of written models")
    o.run_dir(t, "output dir")
    t.set_defaults(func=_transfer)

    a = sub.add_parser(
        "ablate",
        help="MODEL with the selected (or an equal-size control) modules destroyed",
        description="Necessity: reset modules to BASE, drop their LoRA (zero-delta), zero them, "
                    "replace them by their mean, or replace their fine-tuning delta by seeded noise "
                    "of the same Frobenius norm. Writes an HF model dir (LoRA models are merged).",
    )
    a.add_argument("model", help="tuned model dir or PEFT LoRA adapter dir")
    o.modules(a)
    kind = a.add_argument("--ablation", required=True, choices=ABLATION_MODES,
                          help="reset (to BASE), zero-delta (drop the LoRA), zero, mean, or noise "
                               "(delta-norm Gaussian)")
    o.renamed(a, "--mode", kind)
    a.add_argument("--base", default=None, help="base model (needed by reset, zero-delta, noise)")
    o.layers(a)
    o.seed(a, help="noise seed")
    a.add_argument("--control", action="store_true",
                   help="ablate the equal-parameter-count control selection instead (gate_proj -> up_proj, ...)")
    a.add_argument("--max-shard-size", default="5GB", help="shard size of the written model")
    o.run_dir(a, "output dir")
    a.set_defaults(func=_ablate)


def _transfer(args: argparse.Namespace) -> int:
    from ..interventions.transfer import transfer

    res = transfer(args.base, args.donor, args.modules, args.out, layers=args.layers, merge=args.merge,
                   force=args.force, max_shard_size=args.max_shard_size, allow_pickle=args.allow_pickle)
    print(res.line())
    return 0


def _ablate(args: argparse.Namespace) -> int:
    from ..interventions.ablate import ablate

    res = ablate(args.model, args.modules, args.ablation, args.out, base=args.base, layers=args.layers,
                 seed=args.seed, control=args.control, force=args.force,
                 max_shard_size=args.max_shard_size, allow_pickle=args.allow_pickle)
    print(res.line())
    return 0

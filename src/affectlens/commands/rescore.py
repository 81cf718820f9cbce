"""``affectlens rescore``: re-decide a saved closed-set run under another calibration (no model)."""

from __future__ import annotations

import argparse

from ..vocab import CALIBRATIONS
from . import options as o


def register(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser(
        "rescore",
        help="re-score a closed-set evaluate run under another calibration, from its saved scores (no model)",
        description="Re-decide an evaluate run (closed mode) from the label log-likelihoods and content-free "
                    "reference scores it kept in scores.npz: every metric, CI, per-class score and confusion "
                    "matrix is recomputed under --calibration, as a fresh `affectlens evaluate --calibration` "
                    "of the same model and data would report them, in seconds. Writes a run directory of "
                    "evaluate's shape; its manifest.json names the source run (rescored_from).",
    )
    r.add_argument("run", help="run directory written by `affectlens evaluate --mode closed`")
    r.add_argument("--calibration", choices=CALIBRATIONS, required=True,
                   help="none: the raw log-likelihoods; contextual: content-free inputs; pmi: the prompt "
                        "without its input")
    r.add_argument("--bootstrap", type=int, default=None, metavar="N",
                   help="bootstrap resamples for CIs (0: none; default: the source run's)")
    o.run_dir(r, pickle=False)
    r.set_defaults(func=_rescore)


def _rescore(args: argparse.Namespace) -> int:
    from ..evaluate.rescoring import rescore_run

    res = rescore_run(args.run, args.calibration, args.out, force=args.force, n_boot=args.bootstrap)
    print(res.table())
    print(f"-> {args.out}")
    return 0

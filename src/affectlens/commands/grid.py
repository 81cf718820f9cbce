"""``affectlens grid CONFIG.yaml --out DIR``: Tables 1-2 and Fig. 9 from one YAML."""

from __future__ import annotations

import argparse

from . import options as o


def register(sub: argparse._SubParsersAction) -> None:
    g = sub.add_parser(
        "grid",
        help="evaluate transfer/tune/ablate/reference variants on every task; resumable",
        description="Run a grid YAML (see examples/): every variant x seed is one cell, written "
                    "atomically; rerunning resumes without recomputing finished cells. Writes "
                    "grid.csv, table.md (best bold, 95 % CIs over seeds), summary.json and "
                    "frontier.png (trainable params vs mean score). The YAML's budget is a TuneConfig "
                    "(steps, rank, lr required; alpha, dropout, batch_size, max_length, warmup default "
                    "as in `affectlens tune`) plus seeds.",
    )
    g.add_argument("config", help="grid YAML")
    g.add_argument("--out", required=True,
                   help="run dir (an existing grid dir is resumed; any other non-empty dir is refused)")
    g.add_argument("--force", action="store_true",
                   help="use an existing grid dir whose grid config differs (changed cells are recomputed; "
                   "default: refuse)")
    o.allow_pickle(g)
    g.set_defaults(func=_grid)


def _grid(args: argparse.Namespace) -> int:
    from ..grid import run_grid

    res = run_grid(args.config, args.out, force=args.force, allow_pickle=args.allow_pickle)
    print(f"{res.computed} cell(s) computed, {res.reused} reused -> {res.out}")
    return 0

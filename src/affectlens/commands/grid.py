"""``affectlens grid CONFIG.yaml --out DIR``: Tables 1-2 and Fig. 9 from one YAML."""

from __future__ import annotations

import argparse

from ..errors import AffectlensError
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
                    "as in `affectlens tune`) plus seeds. With --executor ray or slurm each cell is a task on "
                    "that engine (adapter-training cells first, then the cells that read adapters); the "
                    "cell files stay the record, so a killed worker's cell is simply run again by the "
                    "next run.",
    )
    g.add_argument("config", help="grid YAML")
    g.add_argument("--out", required=True,
                   help="run dir (an existing grid dir is resumed; any other non-empty dir is refused)")
    g.add_argument("--force", action="store_true",
                   help="use an existing grid dir whose grid config differs (changed cells are recomputed; "
                   "default: refuse)")
    o.allow_pickle(g)
    o.device(g)
    o.dtype(g)
    e = g.add_argument_group("where the cells run")
    e.add_argument("--executor", choices=("serial", "ray", "slurm"), default="serial",
                   help="serial: one after another in this process (default); ray: each cell a Ray task "
                   "(pip install 'affectlens[ray]'); slurm: each cell a Slurm job through submitit "
                   "(pip install 'affectlens[slurm]'). Adapter-training cells run first, then the rest")
    e.add_argument("--address", default=None, metavar="ADDR",
                   help="an existing Ray cluster ('auto' = the one `ray start --head` made here, or "
                   "HOST:PORT); default: a local Ray runtime on this machine's cores")
    o.add_number(e, "--gpus-per-cell", o.number(0), default=0.0, metavar="N",
                 help="GPUs each cell reserves (Ray allows fractions, e.g. 0.5: two cells per GPU)")
    o.add_number(e, "--cpus-per-cell", o.integer(1), default=1, metavar="N",
                 help="CPU cores each cell reserves (and its torch threads, unless AFFECTLENS_THREADS is set)")
    e.add_argument("--slurm-partition", default=None, metavar="NAME", help="Slurm partition of the cell jobs")
    o.add_number(e, "--timeout-min", o.integer(1), default=240, metavar="MIN",
                 help="Slurm time limit of one cell job, in minutes")
    g.set_defaults(func=_grid)


def _grid(args: argparse.Namespace) -> int:
    from ..grid import ExecutorSpec, run_grid

    opts: dict[str, object] = {}
    if args.executor == "slurm":
        opts["timeout_min"] = args.timeout_min
        if args.slurm_partition:
            opts["slurm_partition"] = args.slurm_partition
    elif args.slurm_partition:
        raise AffectlensError("--slurm-partition needs --executor slurm")
    spec = ExecutorSpec(args.executor, address=args.address, gpus_per_cell=args.gpus_per_cell,
                        cpus_per_cell=args.cpus_per_cell, options=opts)
    res = run_grid(args.config, args.out, force=args.force, allow_pickle=args.allow_pickle, executor=spec,
                   device=args.device, dtype=args.dtype)
    print(f"{res.computed} cell(s) computed, {res.reused} reused -> {res.out}")
    return 0

"""Grids: Tables 1-2 and Fig. 9 of the gate_proj study as one YAML each.

A grid is a list of *variants* of one base model (``grid.variants``: tune,
reference, transfer, ablate), each evaluated on every task, over seeds.

- ``config``   the YAML as a typed, validated ``GridConfig`` and the cell keys
- ``variants`` one class per kind: its fields, its checks, how it builds its model
- ``inputs``   validation against the base before the first cell; content fingerprints
- ``runner``   the resumable run: marker, cells, one loaded base (``run_grid``)
- ``executors`` the cells on Ray or Slurm (submitit): waves, jobs, the worker side
- ``results``  typed cells and task results
- ``stats``    means and 95 % CIs over seeds, control tasks, the frontier
- ``report``   grid.csv, table.md, summary.json, frontier.png (``plots.frontier``)
"""

from __future__ import annotations

from .config import EvalSpec, GridConfig, assign_keys, load_config
from .executors import ENGINES, ExecutorSpec
from .inputs import content_id, fingerprint_inputs, validate_config
from .report import REPORT_FILES, TIMING_COLUMNS, report
from .results import Cell, Cost, TaskResult
from .runner import MARKER, GridResult, run_grid
from .stats import control_task_names, mean_ci
from .variants import KINDS, Variant

__all__ = ["ENGINES", "KINDS", "MARKER", "REPORT_FILES", "TIMING_COLUMNS", "Cell", "Cost", "EvalSpec",
           "ExecutorSpec", "GridConfig", "GridResult", "TaskResult", "Variant", "assign_keys", "content_id",
           "control_task_names", "fingerprint_inputs", "load_config", "mean_ci", "report", "run_grid",
           "validate_config"]

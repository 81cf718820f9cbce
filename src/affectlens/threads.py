"""A deliberate thread policy for torch on shared machines.

torch starts one intra-op thread per visible core. On a 2-core machine that
other processes also use, that oversubscribes the cores and small-tensor
work slows 10-20x (measured: a LoRA step went from 4.5 CPU-s to 33-65 s wall
under load). The policy: use the cores this process may run on (its CPU
affinity, which also reflects container limits) minus the ones other work
keeps busy (the 1-minute load average), at least one. A user's explicit
choice always wins: ``AFFECTLENS_THREADS``, or ``OMP_NUM_THREADS`` /
``MKL_NUM_THREADS`` set in the environment.
"""

from __future__ import annotations

import os

from .errors import AffectlensError


def available_cores() -> int:
    """Cores this process may run on (affinity / cgroup-aware where the OS says so)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)


def busy_cores() -> float:
    """Cores other work keeps busy, from the 1-minute load average (0 where unknown)."""
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return 0.0


def choose_threads(cores: int, load: float, requested: str | None = None) -> int:
    """Threads for torch: ``requested`` if given, else the idle share of ``cores`` (at least 1)."""
    if requested is not None and requested.strip():
        try:
            n = int(requested)
        except ValueError:
            raise AffectlensError(f"AFFECTLENS_THREADS must be a whole number, not {requested!r}") from None
        if n < 1:
            raise AffectlensError(f"AFFECTLENS_THREADS must be >= 1, not {n}")
        return n
    return max(1, min(cores, int(cores - load + 0.5)))


def apply_thread_policy() -> int | None:
    """Apply the policy; returns the thread count, or None when the user's OMP/MKL setting is
    left alone. Sets ``OMP_NUM_THREADS`` for a torch imported later (so the CLI need not import
    torch to decide) and ``torch.set_num_threads`` if torch is already imported."""
    import sys

    requested = os.environ.get("AFFECTLENS_THREADS")
    if requested is None and (os.environ.get("OMP_NUM_THREADS") or os.environ.get("MKL_NUM_THREADS")):
        return None
    n = choose_threads(available_cores(), busy_cores(), requested)
    os.environ["OMP_NUM_THREADS"] = str(n)
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n

"""locate's figures, drawn by a child process that imports matplotlib while the tensor pass runs.

matplotlib's import (1-2 CPU-seconds) and PNG rendering are Python that
holds the GIL: on a thread beside the tensor workers they delayed every
torch op's return of the GIL (the tensor pass measured 1.6x slower). A
child ``python -m affectlens.locate.figures`` imports matplotlib at once, in
parallel with the pass, then reads the figure jobs (pickled, on its stdin),
draws and saves them, and exits. ``subprocess`` rather than
``multiprocessing``: a user's script without a ``__main__`` guard is never
re-imported. Small passes (where the import would not overlap anything)
and a child that cannot start or fails draw in this process instead.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

# (path, name of the affectlens.plots function, its arguments)
Job = tuple[str, str, tuple[Any, ...]]
MIN_PASS_BYTES = 256 << 20  # below this the pass is shorter than matplotlib's import: no child


def draw_here(jobs: list[Job]) -> None:
    """Draw and save the figures in this process."""
    from .. import plots

    for path, fn, args in jobs:
        plots.save(getattr(plots, fn)(*args), path)


class FigureProcess:
    """A child that has imported matplotlib and will draw the jobs it is given (or nothing: ``close``)."""

    def __init__(self, pass_bytes: int) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        if pass_bytes < MIN_PASS_BYTES or "matplotlib.pyplot" in sys.modules:
            return  # already imported here, or too little to overlap: drawing here is cheaper
        root = str(Path(__file__).resolve().parents[2])  # the child imports this very copy of affectlens
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
        try:
            self.proc = subprocess.Popen([sys.executable, "-m", "affectlens.locate.figures"], stdin=subprocess.PIPE,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        except OSError:
            self.proc = None

    def draw(self, jobs: list[Job]) -> None:
        """Draw ``jobs`` (in the child when it runs; here if it failed, so the figures are always made)."""
        proc, self.proc = self.proc, None
        if proc is not None:
            try:
                proc.communicate(pickle.dumps(jobs, protocol=pickle.HIGHEST_PROTOCOL))
                if proc.returncode == 0:
                    return
            except OSError:
                proc.kill()
                proc.wait()
        draw_here(jobs)

    def close(self) -> None:
        """Stop a child that got no jobs (the pass failed)."""
        proc, self.proc = self.proc, None
        if proc is not None:
            proc.kill()
            proc.communicate()


def main() -> int:
    from .. import plots

    plots.pyplot()  # the import is the point: done while the parent streams tensors
    data = sys.stdin.buffer.read()
    if not data:
        return 0
    draw_here(pickle.loads(data))
    return 0


if __name__ == "__main__":
    code = main()
    # Every PNG is written and closed: skip the interpreter's teardown of matplotlib and numpy (~0.1 s
    # that the parent would otherwise wait for before it can rename the run into place).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

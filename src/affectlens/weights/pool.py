"""Tensor-parallel workers for streaming passes over checkpoints (locate; issue 13).

Per-element work on a 4M-element chunk is a few milliseconds of torch ops,
file reads and a bincount, all of which release the GIL but several of which
run on one core (reads, bincount). So the cores are used by workers over
tensors, each with one torch thread, rather than by one worker whose ops
split across threads. Each worker keeps its own float32 and read buffers,
reused chunk after chunk: fresh 16 MB tensors per op cost page faults that
were measured at up to 2x the arithmetic. Results come back in submission
order, so sums do not depend on the number of workers.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import torch

from ..threads import apply_thread_policy

T = TypeVar("T")
R = TypeVar("R")


class Scratch:
    """One worker's reusable buffers: two raw read buffers, four small (in-cache), two sample and four full chunks."""

    def __init__(self) -> None:
        self.size = self.raw_size = self.small_size = self.sample_size = 0
        self.bufs: list[torch.Tensor] = []
        self.samples: list[torch.Tensor] = []
        self.smalls: list[torch.Tensor] = []
        self.raw: list[torch.Tensor] = []

    def raw_for(self, n: int) -> list[torch.Tensor]:
        """Two raw (uint8) read buffers large enough for ``n`` elements of any dtype (8 bytes each)."""
        if n > self.raw_size:
            self.raw_size = n
            self.raw = [torch.empty(8 * n, dtype=torch.uint8) for _ in range(2)]
        return self.raw

    def small(self, n: int) -> list[torch.Tensor]:
        """Four float32 views of ``n`` elements for the in-cache steps of a pass."""
        if n > self.small_size:
            self.small_size = n
            self.smalls = [torch.empty(n, dtype=torch.float32) for _ in range(4)]
        return [b[:n] for b in self.smalls]

    def sample(self, n: int) -> list[torch.Tensor]:
        """Two float32 views of ``n`` elements: a chunk's sampled base and change values."""
        if n > self.sample_size:
            self.sample_size = n
            self.samples = [torch.empty(n, dtype=torch.float32) for _ in range(2)]
        return [b[:n] for b in self.samples]

    def get(self, n: int) -> list[torch.Tensor]:
        """Four float32 views of ``n`` elements (grown when a chunk is larger than any before); raw buffers too."""
        self.raw_for(n)
        if n > self.size:
            self.size = n
            self.bufs = [torch.empty(n, dtype=torch.float32) for _ in range(4)]
        return [b[:n] for b in self.bufs]


class TensorWorkers:
    """``map(fn, items)`` over worker threads (one torch thread each), results in order.

    ``workers`` defaults to the thread policy's count (``AFFECTLENS_THREADS``,
    OMP_NUM_THREADS, or the idle cores); with one worker everything runs inline.
    torch's intra-op thread count is set to 1 while the pool is open (with one
    worker too: the passes work on in-cache steps of ~64K elements, where
    splitting an op over threads costs more in wake-ups than it saves, and
    on a loaded machine each such op was measured 100x slower) and put back after.
    """

    def __init__(self, workers: int | None = None) -> None:
        if workers is None:
            workers = apply_thread_policy() or torch.get_num_threads()
        self.workers = max(1, int(workers))
        self._saved_threads = torch.get_num_threads()
        self._local = threading.local()
        self._pool: ThreadPoolExecutor | None = None

    def scratch(self) -> Scratch:
        s = getattr(self._local, "scratch", None)
        if s is None:
            s = self._local.scratch = Scratch()
        return s

    def __enter__(self) -> TensorWorkers:
        self._saved_threads = torch.get_num_threads()
        torch.set_num_threads(1)
        if self.workers > 1:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="affectlens-tensor")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        torch.set_num_threads(self._saved_threads)

    def _call(self, fn: Callable[[T, Scratch], R], item: T) -> R:
        return fn(item, self.scratch())

    def map(self, fn: Callable[[T, Scratch], R], items: Iterable[T]) -> Iterator[R]:
        """``fn(item, scratch)`` for each item, yielded in order; at most 2 x workers in flight."""
        if self._pool is None:
            for item in items:
                yield fn(item, self.scratch())
            return
        pool = self._pool
        pending: deque[Future[R]] = deque()
        for item in items:
            pending.append(pool.submit(self._call, fn, item))
            if len(pending) >= 2 * self.workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


__all__ = ["Scratch", "TensorWorkers"]

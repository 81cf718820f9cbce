"""The one progress facility: a bar on a terminal, timestamped lines in a log.

Long runs are often watched through a file (nohup, Slurm, CI), where a tqdm
bar prints nothing useful. So :class:`Progress` draws a tqdm bar only when
its stream is a terminal; on a file or pipe it writes a line such as
``2026-12-07 19:20:31 affectlens: evaluate emotion: 57/140 (41 %) 3.2 ex/s, ETA 0:00:26``
each time 5 % more is done or 30 s passed since the last line (never more
often than every 5 s), and a last line when it closes. A background
heartbeat keeps the 30 s promise while one slow item runs.

Items need not cost the same: ``weights`` (one expected cost per item) or
``update(cost=...)`` make the percentage and the ETA count work, not items,
so a grid whose first cell trains an adapter does not promise the rest at
that cell's pace. :func:`step` reports a single long step without a count
(a start line with its estimate, an end line with the time it took).

AFFECTLENS_NO_PROGRESS=1, or ``enabled=False``, silences all of it.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import IO, Any, TypeVar

T = TypeVar("T")

INTERVAL_S = 30.0  # a log line at least this often while work is under way
MIN_GAP_S = 5.0  # and never more often than this (a fast loop fills no log)
STEP_FRACTION = 0.05  # a line each time another 5 % is done
_HEARTBEAT_POLL_S = 5.0


def silenced() -> bool:
    """AFFECTLENS_NO_PROGRESS set to anything but empty/0: no bars, no progress lines."""
    return os.environ.get("AFFECTLENS_NO_PROGRESS", "") not in ("", "0")


def _isatty(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or exotic stream is no terminal
        return False


def clock_time(seconds: float) -> str:
    """``0:01:03``: elapsed times and ETAs in log lines."""
    s = max(0, int(round(seconds)))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def about(seconds: float) -> str:
    """A rough estimate in words: ``about 40 s``, ``about 7 min``, ``about 1.5 h``."""
    if seconds < 90:
        return f"about {max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"about {round(seconds / 60)} min"
    return f"about {seconds / 3600:.1f} h"


def log_line(msg: str, stream: IO[str] | None = None) -> None:
    """Write one ``<date> <time> affectlens: <msg>`` line and flush (so a log shows it at once)."""
    out = stream if stream is not None else sys.stderr
    out.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} affectlens: {msg}\n")
    out.flush()


def stage(msg: str, *, enabled: bool = True, stream: IO[str] | None = None) -> None:
    """One timestamped line announcing a stage (unless progress is silenced)."""
    if enabled and not silenced():
        log_line(msg, stream)


@contextlib.contextmanager
def step(msg: str, estimate_s: float | None = None, *, enabled: bool = True, stream: IO[str] | None = None,
         clock: Callable[[], float] = time.monotonic) -> Iterator[None]:
    """Report one long step without a count: ``msg (about 1 min) ...`` now, ``msg: done in 0:01:03`` after.

    A step that raises gets no end line: the error that follows says what happened.
    """
    on = enabled and not silenced()
    if on:
        log_line(f"{msg} ({about(estimate_s)}) ..." if estimate_s else f"{msg} ...", stream)
    t0 = clock()
    yield
    if on:
        log_line(f"{msg}: done in {clock_time(clock() - t0)}", stream)


class Progress:
    """Progress of ``total`` items: a tqdm bar on a terminal, timestamped lines elsewhere.

    ``weights`` gives each item's expected cost (in any unit, in the order the
    items are done); ``update(n, cost=...)`` says what a finished item cost
    when items finish out of order. The percentage and ETA then follow cost.
    ``skip`` counts items that were done without work (cached), taking their
    cost out of the estimate. ``stream`` defaults to stderr; ``clock``
    (monotonic seconds) is injectable so tests need not sleep (an injected
    clock starts no heartbeat thread: call :meth:`tick` instead).
    """

    def __init__(self, total: int | None, desc: str, unit: str = "it", enabled: bool = True, *,
                 weights: Sequence[float] | None = None, stream: IO[str] | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        self.desc, self.unit = desc, unit
        self.bar: Any = None  # the tqdm bar on a terminal (``set_postfix`` reaches it)
        self.weights = [float(w) for w in weights] if weights is not None else None
        if self.weights is not None and any(not math.isfinite(w) or w < 0 for w in self.weights):
            raise ValueError(f"progress weights must be finite and >= 0: {self.weights}")
        if self.weights is not None and total is not None and total != len(self.weights):
            raise ValueError(f"progress of {total} items got {len(self.weights)} weights")
        self.total = total if total is not None or self.weights is None else len(self.weights)
        self.total_cost = sum(self.weights) if self.weights is not None else (
            float(total) if total is not None else None)
        self.done, self.done_cost, self._next = 0, 0.0, 0
        self._postfix = ""
        self._stream = stream if stream is not None else sys.stderr
        self._clock = clock or time.monotonic
        self._t0 = self._last_t = self._clock()
        self._last_bucket, self._lines = 0, 0
        self._lock = threading.Lock()
        self._stop: threading.Event | None = None
        self.logging = False
        if not enabled or silenced():
            return
        if _isatty(self._stream):
            self._open_bar()
        else:
            self.logging = True
            if clock is None:
                self._start_heartbeat()

    @property
    def active(self) -> bool:
        """Whether anything is shown (a bar or log lines)."""
        return self.bar is not None or self.logging

    @property
    def weighted(self) -> bool:
        return self.weights is not None

    def _open_bar(self) -> None:
        from tqdm.auto import tqdm

        if self.weighted:  # the bar runs in cost units; its label says how many items are done
            self.bar = tqdm(total=self.total_cost, desc=self._count(), leave=False, file=self._stream,
                            bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}{postfix}]")
        else:
            self.bar = tqdm(total=self.total, desc=self.desc, unit=self.unit, leave=False, file=self._stream)

    def _start_heartbeat(self) -> None:
        self._stop = stop = threading.Event()
        ref = weakref.ref(self)

        def beat() -> None:  # holds the Progress weakly: a bar never closed still stops when dropped
            while not stop.wait(_HEARTBEAT_POLL_S):
                p = ref()
                if p is None:
                    return
                try:
                    p.tick()
                except (OSError, ValueError):  # the stream was closed under us: stop beating
                    return
                del p

        threading.Thread(target=beat, name=f"affectlens-progress-{self.desc}", daemon=True).start()

    # -- counting ---------------------------------------------------------------------------------

    def _planned(self, n: int) -> float:
        """The cost of the next ``n`` items in order (``weights``), else ``n``."""
        if self.weights is None:
            return float(n)
        cost = sum(self.weights[self._next:self._next + n])
        self._next += n
        return cost

    def update(self, n: int = 1, cost: float | None = None) -> None:
        """``n`` more items done, together costing ``cost`` (default: their weights; unweighted: ``n``)."""
        if not self.active:
            return
        with self._lock:
            c = self._planned(n) if cost is None or not self.weighted else float(cost)
            self.done += n
            self.done_cost += c
            if self.bar is not None:
                if self.weighted:
                    self.bar.set_description_str(self._count(), refresh=False)
                self.bar.update(c if self.weighted else n)
            elif not self._finished() and self._due(self._clock()):  # the last line is close()'s
                self._emit()

    def skip(self, n: int = 1, cost: float | None = None) -> None:
        """``n`` items found done (cached): counted, but their cost leaves the total and the rate."""
        if not self.active:
            return
        with self._lock:
            c = self._planned(n) if cost is None or not self.weighted else float(cost)
            self.done += n
            if self.total_cost is not None:
                self.total_cost = max(self.done_cost, self.total_cost - c)
            if self.bar is not None:
                if self.weighted:
                    self.bar.total = self.total_cost
                    self.bar.set_description_str(self._count())
                else:
                    self.bar.update(n)

    def set_postfix(self, **kw: Any) -> None:
        """Extra fields (e.g. ``loss``) shown on the bar and at the end of log lines."""
        self._postfix = ", ".join(f"{k} {v}" for k, v in kw.items())
        if self.bar is not None:
            self.bar.set_postfix(**kw)

    def tick(self) -> None:
        """Write a line if 30 s passed since the last (the heartbeat calls this while an item runs)."""
        if not self.logging:
            return
        with self._lock:
            if self._clock() - self._last_t >= INTERVAL_S:
                self._emit()

    # -- the log line -----------------------------------------------------------------------------

    def fraction(self) -> float | None:
        """Share of the work done (by cost when weighted); None without a total."""
        if self.total_cost is None:
            return None
        return 1.0 if self.total_cost <= 0 else min(1.0, self.done_cost / self.total_cost)

    def eta(self, now: float | None = None) -> float | None:
        """Seconds left at the pace so far, counting cost; None before anything costly is done."""
        elapsed = (self._clock() if now is None else now) - self._t0
        if self.total_cost is None or self.done_cost <= 0 or elapsed <= 0:
            return None
        return max(0.0, self.total_cost - self.done_cost) * elapsed / self.done_cost

    def _due(self, now: float) -> bool:
        since = now - self._last_t
        if since < MIN_GAP_S:
            return False
        frac = self.fraction()
        crossed = frac is not None and math.floor(frac / STEP_FRACTION + 1e-9) > self._last_bucket
        return crossed or since >= INTERVAL_S

    def _finished(self) -> bool:
        return self.total is not None and self.done >= self.total

    def _count(self) -> str:
        """The weighted bar's label: ``desc done/total unit``."""
        return f"{self.desc} {self.done}/{self.total} {self.unit}"

    def _rate(self, elapsed: float) -> str:
        if self.done <= 0 or elapsed <= 0:
            return ""
        per_s = self.done / elapsed
        if per_s >= 1:
            return f"{per_s:.1f} {self.unit}/s"
        s_per = 1 / per_s
        return f"{s_per:.1f} s/{self.unit}" if s_per < 120 else f"{s_per / 60:.1f} min/{self.unit}"

    def line(self, now: float | None = None) -> str:
        """``desc: done/total (pct %) rate, ETA h:mm:ss`` as of ``now``."""
        now = self._clock() if now is None else now
        frac, eta = self.fraction(), self.eta(now)
        parts = [f"{self.desc}: {self.done}/{self.total}" if self.total is not None else f"{self.desc}: {self.done}"]
        if frac is not None:
            parts.append(f" ({100 * frac:.0f} %{' of the work' if self.weighted else ''})")
        rate = self._rate(now - self._t0)
        parts.append(f" {rate}" if rate else "")
        if frac is not None:
            parts.append(f", ETA {clock_time(eta)}" if eta is not None else ", ETA unknown")
        if self._postfix:
            parts.append(f", {self._postfix}")
        return "".join(parts)

    def _emit(self) -> None:
        now = self._clock()
        log_line(self.line(now), self._stream)
        self._last_t, self._lines = now, self._lines + 1
        frac = self.fraction()
        if frac is not None:
            self._last_bucket = math.floor(frac / STEP_FRACTION + 1e-9)

    def close(self) -> None:
        """End the bar; in a log, a last line (finished, or where it stopped) unless it was short and quiet."""
        if self._stop is not None:
            self._stop.set()
            self._stop = None
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if not self.logging:
            return
        self.logging = False
        now = self._clock()
        elapsed = now - self._t0
        if self._lines == 0 and elapsed < MIN_GAP_S:
            return
        finished = self.total is None or self._finished()
        rate = self._rate(elapsed)
        tail = f", {rate}" if rate else ""
        what = f"{self.done}/{self.total}" if self.total is not None else f"{self.done}"
        log_line(f"{self.desc}: {what} {self.unit} {'done in' if finished else 'stopped after'} "
                 f"{clock_time(elapsed)}{tail}", self._stream)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def progress(iterable: Iterable[T], desc: str, total: int | None = None, unit: str = "it", *,
             weights: Sequence[float] | None = None, enabled: bool = True) -> Iterable[T]:
    """``iterable`` with :class:`Progress` ticking once per item (``weights``: each item's cost)."""
    bar = Progress(total if total is not None else _len(iterable), desc, unit, enabled, weights=weights)
    if not bar.active:
        return iterable
    return _ticking(iterable, bar)


def _len(iterable: Iterable[Any]) -> int | None:
    try:
        return len(iterable)  # type: ignore[arg-type]
    except TypeError:
        return None


def _ticking(iterable: Iterable[T], bar: Progress) -> Iterator[T]:
    try:
        for item in iterable:
            yield item
            bar.update(1)
    finally:
        bar.close()


__all__ = ["Progress", "about", "clock_time", "log_line", "progress", "silenced", "stage", "step"]

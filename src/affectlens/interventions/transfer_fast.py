"""``transfer``'s common case without torch: two safetensors checkpoints, a full donor, one dtype.

Then the output is BASE's bytes with the selected tensors' byte ranges taken
from DONOR: every tensor is copied in-kernel (``os.copy_file_range``), the
headers are written once, and the checks (finite, donor differs from BASE)
read raw bytes with numpy bit masks. Importing torch would cost more than the
whole copy, so this module never does; any other case (a LoRA donor, GGUF or
pickle, fused tensors transferred in part, a dtype change, float8) returns
None and ``transfer`` takes the general path, which writes the same bytes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from ..selection import Echo, Selection, select
from ..weights.compat import check_architecture
from ..weights.finite import FiniteMemo
from ..weights.rawcopy import RAW_DTYPES, ByteReader, RawSafetensors
from ..weights.writer import ShardedWriter, parse_size
from .checkpoint import ComposeResult, copy_sidecars

if TYPE_CHECKING:
    from ..runs import RunDir


def fits(base: RawSafetensors, donor: RawSafetensors, sel: Selection) -> bool:
    """Can the selection be transferred by copying bytes? Whole tensors of the base's dtype and shape only."""
    if not all(base.st_dtype(n) in RAW_DTYPES for n in base.names()):
        return False
    for name, rows in sel.tensors.items():
        if rows is not None or name not in donor:
            return False
        if donor.st_dtype(name) != base.st_dtype(name) or donor.shape(name) != base.shape(name):
            return False
    return True


def raw_transfer(run: RunDir, base_path: Path, donor_path: Path, modules: str | Sequence[str],
                 layers: str | None, max_shard_size: str | int, echo: Echo) -> ComposeResult | None:
    """Write the transfer into ``run.path`` from bytes alone; None (nothing done or echoed) when it cannot.

    Same checks, messages and output bytes as the general path: DONOR's
    selected tensors must be finite and differ from BASE somewhere; BASE's
    copied tensors are checked on a second thread while the bytes are copied
    (unless ``FiniteMemo`` knows this version of their file), and a failed
    check aborts the write, so ``RunDir`` publishes nothing.
    """
    bstore = RawSafetensors.open(base_path)
    dstore = RawSafetensors.open(donor_path) if bstore is not None else None
    if bstore is None or dstore is None:
        return None
    lines: list[str] = []
    sel = select(bstore, modules, layers, lines.append, label=f"base {base_path.name}")
    if not fits(bstore, dstore, sel):
        return None
    for line in lines:
        echo(line)
    check_architecture(bstore, dstore, f"donor {dstore.path}", list(sel.tensors))
    memo = FiniteMemo()
    reader = ByteReader()
    touched = False
    for name in sel.tensors:
        known = memo.known(dstore, name)
        touched = reader.whole(dstore, bstore, name, check=not known, compare=not touched) or touched
        if not known:
            memo.checked(dstore, [name])
    if not touched:
        raise sel.unchanged("transfer", dstore, bstore)
    write(bstore, dstore, set(sel.tensors), run.path, max_shard_size, memo)
    copy_sidecars(base_path, run.path)
    memo.commit()
    info = {"donor_kind": "full", "tensors": sorted(sel.tensors), "params_transferred": sel.numel(bstore)}
    return ComposeResult(run.final, sel, info, "transfer")


def write(base: RawSafetensors, donor: RawSafetensors, whole: set[str], out: Path,
          max_shard_size: str | int, memo: FiniteMemo) -> list[Path]:
    """BASE's tensors in BASE's order, ``whole`` ones from DONOR, all copied in-kernel; BASE's checked meanwhile."""
    from ..runs import progress

    names = base.names()
    plan = [(n, base.shape(n), base.st_dtype(n)) for n in names]
    writer = ShardedWriter(out, parse_size(max_shard_size), plan=plan)

    def check_base() -> None:
        for n in names:
            if n not in whole:
                memo.check(base, [n])

    sources = [(donor if n in whole else base).location(n) for n in names]
    copying = [0]  # the index of the tensor being copied; -1 stops the read-ahead
    with ThreadPoolExecutor(2, thread_name_prefix="affectlens-check") as checker:
        checker.submit(prefetch, sources, copying)
        job = checker.submit(check_base)
        try:
            for i, name in enumerate(progress(names, "transferring", total=len(names), unit="tensor")):
                copying[0] = i
                if job.done():  # a failed check stops the copy early
                    job.result()
                src = donor if name in whole else base
                writer.add_raw(name, src.st_dtype(name), src.shape(name), *sources[i])
            job.result()
        except BaseException:
            job.cancel()
            copying[0] = -1
            writer.abort()
            raise
    return writer.close()


def prefetch(sources: list[tuple[Path, int, int]], copying: list[int], window: int = 512 << 20) -> None:
    """Ask the kernel to read ahead the ranges the copy will need next (a cold cache then reads in parallel).

    At most ``window`` bytes ahead of the tensor being copied (``copying[0]``;
    -1 stops), so a model larger than the page cache does not evict its own
    read-ahead before the copy reaches it.
    """
    advise = getattr(os, "posix_fadvise", None)
    if advise is None:
        return
    starts = [0]
    for _, _, n in sources:
        starts.append(starts[-1] + n)
    ahead = 0
    for path, off, n in sources:
        while copying[0] >= 0 and ahead - starts[copying[0]] > window:
            time.sleep(0.005)
        if copying[0] < 0:
            return
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return
        try:
            advise(fd, off, n, os.POSIX_FADV_WILLNEED)
        except OSError:
            return
        finally:
            os.close(fd)
        ahead += n


__all__ = ["fits", "prefetch", "raw_transfer", "write"]

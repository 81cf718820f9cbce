"""Sufficiency (paper §5.1, "parameter inheritance"): BASE with only the selected modules of a DONOR.

The donor is a full fine-tuned checkpoint or a LoRA adapter (merged on read).
``transfer_tensors`` is the one implementation: it resolves the selection,
checks the donor fits BASE, that every tensor read is finite and that the
donor differs from BASE somewhere in the selection, and yields the new
tensors. A grid applies them to a loaded model (``applied``); ``transfer``
streams them into a new HF model dir (or a restricted adapter dir) on disk.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import AffectlensError
from ..modules import FUSED
from ..selection import Echo, Rows, Selection, apply_rows, match_adapter, select
from ..weights.base import WeightStore
from ..weights.compat import check_architecture
from ..weights.finite import FiniteMemo, check_finite, check_store_finite, tensor_file
from .checkpoint import (
    ComposeResult,
    RawFrom,
    copy_sidecars,
    hf_model_dir,
    new_or_raw,
    write_adapter,
    write_checkpoint,
)

if TYPE_CHECKING:  # torch is imported where tensors are decoded: a raw-copy transfer never needs it
    import torch

    from ..models.merged import MergedStore
    from ..runs import RunDir
    from ..weights.lora import LoraAdapter
    from ..weights.safetensors_store import SafetensorsStore


class Transferred(Mapping[str, "torch.Tensor"]):
    """BASE's selected tensors as DONOR has them (only the selected rows of fused ones), by name.

    Streaming (``kept`` empty) computes each tensor on access, so a writer
    holds one tensor at a time; in-memory callers get them computed once.
    """

    def __init__(self, base: WeightStore, donor: WeightStore, selection: Selection) -> None:
        self.base, self.donor, self.selection = base, donor, selection
        self.kept: dict[str, torch.Tensor] = {}

    @property
    def whole(self) -> set[str]:
        """Tensors taken whole from the donor (a writer may copy their bytes raw)."""
        return {n for n, rows in self.selection.tensors.items() if rows is None}

    def compute(self, name: str) -> torch.Tensor:
        rows = self.selection.tensors[name]
        d = self.donor.get_finite(name)
        if rows is None:
            return d
        return apply_rows(self.base.get_finite(name), rows, lambda c, s: d[s].to(c.dtype))

    def __getitem__(self, name: str) -> torch.Tensor:
        if name in self.kept:
            return self.kept[name]
        if name not in self.selection.tensors:
            raise KeyError(name)
        return self.compute(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.selection.tensors)

    def __len__(self) -> int:
        return len(self.selection.tensors)


def transfer_tensors(base: Any, donor: Any, modules: str | Sequence[str],
                     layers: str | Sequence[int] | None = None, echo: Echo = print,
                     allow_pickle: bool = False, *, stream: bool = False,
                     label: str = "base", memo: FiniteMemo | None = None) -> tuple[Transferred, Selection]:
    """The selected tensors of DONOR (full or LoRA-merged) that replace BASE's, and the selection.

    Every tensor read must be finite, and the donor must differ from BASE
    somewhere in the selection (else the transfer would change nothing). With
    ``stream`` the tensors are only checked here and recomputed on access;
    whole tensors ``memo`` knows to be finite are then not read again, and
    once one differs from BASE the rest are not compared.
    """
    from ..models.merged import MergedStore, as_store
    from ..weights.safetensors_store import SafetensorsStore

    bstore = as_store(base, allow_pickle=allow_pickle)
    dstore = as_store(donor, base=bstore, allow_pickle=allow_pickle)
    sel = select(bstore, modules, layers, echo, label=label)
    if isinstance(dstore, MergedStore):
        sel = restrict_to_adapter(dstore, sel, echo)
        check_store_finite(dstore.adapter.store)
    what = f"adapter {dstore.path}" if isinstance(dstore, MergedStore) else f"donor {dstore.path}"
    check_architecture(bstore, dstore, what, list(sel.tensors))
    out = Transferred(bstore, dstore, sel)
    touched = False
    scratch: list[torch.Tensor] = []
    for name, rows in sel.tensors.items():
        if stream and rows is None and isinstance(dstore, SafetensorsStore) and isinstance(bstore, SafetensorsStore):
            # A whole tensor only passes through (its bytes are copied raw): checked in row chunks read
            # into two reused buffers, never decoded whole.
            known = memo is not None and memo.known(dstore, name)
            touched = whole_differs_finite(bstore, dstore, name, scratch, check=not known,
                                           compare=not touched) or touched
            if memo is not None and not known:
                memo.checked(dstore, [name])
            continue
        d = dstore.get_finite(name)
        # A base tensor the donor replaces whole never reaches the result: only partial ones must be finite.
        b = bstore.get(name) if rows is None else bstore.get_finite(name)
        touched = touched or differs(d, b, rows)
        if not stream:
            out.kept[name] = d if rows is None else apply_rows(b, rows, _rows_of(d))
        del d, b
    if not touched:
        raise sel.unchanged("transfer", dstore, bstore)
    return out, sel


def whole_differs_finite(base: SafetensorsStore, donor: SafetensorsStore, name: str,
                         scratch: list[torch.Tensor], chunk_bytes: int = 32 << 20, *, check: bool = True,
                         compare: bool = True) -> bool:
    """Is DONOR's ``name`` finite (else an error) and different from BASE's? Row chunks, reused buffers.

    Without ``check`` the donor is not checked (known finite); without
    ``compare`` nothing is compared (False); reading stops as soon as
    neither is left to do.
    """
    import torch

    what = f"tensor {name} of {tensor_file(donor, name)}"
    shape, dtype = donor.shape(name), donor.dtype(name)
    if not check and not compare:
        return False
    if len(shape) < 2 or shape != base.shape(name) or dtype != base.dtype(name):
        d = donor.get(name)
        if check:
            check_finite(d, what)
        return compare and differs(d, base.get(name), None)
    row = dtype.itemsize
    for k in shape[1:]:
        row *= int(k)
    step = max(1, chunk_bytes // max(row, 1))
    need = min(step, shape[0]) * row
    if not scratch or scratch[0].numel() < need:
        scratch[:] = [torch.empty(need, dtype=torch.uint8) for _ in range(2)]
    changed = False
    for r0 in range(0, shape[0], step):
        r1 = min(shape[0], r0 + step)
        d = donor.read_rows(name, r0, r1, out=scratch[0])
        if check:
            check_finite(d, what)
        if compare and not changed:
            changed = not torch.equal(d, base.read_rows(name, r0, r1, out=scratch[1]))
        if changed and not check:
            break
    return changed


def _rows_of(donor: torch.Tensor) -> Callable[[torch.Tensor, slice], torch.Tensor]:
    """For ``apply_rows``: the donor's rows, in the dtype of the tensor they go into."""
    return lambda cur, s: donor[s].to(cur.dtype)


def differs(new: torch.Tensor, old: torch.Tensor, rows: Rows) -> bool:
    """Does ``new`` change ``old`` in the selected rows (a dtype or shape change counts)?"""
    import torch

    if new.dtype != old.dtype or new.shape != old.shape:
        return True
    if rows is None:
        return not torch.equal(new, old)
    return any(not torch.equal(new[r0:r1], old[r0:r1]) for r0, r1 in rows)


def restrict_to_adapter(merged: MergedStore, sel: Selection, echo: Echo) -> Selection:
    """Restrict a LoRA donor to the selection; the adapter itself must cover every selected cell.

    Sets ``merged.only`` to the adapter modules the selection keeps and drops
    selected tensors the adapter never changes.
    """
    ad = merged.adapter
    rep = match_adapter(ad, sel.modules, sel.layers, prefix=f"LoRA adapter {ad.path}: ")
    echo(f"LoRA tensors in adapter {ad.path.name}:\n{rep.table()}")
    keep = set()
    for m in ad.modules.values():
        if m.parsed.scope != "module" or m.key.layer not in sel.layers:
            continue
        parts = FUSED.get(m.parsed.fused, ()) if m.parsed.fused else (m.key.module,)
        if any(x in sel.modules for x in parts):
            keep.add(m.path)
            if not all(x in sel.modules for x in parts):
                echo(f"note: {m.path} is a fused LoRA: an adapter written from it changes all of "
                     f"{','.join(parts)}; merged and in-memory results take only the selected rows")
    merged.only = keep
    names = {ad.target_weight_name(ad.modules[p]) for p in keep}
    out = Selection(sel.modules, sel.layers, rep)
    out.tensors = {n: r for n, r in sel.tensors.items() if n in names}
    return out


def lora_params(adapter: LoraAdapter, paths: Sequence[str]) -> int:
    """LoRA parameters (A and B) of the adapter modules ``paths``."""
    n = 0
    for p in paths:
        m = adapter.modules[p]
        n += adapter.store.numel(m.a_name) + adapter.store.numel(m.b_name)
    return n


def transfer(base: str | os.PathLike, donor: str | os.PathLike, modules: str | Sequence[str],
             out: str | os.PathLike, layers: str | None = None, merge: bool = False,
             force: bool = False, max_shard_size: str | int = "5GB", echo: Echo = print,
             allow_pickle: bool = False) -> ComposeResult:
    """BASE with only the selected modules from DONOR, written to ``out``.

    Full donor: an HF model dir. LoRA donor: a PEFT adapter dir holding only the
    selected modules' LoRA tensors, and with ``merge`` also ``out/merged``.
    Every tensor that goes into the output is checked to be finite before the
    output is published (BASE's, while their bytes are copied; tensors of a
    file version checked by an earlier run are remembered, ``FiniteMemo``); a
    donor equal to BASE in the whole selection is an error.
    """
    from ..models.resolve import resolve_model_path
    from ..runs import RunDir
    from .transfer_fast import raw_transfer

    # Common case (safetensors, full donor, one dtype): ``transfer_fast`` copies bytes and never imports torch.
    options = {"modules": modules, "layers": layers, "merge": merge, "max_shard_size": max_shard_size,
               "allow_pickle": allow_pickle}
    # Claimed first: an existing OUT or a concurrent run is refused before any tensor is read.
    with RunDir(out, command="transfer", force=force, options=options) as run, contextlib.ExitStack() as stack:
        base_path = hf_model_dir(base)
        donor_path = resolve_model_path(donor)
        run.inputs.update(base=base_path, donor=donor_path)
        result = raw_transfer(run, base_path, donor_path, modules, layers, max_shard_size, echo)
        if result is None:
            result = _decoding_transfer(run, stack, base_path, donor_path, modules, layers, merge, max_shard_size,
                                        echo, allow_pickle, out)
        run.json("compose.json", result.record())
    return result


def _decoding_transfer(run: RunDir, stack: contextlib.ExitStack, base_path: Path, donor_path: Path,
                       modules: str | Sequence[str], layers: str | None, merge: bool, max_shard_size: str | int,
                       echo: Echo, allow_pickle: bool, out: str | os.PathLike) -> ComposeResult:
    """The general path of ``transfer`` (any format, LoRA donors, dtype changes): tensors through torch."""
    from ..models.merged import MergedStore, as_store
    from ..weights.store import open_weights

    bstore = stack.enter_context(open_weights(base_path, allow_pickle=allow_pickle))
    dstore = as_store(donor_path, base=bstore, allow_pickle=allow_pickle)
    if not isinstance(dstore, MergedStore):  # a MergedStore closes with its base
        stack.enter_context(dstore)
    memo = FiniteMemo()
    tensors, sel = transfer_tensors(bstore, dstore, modules, layers, echo, stream=True,
                                    label=f"base {base_path.name}", memo=memo)
    keep: list[str] = []  # LoRA donor: the adapter modules the output adapter keeps
    whole: set[str] = set()  # full donor: tensors copied byte for byte
    if isinstance(dstore, MergedStore):
        keep = sorted(dstore.only or ())
        if merge:
            check_store_finite(bstore)
        info = {"donor_kind": "lora", "lora_modules": keep, "tensors": sorted(sel.tensors),
                "params_transferred": lora_params(dstore.adapter, keep)}
    else:
        whole = tensors.whole
        changed = [n for n in sel.tensors if dstore.dtype(n) != bstore.dtype(n)]
        if changed:
            echo(f"note: {len(changed)} selected tensor(s) keep the donor's dtype {dstore.dtype(changed[0])} "
                 f"(base has {bstore.dtype(changed[0])})")
        info = {"donor_kind": "full", "tensors": sorted(sel.tensors), "params_transferred": sel.numel(bstore)}
    if isinstance(dstore, MergedStore):
        write_adapter(dstore.adapter, keep, run.path, base_path)
        if merge:
            merged = run.path / "merged"
            merged.mkdir()
            write_checkpoint(bstore, tensors.get, merged, max_shard_size, "merging", label=Path(out) / "merged")
            copy_sidecars(base_path, merged)
    else:
        # The rest of the output comes from BASE: each tensor is checked while the bytes are copied
        # (on a second thread), unless this version of its file was checked before (``FiniteMemo``);
        # a NaN aborts the write and RunDir publishes nothing.
        write_checkpoint(RawFrom(bstore, dstore, whole), new_or_raw(tensors.get, whole), run.path,
                         max_shard_size, "transferring", label=out,
                         check_raw=lambda n: None if n in whole else memo.check(bstore, [n]))
        copy_sidecars(base_path, run.path)
        memo.commit()
    return ComposeResult(run.final, sel, info, "transfer")


@contextlib.contextmanager
def applied(model: torch.nn.Module, tensors: Mapping[str, torch.Tensor]) -> Iterator[torch.nn.Module]:
    """Swap ``tensors`` into a loaded model for the block, then put the originals back.

    Lets a grid evaluate many variants on one loaded model with no disk writes.
    """
    import torch

    params: dict[str, torch.Tensor] = dict(model.named_parameters())
    params.update(dict(model.named_buffers()))
    missing = [n for n in tensors if n not in params]
    if missing:
        raise AffectlensError(f"model has no parameter {missing[0]}")
    saved: dict[str, torch.Tensor] = {}
    try:
        with torch.no_grad():
            for name, t in tensors.items():
                p = params[name]
                if tuple(p.shape) != tuple(t.shape):
                    raise AffectlensError(f"{name}: new tensor {list(t.shape)} vs model {list(p.shape)}")
                saved[name] = p.detach().clone()
                p.copy_(t.to(p.dtype))
        yield model
    finally:
        with torch.no_grad():
            for name, t in saved.items():
                params[name].copy_(t)


__all__ = ["Transferred", "applied", "differs", "lora_params", "restrict_to_adapter", "transfer",
           "transfer_tensors"]

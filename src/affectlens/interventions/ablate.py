"""Necessity (paper §5.2): destroy the selected modules of a tuned MODEL and see what is lost.

Five ablations, each against an equal-parameter-count control selection when
asked: *reset* the modules to BASE, drop their LoRA (*zero-delta*), *zero*
them, replace them by their *mean*, or replace their fine-tuning delta by
seeded Gaussian *noise* of the same Frobenius norm. ``ablate_tensors`` builds
the new tensors in memory (a grid applies them to a loaded model);
``ablate`` streams them into a new HF model dir.
"""

from __future__ import annotations

import contextlib
import os
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import AffectlensError
from ..models.merged import MergedStore, adapter_base, as_store
from ..selection import Echo, apply_rows, control_selection, match_adapter, quiet, select
from ..vocab import ABLATION_MODES as MODES
from ..vocab import AblationMode as AblationMode
from ..weights import LoraAdapter, WeightStore, check_finite, check_store_finite, open_weights
from ..weights.compat import check_architecture
from ..weights.finite import tensor_file
from .checkpoint import ComposeResult, copy_sidecars, hf_model_dir, write_checkpoint


def noise_like(t: torch.Tensor, name: str, seed: int) -> torch.Tensor:
    """Standard normal noise seeded by (seed, tensor name): independent of order and selection."""
    g = torch.Generator().manual_seed((int(seed) * 1_000_003 + zlib.crc32(name.encode())) % (2**63))
    return torch.randn(t.shape, generator=g, dtype=torch.float32)


def ablate_rows(mode: AblationMode, cur: torch.Tensor, base: torch.Tensor | None, name: str, seed: int
                ) -> tuple[torch.Tensor, dict[str, float]]:
    """The ablated rows ``cur`` (``base``: the same rows of BASE) and the statistics the report records."""
    stats: dict[str, float] = {}
    if mode in (AblationMode.RESET, AblationMode.ZERO_DELTA):
        assert base is not None
        stats["delta_norm"] = float(torch.linalg.vector_norm(cur.double() - base.double()))
        return base.clone(), stats
    if mode is AblationMode.ZERO:
        return torch.zeros_like(cur), stats
    if mode is AblationMode.MEAN:
        m = cur.double().mean()
        stats["mean"] = float(m)
        return torch.full_like(cur, float(m)), stats
    assert mode is AblationMode.NOISE and base is not None
    delta_norm = float(torch.linalg.vector_norm(cur.double() - base.double()))
    z = noise_like(cur, name, seed).double()
    zn = float(torch.linalg.vector_norm(z))
    new = base.double() + z * (delta_norm / zn if zn > 0 else 0.0)
    stats["delta_norm"] = delta_norm
    return new.to(cur.dtype), stats


def ablate_tensors(model: Any, modules: str | Sequence[str], mode: str | AblationMode, base: Any = None,
                   layers: str | Sequence[int] | None = None, seed: int = 0, control: bool = False,
                   echo: Echo = print, allow_pickle: bool = False
                   ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The selected tensors of MODEL after ablation (in memory), and a report of what was done.

    ``control=True`` ablates the equal-parameter-count control selection instead.
    Every tensor read and every new tensor must be finite; a delta mode (reset,
    zero-delta, noise) on a selection fine-tuning never touched is an error.
    """
    mode = AblationMode.parse(mode)
    bstore = as_store(base, allow_pickle=allow_pickle) if base is not None else None
    mstore = as_store(model, base=bstore, allow_pickle=allow_pickle)
    if isinstance(mstore, MergedStore) and bstore is None:
        bstore = mstore.base
    if isinstance(mstore, MergedStore):
        check_store_finite(mstore.adapter.store)
    if mode.needs_base and bstore is None:
        raise AffectlensError(f"--ablation {mode} needs the base model (--base) to know the fine-tuning delta")
    sel = select(mstore, modules, layers, echo, label="model")
    target = sel
    info: dict[str, Any] = {"mode": mode.value, "seed": seed, "selection": list(sel.modules),
                            "layers": list(sel.layers), "params_selected": sel.numel(mstore)}
    if control:
        ctrl = control_selection(mstore, sel.modules, sel.layers, echo)
        target = select(mstore, ctrl, list(sel.layers), echo, label="model (control)")
        info["control"] = list(ctrl)
    info["ablated"] = list(target.modules)
    info["params_ablated"] = target.numel(mstore)
    delta_base = bstore if mode.needs_base else None
    if delta_base is not None:
        check_architecture(mstore, delta_base, f"base {delta_base.path}", list(target.tensors), ref="model")
        if isinstance(mstore, MergedStore):
            # Like transfer: the adapter itself must cover every cell whose delta is ablated.
            ad = mstore.adapter
            match_adapter(ad, target.modules, target.layers, prefix=f"nothing to ablate ({mode}) in LoRA adapter "
                                                                    f"{ad.path}: ")
    out: dict[str, torch.Tensor] = {}
    stats: dict[str, dict[str, float]] = {}
    norms: list[float] = []
    for name, rows in target.tensors.items():
        cur = mstore.get_finite(name)
        b = delta_base.get_finite(name) if delta_base is not None else None
        st: dict[str, float] = {}

        def fn(c: torch.Tensor, s: slice, b: torch.Tensor | None = b, name: str = name,
               st: dict[str, float] = st) -> torch.Tensor:
            new, s_stats = ablate_rows(mode, c, None if b is None else b[s], name + (
                f"[{s.start}:{s.stop}]" if s.start is not None else ""), seed)
            st.update(s_stats)
            if "delta_norm" in s_stats:
                norms.append(s_stats["delta_norm"])
            return new

        out[name] = apply_rows(cur, rows, fn)
        check_finite(out[name], f"ablated tensor {name} ({mode}) of {tensor_file(mstore, name)}")
        stats[name] = st
    if delta_base is not None and not any(x > 0 for x in norms):
        raise target.unchanged(f"ablate ({mode})", mstore, delta_base)
    info["tensors"] = stats
    return out, info


def ablate(model: str | os.PathLike, modules: str | Sequence[str], mode: str | AblationMode,
           out: str | os.PathLike, base: str | os.PathLike | None = None, layers: str | None = None,
           seed: int = 0, control: bool = False, force: bool = False, max_shard_size: str | int = "5GB",
           echo: Echo = print, allow_pickle: bool = False) -> ComposeResult:
    """MODEL with the selected (or control) modules ablated, written as an HF model dir.

    A LoRA MODEL is merged into its base first (every other module keeps its LoRA).
    """
    from ..models.resolve import is_adapter_dir, resolve_model_path
    from ..runs import RunDir

    mode = AblationMode.parse(mode)
    options = {"modules": modules, "mode": mode.value, "layers": layers, "control": control,
               "allow_pickle": allow_pickle}
    # Claimed first: an existing OUT or a concurrent run is refused before any tensor is read.
    with RunDir(out, command="ablate", force=force, options=options, seed=seed) as run, \
            contextlib.ExitStack() as stack:
        mpath = resolve_model_path(model)
        run.inputs.update(model=mpath, **({"base": str(base)} if base else {}))
        is_lora = mpath.is_dir() and is_adapter_dir(mpath)
        bstore = None
        if base is not None:
            bstore = stack.enter_context(open_weights(hf_model_dir(base), allow_pickle=allow_pickle))
        if is_lora:
            adapter = LoraAdapter(mpath, allow_pickle=allow_pickle)
            if bstore is None:
                bstore = stack.enter_context(open_weights(hf_model_dir(adapter_base(adapter)),
                                                          allow_pickle=allow_pickle))
            mstore: WeightStore = MergedStore(bstore, adapter)
            sidecars = Path(bstore.path)
        else:
            if mode is AblationMode.ZERO_DELTA and bstore is None:
                raise AffectlensError("--ablation zero-delta on a full model needs --base (it equals reset)")
            mstore = stack.enter_context(open_weights(hf_model_dir(model), allow_pickle=allow_pickle))
            sidecars = Path(mstore.path)
        tensors, info = ablate_tensors(mstore, modules, mode, base=bstore, layers=layers, seed=seed,
                                       control=control, echo=echo)
        sel = select(mstore, info["ablated"], info["layers"], quiet)

        def new(name: str) -> torch.Tensor | None:
            if name in tensors:
                return tensors[name]
            if isinstance(mstore, MergedStore) and mstore.adapted(name):
                return mstore.get(name)
            return None

        raw_src = mstore.base if isinstance(mstore, MergedStore) else mstore
        # The rest of the output comes from MODEL (or its base): checked before anything is written.
        check_store_finite(raw_src, [n for n in raw_src.names() if n not in tensors])
        write_checkpoint(raw_src, new, run.path, max_shard_size, f"ablating ({mode})", label=out)
        copy_sidecars(sidecars, run.path)
        result = ComposeResult(run.final, sel, info, "ablate")
        run.json("compose.json", result.record())
    return result


__all__ = ["MODES", "AblationMode", "ablate", "ablate_rows", "ablate_tensors", "noise_like"]

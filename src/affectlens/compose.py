"""Transfer and ablation: new weights from old ones, one module selection at a time.

*Sufficiency* (paper §5.1, "parameter inheritance"): start from BASE and take
only the selected modules from a fine-tuned DONOR (a full checkpoint or a
LoRA adapter). *Necessity*: destroy the selected modules of a tuned MODEL —
reset them to BASE, drop their LoRA, zero them, replace them by their mean,
or replace their fine-tuning delta by Gaussian noise of the same Frobenius
norm — next to an equal-parameter-count control selection.

Every source is seen as a lazy ``WeightStore`` (a checkpoint, a model's state
dict, or BASE + LoRA adapter merged on read), so the same code writes a new
HF model dir tensor by tensor *or* swaps tensors inside a loaded model for a
grid to evaluate, without writing anything to disk.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import AffectlensError
from .modules import (
    ATTN_MODULES,
    FFN_MODULES,
    MODULES,
    MatchReport,
    ParsedName,
    format_ranges,
    match,
    parse_layers,
    parse_selection,
    split_rows,
)
from .weights import LoraAdapter, TensorDictStore, WeightStore, lora_delta_norm, open_weights
from .weights.finite import check_finite, check_store_finite, tensor_file
from .weights.writer import ShardedWriter, parse_size

MODES = ("reset", "zero-delta", "zero", "mean", "noise")
_NEEDS_BASE = ("reset", "zero-delta", "noise")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt", ".h5", ".msgpack")
_WEIGHT_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_ARCH_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "intermediate_size",
              "num_attention_heads", "num_key_value_heads")

Echo = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


# ---------------------------------------------------------------------------
# Sources: everything is a WeightStore


class MergedStore(WeightStore):
    """BASE with a LoRA adapter merged on read: the tuned model, one tensor at a time.

    ``modules`` restricts which adapted modules are merged (module paths as the
    adapter names them); ``None`` merges all of them and its full replacements.
    """

    def __init__(self, base: WeightStore, adapter: LoraAdapter, modules: set[str] | None = None) -> None:
        self.base = base
        self.adapter = adapter
        self.only = modules
        self.path = adapter.path
        self._check_shapes()

    def _check_shapes(self) -> None:
        for mpath, mod in self.adapter.modules.items():
            name = self.adapter.target_weight_name(mod)
            if name not in self.base:
                raise AffectlensError(
                    f"adapter {self.adapter.path.name} adapts {mpath}, which base {self.base.path.name} "
                    "does not have (an adapter of another architecture?)")
            out_f, in_f = self.base.shape(name)[0], self.base.shape(name)[-1]
            a_shape = self.adapter.store.shape(mod.a_name)
            b_shape = self.adapter.store.shape(mod.b_name)
            if a_shape[-1] != in_f or b_shape[0] != out_f:
                raise AffectlensError(
                    f"adapter {self.adapter.path.name} does not fit base {self.base.path.name}: {mpath} "
                    f"LoRA is {b_shape[0]}x{a_shape[-1]}, base weight is {out_f}x{in_f} "
                    "(an adapter of another architecture?)")

    def names(self) -> list[str]:
        return self.base.names()

    def shape(self, name: str) -> tuple[int, ...]:
        return self.base.shape(name)

    def dtype(self, name: str) -> torch.dtype:
        return self.base.dtype(name)

    def __contains__(self, name: str) -> bool:
        return name in self.base

    @property
    def config(self) -> dict[str, Any]:
        return self.base.config

    def file_of(self, name: str) -> str:
        """Where ``name`` comes from, for messages: the base file, plus the adapter if it changes it."""
        f = tensor_file(self.base, name)
        return f"{f} merged with adapter {self.adapter.path}" if self.adapted(name) else str(f)

    def adapted(self, name: str) -> bool:
        """Does the (restricted) adapter change this tensor?"""
        mod = self.adapter.module_for(name)
        if mod is not None:
            return self.only is None or mod.path in self.only
        return self.only is None and self.adapter.replacement_for(name) is not None

    def get(self, name: str) -> torch.Tensor:
        w = self.base.get(name)
        mod = self.adapter.module_for(name)
        if mod is not None and (self.only is None or mod.path in self.only):
            delta = self.adapter.delta_rows(mod, 0, w.shape[0], base_rows=w)
            return (w.to(torch.float32) + delta).to(w.dtype)
        if self.only is None:
            rep = self.adapter.replacement_for(name)
            if rep is not None:
                return self.adapter.store.get(rep).to(w.dtype)
        return w

    def close(self) -> None:
        self.base.close()


def _model_config(model: Any) -> dict[str, Any]:
    cfg = getattr(model, "config", None)
    if cfg is None:
        return {}
    d = cfg.to_dict()
    for key in ("text_config", "language_config", "llm_config"):
        if isinstance(d.get(key), dict):
            return {**d[key], "model_type": d[key].get("model_type", d.get("model_type"))}
    return d


def as_store(source: Any, base: Any = None, allow_pickle: bool = False) -> WeightStore:
    """A checkpoint path, adapter dir (needs or names its base), store, model or state dict -> store."""
    if isinstance(source, WeightStore):
        return source
    if isinstance(source, LoraAdapter):
        return MergedStore(_base_for(source, base, allow_pickle), source)
    if isinstance(source, torch.nn.Module):
        sd = source.state_dict()
        return TensorDictStore(sd, _model_config(source), path=f"<{type(source).__name__}>")
    if isinstance(source, dict):
        return TensorDictStore(source)
    if isinstance(source, str | os.PathLike):
        from .models import is_adapter_dir, resolve_model_path

        p = resolve_model_path(source)
        if p.is_dir() and is_adapter_dir(p):
            ad = LoraAdapter(p, allow_pickle=allow_pickle)
            return MergedStore(_base_for(ad, base, allow_pickle), ad)
        return open_weights(p, allow_pickle=allow_pickle)
    raise AffectlensError(f"cannot read weights from a {type(source).__name__}")


def _base_for(adapter: LoraAdapter, base: Any, allow_pickle: bool = False) -> WeightStore:
    if base is not None:
        return as_store(base, allow_pickle=allow_pickle)
    if not adapter.base_model:
        raise AffectlensError(f"adapter {adapter.path} does not name its base model; pass --base")
    return as_store(adapter.base_model, allow_pickle=allow_pickle)


# ---------------------------------------------------------------------------
# Selection


@dataclass
class Selection:
    """What a module selection hits in one checkpoint: tensors and, for fused ones, row ranges."""

    modules: tuple[str, ...]
    layers: tuple[int, ...]
    report: MatchReport
    # tensor name -> row ranges to change (None: the whole tensor)
    tensors: dict[str, list[tuple[int, int]] | None] = field(default_factory=dict)

    def table(self) -> str:
        return self.report.table()

    def numel(self, store: WeightStore) -> int:
        """Parameters (weights and biases) the selection covers."""
        n = 0
        for name, rows in self.tensors.items():
            shape = store.shape(name)
            per_row = math.prod(shape[1:]) if len(shape) > 1 else 1
            n += store.numel(name) if rows is None else sum(r1 - r0 for r0, r1 in rows) * per_row
        return n


def num_layers(store: WeightStore) -> int:
    n = store.config.get("num_hidden_layers")
    if n:
        return int(n)
    layers = store.inventory.layers
    return max(layers) + 1 if layers else 0


def select(store: WeightStore, modules: str | Sequence[str], layers: str | Sequence[int] | None = None,
           echo: Echo = print, label: str = "") -> Selection:
    """Resolve a selection on a checkpoint, print the matching table, refuse empty/partial matches."""
    mods = parse_selection(modules)
    n = num_layers(store)
    lays = parse_layers(layers, n) if layers is None or isinstance(layers, str) else \
        parse_layers(",".join(str(x) for x in layers), n)
    rep = match(store.inventory, mods, lays)
    head = f"selection in {label or store.path}: {','.join(mods)} x layers {format_ranges(lays)}"
    echo(head + "\n" + rep.table())
    sel = Selection(mods, lays, rep)
    for key, parsed_list in store.inventory.modules.items():
        if key.module not in mods or key.layer not in lays:
            continue
        for p in parsed_list:
            _add_rows(sel, store, p, key.module)
    return sel


def _add_rows(sel: Selection, store: WeightStore, p: ParsedName, module: str) -> None:
    if not p.fused:
        sel.tensors[p.name] = None
        return
    rows = split_rows(p.fused, store.shape(p.name)[0], store.config)[module]
    cur = sel.tensors.get(p.name, [])
    if cur is None:
        return
    cur = sorted([*cur, rows])
    total = store.shape(p.name)[0]
    sel.tensors[p.name] = None if sum(b - a for a, b in cur) == total else cur


def check_compatible(base: WeightStore, donor: WeightStore, names: Sequence[str], what: str = "donor") -> None:
    """A donor must be the same architecture: config keys and every selected tensor's shape."""
    cb, cd = base.config, donor.config
    for key in _ARCH_KEYS:
        if cb.get(key) is not None and cd.get(key) is not None and cb[key] != cd[key]:
            raise AffectlensError(
                f"{what} {donor.path} is another architecture than base {base.path}: "
                f"{key} {cd[key]} vs {cb[key]}")
    for name in names:
        if name not in donor:
            raise AffectlensError(f"{what} {donor.path} has no tensor {name} (another architecture?)")
        if tuple(donor.shape(name)) != tuple(base.shape(name)):
            raise AffectlensError(
                f"{what} {donor.path} is another architecture than base {base.path}: {name} is "
                f"{list(donor.shape(name))} vs {list(base.shape(name))}")


# ---------------------------------------------------------------------------
# Control selections (equal parameter count)


def module_sizes(store: WeightStore, layers: Sequence[int]) -> dict[str, int]:
    """Weight parameters per canonical module over ``layers`` (fused tensors split by rows)."""
    sizes: dict[str, int] = {}
    lay = set(layers)
    for key, plist in store.inventory.modules.items():
        if key.layer not in lay or key.param != "weight":
            continue
        for p in plist:
            shape = store.shape(p.name)
            rows = shape[0]
            if p.fused:
                r0, r1 = split_rows(p.fused, rows, store.config)[key.module]
                rows = r1 - r0
            sizes[key.module] = sizes.get(key.module, 0) + rows * math.prod(shape[1:])
    return sizes


def module_shapes(store: WeightStore, layer: int) -> dict[str, tuple[int, ...]]:
    out: dict[str, tuple[int, ...]] = {}
    for key, plist in store.inventory.modules.items():
        if key.layer == layer and key.param == "weight" and key.expert is None:
            out[key.module] = tuple(store.shape(plist[0].name))
    return out


def _lora_sizes(config: dict[str, Any], modules: Sequence[str], layers: Sequence[int]) -> dict[str, int] | None:
    """LoRA parameters per module from the config (``affectlens.params``); None if it cannot tell."""
    from .params import count_params

    if not modules:
        return None
    try:
        rep = count_params(config, modules, rank=1, layers=list(layers))
    except (AffectlensError, KeyError, TypeError, ValueError):
        return None
    return {m.module: m.lora for m in rep.modules}


def control_selection(store: WeightStore, modules: Sequence[str], layers: Sequence[int],
                      echo: Echo = print) -> tuple[str, ...]:
    """For each selected module, an unselected one with exactly its parameter count.

    Derived from the checkpoint's shapes, not a table: candidates must have the
    same weight count over the same layers and, where the config tells
    (``affectlens.params``), the same LoRA count at any rank; ties prefer the same block (attention vs
    FFN), then the same (out, in) orientation, then the nearest in the
    canonical order — e.g. gate_proj -> up_proj, o_proj -> q_proj under GQA.
    """
    sizes = module_sizes(store, layers)
    lora = _lora_sizes(store.config, [m for m in MODULES if m in sizes], layers)
    shapes = module_shapes(store, layers[0]) if layers else {}
    used: set[str] = set(modules)
    out: list[str] = []
    for m in modules:
        want = sizes.get(m)
        group = ATTN_MODULES if m in ATTN_MODULES else FFN_MODULES
        cands = [c for c in MODULES if c not in used and sizes.get(c) == want
                 and (lora is None or lora.get(c) == lora.get(m))]
        if not cands:
            avail = ", ".join(f"{c}={sizes[c]:,}" for c in MODULES if c in sizes)
            raise AffectlensError(
                f"no unselected module has {m}'s parameter count ({want or 0:,}) for a control; "
                f"parameter counts: {avail}")
        mi = MODULES.index(m)
        cands.sort(key=lambda c: (c not in group, shapes.get(c) != shapes.get(m), abs(MODULES.index(c) - mi),
                                  MODULES.index(c)))
        used.add(cands[0])
        out.append(cands[0])
        echo(f"control for {m}: {cands[0]} ({want:,} parameters each over {len(layers)} layers)")
    return tuple(out)


# ---------------------------------------------------------------------------
# New tensors


def _noise_like(t: torch.Tensor, name: str, seed: int) -> torch.Tensor:
    """Standard normal noise seeded by (seed, tensor name): independent of order and selection."""
    g = torch.Generator().manual_seed((int(seed) * 1_000_003 + zlib.crc32(name.encode())) % (2**63))
    return torch.randn(t.shape, generator=g, dtype=torch.float32)


def _ablate_rows(mode: str, cur: torch.Tensor, base: torch.Tensor | None, name: str, seed: int
                 ) -> tuple[torch.Tensor, dict[str, float]]:
    stats: dict[str, float] = {}
    if mode in ("reset", "zero-delta"):
        assert base is not None
        stats["delta_norm"] = float(torch.linalg.vector_norm(cur.double() - base.double()))
        return base.clone(), stats
    if mode == "zero":
        return torch.zeros_like(cur), stats
    if mode == "mean":
        m = cur.double().mean()
        stats["mean"] = float(m)
        return torch.full_like(cur, float(m)), stats
    if mode == "noise":
        assert base is not None
        delta_norm = float(torch.linalg.vector_norm(cur.double() - base.double()))
        z = _noise_like(cur, name, seed).double()
        zn = float(torch.linalg.vector_norm(z))
        new = base.double() + z * (delta_norm / zn if zn > 0 else 0.0)
        stats["delta_norm"] = delta_norm
        return new.to(cur.dtype), stats
    raise AffectlensError(f"unknown ablation mode '{mode}'; choose from {', '.join(MODES)}")


def _apply_rows(cur: torch.Tensor, rows: list[tuple[int, int]] | None,
                fn: Callable[[torch.Tensor, slice], torch.Tensor]) -> torch.Tensor:
    if rows is None:
        return fn(cur, slice(None))
    out = cur.clone()
    for r0, r1 in rows:
        out[r0:r1] = fn(cur[r0:r1], slice(r0, r1))
    return out


def transfer_tensors(base: Any, donor: Any, modules: str | Sequence[str],
                     layers: str | Sequence[int] | None = None, echo: Echo = print,
                     allow_pickle: bool = False) -> tuple[dict[str, torch.Tensor], Selection]:
    """The selected tensors of DONOR (full or LoRA-merged) that replace BASE's. In memory.

    Every tensor read must be finite, and the donor must differ from BASE
    somewhere in the selection (else the transfer would change nothing).
    """
    bstore = as_store(base, allow_pickle=allow_pickle)
    dstore = as_store(donor, base=bstore, allow_pickle=allow_pickle)
    sel = select(bstore, modules, layers, echo, label="base")
    if isinstance(dstore, MergedStore):
        sel = _lora_selection(dstore, sel, echo)
        check_store_finite(dstore.adapter.store)
    check_compatible(bstore, dstore, list(sel.tensors))
    out: dict[str, torch.Tensor] = {}
    touched = False
    for name, rows in sel.tensors.items():
        d = _get_checked(dstore, name)
        b = _get_checked(bstore, name)
        touched = touched or _differs(d, b, rows)
        out[name] = d if rows is None else _apply_rows(b, rows, lambda c, s, d=d: d[s].to(c.dtype))
    if not touched:
        raise _untouched("transfer", sel, dstore, bstore)
    return out, sel


def _get_checked(store: WeightStore, name: str) -> torch.Tensor:
    """``store.get(name)``, refused with one line if it holds a NaN or an Inf."""
    t = store.get(name)
    check_finite(t, f"tensor {name} of {tensor_file(store, name)}")
    return t


def _differs(new: torch.Tensor, old: torch.Tensor, rows: list[tuple[int, int]] | None) -> bool:
    if new.dtype != old.dtype or new.shape != old.shape:
        return True
    if rows is None:
        return not torch.equal(new, old)
    return any(not torch.equal(new[r0:r1], old[r0:r1]) for r0, r1 in rows)


def _untouched(what: str, sel: Selection, donor: WeightStore, base: WeightStore) -> AffectlensError:
    src = donor.adapter.path if isinstance(donor, MergedStore) else donor.path
    return AffectlensError(
        f"nothing to {what}: {src} equals base {base.path} in every selected tensor "
        f"({','.join(sel.modules)} x layers {format_ranges(sel.layers)}); fine-tuning never touched them")


def _lora_selection(merged: MergedStore, sel: Selection, echo: Echo) -> Selection:
    """Restrict a LoRA donor to the selection; the adapter itself must cover every selected cell."""
    from .modules import inventory

    ad = merged.adapter
    inv = inventory(ad.store.names())
    try:
        rep = match(inv, sel.modules, sel.layers)
    except AffectlensError as e:
        raise AffectlensError(f"LoRA adapter {ad.path}: {e}") from None
    echo(f"LoRA tensors in adapter {ad.path.name}:\n{rep.table()}")
    keep = set()
    for m in ad.modules.values():
        if m.parsed.scope != "module" or m.key.layer not in sel.layers:
            continue
        parts = _fused_parts(m.parsed.fused) if m.parsed.fused else (m.key.module,)
        if any(x in sel.modules for x in parts):
            keep.add(m.path)
    merged.only = keep
    names = {ad.target_weight_name(ad.modules[p]) for p in keep}
    out = Selection(sel.modules, sel.layers, rep)
    out.tensors = {n: r for n, r in sel.tensors.items() if n in names}
    return out


def _fused_parts(fused: str) -> tuple[str, ...]:
    from .modules import FUSED

    return FUSED.get(fused, ())


def ablate_tensors(model: Any, modules: str | Sequence[str], mode: str, base: Any = None,
                   layers: str | Sequence[int] | None = None, seed: int = 0, control: bool = False,
                   echo: Echo = print, allow_pickle: bool = False
                   ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The selected tensors of MODEL after ablation (in memory), and a report of what was done.

    ``control=True`` ablates the equal-parameter-count control selection instead.
    Every tensor read and every new tensor must be finite; a delta mode (reset,
    zero-delta, noise) on a selection fine-tuning never touched is an error.
    """
    if mode not in MODES:
        raise AffectlensError(f"unknown ablation mode '{mode}'; choose from {', '.join(MODES)}")
    bstore = as_store(base, allow_pickle=allow_pickle) if base is not None else None
    mstore = as_store(model, base=bstore, allow_pickle=allow_pickle)
    if isinstance(mstore, MergedStore) and bstore is None:
        bstore = mstore.base
    if isinstance(mstore, MergedStore):
        check_store_finite(mstore.adapter.store)
    if mode in _NEEDS_BASE and bstore is None:
        raise AffectlensError(f"--mode {mode} needs the base model (--base) to know the fine-tuning delta")
    sel = select(mstore, modules, layers, echo, label="model")
    target = sel
    info: dict[str, Any] = {"mode": mode, "seed": seed, "selection": list(sel.modules),
                            "layers": list(sel.layers), "params_selected": sel.numel(mstore)}
    if control:
        ctrl = control_selection(mstore, sel.modules, sel.layers, echo)
        target = select(mstore, ctrl, list(sel.layers), echo, label="model (control)")
        info["control"] = list(ctrl)
    info["ablated"] = list(target.modules)
    info["params_ablated"] = target.numel(mstore)
    if bstore is not None and mode in _NEEDS_BASE:
        check_compatible(mstore, bstore, list(target.tensors), what="base")
        if isinstance(mstore, MergedStore):
            # Like transfer: the adapter itself must cover every cell whose delta is ablated.
            from .modules import inventory

            ad = mstore.adapter
            try:
                match(inventory(ad.store.names()), target.modules, target.layers)
            except AffectlensError as e:
                raise AffectlensError(f"nothing to ablate ({mode}) in LoRA adapter {ad.path}: {e}") from None
    out: dict[str, torch.Tensor] = {}
    stats: dict[str, dict[str, float]] = {}
    norms: list[float] = []
    for name, rows in target.tensors.items():
        cur = _get_checked(mstore, name)
        b = _get_checked(bstore, name) if (bstore is not None and mode in _NEEDS_BASE) else None
        st: dict[str, float] = {}

        def fn(c: torch.Tensor, s: slice, b=b, name=name, st=st) -> torch.Tensor:
            new, s_stats = _ablate_rows(mode, c, None if b is None else b[s], name + (
                f"[{s.start}:{s.stop}]" if s.start is not None else ""), seed)
            st.update(s_stats)
            if "delta_norm" in s_stats:
                norms.append(s_stats["delta_norm"])
            return new

        out[name] = _apply_rows(cur, rows, fn)
        check_finite(out[name], f"ablated tensor {name} ({mode}) of {tensor_file(mstore, name)}")
        stats[name] = st
    if mode in _NEEDS_BASE and bstore is not None and not any(x > 0 for x in norms):
        raise _untouched(f"ablate ({mode})", target, mstore, bstore)
    info["tensors"] = stats
    return out, info


@contextlib.contextmanager
def applied(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> Iterator[torch.nn.Module]:
    """Swap ``tensors`` into a loaded model for the block, then put the originals back.

    Lets a grid evaluate many variants on one loaded model with no disk writes.
    """
    params = dict(model.named_parameters())
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


# ---------------------------------------------------------------------------
# Writing to disk


def _raw_location(store: WeightStore, name: str) -> tuple[Path, int, int] | None:
    """(file, byte offset, nbytes) of a safetensors tensor, to copy its bytes untouched."""
    loc = getattr(store, "location", None)
    return loc(name) if callable(loc) else None


def write_checkpoint(base: WeightStore, new: dict[str, torch.Tensor] | Callable[[str], torch.Tensor | None],
                     out_dir: Path, max_shard_size: str | int = "5GB", desc: str = "writing",
                     label: str | os.PathLike | None = None) -> list[Path]:
    """Write BASE with some tensors replaced, streaming one tensor at a time.

    ``new`` maps names to tensors, or is a function giving a name's tensor
    (``None``: keep BASE's bytes, copied without decoding when possible).
    Every decoded tensor written is checked to be finite (raw byte copies are
    the caller's to check, see ``check_store_finite``); ``label`` names the
    output in that message.
    """
    from .runs import progress

    getter = new.get if isinstance(new, dict) else new
    names = base.names()
    plan = [(n, base.shape(n), base.dtype(n)) for n in names]
    writer = ShardedWriter(out_dir, parse_size(max_shard_size), plan=plan)
    try:
        for name in progress(names, desc, total=len(names), unit="tensor"):
            t = getter(name)
            if t is None:
                loc = _raw_location(base, name)
                if loc is not None:
                    writer.add_raw(name, base.dtype(name), base.shape(name), *loc)
                    continue
                t = base.get(name)
            check_finite(t, f"tensor {name} written to {label or out_dir}")
            writer.add(name, t)
    except BaseException:
        writer.abort()
        raise
    return writer.close()


def copy_sidecars(src: Path, dst: Path) -> list[str]:
    """Config, generation config and tokenizer files of a model dir (everything but weights)."""
    d = src if src.is_dir() else src.parent
    copied = []
    for f in sorted(d.iterdir()):
        if not f.is_file() or f.suffix in _WEIGHT_SUFFIXES or f.name in _WEIGHT_FILES:
            continue
        if f.name in ("manifest.json", "compose.json", "adapter_config.json"):
            continue
        shutil.copy2(f, dst / f.name)
        copied.append(f.name)
    return copied


def _model_dir(spec: Any) -> Path:
    from .models import resolve_model_path

    p = resolve_model_path(spec)
    d = p if p.is_dir() else p.parent
    if not (d / "config.json").is_file():
        raise AffectlensError(
            f"base {p} has no config.json beside it: the output would not load as an HF model "
            "(convert it to an HF dir first)")
    return p


@dataclass
class ComposeResult:
    """Where the new weights went and what changed."""

    out: Path
    selection: Selection
    info: dict[str, Any]


def transfer(base: str | os.PathLike, donor: str | os.PathLike, modules: str | Sequence[str],
             out: str | os.PathLike, layers: str | None = None, merge: bool = False,
             force: bool = False, max_shard_size: str | int = "5GB", echo: Echo = print,
             allow_pickle: bool = False) -> ComposeResult:
    """BASE with only the selected modules from DONOR, written to ``out``.

    Full donor: an HF model dir. LoRA donor: a PEFT adapter dir holding only the
    selected modules' LoRA tensors, and with ``merge`` also ``out/merged``.
    Every tensor that goes into the output is checked to be finite before
    anything is written; a donor equal to BASE in the whole selection is an error.
    """
    from .models import is_adapter_dir, resolve_model_path
    from .runs import atomic_dir, check_out_dir, write_json, write_manifest

    check_out_dir(out, force)
    base_path = _model_dir(base)
    donor_path = resolve_model_path(donor)
    options = {"modules": modules, "layers": layers, "merge": merge, "max_shard_size": max_shard_size,
               "allow_pickle": allow_pickle}
    with contextlib.ExitStack() as stack:
        bstore = stack.enter_context(open_weights(base_path, allow_pickle=allow_pickle))
        if donor_path.is_dir() and is_adapter_dir(donor_path):
            adapter = LoraAdapter(donor_path, allow_pickle=allow_pickle)
            merged = MergedStore(bstore, adapter)
            sel = select(merged, modules, layers, echo, label=f"base {base_path.name}")
            sel = _lora_selection(merged, sel, echo)
            keep = sorted(merged.only or ())
            check_store_finite(adapter.store)
            if not adapter.use_dora and all(
                    lora_delta_norm(adapter.store.get(adapter.modules[k].a_name),
                                    adapter.store.get(adapter.modules[k].b_name), adapter.modules[k].scale) == 0
                    for k in keep):
                raise _untouched("transfer", sel, merged, bstore)
            if merge:
                check_store_finite(bstore)
            info = {"donor_kind": "lora", "lora_modules": keep, "tensors": sorted(sel.tensors),
                    "params_transferred": _lora_params(adapter, keep)}
            with atomic_dir(out, force) as tmp:
                _write_adapter(adapter, keep, sel, tmp, base_path)
                if merge:
                    (tmp / "merged").mkdir()
                    write_checkpoint(bstore, lambda n: merged.get(n) if n in sel.tensors else None,
                                     tmp / "merged", max_shard_size, "merging", label=Path(out) / "merged")
                    copy_sidecars(base_path, tmp / "merged")
                write_json(tmp / "compose.json", {"kind": "transfer", **info, "table": sel.table()})
                write_manifest(tmp, "transfer", {"base": base_path, "donor": donor_path}, options)
            return ComposeResult(Path(out), sel, info)
        dstore = stack.enter_context(open_weights(donor_path, allow_pickle=allow_pickle))
        sel = select(bstore, modules, layers, echo, label=f"base {base_path.name}")
        check_compatible(bstore, dstore, list(sel.tensors))
        whole = {n for n, rows in sel.tensors.items() if rows is None}
        # Everything the output will hold is read and checked before anything is written.
        check_store_finite(bstore, [n for n in bstore.names() if n not in whole])
        touched = False
        for name, rows in sel.tensors.items():
            d = _get_checked(dstore, name)
            touched = touched or _differs(d, bstore.get(name), rows)
            del d
        if not touched:
            raise _untouched("transfer", sel, dstore, bstore)
        changed = [n for n in sel.tensors if dstore.dtype(n) != bstore.dtype(n)]
        if changed:
            echo(f"note: {len(changed)} selected tensor(s) keep the donor's dtype {dstore.dtype(changed[0])} "
                 f"(base has {bstore.dtype(changed[0])})")
        info = {"donor_kind": "full", "tensors": sorted(sel.tensors),
                "params_transferred": sel.numel(bstore)}

        def new(name: str) -> torch.Tensor | None:
            rows = sel.tensors.get(name, False)
            if rows is False:
                return None
            if rows is None:
                return dstore.get(name)
            d = dstore.get(name)
            return _apply_rows(bstore.get(name), rows, lambda c, s: d[s].to(c.dtype))

        with atomic_dir(out, force) as tmp:
            write_checkpoint(_RawFrom(bstore, dstore, whole), new_or_raw(new, whole), tmp,
                             max_shard_size, "transferring", label=out)
            copy_sidecars(base_path, tmp)
            write_json(tmp / "compose.json", {"kind": "transfer", **info, "table": sel.table()})
            write_manifest(tmp, "transfer", {"base": base_path, "donor": donor_path}, options)
    return ComposeResult(Path(out), sel, info)


class _RawFrom(WeightStore):
    """BASE's names/shapes, but whole selected tensors come byte-for-byte from DONOR."""

    def __init__(self, base: WeightStore, donor: WeightStore, from_donor: set[str]) -> None:
        self.base, self.donor, self.from_donor, self.path = base, donor, from_donor, base.path

    def names(self) -> list[str]:
        return self.base.names()

    def shape(self, name: str) -> tuple[int, ...]:
        return (self.donor if name in self.from_donor else self.base).shape(name)

    def dtype(self, name: str) -> torch.dtype:
        return (self.donor if name in self.from_donor else self.base).dtype(name)

    def get(self, name: str) -> torch.Tensor:
        return (self.donor if name in self.from_donor else self.base).get(name)

    def location(self, name: str) -> tuple[Path, int, int] | None:
        return _raw_location(self.donor if name in self.from_donor else self.base, name)


def new_or_raw(new: Callable[[str], torch.Tensor | None], raw: set[str]) -> Callable[[str], torch.Tensor | None]:
    """Whole-tensor donor copies go through the raw path (``None``), partial ones through ``new``."""
    return lambda name: None if name in raw else new(name)


def _lora_params(adapter: LoraAdapter, paths: Sequence[str]) -> int:
    n = 0
    for p in paths:
        m = adapter.modules[p]
        n += adapter.store.numel(m.a_name) + adapter.store.numel(m.b_name)
    return n


def _write_adapter(adapter: LoraAdapter, keep: Sequence[str], sel: Selection, out: Path, base_path: Path) -> None:
    """A PEFT adapter dir with only the kept modules' LoRA tensors and a matching target_modules."""
    import re

    cfg = dict(adapter.config)
    leafs = sorted({p.rsplit(".", 1)[-1] for p in keep})
    all_layers = {m.key.layer for m in adapter.modules.values() if m.parsed.key is not None}
    kept_layers = {adapter.modules[p].key.layer for p in keep}
    if kept_layers == all_layers and all(
        adapter.modules[p].path.rsplit(".", 1)[-1] in leafs for p in keep
    ) and len(keep) == sum(1 for m in adapter.modules.values() if m.path.rsplit(".", 1)[-1] in leafs):
        cfg["target_modules"] = leafs
    else:
        cfg["target_modules"] = "|".join(re.escape(p) for p in keep)
    cfg["modules_to_save"] = None
    cfg["layers_to_transform"] = None
    cfg["layers_pattern"] = None
    cfg["base_model_name_or_path"] = str(base_path.resolve())
    with open(out / "adapter_config.json", "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    writer = ShardedWriter(out, max_shard_bytes=2**62, prefix="adapter_model")
    keepset = set(keep)
    try:
        for mpath, m in adapter.modules.items():
            if mpath not in keepset:
                continue
            for name in (m.a_name, m.b_name, m.magnitude_name):
                if name is not None:
                    t = adapter.store.get(name)
                    check_finite(t, f"tensor {name} of {tensor_file(adapter.store, name)}")
                    writer.add(name, t)
    except BaseException:
        writer.abort()
        raise
    writer.close()


def ablate(model: str | os.PathLike, modules: str | Sequence[str], mode: str, out: str | os.PathLike,
           base: str | os.PathLike | None = None, layers: str | None = None, seed: int = 0,
           control: bool = False, force: bool = False, max_shard_size: str | int = "5GB",
           echo: Echo = print, allow_pickle: bool = False) -> ComposeResult:
    """MODEL with the selected (or control) modules ablated, written as an HF model dir.

    A LoRA MODEL is merged into its base first (every other module keeps its LoRA).
    """
    from .models import is_adapter_dir, resolve_model_path
    from .runs import atomic_dir, check_out_dir, write_json, write_manifest

    check_out_dir(out, force)
    if mode not in MODES:
        raise AffectlensError(f"unknown ablation mode '{mode}'; choose from {', '.join(MODES)}")
    mpath = resolve_model_path(model)
    is_lora = mpath.is_dir() and is_adapter_dir(mpath)
    with contextlib.ExitStack() as stack:
        bstore = None
        if base is not None:
            bstore = stack.enter_context(open_weights(_model_dir(base), allow_pickle=allow_pickle))
        if is_lora:
            adapter = LoraAdapter(mpath, allow_pickle=allow_pickle)
            if bstore is None:
                if not adapter.base_model:
                    raise AffectlensError(f"adapter {mpath} does not name its base model; pass --base")
                bstore = stack.enter_context(open_weights(_model_dir(adapter.base_model),
                                                          allow_pickle=allow_pickle))
            mstore: WeightStore = MergedStore(bstore, adapter)
            sidecars = Path(bstore.path)
        else:
            if mode == "zero-delta" and bstore is None:
                raise AffectlensError("--mode zero-delta on a full model needs --base (it equals reset)")
            mstore = stack.enter_context(open_weights(_model_dir(model), allow_pickle=allow_pickle))
            sidecars = Path(mstore.path)
        tensors, info = ablate_tensors(mstore, modules, mode, base=bstore, layers=layers, seed=seed,
                                       control=control, echo=echo)
        sel = select(mstore, info["ablated"], info["layers"], _quiet)

        def new(name: str) -> torch.Tensor | None:
            if name in tensors:
                return tensors[name]
            if isinstance(mstore, MergedStore) and mstore.adapted(name):
                return mstore.get(name)
            return None

        raw_src = mstore.base if isinstance(mstore, MergedStore) else mstore
        # The rest of the output comes from MODEL (or its base): checked before anything is written.
        check_store_finite(raw_src, [n for n in raw_src.names() if n not in tensors])
        with atomic_dir(out, force) as tmp:
            write_checkpoint(raw_src, new, tmp, max_shard_size, f"ablating ({mode})", label=out)
            copy_sidecars(sidecars, tmp)
            write_json(tmp / "compose.json", {"kind": "ablate", **info, "table": sel.table()})
            write_manifest(tmp, "ablate", {"model": mpath, **({"base": str(base)} if base else {})},
                           {"modules": modules, "mode": mode, "layers": layers, "control": control,
                            "allow_pickle": allow_pickle},
                           seed=seed)
    return ComposeResult(Path(out), sel, info)


__all__ = [
    "MODES",
    "ComposeResult",
    "MergedStore",
    "Selection",
    "TensorDictStore",
    "ablate",
    "ablate_tensors",
    "applied",
    "as_store",
    "check_compatible",
    "control_selection",
    "module_sizes",
    "select",
    "transfer",
    "transfer_tensors",
    "write_checkpoint",
]

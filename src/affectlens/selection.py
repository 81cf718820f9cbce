"""Which tensors a module selection names: the paper's "modules x layers", resolved on one checkpoint.

One rule, shared by transfer, ablate and tune: a selection (``"attn,gate_proj"``)
and a layer spec (``"0-11,20"`` or a sequence of ints) are matched against an
``Inventory`` of tensor names, and an empty or partial match is refused loudly
with a table of what was found. Transfer and ablate then need, per tensor, the
row ranges a fused projection (Phi-3's ``qkv_proj``) contributes; tune needs
the module paths PEFT should wrap. Both come from ``resolve``.

The equal-parameter-count *control* selection lives here too: it is a second
selection derived from the first one's shapes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import AffectlensError
from .modules import (
    ATTN_MODULES,
    FFN_MODULES,
    FUSED,
    MODULES,
    Inventory,
    MatchReport,
    ModuleKey,
    ParsedName,
    format_ranges,
    inventory,
    match,
    parse_layers,
    parse_selection,
    split_rows,
)

if TYPE_CHECKING:  # annotations only: resolving a selection needs no torch
    import torch

    from .weights.base import WeightStore
    from .weights.lora import LoraAdapter

Echo = Callable[[str], None]
Rows = list[tuple[int, int]] | None  # row ranges of a tensor to change; None: the whole tensor


def quiet(_: str) -> None:
    """An ``echo`` that prints nothing (in-memory callers such as grid)."""


def layer_indices(layers: str | int | Sequence[int] | None, n_layers: int) -> tuple[int, ...]:
    """The one layer rule: ``None``/``"all"``, a spec like ``"0-11,20"``, one int, or a sequence of ints."""
    if layers is None or isinstance(layers, str):
        return parse_layers(layers, n_layers)
    if isinstance(layers, int):
        layers = [layers]
    return parse_layers(",".join(str(int(x)) for x in layers), n_layers)


@dataclass
class Resolved:
    """A selection matched on an inventory: the canonical names and every tensor it hits."""

    modules: tuple[str, ...]
    layers: tuple[int, ...]
    report: MatchReport
    # (canonical cell, tensor) for every hit, weights and biases; a fused tensor appears once per module.
    hits: list[tuple[ModuleKey, ParsedName]]


def resolve(inv: Inventory, modules: str | Sequence[str], layers: str | Sequence[int] | None = None,
            n_layers: int | None = None) -> Resolved:
    """Match ``modules`` x ``layers`` on ``inv``; refuse an empty or partial match (``MatchReport``).

    ``n_layers`` bounds the layer spec (from the config); without it the
    inventory's highest layer decides.
    """
    mods = parse_selection(modules)
    if n_layers is None:
        n_layers = max(inv.layers) + 1 if inv.layers else 0
    lays = layer_indices(layers, n_layers)
    rep = match(inv, mods, lays)
    hits = [(key, p) for key, plist in inv.modules.items() if key.module in mods and key.layer in lays
            for p in plist]
    return Resolved(mods, lays, rep, hits)


def module_paths(names: Iterable[str], modules: str | Sequence[str], layers: str | Sequence[int] | None = None,
                 n_layers: int | None = None) -> tuple[list[str], MatchReport]:
    """Module paths (``model.layers.3.mlp.gate_proj``) a selection hits among parameter ``names``.

    What LoRA tuning wraps: a fused tensor is refused, since a LoRA on it
    would also train the modules fused with the selected one.
    """
    res = resolve(inventory(names), modules, layers, n_layers)
    chosen_mods = set(parse_selection(modules))
    paths: set[str] = set()
    for _key, parsed in res.hits:
        if parsed.fused:
            held = FUSED[parsed.fused]
            chosen = [m for m in held if m in chosen_mods] or list(held)
            others = [m for m in held if m not in chosen]
            also = (f"LoRA on it would also train {', '.join(others)}" if others else
                    f"LoRA on it trains {', '.join(held)} as one matrix, not as separate modules")
            raise AffectlensError(
                f"{parsed.name} is a fused {parsed.fused} (holding {', '.join(held)}): {also}; "
                "targeted tuning of a single module needs unfused projections")
        paths.add(parsed.name.rsplit(".", 1)[0])
    return sorted(paths), res.report


@dataclass
class Selection:
    """What a module selection hits in one checkpoint: tensors and, for fused ones, row ranges."""

    modules: tuple[str, ...]
    layers: tuple[int, ...]
    report: MatchReport
    # tensor name -> row ranges to change (None: the whole tensor)
    tensors: dict[str, Rows] = field(default_factory=dict)

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

    def unchanged(self, what: str, source: WeightStore, base: WeightStore) -> AffectlensError:
        """The error for a source equal to BASE in every selected tensor: the result would change nothing."""
        return AffectlensError(
            f"nothing to {what}: {source.path} equals base {base.path} in every selected tensor "
            f"({','.join(self.modules)} x layers {format_ranges(self.layers)}); fine-tuning never touched them")


def num_layers(store: WeightStore) -> int:
    """Layers of a checkpoint: its config, else the highest layer index it holds."""
    n = store.config.get("num_hidden_layers")
    if n:
        return int(n)
    layers = store.inventory.layers
    return max(layers) + 1 if layers else 0


def select(store: WeightStore, modules: str | Sequence[str], layers: str | Sequence[int] | None = None,
           echo: Echo = print, label: str = "") -> Selection:
    """Resolve a selection on a checkpoint, print the matching table, refuse empty/partial matches."""
    res = resolve(store.inventory, modules, layers, num_layers(store))
    head = f"selection in {label or store.path}: {','.join(res.modules)} x layers {format_ranges(res.layers)}"
    echo(head + "\n" + res.report.table())
    sel = Selection(res.modules, res.layers, res.report)
    for key, p in res.hits:
        _add_rows(sel, store, p, key.module)
    return sel


def _add_rows(sel: Selection, store: WeightStore, p: ParsedName, module: str) -> None:
    """Record ``p`` (or, for a fused tensor, ``module``'s rows of it; all rows merge into None)."""
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


def apply_rows(cur: torch.Tensor, rows: Rows, fn: Callable[[torch.Tensor, slice], torch.Tensor]) -> torch.Tensor:
    """``cur`` with ``fn`` applied to the selected rows (all of it for ``None``); ``cur`` is not modified."""
    if rows is None:
        return fn(cur, slice(None))
    out = cur.clone()
    for r0, r1 in rows:
        out[r0:r1] = fn(cur[r0:r1], slice(r0, r1))
    return out


def match_adapter(adapter: LoraAdapter, modules: Sequence[str], layers: Sequence[int], prefix: str) -> MatchReport:
    """The adapter's own LoRA tensors must cover every selected cell (else it never tuned some of them)."""
    try:
        return match(inventory(adapter.store.names()), modules, layers)
    except AffectlensError as e:
        raise AffectlensError(f"{prefix}{e}") from None


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
    """Weight shape per canonical module in one layer (dense weights; experts skipped)."""
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


__all__ = [
    "Echo",
    "Resolved",
    "Rows",
    "Selection",
    "apply_rows",
    "control_selection",
    "layer_indices",
    "match_adapter",
    "module_paths",
    "module_shapes",
    "module_sizes",
    "num_layers",
    "quiet",
    "resolve",
    "select",
]

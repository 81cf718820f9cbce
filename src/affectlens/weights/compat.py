"""Do two checkpoints belong together? One architecture check and one adapter-fits-base check.

Comparing (locate), transferring or ablating across checkpoints only means
something when both are the same network: the same config shape keys and the
same tensor shapes. A LoRA adapter must adapt modules the base has, with
matrices of the base's (out, in) shape. Every command asks these two
questions here, so they get one answer and one wording.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..errors import AffectlensError

if TYPE_CHECKING:  # annotations only: the check itself needs no torch
    from .base import WeightStore
    from .lora import LoraAdapter

ARCH_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "intermediate_size",
             "num_attention_heads", "num_key_value_heads")


def check_architecture(base: WeightStore, other: WeightStore, what: str, names: Iterable[str] | None = None,
                       ref: str = "base") -> list[str]:
    """Refuse ``other`` unless it is ``base``'s architecture; return its tensors ``base`` lacks.

    Config keys that both sides state must agree. ``names`` are the tensors
    that must exist in ``other`` with ``base``'s shape; ``None`` means every
    tensor of ``base``, where a non-projection tensor ``other`` lacks (a tied
    ``lm_head`` saved by one side only) is tolerated and left to the caller
    to report. ``what`` names ``other`` in messages, ``ref`` names ``base``.
    """
    cb, co = base.config, other.config
    for key in ARCH_KEYS:
        if cb.get(key) is not None and co.get(key) is not None and cb[key] != co[key]:
            raise AffectlensError(
                f"architecture mismatch between {ref} {base.path} and {what}: {key} is {cb[key]} vs {co[key]}")
    if names is None:
        projections = {p.name for ps in base.inventory.modules.values() for p in ps}
        wanted = [n for n in base.names() if n in other or n in projections]
    else:
        wanted = list(names)
    for name in wanted:
        if name not in other:
            raise AffectlensError(f"tensor {name} of {ref} {base.path} is missing from {what} (another architecture?)")
        if tuple(other.shape(name)) != tuple(base.shape(name)):
            raise AffectlensError(
                f"shape mismatch for {name}: {ref} {list(base.shape(name))} vs {what} {list(other.shape(name))} "
                "(another architecture?)")
    return sorted(n for n in other.names() if n not in base)


def check_adapter_fits(base: WeightStore, adapter: LoraAdapter, what: str | None = None) -> None:
    """Refuse an adapter whose LoRA or full-replacement tensors do not fit ``base`` (another base?)."""
    label = what or f"adapter {adapter.path}"
    for mod in adapter.modules.values():
        target = adapter.target_weight_name(mod)
        if target not in base:
            raise AffectlensError(
                f"{label} targets {mod.path}, which base {base.path} does not have: an adapter for another base?")
        out_f, in_f = base.shape(target)[0], base.shape(target)[-1]
        a_shape, b_shape = adapter.store.shape(mod.a_name), adapter.store.shape(mod.b_name)
        if a_shape[-1] != in_f or b_shape[0] != out_f:
            raise AffectlensError(
                f"{label} does not fit base {base.path} at {mod.path}: LoRA maps {a_shape[-1]}->{b_shape[0]} "
                f"but the base weight is {in_f}->{out_f}: an adapter for another base?")
    for body, name in adapter.replacements.items():
        if body not in base:
            raise AffectlensError(f"{label} replaces {body}, which base {base.path} does not have")
        if tuple(adapter.store.shape(name)) != tuple(base.shape(body)):
            raise AffectlensError(
                f"{label}: replacement {body} is {list(adapter.store.shape(name))}, "
                f"base {base.path} has {list(base.shape(body))}")


__all__ = ["ARCH_KEYS", "check_adapter_fits", "check_architecture"]

"""Every weight source as one ``WeightStore``: a tuned model may be BASE plus a LoRA adapter.

Transfer, ablate and grid read "the tuned model" one tensor at a time, whether
it is a checkpoint on disk, a loaded model, a state dict, or a PEFT adapter
over its base. ``MergedStore`` merges the adapter on read, so no merged model
is ever written or held in memory; ``as_store`` turns any of those sources
into a store.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from ..errors import AffectlensError
from ..weights.compat import check_adapter_fits
from ..weights.finite import tensor_file
from ..weights.lora import LoraAdapter
from ..weights.store import TensorDictStore, WeightStore, open_weights


class MergedStore(WeightStore):
    """BASE with a LoRA adapter merged on read: the tuned model, one tensor at a time.

    ``modules`` restricts which adapted modules are merged (module paths as the
    adapter names them); ``None`` merges all of them and its full replacements.
    ``path`` is the adapter's, so messages name the file the change came from.
    """

    def __init__(self, base: WeightStore, adapter: LoraAdapter, modules: set[str] | None = None) -> None:
        self.base = base
        self.adapter = adapter
        self.only = modules
        self.path = adapter.path
        check_adapter_fits(base, adapter)

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


def model_config(model: Any) -> dict[str, Any]:
    """A loaded model's config as a dict; a VLM's text config, which is what its weights follow."""
    cfg = getattr(model, "config", None)
    if cfg is None:
        return {}
    d = cfg.to_dict()
    for key in ("text_config", "language_config", "llm_config"):
        if isinstance(d.get(key), dict):
            return {**d[key], "model_type": d[key].get("model_type", d.get("model_type"))}
    return d


def adapter_base(adapter: LoraAdapter, base: Any = None) -> Any:
    """The base an adapter applies to: ``base`` if given, else the one its config names."""
    if base is not None:
        return base
    if not adapter.base_model:
        raise AffectlensError(f"adapter {adapter.path} does not name its base model; pass --base")
    from .adapters import resolve_adapter_base  # a name or a path relative to the adapter dir

    return resolve_adapter_base(adapter.path)


def as_store(source: Any, base: Any = None, allow_pickle: bool = False) -> WeightStore:
    """A checkpoint path, adapter dir (needs or names its base), store, model or state dict -> store."""
    if isinstance(source, WeightStore):
        return source
    if isinstance(source, LoraAdapter):
        return MergedStore(as_store(adapter_base(source, base), allow_pickle=allow_pickle), source)
    if isinstance(source, torch.nn.Module):
        sd = source.state_dict()
        return TensorDictStore(sd, model_config(source), path=f"<{type(source).__name__}>")
    if isinstance(source, dict):
        return TensorDictStore(source)
    if isinstance(source, str | os.PathLike):
        from .resolve import is_adapter_dir, resolve_model_path

        p = resolve_model_path(source)
        if p.is_dir() and is_adapter_dir(p):
            ad = LoraAdapter(p, allow_pickle=allow_pickle)
            return MergedStore(as_store(adapter_base(ad, base), allow_pickle=allow_pickle), ad)
        return open_weights(p, allow_pickle=allow_pickle)
    raise AffectlensError(f"cannot read weights from a {type(source).__name__}")


__all__ = ["MergedStore", "adapter_base", "as_store", "model_config"]

"""PEFT LoRA adapters read as data, and the maths that avoids forming BA.

For a 7B-shaped module, ``B @ A`` is a 18944×3584 matrix per layer; its
Frobenius norm only needs two r×r Gram matrices:
``‖sBA‖²_F = s² · Σ((BᵀB) ∘ (AAᵀ))``, done in float64 (float32 loses ~5e-3).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import AffectlensError
from ..modules import FUSED, ModuleKey, ParsedName, parse_name, strip_peft
from .store import SafetensorsStore, WeightStore, open_weights


def lora_delta_norm(A: torch.Tensor, B: torch.Tensor, scale: float) -> float:
    """‖scale·B·A‖_F from r×r Grams in float64: O(r²(in+out)), never O(in·out)."""
    a = A.to(torch.float64)
    b = B.to(torch.float64)
    ga = a @ a.T  # r×r
    gb = b.T @ b  # r×r
    sq = float(torch.sum(ga * gb))
    return abs(scale) * math.sqrt(max(sq, 0.0))


def lora_inner(W: torch.Tensor, A: torch.Tensor, B: torch.Tensor, chunk_rows: int = 4096) -> float:
    """⟨W, BA⟩_F = Σ((W Aᵀ) ∘ B), streamed over W's rows in float64."""
    a_t = A.to(torch.float64).T
    total = 0.0
    for r0 in range(0, W.shape[0], chunk_rows):
        w = W[r0 : r0 + chunk_rows].to(torch.float64)
        total += float(torch.sum((w @ a_t) * B[r0 : r0 + chunk_rows].to(torch.float64)))
    return total


def _pattern_value(patterns: dict[str, Any] | None, module_path: str, default: Any) -> Any:
    """PEFT's rank_pattern/alpha_pattern lookup: key matches the path's tail."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module_path):
            return value
    return default


@dataclass(frozen=True)
class LoraModule:
    """One adapted module: where its tensors are and how to scale them."""

    path: str  # module path as PEFT names it, without base_model.model.
    parsed: ParsedName
    a_name: str
    b_name: str
    rank: int
    alpha: float
    scale: float
    magnitude_name: str | None = None

    @property
    def key(self) -> ModuleKey:
        assert self.parsed.key is not None
        return self.parsed.key


class LoraAdapter:
    """A PEFT adapter dir: config, per-module scales, LoRA and full-replacement tensors."""

    def __init__(self, path: str | os.PathLike, allow_pickle: bool = False) -> None:
        self.path = Path(path)
        cfg_path = self.path / "adapter_config.json"
        if not cfg_path.is_file():
            raise AffectlensError(f"{self.path} is not a PEFT adapter dir (no adapter_config.json)")
        try:
            self.config: dict[str, Any] = json.loads(cfg_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise AffectlensError(f"corrupt adapter_config.json in {self.path}: {e}") from None
        if not isinstance(self.config, dict):
            raise AffectlensError(
                f"corrupt adapter_config.json in {self.path}: a JSON {type(self.config).__name__}, not an object")
        ptype = str(self.config.get("peft_type", "LORA")).upper()
        if ptype != "LORA":
            raise AffectlensError(f"adapter {self.path.name} is {ptype}; only LoRA adapters are supported")
        if self.config.get("lora_bias"):
            raise AffectlensError("adapters with lora_bias=True are not supported yet")
        st = self.path / "adapter_model.safetensors"
        if st.is_file():
            self.store: WeightStore = SafetensorsStore(self.path, [st], {})
        elif (self.path / "adapter_model.bin").is_file():
            self.store = open_weights(self.path / "adapter_model.bin", allow_pickle=allow_pickle)
        else:
            raise AffectlensError(f"adapter {self.path} has no adapter_model.safetensors")
        self.use_dora = bool(self.config.get("use_dora"))
        self.rslora = bool(self.config.get("use_rslora"))
        self.modules: dict[str, LoraModule] = {}
        self.replacements: dict[str, str] = {}  # HF tensor name -> adapter tensor name
        self.unmatched: list[str] = []
        self._index()

    @property
    def base_model(self) -> str | None:
        return self.config.get("base_model_name_or_path")

    def scale_for(self, module_path: str, rank: int) -> tuple[float, float]:
        """(alpha, scale) for a module, honouring alpha_pattern and rsLoRA."""
        alpha = float(_pattern_value(self.config.get("alpha_pattern"), module_path,
                                     self.config.get("lora_alpha", 8)))
        scale = alpha / math.sqrt(rank) if self.rslora else alpha / rank
        return alpha, scale

    def _index(self) -> None:
        a_names: dict[str, str] = {}
        b_names: dict[str, str] = {}
        mags: dict[str, str] = {}
        for name in self.store.names():
            p = parse_name(name)
            body = strip_peft(name)
            if p.lora in ("A", "B", "magnitude"):
                mpath = re.sub(
                    r"\.(lora_A|lora_B|lora_embedding_A|lora_embedding_B|lora_magnitude_vector)(\..*)?$",
                    "", body)
                {"A": a_names, "B": b_names, "magnitude": mags}[p.lora][mpath] = name
            else:
                self.replacements[body] = name
        for mpath, a in a_names.items():
            b = b_names.get(mpath)
            if b is None:
                raise AffectlensError(f"adapter {self.path.name}: {mpath} has lora_A but no lora_B")
            p = parse_name(a)
            rank = self.store.shape(a)[0]
            expected = int(_pattern_value(self.config.get("rank_pattern"), mpath, self.config.get("r", rank)))
            if expected != rank:
                raise AffectlensError(
                    f"adapter {self.path.name}: {mpath} has rank {rank} but its config says {expected}")
            alpha, scale = self.scale_for(mpath, rank)
            if p.scope != "module":
                self.unmatched.append(mpath)
            self.modules[mpath] = LoraModule(mpath, p, a, b, rank, alpha, scale, mags.get(mpath))
        if self.use_dora:
            missing = [m for m in self.modules.values() if m.magnitude_name is None]
            if missing:
                raise AffectlensError(f"DoRA adapter lacks lora_magnitude_vector for {missing[0].path}")

    def target_weight_name(self, module: LoraModule) -> str:
        """The base tensor this LoRA module adapts (HF name)."""
        return module.path + ".weight"

    def replacement_for(self, base_name: str) -> str | None:
        """The adapter tensor (modules_to_save) that fully replaces ``base_name``, if any."""
        return self.replacements.get(base_name)

    def module_for(self, base_name: str) -> LoraModule | None:
        if base_name.endswith(".weight"):
            return self.modules.get(base_name[: -len(".weight")])
        return None

    def delta_rows(self, module: LoraModule, r0: int, r1: int, base_rows: torch.Tensor | None = None
                   ) -> torch.Tensor:
        """ΔW rows [r0, r1) in float32 (plain LoRA: s·B[r0:r1]·A; DoRA needs ``base_rows``).

        A plain LoRA's entries sum ``rank`` float32 products: an error bound that does not grow with
        the tensor (its norm comes from the Grams anyway). DoRA's ΔW = m/‖W+sBA‖·(W+sBA) − W is formed
        in float64 and rounded once to float32, as a − b of two checkpoints is: a float32 row norm
        (in_features terms) and a float32 W+sBA would carry errors relative to W, not to ΔW, into
        Σ(ΔW)²; this way ``reduce.ssq_rel_bound(n, delta=True)`` holds for DoRA too, up to float64
        rounding relative to W (~(in_features + rank)·2⁻⁵³·‖W‖/‖ΔW‖).
        """
        A = self.store.get(module.a_name)
        B = self.store.get(module.b_name)[r0:r1]
        if not self.use_dora:
            return module.scale * (B.to(torch.float32) @ A.to(torch.float32))
        if base_rows is None:
            raise AffectlensError("DoRA adapters need the base weights to compute the change")
        assert module.magnitude_name is not None  # refused at load for a DoRA adapter
        m = self.store.get(module.magnitude_name)[r0:r1].to(torch.float64)
        w = base_rows.to(torch.float64)
        v = (B.to(torch.float64) @ A.to(torch.float64)).mul_(module.scale).add_(w)
        return v.mul_((m / torch.linalg.vector_norm(v, dim=1)).unsqueeze(1)).sub_(w).to(torch.float32)

    def fused_b_rows(self, module: LoraModule) -> int:
        return self.store.shape(module.b_name)[0]


def open_adapter(path: str | os.PathLike, allow_pickle: bool = False) -> LoraAdapter:
    return LoraAdapter(path, allow_pickle=allow_pickle)


__all__ = ["FUSED", "LoraAdapter", "LoraModule", "lora_delta_norm", "lora_inner", "open_adapter"]

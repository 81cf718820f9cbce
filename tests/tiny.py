"""Tiny in-process models for tests: built from a config, saved where asked."""

from __future__ import annotations

from pathlib import Path

import torch

ARCHS = ("llama", "qwen2", "mistral", "qwen3", "gemma")


def tiny_config(arch: str = "llama", layers: int = 2, hidden: int = 32, ffn: int = 64,
                heads: int = 4, kv_heads: int = 2, vocab: int = 128):
    """A tiny config of a real architecture family (GQA on by default)."""
    from transformers import AutoConfig

    kw = dict(hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
              num_attention_heads=heads, num_key_value_heads=kv_heads, vocab_size=vocab,
              max_position_embeddings=256)
    if arch == "gemma":
        kw["head_dim"] = hidden // heads
    return AutoConfig.for_model(arch, **kw)


def tiny_model(arch: str = "llama", seed: int = 0, **kw):
    """A randomly initialised tiny causal LM, float32, eval mode."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, **kw))
    return model.eval()


def save_tiny(path: str | Path, arch: str = "llama", seed: int = 0, max_shard_size: str | None = None,
              **kw):
    """Save a tiny model as an HF dir (sharded when ``max_shard_size`` is given)."""
    model = tiny_model(arch, seed, **kw)
    extra = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(path, safe_serialization=True, **extra)
    return model


def plant_projections(model, scale: float = 0.05, seed: int = 11):
    """Add seeded noise to every projection weight: a 'tuned' model whose delta is known."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "_proj" in name:
                p.add_(scale * torch.randn(p.shape, generator=g))
    return model


def save_tiny_pair(d: Path) -> tuple[Path, Path]:
    """A 2-layer base and a differently seeded "tuned" model of the same shape (what locate compares)."""
    save_tiny(d / "base", "llama", layers=2)
    save_tiny(d / "tuned", "llama", layers=2, seed=1)
    return d / "base", d / "tuned"

"""Lazy stores return exactly what transformers loads, for every format."""

from __future__ import annotations

import json
import os

import pytest
import torch

from affectlens.errors import AffectlensError
from affectlens.weights import open_weights

from conftest import STORIES260K
from tiny import save_tiny


def test_gguf_matches_transformers_dequantisation():
    """Our GGUF reader (names, q/k un-permutation, dequantisation) equals transformers' loader."""
    from safetensors.torch import load_file

    from affectlens.models.resolve import default_gguf_path, default_model_dir

    hf = load_file(default_model_dir() / "model.safetensors")
    store = open_weights(default_gguf_path())
    assert store.config["num_hidden_layers"] == 30 and store.config["num_key_value_heads"] == 3
    assert set(store.names()) == set(hf) | ({"lm_head.weight"} & set(store.names()))
    for name in store.names():
        assert torch.equal(store.get(name), hf[name].to(torch.float32)), name
    assert len(store.inventory.modules) == 30 * 7


def test_sharded_rows_and_index(tmp_path):
    m = save_tiny(tmp_path / "m", "qwen2", max_shard_size="10KB")
    sd = m.state_dict()
    store = open_weights(tmp_path / "m")
    assert set(store.names()) == set(sd)
    for n in store.names():
        assert torch.equal(store.get(n), sd[n]) and store.shape(n) == tuple(sd[n].shape)
    w = "model.layers.1.mlp.down_proj.weight"
    assert torch.equal(store.read_rows(w, 5, 9), sd[w][5:9])
    index = json.loads((tmp_path / "m" / "model.safetensors.index.json").read_text())
    victim = sorted(set(index["weight_map"].values()))[1]
    (tmp_path / "m" / victim).unlink()
    with pytest.raises(AffectlensError, match="missing shard"):
        open_weights(tmp_path / "m")


def test_real_bf16_roundtrip_and_single_file(tmp_path):
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(STORIES260K, dtype=torch.bfloat16)
    m.save_pretrained(tmp_path / "bf16")
    store = open_weights(tmp_path / "bf16" / "model.safetensors")
    sd = m.state_dict()
    # save_pretrained drops a tied lm_head; every other tensor must be there.
    expected = set(sd) - ({"lm_head.weight"} if m.config.tie_word_embeddings else set())
    assert set(store.names()) == expected and len(expected) > 10
    for n in expected:
        got = store.get(n)
        assert got.dtype == torch.bfloat16 and torch.equal(got, sd[n]), n


def test_test_cache_is_isolated(session_cache):
    """The suite never writes into the user's real cache."""
    from affectlens.models.resolve import cache_dir

    assert cache_dir() == session_cache
    assert not str(cache_dir()).startswith(os.path.expanduser("~/.cache"))


def test_unknown_format_and_missing(tmp_path):
    (tmp_path / "x.onnx").write_bytes(b"0")
    with pytest.raises(AffectlensError, match="unknown checkpoint format"):
        open_weights(tmp_path / "x.onnx")
    with pytest.raises(AffectlensError, match="does not exist"):
        open_weights(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AffectlensError, match="no weights"):
        open_weights(tmp_path / "empty")


def test_store_split_keeps_public_imports():
    """One class per format, each in its own module, all still reachable from weights and weights.store."""
    import affectlens.weights as W
    from affectlens.weights import base, gguf_store, pickle_store, safetensors_store, store

    assert W.open_weights is store.open_weights
    assert W.SafetensorsStore is store.SafetensorsStore is safetensors_store.SafetensorsStore
    assert W.GGUFStore is store.GGUFStore is gguf_store.GGUFStore
    assert W.PickleStore is store.PickleStore is pickle_store.PickleStore
    assert W.WeightStore is store.WeightStore is base.WeightStore
    assert W.TensorDictStore is store.TensorDictStore is base.TensorDictStore
    assert store.read_safetensors_header is safetensors_store.read_safetensors_header
    assert W.pickle_refusal is pickle_store.pickle_refusal

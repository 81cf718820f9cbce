"""Name parsing on real-looking state-dict keys of every architecture family."""

from __future__ import annotations

import pytest

from affectlens.errors import AffectlensError
from affectlens.modules import (
    ModuleKey,
    inventory,
    match,
    parse_layers,
    parse_name,
    parse_selection,
    split_rows,
)


def _key(name: str) -> ModuleKey | None:
    return parse_name(name).key


LLAMA_KEYS = [
    "model.embed_tokens.weight",
    "model.layers.0.input_layernorm.weight",
    "model.layers.0.self_attn.q_proj.weight",
    "model.layers.0.self_attn.k_proj.weight",
    "model.layers.0.self_attn.v_proj.weight",
    "model.layers.0.self_attn.o_proj.weight",
    "model.layers.0.mlp.gate_proj.weight",
    "model.layers.0.mlp.up_proj.weight",
    "model.layers.0.mlp.down_proj.weight",
    "model.layers.0.post_attention_layernorm.weight",
    "model.norm.weight",
    "lm_head.weight",
]


def test_llama_mistral_gemma_keys():
    inv = inventory(LLAMA_KEYS)
    assert sorted(k.module for k in inv.modules) == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    assert inv.others == {"embed": ["model.embed_tokens.weight"],
                          "norm": ["model.layers.0.input_layernorm.weight",
                                   "model.layers.0.post_attention_layernorm.weight", "model.norm.weight"],
                          "lm_head": ["lm_head.weight"]}


def test_qwen_biases_are_their_own_param():
    assert _key("model.layers.3.self_attn.q_proj.bias") == ModuleKey(3, "q_proj", "bias")
    assert _key("model.layers.3.self_attn.q_proj.weight") == ModuleKey(3, "q_proj", "weight")
    # Qwen3 q/k norms are norms, not projections
    assert parse_name("model.layers.3.self_attn.q_norm.weight").scope == "norm"


@pytest.mark.parametrize("prefix", ["language_model.model.", "model.language_model.", "language_model."])
def test_vlm_prefixes(prefix):
    assert _key(f"{prefix}layers.7.mlp.gate_proj.weight") == ModuleKey(7, "gate_proj")


def test_vlm_encoders_and_projectors_are_listed_apart():
    names = [
        "model.visual.blocks.0.attn.qkv.weight",
        "visual.blocks.3.mlp.fc1.weight",
        "vision_tower.vision_model.encoder.layers.0.self_attn.q_proj.weight",
        "multi_modal_projector.linear_1.weight",
        "model.visual.merger.mlp.0.weight",
        "model.language_model.layers.0.self_attn.q_proj.weight",
    ]
    inv = inventory(names)
    assert list(inv.modules) == [ModuleKey(0, "q_proj")]
    assert len(inv.others["vision"]) == 3
    assert sorted(inv.others["projector"]) == ["model.visual.merger.mlp.0.weight",
                                               "multi_modal_projector.linear_1.weight"]


def test_peft_names():
    p = parse_name("base_model.model.model.layers.2.mlp.gate_proj.lora_A.weight")
    assert (p.key, p.lora) == (ModuleKey(2, "gate_proj"), "A")
    p = parse_name("base_model.model.model.layers.2.self_attn.v_proj.lora_B.default.weight")
    assert (p.key, p.lora) == (ModuleKey(2, "v_proj"), "B")
    p = parse_name("base_model.model.model.layers.1.self_attn.o_proj.lora_magnitude_vector")
    assert (p.key, p.lora) == (ModuleKey(1, "o_proj"), "magnitude")
    p = parse_name("base_model.model.model.layers.1.mlp.up_proj.base_layer.weight")
    assert (p.key, p.lora) == (ModuleKey(1, "up_proj"), None)


def test_fused_phi3():
    p = parse_name("model.layers.4.mlp.gate_up_proj.weight")
    assert p.fused == "gate_up_proj" and p.key.layer == 4
    assert split_rows("gate_up_proj", 16) == {"gate_proj": (0, 8), "up_proj": (8, 16)}
    cfg = {"num_attention_heads": 8, "num_key_value_heads": 2, "hidden_size": 64}
    # q: 8*8=64 rows, k and v: 2*8=16 rows each
    assert split_rows("qkv_proj", 96, cfg) == {"q_proj": (0, 64), "k_proj": (64, 80), "v_proj": (80, 96)}
    with pytest.raises(AffectlensError, match="qkv_proj has 90 rows"):
        split_rows("qkv_proj", 90, cfg)
    inv = inventory(["model.layers.0.mlp.gate_up_proj.weight", "model.layers.0.self_attn.qkv_proj.weight"])
    assert {k.module for k in inv.modules} == {"gate_proj", "up_proj", "q_proj", "k_proj", "v_proj"}


def test_moe_experts():
    assert _key("model.layers.1.block_sparse_moe.experts.5.w1.weight") == ModuleKey(1, "gate_proj", expert=5)
    assert _key("model.layers.1.block_sparse_moe.experts.5.w3.weight") == ModuleKey(1, "up_proj", expert=5)
    assert _key("model.layers.1.block_sparse_moe.experts.5.w2.weight") == ModuleKey(1, "down_proj", expert=5)
    assert parse_name("model.layers.1.block_sparse_moe.gate.weight").scope == "router"
    assert _key("model.layers.0.mlp.experts.12.gate_proj.weight") == ModuleKey(0, "gate_proj", expert=12)
    assert _key("model.layers.0.mlp.shared_expert.up_proj.weight") == ModuleKey(0, "up_proj", expert=-1)
    assert parse_name("model.layers.0.mlp.gate.weight").scope == "router"
    assert parse_name("model.layers.0.mlp.shared_expert_gate.weight").scope == "router"


def test_gguf_names():
    assert _key("blk.3.ffn_gate.weight") == ModuleKey(3, "gate_proj")
    assert _key("blk.3.attn_output.weight") == ModuleKey(3, "o_proj")
    assert parse_name("token_embd.weight").scope == "embed"


def test_unmatched_are_reported_not_dropped():
    inv = inventory(["model.layers.0.mlp.gate_proj.weight", "model.layers.0.mystery.weight",
                     "totally.unknown"])
    assert inv.others["other"] == ["model.layers.0.mystery.weight"]
    assert inv.others["unknown"] == ["totally.unknown"]
    assert inv.summary()["module_tensors"] == 1


def test_selection_and_layers():
    assert parse_selection("attn,gate_proj") == ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj")
    assert parse_selection("ffn") == ("gate_proj", "up_proj", "down_proj")
    assert parse_selection("all") == parse_selection(["attn", "ffn"])
    with pytest.raises(AffectlensError, match="unknown module 'gate'"):
        parse_selection("gate")
    with pytest.raises(AffectlensError, match="empty"):
        parse_selection(" , ")
    assert parse_layers("0-2,5", 6) == (0, 1, 2, 5)
    with pytest.raises(AffectlensError, match="out of range"):
        parse_layers("0-6", 6)
    assert parse_layers("2-2", 6) == (2,)
    with pytest.raises(AffectlensError, match="reversed layer range '3-1'") as e:
        parse_layers("0,3-1", 6)
    assert "\n" not in str(e.value)


def test_loud_match():
    inv = inventory([f"model.layers.{i}.mlp.{m}.weight" for i in range(3) for m in ("gate_proj", "up_proj")])
    rep = match(inv, ("gate_proj",), (0, 2))
    assert [k.layer for k in rep.matched] == [0, 2]
    assert "gate_proj" in rep.table()
    with pytest.raises(AffectlensError, match="matched no tensor"):
        match(inv, ("q_proj",))
    with pytest.raises(AffectlensError, match="partly unmatched"):
        match(inv, ("gate_proj", "down_proj"))

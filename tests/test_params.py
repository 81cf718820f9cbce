"""Parameter accounting from config.json matches PEFT and the published Qwen2.5-7B figures."""

from __future__ import annotations

import json

import pytest

from affectlens.cli import main
from affectlens.errors import AffectlensError
from affectlens.params import count_params, load_config

from tiny import ARCHS, tiny_model

# Qwen2.5-7B-Instruct's config.json (the fields that matter), kept as a fixture.
QWEN25_7B = {
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 3584,
    "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
    "num_key_value_heads": 4, "vocab_size": 152064, "tie_word_embeddings": False,
    "max_position_embeddings": 32768, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
    "hidden_act": "silu", "torch_dtype": "bfloat16",
}


def test_qwen25_7b_affectgpt_setting():
    rep = count_params(QWEN25_7B, "all", rank=16)
    assert rep.lora_total == 40_370_176  # AffectGPT's trainable LoRA parameters
    # Hand arithmetic per layer: 16*(in+out) with k/v out = 4*128 = 512.
    per_layer = 16 * ((3584 + 3584) * 2 + (3584 + 512) * 2 + (3584 + 18944) * 3)
    assert rep.lora_total == 28 * per_layer


def test_qwen25_7b_gate_is_exactly_a_quarter():
    rep = count_params(QWEN25_7B, "gate_proj", rank=16)
    assert rep.lora_total * 4 == rep.reference_lora_total == 40_370_176
    assert rep.lora_share == 0.25
    assert rep.lora_total == 28 * 16 * (3584 + 18944)


def test_qwen25_7b_full_counts_include_qkv_bias():
    rep = count_params(QWEN25_7B, "attn", rank=16)
    by = {m.module: m for m in rep.modules}
    assert by["q_proj"].full_per_layer == 3584 * 3584 + 3584
    assert by["k_proj"].full_per_layer == 3584 * 512 + 512
    assert by["o_proj"].full_per_layer == 3584 * 3584  # no bias on o_proj
    # LoRA never counts biases.
    assert by["k_proj"].lora_per_layer == 16 * (3584 + 512)
    # Whole model: the published 7.62B (7,615,616,512) parameters.
    assert rep.model_params == 7_615_616_512


SELECTIONS = ("gate_proj", "attn", "ffn", "all", "q_proj,v_proj", "k_proj,down_proj")


@pytest.mark.parametrize("arch", ARCHS)
def test_lora_counts_match_peft(arch):
    from peft import LoraConfig, get_peft_model

    base = tiny_model(arch, seed=1, layers=3, hidden=48, ffn=80, heads=4, kv_heads=2)
    cfg = base.config.to_dict()
    for sel in SELECTIONS:
        rep = count_params(cfg, sel, rank=4)
        model = tiny_model(arch, seed=1, layers=3, hidden=48, ffn=80, heads=4, kv_heads=2)
        targets = list(rep.selection)
        peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=targets))
        trainable, _ = peft_model.get_nb_trainable_parameters()
        assert rep.lora_total == trainable, (arch, sel)


def test_layer_subset_matches_peft():
    from peft import LoraConfig, get_peft_model

    model = tiny_model("llama", seed=2, layers=4, hidden=32, ffn=64, heads=4, kv_heads=1)
    rep = count_params(model.config.to_dict(), "gate_proj,o_proj", rank=8, layers="1,3")
    pm = get_peft_model(model, LoraConfig(r=8, target_modules=["gate_proj", "o_proj"],
                                          layers_to_transform=[1, 3]))
    assert rep.lora_total == pm.get_nb_trainable_parameters()[0]
    assert rep.layers == (1, 3)


@pytest.mark.parametrize("arch", ARCHS)
def test_full_and_model_counts_match_the_real_modules(arch):
    model = tiny_model(arch, seed=0, layers=2, hidden=32, ffn=64, heads=4, kv_heads=2)
    rep = count_params(model.config.to_dict(), "all", rank=2)
    assert rep.model_params == sum(p.numel() for p in model.parameters())
    for m in rep.modules:
        real = sum(p.numel() for n, p in model.named_parameters() if f".{m.module}." in n)
        assert m.full == real, (arch, m.module)


def test_cli_prints_share_and_total(tmp_path, capsys):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(QWEN25_7B))
    assert main(["params", str(path), "--modules", "gate_proj", "--rank", "16"]) == 0
    out = capsys.readouterr().out
    assert "25.0 %" in out and "40,370,176" in out and "10,092,544" in out
    assert main(["params", str(tmp_path), "--modules", "all", "--rank", "16", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["lora_total"] == 40_370_176 and d["lora_share_of_reference"] == 1.0
    # Without --rank: tune's default rank (TuneConfig, r=8), so LoRA counts are half of r=16's.
    assert main(["params", str(tmp_path), "--modules", "all", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["rank"] == 8 and d["lora_total"] == 40_370_176 // 2


def test_vlm_wrapper_reads_text_config():
    cfg = {"model_type": "llava", "text_config": QWEN25_7B, "vision_config": {"hidden_size": 1024}}
    assert count_params(cfg, "all", 16).lora_total == 40_370_176
    assert load_config(cfg)["hidden_size"] == 3584


@pytest.mark.parametrize("argv, msg", [
    (["--modules", "gate_projx"], "unknown module"),
    (["--modules", "all", "--rank", "0"], "rank must be"),
    (["--modules", "all", "--layers", "40"], "out of range"),
])
def test_bad_inputs_are_one_line_errors(tmp_path, capsys, argv, msg):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(QWEN25_7B))
    assert main(["params", str(path), *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and msg in err


def test_bad_configs(tmp_path, capsys):
    assert main(["params", str(tmp_path / "missing.json"), "--modules", "all"]) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main(["params", str(bad), "--modules", "all"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    with pytest.raises(AffectlensError, match="mixture-of-experts"):
        count_params({**QWEN25_7B, "num_local_experts": 8}, "all")
    with pytest.raises(AffectlensError, match="no 'intermediate_size'"):
        count_params({k: v for k, v in QWEN25_7B.items() if k != "intermediate_size"}, "all")

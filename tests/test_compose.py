"""Transfer and ablation: bit-exact provenance, PEFT as the LoRA oracle, planted deltas."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from affectlens.cli import main
from affectlens.errors import AffectlensError
from affectlens.interventions.ablate import ablate_tensors
from affectlens.interventions.transfer import applied, transfer_tensors

from tiny import plant_projections, save_tiny, tiny_model

ATTN_GATE = re.compile(r"\.self_attn\.(q|k|v|o)_proj\.|\.mlp\.gate_proj\.")
IDS = torch.tensor([[1, 5, 9, 17, 33, 2, 64, 100]])


def load_dir(d: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(d.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


def one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("affectlens: error:") and "\n" not in err, err
    return err


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A base and a same-architecture 'fine-tune' (another init), sharded and single-file."""
    root = tmp_path_factory.mktemp("pair")
    save_tiny(root / "base_single", "llama", seed=0)
    save_tiny(root / "donor_single", "llama", seed=1)
    save_tiny(root / "base_sharded", "llama", seed=0, max_shard_size="20KB")
    save_tiny(root / "donor_sharded", "llama", seed=1, max_shard_size="20KB")
    assert (root / "base_sharded" / "model.safetensors.index.json").is_file()
    return root


@pytest.mark.parametrize("layout", ["single", "sharded"])
def test_transfer_full_donor_is_bit_exact_and_loads(pair, tmp_path, capsys, layout):
    from transformers import AutoModelForCausalLM

    base, donor, out = pair / f"base_{layout}", pair / f"donor_{layout}", tmp_path / "out"
    extra = ["--max-shard-size", "30KB"] if layout == "sharded" else []
    assert main(["transfer", str(base), str(donor), "--modules", "attn,gate_proj", "--out", str(out), *extra]) == 0
    printed = capsys.readouterr().out
    assert "gate_proj" in printed and "matched layers" in printed  # the table comes first
    if layout == "sharded":
        index = json.loads((out / "model.safetensors.index.json").read_text())
        assert len(set(index["weight_map"].values())) > 1
    else:
        assert (out / "model.safetensors").is_file()
    b, d, o = load_dir(base), load_dir(donor), load_dir(out)
    assert set(o) == set(b)
    n_sel = 0
    for name, t in o.items():
        src = d if ATTN_GATE.search(name) else b
        n_sel += bool(ATTN_GATE.search(name))
        assert t.dtype == src[name].dtype
        assert torch.equal(t.view(torch.uint8) if t.dtype == torch.bool else t, src[name]), name
    assert n_sel == 2 * 5  # 2 layers x (q, k, v, o, gate)
    assert (out / "config.json").is_file()

    loaded = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    hand = tiny_model("llama", seed=0)
    donor_model = tiny_model("llama", seed=1)
    dsd = donor_model.state_dict()
    with torch.no_grad():
        for name, p in hand.named_parameters():
            if ATTN_GATE.search(name):
                p.copy_(dsd[name])
    assert torch.equal(logits(loaded), logits(hand))


def test_transfer_in_memory_matches_disk(pair, tmp_path):
    model = tiny_model("llama", seed=0)
    before = logits(model)
    tensors, sel = transfer_tensors(model, pair / "donor_single", "gate_proj", layers="1", echo=lambda s: None)
    assert sorted(tensors) == ["model.layers.1.mlp.gate_proj.weight"]
    dsd = load_dir(pair / "donor_single")
    hand = tiny_model("llama", seed=0)
    with torch.no_grad():
        hand.model.layers[1].mlp.gate_proj.weight.copy_(dsd["model.layers.1.mlp.gate_proj.weight"])
    with applied(model, tensors):
        assert torch.equal(logits(model), logits(hand))
    assert torch.equal(logits(model), before)  # restored


def _lora_adapter(tmp: Path, base_dir: Path, seed: int = 3) -> Path:
    """An all-seven-module LoRA with non-zero B, saved as a PEFT adapter dir."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = tiny_model("llama", seed=0)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                        "up_proj", "down_proj"], init_lora_weights=False)
    peft_model = get_peft_model(model, cfg)
    out = tmp / "adapter"
    peft_model.save_pretrained(str(out))
    conf = json.loads((out / "adapter_config.json").read_text())
    conf["base_model_name_or_path"] = str(base_dir)
    (out / "adapter_config.json").write_text(json.dumps(conf))
    return out


def _peft_merged_subset(adapter: Path, modules: list[str], layers: list[int] | None = None) -> dict:
    """Oracle: PEFT merge_and_unload of an adapter restricted to ``modules`` (and ``layers``)."""
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

    full = load_file(str(adapter / "adapter_model.safetensors"))
    keep = {k: v for k, v in full.items() if any(f".{m}." in k for m in modules)
            and (layers is None or any(f".layers.{la}." in k for la in layers))}
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=modules, layers_to_transform=layers,
                     init_lora_weights=False)
    model = get_peft_model(tiny_model("llama", seed=0), cfg)
    res = set_peft_model_state_dict(model, keep)
    assert not [k for k in res.unexpected_keys if "lora" in k]
    return {k: v.clone() for k, v in model.merge_and_unload().state_dict().items()}


def test_transfer_lora_donor_equals_peft_merge_of_restricted_adapter(pair, tmp_path, capsys):
    from peft import PeftModel

    adapter = _lora_adapter(tmp_path, pair / "base_single")
    out = tmp_path / "out"
    assert main(["transfer", str(pair / "base_single"), str(adapter), "--modules", "o_proj,gate_proj",
                 "--layers", "1", "--merge", "--out", str(out)]) == 0
    capsys.readouterr()
    written = load_file(str(out / "adapter_model.safetensors"))
    assert written and all(".layers.1." in k and (".o_proj." in k or ".gate_proj." in k) for k in written)
    assert len(written) == 4  # A and B of two modules
    oracle = _peft_merged_subset(adapter, ["o_proj", "gate_proj"], [1])
    merged = load_dir(out / "merged")
    assert set(merged) <= set(oracle)
    for name, t in merged.items():
        assert torch.allclose(t, oracle[name], atol=1e-6, rtol=0), name
    changed = [n for n in merged if not torch.equal(merged[n], load_dir(pair / "base_single")[n])]
    assert sorted(changed) == ["model.layers.1.mlp.gate_proj.weight", "model.layers.1.self_attn.o_proj.weight"]
    # The restricted adapter dir loads in PEFT and gives the same merged model.
    via_peft = PeftModel.from_pretrained(tiny_model("llama", seed=0), str(out)).merge_and_unload()
    for name, t in via_peft.state_dict().items():
        if name in merged:
            assert torch.allclose(t, merged[name], atol=1e-6, rtol=0), name
    # Portable: the written adapter names its base relative to itself, and loads after both move.
    base_ref = json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert not os.path.isabs(base_ref) and (out / base_ref).resolve() == (pair / "base_single").resolve()


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A 'tuned' model = base + a planted delta on every projection."""
    root = tmp_path_factory.mktemp("planted")
    base = tiny_model("llama", seed=0)
    base.save_pretrained(root / "base")
    plant_projections(base).save_pretrained(root / "tuned")
    return root


def _ablate(planted, tmp_path, mode, *extra) -> dict[str, torch.Tensor]:
    out = tmp_path / f"abl-{mode}-{len(list(tmp_path.iterdir()))}"
    argv = ["ablate", str(planted / "tuned"), "--modules", "gate_proj", "--ablation", mode,
            "--base", str(planted / "base"), "--out", str(out), *extra]
    assert main(argv) == 0
    return load_dir(out)


@pytest.mark.parametrize("mode", ["reset", "zero", "mean", "noise"])
def test_ablation_modes_on_planted_model(planted, tmp_path, capsys, mode):
    base, tuned = load_dir(planted / "base"), load_dir(planted / "tuned")
    got = _ablate(planted, tmp_path, mode)
    capsys.readouterr()
    for name, t in got.items():
        if ".mlp.gate_proj." not in name:
            assert torch.equal(t, tuned[name]), name
            continue
        if mode == "reset":
            assert torch.equal(t, base[name])
        elif mode == "zero":
            assert not t.any()
        elif mode == "mean":
            assert torch.equal(t, torch.full_like(t, float(tuned[name].double().mean())))
        else:
            want = torch.linalg.vector_norm(tuned[name].double() - base[name].double())
            have = torch.linalg.vector_norm(t.double() - base[name].double())
            assert abs(float(have / want) - 1) < 1e-5
            assert not torch.allclose(t, tuned[name], atol=1e-3)
    if mode == "noise":
        again = _ablate(planted, tmp_path, mode)
        other = _ablate(planted, tmp_path, mode, "--seed", "1")
        key = "model.layers.0.mlp.gate_proj.weight"
        assert torch.equal(again[key], got[key])
        assert not torch.equal(other[key], got[key])


def test_control_selection_has_equal_parameter_count(planted, tmp_path, capsys):
    tuned = tiny_model("llama", seed=0)  # hidden 32, ffn 64, 4 heads, 2 kv heads, 2 layers
    _, info = ablate_tensors(tuned, "gate_proj", "zero", control=True, echo=lambda s: None)
    assert info["ablated"] == ["up_proj"]
    assert info["params_ablated"] == info["params_selected"] == 2 * 32 * 64
    _, info = ablate_tensors(tuned, "o_proj", "zero", control=True, echo=lambda s: None)
    assert info["ablated"] == ["q_proj"]  # k/v are smaller under GQA
    assert info["params_ablated"] == 2 * 32 * 32
    got = _ablate(planted, tmp_path, "reset", "--control")
    assert "control for gate_proj: up_proj" in capsys.readouterr().out
    base, tuned_sd = load_dir(planted / "base"), load_dir(planted / "tuned")
    for name, t in got.items():
        assert torch.equal(t, base[name] if ".mlp.up_proj." in name else tuned_sd[name]), name


def test_lora_zero_delta_equals_peft_merge_without_that_module(pair, tmp_path, capsys):
    adapter = _lora_adapter(tmp_path, pair / "base_single")
    out = tmp_path / "out"
    assert main(["ablate", str(adapter), "--modules", "gate_proj", "--ablation", "zero-delta", "--out", str(out)]) == 0
    capsys.readouterr()
    others = ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"]
    oracle = _peft_merged_subset(adapter, others)
    for name, t in load_dir(out).items():
        assert torch.allclose(t, oracle[name], atol=1e-6, rtol=0), name


def test_in_memory_ablation_matches_disk_and_restores(planted, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(planted / "tuned")).eval()
    before = logits(model)
    tensors, _ = ablate_tensors(model, "gate_proj", "noise", base=planted / "base", seed=4, echo=lambda s: None)
    out = tmp_path / "disk"
    assert main(["ablate", str(planted / "tuned"), "--modules", "gate_proj", "--ablation", "noise", "--seed", "4",
                 "--base", str(planted / "base"), "--out", str(out)]) == 0
    capsys.readouterr()
    disk = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    with applied(model, tensors):
        assert torch.equal(logits(model), logits(disk))
    assert torch.equal(logits(model), before)


def test_bad_inputs_are_one_line_errors(pair, planted, tmp_path, capsys):
    base, donor = str(pair / "base_single"), str(pair / "donor_single")
    other = tmp_path / "qwen"
    save_tiny(other, "qwen2", seed=0, hidden=48, heads=4, kv_heads=2)
    deeper = tmp_path / "deeper"
    save_tiny(deeper, "llama", seed=0, layers=3)
    out = str(tmp_path / "out")
    assert "unknown module" in one_line_error(capsys, ["transfer", base, donor, "--modules", "gatez", "--out", out])
    assert "out of range" in one_line_error(
        capsys, ["transfer", base, donor, "--modules", "gate_proj", "--layers", "0-5", "--out", out])
    assert "architecture" in one_line_error(capsys, ["transfer", base, str(other), "--modules", "gate_proj", "--out", out])
    assert "architecture" in one_line_error(capsys, ["transfer", base, str(deeper), "--modules", "gate_proj", "--out", out])
    assert "needs the base" in one_line_error(
        capsys, ["ablate", str(planted / "tuned"), "--modules", "gate_proj", "--ablation", "noise", "--out", out])
    assert "does not exist" in one_line_error(capsys, ["transfer", base, str(tmp_path / "nope"), "--modules", "attn",
                                                       "--out", out])
    assert not Path(out).exists()
    (tmp_path / "exists").mkdir()
    assert "already exists" in one_line_error(
        capsys, ["transfer", base, donor, "--modules", "attn", "--out", str(tmp_path / "exists")])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no half-written temp dirs


def test_sharded_writer_layouts(tmp_path):
    """Greedy shards + HF index; a header that outgrows its reservation is rewritten, not corrupted."""
    from affectlens.weights.writer import ShardedWriter

    g = torch.Generator().manual_seed(0)
    ts = {f"w{i}": torch.randn(40, 25, generator=g).to(torch.bfloat16 if i % 2 else torch.float32)
          for i in range(12)}
    ts["scalar"] = torch.tensor(7, dtype=torch.int64)
    with ShardedWriter(tmp_path / "sharded", max_shard_bytes=5000) as w:
        for k, v in ts.items():
            w.add(k, v)
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(ts)
    assert index["metadata"]["total_size"] == sum(v.numel() * v.element_size() for v in ts.values())
    got = load_dir(tmp_path / "sharded")
    assert all(torch.equal(got[k], v) and got[k].dtype == v.dtype for k, v in ts.items())
    many = {f"layer.{i}.{'x' * 40}": torch.full((3,), float(i)) for i in range(2500)}  # header > 64 KiB
    with ShardedWriter(tmp_path / "many") as w:
        for k, v in many.items():
            w.add(k, v)
    got = load_file(str(tmp_path / "many" / "model.safetensors"))
    assert len(got) == 2500 and all(torch.equal(got[k], v) for k, v in many.items())


# --------------------------------------------------------------------------- selection and compatibility


def test_module_paths_is_the_one_selection_rule_for_tuning():
    """What tune wraps comes from the same resolver as transfer/ablate: str or int layers, loud refusals."""
    from affectlens.errors import AffectlensError
    from affectlens.selection import module_paths

    names = [n for n, _ in tiny_model("llama", seed=0).named_parameters()]
    want = ["model.layers.1.mlp.down_proj", "model.layers.1.mlp.gate_proj", "model.layers.1.mlp.up_proj"]
    for layers in ("1", [1], (1,), 1):
        paths, rep = module_paths(names, "ffn", layers, n_layers=2)
        assert paths == want, layers
        assert rep.layers == (1,)
    assert module_paths(names, "q_proj", None, n_layers=2)[0] == [
        "model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj"]
    with pytest.raises(AffectlensError, match="out of range"):
        module_paths(names, "gate_proj", "0-2", n_layers=2)
    with pytest.raises(AffectlensError, match="partly unmatched"):
        module_paths(names, "gate_proj", "0-2", n_layers=3)
    fused = ["model.layers.0.self_attn.qkv_proj.weight", "model.layers.0.self_attn.o_proj.weight"]
    with pytest.raises(AffectlensError, match=r"fused qkv_proj \(holding q_proj, k_proj, v_proj\): LoRA on it would also train k_proj, v_proj"):
        module_paths(fused, "q_proj")


def test_fused_tensor_selection_takes_its_rows():
    """Phi-3 style qkv_proj under GQA (4 query, 2 KV heads of 8): k_proj is rows 32-48 of 64."""
    from affectlens.selection import select
    from affectlens.weights import TensorDictStore

    qkv = "model.layers.0.self_attn.qkv_proj.weight"
    store = TensorDictStore({qkv: torch.zeros(64, 32), "model.layers.0.self_attn.o_proj.weight": torch.zeros(32, 32)},
                            {"hidden_size": 32, "num_attention_heads": 4, "num_key_value_heads": 2,
                             "num_hidden_layers": 1}, path="mem")
    sel = select(store, "k_proj", echo=lambda s: None)
    assert sel.tensors == {qkv: [(32, 48)]}
    assert sel.numel(store) == 16 * 32
    assert select(store, "q_proj,v_proj", echo=lambda s: None).tensors == {qkv: [(0, 32), (48, 64)]}
    assert select(store, "attn", echo=lambda s: None).tensors == {qkv: None,
                                                                   "model.layers.0.self_attn.o_proj.weight": None}


def test_one_architecture_check():
    from affectlens.errors import AffectlensError
    from affectlens.weights import TensorDictStore, check_architecture

    gate, head = "model.layers.0.mlp.gate_proj.weight", "lm_head.weight"
    base = TensorDictStore({gate: torch.zeros(4, 3), head: torch.zeros(5, 3)}, {"hidden_size": 3}, path="b")
    same_but_extra = TensorDictStore({gate: torch.ones(4, 3), "extra.bias": torch.ones(2)}, {"hidden_size": 3},
                                     path="t")
    # A non-projection tensor one side lacks is left to the caller to report; extras come back.
    assert check_architecture(base, same_but_extra, "tuned") == ["extra.bias"]
    with pytest.raises(AffectlensError, match=f"tensor {head} of base b is missing from donor"):
        check_architecture(base, same_but_extra, "donor", [gate, head])
    wide = TensorDictStore({gate: torch.ones(4, 3)}, {"hidden_size": 4}, path="w")
    with pytest.raises(AffectlensError, match="architecture mismatch between base b and tuned: hidden_size is 3 vs 4"):
        check_architecture(base, wide, "tuned")
    lacking = TensorDictStore({head: torch.ones(5, 3)}, {}, path="l")
    with pytest.raises(AffectlensError, match=f"tensor {gate} of base b is missing from tuned"):
        check_architecture(base, lacking, "tuned")
    reshaped = TensorDictStore({gate: torch.ones(3, 4), head: torch.ones(5, 3)}, {}, path="r")
    with pytest.raises(AffectlensError, match=rf"shape mismatch for {gate}: base \[4, 3\] vs tuned \[3, 4\]"):
        check_architecture(base, reshaped, "tuned")


def test_adapter_fit_check_is_shared_by_locate_and_transfer(tmp_path, capsys):
    from peft import LoraConfig, get_peft_model

    save_tiny(tmp_path / "base", "llama", layers=2, hidden=32)
    other = get_peft_model(tiny_model("llama", layers=2, hidden=48), LoraConfig(r=2, target_modules=["q_proj"]))
    other.save_pretrained(tmp_path / "ad")
    base, ad, out = str(tmp_path / "base"), str(tmp_path / "ad"), str(tmp_path / "o")
    errs = [one_line_error(capsys, ["locate", base, ad, "--out", out]),
            one_line_error(capsys, ["transfer", base, ad, "--modules", "q_proj", "--out", out])]
    for err in errs:
        assert "does not fit base" in err and "model.layers.0.self_attn.q_proj" in err, err
        assert "LoRA maps 48->48 but the base weight is 32->32: an adapter for another base?" in err, err
    assert not Path(out).exists()


def test_streamed_transfer_equals_in_memory_and_the_donor(pair):
    """``transfer`` streams what ``transfer_tensors`` keeps: the same tensors, i.e. the donor's."""
    base, donor = pair / "base_single", pair / "donor_single"
    kept, sel = transfer_tensors(base, donor, "attn,gate_proj", echo=lambda s: None)
    streamed, sel2 = transfer_tensors(base, donor, "attn,gate_proj", echo=lambda s: None, stream=True)
    assert not streamed.kept and len(kept.kept) == 10  # 5 modules x 2 layers
    assert list(kept) == list(streamed) == list(sel.tensors) == list(sel2.tensors)
    dsd = load_dir(donor)
    for name in kept:
        assert ATTN_GATE.search(name), name
        assert torch.equal(kept[name], dsd[name]) and torch.equal(streamed[name], dsd[name]), name
    assert streamed.get("model.layers.0.mlp.up_proj.weight") is None


def test_ablation_modes_are_one_enum(tmp_path, capsys):
    from affectlens.errors import AffectlensError
    from affectlens.interventions.ablate import MODES, AblationMode

    assert MODES == ("reset", "zero-delta", "zero", "mean", "noise")
    assert [m for m in AblationMode if m.needs_base] == ["reset", "zero-delta", "noise"]
    with pytest.raises(AffectlensError, match="unknown ablation mode 'erase'; choose from reset, zero-delta, zero"):
        ablate_tensors(tiny_model("llama"), "gate_proj", "erase", echo=lambda s: None)
    with pytest.raises(SystemExit):
        main(["ablate", str(tmp_path), "--modules", "gate_proj", "--ablation", "erase", "--out", str(tmp_path / "o")])
    assert "invalid choice: 'erase'" in capsys.readouterr().err


def test_run_dir_record_and_line_are_the_result(pair, planted, tmp_path, capsys):
    """compose.json and the printed line come from the returned ComposeResult; the manifest from RunDir."""
    from affectlens.interventions.ablate import ablate
    from affectlens.interventions.transfer import transfer

    res = transfer(pair / "base_single", pair / "donor_single", "gate_proj", tmp_path / "t", layers="1")
    assert res.out == tmp_path / "t" and res.kind == "transfer"
    record = json.loads((tmp_path / "t" / "compose.json").read_text())
    assert record == json.loads(json.dumps(res.record()))
    assert record["kind"] == "transfer" and record["tensors"] == ["model.layers.1.mlp.gate_proj.weight"]
    manifest = json.loads((tmp_path / "t" / "manifest.json").read_text())
    assert manifest["command"] == "transfer" and list(manifest["inputs"]) == ["base", "donor"]
    assert manifest["options"]["layers"] == "1"
    assert [p.name for p in tmp_path.iterdir()] == ["t"]  # no temp dir or claim left beside it

    capsys.readouterr()
    assert main(["ablate", str(planted / "tuned"), "--modules", "gate_proj", "--ablation", "zero",
                 "--out", str(tmp_path / "a")]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    record = json.loads((tmp_path / "a" / "compose.json").read_text())
    assert record["kind"] == "ablate" and record["mode"] == "zero"
    assert line == f"ablated gate_proj (zero, {record['params_ablated']:,} parameters) -> {tmp_path / 'a'}"
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["command"] == "ablate" and manifest["seed"] == 0 and list(manifest["inputs"]) == ["model"]
    # A failed run leaves nothing: the output is claimed first and its temp dir removed.
    with pytest.raises(AffectlensError, match="already exists"):
        ablate(planted / "tuned", "gate_proj", "zero", tmp_path / "a")
    with pytest.raises(AffectlensError):
        ablate(planted / "tuned", "no_such_proj", "zero", tmp_path / "b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "t"]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_bitwise_finite_check_agrees_with_isfinite(dtype):
    """The integer-view finiteness check (issue 13) flags exactly what torch.isfinite flags."""
    from affectlens.errors import AffectlensError
    from affectlens.weights.finite import check_finite

    info = torch.finfo(dtype)
    edge = [0.0, -0.0, info.max, -info.max, info.tiny, -info.tiny, info.smallest_normal / 4, 1.0, -2.5]
    check_finite(torch.tensor(edge, dtype=dtype), "x")
    for bad in (float("nan"), float("inf"), float("-inf"), -float("nan")):
        t = torch.tensor([*edge, bad], dtype=dtype)
        assert not bool(torch.isfinite(t).all())
        with pytest.raises(AffectlensError, match="non-finite"):
            check_finite(t, "x")


def test_finite_check_is_exact_when_finite_values_overflow_the_sum():
    from affectlens.weights.finite import check_finite

    for dtype in (torch.bfloat16, torch.float16, torch.float32, torch.float64):
        big = torch.full((64,), torch.finfo(dtype).max, dtype=dtype)
        check_finite(big, "x")  # Σ overflows to inf, yet every element is finite
        big[7] = float("nan")
        with pytest.raises(AffectlensError, match="non-finite"):
            check_finite(big, "x")

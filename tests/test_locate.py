"""locate recovers planted changes exactly (float64 brute force and PEFT as oracles)."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from affectlens.cli import main
from affectlens.locate.weight_change import CSV_HEADER, locate
from affectlens.modules import parse_name
from affectlens.weights.reduce import U32, float64_ref_tol

from conftest import TINYSTORIES
from tiny import save_tiny, tiny_model


def brute(base_sd: dict, tuned_sd: dict) -> dict[tuple[int, str, str], tuple[float, float, int]]:
    """Eq. 1 / Eq. 2 per (layer, module, param) in float64, by the book."""
    out = {}
    for name, w in base_sd.items():
        p = parse_name(name)
        if p.scope != "module":
            continue
        d = tuned_sd[name].double() - w.double()
        l2 = float(torch.linalg.vector_norm(d))
        out[(p.key.layer, p.key.module, p.key.param)] = (l2, l2 / (float(torch.linalg.vector_norm(w.double())) + 1e-12),
                                                         w.numel())
    return out


def rows_by_key(rows, label):
    return {(r.layer, r.module, r.param): r for r in rows if r.model == label}


def check_against(rows, label, expected):
    """locate's rows vs the float64 brute force, within the stated bound of its blocked float32 sums.

    ``float64_ref_tol`` bounds Σ(ΔW)² and Σ(W)² against the reference; a norm errs by about half of
    its sum's bound, and ``relative`` by about half of both: the tolerances below are that, rounded up.
    An unchanged cell must be exactly 0.
    """
    got = rows_by_key(rows, label)
    assert set(got) == set(expected)
    for k, (l2, relative, n) in expected.items():
        r = got[k]
        assert r.numel == n
        tol_d, tol_b = float64_ref_tol(n, delta=True), float64_ref_tol(n)
        assert r.l2 == pytest.approx(l2, rel=tol_d, abs=0), k
        assert r.relative == pytest.approx(relative, rel=tol_d + tol_b, abs=0), k
        assert r.rms == pytest.approx(l2 / math.sqrt(n), rel=tol_d, abs=0), k


def planted_tol(n: int, tuned: torch.Tensor, c: float) -> float:
    """Tolerance of ‖ΔW‖ against c·√(changed elements) for W + c planted in float32.

    The planted sum rounds once: stored ΔW = c + δ with |δ| ≤ u·|W + c|, so the stored norm is within
    u·max|W + c|/c of c·√m; locate's blocked sums add ``float64_ref_tol``.
    """
    a, b = U32 * float(tuned.abs().max()) / c, float64_ref_tol(n, delta=True)
    return (1 + a) * (1 + b) - 1


def plant(model, changes: dict[str, float], seed: int = 1):
    """Add seeded noise of the given scale to the named parameters."""
    g = torch.Generator().manual_seed(seed)
    sd = model.state_dict()
    with torch.no_grad():
        for name, scale in changes.items():
            sd[name].add_(scale * torch.randn(sd[name].shape, generator=g))
    return model


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
def test_planted_full_checkpoint(tmp_path, arch):
    base = save_tiny(tmp_path / "base", arch, layers=3)
    base_sd = {k: v.clone() for k, v in base.state_dict().items()}
    tuned = tiny_model(arch, layers=3)
    tuned.load_state_dict(base_sd)
    planted = {"model.layers.1.mlp.gate_proj.weight": 0.2, "model.layers.2.self_attn.o_proj.weight": 0.01}
    if arch == "qwen2":
        planted["model.layers.0.self_attn.q_proj.bias"] = 0.3
    plant(tuned, planted)
    tuned.save_pretrained(tmp_path / "tuned")
    res = locate(tmp_path / "base", [tmp_path / "tuned"], labels=["emo"], out=tmp_path / "out")
    check_against(res.rows, "emo", brute(base_sd, tuned.state_dict()))
    assert res.summary["models"]["emo"]["locus"] == {"l2": "gate_proj", "relative": "gate_proj", "rms": "gate_proj"}
    changed = {(r.layer, r.module, r.param) for r in res.rows if r.l2 > 0}
    assert changed == {(int(n.split(".")[2]), n.split(".")[-2], n.split(".")[-1]) for n in planted}
    with open(tmp_path / "out" / "weight_change.csv") as f:
        header = next(csv.reader(f))
    assert header == CSV_HEADER == ["model", "layer", "module", "param", "numel", "l2", "relative", "rms"]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["models"]["emo"]["locus"]["l2"] == "gate_proj"
    for f in ("heatmap_l2_emo.png", "heatmap_relative_emo.png", "distribution.png", "manifest.json"):
        assert (tmp_path / "out" / f).is_file()


def test_real_tinystories_sharded_and_single_agree(tmp_path):
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(TINYSTORIES)
    base_sd = {k: v.clone() for k, v in base.state_dict().items()}
    plant(base, {"model.layers.0.mlp.down_proj.weight": 0.05, "model.layers.1.mlp.up_proj.weight": 0.001})
    base.save_pretrained(tmp_path / "tuned_sharded", max_shard_size="300KB")
    base.save_pretrained(tmp_path / "tuned_single")
    assert (tmp_path / "tuned_sharded" / "model.safetensors.index.json").is_file()
    res = locate(TINYSTORIES, [tmp_path / "tuned_sharded", tmp_path / "tuned_single"],
                 labels=["sharded", "single"], chunk_elems=20000)
    expected = brute(base_sd, base.state_dict())
    check_against(res.rows, "sharded", expected)
    check_against(res.rows, "single", expected)
    assert res.summary["models"]["sharded"]["locus"]["l2"] == "down_proj"
    # shared colour scale figure when several models
    res2 = locate(TINYSTORIES, [tmp_path / "tuned_single", tmp_path / "tuned_sharded"], out=tmp_path / "o2")
    assert (res2.out / "heatmap_l2.png").is_file()


def _peft_case(tmp_path: Path, name: str, **lora_kw):
    from peft import LoraConfig, get_peft_model

    base = save_tiny(tmp_path / "base", "llama", layers=2)
    base_sd = {k: v.clone() for k, v in base.state_dict().items()}
    torch.manual_seed(3)
    cfg = LoraConfig(init_lora_weights=False, **lora_kw)
    peft_model = get_peft_model(tiny_model("llama", layers=2), cfg)
    peft_model.base_model.model.load_state_dict(base_sd, strict=False)
    # init_lora_weights=False gives random A and B; make modules_to_save copies differ too.
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "modules_to_save" in n:
                p.add_(0.1 * torch.randn_like(p))
            if "lora_magnitude_vector" in n:
                p.mul_(1.5)
    peft_model.save_pretrained(tmp_path / name)
    # The oracle: PEFT's own merge of the saved float32 tensors, done in float64, so its rounding
    # (~1e-16 relative to W) stays far inside locate's stated bound (~3e-5); a float32 merge would
    # round W + ΔW by u·|W| per element, an error relative to W, not to ΔW.
    merged = peft_model.double().merge_and_unload()
    return base_sd, merged.state_dict()


@pytest.mark.parametrize(
    "kw",
    [
        dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "gate_proj"]),
        dict(r=4, lora_alpha=8, use_rslora=True, target_modules="all-linear"),
        dict(r=4, lora_alpha=8, target_modules=["q_proj", "gate_proj", "down_proj"],
             rank_pattern={"gate_proj": 2}, alpha_pattern={"layers.1.self_attn.q_proj": 32}),
        dict(r=2, lora_alpha=4, use_dora=True, target_modules=["o_proj", "up_proj"]),
        dict(r=2, lora_alpha=4, target_modules=["q_proj"], modules_to_save=["down_proj"]),
    ],
    ids=["plain", "rslora", "patterns", "dora", "modules_to_save"],
)
def test_lora_matches_peft_merge(tmp_path, kw):
    base_sd, merged_sd = _peft_case(tmp_path, "ad", **kw)
    res = locate(tmp_path / "base", [tmp_path / "ad"], labels=["lora"])
    expected = brute(base_sd, {k: merged_sd.get(k, v) for k, v in base_sd.items()})
    assert any(v[0] > 0 for v in expected.values())
    check_against(res.rows, "lora", expected)


def test_lora_gram_path_without_distribution(tmp_path):
    base_sd, merged_sd = _peft_case(tmp_path, "ad", r=4, lora_alpha=16, target_modules=["gate_proj"])
    res = locate(tmp_path / "base", [tmp_path / "ad"], labels=["g"], distribution=False)
    check_against(res.rows, "g", brute(base_sd, merged_sd))
    assert res.summary["models"]["g"]["locus"]["relative"] == "gate_proj"


def test_fused_phi3_rows_split(tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model("phi3", hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, vocab_size=64,
                               pad_token_id=0)
    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_config(cfg)
    m.save_pretrained(tmp_path / "base")
    sd = m.state_dict()
    with torch.no_grad():
        sd["model.layers.1.mlp.gate_up_proj.weight"][:48].add_(0.5)  # gate half only
        sd["model.layers.0.self_attn.qkv_proj.weight"][32:40].add_(1.0)  # inside k (rows 32..47)
    m.save_pretrained(tmp_path / "tuned")
    res = locate(tmp_path / "base", [tmp_path / "tuned"], labels=["t"])
    got = {(r.layer, r.module): r.l2 for r in res.rows}
    gate, qkv = sd["model.layers.1.mlp.gate_up_proj.weight"][:48], sd["model.layers.0.self_attn.qkv_proj.weight"]
    assert got[(1, "gate_proj")] == pytest.approx(math.sqrt(48 * 32 * 0.25), rel=planted_tol(48 * 32, gate, 0.5))
    assert got[(1, "up_proj")] == 0
    assert got[(0, "k_proj")] == pytest.approx(math.sqrt(8 * 32), rel=planted_tol(16 * 32, qkv[32:40], 1.0))
    assert got[(0, "q_proj")] == 0 and got[(0, "v_proj")] == 0


def test_moe_experts_pooled_and_listed(tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model("mixtral", hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                               num_attention_heads=2, num_key_value_heads=1, vocab_size=32,
                               num_local_experts=3, num_experts_per_tok=2)
    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_config(cfg)
    m.save_pretrained(tmp_path / "base")
    names = json.loads((tmp_path / "base" / "model.safetensors.index.json").read_text())["weight_map"] \
        if (tmp_path / "base" / "model.safetensors.index.json").exists() else None
    del names
    from safetensors.torch import load_file, save_file

    sd = load_file(tmp_path / "base" / "model.safetensors")
    gate_names = [n for n in sd if parse_name(n).key is not None and parse_name(n).key.module == "gate_proj"]
    assert gate_names, sorted(sd)[:20]
    target = gate_names[0]
    sd2 = {k: v.clone() for k, v in sd.items()}
    sd2[target] = sd2[target] + 0.25
    (tmp_path / "tuned").mkdir()
    shutil.copy(tmp_path / "base" / "config.json", tmp_path / "tuned" / "config.json")
    save_file(sd2, tmp_path / "tuned" / "model.safetensors")
    res = locate(tmp_path / "base", [tmp_path / "tuned"], labels=["t"], out=tmp_path / "o")
    got = {(r.layer, r.module): r.l2 for r in res.rows}
    n = sd[target].numel()
    assert got[(0, "gate_proj")] == pytest.approx(math.sqrt(n) * 0.25, rel=planted_tol(n, sd2[target], 0.25))
    assert got[(0, "up_proj")] == 0
    if parse_name(target).key.expert is not None:
        assert (tmp_path / "o" / "weight_change_experts.csv").is_file()
    assert res.summary["tensors"].get("router", 0) >= 1


# --------------------------------------------------------------------- bad inputs
def _cli_error(capsys, argv) -> str:
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith("affectlens: error:") and "\n" not in err, err
    return err


@pytest.fixture
def pair(tmp_path):
    save_tiny(tmp_path / "base", "llama", layers=2)
    m = save_tiny(tmp_path / "tuned", "llama", layers=2, seed=1)
    return tmp_path, m


def test_bad_shape_and_arch(tmp_path, capsys, pair):
    save_tiny(tmp_path / "wide", "llama", layers=2, hidden=48)
    err = _cli_error(capsys, ["locate", str(tmp_path / "base"), str(tmp_path / "wide"), "--out", str(tmp_path / "o")])
    assert "mismatch" in err
    save_tiny(tmp_path / "deep", "llama", layers=3)
    err = _cli_error(capsys, ["locate", str(tmp_path / "base"), str(tmp_path / "deep"), "--out", str(tmp_path / "o")])
    assert "num_hidden_layers" in err
    assert not (tmp_path / "o").exists()


def test_missing_tensor(tmp_path, capsys, pair):
    from safetensors.torch import load_file, save_file

    sd = load_file(tmp_path / "tuned" / "model.safetensors")
    del sd["model.layers.1.mlp.up_proj.weight"]
    save_file(sd, tmp_path / "tuned" / "model.safetensors")
    err = _cli_error(capsys, ["locate", str(tmp_path / "base"), str(tmp_path / "tuned"), "--out", str(tmp_path / "o")])
    assert "model.layers.1.mlp.up_proj.weight" in err and "missing" in err
    assert not (tmp_path / "o").exists()


def test_truncated_and_corrupt(tmp_path, capsys, pair):
    f = tmp_path / "tuned" / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) - 100])
    err = _cli_error(capsys, ["locate", str(tmp_path / "base"), str(tmp_path / "tuned"), "--out", str(tmp_path / "o")])
    assert "truncated" in err
    f.write_bytes(b"\xff" * 64)
    err = _cli_error(capsys, ["locate", str(tmp_path / "base"), str(tmp_path / "tuned"), "--out", str(tmp_path / "o")])
    assert "corrupt" in err
    assert not (tmp_path / "o").exists()


def test_nan_weights(tmp_path, capsys, pair):
    _, m = pair
    with torch.no_grad():
        m.model.layers[1].mlp.down_proj.weight[0, 0] = float("nan")
    m.save_pretrained(tmp_path / "tuned")
    err = _cli_error(capsys, ["locate", str(tmp_path / "base"), str(tmp_path / "tuned"), "--out", str(tmp_path / "o")])
    assert "NaN" in err and "down_proj" in err
    assert not (tmp_path / "o").exists()


def test_adapter_for_another_base(tmp_path, capsys):
    from peft import LoraConfig, get_peft_model

    save_tiny(tmp_path / "base", "llama", layers=2, hidden=32)
    other = get_peft_model(tiny_model("llama", layers=2, hidden=48), LoraConfig(r=2, target_modules=["q_proj"]))
    other.save_pretrained(tmp_path / "ad")
    err = _cli_error(capsys, ["locate", str(tmp_path / "base"), str(tmp_path / "ad"), "--out", str(tmp_path / "o")])
    assert "another base" in err
    assert not (tmp_path / "o").exists()


def test_existing_out_needs_force_and_pickle_needs_flag(tmp_path, capsys, pair):
    out = tmp_path / "o"
    assert main(["locate", str(tmp_path / "base"), str(tmp_path / "tuned"), "--out", str(out)]) == 0
    capsys.readouterr()
    stamp = (out / "summary.json").stat().st_mtime_ns
    err = _cli_error(capsys, ["locate", str(tmp_path / "base"), str(tmp_path / "tuned"), "--out", str(out)])
    assert "--force" in err
    assert (out / "summary.json").stat().st_mtime_ns == stamp
    assert main(["locate", str(tmp_path / "base"), str(tmp_path / "tuned"), "--out", str(out), "--force"]) == 0
    # pickle checkpoints only behind --allow-pickle
    _, m = pair
    (tmp_path / "pk").mkdir()
    shutil.copy(tmp_path / "tuned" / "config.json", tmp_path / "pk")
    torch.save(m.state_dict(), tmp_path / "pk" / "pytorch_model.bin")
    err = _cli_error(capsys, ["locate", str(tmp_path / "base"), str(tmp_path / "pk"), "--out", str(tmp_path / "o3")])
    assert "--allow-pickle" in err
    assert main(["locate", str(tmp_path / "base"), str(tmp_path / "pk"), "--out", str(tmp_path / "o3"),
                 "--allow-pickle"]) == 0
    a = list(csv.DictReader((out / "weight_change.csv").read_text().splitlines()))
    b = list(csv.DictReader((tmp_path / "o3" / "weight_change.csv").read_text().splitlines()))
    assert [r["l2"] for r in a] == [r["l2"] for r in b]  # the same values, blocks and order: the same sums


def test_distribution_histogram_matches_numpy(tmp_path):
    import numpy as np

    from affectlens.locate.stats import hist_edges

    base = save_tiny(tmp_path / "base", "llama", layers=2)
    bsd = {k: v.clone() for k, v in base.state_dict().items()}
    plant(base, {"model.layers.0.mlp.gate_proj.weight": 0.01, "model.layers.1.mlp.gate_proj.weight": 1.0})
    with torch.no_grad():
        base.model.layers[1].mlp.gate_proj.weight[:3] = bsd["model.layers.1.mlp.gate_proj.weight"][:3]
    base.save_pretrained(tmp_path / "tuned")
    res = locate(tmp_path / "base", [tmp_path / "tuned"], labels=["t"], chunk_elems=500)
    counts = res.histograms["t"]["gate_proj"]  # [zeros, under, bins..., over]
    rel = np.concatenate([
        (np.abs(base.state_dict()[n].double().numpy() - bsd[n].double().numpy())
         / (np.abs(bsd[n].double().numpy()) + 1e-8)).ravel()
        for n in ("model.layers.0.mlp.gate_proj.weight", "model.layers.1.mlp.gate_proj.weight")])
    assert counts[0] == int((rel == 0).sum()) == 3 * 32
    logs = np.log10(rel[rel > 0])
    ref, _ = np.histogram(logs, bins=np.concatenate([hist_edges(), [np.inf]]))
    assert counts.sum() == rel.size
    # [inner bins..., overflow] (half-open bins: overflow from the last edge on)
    assert np.abs(counts[2:-1] - ref[:-1]).sum() <= 4  # float32 vs float64 at bin edges
    assert abs(int(counts[-1]) - int(ref[-1])) <= 2
    q = res.summary["models"]["t"]["distribution"]["gate_proj"]
    assert q["zero_share"] == pytest.approx(96 / rel.size)
    med = np.median(rel)
    assert 10 ** (np.log10(med) - 0.11) <= q["q50"] <= med


def test_tensors_only_in_tuned_are_reported(tmp_path, capsys, pair):
    """A tensor the base lacks cannot be compared: listed in summary.json and printed, never dropped."""
    from safetensors.torch import load_file, save_file

    f = tmp_path / "tuned" / "model.safetensors"
    sd = load_file(f)
    sd["model.layers.0.mlp.extra_adapter.weight"] = torch.ones(4, 4)
    save_file(sd, f, metadata={"format": "pt"})
    out = tmp_path / "o"
    assert main(["locate", str(tmp_path / "base"), str(f), "--labels", "t", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "note: 1 tensor(s) of t are not in the base" in printed
    assert "model.layers.0.mlp.extra_adapter.weight" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["models"]["t"]["only_in_tuned"] == ["model.layers.0.mlp.extra_adapter.weight"]
    assert summary["models"]["t"]["only_in_base"] == []


def test_non_module_tensor_missing_from_tuned_is_listed_not_nan(tmp_path, capsys, pair):
    from safetensors.torch import load_file, save_file

    f = tmp_path / "tuned" / "model.safetensors"
    sd = load_file(f)
    del sd["lm_head.weight"]
    save_file(sd, f, metadata={"format": "pt"})
    out = tmp_path / "o"
    assert main(["locate", str(tmp_path / "base"), str(tmp_path / "tuned"), "--labels", "t", "--out", str(out)]) == 0
    assert "note: 1 tensor(s) of the base are not in t" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["models"]["t"]["only_in_base"] == ["lm_head.weight"]
    rows = {r["tensor"]: r for r in csv.DictReader((out / "other_tensors.csv").read_text().splitlines())}
    assert rows["lm_head.weight"]["l2:t"] == ""
    assert float(rows["model.norm.weight"]["l2:t"]) == 0.0  # same init: present and unchanged


# --------------------------------------------------------------------- typed rows, statistics, figures
def test_csv_is_the_locate_rows(tmp_path, pair):
    """weight_change.csv is LocateRow, field for field, with floats that round-trip exactly."""
    import dataclasses

    from affectlens.locate.weight_change import LocateRow

    res = locate(tmp_path / "base", [tmp_path / "tuned"], labels=["t"], out=tmp_path / "o")
    assert [f.name for f in dataclasses.fields(LocateRow)] == CSV_HEADER
    lines = list(csv.DictReader((tmp_path / "o" / "weight_change.csv").read_text().splitlines()))
    assert len(lines) == len(res.rows) == 2 * 7
    for line, row in zip(lines, res.rows, strict=True):
        assert LocateRow(line["model"], int(line["layer"]), line["module"], line["param"], int(line["numel"]),
                         float(line["l2"]), float(line["relative"]), float(line["rms"])) == row
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["command"] == "locate" and list(manifest["inputs"]) == ["base", "tuned:t"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "o", "tuned"]  # no temp dir or claim left


def test_ranking_and_quantiles_by_hand():
    import numpy as np

    from affectlens.locate.stats import HIST_BINS, LocateRow, hist_edge_values, quantiles, ranking

    def row(layer, module, l2):
        return LocateRow("m", layer, module, "weight", 4, l2, l2 / 10, l2 / 2)

    rows = [row(0, "q_proj", 3.0), row(0, "gate_proj", 1.0), row(1, "q_proj", 0.0), row(1, "gate_proj", 2.0),
            row(2, "q_proj", 0.0), row(2, "gate_proj", 0.0)]
    rank, locus = ranking(rows)
    assert rank["l2"]["mean"]["q_proj"] == pytest.approx(1.0) and rank["l2"]["mean"]["gate_proj"] == pytest.approx(1.0)
    # Each changed layer is topped by one module; the unchanged layer 2 counts for none.
    assert rank["l2"]["top_share"] == {"q_proj": pytest.approx(1 / 3), "gate_proj": pytest.approx(1 / 3)}
    assert locus == {m: rank[m]["order"][0] for m in ("l2", "relative", "rms")}
    assert ranking([row(0, "q_proj", 0.0)])[1]["l2"] == "none"
    # 10 exact zeros, 10 elements in the second inner bin, 10 in the overflow bin.
    counts = np.zeros(HIST_BINS + 2, np.int64)
    counts[2] = 10
    counts[-1] = 10
    q = quantiles(counts, 10, (0.25, 0.5, 0.95))
    assert q == {"q25": 0.0, "q50": pytest.approx(hist_edge_values()[1]), "q95": 16.0}


def test_locate_figures_are_made_from_plain_data(tmp_path):
    import numpy as np

    from affectlens.plots import locate_distribution, locate_heatmap, save

    g = np.array([[0.0, 1.0], [2.0, np.nan]])
    fig = locate_heatmap([("a", g, ["q_proj", "gate_proj"], [0, 1]), ("b", g * 2, ["q_proj", "gate_proj"], [0, 1])],
                         "relative")
    assert [ax.get_title() for ax in fig.axes[:2]] == ["a", "b"]
    assert fig.axes[0].images[0].get_clim() == (0, 4.0)  # one colour scale over both panels
    assert "Eq. 2" in fig.axes[-1].get_ylabel()
    assert save(fig, tmp_path / "h.png").stat().st_size > 0
    edges = np.linspace(-6, 1, 8)
    fig = locate_distribution({"a": {"gate_proj": np.array([5, 0, 1, 2, 3, 4, 5, 6, 7, 1])}}, edges, 2.0**-8)
    (line,) = fig.axes[0].get_lines()[:1]
    assert list(line.get_ydata()) == pytest.approx([x / 34 for x in (1, 2, 3, 4, 5, 6, 7)])
    assert "15% =0" in line.get_label()
    assert save(fig, tmp_path / "d.png").stat().st_size > 0


def test_workers_do_not_change_the_numbers(tmp_path):
    """Tensors spread over worker threads: rows, histograms and other tensors equal one worker's, exactly."""
    import numpy as np

    base = save_tiny(tmp_path / "base", "llama", layers=3)
    plant(base, {"model.layers.0.mlp.gate_proj.weight": 0.01, "model.layers.2.self_attn.q_proj.weight": 0.3,
                 "model.embed_tokens.weight": 0.02})
    base.save_pretrained(tmp_path / "tuned", max_shard_size="40KB")
    base.save_pretrained(tmp_path / "tuned2")
    runs = [locate(tmp_path / "base", [tmp_path / "tuned", tmp_path / "tuned2"], labels=["a", "b"],
                   chunk_elems=300, show_progress=False, workers=w) for w in (1, 2, 3)]
    torch_threads = torch.get_num_threads()
    for r in runs[1:]:
        assert r.rows == runs[0].rows
        assert r.other_rows == runs[0].other_rows
        assert r.histograms.keys() == runs[0].histograms.keys()
        for lab, per in r.histograms.items():
            for mod, c in per.items():
                assert np.array_equal(c, runs[0].histograms[lab][mod]), (lab, mod)
    assert torch.get_num_threads() == torch_threads  # the pool puts torch's thread count back


def test_figures_are_drawn_by_a_child_process_or_here_when_it_cannot_start(tmp_path, monkeypatch):
    import sys

    import numpy as np

    from affectlens.locate.figures import MIN_PASS_BYTES, FigureProcess
    from affectlens.modules import MODULES

    def jobs(name: str):
        panel = ("m", np.arange(14, dtype=float).reshape(2, 7), list(MODULES), [0, 1])
        return [(str(tmp_path / name), "locate_heatmap", ([panel], "l2"))]

    monkeypatch.delitem(sys.modules, "matplotlib.pyplot", raising=False)
    child = FigureProcess(MIN_PASS_BYTES)
    assert child.proc is not None  # a long pass, matplotlib not imported here: a child draws
    child.draw(jobs("child.png"))
    assert (tmp_path / "child.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert FigureProcess(MIN_PASS_BYTES - 1).proc is None  # a short pass: drawn here
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-python"))
    broken = FigureProcess(MIN_PASS_BYTES)
    assert broken.proc is None
    broken.draw(jobs("here.png"))
    assert (tmp_path / "here.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_per_model_heatmaps_of_a_metric_share_one_colour_scale(tmp_path, monkeypatch):
    """heatmap_<metric>_<model>.png of two models are read side by side: one colour is one change in both."""
    import affectlens.locate.figures as figures
    import affectlens.locate.weight_change as wc
    from affectlens import plots

    base = save_tiny(tmp_path / "base", "llama", layers=2)
    base_sd = {k: v.clone() for k, v in base.state_dict().items()}
    tuned = {}
    for lab, scale in (("small", 0.01), ("large", 0.3)):  # one model changes 30x more than the other
        t = tiny_model("llama", layers=2)
        t.load_state_dict(base_sd)
        plant(t, {"model.layers.1.mlp.gate_proj.weight": scale, "model.layers.0.self_attn.q_proj.weight": scale / 3})
        t.save_pretrained(tmp_path / lab)
        tuned[lab] = {k: v.clone() for k, v in t.state_dict().items()}
    jobs: list = []
    monkeypatch.setattr(wc, "draw_here", jobs.extend)
    monkeypatch.setattr(figures, "draw_here", jobs.extend)
    locate(tmp_path / "base", [tmp_path / lab for lab in tuned], labels=list(tuned), out=tmp_path / "out",
           show_progress=False)
    figs = {Path(path).name: getattr(plots, fn)(*args) for path, fn, args in jobs if fn == "locate_heatmap"}
    for metric, i in (("l2", 0), ("relative", 1)):
        top = max(v[i] for sd in tuned.values() for k, v in brute(base_sd, sd).items() if k[2] == "weight")
        for name in (f"heatmap_{metric}_small.png", f"heatmap_{metric}_large.png", f"heatmap_{metric}.png"):
            norms = [(im.norm.vmin, im.norm.vmax) for ax in figs[name].axes for im in ax.get_images()]
            assert len(norms) == (2 if name == f"heatmap_{metric}.png" else 1), name
            for lo, hi in norms:
                assert lo == 0 and hi == pytest.approx(top, rel=1e-5), (name, hi, top)
    for fig in figs.values():
        plots.pyplot().close(fig)

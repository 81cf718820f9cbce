"""locate's sampled distributions (issue 13): the sample is exactly the documented elements, binned exactly.

Above ``distribution_sample`` elements per module, the element-wise
distribution comes from the elements whose flat index in their tensor is a
multiple of the module's stride. These tests rebuild that sample
independently (numpy, from the state dicts) and compare bin for bin, check
the stride rule by brute force, and check that the norms never change.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from affectlens.cli import main
from affectlens.locate.stats import sample_strides
from affectlens.locate.weight_change import locate
from affectlens.modules import parse_name
from test_histogram import numpy_reference, random_pair
from test_locate import _peft_case, plant

from conftest import TINYSTORIES
from tiny import save_tiny


def _is_prime(k: int) -> bool:
    return k >= 2 and all(k % q for q in range(2, k))


def test_strides_are_the_smallest_prime_coprime_to_every_row_length():
    sizes = {"gate_proj": (1_000_000, {64, 128}), "q_proj": (5_000, {64}), "down_proj": (999_999, {3 * 5 * 7 * 11}),
             "v_proj": (10_000, {10})}
    got = sample_strides(sizes, 10_000)
    for mod, (total, cols) in sizes.items():
        if total <= 10_000:
            assert got[mod] == 1
            continue
        want = next(k for k in range(math.ceil(total / 10_000), 10**6)
                    if _is_prime(k) and all(c % k for c in cols))
        assert got[mod] == want
    assert got["gate_proj"] == 101 and got["down_proj"] == 101  # 100 -> 101; 3, 5, 7, 11 divide 1155, 101 not
    assert sample_strides(sizes, 0) == dict.fromkeys(sizes, 1)  # 0: every element
    assert sample_strides({"o_proj": (10**6, {97})}, 20_000)["o_proj"] == 53  # 50 -> 53 (97 is prime: not hit)
    assert sample_strides({"o_proj": (970, {97})}, 20)["o_proj"] == 53  # 49 -> 53 ...
    assert sample_strides({"o_proj": (97 * 40, {97})}, 41)["o_proj"] == 101  # ... 95 -> 97 divides 97: 101


def _sampled_reference(base_sd: dict, tuned_sd: dict, strides: dict[str, int]) -> dict[str, tuple[np.ndarray, int]]:
    """Per module: numpy's histogram of the elements at flat index % stride == 0 of each weight tensor."""
    per: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for name, w in base_sd.items():
        p = parse_name(name)
        if p.scope != "module" or p.key.param != "weight":
            continue
        k = strides[p.key.module]
        w32 = w.float().numpy().ravel()
        d32 = (tuned_sd[name].float() - w.float()).numpy().ravel()
        per.setdefault(p.key.module, []).append((d32[::k], w32[::k]))
    return {mod: numpy_reference(np.concatenate([d for d, _ in v]), np.concatenate([w for _, w in v]))
            for mod, v in per.items()}


@pytest.mark.parametrize("chunk_elems", [1 << 22, 700])
def test_sampled_histogram_is_numpys_of_exactly_the_strided_elements(tmp_path, monkeypatch, chunk_elems):
    """Real tinystories-656k, changes in every module; small in-cache steps so samples cross step/chunk edges."""
    from transformers import AutoModelForCausalLM

    import affectlens.locate.tensor_pass as lp

    monkeypatch.setattr(lp, "SUB_ELEMS", 1000)  # 1000 is no multiple of any stride: phases shift step to step
    model = AutoModelForCausalLM.from_pretrained(TINYSTORIES)
    base_sd = {k: v.clone() for k, v in model.state_dict().items()}
    plant(model, {n: 10.0 ** (-1 - i % 4) for i, n in enumerate(base_sd) if parse_name(n).scope == "module"})
    model.save_pretrained(tmp_path / "tuned")
    tuned_sd = model.state_dict()
    exact = locate(TINYSTORIES, [tmp_path / "tuned"], labels=["t"], distribution_sample=0, chunk_elems=chunk_elems,
                   show_progress=False)
    res = locate(TINYSTORIES, [tmp_path / "tuned"], labels=["t"], distribution_sample=5000, chunk_elems=chunk_elems,
                 show_progress=False)
    dist = res.summary["models"]["t"]["distribution"]
    strides = {mod: info["sample"]["stride"] for mod, info in dist.items()}
    assert all(k > 2 for k in strides.values())  # every module sampled: the test bites
    ref = _sampled_reference(base_sd, tuned_sd, strides)
    for mod, counts in res.histograms["t"].items():  # [zeros, under, bins..., over]
        want, want_zeros = ref[mod]
        assert int(counts[0]) == want_zeros and counts[1:].tolist() == want.tolist(), mod
        n = int(counts.sum())
        assert dist[mod]["sample"]["elements"] == n <= 5000
        total = sum(v.numel() for name, v in base_sd.items()
                    if parse_name(name).scope == "module" and parse_name(name).key.module == mod
                    and parse_name(name).key.param == "weight")
        assert dist[mod]["sample"]["of"] == total == int(exact.histograms["t"][mod].sum())
        p = counts / n
        assert dist[mod]["sample"]["max_bin_ci95"] == pytest.approx(1.96 * math.sqrt((p * (1 - p)).max() / n))
        assert exact.summary["models"]["t"]["distribution"][mod]["sample"] == {"stride": 1, "elements": total,
                                                                               "of": total, "max_bin_ci95": 0.0}
    # the norms read every element either way
    assert [(r.layer, r.module, r.l2, r.relative) for r in res.rows] == \
        [(r.layer, r.module, r.l2, r.relative) for r in exact.rows]


def test_sample_shares_fall_within_the_reported_interval(tmp_path):
    """On a large random change, every bin's sampled share is near the exact share: within 2x the
    reported 95 % half-width (the data are fixed by a seed, so this cannot flake)."""
    from safetensors.torch import save_file

    d, w = random_pair(600 * 1000, 11)
    tensors_b, tensors_t = {}, {}
    for i in range(3):
        blk = slice(i * 200_000, (i + 1) * 200_000)
        name = f"model.layers.{i}.mlp.gate_proj.weight"
        tensors_b[name] = torch.from_numpy(w[blk].reshape(400, 500).copy())
        tensors_t[name] = torch.from_numpy((w[blk] + d[blk]).reshape(400, 500).copy())
    for side, t in (("b", tensors_b), ("t", tensors_t)):
        (tmp_path / side).mkdir()
        save_file(t, str(tmp_path / side / "model.safetensors"))
    exact = locate(tmp_path / "b", [tmp_path / "t"], labels=["t"], distribution_sample=0, show_progress=False)
    res = locate(tmp_path / "b", [tmp_path / "t"], labels=["t"], distribution_sample=20_000, show_progress=False)
    s, e = res.histograms["t"]["gate_proj"], exact.histograms["t"]["gate_proj"]
    info = res.summary["models"]["t"]["distribution"]["gate_proj"]["sample"]
    assert info["stride"] == 31 and info["elements"] == int(s.sum())  # 30 -> 31, which divides no row (500)
    gap = np.abs(s / s.sum() - e / e.sum()).max()
    assert 0 < gap <= 2 * info["max_bin_ci95"]


def test_adapter_zeros_are_counted_on_the_sample(tmp_path):
    """An adapter leaves some modules unchanged: their zeros count only the sampled elements."""
    _peft_case(tmp_path, "ad", r=2, lora_alpha=4, target_modules=["q_proj"])
    res = locate(tmp_path / "base", [tmp_path / "ad"], labels=["a"], distribution_sample=50, show_progress=False)
    from safetensors.torch import load_file

    base_sd = load_file(tmp_path / "base" / "model.safetensors")
    dist = res.summary["models"]["a"]["distribution"]
    for mod, counts in res.histograms["a"].items():
        k = dist[mod]["sample"]["stride"]
        n = sum(len(range(0, v.numel(), k)) for name, v in base_sd.items()
                if parse_name(name).scope == "module" and parse_name(name).key.module == mod
                and parse_name(name).key.param == "weight")
        assert k > 1 and int(counts.sum()) == n
        if mod != "q_proj":
            assert int(counts[0]) == n  # unchanged: every sampled element is an exact zero


def test_cli_flag_and_manifest(tmp_path, capsys):
    from affectlens.locate.stats import DIST_SAMPLE

    with pytest.raises(SystemExit):  # the help (torch-free, so it cannot import the constant) states it
        main(["locate", "--help"])
    assert f"default {DIST_SAMPLE}" in " ".join(capsys.readouterr().out.split())
    base = save_tiny(tmp_path / "base", "llama", layers=2)
    plant(base, {"model.layers.0.mlp.gate_proj.weight": 0.1})
    base.save_pretrained(tmp_path / "tuned")
    out = tmp_path / "o"
    assert main(["locate", str(tmp_path / "base"), str(tmp_path / "tuned"), "--out", str(out),
                 "--distribution-sample", "100"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["options"]["distribution_sample"] == 100
    summary = json.loads((out / "summary.json").read_text())
    assert summary["distribution_sample"]["per_module"] == 100
    assert summary["distribution_sample"]["method"].startswith("systematic")
    from affectlens.locate.weight_change import sample_notes

    samples = [d["sample"] for d in summary["models"]["tuned"]["distribution"].values()]
    assert all(s["stride"] > 1 for s in samples)
    note = sample_notes(summary)["tuned"]  # the distribution figure's second title line
    assert f"≥{min(s['elements'] for s in samples):,} per module" in note
    assert f"±{100 * max(s['max_bin_ci95'] for s in samples):.2f} pp" in note
    summary["models"]["tuned"]["distribution"] = {"q_proj": {"sample": {**samples[0], "stride": 1}}}
    assert sample_notes(summary) == {}  # every element: no note
    capsys.readouterr()
    assert main(["locate", str(tmp_path / "base"), str(tmp_path / "tuned"), "--out", str(tmp_path / "o2"),
                 "--distribution-sample", "-3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--distribution-sample" in err[0]
    assert not (tmp_path / "o2").exists()


def test_adapter_sample_forms_only_the_sampled_entries(tmp_path):
    """A plain LoRA's sampled distribution forms s·BA at the sampled entries only: it equals numpy's
    histogram of s·BA (float64, from the adapter file) at exactly those entries."""
    from safetensors.torch import load_file

    base_sd, _ = _peft_case(tmp_path, "ad", r=4, lora_alpha=8, target_modules=["q_proj", "gate_proj", "down_proj"])
    ad = load_file(tmp_path / "ad" / "adapter_model.safetensors")
    res = locate(tmp_path / "base", [tmp_path / "ad"], labels=["a"], distribution_sample=200, show_progress=False)
    dist = res.summary["models"]["a"]["distribution"]
    for mod in ("q_proj", "gate_proj", "down_proj"):
        k = dist[mod]["sample"]["stride"]
        assert k > 10
        deltas, weights = [], []
        for name, w in base_sd.items():
            p = parse_name(name)
            if p.scope != "module" or p.key.module != mod or p.key.param != "weight":
                continue
            path = name.removesuffix(".weight")
            A = ad[f"base_model.model.{path}.lora_A.weight"].double()
            B = ad[f"base_model.model.{path}.lora_B.weight"].double()
            deltas.append((2.0 * B @ A).float().numpy().ravel()[::k])  # scale alpha/r = 2
            weights.append(w.float().numpy().ravel()[::k])
        want, want_zeros = numpy_reference(np.concatenate(deltas), np.concatenate(weights))
        got = res.histograms["a"][mod]
        assert int(got[0]) == want_zeros and int(got.sum()) == sum(len(x) for x in deltas)
        assert np.abs(got[1:] - want).sum() <= 2, mod  # float32 sums vs float64 at bin edges
        assert got[2:-1].sum() > 0.5 * got.sum()  # most entries land in the inner bins: the test bites
    assert int(res.histograms["a"]["up_proj"][0]) == int(res.histograms["a"]["up_proj"].sum())  # untouched

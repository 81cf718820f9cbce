"""transfer's torch-free path (issue 13): the same bytes as the decoding path, the same refusals, no torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import affectlens.interventions.transfer as transfer_mod
import affectlens.interventions.transfer_fast as fast
from affectlens.errors import AffectlensError
from affectlens.interventions.transfer import transfer

from tiny import tiny_model

GATE = ".mlp.gate_proj."


def save(path: Path, seed: int, dtype: torch.dtype, shard: str | None) -> Path:
    model = tiny_model("llama", seed=seed).to(dtype)
    model.save_pretrained(path, safe_serialization=True, **({"max_shard_size": shard} if shard else {}))
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("fast")
    for dt, name in ((torch.bfloat16, "bf16"), (torch.float32, "f32")):
        for layout, shard in (("single", None), ("sharded", "20KB")):
            save(root / f"base_{name}_{layout}", 0, dt, shard)
            save(root / f"donor_{name}_{layout}", 1, dt, shard)
    assert (root / "base_bf16_sharded" / "model.safetensors.index.json").is_file()
    return root


@pytest.fixture(autouse=True)
def no_memo(monkeypatch):
    """Every check really reads (the memo is tested in test_transfer_memo)."""
    monkeypatch.setenv("AFFECTLENS_NO_FINITE_MEMO", "1")


def outputs(d: Path) -> dict[str, bytes]:
    """Every file of a result but the manifest (which records times and the output path)."""
    return {f.name: f.read_bytes() for f in sorted(d.iterdir()) if f.name != "manifest.json"}


def tensors(d: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(d.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def run(base: Path, donor: Path, out: Path, modules: str = "attn,gate_proj", shard: str = "30KB") -> list[str]:
    lines: list[str] = []
    transfer(base, donor, modules, out, max_shard_size=shard, echo=lines.append)
    return lines


def decoding_only(monkeypatch) -> None:
    monkeypatch.setattr(fast, "raw_transfer", lambda *a, **k: None)


def fast_only(monkeypatch) -> list[int]:
    """Fail if the decoding path runs; count fast-path results."""
    used: list[int] = []
    real = fast.raw_transfer

    def spy(*a, **k):
        res = real(*a, **k)
        used.append(res is not None)
        return res

    def boom(*a, **k):
        raise AssertionError("the decoding path ran")

    monkeypatch.setattr(fast, "raw_transfer", spy)
    monkeypatch.setattr(transfer_mod, "_decoding_transfer", boom)
    return used


@pytest.mark.parametrize("dtype", ["bf16", "f32"])
@pytest.mark.parametrize("layout", ["single", "sharded"])
def test_fast_path_writes_the_decoding_paths_bytes(models, tmp_path, monkeypatch, dtype, layout):
    base, donor = models / f"base_{dtype}_{layout}", models / f"donor_{dtype}_{layout}"
    with monkeypatch.context() as m:
        used = fast_only(m)
        printed = run(base, donor, tmp_path / "fast")
        assert used == [True]
    decoding_only(monkeypatch)
    assert run(base, donor, tmp_path / "slow") == printed  # same selection table
    assert outputs(tmp_path / "fast") == outputs(tmp_path / "slow")
    # And what an independent reader expects: BASE with DONOR's attention and gate_proj, in BASE's dtype.
    b, d, o = tensors(base), tensors(donor), tensors(tmp_path / "fast")
    assert set(o) == set(b) and len(list((tmp_path / "fast").glob("*.safetensors"))) > 1
    for name, t in o.items():
        src = d if (GATE in name or ".self_attn." in name) else b
        assert t.dtype == src[name].dtype and torch.equal(t, src[name]), name


def plant(src: Path, dst: Path, pattern: str, value: float) -> str:
    """A copy of ``src`` with ``value`` in the first tensor whose name holds ``pattern``."""
    dst.mkdir()
    hit = ""
    for f in sorted(src.iterdir()):
        if f.suffix != ".safetensors":
            (dst / f.name).write_bytes(f.read_bytes())
            continue
        sd = load_file(str(f))
        name = next((n for n in sd if pattern in n), None)
        if name is not None and not hit:
            sd[name].view(-1)[3] = value
            hit = name
        save_file(sd, str(dst / f.name), metadata={"format": "pt"})
    assert hit
    return hit


@pytest.mark.parametrize("value", [float("nan"), float("-inf")])
@pytest.mark.parametrize("where", ["donor", "base"])
def test_a_non_finite_tensor_is_refused_by_name_and_nothing_is_published(models, tmp_path, monkeypatch, value,
                                                                          where):
    base, donor = models / "base_bf16_sharded", models / "donor_bf16_sharded"
    # In the donor, a transferred tensor; in the base, one that is copied (up_proj is not selected).
    pattern = GATE if where == "donor" else ".mlp.up_proj."
    bad_dir = tmp_path / where
    bad = plant(donor if where == "donor" else base, bad_dir, pattern, value)
    args = (base, bad_dir) if where == "donor" else (bad_dir, donor)
    fast_only(monkeypatch)
    with pytest.raises(AffectlensError, match=rf"non-finite values \(NaN/Inf\) in tensor {bad} of "):
        run(*args, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no leftovers


def test_signed_zero_is_no_change_as_in_torch_equal(tmp_path, monkeypatch):
    """A donor differing only in -0.0 vs 0.0 changes nothing: refused, as by the decoding path."""
    model = tiny_model("llama", seed=0).to(torch.bfloat16)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "gate_proj" in name:
                p.zero_()
    model.save_pretrained(tmp_path / "base")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "gate_proj" in name:
                p.neg_()
    model.save_pretrained(tmp_path / "donor")
    sd = load_file(str(tmp_path / "donor" / "model.safetensors"))
    assert sd["model.layers.0.mlp.gate_proj.weight"].view(torch.int16).min() < 0  # the sign bits are set
    fast_only(monkeypatch)
    with pytest.raises(AffectlensError, match="nothing to transfer"):
        run(tmp_path / "base", tmp_path / "donor", tmp_path / "out", modules="gate_proj")


def _lora(tmp: Path, base: Path) -> Path:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(3)
    cfg = LoraConfig(r=2, lora_alpha=4, target_modules=["gate_proj"], init_lora_weights=False)
    out = tmp / "adapter"
    get_peft_model(tiny_model("llama", seed=0), cfg).save_pretrained(str(out))
    conf = json.loads((out / "adapter_config.json").read_text())
    conf["base_model_name_or_path"] = str(base)
    (out / "adapter_config.json").write_text(json.dumps(conf))
    return out


def _gguf(tmp: Path, models: Path) -> Path:
    from test_faults_weights import _gguf_base

    m = tmp / "g"
    (m / "base").mkdir(parents=True)
    for f in (models / "base_f32_single").iterdir():
        (m / "base" / f.name).write_bytes(f.read_bytes())
    return _gguf_base(m)


@pytest.mark.parametrize("case", ["lora", "dtype", "gguf"])
def test_other_cases_fall_back_with_identical_results(models, tmp_path, monkeypatch, case):
    base = models / "base_f32_single"
    if case == "lora":
        donor = _lora(tmp_path, base)
    elif case == "dtype":
        base, donor = models / "base_bf16_single", models / "donor_f32_single"
    else:
        base, donor = models / "donor_f32_single", _gguf(tmp_path, models)
    calls: list[bool] = []
    real = fast.raw_transfer

    def spy(*a, **k):
        res = real(*a, **k)
        calls.append(res is None)
        return res

    with monkeypatch.context() as m:
        m.setattr(fast, "raw_transfer", spy)
        printed = run(base, donor, tmp_path / "auto", modules="gate_proj")
    assert calls == [True]  # the fast path declined
    decoding_only(monkeypatch)
    assert run(base, donor, tmp_path / "slow", modules="gate_proj") == printed
    assert outputs(tmp_path / "auto") == outputs(tmp_path / "slow")


def test_cli_transfer_on_the_fast_path_never_imports_torch(models, tmp_path):
    out = tmp_path / "out"
    code = ("import sys\nfrom affectlens.cli import main\n"
            f"rc = main(['transfer', {str(models / 'base_bf16_sharded')!r}, {str(models / 'donor_bf16_sharded')!r},"
            f" '--modules', 'gate_proj', '--out', {str(out)!r}])\n"
            "print('RC', rc, 'TORCH', 'torch' in sys.modules, 'TRANSFORMERS', 'transformers' in sys.modules)\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert "RC 0 TORCH False TRANSFORMERS False" in res.stdout, res.stdout + res.stderr
    assert (out / "model.safetensors").is_file() or (out / "model.safetensors.index.json").is_file()
    assert json.loads((out / "compose.json").read_text())["donor_kind"] == "full"


@pytest.mark.parametrize("dtype,tdt", [("BF16", torch.bfloat16), ("F16", torch.float16)])
def test_raw_finite_check_agrees_with_isfinite_on_every_bit_pattern(dtype, tdt):
    import numpy as np

    from affectlens.weights.rawcopy import ByteReader

    bits = np.arange(1 << 16, dtype=np.uint16)
    want = torch.isfinite(torch.from_numpy(bits.view(np.int16).copy()).view(tdt)).numpy()
    got = np.array([not ByteReader.nonfinite(dtype, bits[i:i + 1].view(np.uint8)) for i in range(1 << 16)])
    assert (got == want).all()
    assert ByteReader.nonfinite(dtype, bits.view(np.uint8)) and not ByteReader.nonfinite(dtype, bits[:0].view(np.uint8))


@pytest.mark.parametrize("dtype,ndt", [("F32", "float32"), ("F64", "float64")])
def test_raw_finite_check_on_wide_floats(dtype, ndt):
    import numpy as np

    from affectlens.weights.rawcopy import ByteReader

    specials = np.array([0.0, -0.0, 1.0, -1.0, np.finfo(ndt).max, -np.finfo(ndt).max, np.finfo(ndt).tiny,
                         -np.finfo(ndt).smallest_subnormal, np.inf, -np.inf, np.nan, -np.nan], dtype=ndt)
    for x in specials:
        one = np.array([1.0, x, 2.0], dtype=ndt)
        assert ByteReader.nonfinite(dtype, one.view(np.uint8)) == (not np.isfinite(x)), x


def test_value_comparison_is_torch_equal():
    import numpy as np

    from affectlens.weights.rawcopy import _value_differs

    a = torch.tensor([0.0, 1.0, 2.0, -0.0, 5.0], dtype=torch.bfloat16)
    for b in (torch.tensor([-0.0, 1.0, 2.0, 0.0, 5.0], dtype=torch.bfloat16),  # signed zeros only
              torch.tensor([-0.0, 1.0, 2.0, 0.0, 6.0], dtype=torch.bfloat16),  # and a real change after them
              torch.tensor([0.0, 1.5, 2.0, -0.0, 5.0], dtype=torch.bfloat16)):
        raw = [np.frombuffer(t.view(torch.uint8).numpy().tobytes(), dtype=np.uint8) for t in (a, b)]
        assert _value_differs("BF16", *raw) == (not torch.equal(a, b))


def test_a_lying_index_or_a_truncated_shard_is_refused_as_before(models, tmp_path):
    base, donor = models / "base_bf16_sharded", models / "donor_bf16_sharded"
    lying = tmp_path / "lying"
    lying.mkdir()
    for f in donor.iterdir():
        (lying / f.name).write_bytes(f.read_bytes())
    index = json.loads((lying / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.layers.9.mlp.gate_proj.weight"] = next(iter(index["weight_map"].values()))
    (lying / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(AffectlensError, match="index lists tensor model.layers.9.mlp.gate_proj.weight"):
        run(base, lying, tmp_path / "out")
    shard = sorted(lying.glob("*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(AffectlensError, match="truncated safetensors file"):
        run(base, lying, tmp_path / "out")
    assert not (tmp_path / "out").exists()

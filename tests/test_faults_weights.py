"""Fault injection for the weight readers, transfer, ablate and locate (issue 8, parts 2, 3, 6, 7, 8).

Every fault is built from a tiny model (a planted NaN, a lying safetensors
header, a pickle gadget, a selection the fine-tune never touched) and driven
through the CLI as a user would: exit 2, one stderr line naming the tensor and
file, no output dir, no leftovers, and an existing result survives ``--force``.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from affectlens.errors import AffectlensError

from faults import assert_refused, run_cli, tree_digest
from tiny import plant_projections, save_tiny, tiny_model

GATE0 = "model.layers.0.mlp.gate_proj.weight"
GATE1 = "model.layers.1.mlp.gate_proj.weight"
UP1 = "model.layers.1.mlp.up_proj.weight"
NORM = "model.norm.weight"
LORA_B_GATE0 = "base_model.model.model.layers.0.mlp.gate_proj.lora_B.weight"


# --------------------------------------------------------------------------- fixtures


def _lora(root: Path, base: Path, name: str, targets: list[str], seed: int = 3) -> Path:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = get_peft_model(tiny_model("llama", seed=0),
                           LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False))
    out = root / name
    model.save_pretrained(str(out))
    conf = json.loads((out / "adapter_config.json").read_text())
    conf["base_model_name_or_path"] = str(base)
    (out / "adapter_config.json").write_text(json.dumps(conf))
    return out


@pytest.fixture(scope="module")
def m(tmp_path_factory) -> Path:
    """base, donor (another init), tuned (base + planted delta), a LoRA on q_proj,gate_proj, pickle dirs."""
    root = tmp_path_factory.mktemp("faultw")
    base = save_tiny(root / "base", "llama", seed=0)
    save_tiny(root / "donor", "llama", seed=1)
    save_tiny(root / "base_sharded", "llama", seed=0, max_shard_size="20KB")
    save_tiny(root / "donor_sharded", "llama", seed=1, max_shard_size="20KB")
    plant_projections(base).save_pretrained(root / "tuned")
    _lora(root, root / "base", "adapter", ["q_proj", "gate_proj"])
    for src in ("base", "donor", "tuned"):
        d = root / f"pk_{src}"
        d.mkdir()
        shutil.copy(root / src / "config.json", d)
        torch.save(load_file(root / src / "model.safetensors"), d / "pytorch_model.bin")
    return root


def plant(m: Path, src: str, name: str, tensor: str, value: float) -> Path:
    """A copy of model dir ``src`` with one element of ``tensor`` set to ``value``."""
    dst = m.parent / f"{m.name}-{name}"
    if dst.exists():
        return dst
    shutil.copytree(m / src, dst)
    f = dst / ("adapter_model.safetensors" if (dst / "adapter_config.json").is_file() else "model.safetensors")
    sd = load_file(f)
    t = sd[tensor].clone()
    t.view(-1)[3] = value
    sd[tensor] = t
    save_file(sd, f, metadata={"format": "pt"})
    return dst


def prior_result(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """An existing result at OUT (the run below passes --force): it must survive a refused run."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "compose.json").write_text('{"kind": "earlier run"}\n')
    return out, tree_digest(out)


def load_dir(d: Path) -> dict[str, torch.Tensor]:
    """Every safetensors file of an output, read with the plain safetensors loader."""
    files = sorted(d.glob("*.safetensors"))
    assert files, f"no safetensors in {d}"
    out: dict[str, torch.Tensor] = {}
    for f in files:
        out.update(load_file(str(f)))
    return out


# --------------------------------------------------------------------------- part 2: non-finite values

NAN, INF = float("nan"), float("inf")

# (case, planted model, tensor, value, argv with {p} for the planted copy and {m} for the fixture dir)
NONFINITE = [
    ("transfer-donor-nan", "donor", GATE1, NAN, ["transfer", "{m}/base", "{p}", "--modules", "gate_proj"]),
    ("transfer-base-inf", "base", NORM, INF, ["transfer", "{p}", "{m}/donor", "--modules", "gate_proj"]),
    ("transfer-lora-nan", "adapter", LORA_B_GATE0, NAN, ["transfer", "{m}/base", "{p}", "--modules", "gate_proj"]),
    ("ablate-noise-nan", "tuned", GATE1, NAN,
     ["ablate", "{p}", "--modules", "gate_proj", "--ablation", "noise", "--base", "{m}/base"]),
    ("ablate-mean-inf", "tuned", GATE1, -INF, ["ablate", "{p}", "--modules", "gate_proj", "--ablation", "mean"]),
    ("ablate-zero-nan-elsewhere", "tuned", UP1, NAN, ["ablate", "{p}", "--modules", "gate_proj", "--ablation", "zero"]),
    ("ablate-reset-base-nan", "base", GATE0, NAN,
     ["ablate", "{m}/tuned", "--modules", "gate_proj", "--ablation", "reset", "--base", "{p}"]),
    ("ablate-lora-nan", "adapter", LORA_B_GATE0, NAN,
     ["ablate", "{p}", "--modules", "q_proj", "--ablation", "zero-delta"]),
]


@pytest.mark.parametrize("case,src,tensor,value,argv", NONFINITE, ids=[c[0] for c in NONFINITE])
def test_non_finite_inputs_are_refused_before_writing(m, tmp_path, capfd, case, src, tensor, value, argv):
    p = plant(m, src, case, tensor, value)
    args = [a.format(m=m, p=p) for a in argv]
    fresh = tmp_path / "fresh"
    line = assert_refused(run_cli(capfd, *args, "--out", fresh), out=fresh, contains="non-finite")
    assert tensor in line, line
    assert str(p) in line, line  # the file it came from
    out, digest = prior_result(tmp_path)
    assert_refused(run_cli(capfd, *args, "--out", out, "--force"), out=out, contains="non-finite", survivor=digest)


def test_noise_and_mean_never_spread_a_nan_in_memory(m):
    """The in-memory API (used by grid) refuses too: one NaN never becomes a NaN tensor."""
    from affectlens.interventions.ablate import ablate_tensors

    p = plant(m, "tuned", "ablate-noise-nan", GATE1, NAN)
    for mode, base in (("noise", m / "base"), ("mean", None)):
        with pytest.raises(AffectlensError, match=f"non-finite.*{GATE1}"):
            ablate_tensors(p, "gate_proj", mode, base=base, echo=lambda s: None)


@pytest.fixture(scope="module")
def fp16_overflow(m) -> tuple[Path, Path]:
    """Finite fp16 base and finite adapter whose merge overflows fp16: only the output check sees it."""
    root = m.parent / f"{m.name}-fp16"
    if root.exists():
        return root / "base16", root / "ad16"
    model = tiny_model("llama", seed=0).half()
    with torch.no_grad():
        model.model.layers[0].mlp.gate_proj.weight[0, 0] = 65000.0
    model.save_pretrained(root / "base16")
    ad = _lora(root, root / "base16", "ad16", ["q_proj", "gate_proj"])
    f = ad / "adapter_model.safetensors"
    sd = load_file(f)
    for k in list(sd):
        if ".layers.0.mlp.gate_proj." in k:
            sd[k] = torch.full_like(sd[k], 40.0)  # delta = 2 * 4 * 40 * 40 = 12800 per element
    save_file(sd, f, metadata={"format": "pt"})
    return root / "base16", ad


@pytest.mark.parametrize("cmd", ["transfer-merge", "ablate"])
def test_non_finite_output_is_refused(fp16_overflow, tmp_path, capfd, cmd):
    base16, ad16 = fp16_overflow
    assert all(bool(torch.isfinite(t.float()).all()) for t in load_file(base16 / "model.safetensors").values())
    out = tmp_path / "o"
    if cmd == "transfer-merge":
        argv = ["transfer", base16, ad16, "--modules", "gate_proj", "--merge", "--out", out]
    else:  # gate_proj keeps its LoRA, merged into the fp16 base: 65000 + 12800 overflows
        argv = ["ablate", ad16, "--modules", "q_proj", "--ablation", "zero-delta", "--out", out]
    line = assert_refused(run_cli(capfd, *argv), out=out, contains="non-finite")
    assert GATE0 in line


def test_check_finite_unit():
    from affectlens.weights import check_finite, check_store_finite
    from affectlens.weights.store import TensorDictStore

    check_finite(torch.ones(3), "x")
    check_finite(torch.tensor([1, 2], dtype=torch.int64), "ints")  # integers cannot be NaN
    check_finite(torch.tensor([65504.0], dtype=torch.float16), "fp16 max is finite")
    for bad in (float("nan"), float("inf"), float("-inf")):
        t = torch.zeros(5, 7, dtype=torch.bfloat16)
        t[4, 6] = bad
        with pytest.raises(AffectlensError, match=r"^non-finite values \(NaN/Inf\) in w of f$"):
            check_finite(t, "w of f")
    store = TensorDictStore({"a": torch.ones(2, 2), "b": torch.tensor([[0.0, float("nan")]])}, path="mem")
    check_store_finite(store, ["a"])
    with pytest.raises(AffectlensError, match="tensor b of mem"):
        check_store_finite(store)


def test_write_checkpoint_checks_what_it_writes(m, tmp_path):
    from affectlens.interventions.checkpoint import write_checkpoint
    from affectlens.weights import open_weights

    bad = torch.full((4,), float("inf"))
    with open_weights(m / "base") as store, pytest.raises(AffectlensError, match=f"non-finite.*{NORM}"):
        n = store.shape(NORM)[0]
        write_checkpoint(store, {NORM: torch.cat([bad, torch.ones(n - 4)])}, tmp_path / "o")
    assert not list((tmp_path / "o").iterdir())  # the aborted shard is gone


# --------------------------------------------------------------------------- part 3 + 8: lying headers


def rewrite_header(f: Path, mutate) -> None:
    """Replace a safetensors file's header by ``mutate(header)`` (any JSON), keeping the data."""
    data = f.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    raw = json.dumps(mutate(header)).encode()
    f.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])


def _half_shape(h):
    h[GATE1]["shape"] = [h[GATE1]["shape"][0] // 2, h[GATE1]["shape"][1]]  # offsets still span all
    return h


def _drop_offsets(h):
    del h[GATE1]["data_offsets"]
    return h


def _swap_offsets(h):
    last = max((k for k in h if k != "__metadata__"), key=lambda k: h[k]["data_offsets"][1])
    s, e = h[last]["data_offsets"]
    h[last]["data_offsets"] = [s + 64, e + 64]  # same size, but past the end of the data
    return h


def _set(key, value):
    def f(h):
        h[GATE1][key] = value
        return h
    return f


HEADERS = {
    "list": lambda h: [h],
    "no-data-offsets": _drop_offsets,
    "entry-not-object": lambda h: {**h, GATE1: 5},
    "size-lie": _half_shape,
    "unknown-dtype": _set("dtype", "F7"),
    "negative-shape": _set("shape", [-1, 32]),
    "outside-data": _swap_offsets,
    "metadata-list": lambda h: {**h, "__metadata__": ["x"]},
}

READERS = {
    "transfer": lambda m, p: ["transfer", m / "base", p, "--modules", "gate_proj"],
    "ablate": lambda m, p: ["ablate", p, "--modules", "gate_proj", "--ablation", "reset", "--base", m / "base"],
    "locate": lambda m, p: ["locate", m / "base", p],
}


@pytest.fixture(scope="module")
def corrupt(m):
    made: dict[str, Path] = {}
    for name, mutate in HEADERS.items():
        d = m.parent / f"{m.name}-hdr-{name}"
        shutil.copytree(m / "donor", d)
        rewrite_header(d / "model.safetensors", mutate)
        made[name] = d
    return made


@pytest.mark.parametrize("reader", list(READERS))
@pytest.mark.parametrize("fault", list(HEADERS))
def test_lying_or_malformed_header_is_one_line_for_every_reader(m, corrupt, tmp_path, capfd, fault, reader):
    p = corrupt[fault]
    with pytest.raises(Exception):  # noqa: B017 - the fault is real: safetensors itself rejects the file
        load_file(p / "model.safetensors")
    out = tmp_path / "o"
    line = assert_refused(run_cli(capfd, *READERS[reader](m, p), "--out", out), out=out)
    assert str(p / "model.safetensors") in line
    assert "corrupt" in line or "truncated" in line


def test_header_checks_unit(m, tmp_path):
    from affectlens.weights.store import read_safetensors_header

    f = tmp_path / "t.safetensors"
    shutil.copy(m / "donor" / "model.safetensors", f)
    assert GATE1 in read_safetensors_header(f)
    rewrite_header(f, _half_shape)
    with pytest.raises(AffectlensError, match=rf"{GATE1} is F32 \[32, 32\] \(4096 bytes\) but its data_offsets span 8192"):
        read_safetensors_header(f)
    shutil.copy(m / "donor" / "model.safetensors", f)
    with open(f, "ab") as fh:
        fh.write(b"\0" * 16)  # trailing bytes: safetensors refuses these too
    with pytest.raises(AffectlensError, match="16 bytes after the last tensor"):
        read_safetensors_header(f)
    with pytest.raises(Exception):  # noqa: B017
        load_file(f)


def test_index_and_config_that_are_not_objects(m, tmp_path, capfd):
    d = tmp_path / "sharded"
    shutil.copytree(m / "donor_sharded", d)
    (d / "model.safetensors.index.json").write_text("[1, 2]")
    out = tmp_path / "o"
    assert_refused(run_cli(capfd, "transfer", m / "base_sharded", d, "--modules", "gate_proj", "--out", out),
                   out=out, contains="corrupt index")
    d2 = tmp_path / "cfg"
    shutil.copytree(m / "donor", d2)
    (d2 / "config.json").write_text("[]")
    assert_refused(run_cli(capfd, "transfer", m / "base", d2, "--modules", "gate_proj", "--out", out),
                   out=out, contains="corrupt config.json")


# --------------------------------------------------------------------------- part 3: outputs always load


def _gguf_base(m: Path) -> Path:
    """The tiny base as a llama.cpp-style GGUF (F32, q/k permuted), beside its config.json."""
    import gguf

    from affectlens.weights.gguf_store import GGUF_GLOBAL, GGUF_LAYER

    d = m.parent / f"{m.name}-gguf"
    f = d / "base.gguf"
    if f.is_file():
        return f
    d.mkdir()
    shutil.copy(m / "base" / "config.json", d)
    cfg = json.loads((m / "base" / "config.json").read_text())
    sd = load_file(m / "base" / "model.safetensors")
    w = gguf.GGUFWriter(str(f), "llama")
    for key, v in (("block_count", "num_hidden_layers"), ("embedding_length", "hidden_size"),
                   ("feed_forward_length", "intermediate_size"), ("attention.head_count", "num_attention_heads"),
                   ("attention.head_count_kv", "num_key_value_heads"), ("vocab_size", "vocab_size")):
        w.add_uint32(f"llama.{key}", int(cfg[v]))
    layer = {v: k for k, v in GGUF_LAYER.items()}
    glob = {v: k for k, v in GGUF_GLOBAL.items()}
    for name, t in sd.items():
        stem, param = name.rsplit(".", 1)
        a = t.numpy()
        if stem.startswith("model.layers."):
            i, mod = stem[len("model.layers."):].split(".", 1)
            heads = cfg["num_attention_heads"] if mod == "self_attn.q_proj" else cfg["num_key_value_heads"]
            if mod in ("self_attn.q_proj", "self_attn.k_proj"):
                a = a.reshape(heads, 2, a.shape[0] // heads // 2, *a.shape[1:]).swapaxes(1, 2).reshape(a.shape)
            gname = f"blk.{i}.{layer[mod]}.{param}"
        else:
            gname = f"{glob[stem]}.{param}"
        w.add_tensor(gname, a.copy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return f


KINDS = ["hf-single", "hf-sharded", "single-file", "gguf-base", "lora", "pickle"]


def _sources(m: Path, kind: str) -> tuple[list, list, Path]:
    """(transfer argv, ablate argv, base dir whose values the unselected tensors keep)."""
    if kind == "hf-single":
        return ([m / "base", m / "donor"], [m / "tuned", "--base", m / "base"], m / "base")
    if kind == "hf-sharded":
        return ([m / "base_sharded", m / "donor_sharded", "--max-shard-size", "30KB"],
                [m / "tuned", "--base", m / "base_sharded", "--max-shard-size", "30KB"], m / "base")
    if kind == "single-file":
        return ([m / "base" / "model.safetensors", m / "donor" / "model.safetensors"],
                [m / "tuned" / "model.safetensors", "--base", m / "base" / "model.safetensors"], m / "base")
    if kind == "gguf-base":
        g = _gguf_base(m)
        return ([g, m / "donor"], [m / "tuned", "--base", g], m / "base")
    if kind == "lora":
        return ([m / "base", m / "adapter", "--merge"], [m / "adapter"], m / "base")
    return ([m / "pk_base", m / "pk_donor", "--allow-pickle"],
            [m / "pk_tuned", "--base", m / "pk_base", "--allow-pickle"], m / "base")


@pytest.mark.parametrize("kind", KINDS)
def test_transfer_and_ablate_outputs_load_with_plain_safetensors(m, tmp_path, capfd, kind):
    t_args, a_args, base_dir = _sources(m, kind)
    base = load_file(base_dir / "model.safetensors")
    out = tmp_path / "t"
    rc, _, err = run_cli(capfd, "transfer", *t_args[:2], "--modules", "gate_proj", "--out", out, *t_args[2:])
    assert rc == 0, err
    if kind == "lora":
        ad = load_file(out / "adapter_model.safetensors")
        assert ad and all(".gate_proj." in k for k in ad)
        got = load_dir(out / "merged")
    else:
        got = load_dir(out)
        donor = load_file(m / "donor" / "model.safetensors")
        assert torch.equal(got[GATE1], donor[GATE1])
    assert set(got) == set(base)
    for name, t in got.items():
        if ".gate_proj." not in name:
            assert torch.equal(t, base[name]), name
    if kind == "lora":
        assert not torch.equal(got[GATE1], base[GATE1])

    out = tmp_path / "a"
    mode = "zero-delta" if kind == "lora" else "noise"
    rc, _, err = run_cli(capfd, "ablate", a_args[0], "--modules", "gate_proj", "--ablation", mode, "--out", out,
                         *a_args[1:])
    assert rc == 0, err
    got = load_dir(out)
    assert set(got) == set(base)
    assert all(bool(torch.isfinite(t).all()) for t in got.values() if t.is_floating_point())
    if kind == "lora":  # zero-delta drops gate_proj's LoRA: back to the base exactly
        assert torch.equal(got[GATE1], base[GATE1])


# --------------------------------------------------------------------------- part 6: untouched selections


def test_selection_the_donor_never_touched_is_an_error(m, tmp_path, capfd):
    out = tmp_path / "o"
    line = assert_refused(run_cli(capfd, "ablate", m / "adapter", "--modules", "k_proj", "--ablation", "zero-delta",
                                  "--out", out), out=out, contains="nothing to ablate")
    assert "k_proj" in line and str(m / "adapter") in line
    assert_refused(run_cli(capfd, "ablate", m / "adapter", "--modules", "k_proj,q_proj", "--ablation", "reset",
                           "--out", out), out=out, contains="partly unmatched")
    assert_refused(run_cli(capfd, "transfer", m / "base", m / "adapter", "--modules", "k_proj", "--out", out),
                   out=out, contains="matched no tensor")
    # A full "fine-tune" equal to the base in the selection.
    assert_refused(run_cli(capfd, "transfer", m / "base", m / "base_sharded", "--modules", "gate_proj",
                           "--out", out), out=out, contains="nothing to transfer")
    existing, digest = prior_result(tmp_path)
    assert_refused(run_cli(capfd, "ablate", m / "base", "--base", m / "base_sharded", "--modules", "gate_proj",
                           "--ablation", "reset", "--out", existing, "--force"),
                   out=existing, contains="nothing to ablate", survivor=digest)
    # zero and mean destroy the module whatever fine-tuning did: still allowed on an untouched one.
    rc, _, err = run_cli(capfd, "ablate", m / "adapter", "--modules", "k_proj", "--ablation", "zero", "--out", out)
    assert rc == 0, err
    assert not load_dir(out)["model.layers.0.self_attn.k_proj.weight"].any()


def test_zero_lora_is_nothing_to_transfer(m, tmp_path, capfd):
    d = tmp_path / "zero_ad"
    shutil.copytree(m / "adapter", d)
    f = d / "adapter_model.safetensors"
    sd = {k: (torch.zeros_like(v) if "lora_B" in k else v) for k, v in load_file(f).items()}
    save_file(sd, f, metadata={"format": "pt"})
    out = tmp_path / "o"
    assert_refused(run_cli(capfd, "transfer", m / "base", d, "--modules", "gate_proj", "--out", out),
                   out=out, contains="nothing to transfer")
    assert_refused(run_cli(capfd, "ablate", d, "--modules", "gate_proj", "--ablation", "zero-delta", "--out", out),
                   out=out, contains="nothing to ablate")


# --------------------------------------------------------------------------- part 7: one pickle policy

PICKLE_MSG = "is a pickle checkpoint; loading it can run code: pass --allow-pickle if you trust it"


def test_pickle_needs_the_flag_on_transfer_and_ablate(m, tmp_path, capfd):
    out = tmp_path / "o"
    line = assert_refused(run_cli(capfd, "transfer", m / "base", m / "pk_donor", "--modules", "gate_proj",
                                  "--out", out), out=out, contains=PICKLE_MSG)
    assert str(m / "pk_donor" / "pytorch_model.bin") in line
    assert_refused(run_cli(capfd, "ablate", m / "pk_tuned", "--modules", "gate_proj", "--ablation", "zero",
                           "--out", out), out=out, contains=PICKLE_MSG)
    assert_refused(run_cli(capfd, "transfer", m / "base", m / "pk_donor" / "pytorch_model.bin", "--modules",
                           "gate_proj", "--out", out), out=out, contains=PICKLE_MSG)


def test_legacy_pickle_loads_and_gadget_never_runs(m, tmp_path, capfd):
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    shutil.copy(m / "donor" / "config.json", legacy)
    torch.save(load_file(m / "donor" / "model.safetensors"), legacy / "pytorch_model.bin",
               _use_new_zipfile_serialization=False)
    with pytest.raises(RuntimeError):  # the fault is real: pre-zip files cannot be memory-mapped
        torch.load(legacy / "pytorch_model.bin", weights_only=True, mmap=True)
    out = tmp_path / "o"
    rc, _, err = run_cli(capfd, "transfer", m / "base", legacy, "--modules", "gate_proj", "--out", out,
                         "--allow-pickle")
    assert rc == 0, err
    assert torch.equal(load_dir(out)[GATE1], load_file(m / "donor" / "model.safetensors")[GATE1])

    marker = tmp_path / "pwned"

    class Gadget:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil"
    evil.mkdir()
    shutil.copy(m / "donor" / "config.json", evil)
    torch.save({GATE1: torch.zeros(1), "x": Gadget()}, evil / "pytorch_model.bin")
    out2 = tmp_path / "o2"
    line = assert_refused(run_cli(capfd, "transfer", m / "base", evil, "--modules", "gate_proj", "--out", out2,
                                  "--allow-pickle"), out=out2, contains="weights_only=True")
    assert str(evil / "pytorch_model.bin") in line
    assert not marker.exists()
    (evil / "pytorch_model.bin").write_bytes(b"\x80\x02garbage" * 10)
    assert_refused(run_cli(capfd, "transfer", m / "base", evil, "--modules", "gate_proj", "--out", out2,
                           "--allow-pickle"), out=out2, contains="cannot read pickle checkpoint")


def test_load_pickle_unit(tmp_path):
    from affectlens.weights import load_pickle_state_dict

    t = {"w": torch.arange(6.0).reshape(2, 3)}
    for zipped in (True, False):
        f = tmp_path / f"sd-{zipped}.bin"
        torch.save(t, f, _use_new_zipfile_serialization=zipped)
        assert torch.equal(load_pickle_state_dict(f)["w"], t["w"])
    torch.save([1, 2], tmp_path / "list.bin")
    with pytest.raises(AffectlensError, match="holds a list, not a state dict"):
        load_pickle_state_dict(tmp_path / "list.bin")


# --------------------------------------------------------------------------- part 8: reversed layer ranges


@pytest.mark.parametrize("cmd", ["transfer", "ablate"])
def test_reversed_layer_range_is_an_error(m, tmp_path, capfd, cmd):
    out = tmp_path / "o"
    argv = (["transfer", m / "base", m / "donor"] if cmd == "transfer"
            else ["ablate", m / "tuned", "--ablation", "zero"])
    assert_refused(run_cli(capfd, *argv, "--modules", "gate_proj", "--layers", "1-0", "--out", out),
                   out=out, contains="reversed layer range '1-0'")

"""Devices and dtypes: resolution, the one loader's placement, meta-initialised shape paths, bf16 runs.

No GPU here: what a GPU run does differently (loading onto the device,
device_map for big models) is factored into pure functions tested by table,
and the device-agnostic code paths run on ``cpu`` and on ``meta`` models.
"""

from __future__ import annotations

import json

import pytest
import torch

from affectlens.errors import AffectlensError
from affectlens.models.devices import (
    HEADROOM,
    accum_dtype,
    check,
    checkpoint_numel,
    choose_device_map,
    dtype_name,
    ran_on,
    resolve_device,
    resolve_dtype,
)
from affectlens.models.loading import load_model, placement

from conftest import STORIES260K
from faults import assert_refused, run_cli
from tiny import save_tiny, tiny_config

PROMPTS = ["Once upon a time there was a happy girl. She felt", "The dog was sad and",
           "Tom was angry because his toy broke. He was"]
LABELS = ["happy", "sad", "angry", "scared"]


def _absent_devices() -> list[str]:
    """Device specs that do not exist on this machine (whatever it is)."""
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    out = [f"cuda:{n}"]  # one past the last GPU: absent everywhere
    if n == 0:
        out.append("cuda")
    if not torch.backends.mps.is_available():
        out.append("mps")
    return out


# ----------------------------------------------------------------------------- resolution


def test_auto_device_is_the_best_present():
    want = ("cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu")
    assert resolve_device("auto").type == want
    assert resolve_device(None).type == want
    assert resolve_device("CPU") == torch.device("cpu")
    assert resolve_device("meta") == torch.device("meta")


@pytest.mark.parametrize("spec", _absent_devices())
def test_absent_device_is_one_line_error(spec):
    with pytest.raises(AffectlensError) as e:
        resolve_device(spec)
    assert spec in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("spec", ["tpu", "cuda:x", "cuda:-1", "gpu0"])
def test_unknown_device_names_the_choices(spec):
    with pytest.raises(AffectlensError, match="choose auto, cpu, cuda, cuda:N or mps"):
        resolve_device(spec)


def test_dtype_resolution():
    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu) is torch.float32  # CPU: float32 unless asked
    assert resolve_dtype("auto", "meta") is torch.float32
    for spelling, want in [("bf16", torch.bfloat16), ("bfloat16", torch.bfloat16), ("torch.float16", torch.float16),
                           ("fp16", torch.float16), ("half", torch.float16), ("float", torch.float32),
                           ("FP32", torch.float32), (torch.bfloat16, torch.bfloat16)]:
        assert resolve_dtype(spelling, cpu) is want, spelling
    assert dtype_name("bf16") == "bfloat16"
    with pytest.raises(AffectlensError, match="unknown --dtype 'int8'"):
        resolve_dtype("int8", cpu)
    assert check("cpu", "bf16") == (cpu, torch.bfloat16)
    assert accum_dtype("cpu") is torch.float64


def test_cli_refuses_absent_device_before_any_work(capfd, tmp_path):
    """exit 2, one line, nothing written: the device is checked before the model or data are read."""
    spec = _absent_devices()[0]
    out = tmp_path / "run"
    missing_model = tmp_path / "no-such-model"  # never reached
    assert_refused(run_cli(capfd, "evaluate", missing_model, "--out", out, "--device", spec),
                   out=out, contains=f"--device {spec}")
    assert_refused(run_cli(capfd, "circuits", "heads", missing_model, "--out", out, "--device", spec),
                   out=out, contains=f"--device {spec}")
    assert_refused(run_cli(capfd, "circuits", "vectors", missing_model, "--out", out, "--dtype", "int8"),
                   out=out, contains="unknown --dtype 'int8'")


# ----------------------------------------------------------------------------- device_map decision


@pytest.mark.parametrize("requested, device, model_gb, free_gb, want", [
    ("auto", "cpu", None, None, "auto"),  # asked for: kept, on any device
    ("auto", "cuda", 1, 80, "auto"),
    (None, "cpu", 1000, 1, None),  # CPU RAM is the limit either way: never by itself
    (None, "mps", 1000, 1, None),
    (None, "cuda", 16, 80, None),  # Qwen2.5-7B bf16 on an 80 GB GPU: one device
    (None, "cuda", 65, 80, None),  # Qwen2.5-32B bf16 (65 GB) fits under 0.85 x 80 = 68
    (None, "cuda", 68, 80, None),  # exactly at the headroom: still one device
    (None, "cuda", 69, 80, "auto"),  # above it: spread over the GPUs
    (None, "cuda", 16, 15, "auto"),  # 7B bf16 on a 16 GB card with 15 GB free
    (None, "cuda", None, 80, None),  # size unknown (GGUF, pickle): do not guess
    (None, "cuda", 16, None, None),
])
def test_choose_device_map(requested, device, model_gb, free_gb, want):
    gb = 10**9
    assert HEADROOM == 0.85
    got = choose_device_map(requested, device, model_gb * gb if model_gb is not None else None,
                            free_gb * gb if free_gb is not None else None)
    assert got == want


def test_choose_device_map_refuses_unknown_maps():
    with pytest.raises(AffectlensError, match="unknown device_map 'balanced'"):
        choose_device_map("balanced", "cuda", 1, 1)


def test_checkpoint_numel_reads_headers_only(tmp_path):
    from safetensors.torch import load_file

    want = sum(t.numel() for t in load_file(str(STORIES260K / "model.safetensors")).values())
    assert checkpoint_numel(STORIES260K) == want
    model = save_tiny(tmp_path / "sharded", max_shard_size="60KB")
    assert len(list((tmp_path / "sharded").glob("*.safetensors"))) > 1
    assert checkpoint_numel(tmp_path / "sharded") == sum(t.numel() for t in model.state_dict().values())
    assert checkpoint_numel(tmp_path) is None  # no weights there


def test_placement_kwargs_on_cpu_and_refuses_meta():
    dev, td, kw = placement(STORIES260K, "cpu", "bf16")
    assert (dev, td, kw) == (torch.device("cpu"), torch.bfloat16, {"dtype": torch.bfloat16})
    assert placement(STORIES260K, "cpu", "auto", "auto")[2] == {"dtype": torch.float32, "device_map": "auto"}
    with pytest.raises(AffectlensError, match="meta holds no weights"):
        placement(STORIES260K, "meta")


# ----------------------------------------------------------------------------- the loader on cpu


@pytest.fixture(scope="module")
def fp32():
    return load_model(STORIES260K, dtype="float32", device="cpu")


@pytest.fixture(scope="module")
def bf16():
    return load_model(STORIES260K, dtype="bfloat16", device="cpu")


def test_load_model_bf16_on_cpu(fp32, bf16):
    model, _ = bf16
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert ran_on(model) == {"devices": ["cpu"], "dtypes": ["bfloat16"]}
    # the weights are the float32 checkpoint rounded to bf16, not re-initialised ones
    for (n32, p32), (n16, p16) in zip(fp32[0].named_parameters(), model.named_parameters(), strict=True):
        assert n32 == n16
        assert torch.equal(p32.detach().to(torch.bfloat16), p16.detach())


def test_device_map_auto_loads_through_accelerate(fp32, monkeypatch):
    """The big-model path (accelerate's device-map planning) runs here too, with the same numbers.

    With one device the plan is {"": device} and transformers skips the dispatch
    hooks; spreading over several GPUs is what only a GPU node can show.
    """
    import transformers.modeling_utils as mu

    plans = []
    real = mu._get_device_map

    def spy(*args, **kwargs):
        plans.append(real(*args, **kwargs))
        return plans[-1]

    monkeypatch.setattr(mu, "_get_device_map", spy)
    model, tok = load_model(STORIES260K, dtype="float32", device="cpu", device_map="auto")
    want_map = {"": 0} if torch.cuda.is_available() else {"": "cpu"}
    assert plans == [want_map]
    ids = tok(PROMPTS[0], return_tensors="pt")
    with torch.no_grad():
        got = model(**ids.to(model.device)).logits.cpu()
        want = fp32[0](**ids).logits
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5 if model.device.type == "cpu" else 1e-3)


# ----------------------------------------------------------------------------- bf16 numerics
# Tolerances: bf16 keeps 8 significant bits (spacing 2^-8 ≈ 0.4 % relative). The
# model has 5 blocks, each rounding its weights and a few activations, so errors
# compound to a few percent at most: we allow 3 % relative (≈ 8 roundings
# adding up linearly, the worst case) and measured ≈ 0.7-1 %.


def test_scoring_in_bf16_is_close_to_float32(fp32, bf16):
    from affectlens.evaluate.perplexity import perplexity
    from affectlens.evaluate.scorer import score_labels

    a = score_labels(fp32[0], fp32[1], PROMPTS, LABELS, batch_size=2, progress=False)
    b = score_labels(bf16[0], bf16[1], PROMPTS, LABELS, batch_size=2, progress=False)
    assert torch.isfinite(b).all()
    assert not torch.equal(a, b)  # bf16 really ran
    assert ((a - b).abs() <= 0.03 * a.abs() + 0.01).all(), (a - b).abs().max()
    p32 = perplexity(fp32[0], fp32[1], PROMPTS, progress=False)["perplexity"]
    p16 = perplexity(bf16[0], bf16[1], PROMPTS, progress=False)["perplexity"]
    assert p16 != p32 and abs(p16 - p32) <= 0.03 * p32


def test_steering_hook_in_bf16_is_close_to_float32(fp32, bf16):
    from affectlens.circuits.hooks import add_steering, capture, hooks

    ids = fp32[1](PROMPTS[0], return_tensors="pt")
    v = torch.randn(64, generator=torch.Generator().manual_seed(0)) * 2  # a float32 vector on the CPU

    def last_resid(model, steer: bool) -> torch.Tensor:
        with hooks(model) as h, torch.no_grad():
            if steer:
                add_steering(h, None, 1, v, "all")
            cap = capture(h, [4])
            model(**ids)
        return cap.resid[4]

    r32, s32 = last_resid(fp32[0], False), last_resid(fp32[0], True)
    r16, s16 = last_resid(bf16[0], False), last_resid(bf16[0], True)
    assert s16.dtype is torch.bfloat16 and torch.isfinite(s16).all()
    effect32, effect16 = s32 - r32, s16.float() - r16.float()
    assert effect32.norm() > 1.0  # the vector moves the residual: there is an effect to compare
    assert (effect16 - effect32).norm() <= 0.03 * effect32.norm()
    assert (s16.float() - s32).norm() <= 0.03 * s32.norm()


def test_evaluate_cli_runs_in_bf16_and_records_it(capfd, tmp_path):
    out = tmp_path / "ev"
    rc, _o, err = run_cli(capfd, "evaluate", STORIES260K, "--out", out, "--limit", "3", "--bootstrap", "0",
                          "--device", "cpu", "--dtype", "bf16")
    assert rc == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["options"]["device"] == "cpu" and manifest["options"]["dtype"] == "bf16"
    assert manifest["ran_on"] == {"devices": ["cpu"], "dtypes": ["bfloat16"]}


# ----------------------------------------------------------------------------- meta-initialised models


@pytest.fixture(params=["llama", "qwen2"])
def meta_model(request):
    from transformers import AutoModelForCausalLM

    cfg = tiny_config(request.param)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    assert {p.device.type for p in model.parameters()} == {"meta"}  # no weights anywhere
    return model.eval()


def test_parameter_count_from_config_matches_meta_model(meta_model):
    from affectlens.params import Geometry

    assert ran_on(meta_model)["devices"] == ["meta"]
    want = sum(p.numel() for p in meta_model.parameters())
    assert Geometry.from_config(meta_model.config.to_dict()).model_params() == want


def test_module_matching_and_lora_targets_on_meta(meta_model):
    from affectlens.tune.training import lora_targets, wrap_lora
    from affectlens.tuneconfig import TuneConfig

    cfg = meta_model.config
    paths, _report = lora_targets(meta_model, "gate_proj,o_proj")
    assert sorted(paths) == sorted([f"model.layers.{i}.mlp.gate_proj" for i in range(cfg.num_hidden_layers)]
                                   + [f"model.layers.{i}.self_attn.o_proj" for i in range(cfg.num_hidden_layers)])
    rank = 4
    peft_model, targets = wrap_lora(meta_model, paths, TuneConfig(rank=rank))
    assert targets == ["o_proj", "gate_proj"]
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    hd = cfg.hidden_size
    per_layer = rank * (hd + hd) + rank * (hd + cfg.intermediate_size)  # o_proj d->d, gate_proj d->ffn
    assert trainable == cfg.num_hidden_layers * per_layer


def test_hooks_register_and_shape_on_meta(meta_model):
    from affectlens.circuits.hooks import (
        add_steering,
        capture,
        decoder_layers,
        head_geometry,
        head_outputs,
        hooks,
        o_proj,
        patch_o_input,
        scale_neurons,
        to_model,
    )

    cfg = meta_model.config
    n, _kv, hd = head_geometry(meta_model)
    inputs = to_model({"input_ids": torch.zeros(2, 5, dtype=torch.long)}, meta_model)
    assert inputs["input_ids"].device.type == "meta" and inputs["input_ids"].dtype is torch.long
    with hooks(meta_model) as h, torch.no_grad():
        add_steering(h, None, 0, torch.ones(cfg.hidden_size), "all")  # a CPU vector onto a meta model
        scale_neurons(h, 1, [0, 3], 2.0)
        patch_o_input(h, 1, [0], torch.zeros(2, 5, n * hd), torch.ones(2, 5, dtype=torch.bool))
        cap = capture(h, [0, 1], o_in=True, down_in=True, to=None)
        out = meta_model(**inputs)
        assert len(h.handles) > 0
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in meta_model.modules())  # all removed
    assert out.logits.shape == (2, 5, cfg.vocab_size) and out.logits.device.type == "meta"
    assert cap.resid[1].shape == (2, 5, cfg.hidden_size) and cap.resid[1].device.type == "meta"
    assert cap.o_in[0].shape == (2, 5, n * hd)
    assert cap.down_in[1].shape == (2, 5, cfg.intermediate_size)
    w = o_proj(decoder_layers(meta_model)[0]).weight
    assert head_outputs(cap.o_in[0], w, n).shape == (2, 5, n, cfg.hidden_size)


def test_head_attribution_in_bf16_recovers_the_planted_heads():
    """Forward, backward and patching in bf16 (sums in float64): the planted heads are found,
    and their scores are those of float32 within the bf16 budget above."""
    from affectlens.circuits.attribution import make_metric
    from affectlens.circuits.heads import exact_patch, head_attribution, top_heads
    from affectlens.circuits.pairs import Pair, encoder_for
    from affectlens.circuits.vectors import compute_vectors

    from circuits_helpers import PAIRS, PLANT_LAYER, planted_model

    pairs = [Pair(e, n, lab) for e, n, lab in PAIRS][::2]  # 2 pairs per emotion: enough, and fast
    model, tok, _v = planted_model()
    enc = encoder_for(tok, pairs)
    sv = compute_vectors(model, enc, pairs, min_score=0)
    r32 = head_attribution(model, enc, pairs, sv, target_layer=PLANT_LAYER)
    model = model.to(torch.bfloat16)
    r16 = head_attribution(model, enc, pairs, sv, target_layer=PLANT_LAYER)
    assert top_heads(r16, k=1) == {"anger": {(PLANT_LAYER, 0)}, "joy": {(PLANT_LAYER, 2)}}
    s32 = torch.tensor([r["score"] for r in r32.rows])
    s16 = torch.tensor([r["score"] for r in r16.rows])
    assert torch.isfinite(s16).all() and not torch.equal(s16, s32)
    assert (s16 - s32).abs().max() <= 0.03 * s32.abs().max()
    met = make_metric("proj", sv, "anger", PLANT_LAYER, enc)
    assert exact_patch(model, enc, pairs[0], met, PLANT_LAYER, [0], "heads") < -0.1  # patched on the device

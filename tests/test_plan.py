"""The planner: exact counts against transformers, memory against a measured CPU run,
and the published figures for Qwen2.5-7B."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from affectlens.plan import plan

from conftest import ROOT, STORIES260K, TINYSTORIES
from faults import assert_refused, run_cli
from test_params import QWEN25_7B
from tiny import tiny_config


def _meta_count(cfg) -> int:
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    return sum(p.numel() for p in model.parameters())  # tied weights counted once


@pytest.mark.parametrize("source", ["tinystories", "stories260k", "qwen2", "gemma"])
def test_weights_match_a_meta_model(source):
    from transformers import AutoConfig

    if source in ("tinystories", "stories260k"):
        cfg = AutoConfig.from_pretrained(TINYSTORIES if source == "tinystories" else STORIES260K)
    else:
        cfg = tiny_config(source, hidden=64, ffn=96, heads=4, kv_heads=2, vocab=256)
    p = plan(cfg.to_dict(), task="evaluate", dtype="bf16")
    assert p.params == _meta_count(cfg)
    assert p.parts_gb["weights"] * 1024**3 == pytest.approx(2 * p.params)


MEASURE = textwrap.dedent("""
    import json, sys, torch
    torch.set_num_threads(1)
    from transformers import LlamaConfig, LlamaForCausalLM
    from peft import LoraConfig, get_peft_model
    h, f, L, V, B, S, ckpt = (int(x) for x in sys.argv[1:8])
    def status(key):
        return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key))
    cfg = LlamaConfig(hidden_size=h, intermediate_size=f, num_hidden_layers=L, num_attention_heads=h // 64,
                      num_key_value_heads=h // 128, vocab_size=V, max_position_embeddings=S,
                      tie_word_embeddings=False)
    x = torch.randint(0, V, (B, S))
    base = status("VmRSS")
    open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM)
    m = get_peft_model(LlamaForCausalLM(cfg), LoraConfig(r=16, target_modules="all-linear"))
    if ckpt:
        m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        m.enable_input_require_grads()
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-3)
    m.train()
    for _ in range(2):
        m(input_ids=x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad()
    print(json.dumps({"peak": status("VmHWM") - base, "config": cfg.to_dict()}))
""")


@pytest.mark.parametrize("ckpt", [0, 1])
def test_tune_memory_within_20_percent_of_a_measured_cpu_run(tmp_path, ckpt):
    """A LoRA training step of a ~13M-parameter Llama, peak RSS measured in a fresh process.

    glibc's adaptive mmap threshold keeps freed blocks resident, so the peak RSS
    would count memory the program no longer uses; a fixed threshold makes RSS
    follow live allocations, as a GPU allocator's peak does.
    """
    script = tmp_path / "measure.py"
    script.write_text(MEASURE)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT / "src"), "TRANSFORMERS_VERBOSITY": "error"}
    h, f, L, V, B, S = 256, 1024, 8, 8192, 8, 256
    out = subprocess.run([sys.executable, str(script), *map(str, (h, f, L, V, B, S, ckpt))], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    meas = json.loads(out.stdout.strip().splitlines()[-1])
    p = plan(meas["config"], task="tune", modules="all", rank=16, batch_size=B, seq_len=S, dtype="fp32",
             gradient_checkpointing=bool(ckpt))
    measured_gib = meas["peak"] / 1024**3
    assert 0.8 <= p.total_gb / measured_gib <= 1.2, (p.total_gb, measured_gib, p.parts_gb)


def test_qwen25_7b_against_published_figures():
    """Qwen2.5-7B: 7.62 B parameters; AffectGPT's r=16 all-module LoRA = 40,370,176 trainable;
    LLaMA-Factory's hardware table gives ~16 GB for 16-bit LoRA and ~120 GB for mixed-precision
    full fine-tuning of a 7B model."""
    lora = plan(QWEN25_7B, task="tune", modules="all", rank=16, batch_size=1, seq_len=512,
                gradient_checkpointing=True, gpu="A10-24GB")
    assert lora.params == 7_615_616_512 and lora.trainable == 40_370_176
    assert lora.fits and lora.smallest_setup.startswith("1 GPU")
    assert 0.8 * 16 <= lora.total_gb * 1.073741824 - 1.0 <= 1.2 * 16  # GB, without the runtime overhead
    full = plan(QWEN25_7B, task="tune", method="full", batch_size=1, seq_len=512, gradient_checkpointing=True,
                gpu="H100-80GB")
    assert not full.fits and "FSDP over 2" in full.smallest_setup
    assert 0.8 * 120 <= full.total_gb * 1.073741824 - 1.0 <= 1.2 * 120
    assert plan(QWEN25_7B, task="tune", method="full", gpu_mem_gb=80, gpus=2,
                gradient_checkpointing=True, batch_size=1, seq_len=512).fits
    gen = plan(QWEN25_7B, task="evaluate", batch_size=16, seq_len=256, max_new_tokens=64, gpu="A10-24GB")
    # KV cache: 2 x 28 layers x 512 (4 KV heads x 128) x 16 x 320 tokens x 2 bytes
    assert gen.parts_gb["KV cache"] * 1024**3 == 2 * 28 * 512 * 16 * 320 * 2


def test_full_fine_tune_budgets_the_selected_modules_only():
    """``tune --method full`` trains the selected modules: Qwen2.5-7B's gate_proj is 28 x 18944 x 3584
    weights, each with a float32 master copy (2 bytes over bf16), gradient and two moments (4+4+4)."""
    t = 28 * 18944 * 3584
    p = plan(QWEN25_7B, task="tune", method="full", modules="gate_proj", batch_size=1, seq_len=512)
    assert p.trainable == t
    assert p.parts_gb["trained modules in fp32 + grads + AdamW"] * 1024**3 == pytest.approx(14 * t)
    assert p.parts_gb["weights"] * 1024**3 == pytest.approx(2 * 7_615_616_512)
    lora = plan(QWEN25_7B, task="tune", method="lora", modules="gate_proj", batch_size=1, seq_len=512)
    # one more forward's worth over the trained share of the weights, for their gradients
    fwd = lora.flops_per_step / 2
    assert p.flops_per_step == pytest.approx(fwd * (2 + t / 7_615_616_512))


def test_cli_json_and_bad_input(tmp_path, capfd):
    rc, out, err = run_cli(capfd, "plan", TINYSTORIES, "--command", "tune", "--gpu-mem", "8", "--json")
    assert rc == 0, err
    obj = json.loads(out)
    assert obj["fits"] is True and obj["total_gb"] > 0 and obj["params"] == _meta_count_dir(TINYSTORIES)
    assert_refused(run_cli(capfd, "plan", TINYSTORIES, "--gpu", "Z9000"), contains="unknown GPU")
    assert_refused(run_cli(capfd, "plan", TINYSTORIES, "--batch-size", "0"), contains="--batch-size must be positive")
    assert_refused(run_cli(capfd, "plan", tmp_path / "nope"), contains="nope")


def test_tune_and_plan_share_tuneconfigs_max_length_and_rank(capfd):
    """One --max-length default (TuneConfig's) in tune and plan; plan's estimate is of that run."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from affectlens.cli import build_parser
    from affectlens.modules import MODULES
    from affectlens.tuneconfig import TuneConfig

    d = TuneConfig()
    parser = build_parser()
    tune_args = parser.parse_args(["tune", "m", "--data", "d", "--modules", "all", "--out", "o"])
    plan_args = parser.parse_args(["plan", "m"])
    assert tune_args.max_length == plan_args.max_length == d.max_length
    assert tune_args.rank == plan_args.rank == d.rank
    rc, out, err = run_cli(capfd, "plan", TINYSTORIES, "--json")
    assert rc == 0, err
    obj = json.loads(out)
    assert (obj["seq_len"], obj["batch_size"]) == (d.max_length, d.batch_size)
    with torch.device("meta"):  # LoRA of tune's default rank on every projection, counted from the shapes
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(TINYSTORIES))
    lora = sum(d.rank * (m.in_features + m.out_features) for n, m in model.named_modules()
               if n.rsplit(".", 1)[-1] in MODULES)
    assert obj["trainable"] == lora
    assert plan(TINYSTORIES).to_dict() == obj  # the library's defaults are the CLI's


def _meta_count_dir(path) -> int:
    from transformers import AutoConfig

    return _meta_count(AutoConfig.from_pretrained(path))

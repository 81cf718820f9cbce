"""Training precision and threads: fp32 is the plain PEFT loop, bf16 autocast stays close to it,
``auto`` picks bf16 only on native-bf16 hardware, and tune leaves its caller's process as it was."""

from __future__ import annotations

import json

import pytest
import torch

from affectlens.errors import AffectlensError
from affectlens.models.loading import load_model
from affectlens.tune.precision import cpu_has_native_bf16, resolve_precision
from affectlens.tune.run import encode, load_dataset, tune
from affectlens.tune.training import training_attention
from affectlens.tuneconfig import TuneConfig

from conftest import TINYSTORIES

STEPS = 8


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    rows = [{"text": f"I feel great {i}", "label": "joy"} for i in range(8)]
    rows += [{"text": f"I feel awful today {i}", "label": "sadness"} for i in range(8)]
    path = tmp_path_factory.mktemp("precision") / "easy.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


CFG = TuneConfig(modules="all", steps=STEPS, lr=5e-3, batch_size=4, dropout=0.0, seed=3, warmup=0.25)


def plain_peft_losses(data, cfg: TuneConfig) -> list[float]:
    """The oracle: a textbook PEFT loop (right padding, HF ``labels=`` loss over all logits, SDPA
    attention, fp32) on the same examples in the same seeded order, written without affectlens'
    training code."""
    from peft import LoraConfig, get_peft_model
    from transformers import get_linear_schedule_with_warmup

    model, tok = load_model(TINYSTORIES)
    ids, n_prompts, _ = encode(tok, load_dataset(data), cfg.max_length)
    torch.manual_seed(cfg.seed)
    model = get_peft_model(model, LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                                             target_modules="all-linear", task_type="CAUSAL_LM"))
    params = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    sched = get_linear_schedule_with_warmup(optim, int(cfg.warmup * cfg.steps), cfg.steps)
    gen = torch.Generator().manual_seed(cfg.seed)
    order: list[int] = []
    losses = []
    model.train()
    for _ in range(cfg.steps):
        batch = []
        while len(batch) < cfg.batch_size:
            order = order or torch.randperm(len(ids), generator=gen).tolist()
            batch.append(order.pop(0))
        width = max(len(ids[i]) for i in batch)
        x = torch.zeros((len(batch), width), dtype=torch.long)
        mask = torch.zeros_like(x)
        labels = torch.full_like(x, -100)
        for row, i in enumerate(batch):
            x[row, : len(ids[i])] = torch.tensor(ids[i])
            mask[row, : len(ids[i])] = 1
            labels[row, n_prompts[i] : len(ids[i])] = x[row, n_prompts[i] : len(ids[i])]
        loss = model(input_ids=x, attention_mask=mask, labels=labels).loss
        optim.zero_grad()
        loss.backward()
        optim.step()
        sched.step()
        losses.append(float(loss.detach()))
    return losses


def test_fp32_is_the_plain_peft_loop(data):
    """fp32 stays exact up to float rounding: padding side, the last-positions-only LM head and
    eager-vs-SDPA attention reorder sums only (measured: 1.4e-7 relative after 8 steps; allowed 1e-5)."""
    ours = tune(str(TINYSTORIES), data, config=CFG.replace(precision="fp32"), verbose=False)
    assert ours.info["precision"] == "fp32" and ours.options["precision"] == "fp32"
    ref = plain_peft_losses(data, CFG)
    assert ours.loss_curve[-1] < 0.7 * ours.loss_curve[0]  # it trained, so the comparison means something
    torch.testing.assert_close(torch.tensor(ours.loss_curve), torch.tensor(ref), rtol=1e-5, atol=1e-6)


def test_bf16_autocast_tracks_fp32(data, tmp_path):
    """bf16 rounds matmul inputs to 8 mantissa bits (relative error 2^-9 ~ 0.2 % per operand),
    accumulating in fp32; through a few layers the loss moves by well under 1 %, and AdamW's
    normalised steps keep the trajectories together. Allowed: 3 % of the loss + 0.02 per step
    (measured here: at most 0.95 %, 0.07 absolute at a loss of 7.4)."""
    fp32 = tune(str(TINYSTORIES), data, config=CFG.replace(precision="fp32"), verbose=False).loss_curve
    res = tune(str(TINYSTORIES), data, config=CFG.replace(precision="bf16"), out=tmp_path / "a", verbose=False)
    bf16 = res.loss_curve
    assert res.info["precision"] == "bf16"
    assert bf16 != fp32  # autocast really ran
    for step, (a, b) in enumerate(zip(bf16, fp32, strict=True)):
        assert abs(a - b) <= 0.03 * b + 0.02, (step, bf16, fp32)
    # Recorded in affectlens_tune.json and in the manifest's options (requested and used).
    info = json.loads((tmp_path / "a" / "affectlens_tune.json").read_text())
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert info["precision"] == "bf16" and info["options"]["precision"] == "bf16"
    assert manifest["options"]["precision"] == "bf16" and manifest["options"]["precision_used"] == "bf16"
    # The adapter itself is fp32 (only the forward pass was autocast).
    assert all(p.dtype == torch.float32 for n, p in res.model.named_parameters() if "lora_" in n)


def test_auto_picks_bf16_only_where_native():
    x86 = frozenset({"sse2", "avx2", "avx512f"})
    assert not cpu_has_native_bf16(x86, "x86_64")
    assert cpu_has_native_bf16(x86 | {"avx512_bf16"}, "x86_64") and cpu_has_native_bf16(x86 | {"amx_bf16"}, "x86_64")
    assert cpu_has_native_bf16(frozenset({"fp", "asimd", "bf16"}), "aarch64")
    assert not cpu_has_native_bf16(frozenset({"fp", "asimd"}), "arm64")
    assert not cpu_has_native_bf16(frozenset(), "x86_64")  # no /proc/cpuinfo: fp32
    assert resolve_precision("auto") == ("bf16" if cpu_has_native_bf16() else "fp32")
    assert resolve_precision("fp32") == "fp32" and resolve_precision("bf16") == "bf16"
    assert resolve_precision("auto", "mps") == "fp32"
    assert TuneConfig().precision == "auto"
    with pytest.raises(AffectlensError, match="precision must be one of auto, fp32, bf16"):
        TuneConfig(precision="fp16")
    with pytest.raises(AffectlensError, match="budget: precision"):
        TuneConfig.from_mapping({"precision": "half"})


def test_tune_restores_threads_and_attention(data, monkeypatch):
    model, tok = load_model(TINYSTORIES)
    before = model.config._attn_implementation
    start = torch.get_num_threads()  # the fixture's count, whatever AFFECTLENS_TEST_THREADS says
    other = 1 if start != 1 else 2  # a count tune must set and then undo
    res = tune(model, data, config=CFG.replace(steps=1, precision="fp32"), tokenizer=tok, verbose=False,
               threads=other)
    assert res.info["threads"] == other and torch.get_num_threads() == start  # the fixture's count is back
    assert res.info["attention"] == "eager" and model.config._attn_implementation == before
    monkeypatch.setenv("AFFECTLENS_THREADS", str(other))  # the policy: the user's explicit choice wins
    res = tune(res.model.unload(), data, config=CFG.replace(steps=1), tokenizer=tok, verbose=False)
    assert res.info["threads"] == other and torch.get_num_threads() == start
    with pytest.raises(AffectlensError, match="threads must be"):
        tune(res.model.unload(), data, config=CFG.replace(steps=1), tokenizer=tok, verbose=False, threads=0)
    assert torch.get_num_threads() == start


def test_long_examples_keep_the_models_attention():
    model, _ = load_model(TINYSTORIES)
    with training_attention(model, "cpu", 4096) as used:
        assert used == model.config._attn_implementation == "sdpa"
    with training_attention(model, "cuda", 128) as used:
        assert used == "sdpa"

"""Shared-prompt-prefix scoring (``score_items(share_prefix=True)``) equals whole-prompt scoring.

The prefix all prompts share is run once and its KV cache reused; the maths is
the same computation (same keys, same positions, pads masked), so the two paths
may differ only by float rounding. Bounds used here:

* float64: ``|shared - unshared| <= 1e-9 * max(1, |loglik|)``. A log-likelihood
  here is a sum of a few log-softmax values of a 2-8 layer model; each path's
  rounding error is a few hundred ulps of eps64 = 2.2e-16 (~1e-13 relative), so
  1e-9 leaves four orders of margin and still catches any real mismatch (a
  wrong position or an attended pad moves a score by >= 1e-3).
* float32: ``<= 2e-5 * max(1, |loglik|)`` (~170 ulps of eps32 = 1.2e-7).
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from affectlens.evaluate.scorer import (
    MIN_SHARED_PREFIX,
    padding_id,
    score_items,
    score_labels,
    shared_prefix_length,
    tokenize_pairs,
)
from affectlens.tasks.prompts import render

from conftest import TINYSTORIES

CHAT_TEMPLATE = ("{% for m in messages %}<|start_story|>{{ m['role'] }}\n{{ m['content'] }}\n"
                 "{% endfor %}{% if add_generation_prompt %}assistant\n{% endif %}")
TEXTS = [
    "Tom was so happy",
    "She",
    "The dog barked at the big scary cat in the dark garden and ran away very fast.",
    "A bird sang.",
    "Lily found a shiny stone. She smiled and showed it to her mom, who hugged her.",
    "The boy cried because his toy broke.",
    "Max and Sue went to the park to play on the swings all day long until the sun set.",
    "The old man looked at the sky.",
    "It rained.",
    "Ben lost his hat in the wind and his sister ran after it down the hill.",
    "Mom baked a cake.",
]
SINGLE = ["cat", "dog", "sun", "mom", "big", "red", "toy", "sad", "boy", "car", "sky"]
MULTI = ["very happy", "very sad", "very angry indeed", "not sure", "fear"]
F64, F32 = 1e-9, 2e-5


@pytest.fixture(scope="module")
def tok():
    chat = copy.deepcopy(AutoTokenizer.from_pretrained(str(TINYSTORIES)))
    chat.chat_template = CHAT_TEMPLATE
    return chat


@pytest.fixture(scope="module")
def plain():
    return AutoTokenizer.from_pretrained(str(TINYSTORIES))


@pytest.fixture(scope="module")
def model64():
    return AutoModelForCausalLM.from_pretrained(str(TINYSTORIES)).eval().double()


def _prompts(tok, labels, texts=TEXTS) -> list[str]:
    return [render(tok, t, "emotion", labels) for t in texts]


def _single_labels(tok) -> list[str]:
    """Labels that are one token after the delimiter and the tokens all labels share."""
    items = tokenize_pairs(tok, _prompts(tok, SINGLE[:3]), SINGLE)
    return [lab for lab, rest in zip(SINGLE, items[0].rests, strict=True) if len(rest) == 1]


class Tokens:
    """Counts forward calls and the input ids passed through a model."""

    def __init__(self, model):
        self.calls, self.tokens = 0, 0
        self.handle = model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, _m, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.calls += 1
        self.tokens += ids.numel()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def _both(model, tok, prompts, labels, batch_size):
    with Tokens(model) as shared_n:
        shared = score_labels(model, tok, prompts, labels, batch_size=batch_size, share_prefix=True)
    with Tokens(model) as whole_n:
        whole = score_labels(model, tok, prompts, labels, batch_size=batch_size, share_prefix=False)
    return shared, whole, shared_n, whole_n


def _assert_within(shared, whole, rel):
    assert shared.shape == whole.shape and shared.dtype == torch.float64
    assert bool(torch.isfinite(whole).all())
    bound = rel * whole.abs().clamp(min=1.0)
    worst = float(((shared - whole).abs() / bound).max())
    assert worst <= 1.0, f"shared-prefix scores off by {worst:.3g} x the bound"


def test_chat_prompts_share_a_long_prefix(tok):
    items = tokenize_pairs(tok, _prompts(tok, MULTI), MULTI)
    P = shared_prefix_length(items)
    assert P >= MIN_SHARED_PREFIX
    assert min(len(it.prompt) for it in items) > P  # every prompt keeps its own tokens
    assert len({len(it.prompt) for it in items}) > 3  # prompts of different lengths
    assert all(it.prompt[:P] == items[0].prompt[:P] for it in items)


@pytest.mark.parametrize("labels,batch_size", [("single", 4), ("single", 16), ("multi", 4), ("multi", 3),
                                               ("multi", 1)])
def test_float64_shared_equals_whole_prompt(model64, tok, labels, batch_size):
    labs = _single_labels(tok) if labels == "single" else MULTI
    if labels == "single":
        assert len(labs) >= 4
    else:  # the continuation path (_continue) is exercised
        items = tokenize_pairs(tok, _prompts(tok, labs), labs)
        assert any(len(r) > 1 for r in items[0].rests)
    prompts = _prompts(tok, labs)
    shared, whole, sn, wn = _both(model64, tok, prompts, labs, batch_size)
    assert sn.tokens < wn.tokens  # the shared path really ran
    _assert_within(shared, whole, F64)
    assert torch.equal(shared.argmax(-1), whole.argmax(-1))


def test_float32_within_float32_rounding(tok):
    model = AutoModelForCausalLM.from_pretrained(str(TINYSTORIES)).eval().float()
    prompts = _prompts(tok, MULTI)
    shared, whole, sn, wn = _both(model, tok, prompts, MULTI, 4)
    assert sn.tokens < wn.tokens
    _assert_within(shared, whole, F32)


def test_no_common_prefix_falls_back(model64, plain):
    # plain prompts: only BOS in common -> the whole-prompt path, bit for bit, same token count
    prompts = [f"{t}\nEmotion:" for t in TEXTS]
    items = tokenize_pairs(plain, prompts, MULTI)
    assert shared_prefix_length(items) < MIN_SHARED_PREFIX
    shared, whole, sn, wn = _both(model64, plain, prompts, MULTI, 4)
    assert (sn.calls, sn.tokens) == (wn.calls, wn.tokens)
    assert torch.equal(shared, whole)


def test_prefix_runs_once(model64, tok):
    labs = _single_labels(tok)
    prompts = _prompts(tok, labs)
    items = tokenize_pairs(tok, prompts, labs)
    P, n, bs = shared_prefix_length(items), len(items), 4
    pad = padding_id(tok)
    with Tokens(model64) as sn:
        shared = score_items(model64, items, len(labs), pad, bs, share_prefix=True)
    with Tokens(model64) as wn:
        whole = score_items(model64, items, len(labs), pad, bs, share_prefix=False)
    batches = -(-n // bs)
    assert wn.calls == batches and sn.calls == batches + 1  # one extra forward: the prefix, once
    # suffix batches are the whole batches less P columns; the prefix adds P once
    assert wn.tokens - sn.tokens == (n - 1) * P
    _assert_within(shared, whole, F64)


def test_peft_lora_shared_equals_whole(tok):
    from peft import LoraConfig, get_peft_model

    from affectlens.models.hfcompat import quiet_peft

    base = AutoModelForCausalLM.from_pretrained(str(TINYSTORIES)).eval().double()
    torch.manual_seed(0)
    with quiet_peft():
        model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                init_lora_weights=False)).eval()
    prompts = _prompts(tok, MULTI)
    shared, whole, sn, wn = _both(model, tok, prompts, MULTI, 4)
    assert sn.tokens < wn.tokens
    _assert_within(shared, whole, F64)
    # the adapter is live: scores differ from the base model's
    with model.disable_adapter():
        plain_scores = score_labels(model, tok, prompts, MULTI, batch_size=4)
    assert float((plain_scores - whole).abs().max()) > 1e-3


def test_vlm_window_and_circuits_keep_the_whole_prompt_path(tok):
    from affectlens.circuits.pairs import label_logprobs

    model = AutoModelForCausalLM.from_pretrained(str(TINYSTORIES)).eval()
    prompts = _prompts(tok, MULTI)
    with Tokens(model) as whole:
        score_labels(model, tok, prompts, MULTI, batch_size=4, share_prefix=False)
    with Tokens(model) as circ:  # scored under steering hooks: never shares
        label_logprobs(model, tok, prompts, MULTI, batch_size=4)
    assert circ.tokens == whole.tokens
    with Tokens(model) as shared:
        score_labels(model, tok, prompts, MULTI, batch_size=4)
    assert shared.tokens < whole.tokens
    model.config.sliding_window = 16  # a window shorter than the prompts: pads inside would shift it
    with Tokens(model) as windowed:
        score_labels(model, tok, prompts, MULTI, batch_size=4)
    assert windowed.tokens == whole.tokens
    model.config.sliding_window = None
    model.config.vision_config = {"model_type": "fake"}  # a VLM config: its own positions
    with Tokens(model) as vlm:
        score_labels(model, tok, prompts, MULTI, batch_size=4)
    assert vlm.tokens == whole.tokens

"""Closed-set scorer vs a brute-force oracle (one full forward per label, plain transformers)."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from affectlens.evaluate import score_labels

from conftest import TINYSTORIES
from tiny import tiny_model

LABELS = ["anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"]
TEXTS = [
    "Once upon a time there was a little girl who lost her red ball.",
    "Tom was so happy",
    "The dog barked at the big scary cat in the dark garden and ran away very fast.",
    "She",
    "Lily found a shiny stone. She smiled and showed it to her mom, who hugged her.",
    "The boy cried because his toy broke.",
    "A bird sang.",
    "Max and Sue went to the park to play on the swings all day long until the sun set.",
    "The old man looked at the sky.",
]


def _prompts() -> list[str]:
    return [f"Text: {t}\nEmotion:" for t in TEXTS] * 2 + [f"Story: {t}\nFeeling:" for t in TEXTS[:5]]


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(str(TINYSTORIES))


@pytest.fixture(scope="module")
def stories():
    return AutoModelForCausalLM.from_pretrained(str(TINYSTORIES)).eval()


@pytest.fixture(scope="module")
def qwen():
    return tiny_model("qwen2", seed=3, hidden=64, ffn=128, heads=4, kv_heads=2, vocab=2048)


def brute(model, tok, prompts, labels, delim=None) -> torch.Tensor:
    """One full forward per (prompt, label): sum of float64 log-probs of the label tokens."""
    chat = bool(getattr(tok, "chat_template", None))
    out = torch.zeros(len(prompts), len(labels), dtype=torch.float64)
    for i, p in enumerate(prompts):
        d = delim if delim is not None else ("" if p[-1].isspace() else " ")
        p_ids = tok(p, add_special_tokens=not chat).input_ids
        for j, lab in enumerate(labels):
            l_ids = tok(d + lab, add_special_tokens=False).input_ids
            ids = torch.tensor([p_ids + l_ids])
            with torch.no_grad():
                lp = model(ids).logits[0].double().log_softmax(-1)
            out[i, j] = sum(lp[len(p_ids) + k - 1, t] for k, t in enumerate(l_ids))
    return out


class CountForwards:
    def __init__(self, model):
        self.n = 0
        self.handle = model.register_forward_pre_hook(self)

    def __call__(self, *a):
        self.n += 1


@pytest.mark.parametrize("which", ["stories", "qwen"])
def test_matches_brute_force_and_batch_sizes(which, request, tok):
    model = request.getfixturevalue(which)
    prompts = _prompts()
    ref = brute(model, tok, prompts, LABELS)
    results = {bs: score_labels(model, tok, prompts, LABELS, batch_size=bs) for bs in (1, 7, 32)}
    for bs, got in results.items():
        assert got.shape == (len(prompts), len(LABELS))
        torch.testing.assert_close(got, ref, atol=2e-4, rtol=1e-5, msg=f"batch {bs}")
        assert torch.equal(got.argmax(-1), ref.argmax(-1))
    # shuffled order: same scores per example
    perm = list(range(len(prompts)))
    random.Random(0).shuffle(perm)
    shuffled = score_labels(model, tok, [prompts[i] for i in perm], LABELS, batch_size=7)
    torch.testing.assert_close(shuffled, results[7][perm], atol=1e-4, rtol=0)
    assert torch.equal(shuffled.argmax(-1), results[1][perm].argmax(-1))


def test_single_token_fast_path_one_forward_per_batch(stories, tok):
    # this tokenizer spells " cat" as ["▁", "cat"]: a shared first token, then one distinct token
    # per label -> the prompt forward alone scores every label (no continuation forwards)
    cands = ["cat", "dog", "sun", "mom", "big", "run", "red", "toy", "sad", "boy", "car", "sky"]
    labels = [c for c in cands if len(tok(" " + c, add_special_tokens=False).input_ids) == 2]
    assert len(labels) >= 5
    prompts = _prompts()
    counter = CountForwards(stories)
    try:
        got = score_labels(stories, tok, prompts, labels, batch_size=8)
    finally:
        counter.handle.remove()
    assert counter.n == -(-len(prompts) // 8)
    torch.testing.assert_close(got, brute(stories, tok, prompts, labels), atol=2e-4, rtol=1e-5)


def test_shared_prefix_labels(qwen, tok):
    # multi-token labels sharing their first tokens: exercised common-prefix + KV-cache continuation
    labels = ["very happy", "very sad", "very angry indeed", "not sure"]
    prompts = _prompts()[:10]
    counter = CountForwards(qwen)
    try:
        got = score_labels(qwen, tok, prompts, labels, batch_size=4)
    finally:
        counter.handle.remove()
    ref = brute(qwen, tok, prompts, labels)
    torch.testing.assert_close(got, ref, atol=2e-4, rtol=1e-5)
    naive = len(prompts) * len(labels)
    assert counter.n < naive / 2  # prompts are never recomputed per label


def test_chat_template_and_peft(qwen, tok):
    """Prompts ending in a newline (chat style): empty delimiter, no added BOS; PEFT-wrapped model."""
    from peft import LoraConfig, get_peft_model

    chat_tok = AutoTokenizer.from_pretrained(str(TINYSTORIES))
    chat_tok.chat_template = ("{% for m in messages %}<|start_story|>{{ m['role'] }}\n{{ m['content'] }}\n"
                              "{% endfor %}{% if add_generation_prompt %}assistant\n{% endif %}")
    prompts = [chat_tok.apply_chat_template([{"role": "user", "content": t}], tokenize=False,
                                            add_generation_prompt=True) for t in TEXTS]
    peft_model = get_peft_model(tiny_model("qwen2", seed=3, hidden=64, ffn=128, heads=4, kv_heads=2,
                                           vocab=2048),
                                LoraConfig(r=4, lora_alpha=8, target_modules=["gate_proj"],
                                           init_lora_weights=False)).eval()
    ref = brute(peft_model, chat_tok, prompts, LABELS)
    got = score_labels(peft_model, chat_tok, prompts, LABELS, batch_size=3)
    torch.testing.assert_close(got, ref, atol=2e-4, rtol=1e-5)
    # LoRA changes the scores (the wrapped model is really used)
    base = score_labels(qwen, chat_tok, prompts, LABELS, batch_size=3)
    assert (base - got).abs().max() > 1e-3


def test_bfloat16_batch_invariant_and_close_to_fp32(tok):
    model = AutoModelForCausalLM.from_pretrained(str(TINYSTORIES), dtype=torch.bfloat16).eval()
    prompts = _prompts()
    ref = brute(model, tok, prompts, LABELS)  # bf16 brute force
    res = [score_labels(model, tok, prompts, LABELS, batch_size=bs) for bs in (1, 7, 32)]
    for got in res:
        torch.testing.assert_close(got, ref, atol=0.25, rtol=0.01)
        # argmax agrees wherever the brute-force margin is clear of bf16 noise
        top2 = ref.topk(2, dim=-1).values
        clear = (top2[:, 0] - top2[:, 1]) > 0.5
        assert torch.equal(got.argmax(-1)[clear], ref.argmax(-1)[clear])

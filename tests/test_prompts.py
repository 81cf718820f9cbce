"""What the model sees: one renderer, one encoder, one special-token rule.

The central check: for the same example, training (``tune.encode``), closed
scoring and generation (``affectlens.evaluate``) and the circuits study
(pairs encoder, hooks' span tracker) put IDENTICAL token ids in front of the
model, on a plain tokenizer, on chat tokenizers with and without special
tokens in their template, and on the embedded SmolLM2 tokenizer.
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoTokenizer

from affectlens.circuits.pairs import Pair, encoder_for, label_logprobs
from affectlens.circuits.spans import SpanTracker
from affectlens.errors import AffectlensError
from affectlens.evaluate import get_task
from affectlens.evaluate.core import closed_prompt
from affectlens.evaluate.generative import generate_answers, open_prompt
from affectlens.evaluate.scorer import tokenize_pairs
from affectlens.tasks.prompts import (
    adds_special_tokens,
    encode,
    encode_prompts,
    encode_text,
    render,
    target_delimiter,
)
from affectlens.tune.run import encode as tune_encode
from affectlens.tune.run import load_dataset
from affectlens.vocab import EMOTIONS, TaskKind, closed_labels, infer_kind

from conftest import TINYSTORIES
from tiny import tiny_model

# A template that writes no special token at all, and one that starts with the tokenizer's BOS.
BARE_TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</s>{% endfor %}"
                 "{% if add_generation_prompt %}<assistant>{% endif %}")
BOS_TEMPLATE = ("{% for m in messages %}<|start_story|>{{ m['role'] }}\n{{ m['content'] }}\n"
                "{% endfor %}{% if add_generation_prompt %}assistant\n{% endif %}")


@pytest.fixture(scope="module")
def plain():
    return AutoTokenizer.from_pretrained(str(TINYSTORIES))


def _with_template(tok, template):
    chat = copy.deepcopy(tok)
    chat.chat_template = template
    return chat


@pytest.fixture(scope="module")
def smollm2():
    from affectlens.models.loading import load_tokenizer

    return load_tokenizer("smollm2")


@pytest.fixture(scope="module", params=["plain", "bare-chat", "bos-chat", "smollm2"])
def tok(request, plain):
    if request.param == "plain":
        return plain
    if request.param == "bare-chat":
        return _with_template(plain, BARE_TEMPLATE)
    if request.param == "bos-chat":
        return _with_template(plain, BOS_TEMPLATE)
    return request.getfixturevalue("smollm2")


class _Recorder(torch.nn.Module):
    """Stands in for a model: records what ``generate`` is given, answers one pad token."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[list[int]] = []

    def generate(self, input_ids, attention_mask, **_kw):
        for row, m in zip(input_ids, attention_mask, strict=True):
            self.seen.append(row[m.bool()].tolist())
        return torch.cat([input_ids, torch.zeros(len(input_ids), 1, dtype=torch.long)], 1)


def _prefill_rows(model):
    """A pre-hook recording the unpadded rows of every prefill call (no KV cache yet)."""
    rows: list[list[int]] = []

    def pre(_m, _a, kw):
        ids, mask = kw["input_ids"], kw["attention_mask"]
        if mask.shape[1] == ids.shape[1]:
            rows.extend(r[m.bool()].tolist() for r, m in zip(ids, mask, strict=True))

    return rows, model.register_forward_pre_hook(pre, with_kwargs=True)


def test_tune_evaluate_and_circuits_see_identical_tokens(tok):
    ds = load_dataset("emotion_test")
    ds.rows = [ds.rows[0], ds.rows[25], ds.rows[70]]
    train_ids, n_prompts, _ = tune_encode(tok, ds)
    spec = get_task("emotion")
    labels = list(EMOTIONS)
    prompts = [closed_prompt(tok, spec, labels, r["text"]) for r in ds.rows]
    items = tokenize_pairs(tok, prompts, labels)
    enc = encoder_for(tok, [Pair(r["text"], "a plain report", r["label"]) for r in ds.rows if r["label"] != "neutral"])
    model = tiny_model("llama", vocab=len(tok), hidden=16, ffn=32, heads=2, kv_heads=1, layers=1)
    for r, prompt, ids, n, item in zip(ds.rows, prompts, train_ids, n_prompts, items, strict=True):
        assert ids[-1] == tok.eos_token_id
        # closed scoring: prompt + label tokens are the training sequence (less its EOS)
        gold = labels.index(r["label"])
        assert item.prompt == ids[:n]
        assert item.prompt + item.common + item.rests[gold] == ids[:-1]
        # circuits: the pairs encoder feeds the training prompt
        assert enc(r["text"])["input_ids"][0].tolist() == ids[:n]
        # the special-token rule: the tokenizer adds BOS to plain prompts, nothing to chat ones
        # (a chat prompt holds exactly the BOS tokens its template wrote)
        added = 0 if tok.chat_template else 1
        assert ids[:n].count(tok.bos_token_id) == prompt.count(tok.bos_token) + added

    # what the model really receives: scoring (evaluate's and circuits' scorer) and generation
    rows, handle = _prefill_rows(model)
    try:
        label_logprobs(model, tok, prompts, labels, batch_size=2)
    finally:
        handle.remove()
    expected_rows = [ids[:n + len(item.common)] for ids, n, item in zip(train_ids, n_prompts, items, strict=True)]
    assert sorted(rows) == sorted(expected_rows)
    rec = _Recorder()
    generate_answers(rec, tok, prompts, max_new_tokens=1, batch_size=2)
    assert sorted(rec.seen) == sorted(ids[:n] for ids, n in zip(train_ids, n_prompts, strict=True))

    # hooks: the span tracker finds the utterance inside the training tokens
    tracker = SpanTracker(enc.layout)
    for r, ids, n in zip(ds.rows, train_ids, n_prompts, strict=True):
        tracker.observe(torch.tensor([ids[:n]]), None, n, 1)
        span = tracker.rows[0]
        stim = tok.decode(ids[span.stim_start:span.stim_end])
        words = r["text"].split()
        assert " ".join(words[1:-1]) in stim
        assert span.prompt_end == n


def test_old_disagreement_is_resolved(plain):
    """A chat template without special tokens: scoring used to add BOS, training did not."""
    chat = _with_template(plain, BARE_TEMPLATE)
    prompt = render(chat, "I won!", "emotion")
    assert not adds_special_tokens(chat, prompt)
    item = tokenize_pairs(chat, [prompt], list(EMOTIONS))[0]
    assert item.prompt == chat(prompt, add_special_tokens=False)["input_ids"]
    assert item.prompt[0] != chat.bos_token_id


def test_special_token_rule(plain):
    bos = plain.bos_token
    assert adds_special_tokens(plain, "Text: hi")
    assert not adds_special_tokens(plain, f"{bos}Text: hi")  # never a second BOS
    chat = _with_template(plain, BARE_TEMPLATE)
    assert not adds_special_tokens(chat, "Text: hi")  # the template owns special tokens
    # documents (perplexity) are never templated: BOS by the tokenizer's rule, also for chat tokenizers
    assert encode_text(chat, "Once upon a time")[0] == plain.bos_token_id
    assert encode_text(plain, f"{bos}Once upon a time").count(plain.bos_token_id) == 1
    # batched and single encoding agree
    prompts = [render(t, s, "emotion") for t in (plain,) for s in ("a", "b c", f"{bos}d")]
    assert encode_prompts(plain, prompts) == [encode(plain, p)[0] for p in prompts]


def test_plain_prompts_and_targets(plain):
    p = render(plain, "I won!", "emotion")
    assert p == ("Classify the emotion expressed in the utterance. Answer with one word: anger, disgust, "
                 "fear, joy, neutral, sadness, surprise.\nText: I won!\nEmotion:")
    assert target_delimiter(plain, p) == " "
    ids, n = encode(plain, p, "joy", eos=True)
    assert ids[:n] == plain(p)["input_ids"]
    assert ids[n:] == plain(" joy", add_special_tokens=False)["input_ids"] + [plain.eos_token_id]
    assert encode(plain, p, "joy")[0] == ids[:-1]
    # sentiment lists all three polarities also for a binary task; digits for the control task
    assert "negative, neutral, positive." in render(plain, "ok", "sentiment", ["negative", "positive"])
    assert render(plain, "2+2?", "arithmetic").endswith("\nAnswer:")
    # a closed kind whose labels it does not know is asked as the generic label task
    assert render(plain, "x", "control", ["yes", "no"]) == \
        "Classify the text. Answer with one label: yes, no.\nText: x\nLabel:"
    assert render(plain, "x", "label") == "Classify the text. Answer with one label.\nText: x\nLabel:"
    # custom wording fills {labels} and {text}
    assert render(plain, "x", "emotion", ["joy", "anger"], query="Pick {labels} for {text}.") == \
        "Pick joy, anger for x.\nText: x\nAnswer:"
    # the open-vocabulary question of generative evaluation
    q = "Please recognize all possible emotional states of the character."
    assert open_prompt(plain, "I won!", q) == render(plain, "I won!", "open") == (
        f'Subtitle content: "I won!"\n{q} Answer with a comma-separated list of emotion words.\n'
        "Answer: The character's emotional state is")
    # an image placeholder goes before the text; an image alone has no "Text:" line
    assert render(plain, "", "emotion", image="<image>").endswith("\n<image>\nEmotion:")
    with pytest.raises(AffectlensError, match="no prompt"):
        render(plain, "x", "perplexity")


def test_chat_template_prompts(plain):
    """With a chat template: instruction as system turn, label right after the assistant header."""
    chat = _with_template(plain, BARE_TEMPLATE)
    prompt = render(chat, "I won!", "emotion")
    assert prompt.startswith("<system>Classify the emotion") and prompt.endswith("<user>I won!</s><assistant>")
    ids, n = encode(chat, prompt, "joy", eos=True)
    assert ids[:n] == chat(prompt, add_special_tokens=False)["input_ids"]
    assert ids[n:] == chat("joy", add_special_tokens=False)["input_ids"] + [chat.eos_token_id]
    assert target_delimiter(chat, prompt) == ""
    # custom wording is the system turn too
    assert render(chat, "x", "emotion", ["joy"], query="Say {labels}.").startswith("<system>Say joy.</s><user>x")
    # the open question is one user turn
    assert render(chat, "I won!", "open").startswith('<user>Subtitle content: "I won!"')
    # A template that refuses a system turn (Gemma-style) gets the instruction in the user turn.
    chat.chat_template = ("{% for m in messages %}{% if m['role'] == 'system' %}"
                          "{{ raise_exception('no system') }}{% endif %}<{{ m['role'] }}>{{ m['content'] }}"
                          "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}")
    prompt = render(chat, "I won!", "control")
    assert prompt.startswith("<user>Solve the word problem.") and prompt.endswith("I won!<assistant>")


def test_task_kinds():
    assert TaskKind.parse("arithmetic") is TaskKind.CONTROL
    assert TaskKind.parse("Emotions") is TaskKind.EMOTION
    assert TaskKind.parse("generic") is TaskKind.LABEL
    assert TaskKind.parse(TaskKind.SENTIMENT) is TaskKind.SENTIMENT
    with pytest.raises(AffectlensError, match="unknown task kind 'colour'"):
        TaskKind.parse("colour")
    with pytest.raises(AffectlensError, match="choose from: emotion, sentiment"):
        TaskKind.parse("perplexity", [TaskKind.EMOTION, TaskKind.SENTIMENT])
    assert closed_labels("math") == tuple("0123456789")
    assert closed_labels("label") is None
    assert infer_kind(["joy", "anger"]) is TaskKind.EMOTION
    assert infer_kind(["positive"]) is TaskKind.SENTIMENT
    assert infer_kind(["3", "7"]) is TaskKind.CONTROL
    assert infer_kind(["yes", "no"]) is TaskKind.LABEL
    assert f"{TaskKind.CONTROL}" == "control"  # what run files record


def test_one_vocabulary():
    """Corpus, evaluation tasks and prompts share the label tuples (no second copy)."""
    from affectlens import vocab
    from affectlens.tasks import corpus
    from affectlens.tasks import spec as tasks

    assert corpus.EMOTIONS is vocab.EMOTIONS is tasks.EMOTIONS
    assert tasks.SENTIMENTS3 is vocab.SENTIMENTS3 and tasks.SENTIMENTS2 is vocab.SENTIMENTS2
    assert not hasattr(tasks, "CLOSED_QUESTIONS")

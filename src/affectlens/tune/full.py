"""Full fine-tuning of the selected modules only: the paper's SFT arm next to LoRA (``tune --method full``).

The LoRA-vs-SFT comparison asks whether a low-rank update on a module does what
training the module's whole weight does. So ``--method full`` changes nothing
but what is trained: the same matched modules, data, order, seed, steps and
loss; every parameter of the selected ``nn.Linear`` modules (weight and bias)
is trained and everything else -- embeddings, norms, LM head, other modules --
stays frozen, bit for bit. The result is an ordinary HF model dir
(``config.json``, ``model.safetensors``, tokenizer files) that ``locate``,
``evaluate``, ``transfer`` and ``ablate`` read as a tuned model, plus the
run's ``affectlens_tune.json``, loss curve and manifest.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import AffectlensError


def freeze_all_but(model: Any, paths: list[str]) -> Callable[[], None]:
    """Make exactly the parameters of the modules at ``paths`` trainable; returns ``restore()``,
    which puts back their values and every ``requires_grad`` flag (for a run that fails on a
    caller's in-memory model)."""
    modules = dict(model.named_modules())
    missing = [p for p in paths if p not in modules]
    if missing:
        raise AffectlensError(f"full fine-tuning: module(s) {', '.join(missing[:3])} not in the model")
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    selected = [p for path in paths for p in modules[path].parameters()]
    saved = [p.detach().clone() for p in selected]
    for p in selected:
        p.requires_grad_(True)

    def restore() -> None:
        import torch

        with torch.no_grad():
            for p, s in zip(selected, saved, strict=True):
                p.copy_(s)
        for n, p in model.named_parameters():
            p.requires_grad_(flags[n])

    return restore


def fp32_master_weights(model: Any, paths: list[str]) -> Callable[[], None] | None:
    """Train bf16 modules in float32; returns ``finish()``, which rounds them back to bf16 (None: nothing to do).

    A bf16 weight cannot take an AdamW update much below 2^-8 of its size (it
    rounds away), so pure-bf16 full fine-tuning silently stops learning at
    small learning rates. The selected modules are upcast to float32 for the
    run (master weights: the parameters, their gradients and AdamW's moments
    in float32), the forward runs under bf16 autocast, and ``finish`` casts
    the trained weights back to the model's dtype for saving. Other dtypes
    (float32; float16, which would also need loss scaling) are left alone.
    """
    import torch

    modules = dict(model.named_modules())
    chosen = [modules[p] for p in paths if any(q.dtype == torch.bfloat16 for q in modules[p].parameters())]
    if not chosen:
        return None
    for m in chosen:
        m.float()

    def finish() -> None:
        for m in chosen:
            m.to(torch.bfloat16)

    return finish


def save_full_model(result: Any, out: str | os.PathLike, force: bool, base_dir: Path | None,
                    state_dict: dict[str, Any] | None = None) -> Path:
    """The fully fine-tuned model as an HF dir, written through ``RunDir`` (safetensors, the
    tokenizer, ``affectlens_tune.json``, ``loss_curve.png``, ``manifest.json``). ``state_dict``
    is the gathered full state under FSDP (the model's own parameters are shards there)."""
    from ..models.adapters import base_fingerprint
    from ..plots import loss_curve
    from ..runs import RunDir
    from ..weights.finite import check_finite

    inputs: dict[str, Any] = {"data": result.options["data"]}
    if base_dir is not None:
        inputs["base"] = str(base_dir)
        result.info["base_fingerprint"] = base_fingerprint(base_dir)
    if state_dict is not None:
        for name, t in state_dict.items():
            check_finite(t, f"trained tensor {name}; nothing was written")
    opts = result.options
    with RunDir(out, command="tune", force=force, inputs=inputs, options=opts, seed=opts["seed"]) as run:
        result.model.save_pretrained(str(run.path), safe_serialization=True,
                                     **({} if state_dict is None else {"state_dict": state_dict}))
        result.tokenizer.save_pretrained(str(run.path))
        run.json("affectlens_tune.json", result.info)
        if "train_rows" in result.info:  # the manifest names what was trained on; the digests stay in the json
            run.extra["train_rows"] = {k: v for k, v in result.info["train_rows"].items() if k != "hashes"}
        run.figure("loss_curve.png", loss_curve(result.loss_curve, f"full fine-tune {','.join(opts['modules'])}"))
    return Path(out)


__all__ = ["fp32_master_weights", "freeze_all_but", "save_full_model"]

"""The LoRA training step of ``tune``: targets, the PEFT wrap, batches, the loss and the loop.

Kept apart from ``tune`` (data in, adapter dir out) so the loop reads on its
own: seeded LoRA init and data order, loss on label tokens only (prompt and
padding are ``-100``), AdamW with linear warm-up, the forward pass under the
budget's precision (bf16 autocast or fp32, :mod:`affectlens.precision`), and a
stop at the first non-finite number.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import AffectlensError
from .hfcompat import quiet_peft
from .modules import MODULES, MatchReport, parse_name, parse_selection
from .precision import autocast, resolve_precision
from .tuneconfig import TuneConfig

IGNORE = -100  # label value that torch's cross-entropy (and HF models) skip
# Eager attention's saved B x H x L x L probabilities grow with L^2: up to this many tokens per
# example they are small, and eager trains faster than CPU SDPA (measured on SmolLM2, batch 8:
# 1.4-1.5x per step at 67 tokens in fp32 and bf16, 1.1-1.2x at 256 tokens in bf16).
EAGER_MAX_LENGTH = 512


@dataclass
class TrainStats:
    """What the training loop measured."""

    losses: list[float]
    step_seconds: list[float]
    seconds: float
    tokens: int
    step_cpu_seconds: list[float] = field(default_factory=list)  # CPU time (all threads): wall/CPU shows load
    precision: str = "fp32"  # what ran: "fp32" or "bf16" (autocast)
    attention: str | None = None  # the attention implementation the steps ran with

    @property
    def seconds_per_step(self) -> float:
        return self.seconds / len(self.losses)


def collate(batch_ids: Sequence[Sequence[int]], n_prompts: Sequence[int], pad_id: int,
            side: str = "left"):
    """Padded ``input_ids``, ``attention_mask`` and ``labels`` (-100 on prompt and pad).

    Left padding (the default) ends every row at the same position, so the
    label tokens sit in the last columns and only those logits are needed
    (see :func:`label_loss`).
    """
    import torch

    width = max(len(x) for x in batch_ids)
    input_ids = torch.full((len(batch_ids), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch_ids), width), dtype=torch.long)
    labels = torch.full((len(batch_ids), width), IGNORE, dtype=torch.long)
    for i, (ids, n_prompt) in enumerate(zip(batch_ids, n_prompts, strict=True)):
        t = torch.tensor(ids, dtype=torch.long)
        start = width - len(ids) if side == "left" else 0
        input_ids[i, start : start + len(ids)] = t
        attention[i, start : start + len(ids)] = 1
        labels[i, start + n_prompt : start + len(ids)] = t[n_prompt:]
    return input_ids, attention, labels


def label_loss(model: Any, input_ids: Any, attention: Any, labels: Any) -> Any:
    """Mean cross-entropy over label tokens, computing logits only where labels are.

    With left padding the targets occupy the last ``K`` columns, so the LM head
    runs on ``K + 1`` positions instead of the whole sequence (the vocabulary
    projection is a large share of a small model's step). Equal to the HF
    ``labels=`` loss; models without ``logits_to_keep`` fall back to it.
    """
    import torch.nn.functional as F

    keep = labels != IGNORE
    k = int(keep.shape[1] - keep.int().argmax(dim=1).min()) if bool(keep[:, -1].all()) else 0
    if k == 0:
        return model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
    try:
        logits = model(input_ids=input_ids, attention_mask=attention, logits_to_keep=k + 1).logits
    except TypeError:
        return model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
    if logits.shape[1] != k + 1:  # the model ignored logits_to_keep
        logits = logits[:, -(k + 1):]
    pred = logits[:, :-1].float()
    return F.cross_entropy(pred.reshape(-1, pred.shape[-1]), labels[:, -k:].reshape(-1), ignore_index=IGNORE)


def lora_targets(model: Any, modules: str | Sequence[str], layers: str | Sequence[int] | None = None
                 ) -> tuple[list[str], MatchReport]:
    """Module paths of ``model`` that a selection targets, with the loud match report.

    Returns the paths of the ``nn.Linear`` modules (``model.layers.3.mlp.gate_proj``)
    so PEFT wraps exactly what was matched.
    """
    from .selection import module_paths

    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return module_paths([n for n, _ in model.named_parameters()], modules, layers,
                        n_layers=getattr(cfg, "num_hidden_layers", None) or None)


def peft_target_modules(model: Any, paths: list[str]) -> list[str]:
    """Short names (``["gate_proj"]``) when they select exactly ``paths``, else full paths."""
    leaves = {p.rsplit(".", 1)[-1] for p in paths}
    if leaves <= set(MODULES):
        every = {n for n, _ in model.named_modules() if n.rsplit(".", 1)[-1] in leaves}
        if every == set(paths):
            return sorted(leaves, key=MODULES.index)
    return paths


def trainable_by_module(model: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        parsed = parse_name(name)
        mod = parsed.key.module if parsed.key is not None else parsed.scope
        out[mod] = out.get(mod, 0) + p.numel()
    order = list(MODULES)
    return dict(sorted(out.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 99))


def wrap_lora(model: Any, paths: list[str], cfg: TuneConfig) -> tuple[Any, list[str]]:
    """``model`` with LoRA (seeded init) on exactly ``paths``; PEFT must wrap what we matched."""
    import torch
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer

    target_modules = peft_target_modules(model, paths)
    config = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha,  # type: ignore[arg-type]  # PEFT takes any number lora_dropout=cfg.dropout,
                        target_modules=target_modules, bias="none", task_type="CAUSAL_LM")
    torch.manual_seed(cfg.seed)  # LoRA A init
    try:
        with quiet_peft():
            peft_model = get_peft_model(model, config)
    except Exception as e:  # PEFT's NoMatchingPeftModuleError, ValueError on unsupported layers, ...
        raise AffectlensError(f"PEFT cannot put LoRA on {', '.join(target_modules[:3])}"
                              f"{' ...' if len(target_modules) > 3 else ''}: {type(e).__name__}: {e}") from None
    wrapped = {n.removeprefix("base_model.model.") for n, m in peft_model.named_modules() if isinstance(m, LoraLayer)}
    if wrapped != set(paths):  # PEFT's name matching must agree with ours, exactly
        peft_model.unload()
        raise AffectlensError(f"PEFT wrapped {len(wrapped)} modules but {len(paths)} were matched")
    return peft_model, target_modules


@contextlib.contextmanager
def training_attention(model: Any, device_type: str, max_length: int) -> Iterator[str | None]:
    """Train with eager attention where it is the faster kernel (CPU, short examples).

    torch's CPU SDPA kernel (flash attention with a padding mask) is slower than
    the plain softmax(QK^T)V for the short sequences LoRA tuning sees, forward and
    backward; the two agree to float rounding. The model's own choice is restored
    after, so the caller's model comes back as it was. Yields what the steps use.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    before = getattr(base.config, "_attn_implementation", None)
    switch = (device_type == "cpu" and before == "sdpa" and max_length <= EAGER_MAX_LENGTH
              and hasattr(base, "set_attn_implementation"))
    if switch:
        try:
            base.set_attn_implementation("eager")
        except (ValueError, ImportError, AttributeError):  # a model without an eager path keeps its own
            switch = False
    try:
        yield base.config._attn_implementation if switch else before
    finally:
        if switch:
            base.set_attn_implementation(before)


def train(peft_model: Any, ids: list[list[int]], n_prompts: list[int], pad_id: int, cfg: TuneConfig
          ) -> TrainStats:
    """AdamW with linear warm-up/decay over ``cfg.steps`` seeded batches (epochs reshuffled).

    The forward pass (and with it the loss) runs under ``cfg.precision``
    resolved for the model's device; backward follows the forward's dtypes, and
    parameters, gradients and optimizer state stay in their own (fp32) dtype.

    Stops with one line at the first non-finite loss, a failed update, or a
    non-finite trained tensor after the last step (which no loss sees).
    """
    import torch
    from transformers import get_linear_schedule_with_warmup

    from .runs import Progress
    from .weights.finite import check_finite

    params = [p for p in peft_model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    sched = get_linear_schedule_with_warmup(optim, int(cfg.warmup * cfg.steps), cfg.steps)
    gen = torch.Generator().manual_seed(cfg.seed)
    order: list[int] = []
    torch.manual_seed(cfg.seed)  # LoRA dropout masks
    peft_model.train()
    device_type = params[0].device.type if params else "cpu"
    precision = resolve_precision(cfg.precision, device_type)
    stats = TrainStats([], [], 0.0, 0, precision=precision)
    t0 = time.perf_counter()
    with (training_attention(peft_model, device_type, cfg.max_length) as stats.attention,
          Progress(cfg.steps, f"tune {','.join(parse_selection(cfg.modules))}", unit="step") as bar):
        for step in range(1, cfg.steps + 1):
            ts, cs = time.perf_counter(), time.process_time()
            batch: list[int] = []
            while len(batch) < cfg.batch_size:
                if not order:
                    order = torch.randperm(len(ids), generator=gen).tolist()
                batch.append(order.pop(0))
            input_ids, attention, labels = collate([ids[i] for i in batch], [n_prompts[i] for i in batch], pad_id)
            try:
                with autocast(precision, device_type):
                    loss = label_loss(peft_model, input_ids, attention, labels)
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise AffectlensError(
                        f"training loss became non-finite ({value}) at step {step} of {cfg.steps}; nothing was "
                        f"written (lr {cfg.lr:g} may be too high)")
                optim.zero_grad(set_to_none=True)
                loss.backward()
                optim.step()
                sched.step()
            except (RuntimeError, OverflowError) as e:  # e.g. an update that overflows the dtype
                raise AffectlensError(f"training failed at step {step} of {cfg.steps}: "
                                      f"{type(e).__name__}: {e}") from None
            stats.losses.append(value)
            stats.tokens += int(attention.sum())
            stats.step_seconds.append(time.perf_counter() - ts)
            stats.step_cpu_seconds.append(time.process_time() - cs)
            bar.update(1)
            if bar.bar is not None:
                bar.bar.set_postfix(loss=f"{value:.4f}")
    stats.seconds = time.perf_counter() - t0
    peft_model.eval()
    for name, prm in peft_model.named_parameters():
        if prm.requires_grad:  # the last update is not seen by any loss
            check_finite(prm.detach(), f"trained tensor {name.removeprefix('base_model.model.')} "
                         f"after step {cfg.steps}; nothing was written")
    return stats



__all__ = ["EAGER_MAX_LENGTH", "IGNORE", "TrainStats", "collate", "label_loss", "lora_targets", "peft_target_modules",
           "train", "training_attention", "trainable_by_module", "wrap_lora"]

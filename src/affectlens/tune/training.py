"""The LoRA training step of ``tune``: targets, the PEFT wrap, batches, the loss and the loop.

Kept apart from ``tune`` (data in, adapter dir out) so the loop reads on its
own: seeded LoRA init and data order, loss on label tokens only (prompt and
padding are ``-100``), AdamW with linear warm-up, the forward pass under the
budget's precision (bf16 autocast or fp32, :mod:`affectlens.tune.precision`), and a
stop at the first non-finite number.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import AffectlensError
from ..models.hfcompat import quiet_peft
from ..modules import MODULES, MatchReport, parse_name, parse_selection
from ..tuneconfig import TuneConfig
from .precision import autocast, resolve_precision

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
    model: Any = None  # the trained model, unwrapped from DDP/FSDP
    state_dict: dict[str, Any] | None = None  # FSDP: the gathered full state dict (main process)
    layout: dict[str, Any] = field(default_factory=dict)  # per-process batch, processes, accumulation

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


def label_loss(model: Any, input_ids: Any, attention: Any, labels: Any, reduction: str = "mean") -> Any:
    """Cross-entropy over label tokens (their ``mean``, or ``sum``), computing logits only where labels are.

    With left padding the targets occupy the last ``K`` columns, so the LM head
    runs on ``K + 1`` positions instead of the whole sequence (the vocabulary
    projection is a large share of a small model's step). Equal to the HF
    ``labels=`` loss; models without ``logits_to_keep`` fall back to it.
    ``sum`` lets a split batch (processes, accumulation) divide by the label
    tokens of the whole batch, so it trains exactly as the batch in one piece.
    """
    import torch.nn.functional as F

    keep = labels != IGNORE
    k = int(keep.shape[1] - keep.int().argmax(dim=1).min()) if bool(keep[:, -1].all()) else 0
    logits = None
    if k:
        try:
            logits = model(input_ids=input_ids, attention_mask=attention, logits_to_keep=k + 1).logits
        except TypeError:
            logits = None
    if logits is None:
        loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
        return loss if reduction == "mean" else loss * keep[:, 1:].sum()
    if logits.shape[1] != k + 1:  # the model ignored logits_to_keep
        logits = logits[:, -(k + 1):]
    pred = logits[:, :-1].float()
    return F.cross_entropy(pred.reshape(-1, pred.shape[-1]), labels[:, -k:].reshape(-1), ignore_index=IGNORE,
                           reduction=reduction)


def lora_targets(model: Any, modules: str | Sequence[str], layers: str | Sequence[int] | None = None
                 ) -> tuple[list[str], MatchReport]:
    """Module paths of ``model`` that a selection targets, with the loud match report.

    Returns the paths of the ``nn.Linear`` modules (``model.layers.3.mlp.gate_proj``)
    so PEFT wraps exactly what was matched.
    """
    from ..selection import module_paths

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


LABEL_MAX = 24  # characters of the progress bar's label: the rest of a terminal line is the bar


def progress_label(modules: str) -> str:
    """The training bar's label: the selection as the user spelled it (``tune all``, ``tune gate_proj``),
    or ``tune N modules`` where that is longer than :data:`LABEL_MAX` (a seven-module list left a
    three-character bar)."""
    spelled = ",".join(x.strip() for x in modules.split(",") if x.strip())
    label = f"tune {spelled}"
    if len(label) <= LABEL_MAX:
        return label
    n = len(parse_selection(modules))
    return f"tune {n} module{'' if n == 1 else 's'}"


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
    options: dict[str, Any] = {"lora_alpha": cfg.alpha}  # PEFT types alpha as int but takes any number
    config = LoraConfig(r=cfg.rank, lora_dropout=cfg.dropout, target_modules=target_modules, bias="none",
                        task_type="CAUSAL_LM", **options)
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


def train(peft_model: Any, ids: list[list[int]], n_prompts: list[int], pad_id: int, cfg: TuneConfig,
          *, accelerator: Any = None, grad_accum: int = 1, verbose: bool = True) -> TrainStats:
    """AdamW with linear warm-up/decay over ``cfg.steps`` seeded batches (epochs reshuffled).

    The forward pass (and with it the loss) runs under ``cfg.precision``
    resolved for the model's device; backward follows the forward's dtypes, and
    parameters, gradients and optimizer state stay in their own (fp32) dtype.

    Each step takes ``batch_size x processes x grad_accum`` examples from the one
    seeded order; with an ``accelerator`` (several processes) each rank trains its
    share (:class:`affectlens.distributed.Layout`). A split step sums the label
    cross-entropy of its pieces and divides by the label tokens of the whole
    step (known to every rank from the shared order), so it is the same
    update as the unsplit batch; the logged loss is that global mean. One
    process without accumulation runs the plain per-batch mean, as before.

    Stops with one line at the first non-finite loss, a failed update, or a
    non-finite trained tensor after the last step (which no loss sees).
    """
    import torch
    from transformers import get_linear_schedule_with_warmup

    from ..runs import Progress
    from ..weights.finite import check_finite
    from .distributed import finish, layout, prepare

    if isinstance(grad_accum, bool) or not isinstance(grad_accum, int) or grad_accum < 1:
        raise AffectlensError(f"grad accum must be an integer >= 1, got {grad_accum!r}")
    lay = layout(accelerator, cfg.batch_size, grad_accum)
    split = lay.processes * lay.accumulation > 1
    model = peft_model

    def make_optimizer(m: Any) -> Any:
        return torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=0.0)

    params = [p for p in peft_model.parameters() if p.requires_grad]
    device = accelerator.device if accelerator is not None else (params[0].device if params else torch.device("cpu"))
    device_type = device.type
    gen = torch.Generator().manual_seed(cfg.seed)
    order: list[int] = []
    precision = resolve_precision(cfg.precision, device_type)
    stats = TrainStats([], [], 0.0, 0, precision=precision)
    backward = accelerator.backward if accelerator is not None else (lambda t: t.backward())
    with training_attention(peft_model, device_type, cfg.max_length) as stats.attention:
        if accelerator is None:
            optim = make_optimizer(model)
        else:
            model, optim = prepare(accelerator, model, make_optimizer)
        sched = get_linear_schedule_with_warmup(getattr(optim, "optimizer", optim), int(cfg.warmup * cfg.steps),
                                                cfg.steps)
        torch.manual_seed(cfg.seed + lay.rank)  # dropout masks: rank 0 (and one process) as before
        model.train()
        t0 = time.perf_counter()
        with Progress(cfg.steps, progress_label(cfg.modules), unit="step",
                      enabled=verbose and lay.rank == 0) as bar:
            for step in range(1, cfg.steps + 1):
                ts, cs = time.perf_counter(), time.process_time()
                batch: list[int] = []
                while len(batch) < lay.effective:
                    if not order:
                        order = torch.randperm(len(ids), generator=gen).tolist()
                    batch.append(order.pop(0))
                try:
                    if split:
                        value = _split_step(model, accelerator, backward, lay.shard(batch), ids, n_prompts, pad_id,
                                            sum(len(ids[i]) - n_prompts[i] for i in batch), precision, device,
                                            optim, stats)
                    else:
                        x, a, y = (t.to(device) for t in collate([ids[i] for i in batch],
                                                                 [n_prompts[i] for i in batch], pad_id))
                        with autocast(precision, device_type):
                            loss = label_loss(model, x, a, y)
                        value = float(loss.detach())
                        stats.tokens += int(a.sum())
                    if not math.isfinite(value):
                        raise AffectlensError(
                            f"training loss became non-finite ({value}) at step {step} of {cfg.steps}; nothing was "
                            f"written (lr {cfg.lr:g} may be too high)")
                    if not split:
                        optim.zero_grad(set_to_none=True)
                        backward(loss)
                    optim.step()
                    sched.step()
                except (RuntimeError, OverflowError) as e:  # e.g. an update that overflows the dtype
                    raise AffectlensError(f"training failed at step {step} of {cfg.steps}: "
                                          f"{type(e).__name__}: {e}") from None
                stats.losses.append(value)
                stats.step_seconds.append(time.perf_counter() - ts)
                stats.step_cpu_seconds.append(time.process_time() - cs)
                bar.set_postfix(loss=f"{value:.4f}")
                bar.update(1)
        stats.seconds = time.perf_counter() - t0
    if accelerator is not None:
        stats.tokens = int(accelerator.reduce(torch.tensor(stats.tokens, device=device), "sum"))
        peft_model, stats.state_dict = finish(accelerator, model)
    peft_model.eval()
    if stats.state_dict is None:  # under FSDP the parameters are shards; the gathered dict is checked on save
        for name, prm in peft_model.named_parameters():
            if prm.requires_grad:  # the last update is not seen by any loss
                check_finite(prm.detach(), f"trained tensor {name.removeprefix('base_model.model.')} "
                             f"after step {cfg.steps}; nothing was written")
    stats.model = peft_model
    stats.layout = lay.to_dict()
    return stats


def _split_step(model: Any, accelerator: Any, backward: Any, shards: list[list[int]], ids: list[list[int]],
                n_prompts: list[int], pad_id: int, n_label: int, precision: str, device: Any, optim: Any,
                stats: TrainStats) -> float:
    """Gradients of one step whose batch is split over processes and/or accumulation rounds.

    Each piece's loss is its label cross-entropy *sum* over the step's global label
    count, times the process count (DDP/FSDP average gradients over processes), so
    the accumulated gradient is that of the global mean; gradients are synchronised
    once, on the last piece. Returns the global mean loss (the same on every rank).
    """
    import torch

    world = accelerator.num_processes if accelerator is not None else 1
    optim.zero_grad(set_to_none=True)
    local = torch.zeros((), device=device, dtype=torch.float64)
    for m, rows in enumerate(shards):
        x, a, y = (t.to(device) for t in collate([ids[i] for i in rows], [n_prompts[i] for i in rows], pad_id))
        last = m == len(shards) - 1
        sync = accelerator.no_sync(model) if accelerator is not None and not last else contextlib.nullcontext()
        with sync:
            with autocast(precision, device.type):
                total = label_loss(model, x, a, y, reduction="sum")
            backward(total * (world / n_label))
        local += total.detach().double()
        stats.tokens += int(a.sum())
    if accelerator is not None:
        local = accelerator.reduce(local, "sum")
    return float(local) / n_label


__all__ = ["EAGER_MAX_LENGTH", "IGNORE", "TrainStats", "collate", "label_loss", "lora_targets", "peft_target_modules",
           "train", "training_attention", "trainable_by_module", "wrap_lora"]

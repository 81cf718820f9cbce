"""Targeted LoRA tuning: train only the chosen modules (GET = gate_proj only).

The efficiency step of the gate_proj study compares adapters that differ only
in *where* they are placed, so everything else is held fixed and recorded:
the same prompts (``affectlens.prompts``), the same seeded data order and LoRA
initialisation, the same steps, rank, alpha and learning rate. The loss sees
only the label tokens (prompt positions are ``-100``), so the adapter learns
to answer, not to reproduce prompts.

The result is a standard PEFT adapter dir (``save_pretrained``) whose
``base_model_name_or_path`` is the resolved base, plus ``affectlens_tune.json``
(options, seed, loss curve, trainable parameters per module, timing), a
loss-curve PNG and ``manifest.json``.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .corpus import NAMES, bundled_path, labelled_rows
from .errors import AffectlensError
from .hfcompat import quiet_peft
from .modules import (
    MODULES,
    MatchReport,
    format_ranges,
    parse_name,
    parse_selection,
)
from .prompts import encode as encode_prompt
from .prompts import render
from .vocab import CLOSED_KINDS, TaskKind, closed_labels, infer_kind

IGNORE = -100  # label value that torch's cross-entropy (and HF models) skip


@dataclass
class Dataset:
    """Validated ``{"text", "label"}`` rows with the task kind that formats them."""

    rows: list[dict[str, str]]
    task_kind: TaskKind
    labels: tuple[str, ...]
    source: str


@dataclass
class TuneResult:
    """What one tuning run produced. ``model`` is the trained PeftModel, still in memory:
    evaluate it directly, or call ``model.unload()`` to get the untouched base back."""

    adapter_dir: Path | None
    model: Any
    tokenizer: Any
    trainable_params: int
    trainable_per_module: dict[str, int]
    loss_curve: list[float]
    seconds_per_step: float
    options: dict[str, Any]
    match: MatchReport
    info: dict[str, Any] = field(default_factory=dict)


def resolve_data(data: str | os.PathLike) -> Path:
    """A data path, or a bundled name such as ``emotion_train`` / ``control_train``."""
    s = str(data)
    stem = s[:-6] if s.endswith(".jsonl") else s
    if stem in NAMES and not Path(s).exists():
        return bundled_path(stem)
    p = Path(s)
    if not p.is_file():
        raise AffectlensError(f"data file {p} does not exist (bundled names: {', '.join(NAMES)})")
    return p


def load_dataset(data: str | os.PathLike, task: str | None = None) -> Dataset:
    """Read and validate a JSONL of ``{"text", "label"}`` rows.

    ``task`` (emotion, sentiment, control/arithmetic, label) fixes the prompt
    and, for closed tasks, the allowed labels; by default it is inferred from
    the labels present.
    """
    path = resolve_data(data)
    rows = [{"text": text, "label": label} for _, text, label in labelled_rows(path)]
    found = sorted({r["label"] for r in rows})
    kind = TaskKind.parse(task, CLOSED_KINDS) if task else infer_kind(found)
    allowed = closed_labels(kind)
    if allowed is not None:
        bad = [x for x in found if x not in allowed]
        if bad:
            raise AffectlensError(f"{path} has label(s) {', '.join(bad)} unknown to the {kind} task "
                                  f"(allowed: {', '.join(allowed)})")
    labels = tuple(allowed) if allowed is not None else tuple(found)
    return Dataset(rows, kind, labels, str(path))


def encode(tokenizer: Any, ds: Dataset, max_length: int = 256) -> tuple[list[list[int]], list[int], int]:
    """Token ids (prompt, label, EOS) and prompt lengths of every row, by :mod:`affectlens.prompts`
    as evaluation and circuits encode them; over-long prompts lose tokens from the left."""
    ids_all, n_prompts, truncated = [], [], 0
    for r in ds.rows:
        prompt = render(tokenizer, r["text"], ds.task_kind, ds.labels)
        ids, n_prompt = encode_prompt(tokenizer, prompt, r["label"], eos=True)
        if len(ids) - n_prompt < 1:
            raise AffectlensError(f"label '{r['label']}' encodes to no tokens")
        if len(ids) > max_length:
            cut = len(ids) - max_length
            if cut >= n_prompt:
                raise AffectlensError(f"label '{r['label']}' alone is longer than --max-length {max_length}")
            ids, n_prompt, truncated = ids[cut:], n_prompt - cut, truncated + 1
        ids_all.append(ids)
        n_prompts.append(n_prompt)
    return ids_all, n_prompts, truncated


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


def _peft_target_modules(model: Any, paths: list[str]) -> list[str]:
    """Short names (``["gate_proj"]``) when they select exactly ``paths``, else full paths."""
    leaves = {p.rsplit(".", 1)[-1] for p in paths}
    if leaves <= set(MODULES):
        every = {n for n, _ in model.named_modules() if n.rsplit(".", 1)[-1] in leaves}
        if every == set(paths):
            return sorted(leaves, key=MODULES.index)
    return paths


def _trainable_by_module(model: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        parsed = parse_name(name)
        mod = parsed.key.module if parsed.key is not None else parsed.scope
        out[mod] = out.get(mod, 0) + p.numel()
    order = list(MODULES)
    return dict(sorted(out.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 99))


def tune(
    base: Any,
    data: str | os.PathLike | Dataset,
    modules: str | Sequence[str] = "all",
    *,
    layers: str | Sequence[int] | None = None,
    rank: int = 8,
    alpha: float = 16,
    dropout: float = 0.05,
    steps: int = 100,
    lr: float = 5e-4,
    batch_size: int = 8,
    seed: int = 0,
    max_length: int = 256,
    warmup: float = 0.05,
    task: str | None = None,
    out: str | os.PathLike | None = None,
    force: bool = False,
    tokenizer: Any = None,
    base_path: str | os.PathLike | None = None,
    verbose: bool = True,
    allow_pickle: bool = False,
) -> TuneResult:
    """Train a LoRA adapter on ``modules`` (e.g. ``"gate_proj"`` for GET) and optionally save it.

    ``base`` is anything ``models.load_model`` accepts, or an in-memory causal LM
    (then pass ``tokenizer``, and ``base_path`` so the saved adapter names its
    base). The in-memory model is modified in place (LoRA layers are injected);
    ``result.model.unload()`` removes them again.

    Non-finite values never become an adapter: NaN/Inf in the base weights
    stop before training (naming the tensor and file), a non-finite loss or
    update stops at that step, and nothing is written.
    """
    import math

    import torch
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer
    from transformers import get_linear_schedule_with_warmup

    from .runs import atomic_dir, check_out_dir, progress, write_json, write_manifest

    say = print if verbose else (lambda *a, **k: None)
    for name, value, lo in (("steps", steps, 1), ("rank", rank, 1), ("batch size", batch_size, 1),
                            ("max length", max_length, 8)):
        if int(value) < lo:
            raise AffectlensError(f"{name} must be >= {lo}, got {value}")
    if not (math.isfinite(lr) and lr > 0) or not 0 <= dropout < 1 or not (math.isfinite(alpha) and alpha > 0):
        raise AffectlensError("need a finite lr > 0, a finite alpha > 0 and 0 <= dropout < 1")
    if not 0 <= warmup < 1:
        raise AffectlensError(f"warmup is a fraction of the steps in [0, 1), got {warmup}")
    if out is not None:
        check_out_dir(out, force)  # fail before the expensive part
    ds = data if isinstance(data, Dataset) else load_dataset(data, task)

    from .models import check_finite_model
    from .weights.finite import check_finite

    if isinstance(base, str | os.PathLike):
        from .models import adapter_base, is_adapter_dir, load_model, resolve_model_path

        resolved = resolve_model_path(base)
        if resolved.is_dir() and is_adapter_dir(resolved):
            raise AffectlensError(
                f"{resolved} is a PEFT adapter, not a base model: tune trains a new adapter on a base "
                f"(this adapter's is {adapter_base(resolved)}); merge it into its base first to build on it")
        model, tok = load_model(resolved, allow_pickle=allow_pickle)  # checks the weights are finite
        base_path = base_path or resolved
    else:
        model, tok = base, tokenizer
        if tok is None:
            raise AffectlensError("an in-memory base model needs its tokenizer")
        if hasattr(model, "peft_config"):
            raise AffectlensError("the base model already carries a PEFT adapter; unload it first")
        base_path = base_path or getattr(model.config, "_name_or_path", None) or None
        check_finite_model(model, base_path if base_path and Path(str(base_path)).exists() else None)
    base_path = str(Path(base_path).resolve()) if base_path and Path(str(base_path)).exists() else base_path
    tokenizer = tok

    paths, report = lora_targets(model, modules, layers)
    say(f"LoRA targets ({len(paths)} modules):")
    say(report.table())

    ids, n_prompts, truncated = encode(tokenizer, ds, max_length)
    if truncated:
        say(f"note: {truncated} of {len(ids)} examples were longer than {max_length} tokens; "
            "their prompts were cut from the left")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    target_modules = _peft_target_modules(model, paths)
    config = LoraConfig(r=int(rank), lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules,
                        bias="none", task_type="CAUSAL_LM")
    torch.manual_seed(seed)  # LoRA A init
    try:
        with quiet_peft():
            peft_model = get_peft_model(model, config)
    except Exception as e:  # PEFT's NoMatchingPeftModuleError, ValueError on unsupported layers, ...
        raise AffectlensError(f"PEFT cannot put LoRA on {', '.join(target_modules[:3])}"
                              f"{' ...' if len(target_modules) > 3 else ''}: {type(e).__name__}: {e}") from None
    try:
        wrapped = {n.removeprefix("base_model.model.") for n, m in peft_model.named_modules()
                   if isinstance(m, LoraLayer)}
        if wrapped != set(paths):  # PEFT's name matching must agree with ours, exactly
            raise AffectlensError(f"PEFT wrapped {len(wrapped)} modules but {len(paths)} were matched")
        per_module = _trainable_by_module(peft_model)
        n_train = sum(per_module.values())
        n_total = sum(p.numel() for p in peft_model.parameters())
        say(f"trainable parameters: {n_train:,} of {n_total:,} ({100 * n_train / n_total:.3f} %)")
        for mod, n in per_module.items():
            say(f"  {mod:<10} {n:>12,}  ({100 * n / n_train:.1f} %)")

        params = [p for p in peft_model.parameters() if p.requires_grad]
        optim = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        sched = get_linear_schedule_with_warmup(optim, int(warmup * steps), steps)
        gen = torch.Generator().manual_seed(seed)
        order: list[int] = []
        torch.manual_seed(seed)  # LoRA dropout masks
        peft_model.train()
        losses: list[float] = []
        tokens = 0
        t0 = time.perf_counter()
        bar = progress(range(steps), desc=f"tune {','.join(parse_selection(modules))}", total=steps, unit="step")
        step_times: list[float] = []
        try:
            for step, _ in enumerate(bar, 1):
                ts = time.perf_counter()
                batch: list[int] = []
                while len(batch) < batch_size:
                    if not order:
                        order = torch.randperm(len(ids), generator=gen).tolist()
                    batch.append(order.pop(0))
                input_ids, attention, labels = collate([ids[i] for i in batch], [n_prompts[i] for i in batch], pad_id)
                try:
                    loss = label_loss(peft_model, input_ids, attention, labels)
                    value = float(loss.detach())
                    if not math.isfinite(value):
                        raise AffectlensError(
                            f"training loss became non-finite ({value}) at step {step} of {steps}; nothing was "
                            f"written (lr {lr:g} may be too high)")
                    optim.zero_grad(set_to_none=True)
                    loss.backward()
                    optim.step()
                    sched.step()
                except (RuntimeError, OverflowError) as e:  # e.g. an update that overflows the dtype
                    raise AffectlensError(f"training failed at step {step} of {steps}: {type(e).__name__}: {e}") from None
                losses.append(value)
                tokens += int(attention.sum())
                step_times.append(time.perf_counter() - ts)
                if hasattr(bar, "set_postfix"):
                    bar.set_postfix(loss=f"{losses[-1]:.4f}")
        finally:
            if hasattr(bar, "close"):
                bar.close()  # no half-drawn bar before an error line
        seconds = time.perf_counter() - t0
        peft_model.eval()
        for name, prm in peft_model.named_parameters():
            if prm.requires_grad:  # the last update is not seen by any loss
                check_finite(prm.detach(), f"trained tensor {name.removeprefix('base_model.model.')} "
                             f"after step {steps}; nothing was written")
    except BaseException:
        if not isinstance(base, str | os.PathLike):
            peft_model.unload()  # hand the caller's in-memory model back without LoRA layers
        raise

    sps = seconds / steps
    say(f"trained {steps} steps in {seconds:.1f} s ({sps:.2f} s/step, {tokens / seconds:.0f} tokens/s); "
        f"loss {losses[0]:.4f} -> {sum(losses[-10:]) / len(losses[-10:]):.4f} (mean of last 10)")
    options = {
        "base": str(base_path) if base_path else None, "data": ds.source, "task": ds.task_kind,
        "labels": list(ds.labels), "modules": list(parse_selection(modules)),
        "layers": format_ranges(report.layers), "target_modules": target_modules, "rank": int(rank),
        "alpha": alpha, "dropout": dropout, "steps": int(steps), "lr": lr, "batch_size": int(batch_size),
        "max_length": int(max_length), "warmup": warmup, "seed": int(seed),
    }
    info = {
        "options": options, "seed": int(seed), "loss_curve": losses, "seconds": seconds,
        "seconds_per_step": sps, "median_seconds_per_step": statistics.median(step_times),
        "step_seconds": step_times, "tokens_per_second": tokens / seconds, "examples": len(ids),
        "truncated_examples": truncated, "trainable_params": n_train,
        "trainable_params_per_module": per_module, "model_params": n_total,
        "matched_modules": len(paths),
    }
    result = TuneResult(None, peft_model, tokenizer, n_train, per_module, losses, sps, options, report, info)
    if out is not None:
        with atomic_dir(out, force) as tmp:
            peft_model.peft_config["default"].base_model_name_or_path = options["base"]
            peft_model.save_pretrained(str(tmp))
            write_json(tmp / "affectlens_tune.json", info)
            _plot_loss(losses, tmp / "loss_curve.png", f"{','.join(options['modules'])} r={rank}")
            inputs: dict[str, Any] = {"data": ds.source}
            if base_path and Path(str(base_path)).exists():
                inputs["base"] = str(base_path)
            write_manifest(tmp, "tune", inputs, options, seed=int(seed))
        result.adapter_dir = Path(out)
        say(f"wrote {out}")
    return result


def _plot_loss(losses: Sequence[float], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(range(1, len(losses) + 1), losses, lw=0.8, alpha=0.5, label="per step")
    k = max(1, len(losses) // 20)
    if k > 1:
        smooth = [sum(losses[max(0, i - k + 1): i + 1]) / len(losses[max(0, i - k + 1): i + 1])
                  for i in range(len(losses))]
        ax.plot(range(1, len(losses) + 1), smooth, lw=1.5, label=f"mean of {k}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (label tokens)")
    ax.set_title(f"LoRA {title}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

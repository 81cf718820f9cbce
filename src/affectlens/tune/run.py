"""Targeted LoRA tuning: train only the chosen modules (GET = gate_proj only).

The efficiency step of the gate_proj study compares adapters that differ only
in *where* they are placed, so everything else is held fixed and recorded:
the same prompts (``affectlens.tasks.prompts``), the same seeded data order and LoRA
initialisation, the same steps, rank, alpha and learning rate. The loss sees
only the label tokens (prompt positions are ``-100``), so the adapter learns
to answer, not to reproduce prompts.

The budget is one :class:`~affectlens.tuneconfig.TuneConfig` (shared with
grid, demo and the study). ``tune`` reads as its four steps: the data
(:func:`load_dataset`, :func:`encode`), the base wrapped with LoRA
(:func:`wrap_lora`), the training loop (:func:`train`) and the adapter dir
(:func:`save_adapter`, through ``runs.RunDir``).

The adapter dir is a standard PEFT one (``save_pretrained``) whose
``base_model_name_or_path`` is portable (``smollm2``, or the base's path
relative to the adapter dir), plus ``affectlens_tune.json`` (options, seed,
loss curve, trainable parameters per module, timing, the base's content
fingerprint), a loss-curve PNG and ``manifest.json``.

``method="full"`` trains the selected modules' whole weights instead (the
paper's SFT arm; :mod:`affectlens.tune.full`) and writes an HF model dir. Under
``accelerate launch`` the same call runs on every process
(:mod:`affectlens.tune.distributed`): the effective batch is per-process batch x
processes x ``grad_accum``, and only the main process writes.
"""

from __future__ import annotations

import contextlib
import os
import statistics
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import AffectlensError
from ..modules import MatchReport, format_ranges, parse_selection
from ..params import share_text, trainable_share
from ..tasks.corpus import labelled_rows
from ..tasks.prompts import encode as encode_prompt
from ..tasks.prompts import render
from ..tasks.trained import RECORD_KEY, TrainRows
from ..tuneconfig import TuneConfig
from ..vocab import CLOSED_KINDS, TaskKind, closed_labels, infer_kind
from .full import fp32_master_weights, freeze_all_but, save_full_model
from .training import (
    IGNORE,
    collate,
    label_loss,
    lora_targets,
    train,
    trainable_by_module,
    wrap_lora,
)

METHODS = ("lora", "full")  # tune's methods: a LoRA on the modules, or their full weights

if TYPE_CHECKING:
    from ..tasks.spec import TaskSpec


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
    evaluate it directly, or call ``model.unload()`` to get the untouched base back
    (``method="full"``: the fine-tuned model itself). ``adapter_dir`` is the written
    dir: a PEFT adapter, or with ``method="full"`` an HF model dir."""

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


def resolve_data(data: str | os.PathLike | TaskSpec) -> Path:
    """The file training reads for a spec (a bundled name, a path, ``KIND:PATH,opt=...``), at its train
    split when it has one (:func:`affectlens.tasks.trained.training_spec`): what grid fingerprints."""
    from ..tasks.spec import TaskSpec
    from ..tasks.tables import data_file
    from ..tasks.trained import training_spec

    return data_file(training_spec(data if isinstance(data, TaskSpec) else str(data))[0])


def load_dataset(data: str | os.PathLike | TaskSpec, task: str | None = None) -> Dataset:
    """Rows of any task spec ``evaluate`` reads (:func:`affectlens.evaluate.loaders.load_rows`), at its
    train split when it has one (a task name, a split directory, a split column).

    ``task`` (emotion, sentiment, control/arithmetic, label) fixes the prompt
    and, for closed tasks, the allowed labels; by default it is the spec's
    kind when the spec fixes its labels (MELD, sentiment, ``labels=``, a label
    map), else inferred from the labels present. Plain JSONL rows are checked
    field by field first (a null or empty text is an error, not a prompt).
    """
    from ..claims import note as say_note
    from ..tasks.loaders import load_task
    from ..tasks.spec import TaskSpec
    from ..tasks.tables import data_file
    from ..tasks.trained import recorded_as, training_spec

    given = data if isinstance(data, TaskSpec) else str(data)
    spec, note = training_spec(given)
    if note:
        say_note(note)
    path = data_file(spec)
    if spec.loader in ("jsonl", "bundled") and not {"text", "label"} & {k for k, _ in spec.options}:
        labelled_rows(path)
    loaded = load_task(spec)
    if loaded.spec.kind == TaskKind.PERPLEXITY:
        raise AffectlensError(f"{spec.name} is plain text (ppl:); training needs labelled rows")
    rows = [{"text": e.text, "label": e.gold} for e in loaded.examples]
    found = sorted({r["label"] for r in rows})
    declared = spec.labels is not None or spec.option("labelmap") or spec.loader in ("meld", "meld_sentiment",
                                                                                      "sentiment")
    kind = (TaskKind.parse(task, CLOSED_KINDS) if task
            else TaskKind(spec.kind) if declared else infer_kind(found))
    allowed = closed_labels(kind)
    if allowed is not None:
        bad = [x for x in found if x not in allowed]
        if bad:
            raise AffectlensError(f"{path} has label(s) {', '.join(bad)} unknown to the {kind} task "
                                  f"(allowed: {', '.join(allowed)})")
    labels = tuple(allowed) if allowed is not None else tuple(found)
    return Dataset(rows, kind, labels, recorded_as(given, spec, path))


def encode(tokenizer: Any, ds: Dataset, max_length: int = 256) -> tuple[list[list[int]], list[int], int]:
    """Token ids (prompt, label, EOS) and prompt lengths of every row, by :mod:`affectlens.tasks.prompts`
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


def tune(
    base: Any,
    data: str | os.PathLike | Dataset,
    modules: str | Sequence[str] | None = None,
    *,
    config: TuneConfig | None = None,
    task: str | None = None,
    out: str | os.PathLike | None = None,
    force: bool = False,
    tokenizer: Any = None,
    base_path: str | os.PathLike | None = None,
    verbose: bool = True,
    allow_pickle: bool = False,
    threads: int | None = None,
    method: str = "lora",
    grad_accum: int = 1,
    device: str | None = None,
    dtype: str | None = None,
    **budget: Any,
) -> TuneResult:
    """Train a LoRA adapter on ``modules`` (e.g. ``"gate_proj"`` for GET) and optionally save it.

    The budget is ``config`` (default ``TuneConfig()``) with ``modules`` and any
    ``TuneConfig`` field given as a keyword (``steps=40, lr=1e-3``) replaced.
    ``base`` is anything ``models.load_model`` accepts, or an in-memory causal LM
    (then pass ``tokenizer``, and ``base_path`` so the saved adapter names its
    base). The in-memory model is modified in place (LoRA layers are injected);
    ``result.model.unload()`` removes them again.

    ``method="full"`` trains every parameter of the selected modules instead of
    a LoRA on them (all else frozen; :mod:`affectlens.tune.full`); ``result.model``
    is then the fine-tuned model itself (an in-memory base is trained in place)
    and ``out`` becomes an HF model dir.

    ``grad_accum`` splits each step into that many rounds of ``batch_size``
    examples; under ``accelerate launch`` each of the N processes trains its
    share (:mod:`affectlens.tune.distributed`), so a step sees ``batch_size x N x
    grad_accum`` examples, and only the main process writes ``out``.
    ``device`` (default: where an in-memory base is; ``auto`` for a path) and
    ``dtype`` (default ``auto``: bf16 on a GPU, fp32 on the CPU; for a base
    loaded from a path) place the run; under a launcher the device is accelerate's.

    Non-finite values never become an adapter: NaN/Inf in the base weights
    stop before training (naming the tensor and file), a non-finite loss or
    update stops at that step, and nothing is written.

    Training runs on ``threads`` torch threads when given, else on what
    :func:`affectlens.threads.apply_thread_policy` picks (the idle cores;
    ``AFFECTLENS_THREADS`` or ``OMP_NUM_THREADS`` win); the process's previous
    thread count is restored afterwards.
    """
    from ..runs import check_out_dir
    from .distributed import layout, make_accelerator

    cfg = (config or TuneConfig()).replace(**({} if modules is None else {"modules": modules}), **budget)
    if method not in METHODS:
        raise AffectlensError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if isinstance(grad_accum, bool) or not isinstance(grad_accum, int) or grad_accum < 1:
        raise AffectlensError(f"grad accum must be an integer >= 1, got {grad_accum!r}")
    accelerator = make_accelerator(device)
    main = accelerator is None or accelerator.is_main_process
    lay = layout(accelerator, cfg.batch_size, grad_accum)
    say = print if verbose and main else (lambda *a, **k: None)
    if out is not None and main:
        check_out_dir(out, force)  # fail before the expensive part
    ds = data if isinstance(data, Dataset) else load_dataset(data, task)
    say(f"training data: {ds.source} ({len(ds.rows)} rows)")
    where: dict[str, Any] = {"device": device}
    if accelerator is not None:  # FSDP shards from the CPU copy; DDP loads straight onto the rank's device
        fsdp = accelerator.distributed_type.value == "FSDP"
        where = {"device": "cpu" if fsdp else accelerator.device, "dtype_device": accelerator.device}
    model, tokenizer, base_spec, base_dir = _base_model(base, tokenizer, base_path, allow_pickle, dtype=dtype,
                                                        **where)

    paths, report = lora_targets(model, cfg.modules, cfg.layers)
    say(f"{'LoRA' if method == 'lora' else 'full fine-tuning'} targets ({len(paths)} modules):")
    say(report.table())
    ids, n_prompts, truncated = encode(tokenizer, ds, cfg.max_length)
    if truncated:
        say(f"note: {truncated} of {len(ids)} examples were longer than {cfg.max_length} tokens; "
            "their prompts were cut from the left")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    say(lay.describe())

    in_memory = not isinstance(base, str | os.PathLike)
    n_base = sum(p.numel() for p in model.parameters())  # before LoRA: the share's denominator (params')
    finish_master: Callable[[], None] | None = None
    asked_precision = cfg.precision
    if method == "lora":
        trained, target_modules = wrap_lora(model, paths, cfg)
        undo = trained.unload
    else:
        undo, trained, target_modules = freeze_all_but(model, paths), model, paths
        if accelerator is None or accelerator.distributed_type.value != "FSDP":  # FSDP: its own mixed precision
            finish_master = fp32_master_weights(model, paths)
        if finish_master is not None:  # float32 modules inside a bf16 model: the forward needs autocast
            cfg = cfg.replace(precision="bf16")
            say("full fine-tuning a bf16 model: the selected modules train in float32 (master weights) under "
                "bf16 autocast, and are saved in bf16")
    try:
        per_module = trainable_by_module(trained)
        n_train = sum(per_module.values())
        say(share_text(n_train, n_base))
        for mod, n in per_module.items():
            say(f"  {mod:<10} {n:>12,}  ({100 * n / n_train:.1f} %)")
        with training_threads(threads) as n_threads:
            stats = train(trained, ids, n_prompts, pad_id, cfg, accelerator=accelerator, grad_accum=grad_accum,
                          verbose=verbose)
    except BaseException:
        if finish_master is not None:
            finish_master()
        if in_memory:
            undo()  # hand the caller's in-memory model back as it came
        raise
    trained = stats.model
    if finish_master is not None:
        finish_master()  # the trained weights back in the model's dtype, before they are saved or returned

    losses = stats.losses
    say(f"trained {cfg.steps} steps in {stats.seconds:.1f} s ({stats.seconds_per_step:.2f} s/step, "
        f"{stats.tokens / stats.seconds:.0f} tokens/s, {stats.precision}, {n_threads} thread(s)"
        f"{'' if accelerator is None else f' x {accelerator.num_processes} processes'}); "
        f"loss {losses[0]:.4f} -> {sum(losses[-10:]) / len(losses[-10:]):.4f} (mean of last 10)")
    lora = method == "lora"
    options = {
        "base": base_spec, "data": ds.source, "task": ds.task_kind, "method": method,
        "labels": list(ds.labels), "modules": list(parse_selection(cfg.modules)),
        "layers": format_ranges(report.layers), "target_modules": target_modules,
        "rank": cfg.rank if lora else None, "alpha": cfg.alpha if lora else None,
        "dropout": cfg.dropout if lora else None, "steps": cfg.steps, "lr": cfg.lr,
        "batch_size": cfg.batch_size, "grad_accum": grad_accum, "processes": stats.layout["processes"],
        "effective_batch": stats.layout["effective_batch"], "max_length": cfg.max_length, "warmup": cfg.warmup,
        "seed": cfg.seed, "precision": asked_precision, "precision_used": stats.precision,
        "fp32_master_weights": finish_master is not None,
        "device": str(next(trained.parameters()).device), "dtype": str(next(trained.parameters()).dtype),
    }
    info = {
        "options": options, "seed": cfg.seed, "loss_curve": losses, "seconds": stats.seconds,
        "seconds_per_step": stats.seconds_per_step, "median_seconds_per_step": statistics.median(stats.step_seconds),
        "step_seconds": stats.step_seconds, "step_cpu_seconds": stats.step_cpu_seconds, "tokens_per_second": stats.tokens / stats.seconds,
        "precision": stats.precision, "attention": stats.attention, "threads": n_threads,
        "examples": len(ids), "truncated_examples": truncated, "trainable_params": n_train,
        "trainable_params_per_module": per_module, "model_params": n_base,
        "trainable_share": trainable_share(n_train, n_base), "matched_modules": len(paths),
        "layout": stats.layout, RECORD_KEY: TrainRows.of((r["text"] for r in ds.rows), ds.source).to_json(),
    }
    result = TuneResult(None, trained, tokenizer, n_train, per_module, losses, stats.seconds_per_step,
                        options, report, info)
    if out is not None:
        if main:
            if lora:
                save_adapter(result, out, force, base_spec, base_dir, cfg, stats.state_dict)
            else:
                save_full_model(result, out, force, base_dir, stats.state_dict)
            say(f"wrote {out}")
        if accelerator is not None:
            accelerator.wait_for_everyone()  # the others return once the main process has written out
        result.adapter_dir = Path(out)
    return result


@contextlib.contextmanager
def training_threads(threads: int | None) -> Iterator[int]:
    """Run the block on ``threads`` torch threads, or on the thread policy's choice; yields the
    count used and restores the previous one after (tune must not change its caller's process)."""
    import torch

    from ..threads import apply_thread_policy

    before = torch.get_num_threads()
    try:
        if threads is not None:
            if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
                raise AffectlensError(f"threads must be an integer >= 1, got {threads!r}")
            torch.set_num_threads(threads)
        else:
            apply_thread_policy()
        yield torch.get_num_threads()
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def _base_model(base: Any, tokenizer: Any, base_path: str | os.PathLike | None, allow_pickle: bool,
                device: Any = None, dtype: str | None = None, dtype_device: Any = None) -> tuple[Any, Any, str | None, Path | None]:
    """(model, tokenizer, how the base is named, its dir on disk or None) for a path or an in-memory model,
    on ``device`` (a path's default: ``auto``; an in-memory model's: where it is); ``dtype``'s ``auto``
    is resolved for ``dtype_device`` (default: ``device``)."""
    from ..models.devices import resolve_device, resolve_dtype
    from ..models.loading import (
        DEFAULT_MODEL,
        adapter_base,
        check_finite_model,
        is_adapter_dir,
        load_model,
        resolve_model_path,
    )

    spec: Any
    name: str | None
    resolved: Path | None
    if isinstance(base, str | os.PathLike):
        resolved = resolve_model_path(base)
        if resolved.is_dir() and is_adapter_dir(resolved):
            recorded = adapter_base(resolved)  # a name, a path relative to the adapter, or absolute
            named = recorded if recorded == "smollm2" else str((resolved / recorded).resolve())
            raise AffectlensError(
                f"{resolved} is a PEFT adapter, not a base model: tune trains a new adapter on a base "
                f"(this adapter's is {named}); merge it into its base first to build on it")
        dev = resolve_device(device or "auto")
        td = resolve_dtype(dtype or "auto", dtype_device or dev)
        # load_model checks the weights are finite, and spreads a model too big for one GPU over the
        # GPUs (device_map); several processes each need the whole model (DDP) or shard it (FSDP).
        model, tok = load_model(resolved, dtype=td, device=dev, allow_pickle=allow_pickle)
        spread = set(getattr(model, "hf_device_map", None) or {"": dev}.values())
        if dtype_device is not None and len(spread) > 1:
            raise AffectlensError(f"{resolved} does not fit one {dev.type} device: train it with FSDP "
                                  "(accelerate launch --use_fsdp ...) rather than DDP")
        spec = base_path or base
    else:
        model, tok = base, tokenizer
        if tok is None:
            raise AffectlensError("an in-memory base model needs its tokenizer")
        if hasattr(model, "peft_config"):
            raise AffectlensError("the base model already carries a PEFT adapter; unload it first")
        if dtype is not None:
            raise AffectlensError("dtype applies to a base loaded from a path; convert an in-memory model yourself")
        if device is not None:
            model.to(resolve_device(device))
        spec = base_path or getattr(model.config, "_name_or_path", None) or None
        resolved = None
    if spec is not None and str(spec) in (DEFAULT_MODEL, "default"):
        name, resolved = DEFAULT_MODEL, resolved or resolve_model_path(DEFAULT_MODEL)
    elif spec is not None and Path(str(spec)).exists():
        resolved = Path(str(spec)).resolve()
        name = str(resolved)
    else:
        name = None if spec is None else str(spec)
    if not isinstance(base, str | os.PathLike):
        check_finite_model(model, resolved)
    return model, tok, name, resolved


def save_adapter(result: TuneResult, out: str | os.PathLike, force: bool, base_spec: str | None,
                 base_dir: Path | None, cfg: TuneConfig, state_dict: dict[str, Any] | None = None) -> Path:
    """The adapter dir, written through ``RunDir``: PEFT files with a portable base reference
    (name or path relative to ``out``), ``affectlens_tune.json`` with the base's fingerprint,
    the loss curve and ``manifest.json``. ``state_dict``: the gathered full state under FSDP."""
    from ..models.adapters import base_fingerprint, base_reference
    from ..models.resolve import read_json_object
    from ..plots import loss_curve
    from ..runs import RunDir

    inputs: dict[str, Any] = {"data": result.options["data"]}
    if base_dir is not None:
        inputs["base"] = str(base_dir)
        result.info["base_fingerprint"] = base_fingerprint(base_dir)
    ref = base_reference(base_spec, out) if base_dir is not None and base_spec is not None else base_spec
    with RunDir(out, command="tune", force=force, inputs=inputs, options=result.options, seed=cfg.seed) as run:
        # PEFT reads the base's config while saving, so it saves with the resolved base;
        # the portable reference is written into adapter_config.json after.
        result.model.peft_config["default"].base_model_name_or_path = str(base_dir) if base_dir else ref
        result.model.save_pretrained(str(run.path), **({} if state_dict is None else {"state_dict": state_dict}))
        result.model.peft_config["default"].base_model_name_or_path = ref
        adapter_cfg = read_json_object(run.path / "adapter_config.json")
        adapter_cfg["base_model_name_or_path"] = ref
        run.json("adapter_config.json", adapter_cfg)
        run.json("affectlens_tune.json", result.info)
        if RECORD_KEY in result.info:  # the manifest names what was trained on; the digests stay in the json
            run.extra[RECORD_KEY] = {k: v for k, v in result.info[RECORD_KEY].items() if k != "hashes"}
        run.figure("loss_curve.png", loss_curve(result.loss_curve, f"LoRA {','.join(result.options['modules'])} "
                                                                   f"r={cfg.rank}"))
    return Path(out)


__all__ = ["IGNORE", "METHODS", "Dataset", "TuneConfig", "TuneResult", "collate", "encode", "label_loss", "load_dataset",
           "lora_targets", "resolve_data", "save_adapter", "save_full_model", "tune"]

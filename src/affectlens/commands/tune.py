"""``affectlens tune BASE --data FILE --modules SEL --out ADAPTER``: targeted LoRA (GET = gate_proj),
or full fine-tuning of the selected modules (``--method full``); multi-process under ``accelerate launch``."""

from __future__ import annotations

import argparse

from ..tuneconfig import PRECISIONS, TuneConfig
from ..vocab import TASK_SYNTAX
from . import options as o

MIN_MAX_LENGTH = 8  # = TuneConfig's floor for max_length
METHODS = ("lora", "full")  # = tune.METHODS (not imported: the parser must not import torch)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tune",
        help="train a LoRA adapter (or, --method full, the full weights) of chosen modules only "
             "(GET: --modules gate_proj)",
        description="Train a PEFT LoRA adapter on prompt -> label (prompt tokens masked out of the "
        "loss) with LoRA only on the selected modules/layers. Prints the matched modules and the "
        "trainable parameters per module; writes a standard PEFT adapter dir plus "
        "affectlens_tune.json, loss_curve.png and manifest.json. The adapter records its base by "
        "name or relative path plus a content fingerprint, checked when it is loaded. "
        "--method full trains the selected modules' whole weights instead (all else frozen) and writes "
        "an HF model dir. Several processes: `accelerate launch --num_processes N -m affectlens tune ...` "
        "(DDP; FSDP through accelerate's own config or --use_fsdp; on CPUs: --multi_gpu with "
        "--device cpu, or torchrun); each step then takes --batch-size x N x --grad-accum examples and "
        "the main process alone writes --out. Under a launcher accelerate's device wins over --device "
        "(each process gets its own GPU; --device cpu makes them CPU processes). --dtype sets the base "
        "weights; LoRA weights and their optimizer state stay float32.",
        epilog=TASK_SYNTAX,
    )
    p.add_argument("base", help="base model: HF dir, .gguf, or 'smollm2'")
    p.add_argument("--data", required=True,
                   help="training data: any task spec evaluate --task reads (see below): a bundled name "
                        "(emotion_train, control_train), KIND:PATH,opt=..., or a bare path; a task name "
                        "(emotion), a split directory or a file with a split column trains at its train split")
    o.modules(p)
    o.layers(p)
    kind = p.add_argument("--task-kind", default=None,
                          help="prompt and label set: emotion, sentiment, control (arithmetic), label "
                               "(default: inferred from the labels)")
    o.renamed(p, "--task", kind)
    d = TuneConfig()
    o.rank(p, help="LoRA rank r")
    o.add_number(p, "--alpha", o.number(0, lo_open=True), default=d.alpha, help="LoRA alpha; scale = alpha/r")
    o.add_number(p, "--dropout", o.number(0, 1, hi_open=True), default=d.dropout, help="LoRA dropout")
    o.add_number(p, "--steps", o.integer(1), default=d.steps, help="optimizer steps")
    o.add_number(p, "--lr", o.number(0, lo_open=True), default=d.lr, help="AdamW learning rate")
    o.add_number(p, "--warmup", o.number(0, 1, hi_open=True), default=d.warmup,
                 help="linear warm-up, as a fraction of the steps")
    p.add_argument("--method", choices=METHODS, default="lora",
                   help="lora: a LoRA adapter on the modules; full: train their whole weights (an HF model dir)")
    o.batch_size(p, d.batch_size, help="examples per forward pass and process; a step takes "
                 "batch size x processes x --grad-accum")
    o.add_number(p, "--grad-accum", o.integer(1), default=1,
                 help="gradient accumulation rounds per optimizer step")
    o.max_length(p, MIN_MAX_LENGTH, help="tokens per example; longer prompts are cut from the left")
    o.seed(p, d.seed, help="seeds LoRA init, data order and dropout")
    p.add_argument("--precision", choices=PRECISIONS, default=d.precision,
                   help="forward-pass precision: bf16 autocast, fp32, or auto = bf16 where the CPU/GPU has "
                   "native bf16")
    o.device(p)
    o.dtype(p)
    o.run_dir(p, "adapter dir (or, --method full, model dir) to create")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..tune.run import tune

    config = TuneConfig(modules=args.modules, layers=args.layers, rank=args.rank, alpha=args.alpha,
                        dropout=args.dropout, steps=args.steps, lr=args.lr, batch_size=args.batch_size,
                        seed=args.seed, max_length=args.max_length, warmup=args.warmup,
                        precision=args.precision)
    tune(args.base, args.data, config=config, task=args.task_kind, out=args.out, force=args.force,
         allow_pickle=args.allow_pickle, method=args.method, grad_accum=args.grad_accum,
         device=args.device, dtype=args.dtype)
    return 0

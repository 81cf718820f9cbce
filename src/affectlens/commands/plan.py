"""``affectlens plan MODEL|config.json --task T ...``: will a run fit, and on what (config only)."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plan",
        help="memory, fit and FLOPs of a tune/evaluate/circuits/locate run, from config.json alone",
        description="Estimate what a run needs from the model's config.json alone (no weights): "
        "weights by dtype, LoRA or full fine-tuning state, activations with and without gradient "
        "checkpointing, logits, KV cache; whether it fits the given GPUs, the smallest setup that "
        "fits (1 GPU / FSDP or device_map over N), and FLOPs per step.",
    )
    p.add_argument("model", help="config.json, model dir, .gguf file, or 'smollm2'")
    p.add_argument("--task", default="tune", choices=("tune", "evaluate", "circuits", "locate"),
                   help="which command's run to plan")
    p.add_argument("--modules", default="all", help="LoRA selection (tune), e.g. gate_proj, attn, all")
    p.add_argument("--rank", type=int, default=16, help="LoRA rank")
    p.add_argument("--method", default="lora", choices=("lora", "full"), help="tune: LoRA or full fine-tuning")
    p.add_argument("--batch-size", type=int, default=8, help="examples per step (per process)")
    p.add_argument("--seq-len", type=int, default=512, help="tokens per example")
    p.add_argument("--max-new-tokens", type=int, default=0, help="evaluate: generated tokens (KV cache)")
    p.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"), help="weights/activations")
    p.add_argument("--gradient-checkpointing", action="store_true", help="keep only layer inputs")
    p.add_argument("--gpu", help="a GPU by name, e.g. H100-80GB, A100-40GB, A10-24GB")
    p.add_argument("--gpu-mem", type=float, help="memory per GPU in GB (instead of --gpu)")
    p.add_argument("--gpus", type=int, default=1, help="GPUs to shard over (FSDP for tune, device_map else)")
    p.add_argument("--json", action="store_true", help="print one JSON object (fits, total_gb, parts...)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..plan import plan

    res = plan(args.model, task=args.task, modules=args.modules, rank=args.rank, batch_size=args.batch_size,
               seq_len=args.seq_len, dtype=args.dtype, gpu=args.gpu, gpu_mem_gb=args.gpu_mem, gpus=args.gpus,
               method=args.method, gradient_checkpointing=args.gradient_checkpointing,
               max_new_tokens=args.max_new_tokens)
    print(json.dumps(res.to_dict(), indent=2) if args.json else res.table())
    return 0

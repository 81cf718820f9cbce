"""``affectlens plan MODEL|config.json --command CMD ...``: will a run fit, and on what (config only)."""

from __future__ import annotations

import argparse

from ..tuneconfig import TuneConfig
from . import options as o

PLANNED = ("tune", "evaluate", "circuits", "locate")  # the commands whose runs plan() estimates
# --dtype: plan's short names, and the torch names that evaluate/circuits --dtype take.
DTYPES = {"bf16": "bf16", "fp16": "fp16", "fp32": "fp32",
          "bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}


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
    cmd = p.add_argument("--command", dest="planned", default="tune", choices=PLANNED, help="which command's run to plan")
    o.renamed(p, "--task", cmd)
    o.modules(p, required=False, default="all", help="LoRA selection (tune), e.g. gate_proj, attn, all")
    o.rank(p)
    p.add_argument("--method", default="lora", choices=("lora", "full"), help="LoRA, or a full fine-tune of the selected modules (affectlens tune --method full)")
    o.batch_size(p, TuneConfig().batch_size, help="examples per step (per process)")
    length = o.max_length(p)
    o.renamed(p, "--seq-len", length)
    o.add_number(p, "--max-new-tokens", o.integer(0), default=0, help="evaluate: generated tokens (KV cache)")
    p.add_argument("--dtype", default="bf16", choices=tuple(DTYPES), help="weights/activations")
    p.add_argument("--gradient-checkpointing", action="store_true", help="keep only layer inputs")
    p.add_argument("--gpu", help="a GPU by name, e.g. H100-80GB, A100-40GB, A10-24GB (default: none)")
    o.add_number(p, "--gpu-mem", o.number(0, lo_open=True),
                 help="memory per GPU in GB, instead of --gpu (default: none)")
    o.add_number(p, "--gpus", o.integer(1), default=1, help="GPUs to shard over (FSDP for tune, device_map else)")
    p.add_argument("--json", action="store_true", help="print one JSON object (fits, total_gb, parts...)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..plan import plan

    res = plan(args.model, task=args.planned, modules=args.modules, rank=args.rank, batch_size=args.batch_size,
               seq_len=args.max_length, dtype=DTYPES[args.dtype], gpu=args.gpu, gpu_mem_gb=args.gpu_mem,
               gpus=args.gpus,
               method=args.method, gradient_checkpointing=args.gradient_checkpointing,
               max_new_tokens=args.max_new_tokens)
    print(o.json_text(res.to_dict()) if args.json else res.table())
    return 0

"""``affectlens evaluate`` (affective benchmarks) and ``affectlens export-task`` (lm-eval YAML)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from ..evaluate.tasks import TASK_SYNTAX

    e = sub.add_parser(
        "evaluate",
        help="score a model on affective tasks (closed-set log-likelihood or MER-UniBench generative)",
        description="Closed mode: log-likelihood of every label after one forward pass per example; "
                    "accuracy, weighted F1 (WAF), macro F1 with bootstrap CIs. Generative mode: "
                    "MER-UniBench (open-vocabulary answer -> emotion-wheel categories -> HIT; "
                    "sentiment polarity -> WAF/accuracy). The mean is the plain mean of each task's "
                    "primary metric (perplexity tasks excluded). Writes scores.json, predictions.jsonl, "
                    "confusion_<task>.png, manifest.json.",
        epilog=TASK_SYNTAX,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    e.add_argument("model", help="HF model dir, .gguf file, PEFT adapter dir, or 'smollm2'")
    e.add_argument("--adapter", default=None, help="PEFT adapter dir applied on MODEL")
    e.add_argument("--task", action="append", dest="tasks", metavar="T",
                   help="task name or KIND:PATH[,opt=val...] (repeatable; default: emotion)")
    e.add_argument("--mode", choices=["closed", "generative"], default="closed")
    e.add_argument("--limit", type=int, default=None, help="first N examples of each task")
    e.add_argument("--batch-size", type=int, default=16)
    e.add_argument("--dtype", default="float32", help="float32 (default) or bfloat16")
    e.add_argument("--seed", type=int, default=0, help="bootstrap / generation seed (default 0)")
    e.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for CIs (0: none)")
    e.add_argument("--wheel", default=None, help="emotion-wheel mapping file (generative; default: shipped)")
    e.add_argument("--max-new-tokens", type=int, default=48, help="generative answer length")
    e.add_argument("--out", required=True, help="output run dir")
    e.add_argument("--force", action="store_true", help="replace an existing OUT")
    e.add_argument("--allow-pickle", action="store_true",
                   help="allow pickle checkpoints (pytorch_model.bin); loading them can run code")
    e.set_defaults(func=_evaluate)

    x = sub.add_parser(
        "export-task",
        help="export a task for lm-evaluation-harness (multiple_choice YAML + JSONL)",
        description="Write an lm-eval task (YAML + JSONL with our rendered prompts) so the same task "
                    "runs with lm-eval's vLLM backend. Pass --model to render the model's chat template.",
        epilog=TASK_SYNTAX,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    x.add_argument("task", help="task name or KIND:PATH[,opt=val...]")
    x.add_argument("--to", choices=["lm-eval"], default="lm-eval")
    x.add_argument("--model", default=None, help="model whose tokenizer (chat template) renders the prompts")
    x.add_argument("--limit", type=int, default=None)
    x.add_argument("--out", required=True, help="output dir")
    x.add_argument("--force", action="store_true")
    x.set_defaults(func=_export)


def _evaluate(args: argparse.Namespace) -> int:
    from ..evaluate import evaluate_run

    res = evaluate_run(args.model, args.out, args.tasks, adapter=args.adapter, mode=args.mode, limit=args.limit,
                       batch_size=args.batch_size, dtype=args.dtype, seed=args.seed, n_boot=args.bootstrap,
                       wheel=args.wheel, max_new_tokens=args.max_new_tokens, force=args.force,
                       allow_pickle=args.allow_pickle)
    print(res.table())
    print(f"-> {args.out}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from ..evaluate import export_task
    from ..models import load_tokenizer

    tok = load_tokenizer(args.model) if args.model else None
    paths = export_task(args.task, args.out, tokenizer=tok, limit=args.limit, force=args.force,
                        model_name=args.model)
    print(f"lm-eval task {paths['task']}: {paths['yaml']} (data beside it, named relative to it)")
    print(f"run: cd {args.out} && lm_eval --model hf --model_args pretrained=MODEL --include_path . "
          f"--tasks {paths['task']}")
    return 0

"""``affectlens evaluate`` (affective benchmarks) and ``affectlens export-task`` (lm-eval YAML)."""

from __future__ import annotations

import argparse

from ..vocab import CALIBRATIONS, EVAL_MODES, GEN_BACKENDS, TASK_SYNTAX
from . import options as o


def register(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser(
        "evaluate",
        help="score a model on affective tasks (closed-set log-likelihood or MER-UniBench generative)",
        description="Closed mode: log-likelihood of every label after one forward pass per example; "
                    "accuracy, weighted F1 (WAF), macro F1 with bootstrap CIs. Generative mode: "
                    "MER-UniBench (open-vocabulary answer -> emotion-wheel categories -> HIT; "
                    "sentiment polarity -> WAF/accuracy). Each task is printed beside its yardsticks "
                    "(majority class, uniform chance); the mean is of one named metric (the most common "
                    "primary metric; perplexity excluded). Writes scores.json, predictions.jsonl, "
                    "confusion.csv, per_class.csv, confusion_<task>.png, scores.npz (what `affectlens "
                    "rescore` re-decides from), manifest.json.",
        epilog=TASK_SYNTAX,
    )
    o.model(e)
    e.add_argument("--adapter", default=None, help="PEFT adapter dir applied on MODEL")
    o.task(e)
    e.add_argument("--mode", choices=EVAL_MODES, default="closed",
                   help="closed: log-likelihood of each label; generative: answer, then map it to labels")
    o.limit(e)
    o.add_number(e, "--sample", o.integer(1), default=None, metavar="N",
                 help="N rows drawn with --seed (file order kept)")
    e.add_argument("--calibration", choices=CALIBRATIONS, default="none",
                   help="closed mode: remove the label prior (contextual: content-free inputs; pmi: the "
                        "prompt without its input)")
    o.add_number(e, "--num-fewshot", o.integer(0), default=0, metavar="K",
                 help="closed mode: K solved examples from the task's train split, balanced by label")
    e.add_argument("--fewshot-from", default=None, metavar="SPEC",
                   help="task spec to draw few-shot examples from (default: the task's train split)")
    e.add_argument("--backend", choices=GEN_BACKENDS, default="hf",
                   help="generative mode: hf (transformers) or vllm (pip install 'affectlens[vllm]')")
    e.add_argument("--allow-train-overlap", action="store_true",
                   help="score rows the model or adapter was trained on (refused by default; tune records them)")
    o.batch_size(e, 16)
    o.device(e)
    o.dtype(e)
    o.seed(e, help="bootstrap / generation seed")
    o.bootstrap(e)
    e.add_argument("--wheel", default=None, help="emotion-wheel mapping file (generative; default: shipped)")
    o.add_number(e, "--max-new-tokens", o.integer(1), default=48, help="generative answer length in tokens")
    o.run_dir(e)
    e.set_defaults(func=_evaluate)

    x = sub.add_parser(
        "export-task",
        help="export a task for lm-evaluation-harness (multiple_choice YAML + JSONL)",
        description="Write an lm-eval task (YAML + JSONL with our rendered prompts) so the same task "
                    "runs with lm-eval's vLLM backend. Pass --model to render the model's chat template.",
        epilog=TASK_SYNTAX,
    )
    x.add_argument("task", help="task name or KIND:PATH[,opt=val...]")
    x.add_argument("--to", choices=["lm-eval"], default="lm-eval", help="target harness")
    x.add_argument("--model", default=None,
                   help="model whose tokenizer (chat template) renders the prompts (default: plain prompts)")
    o.limit(x, help="first N examples (default: all)")
    o.run_dir(x, "output dir", pickle=False)
    x.set_defaults(func=_export)


def _evaluate(args: argparse.Namespace) -> int:
    from ..evaluate import evaluate_run

    res = evaluate_run(args.model, args.out, args.tasks, adapter=args.adapter, mode=args.mode, limit=args.limit,
                       batch_size=args.batch_size, dtype=args.dtype, seed=args.seed, n_boot=args.bootstrap,
                       wheel=args.wheel, max_new_tokens=args.max_new_tokens, force=args.force,
                       allow_pickle=args.allow_pickle, calibration=args.calibration,
                       num_fewshot=args.num_fewshot, fewshot_from=args.fewshot_from, sample=args.sample,
                       backend=args.backend, device=args.device, allow_train_overlap=args.allow_train_overlap)
    print(res.table())
    print(f"-> {args.out}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from ..evaluate import export_task
    from ..models.loading import load_tokenizer

    tok = load_tokenizer(args.model) if args.model else None
    paths = export_task(args.task, args.out, tokenizer=tok, limit=args.limit, force=args.force,
                        model_name=args.model)
    print(f"lm-eval task {paths['task']}: {paths['yaml']} (data beside it, named relative to it)")
    print(f"run: cd {args.out} && lm_eval --model hf --model_args pretrained=MODEL --include_path . "
          f"--tasks {paths['task']}")
    return 0

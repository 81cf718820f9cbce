"""GET (LoRA on gate_proj only) vs all-module LoRA on SmolLM2 with the bundled data.

    flock /tmp/affectlens-heavy.lock python benchmarks/bench_tune.py [--steps 60] [--threads 2]

Both adapters get the identical budget (steps, rank, alpha, lr, batch, seed)
on ``emotion_train``. Measured in the same run: training seconds per step,
trainable parameters (checked against ``affectlens.params`` from config.json),
and closed-set accuracy on ``emotion_test`` and ``control_test`` (the base
model without an adapter is the zero-shot reference). Prints GET's share of
all-module LoRA's parameters, time and accuracy.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from affectlens.demo import BUDGET
from affectlens.models import default_model_dir, load_model
from affectlens.params import count_params
from affectlens.tune import tune


def score(model, tok, limit: int | None) -> dict[str, float]:
    try:
        from affectlens.evaluate import evaluate
    except ImportError:
        return {}
    res = evaluate(model, tok, ["emotion", "control"], mode="closed", limit=limit, progress=False,
                   n_boot=0)
    return {name: t["primary"] for name, t in res.scores["tasks"].items()} | {
        "metric": next(iter(res.scores["tasks"].values()))["primary_metric"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    b = BUDGET.replace(steps=60)  # the demo's budget (one TuneConfig), fewer steps
    ap.add_argument("--steps", type=int, default=b.steps)
    ap.add_argument("--rank", type=int, default=b.rank)
    ap.add_argument("--alpha", type=float, default=b.alpha)
    ap.add_argument("--lr", type=float, default=b.lr)
    ap.add_argument("--batch-size", type=int, default=b.batch_size)
    ap.add_argument("--seed", type=int, default=b.seed)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--limit", type=int, default=None, help="test examples per task (default all)")
    ap.add_argument("--json", help="also write the numbers here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    base_dir = default_model_dir()
    model, tok = load_model(base_dir)
    t0 = time.perf_counter()
    rows = {"base (zero-shot)": {"params": 0, "s_per_step": None, **score(model, tok, args.limit)}}
    eval_s = time.perf_counter() - t0
    for name, sel in (("all-module LoRA", "all"), ("GET (gate_proj)", "gate_proj")):
        config = b.replace(modules=sel, rank=args.rank, alpha=args.alpha, steps=args.steps, lr=args.lr,
                           batch_size=args.batch_size, seed=args.seed)
        res = tune(model, "emotion_train", config=config, tokenizer=tok, base_path=base_dir, verbose=False)
        expected = count_params(base_dir, sel, rank=args.rank).lora_total
        assert res.trainable_params == expected, (res.trainable_params, expected)
        curve = res.loss_curve
        rows[name] = {"params": res.trainable_params, "s_per_step": res.info["median_seconds_per_step"],
                      "s_per_step_mean": res.seconds_per_step,
                      "loss_first": curve[0], "loss_last10": sum(curve[-10:]) / 10,
                      **score(res.model, tok, args.limit)}
        model = res.model.unload()

    ref, get = rows["all-module LoRA"], rows["GET (gate_proj)"]
    print(f"SmolLM2-135M-Instruct, {args.steps} steps x batch {args.batch_size}, r={args.rank}, "
          f"alpha={args.alpha}, lr={args.lr}, seed {args.seed}, {args.threads} thread(s); "
          f"zero-shot eval took {eval_s:.0f} s")
    metric = rows["base (zero-shot)"].get("metric", "score")
    head = f"{'variant':<18} {'trainable':>10} {'s/step*':>7} {'loss->':>14} {'emotion ' + metric:>14} {'control':>9}"
    print(head)
    for name, r in rows.items():
        sps = f"{r['s_per_step']:.2f}" if r["s_per_step"] else "-"
        loss = f"{r['loss_first']:.2f}->{r['loss_last10']:.3f}" if "loss_first" in r else "-"
        print(f"{name:<18} {r['params']:>10,} {sps:>7} {loss:>14} "
              f"{r.get('emotion', float('nan')):>14.3f} {r.get('control', float('nan')):>9.3f}")
    print("* median seconds per training step (forward + backward + AdamW)")
    print(f"GET / all-module: params {100 * get['params'] / ref['params']:.1f} %, "
          f"time per step {100 * get['s_per_step'] / ref['s_per_step']:.1f} %"
          + (f", emotion {metric} {100 * get['emotion'] / ref['emotion']:.1f} %" if "emotion" in ref else ""))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()

"""Closed-set scorer vs a naive per-label scorer and lm-evaluation-harness; SmolLM2 zero-shot scores.

    flock /tmp/affectlens-heavy.lock python benchmarks/bench_evaluate.py

1. Throughput on SmolLM2-135M-Instruct and the dair-ai emotion test split
   (first --n examples, 6 labels), same prompts/labels everywhere:
   - ours: ``affectlens.evaluate.score_labels`` (one forward per prompt, batched);
   - naive: one full forward per (example, label) (on the first --naive-n examples);
   - lm-eval: its HF backend on the task written by ``export_task`` (if ``lm_eval``
     imports; e.g. ``--lmeval-python /tmp/lmeval-venv/bin/python`` runs that part in a
     venv made with ``python -m venv --system-site-packages`` + ``pip install lm-eval``).
   Prints examples/s, ratios, and whether predictions agree.
2. Zero-shot closed-set scores of SmolLM2 (float32 and bfloat16) on the bundled
   emotion test set and GoEmotions-Ekman test (first 500).
3. ``--calibration-table``: raw vs contextual vs PMI calibration vs K-shot on the
   dair-ai emotion test split (first --n; shots from its train split), with the
   majority/chance yardsticks, wall time and examples/s. The calibration costs one
   extra batch per task (3 content-free prompts, or 1 for PMI).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from affectlens.evaluate import evaluate, export_task, load_task, score_labels
from affectlens.evaluate.core import closed_prompt
from affectlens.models.loading import load_model

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
DAIR = f"jsonl:{DATA / 'dair-emotion' / 'test.jsonl'}"


def naive_scores(model, tok, prompts, labels) -> torch.Tensor:
    """One full forward per (prompt, label), batch 1: what scoring costs without reuse."""
    chat = bool(tok.chat_template)
    out = torch.zeros(len(prompts), len(labels), dtype=torch.float64)
    with torch.inference_mode():
        for i, p in enumerate(prompts):
            p_ids = tok(p, add_special_tokens=not chat).input_ids
            d = "" if p[-1].isspace() else " "
            for j, lab in enumerate(labels):
                l_ids = tok(d + lab, add_special_tokens=False).input_ids
                ids = torch.tensor([p_ids + l_ids])
                lp = model(ids).logits[0].float().log_softmax(-1)
                out[i, j] = sum(float(lp[len(p_ids) + k - 1, t]) for k, t in enumerate(l_ids))
    return out


def run_lmeval(n: int, batch_size: int, workdir: str) -> dict:
    """lm-eval (HF backend, multiple_choice) on the exported task; returns timing and per-doc argmax."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    model, tok = load_model("smollm2")
    paths = export_task(DAIR, Path(workdir) / "lmeval_task", tokenizer=tok, limit=n, force=True,
                        model_name="smollm2")
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=batch_size)
    tm = TaskManager(include_path=str(Path(workdir) / "lmeval_task"))
    t0 = time.perf_counter()
    with contextlib.chdir(paths["yaml"].parent):  # the YAML names its data relative to itself
        res = lm_eval.simple_evaluate(model=lm, tasks=[paths["task"]], task_manager=tm, log_samples=True,
                                      num_fewshot=0)
    secs = time.perf_counter() - t0
    samples = sorted(res["samples"][paths["task"]], key=lambda s: s["doc_id"])
    preds = [max(range(len(s["resps"])), key=lambda j: s["resps"][j][0][0]) for s in samples]
    lls = [[float(r[0][0]) for r in s["resps"]] for s in samples]
    return {"seconds": secs, "n": len(samples), "preds": preds, "loglik": lls,
            "acc": res["results"][paths["task"]].get("acc,none"), "version": lm_eval.__version__}


def calibration_table(model, tok, n: int, batch_size: int, shots: int) -> None:
    """Part 3: one row per scoring variant on the same examples (the issue's table, on shared data)."""
    runs = [("zero-shot raw", {}), ("contextual", {"calibration": "contextual"}), ("pmi", {"calibration": "pmi"}),
            (f"{shots}-shot", {"num_fewshot": shots}),
            (f"{shots}-shot + contextual", {"num_fewshot": shots, "calibration": "contextual"})]
    for name, kw in runs:
        t0 = time.perf_counter()
        res = evaluate(model, tok, [DAIR], limit=n, batch_size=batch_size, progress=False, n_boot=0, **kw)
        secs = time.perf_counter() - t0
        (r,) = res.tasks.values()
        m, base = r.metrics, r.baselines
        top = max(set(p["pred"] for p in res.predictions), key=[p["pred"] for p in res.predictions].count)
        share = [p["pred"] for p in res.predictions].count(top) / r.n
        print(f"{name:26s} n={r.n} acc {100 * m['accuracy']:5.1f} WAF {100 * m['weighted_f1']:5.1f} "
              f"macroF1 {100 * m['macro_f1']:5.1f} | most predicted '{top}' {100 * share:.0f}% | "
              f"{secs:6.1f} s, {r.n / secs:.2f} ex/s")
    maj, ch = base.get("majority", {}), base.get("chance", {})
    print(f"yardsticks: majority ({maj.get('class')}) acc {100 * maj.get('accuracy', 0):.1f} "
          f"WAF {100 * maj.get('weighted_f1', 0):.1f}; chance acc {100 * ch.get('accuracy', 0):.1f} "
          f"WAF {100 * ch.get('weighted_f1', 0):.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--naive-n", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lmeval-python", default=None, help="python with lm_eval (runs that part there)")
    ap.add_argument("--lmeval-only", default=None, help=argparse.SUPPRESS)  # internal: write JSON here
    ap.add_argument("--skip-lmeval", action="store_true")
    ap.add_argument("--skip-zeroshot", action="store_true")
    ap.add_argument("--calibration-table", action="store_true", help="only part 3 (raw/calibrated/few-shot)")
    ap.add_argument("--shots", type=int, default=4)
    args = ap.parse_args()
    os.environ.setdefault("AFFECTLENS_NO_PROGRESS", "1")

    if args.lmeval_only:
        with tempfile.TemporaryDirectory() as d:
            out = run_lmeval(args.n, args.batch_size, d)
        Path(args.lmeval_only).write_text(json.dumps(out))
        return

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    model, tok = load_model("smollm2")
    if args.calibration_table:
        calibration_table(model, tok, args.n, args.batch_size, args.shots)
        return
    task = load_task(DAIR, limit=args.n)
    labels = list(task.labels)
    prompts = [closed_prompt(tok, task.spec, labels, e.text) for e in task.examples]
    gold = [labels.index(e.label) for e in task.examples]
    n_tok = [len(tok(p, add_special_tokens=False).input_ids) for p in prompts]
    print(f"dair-ai emotion test, first {len(prompts)}; {len(labels)} labels {labels}; "
          f"prompt tokens mean {sum(n_tok) / len(n_tok):.1f}; label tokens "
          f"{[len(tok(lab, add_special_tokens=False).input_ids) for lab in labels]}")

    score_labels(model, tok, prompts[:4], labels, batch_size=4)  # warm-up
    t0 = time.perf_counter()
    ours = score_labels(model, tok, prompts, labels, batch_size=args.batch_size)
    t_ours = time.perf_counter() - t0
    ours_pred = ours.argmax(-1).tolist()
    eps_ours = len(prompts) / t_ours
    acc = sum(p == g for p, g in zip(ours_pred, gold, strict=True)) / len(gold)
    print(f"ours    : {eps_ours:7.2f} examples/s ({t_ours:.1f} s, batch {args.batch_size}); accuracy {acc:.4f}")

    k = min(args.naive_n, len(prompts))
    t0 = time.perf_counter()
    naive = naive_scores(model, tok, prompts[:k], labels)
    t_naive = time.perf_counter() - t0
    eps_naive = k / t_naive
    same = naive.argmax(-1).tolist() == ours_pred[:k]
    print(f"naive   : {eps_naive:7.2f} examples/s ({t_naive:.1f} s on {k}); max |Δloglik| vs ours "
          f"{(naive - ours[:k]).abs().max():.2e}; identical predictions: {same}")
    print(f"ratio ours/naive: {eps_ours / eps_naive:.1f}x (goal >= {len(labels)}x, the number of labels)")

    if not args.skip_lmeval:
        lm = None
        try:
            if args.lmeval_python:
                with tempfile.TemporaryDirectory() as d:
                    jp = Path(d) / "lmeval.json"
                    subprocess.run([args.lmeval_python, __file__, "--lmeval-only", str(jp), "--n",
                                    str(args.n), "--batch-size", str(args.batch_size)], check=True)
                    lm = json.loads(jp.read_text())
            else:
                with tempfile.TemporaryDirectory() as d:
                    lm = run_lmeval(args.n, args.batch_size, d)
        except (ImportError, subprocess.CalledProcessError) as e:
            print(f"lm-eval : not available ({type(e).__name__}: {e})")
        if lm is not None:
            eps_lm = lm["n"] / lm["seconds"]
            agree = sum(a == b for a, b in zip(lm["preds"], ours_pred, strict=True))
            d_ll = max(abs((a - a0) - (b - b0)) for la, lb in zip(lm["loglik"], ours.tolist(), strict=True)
                       for a, b, a0, b0 in zip(la, lb, [la[0]] * len(la), [lb[0]] * len(lb), strict=True))
            print(f"lm-eval : {eps_lm:7.2f} examples/s ({lm['seconds']:.1f} s, lm-eval {lm['version']}, "
                  f"HF backend, batch {args.batch_size}); acc {lm['acc']}")
            print(f"          predictions identical on {agree}/{lm['n']}; max |Δ(loglik - loglik[0])| "
                  f"{d_ll:.2e}")
            print(f"ratio ours/lm-eval: {eps_ours / eps_lm:.2f}x (goal >= 1x)")

    if not args.skip_zeroshot:
        tasks = ["emotion", f"goemotions:{DATA / 'goemotions' / 'ekman'}"]
        for dtype in ("float32", "bfloat16"):
            m, t = load_model("smollm2", dtype=dtype)
            res = evaluate(m, t, tasks, limit=500, batch_size=args.batch_size, progress=False, n_boot=1000)
            for name, r in res.tasks.items():
                mm = r.metrics
                ci = mm["ci"]["weighted_f1"]
                print(f"zero-shot {dtype:8s} {name:22s} n={r.n:3d} acc {100 * mm['accuracy']:5.1f} "
                      f"WAF {100 * mm['weighted_f1']:5.1f} [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}] "
                      f"macroF1 {100 * mm['macro_f1']:5.1f}  ({mm['examples_per_s']:.1f} ex/s)")
            del m
    sys.stdout.flush()


if __name__ == "__main__":
    main()

"""Real data in, scores with their yardsticks out: zero-shot, calibrated, few-shot, GET and all-module LoRA.

    python benchmarks/bench_real_data.py [SPEC ...] [--model smollm2] [--limit 200] [--steps 40]
        [--per-class 60] [--shots 4] [--calibration contextual] [--device auto]

Each SPEC is anything ``evaluate --task`` / ``tune --data`` take (``meld:DIR``,
``csv:isear.csv,delimiter=|,...``, a bare path). The evaluated split is the
spec's own (a directory: its test split); training and few-shot rows come
from the same data set's train split (``tasks.tables.sibling_split``), never
from the evaluated one, drawn balanced (``per_class``, seeded). Without SPECs
the shared data sets beside the project are used (dair-ai emotion, GoEmotions
Ekman, EmoBank valence), with small limits.

Per data set it prints one row per system: zero-shot closed-set scoring
(raw), calibrated (``evaluate(calibration=...)``) and few-shot
(``evaluate(num_fewshot=...)``) when this affectlens has those keywords (else
"n/a"), GET (LoRA on gate_proj only) and all-module LoRA trained with the
same budget (steps, rank, lr, batch, seed, rows), and the majority-class and
chance yardsticks of the evaluated rows -- each with accuracy, WAF, macro-F1,
what the system predicts most, wall time and examples/s (training: examples
seen per second).
"""

from __future__ import annotations

import argparse
import inspect
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
DEFAULT_SPECS = (f"{SHARED / 'dair-emotion'}", f"goemotions:{SHARED / 'goemotions' / 'ekman'}",
                 f"{SHARED / 'emobank' / 'emobank.csv'},split=test")


def _row(system: str, m: dict, pred_top: str, seconds: float, n: int) -> str:
    def pct(k: str) -> str:
        return f"{100 * m[k]:6.1f}" if k in m else "     -"

    rate = f"{n / seconds:8.1f}" if seconds > 0 else "       -"
    return (f"| {system:<30} | {pct('accuracy')} | {pct('weighted_f1')} | {pct('macro_f1')} | {pred_top:<22} "
            f"| {seconds:7.1f} | {rate} |")


def _top(res, name: str) -> str:
    preds = Counter(r["pred"] for r in res.predictions if r["task"] == name)
    if not preds:
        return "-"
    lab, k = preds.most_common(1)[0]
    return f"{lab} {k}/{sum(preds.values())}"


class _Lines(list):
    """Rows printed as they are made (a long CPU run shows progress), and kept."""

    def append(self, line: str) -> None:
        print(line, flush=True)
        super().append(line)


def bench_one(spec_text: str, model, tok, args) -> list[str]:
    from affectlens.evaluate import evaluate, load_task
    from affectlens.tasks.loaders import load_rows
    from affectlens.tasks.spec import parse_task
    from affectlens.tasks.tables import sibling_split
    from affectlens.tune.run import Dataset, tune
    from affectlens.tuneconfig import TuneConfig
    from affectlens.vocab import TaskKind

    spec = parse_task(spec_text)
    task = load_task(spec, args.limit)
    name = spec.name
    lines = _Lines()
    for head in (f"\n### {name}: {len(task.examples)} evaluated rows, labels {'/'.join(task.labels)}",
                 "| system | acc | WAF | macro-F1 | predicts most | wall s | ex/s |", "|---|---|---|---|---|---|---|"):
        lines.append(head)
    params = inspect.signature(evaluate).parameters

    def run_eval(system: str, m_model, **kw) -> None:
        t0 = time.perf_counter()
        res = evaluate(m_model, tok, [spec], limit=args.limit, n_boot=0, progress=False, seed=args.seed,
                       batch_size=args.batch_size, **kw)
        secs = time.perf_counter() - t0
        lines.append(_row(system, res.tasks[name].metrics, _top(res, name), secs, res.tasks[name].n))
        if system == "zero-shot (raw)":
            b = res.tasks[name].baselines
            if b:
                maj = b["majority"]
                lines.append(_row(f"yardstick: always '{maj['class']}'", maj, maj["class"], 0.0, 0))
                lines.append(_row("yardstick: uniform chance", b["chance"], "-", 0.0, 0))

    run_eval("zero-shot (raw)", model)
    for kw, value, label in (("calibration", args.calibration, f"calibrated ({args.calibration})"),
                             ("num_fewshot", args.shots, f"few-shot (k={args.shots})")):
        if kw in params:
            run_eval(label, model, **{kw: value})
        else:
            lines.append(f"| {label:<30} | n/a ({kw.replace('num_', '')} not available) |||||")
    train = sibling_split(spec, "train")
    if train is None:
        lines.append("| GET / all-module LoRA | n/a (the data set has no train split) |||||")
        return lines
    train = train.with_options(per_class=str(args.per_class), seed=str(args.seed))
    rows = load_rows(train)
    bad = sorted({lab for _, lab in rows} - set(task.labels))
    if bad:
        lines.append(f"| GET / all-module LoRA | n/a (train labels {bad} outside the evaluated set) |||||")
        return lines
    ds = Dataset([{"text": t, "label": lab} for t, lab in rows], TaskKind(spec.kind), task.labels, train.name)
    budget = TuneConfig(steps=args.steps, lr=args.lr, batch_size=8, max_length=128, dropout=0.0, seed=args.seed)
    for system, modules in (("GET (gate_proj LoRA)", "gate_proj"), ("all-module LoRA", "all")):
        t0 = time.perf_counter()
        result = tune(model, ds, modules, config=budget, tokenizer=tok, verbose=False)
        secs = time.perf_counter() - t0
        seen = budget.steps * budget.batch_size
        lines.append(_row(f"{system}: train", {}, f"{len(rows)} rows, {result.trainable_params:,} p", secs, seen))
        run_eval(system, result.model)
        model = result.model.unload()
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("specs", nargs="*", help="task specs or paths (default: the shared data sets)")
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--limit", type=int, default=200, help="evaluated rows per data set")
    ap.add_argument("--per-class", type=int, default=60, help="training rows per class (balanced, seeded)")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--shots", type=int, default=4)
    ap.add_argument("--calibration", default="contextual")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    from affectlens.models.loading import load_model

    t0 = time.perf_counter()
    kwargs = {"device": args.device} if "device" in inspect.signature(load_model).parameters else {}
    model, tok = load_model(args.model, **kwargs)
    print(f"model {args.model} loaded in {time.perf_counter() - t0:.1f} s")
    for spec in args.specs or DEFAULT_SPECS:
        bench_one(spec, model, tok, args)


if __name__ == "__main__":
    main()

"""The standard study profile vs the same work as separate ``tune`` + ``evaluate`` commands.

    python benchmarks/bench_study.py [--data DIR] [--seeds 1] [--limit 40] [--steps 4] [--full-steps 2]
                                     [--dtype auto]

Ours: ``affectlens study --profile standard --stages sufficiency,efficiency,necessity`` (which also runs
the adapters stage they read) on a dair-style data folder (train/validation/test.jsonl; default: the
shared dair-emotion set) with the bundled ``control_eval`` control, scaled down by the options above.

Baseline: exactly that work as a user would do it without the study, one CLI command per step, each in its
own process: per seed ``tune`` the emotion, control and full fine-tune models; for sufficiency ``transfer``
each module set and ``evaluate`` it; for efficiency ``tune`` each targeted LoRA and ``evaluate`` it; for
necessity ``ablate`` each module (and the equal-parameter control) and ``evaluate`` it; and ``evaluate``
the base and the all-module LoRA in each stage, as each stage's own table needs them. Same budgets, tasks
(test, the control, the dev split the calibration is chosen on), limit and dtype. The row's ratio is
baseline / ours wall time (goal >= 2x). Both sides run one after the other on the same machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("AFFECTLENS_SHARED", HERE.parent.parent / "shared"))
SINGLE = ("gate_proj", "up_proj", "down_proj")
TRANSFERS = {"Att.": "attn", "Att.+gate": "attn,gate_proj", "Att.+up": "attn,up_proj",
             "Att.+down": "attn,down_proj", "Att.+{gate,down}": "attn,gate_proj,down_proj",
             **{m: m for m in SINGLE}}
GROUPS = {"attn": "attn", "Att.+gate": "attn,gate_proj", "Att.+up": "attn,up_proj",
          "Att.+down": "attn,down_proj", "o+gate": "o_proj,gate_proj"}


def cli(args: list[str], log: Path) -> None:
    env = {**os.environ, "AFFECTLENS_NO_PROGRESS": "1"}
    with log.open("a") as fh:
        fh.write("$ affectlens " + " ".join(args) + "\n")
        fh.flush()
        proc = subprocess.run([sys.executable, "-m", "affectlens", *args], env=env, stdout=fh, stderr=fh,
                              check=False)
    if proc.returncode:
        sys.exit(f"bench_study: `affectlens {' '.join(args)}` failed (exit {proc.returncode}); see {log}")


def ours(tmp: Path, a: argparse.Namespace) -> float:
    cfg = {"name": "bench-study", "model": "smollm2", "data": f"jsonl:{a.data}", "control_data": "control_train",
           "tasks": [f"jsonl:{a.data},split=test"], "control_tasks": ["control_eval"],
           "profiles": {"standard": {"seeds": list(range(a.seeds)), "eval": {"limit": a.limit},
                                     "budget": {"steps": a.steps}, "full_budget": {"steps": a.full_steps}}}}
    path = tmp / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    t0 = time.perf_counter()
    cli(["study", str(path), "--profile", "standard", "--stages", "sufficiency,efficiency,necessity",
         "--dtype", a.dtype, "--out", str(tmp / "study")], tmp / "ours.log")
    return time.perf_counter() - t0


def baseline(tmp: Path, a: argparse.Namespace) -> tuple[float, int]:
    """The same work as separate commands; returns (seconds, commands run)."""
    from affectlens.study.config import STANDARD

    b = STANDARD["budget"]
    data, test = f"jsonl:{a.data}", f"jsonl:{a.data},split=test"
    dev = f"jsonl:{a.data},split=dev,per_class={STANDARD['eval']['dev_per_class']}"
    train = ["--batch-size", str(b["batch_size"]), "--max-length", str(b["max_length"]), "--rank", "8"]
    dt = ["--dtype", a.dtype]
    log, n = tmp / "baseline.log", 0
    t0 = time.perf_counter()

    def run(*args: str) -> None:
        nonlocal n
        n += 1
        cli(list(args), log)

    def score(name: str, model: str, *tasks: str, adapter: str | None = None) -> None:
        ts = [x for t in (test, *tasks, dev) for x in ("--task", t)]
        extra = ["--adapter", adapter] if adapter else []
        run("evaluate", model, *extra, *ts, "--limit", str(a.limit), "--calibration", "contextual",
            "--bootstrap", "0", "--batch-size", str(STANDARD["eval"]["batch_size"]), *dt,
            "--allow-train-overlap", "--out", str(tmp / "eval" / name))

    for s in range(a.seeds):
        d = tmp / f"s{s}"
        emo, ctl, full = str(d / "emotion"), str(d / "control"), str(d / "full")
        lora = [*train, "--lr", str(b["lr"]), "--steps", str(a.steps), "--seed", str(s)]
        run("tune", "smollm2", "--modules", "all", "--data", data, *lora, "--out", emo)
        run("tune", "smollm2", "--modules", "all", "--data", "control_train", *lora, "--out", ctl)
        run("tune", "smollm2", "--modules", "all", "--method", "full", "--data", data, *train, "--lr", "2e-5",
            "--steps", str(a.full_steps), "--seed", str(s), "--out", full)
        # sufficiency: base, all-module, each module set transferred from the all-module LoRA
        score(f"s{s}-suff-base", "smollm2", "control_eval")
        score(f"s{s}-suff-all", "smollm2", "control_eval", adapter=emo)
        for i, sel in enumerate(TRANSFERS.values()):
            run("transfer", "smollm2", emo, "--modules", sel, "--out", str(d / f"transfer{i}"))
            score(f"s{s}-suff-{i}", "smollm2", "control_eval", adapter=str(d / f"transfer{i}"))
        # efficiency: base, all-module, a LoRA on each single module and group
        score(f"s{s}-eff-base", "smollm2")
        score(f"s{s}-eff-all", "smollm2", adapter=emo)
        for i, sel in enumerate([*SINGLE, *GROUPS.values()]):
            run("tune", "smollm2", "--modules", sel, "--data", data, *lora, "--out", str(d / f"eff{i}"))
            score(f"s{s}-eff-{i}", "smollm2", adapter=str(d / f"eff{i}"))
        # necessity: all-module, each module's delta reset, the equal-parameter control
        score(f"s{s}-nec-all", "smollm2", "control_eval", adapter=emo)
        for i, m in enumerate(SINGLE):
            run("ablate", emo, "--base", "smollm2", "--modules", m, "--ablation", "zero-delta",
                "--out", str(d / f"reset{i}"))
            score(f"s{s}-nec-{i}", str(d / f"reset{i}"), "control_eval")
        run("ablate", emo, "--base", "smollm2", "--modules", "gate_proj", "--ablation", "zero-delta", "--control",
            "--seed", str(s), "--out", str(d / "reset-control"))
        score(f"s{s}-nec-control", str(d / "reset-control"), "control_eval")
    return time.perf_counter() - t0, n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=SHARED / "data" / "dair-emotion",
                    help="a folder of train/validation/test.jsonl (default: the shared dair-emotion)")
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--limit", type=int, default=40, help="scored test rows per task")
    ap.add_argument("--steps", type=int, default=4, help="LoRA steps")
    ap.add_argument("--full-steps", type=int, default=2, help="full fine-tune steps")
    ap.add_argument("--dtype", default="auto", help="both sides' --dtype")
    a = ap.parse_args()
    if not (a.data / "test.jsonl").is_file():
        sys.exit(f"bench_study: {a.data} has no test.jsonl (pass --data)")
    with tempfile.TemporaryDirectory(prefix="affectlens-bench-study-") as t:
        tmp = Path(t)
        (tmp / "a").mkdir()
        (tmp / "b").mkdir()
        t_ours = ours(tmp / "a", a)
        print(f"study (standard profile, scaled): {t_ours:.1f} s", flush=True)
        t_base, n = baseline(tmp / "b", a)
        print(f"the same work as {n} separate commands: {t_base:.1f} s", flush=True)
    ratio = t_base / t_ours
    print("BENCH " + json.dumps({
        "row": "study standard vs separate commands", "unit": "s", "ours": round(t_ours, 1),
        "baseline": round(t_base, 1), "ratio": round(ratio, 2), "goal": ">=2x", "met": ratio >= 2,
        "note": f"{a.seeds} seed(s), {a.limit} rows/task, {a.steps} LoRA steps, dtype {a.dtype}; {n} commands"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

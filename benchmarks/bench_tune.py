"""Training throughput: ``affectlens tune`` vs a plain transformers + PEFT loop, fp32 and bf16.

    python benchmarks/bench_tune.py [--steps 5] [--repeats 2] [--threads N]

Both sides train SmolLM2 (``affectlens.models.load_model("smollm2")``) on the
same encoded ``emotion_train`` examples in the same seeded batch order, with
the demo's budget (``demo.BUDGET``: all-module LoRA, batch, max length, lr,
warm-up) and AdamW, once in fp32 and once under bf16 autocast. Each run is
its own subprocess (fresh allocator, its own VmHWM); runs are interleaved
(ours/plain alternate, precisions alternate) and repeated, and the median
tokens/s is reported, per wall second and per CPU second (the ratio that load
moves least; with one thread, CPU time is the time on an idle core). Both get
the same torch thread count (by default the thread policy's choice at start,
so a busy machine is not oversubscribed).

The plain loop is what a user would write: right padding, ``labels=`` (the
HF loss over full-sequence logits), ``torch.autocast`` for bf16. Also
printed: the demo budget's seconds per step and the projected demo first
run (two adapters x ``BUDGET.steps`` steps) against the 8-minute goal. On a
shared machine the numbers are noisy; the ratios come from paired runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
DEMO_GOAL_S = 8 * 60


def vmhwm_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def plain_loop(model, ids, n_prompts, pad_id, cfg) -> tuple[list[float], list[float], list[float], int]:
    """A user's PEFT training loop: LoRA, right padding, HF ``labels=`` loss, AdamW + linear schedule."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import get_linear_schedule_with_warmup

    torch.manual_seed(cfg.seed)
    model = get_peft_model(model, LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                                             target_modules="all-linear", bias="none", task_type="CAUSAL_LM"))
    params = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    sched = get_linear_schedule_with_warmup(optim, int(cfg.warmup * cfg.steps), cfg.steps)
    gen = torch.Generator().manual_seed(cfg.seed)
    amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
    order: list[int] = []
    losses, step_s, step_cpu, tokens = [], [], [], 0
    model.train()
    for _ in range(cfg.steps):
        ts, cs = time.perf_counter(), time.process_time()
        batch = []
        while len(batch) < cfg.batch_size:
            order = order or torch.randperm(len(ids), generator=gen).tolist()
            batch.append(order.pop(0))
        seqs = [torch.tensor(ids[i]) for i in batch]
        input_ids = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=pad_id)
        attention = torch.nn.utils.rnn.pad_sequence([torch.ones_like(s) for s in seqs], batch_first=True)
        labels = input_ids.masked_fill(attention == 0, -100)
        for row, i in enumerate(batch):
            labels[row, : n_prompts[i]] = -100
        with amp:
            loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        sched.step()
        losses.append(float(loss.detach()))
        tokens += int(attention.sum())
        step_s.append(time.perf_counter() - ts)
        step_cpu.append(time.process_time() - cs)
    return losses, step_s, step_cpu, tokens


def worker(args: argparse.Namespace) -> None:
    """One measured run; prints a JSON line."""
    import torch

    from affectlens.models.loading import load_model
    from affectlens.study.demo import BUDGET
    from affectlens.tune.run import encode, load_dataset, tune

    torch.set_num_threads(args.threads)
    cfg = BUDGET.replace(steps=args.steps, batch_size=args.batch_size, max_length=args.max_length,
                         precision=args.precision)
    t0 = time.perf_counter()
    model, tok = load_model("smollm2")
    ds = load_dataset("emotion_train")
    load_s = time.perf_counter() - t0
    if args.worker == "ours":
        res = tune(model, ds, config=cfg, tokenizer=tok, base_path="smollm2", verbose=False, threads=args.threads)
        losses, step_s, step_cpu = res.loss_curve, res.info["step_seconds"], res.info["step_cpu_seconds"]
        tokens = round(res.info["tokens_per_second"] * res.info["seconds"])
    else:
        ids, n_prompts, _ = encode(tok, ds, cfg.max_length)
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
        losses, step_s, step_cpu, tokens = plain_loop(model, ids, n_prompts, pad_id, cfg)
    print(json.dumps({"losses": losses, "step_s": step_s, "step_cpu": step_cpu, "tokens": tokens,
                      "load_s": load_s,
                      "threads": torch.get_num_threads(), "vmhwm_mib": vmhwm_mib()}))


def run_one(args: argparse.Namespace, impl: str, precision: str) -> dict:
    cmd = [sys.executable, str(HERE), "--worker", impl, "--precision", precision, "--steps", str(args.steps),
           "--threads", str(args.threads), "--batch-size", str(args.batch_size), "--max-length", str(args.max_length)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode:
        sys.exit(f"{impl}/{precision} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    from affectlens.study.demo import BUDGET
    from affectlens.threads import available_cores, busy_cores, choose_threads
    from affectlens.tune.precision import resolve_precision

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=5, help="training steps per run (default: %(default)s)")
    ap.add_argument("--repeats", type=int, default=2, help="interleaved runs per row (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads for every run (default: the policy's)")
    ap.add_argument("--batch-size", type=int, default=BUDGET.batch_size)
    ap.add_argument("--max-length", type=int, default=BUDGET.max_length)
    ap.add_argument("--json", help="also write the numbers here")
    ap.add_argument("--worker", choices=("ours", "plain"), help=argparse.SUPPRESS)
    ap.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    load = busy_cores()
    if args.threads is None:
        args.threads = choose_threads(available_cores(), load)
    runs: dict[tuple[str, str], list[dict]] = {}
    t0 = time.perf_counter()
    for rep in range(args.repeats):
        for precision in (("fp32", "bf16") if rep % 2 == 0 else ("bf16", "fp32")):
            for impl in (("ours", "plain") if rep % 2 == 0 else ("plain", "ours")):
                runs.setdefault((impl, precision), []).append(run_one(args, impl, precision))

    def tps(r: dict, clock: str) -> float:  # steady state: the first step (allocator, lazy init) left out
        t = r[clock][1:] or r[clock]
        return r["tokens"] * len(t) / len(r[clock]) / sum(t)

    def median(key: tuple[str, str], f) -> float:
        return statistics.median(f(r) for r in runs[key])

    med = {k: median(k, lambda r: tps(r, "step_s")) for k in runs}  # tokens per wall second
    cpu = {k: median(k, lambda r: tps(r, "step_cpu")) for k in runs}  # per CPU-second: what load does not move
    sps = {k: median(k, lambda r: statistics.median(r["step_s"][1:] or r["step_s"])) for k in runs}
    cps = {k: median(k, lambda r: statistics.median(r["step_cpu"][1:] or r["step_cpu"])) for k in runs}
    mem = {k: max(r["vmhwm_mib"] for r in v) for k, v in runs.items()}
    print(f"SmolLM2-135M-Instruct, all-module LoRA r={BUDGET.rank}, batch {args.batch_size}, max_length "
          f"{args.max_length}, {args.steps} steps x {args.repeats} interleaved runs per row, {args.threads} "
          f"thread(s) (1-min load {load:.2f} at start; shared machine, quiet-machine numbers not available)")
    print(f"{'row':<11} {'ours tok/s':>10} {'plain tok/s':>11} {'ratio':>6} {'ours tok/CPU-s':>14} "
          f"{'plain tok/CPU-s':>15} {'ratio':>6} {'goal':>5} {'ours s/step':>11} {'ours MiB':>9} {'plain MiB':>9}")
    for precision in ("fp32", "bf16"):
        o, p = ("ours", precision), ("plain", precision)
        print(f"{'tune ' + precision:<11} {med[o]:>10.0f} {med[p]:>11.0f} {med[o] / med[p]:>5.2f}x {cpu[o]:>14.0f} "
              f"{cpu[p]:>15.0f} {cpu[o] / cpu[p]:>5.2f}x {'>=1x':>5} {sps[o]:>11.2f} {mem[o]:>9.0f} {mem[p]:>9.0f}")
    o, p = ("ours", "bf16"), ("ours", "fp32")
    print(f"{'bf16/fp32':<11} {med[o]:>10.0f} {med[p]:>11.0f} {med[o] / med[p]:>5.2f}x {cpu[o]:>14.0f} "
          f"{cpu[p]:>15.0f} {cpu[o] / cpu[p]:>5.2f}x   (ours, bf16 autocast vs fp32)")
    fp32_gap = [abs(a - b) for r, s in zip(runs["ours", "fp32"], runs["plain", "fp32"], strict=True)
                for a, b in zip(r["losses"], s["losses"], strict=True)]
    print(f"fp32 loss curves ours vs plain: max |diff| {max(fp32_gap):.2e} (same math, summed in another order)")

    auto = resolve_precision(BUDGET.precision)
    load_s = statistics.median(r["load_s"] for r in runs["ours", auto])
    projected = 2 * BUDGET.steps * sps["ours", auto] + load_s
    # On idle cores a step takes its CPU time spread over the threads (an upper bound for threads > 1:
    # they never scale perfectly, and CPU time counts all of them).
    idle = 2 * BUDGET.steps * cps["ours", auto] / args.threads + load_s
    print(f"demo budget (precision {BUDGET.precision} -> {auto} here): {sps['ours', auto]:.2f} s/step wall, "
          f"{cps['ours', auto]:.2f} CPU-s/step; demo first run = 2 x {BUDGET.steps} steps + load: "
          f"{projected / 60:.1f} min at this run's wall speed, ~{idle / 60:.1f} min on {args.threads} idle core(s) "
          f"(from CPU-s) vs goal <= {DEMO_GOAL_S / 60:.0f} min on 2 idle cores "
          f"({'met' if idle <= DEMO_GOAL_S else 'NOT met'}; locate afterwards not included) "
          f"[bench took {time.perf_counter() - t0:.0f} s]")
    if args.json:
        keyed = {name: {f"{a}/{b}": v for (a, b), v in d.items()}
                 for name, d in (("tokens_per_s", med), ("tokens_per_cpu_s", cpu), ("s_per_step", sps),
                                 ("cpu_s_per_step", cps), ("vmhwm_mib", mem))}
        Path(args.json).write_text(json.dumps({"args": vars(args), **keyed, "projected_demo_s": projected,
                                               "projected_demo_idle_s": idle}, indent=2))


if __name__ == "__main__":
    main()

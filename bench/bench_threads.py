"""How much do CPU threads buy? The trainer's step (bench_train's `ours`) at 1, 2, ... and all cores, alternated.

`accelerate launch` without `--cpu` gives the script one thread; the trainer takes every core when nobody chose a
count (`state.choose_cpu_threads`). This measures what that is worth: per round, one worker process per thread count
(in a rotated order) times the same steps of the small UNet at 32 px, batch 16 (the default recipe's), and the
speed-up is the per-round ratio against one thread, median over rounds. Run it on a quiet machine: a busy neighbour
makes more threads slower (bench/README.md).

    .venv/bin/python bench/bench_threads.py [--precisions no,bf16] [--rounds 3] [--threads 1,2,4]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_train import run_worker  # noqa: E402


def physical_cores() -> int:
    try:
        import psutil

        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:
        return os.cpu_count() or 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="small:32:16", help="preset:resolution:batch")
    parser.add_argument("--precisions", default="no,bf16", help="comma-separated: no (fp32), bf16")
    parser.add_argument("--threads", help="comma-separated thread counts (default: 1, 2, 4, ... and all cores)")
    parser.add_argument("--rounds", type=int, default=3, help="alternated rounds (one worker per count per round)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per worker")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny preset, 1 round of 1 step")
    args = parser.parse_args(argv)
    cores = physical_cores()
    counts = sorted({int(n) for n in args.threads.split(",")} if args.threads else {1, cores, *[2**k for k in range(1, 8) if 2**k < cores]})  # fmt: skip
    if args.quick:
        args.config, args.rounds, args.steps = "tiny:16:4", 1, 1
    worker_args = argparse.Namespace(rounds=1, steps=args.steps, warmup=2, seed=0, memory_steps=0, threads=None)

    print(f"Training step of the trainer (bench_train's `ours`), {args.config}, {cores} physical cores; per round one "
          f"worker per thread count, rotated; {args.rounds} round(s) of {args.steps} steps; speed-up = median per-round "
          "ratio against 1 thread.\n")  # fmt: skip
    print(f"| precision | threads | step s (median) | images/s | speed-up vs {counts[0]} thread(s) |")
    print("|---|---|---|---|---|")
    for precision in [p for p in args.precisions.split(",") if p]:
        seconds: dict[int, list[float]] = {n: [] for n in counts}
        for r in range(args.rounds):
            for n in counts[r % len(counts) :] + counts[: r % len(counts)]:
                worker_args.threads = n
                result = run_worker(worker_args, "timing", args.config, precision, ["ours"])
                seconds[n].append(result["variants"]["ours"]["step_seconds"])
        batch = int(args.config.split(":")[2])
        for n in counts:
            ratios = [one / mine for one, mine in zip(seconds[counts[0]], seconds[n])]
            step = statistics.median(seconds[n])
            name = "fp32" if precision == "no" else precision
            print(f"| {name} | {n} | {step:.3f} | {batch / step:,.0f} | {statistics.median(ratios):.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Run every benchmark and print one markdown report: the machine, a summary table, then each benchmark's tables.

    .venv/bin/python -m bench.run_all    # or: .venv/bin/python bench/run_all.py
    .venv/bin/python -m bench.run_all --quick    # smoke run of everything (seconds to minutes; figures meaningless)

Each benchmark runs in its own process (the training benchmark starts one more per configuration: Accelerate allows
one precision per process). All speed figures are ratios against a reference measured in the same run, alternated;
absolute times are for orientation only (they depend on the machine and on its load).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path


BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent


def machine_line(threads: int | None = None) -> str:
    import torch

    cpu, flags = platform.processor() or "unknown CPU", []
    try:
        text = Path("/proc/cpuinfo").read_text()
        for line in text.splitlines():
            if line.startswith("model name") and cpu == (platform.processor() or "unknown CPU"):
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = line.split(":", 1)[1].split()
    except OSError:
        pass
    isa = " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    load = f"{os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "?"
    return (
        f"{cpu} ({isa}), {os.cpu_count()} cores, {threads or torch.get_num_threads()} torch threads, torch {torch.__version__}, "
        f"{gpu}, Python {platform.python_version()}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, "
        f"load average {load} at start"
    )


def run(name: str, command: list[str]) -> tuple[str, float, int]:
    start = time.perf_counter()
    print(f"[running {name}: {' '.join(command[1:])}]", file=sys.stderr, flush=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env)
    output = proc.stdout.strip()
    if proc.returncode:
        output += f"\n\n**{name} failed (exit {proc.returncode})**:\n```\n{proc.stderr[-3000:]}\n```"
    return output, time.perf_counter() - start, proc.returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run of every benchmark")
    parser.add_argument("--skip", default="", help="comma-separated: train, sampling, data, hub-data")
    parser.add_argument("--threads", type=int, help="torch threads for the training and sampling benchmarks")
    parser.add_argument("--train-args", default="", help="extra arguments for bench_train.py (one string)")
    parser.add_argument("--sampling-args", default="", help="extra arguments for bench_sampling.py (one string)")
    args = parser.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    python = sys.executable
    threads = [f"--threads={args.threads}"] if args.threads else []
    sections, summary, failed = [], [], 0

    with tempfile.TemporaryDirectory() as tmp:
        if "train" not in skip:
            out = os.path.join(tmp, "train.json")
            command = [python, str(BENCH / "bench_train.py"), f"--json={out}", *threads, *args.train_args.split()]
            if args.quick:
                command.append("--quick")
            text, seconds, rc = run("bench_train.py", command)
            failed += bool(rc)
            sections.append(("Training throughput (bench/bench_train.py)", text, seconds))
            if not rc:
                for row in json.loads(Path(out).read_text())["rows"]:
                    precision = "fp32" if row["precision"] == "no" else row["precision"]
                    if row["variant"] == "ours":
                        label, value = "ours vs reference, same UNet", row["x_reference"]
                    elif row["variant"] == "reference:heads=8":
                        label, value = "ours vs reference with the example's attention_head_dim=8", 1 / row["x_ours"]
                    elif row["variant"] == "ours:compile=1":
                        label, value = "ours --compile vs reference, same UNet", row["x_reference"]
                    else:
                        continue
                    summary.append((f"train {row['config']} {precision}: {label}", f"{value:.2f}x img/s"))
                    if row["variant"] == "ours":
                        summary.append((f"train {row['config']} {precision}: ours, utilisation of matmul peak",
                                        f"{row['utilisation']:.0%}"))  # fmt: skip
        if "sampling" not in skip:
            out = os.path.join(tmp, "sampling.json")
            command = [python, str(BENCH / "bench_sampling.py"), f"--json={out}", *threads]
            if args.quick:
                command += ["--steps=2", "--batch-sizes=1", "--rounds=1", "--ddpm-steps=1", "--no-grid"]
            command += args.sampling_args.split()
            text, seconds, rc = run("bench_sampling.py", command)
            failed += bool(rc)
            sections.append(("Sampling (bench/bench_sampling.py)", text, seconds))
            if not rc:
                figures = json.loads(Path(out).read_text())
                for batch, overhead in figures["overhead"].items():
                    summary.append((f"sampling overhead over bare UNet calls, batch {batch}", f"{overhead:+.1%}"))
                for batch, overhead in figures.get("overhead_vs_step", {}).items():
                    summary.append((f"sampling overhead over UNet calls + scheduler.step, batch {batch}",
                                    f"{overhead:+.1%}"))  # fmt: skip
                for batch, speed in figures["vs_ddpm_pipeline"].items():
                    summary.append((f"sampling vs diffusers DDPMPipeline, batch {batch}", f"{speed:.2f}x"))
                for name, (seconds_to_grid, how) in figures["grid"].items():
                    summary.append((f"64-image grid, {name} steps", f"{seconds_to_grid:.0f} s ({how})"))
        data_script = BENCH / "bench_data.py"
        if "data" not in skip and data_script.exists():
            command = [python, str(data_script)]
            if args.quick:
                command += ["--images=64", "--steps=1", "--repeats=1"]
            text, seconds, rc = run("bench_data.py", command)
            failed += bool(rc)
            sections.append(("Data loading (bench/bench_data.py)", text, seconds))
        if "hub-data" not in skip:
            command = [python, str(BENCH / "bench_hub_data.py"), *(["--quick"] if args.quick else [])]
            text, seconds, rc = run("bench_hub_data.py", command)
            failed += bool(rc)
            sections.append(("Streaming from the Hub look-alike vs local parquet (bench/bench_hub_data.py)", text, seconds))  # fmt: skip

    print("# anime-ddpm benchmarks\n")
    print(f"Machine: {machine_line(args.threads)}.\n")
    if summary:
        print("| measure | result |\n|---|---|")
        for label, value in summary:
            print(f"| {label} | {value} |")
        print()
    for title, text, seconds in sections:
        print(f"## {title}\n\n_{seconds:.0f} s_\n\n{text}\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

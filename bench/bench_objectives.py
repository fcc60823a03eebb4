"""DDPM vs Improved DDPM objectives: does a cosine schedule + learned variance (hybrid loss) sample better, and in
fewer steps, than the linear schedule with fixed variance?

Trains the same UNet (default: the `tiny` preset at 32 px) on the embedded emoji faces for the same number of
optimiser steps, same seed, batch and learning rate, twice, each through a real
`accelerate launch --num_processes 1 --mixed_precision no train_with_accelerate.py ...` subprocess:
  (a) linear betas, fixed_small variance, epsilon target, L_simple               (Ho et al. 2020)
  (b) cosine betas (squaredcos_cap_v2), learned_range variance, epsilon target,
      hybrid loss L_simple + 0.001 L_vlb                                         (Nichol & Dhariwal 2021)
then samples N images from each saved pipeline (EMA weights) with its saved DDPMScheduler at 1000 steps (the whole
chain) and at 50 respaced steps (DDPMScheduler, num_inference_steps=50: for (b) the learned variance interpolates
the respaced beta_t and posterior variance), with the same seeds for every row, and measures SWD (x1e3, Progressive
GAN's definition, anime_ddpm.metrics) against the held-out emoji test split (64 images). As a floor, 64 training
images are scored against the same test images.

    .venv/bin/python bench/bench_objectives.py [--steps 1000] [--num-images 64] [--output-dir DIR] [--keep]

Prints markdown tables and the settings, writes DIR/results.json and a grid of both configs at both step counts
(--grid, default DIR/bench_objectives.png). The trained pipelines are deleted at the end unless --keep is given
(--skip-training reuses them).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch


ROOT = Path(__file__).resolve().parents[1]
CONFIGS: dict[str, dict] = {
    "a": {
        "label": "(a) linear, fixed_small, epsilon, L_simple",
        "short": "(a) linear/fixed",
        "flags": [
            "--ddpm_beta_schedule",
            "linear",
            "--variance_type",
            "fixed_small",
            "--prediction_type",
            "epsilon",
            "--weighting_scheme",
            "none",
            "--input_perturbation",
            "0",
        ],  # fmt: skip
    },
    "b": {
        "label": "(b) cosine, learned_range, epsilon, hybrid loss",
        "short": "(b) cosine/learned",
        "flags": [
            "--ddpm_beta_schedule",
            "squaredcos_cap_v2",
            "--variance_type",
            "learned_range",
            "--prediction_type",
            "epsilon",
            "--weighting_scheme",
            "none",
            "--input_perturbation",
            "0",
        ],  # fmt: skip
    },
}
TEST_IMAGES = 64  # the emoji test split
TRAIN_IMAGES = 571  # the emoji train split


def accelerate_launch() -> list[str]:
    """`accelerate launch` of one CPU-or-GPU process, from this interpreter's environment when it has one."""
    accelerate = Path(sys.executable).with_name("accelerate")
    return [str(accelerate) if accelerate.exists() else "accelerate", "launch", "--num_processes", "1",
            "--num_machines", "1", "--dynamo_backend", "no"]  # fmt: skip


def start_run(name: str, command: list[str], run_dir: Path, env: dict[str, str]) -> subprocess.Popen:
    """Start a training command in a subprocess, its output in `run_dir`.log; `wait_for_run` collects it."""
    log_path = run_dir.with_suffix(".log")
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    print(f"[{name}] training: {shlex.join(command)}", flush=True)
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    process.started = time.perf_counter()  # type: ignore[attr-defined]
    return process


def wait_for_run(name: str, process: subprocess.Popen, run_dir: Path) -> dict:
    """Wait for a run started by `start_run`; exit with its log's tail if it failed; its summary.json."""
    returncode = process.wait()
    log_path = run_dir.with_suffix(".log")
    if returncode != 0 or not (run_dir / "summary.json").is_file():
        text = log_path.read_text(errors="replace")
        sys.exit(f"[{name}] training failed (exit {returncode}); last lines of {log_path}:\n{text[-3000:]}")
    return json.loads((run_dir / "summary.json").read_text())


def train(args: argparse.Namespace, name: str, run_dir: Path) -> subprocess.Popen:
    """Start one training run in a subprocess; `finish` waits for it."""
    if args.launcher == "accelerate":
        launcher = [*accelerate_launch(), "--mixed_precision", "no"]
    else:
        launcher = [sys.executable]
    command = [
        *launcher,
        str(ROOT / "train_with_accelerate.py"),
        *CONFIGS[name]["flags"],
        "--dataset", "emoji",
        "--model", args.model,
        "--resolution", str(args.resolution),
        "--train_batch_size", str(args.batch_size),
        "--max_train_steps", str(args.steps),
        "--learning_rate", str(args.learning_rate),
        "--lr_warmup_steps", str(args.lr_warmup_steps),
        "--seed", str(args.seed),
        "--mixed_precision", args.mixed_precision,
        "--checkpointing_steps", str(10**9),
        "--save_images_steps", "0",
        "--num_samples", "4",  # the trainer's own samples.png: keep it cheap, the benchmark samples itself
        "--eval_batch_size", "4",
        "--logger", "none",
        "--output_dir", str(run_dir),
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return start_run(name, command, run_dir, env)


def finish(args: argparse.Namespace, name: str, run_dir: Path, process: subprocess.Popen) -> dict:
    """Wait for a run; returns the steps, the trainer's own loop time and the wall time."""
    summary = wait_for_run(name, process, run_dir)
    wall = time.perf_counter() - process.started  # type: ignore[attr-defined]
    steps, loop_seconds, loss = summary["steps"], summary["seconds"], summary["final_loss"]
    print(
        f"[{name}] trained {steps} steps: loop {loop_seconds:.0f} s, wall {wall:.0f} s, final loss {loss:.4f}",
        flush=True,
    )
    return {"steps": steps, "train_seconds": loop_seconds, "wall_seconds": wall, "final_loss": loss}


def real_training_images(resolution: int, count: int) -> torch.Tensor:
    """As many training images as held-out ones, spread evenly over the (name-sorted) training split: the floor."""
    from anime_ddpm.data import DataConfig, take_images

    train_all = take_images(DataConfig(dataset="emoji", split="train", resolution=resolution, shuffle_buffer=0),
                            TRAIN_IMAGES)  # fmt: skip
    return train_all[torch.linspace(0, len(train_all) - 1, count).round().long()]


def comparison_grid(rows: list[tuple[str, torch.Tensor]], held_out: torch.Tensor, columns: int, title: str,
                    group_rows: int):  # fmt: skip
    """One labelled row per (label, images in [-1, 1]), then the held-out images."""
    from anime_ddpm import viz

    rows = [*rows, ("held-out emoji (real)", held_out)]
    images = [viz.to_pil((batch[:columns] + 1) / 2, scale=2) for _, batch in rows]
    return viz.labelled_table(images, row_labels=[label for label, _ in rows], title=title, group_rows=group_rows)


def swd(samples: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """SWD x1e3 per level and avg; with more samples than reference images, averaged over disjoint chunks."""
    from anime_ddpm.metrics import sliced_wasserstein_distance

    m = min(len(samples), len(reference))
    chunks = [samples[i : i + m] for i in range(0, len(samples) - m + 1, m)]
    results = [sliced_wasserstein_distance(chunk, reference[:m]) for chunk in chunks]
    return {key: sum(r[key] for r in results) / len(results) for key in results[0]}


def level_keys(result: dict[str, float]) -> list[str]:
    return [key for key in result if key != "avg"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1000, help="optimiser steps of each training run")
    parser.add_argument("--num-images", type=int, default=64, help="samples per config and sampler step count")
    parser.add_argument("--output-dir", default=str(ROOT / "outputs" / "bench-objectives"), help="(git-ignored)")
    parser.add_argument("--keep", action="store_true", help="keep the trained pipelines in --output-dir/runs")
    parser.add_argument("--skip-training", action="store_true", help="reuse the pipelines of an earlier --keep run")
    parser.add_argument("--grid", default=None, help="default: --output-dir/bench_objectives.png")
    parser.add_argument("--grid-columns", type=int, default=12)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--lr-warmup-steps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0, help="training seed; sample i uses seed + i")
    parser.add_argument("--sample-steps", default="1000,50", help="DDPM sampling step counts (respaced)")
    parser.add_argument("--sample-batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads here and in the trainer (busy machine)")
    parser.add_argument(
        "--sample-threads", type=int, default=None, help="torch threads for sampling (default --threads)"
    )
    parser.add_argument("--parallel", type=int, default=2, help="training runs at once (same load for both)")
    parser.add_argument("--mixed-precision", default="no", choices=("no", "bf16"), help="of both training runs")
    parser.add_argument("--launcher", choices=("accelerate", "python"), default="accelerate")
    parser.add_argument("--configs", default="a,b", help="which of the configs to run")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    output_dir = Path(args.output_dir).resolve()
    grid_path = Path(args.grid) if args.grid else output_dir / "bench_objectives.png"
    names = [name.strip() for name in args.configs.split(",")]
    sample_steps = [int(s) for s in args.sample_steps.split(",")]

    from anime_ddpm.data import DataConfig, take_images
    from anime_ddpm.sampling import generate, load_pipeline

    # ------------------------------------------------------------------------- train
    runs_dir = output_dir / "runs"
    training: dict[str, dict] = {}
    running: list[tuple[str, Path, subprocess.Popen]] = []
    for name in names:
        run_dir = runs_dir / name
        if args.skip_training:
            if not (run_dir / "model_index.json").exists():
                sys.exit(f"--skip-training: no pipeline in {run_dir} (run once with --keep).")
            config = json.loads((run_dir / "training_config.json").read_text())
            training[name] = {"steps": config.get("max_train_steps"), "train_seconds": None, "wall_seconds": None}
        else:
            if run_dir.exists():
                shutil.rmtree(run_dir)
            if len(running) >= args.parallel:
                done_name, done_dir, process = running.pop(0)
                training[done_name] = finish(args, done_name, done_dir, process)
            running.append((name, run_dir, train(args, name, run_dir)))
    for done_name, done_dir, process in running:
        training[done_name] = finish(args, done_name, done_dir, process)

    torch.set_num_threads(args.sample_threads or args.threads)
    # ------------------------------------------------------------------------- references
    data = dict(dataset="emoji", resolution=args.resolution, shuffle_buffer=0)
    held_out = take_images(DataConfig(split="test", **data), TEST_IMAGES)  # all 64 held-out images, [-1, 1]
    train_real = real_training_images(args.resolution, len(held_out))

    # ------------------------------------------------------------------------- sample and score
    samples: dict[tuple[str, int], torch.Tensor] = {}
    scores: dict[str, dict[int, dict[str, float]]] = {}
    sample_seconds: dict[str, dict[int, float]] = {}
    for name in names:
        pipe = load_pipeline(str(runs_dir / name), device="cpu")
        pipe.set_progress_bar_config(disable=True)
        scheduler_config = dict(pipe.scheduler.config)
        print(f"[{name}] saved scheduler: {type(pipe.scheduler).__name__} beta_schedule="
              f"{scheduler_config['beta_schedule']} variance_type={scheduler_config['variance_type']} "
              f"prediction_type={scheduler_config['prediction_type']}", flush=True)  # fmt: skip
        scores[name], sample_seconds[name] = {}, {}
        for steps in sample_steps:
            start = time.perf_counter()
            images = generate(pipe, args.num_images, seed=0, batch_size=args.sample_batch_size,
                              num_inference_steps=steps)  # fmt: skip
            sample_seconds[name][steps] = time.perf_counter() - start
            samples[name, steps] = images * 2 - 1
            scores[name][steps] = swd(samples[name, steps], held_out)
            print(f"[{name}] {steps} DDPM steps: {sample_seconds[name][steps]:.0f} s, "
                  f"SWD avg {scores[name][steps]['avg']:.1f}", flush=True)  # fmt: skip
    floor = swd(train_real, held_out)

    # ------------------------------------------------------------------------- report
    settings = {
        "model": args.model,
        "resolution": args.resolution,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "lr_schedule": f"cosine, {args.lr_warmup_steps} warm-up steps",
        "ema": "on (pipelines hold the EMA weights)",
        "seed": args.seed,
        "train_steps": sorted({training[name]["steps"] for name in names}),
        "launcher": args.launcher,
        "threads": args.threads,
        "parallel_runs": args.parallel,
        "mixed_precision": args.mixed_precision,
        "num_images": args.num_images,
        "reference": f"emoji test split, {len(held_out)} images",
        "sampler": "the saved DDPMScheduler, 'leading' spacing; sample i seeded with i",
        "sample_steps": sample_steps,
    }
    lines = [f"| config | steps trained | train time | {' | '.join(f'SWD@{s}' for s in sample_steps)} |"]
    lines.append("|---" * (3 + len(sample_steps)) + "|")
    for name in names:
        seconds = training[name]["train_seconds"]
        time_cell = f"{seconds / 60:.1f} min" if seconds is not None else "(reused)"
        cells = " | ".join(f"{scores[name][s]['avg']:.1f}" for s in sample_steps)
        lines.append(f"| {CONFIGS[name]['label']} | {training[name]['steps']} | {time_cell} | {cells} |")
    floor_cells = " | ".join(f"{floor['avg']:.1f}" for _ in sample_steps)
    lines.append(f"| real training images (floor) | - | - | {floor_cells} |")
    summary = "\n".join(lines)

    levels = level_keys(floor)
    detail = [f"| config | DDPM steps | avg | {' | '.join(f'{k} px' for k in levels)} | sampling time |"]
    detail.append("|---" * (4 + len(levels)) + "|")
    for name in names:
        for s in sample_steps:
            cells = " | ".join(f"{scores[name][s][k]:.1f}" for k in levels)
            detail.append(f"| {CONFIGS[name]['short']} | {s} | {scores[name][s]['avg']:.1f} | {cells} | "
                          f"{sample_seconds[name][s]:.0f} s |")  # fmt: skip
    detail.append(f"| real training images | - | {floor['avg']:.1f} | "
                  f"{' | '.join(f'{floor[k]:.1f}' for k in levels)} | - |")  # fmt: skip
    detail_text = "\n".join(detail)

    # ------------------------------------------------------------------------- grid
    rows = [(f"{CONFIGS[name]['short']}, {s} steps: SWD {scores[name][s]['avg']:.1f}", samples[name, s])
            for name in names for s in sample_steps]  # fmt: skip
    trained_steps = "/".join(sorted({str(t["steps"]) for t in training.values()}))
    title = (
        f"{args.model} UNet, {args.resolution} px, {trained_steps} training steps each; DDPM; same seeds per column"
    )
    grid = comparison_grid(rows, held_out, min(args.grid_columns, args.num_images), title, len(sample_steps))
    grid_path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(grid_path)

    report = {
        "settings": settings,
        "configs": {name: CONFIGS[name] for name in names},
        "training": training,
        "swd": {name: {str(s): scores[name][s] for s in sample_steps} for name in names},
        "swd_real_training_images": floor,
        "sample_seconds": {name: {str(s): v for s, v in sample_seconds[name].items()} for name in names},
        "grid": str(grid_path),
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "results.json").write_text(json.dumps(report, indent=2))
    if not args.keep and not args.skip_training:
        shutil.rmtree(runs_dir, ignore_errors=True)

    print("\nSettings: " + "; ".join(f"{k}={v}" for k, v in settings.items()))
    print("\nSWD x1e3 against the held-out emoji test images (lower is better):\n")
    print(summary)
    print("\nPer pyramid level:\n")
    print(detail_text)
    print(f"\ngrid: {grid_path}; results: {output_dir / 'results.json'}")


if __name__ == "__main__":
    main()

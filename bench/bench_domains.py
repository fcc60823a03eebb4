"""One model, two worlds: does a domain-conditioned DDPM sample each domain from its own source?

Trains (through `train_with_accelerate.py --condition_on_source`) one small UNet on the mixture
"emoji-smileys:0.5,emoji-people:0.5" at 32 px for a few minutes on the CPU, then from that one model:
- draws the same seeds in each domain, with and without classifier-free guidance, plus the null (unconditional)
  label, and saves them with rows of real images as docs/domains.png;
- measures SWD (x1e3, Progressive GAN settings, anime_ddpm.metrics) of each domain's samples against each source's
  images, on the held-out test split (11 smileys, so SWD over 11 images, averaged over disjoint chunks of the
  samples) and on as many training images as samples. Each domain should be closer to its own source (the diagonal).

    .venv/bin/python bench/bench_domains.py [--max_train_steps 600] [--threads 1] [--skip_training]

Prints markdown tables and writes outputs/bench-domains/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch


ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("emoji-smileys", "emoji-people")
MIXTURE = ",".join(f"{name}:0.5" for name in SOURCES)


def train(args: argparse.Namespace, output_dir: Path) -> float:
    command = [
        sys.executable,
        str(ROOT / "train_with_accelerate.py"),
        "--dataset", MIXTURE,
        "--condition_on_source",
        "--class_dropout_prob", str(args.class_dropout_prob),
        "--model", args.model,
        "--resolution", str(args.resolution),
        "--train_batch_size", str(args.batch_size),
        "--max_train_steps", str(args.max_train_steps),
        "--learning_rate", str(args.learning_rate),
        "--lr_warmup_steps", "50",
        "--random_flip",
        "--checkpointing_steps", str(10**9),
        "--save_images_steps", str(10**9),
        "--eval_batch_size", "16",
        "--num_samples", "16",
        "--logger", "none",
        "--seed", "0",
        "--output_dir", str(output_dir),
        "--overwrite_output_dir",
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT, env=env)
    return time.perf_counter() - start


def real_images(split: str, n: int, resolution: int) -> dict[str, torch.Tensor]:
    """n images of each source, evenly spread over its (name-sorted) split, so not n variants of one emoji."""
    from anime_ddpm.data import DataConfig, take_images

    result = {}
    for name in SOURCES:
        images = take_images(DataConfig(dataset=name, split=split, resolution=resolution, shuffle_buffer=0), 10**4)
        result[name] = images[torch.linspace(0, len(images) - 1, min(n, len(images))).round().long()]
    return result


def swd_table(samples: dict[str, torch.Tensor], references: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    """SWD avg of each row's samples against each reference set, averaged over disjoint chunks of len(reference)."""
    from anime_ddpm.metrics import sliced_wasserstein_distance

    table: dict[str, dict[str, float]] = {}
    for row, images in samples.items():
        table[row] = {}
        for name, reference in references.items():
            m = len(reference)
            chunks = [images[i : i + m] for i in range(0, len(images) - m + 1, m)]
            values = [sliced_wasserstein_distance(chunk, reference)["avg"] for chunk in chunks]
            table[row][name] = sum(values) / len(values)
    return table


def markdown(table: dict[str, dict[str, float]], title: str) -> str:
    columns = list(next(iter(table.values())))
    lines = [f"| {title} | " + " | ".join(f"vs {c}" for c in columns) + " | own source closer? |"]
    lines.append("|---" * (len(columns) + 2) + "|")
    for row, values in table.items():
        own = next((c for c in columns if c in row), None)
        verdict = "" if own is None else ("yes" if values[own] == min(values.values()) else "NO")
        cells = " | ".join(f"{values[c]:.1f}" for c in columns)
        lines.append(f"| {row} | {cells} | {verdict} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output_dir", default=str(ROOT / "outputs" / "bench-domains"))
    parser.add_argument("--model", default="small")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--max_train_steps", type=int, default=600)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--class_dropout_prob", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=1, help="1 is fastest on a busy machine")
    parser.add_argument("--num_samples", type=int, default=66, help="per domain (a multiple of 11 uses them all)")
    parser.add_argument("--steps", type=int, default=25, help="DPM-Solver++ steps")
    parser.add_argument("--guidance_scales", default="1,3")
    parser.add_argument("--grid_columns", type=int, default=10)
    parser.add_argument("--grid", default=str(ROOT / "docs" / "domains.png"))
    parser.add_argument("--skip_training", action="store_true", help="reuse the model in --output_dir")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    output_dir = Path(args.output_dir)
    train_seconds = None
    if not args.skip_training:
        train_seconds = train(args, output_dir)

    from anime_ddpm import viz
    from anime_ddpm.conditioning import sample_per_domain
    from anime_ddpm.sampling import generate, load_pipeline, with_scheduler

    pipe = with_scheduler(load_pipeline(str(output_dir), device="cpu"), "dpm++")
    pipe.set_progress_bar_config(disable=True)
    print(f"domains: {pipe.domains}")
    scales = [float(s) for s in args.guidance_scales.split(",")]

    start = time.perf_counter()
    samples: dict[str, torch.Tensor] = {}  # in [-1, 1]
    for w in scales:
        for name, images in sample_per_domain(
            pipe, args.num_samples, seed=0, batch_size=args.num_samples, num_inference_steps=args.steps,
            guidance_scale=w,
        ).items():  # fmt: skip
            samples[f"{name} (w={w:g})"] = images * 2 - 1
    null = generate(pipe, args.num_samples, seed=0, batch_size=args.num_samples, num_inference_steps=args.steps)
    samples["null label"] = null * 2 - 1
    sample_seconds = time.perf_counter() - start

    held_out = real_images("test", 11, args.resolution)
    train_real = real_images("train", min(args.num_samples, 96), args.resolution)  # emoji-smileys has 96
    # How far apart the sources themselves are (the scale of the table): real vs real.
    baseline_held_out = swd_table({f"real {k}": v for k, v in train_real.items()}, held_out)
    tables = {
        "held-out (test split, 11 images)": {**swd_table(samples, held_out), **baseline_held_out},
        f"training images ({len(train_real[SOURCES[0]])})": swd_table(samples, train_real),
    }

    columns = args.grid_columns
    rows = [viz.to_pil((images[:columns] + 1) / 2, scale=2) for images in samples.values()]
    rows += [viz.to_pil((train_real[name][:columns] + 1) / 2, scale=2) for name in SOURCES]
    labels = [*samples, *(f"real {name}" for name in SOURCES)]
    title = f"one model, {args.model} UNet, {args.max_train_steps} steps; same seeds in every row"
    grid = viz.labelled_table(rows, row_labels=labels, title=title)
    Path(args.grid).parent.mkdir(parents=True, exist_ok=True)
    grid.save(args.grid)

    report = {
        "domains": pipe.domains,
        "train_seconds": train_seconds,
        "sample_seconds": sample_seconds,
        "settings": vars(args),
        "swd": tables,
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "results.json").write_text(json.dumps(report, indent=2))
    for title, table in tables.items():
        print()
        print(markdown(table, f"SWD x1e3, {title}"))
    print(f"\ngrid: {args.grid}; training {train_seconds or 0:.0f} s, sampling {sample_seconds:.0f} s")


if __name__ == "__main__":
    main()

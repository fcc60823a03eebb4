"""The default recipe against diffusers' example at equal wall-clock time.

Trains at 32 px (or `--resolution`) on the embedded emoji faces, for the same `--max_train_time` budget and at the same time (one
process per recipe, one thread each, so both see the same machine load), each through a real
`accelerate launch train_with_accelerate.py` subprocess:
  reference  diffusers' examples/unconditional_image_generation/train_unconditional.py as it is: epsilon target,
             linear betas, AdamW lr 1e-4 with betas (0.95, 0.999) and weight decay 1e-6, cosine LR after 500
             warm-up steps, batch 16, EMA (power 0.75, max 0.9999), fp32, gradient clipping at 1, and
             UNet2DModel's defaults (attention_head_dim=8) on our 32 px default's block widths (same parameters);
  ours       anime-ddpm's defaults: no flags at all.
Only bookkeeping flags are added to both: the budget, the output folder, no tracker, no previews or checkpoints
during the run (they would eat into the budget). The reference's cosine LR is laid over the budget like ours (the
example would lay it over 100 epochs and never decay within a few minutes: this favours the reference).

Each saved pipeline then draws the same 64 seeds at 1000 DDPM steps (its saved scheduler, the whole chain) and with
our default fast sampler, and is scored by SWD (x1e3, Karras et al., anime_ddpm.metrics) against the 64 held-out
emoji test images. Extra candidates (for a sweep) can be given as NAME='flags'.

    .venv/bin/python -m bench.bench_recipe [--minutes 15] [--recipes reference,ours] [--candidate NAME='FLAGS' ...]
        [--samplers ddpm,fast] [--output-dir DIR] [--grid PNG] [--skip-training]

Samplers (`--samplers`): ddpm (the saved DDPMScheduler, 1000 steps), fast (the default preview sampler), and, to
take DDPM 1000 apart, ddpm-large (variance beta_t), ddpm-noclip (no x_0 clipping), ddim (deterministic, 1000 steps).
Each score is also printed per SWD pyramid level.

Prints a markdown table, writes DIR/results.json and a side-by-side grid (default DIR/bench_recipe.png).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

from bench.bench_objectives import (
    TRAIN_IMAGES,
    accelerate_launch,
    comparison_grid,
    real_training_images,
    start_run,
    swd,
    wait_for_run,
)


ROOT = Path(__file__).resolve().parents[1]
TEST_IMAGES = 64  # the emoji test split
# Bookkeeping only: nothing here changes what is learned.
BOOKKEEPING = [
    "--logger",
    "none",
    "--save_images_steps",
    "0",
    "--checkpointing_steps",
    str(10**9),
    "--overwrite_output_dir",
]
REFERENCE_FLAGS = [
    "--model_config_name_or_path", "{reference_unet}",
    "--prediction_type", "epsilon",
    "--ddpm_beta_schedule", "linear",
    "--learning_rate", "1e-4",
    "--adam_beta1", "0.95",
    "--adam_beta2", "0.999",
    "--adam_weight_decay", "1e-6",
    "--adam_epsilon", "1e-8",
    "--lr_scheduler", "cosine",
    "--lr_warmup_steps", "500",
    "--train_batch_size", "16",
    "--use_ema", "--ema_sigma_rel", "0", "--ema_power", "0.75", "--ema_inv_gamma", "1.0", "--ema_max_decay", "0.9999",
    "--mixed_precision", "no",
    "--max_grad_norm", "1.0",
    "--variance_type", "fixed_small",
    "--weighting_scheme", "none",
    "--input_perturbation", "0",
    "--no-center_crop", "--no-random_flip",
]  # fmt: skip
RECIPES: dict[str, dict] = {
    "reference": {"label": "diffusers' train_unconditional.py recipe", "flags": REFERENCE_FLAGS},
    "ours": {"label": "anime-ddpm defaults (no flags)", "flags": []},
}


def reference_unet_config(path: Path, resolution: int) -> Path:
    """Our default UNet's widths and blocks with UNet2DModel's default attention_head_dim=8, as the example has."""
    from anime_ddpm.config import TrainingConfig
    from anime_ddpm.models import unet_config

    config = unet_config(TrainingConfig().model, resolution)
    config["attention_head_dim"] = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2))
    return path


def launch(name: str, flags: list[str], run_dir: Path, minutes: float, seed: int, resolution: int) -> subprocess.Popen:
    command = [
        *accelerate_launch(),
        str(ROOT / "train_with_accelerate.py"),
        *flags,
        "--resolution", str(resolution),
        "--max_train_time", f"{minutes}m",
        "--seed", str(seed),
        "--output_dir", str(run_dir),
        *BOOKKEEPING,
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    env.pop("ACCELERATE_MIXED_PRECISION", None)
    return start_run(name, command, run_dir, env)


def finished(name: str, process: subprocess.Popen, run_dir: Path) -> dict:
    summary = wait_for_run(name, process, run_dir)
    steps, seconds, loss = summary["steps"], summary["seconds"], summary["final_loss"]
    print(f"[{name}] trained {steps} steps in {seconds:.0f} s, final loss {loss:.4f}", flush=True)
    return {"steps": steps, "train_seconds": seconds, "final_loss": loss}


def real_floor(held_out: torch.Tensor) -> dict[str, float]:
    """SWD of 64 real training images (spread over the split) to the held-out ones: what a perfect model scores."""
    from anime_ddpm.metrics import sliced_wasserstein_distance

    return sliced_wasserstein_distance(real_training_images(held_out.shape[-1], len(held_out)), held_out)


def training_halves(resolution: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two disjoint sets of `count` training images (the even and the odd ones of the name-sorted split, so both hold
    the data's mix): samples are scored against the first, and the second scores the floor. 256 of each against 64
    held-out images: a steadier SWD for the fast sampler, which draws that many anyway."""
    from anime_ddpm.data import DataConfig, take_images

    train = take_images(DataConfig(dataset="emoji", split="train", resolution=resolution, shuffle_buffer=0),
                        TRAIN_IMAGES)  # fmt: skip
    return train[0::2][:count], train[1::2][:count]


def raw_unet(run_dir: Path):
    """The weights the optimiser trained, without the EMA: the `unet/` of the run's last checkpoint."""
    from diffusers import UNet2DModel

    checkpoints = sorted(run_dir.glob("checkpoint-*/unet"), key=lambda p: int(p.parent.name.split("-")[1]))
    if not checkpoints:
        sys.exit(f"{run_dir} has no checkpoint with the raw weights: score it with --weights ema.")
    return UNet2DModel.from_pretrained(checkpoints[-1])


def posthoc_state_dict(run_dir: Path, sigma_rel: float) -> dict:
    """The post-hoc EMA of `sigma_rel` at the run's last snapshot (anime_ddpm.ema_snapshots)."""
    from anime_ddpm import ema_snapshots

    snapshots = ema_snapshots.find(str(run_dir))
    if not snapshots:
        sys.exit(f"{run_dir} has no EMA snapshots: train it with --ema_snapshot_steps N.")
    return ema_snapshots.reconstruct(snapshots, sigma_rel)[0]


def weights_choice(text: str) -> str:
    """ema, raw or sigma_rel=S (a number): anything else is refused, not scored as the EMA."""
    kind, _, value = text.partition("=")
    try:
        if text in ("ema", "raw") or (kind == "sigma_rel" and float(value) > 0):
            return text
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"expected ema, raw or sigma_rel=S, got {text!r}")


def sampler_pipeline(pipe, sampler: str, fast_name: str, fast_steps: int):
    """The pipeline and step count of one `--samplers` entry, over the same UNet."""
    from diffusers import DDIMScheduler, DDPMScheduler

    from anime_ddpm.pipeline import AnimeDDPMPipeline
    from anime_ddpm.sampling import with_scheduler

    if sampler == "fast":
        return with_scheduler(pipe, fast_name), fast_steps
    config = pipe.scheduler.config
    scheduler = {
        "ddpm": lambda: pipe.scheduler,
        "ddpm-large": lambda: DDPMScheduler.from_config(config, variance_type="fixed_large"),
        "ddpm-noclip": lambda: DDPMScheduler.from_config(config, clip_sample=False),
        "ddim": lambda: DDIMScheduler.from_config(config),
    }[sampler]()
    return AnimeDDPMPipeline(unet=pipe.unet, scheduler=scheduler), 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=15.0, help="wall-clock training budget of every recipe")
    parser.add_argument("--recipes", default="reference,ours", help="which recipes (and candidates) to run")
    parser.add_argument("--candidate", action="append", default=[], metavar="NAME='FLAGS'",
                        help="an extra recipe: our defaults plus these flags (repeatable)")  # fmt: skip
    parser.add_argument(
        "--parallel",
        type=int,
        default=2,
        help="training runs at once (one thread each; the runs of one seed side by side)",
    )
    parser.add_argument("--samplers", default="ddpm,fast",
                        help="ddpm: 1000 DDPM steps; fast: the default sampler; also ddpm-large, ddpm-noclip, ddim")  # fmt: skip
    parser.add_argument("--resolution", type=int, default=32,
                        help="training and judging size, for every recipe (the emoji render at any size)")  # fmt: skip
    parser.add_argument("--num-images", type=int, default=64,
                        help="samples per sampler for the SWD against the 64 held-out images: more than 64 give the "
                             "mean over disjoint sets of 64 seeds (e.g. 192: three sets; the DDPM chain's SWD moves "
                             "by several points between two sets of 64 on one model)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="training seed (one run per recipe)")
    parser.add_argument("--seeds", help="comma-separated training seeds: one run per recipe and seed, mean and spread")
    parser.add_argument(
        "--judge-images",
        type=int,
        default=256,
        help="fast-sampler samples for the smiley and off-data shares (the first 64 give the SWD)",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads for sampling")
    parser.add_argument("--output-dir", default=str(ROOT / "outputs" / "bench-recipe"), help="(git-ignored)")
    parser.add_argument("--grid", default=None, help="default: --output-dir/bench_recipe.png")
    parser.add_argument("--grid-columns", type=int, default=12)
    parser.add_argument("--skip-training", action="store_true", help="score the pipelines of an earlier run")
    parser.add_argument("--weights", default="ema", type=weights_choice,
                        help="ema: the saved pipelines; raw: the trained weights without EMA, from each run's last "
                             "checkpoint (results-raw.json, bench_recipe-raw.png); sigma_rel=S: the post-hoc EMA of "
                             "length S from the run's --ema_snapshot_steps snapshots (results-sigma_rel=S.json)")  # fmt: skip
    args = parser.parse_args()

    recipes = dict(RECIPES)
    for spec in args.candidate:
        name, _, flags = spec.partition("=")
        recipes[name.strip()] = {"label": f"ours + {flags.strip()}", "flags": shlex.split(flags)}
    names = [n.strip() for n in args.recipes.split(",") if n.strip()]
    for spec in args.candidate:
        if (name := spec.partition("=")[0].strip()) not in names:
            names.append(name)
    unknown = [n for n in names if n not in recipes]
    if unknown:
        sys.exit(f"Unknown recipe(s) {', '.join(unknown)}: choose from {', '.join(recipes)} or add --candidate.")
    seeds = [int(x) for x in args.seeds.split(",")] if args.seeds else [args.seed]
    # One run per recipe and seed; a run's name is the recipe's, with "@seed" when several seeds are asked for.
    run_recipe = {(f"{n}@{seed}" if args.seeds else n): (n, seed) for n in names for seed in seeds}
    for run_name, (recipe, seed) in run_recipe.items():
        recipes.setdefault(run_name, {**recipes[recipe], "label": f"{recipes[recipe]['label']}, seed {seed}"})
    recipe_names, names = names, list(run_recipe)
    samplers = [s.strip() for s in args.samplers.split(",")]
    output_dir = Path(args.output_dir).resolve()
    runs_dir = output_dir / "runs"
    reference_unet = reference_unet_config(output_dir / "reference_unet" / "config.json", args.resolution)

    # ------------------------------------------------------------------------- train, `parallel` at a time
    training: dict[str, dict] = {}
    if args.skip_training:
        earlier = json.loads((output_dir / "results.json").read_text())
        if earlier.get("resolution", 32) != args.resolution:
            sys.exit(f"The runs in {output_dir} were trained at {earlier.get('resolution', 32)} px: "
                     f"score them with --resolution {earlier.get('resolution', 32)}.")  # fmt: skip
        training = earlier["training"]
    else:
        # The runs of one seed train side by side, so the recipes compared see the same machine load.
        queue = sorted(names, key=lambda name: run_recipe[name][1])
        running: list[tuple[str, subprocess.Popen, Path]] = []
        while queue or running:
            while queue and len(running) < args.parallel:
                name = queue.pop(0)
                flags = [f.format(reference_unet=reference_unet.parent) for f in recipes[name]["flags"]]
                process = launch(name, flags, runs_dir / name, args.minutes, run_recipe[name][1], args.resolution)
                running.append((name, process, runs_dir / name))
            name, process, run_dir = running.pop(0)
            training[name] = finished(name, process, run_dir)

    # ------------------------------------------------------------------------- sample and score
    torch.set_num_threads(args.threads)
    from anime_ddpm.config import TrainingConfig
    from anime_ddpm.data import DataConfig, take_images
    from anime_ddpm.metrics import sliced_wasserstein_distance
    from anime_ddpm.sampling import generate, load_pipeline

    defaults = TrainingConfig()
    fast_name, fast_steps = defaults.sample_scheduler, defaults.preview_steps()
    test_split = DataConfig(dataset="emoji", split="test", resolution=args.resolution, shuffle_buffer=0)
    held_out = take_images(test_split, TEST_IMAGES)
    floor_levels = real_floor(held_out)
    floor = floor_levels["avg"]
    print("64 real training images: SWD " + ", ".join(f"{k} {v:.1f}" for k, v in floor_levels.items()), flush=True)
    wide = min(args.judge_images, TRAIN_IMAGES // 2) if "fast" in samplers else 0
    if wide > TEST_IMAGES:
        train_reference, train_floor_images = training_halves(args.resolution, wide)
        wide_floor = sliced_wasserstein_distance(train_floor_images, train_reference)["avg"]
        print(f"SWD of {wide} samples against {wide} training images: {wide} other training images score "
              f"{wide_floor:.1f}", flush=True)  # fmt: skip
    wide_scores: dict[str, float] = {}
    sampler_label = {"ddpm": "DDPM 1000", "fast": f"{fast_name} {fast_steps}", "ddpm-large": "DDPM 1000 beta_t",
                     "ddpm-noclip": "DDPM 1000 no clip", "ddim": "DDIM 1000"}  # fmt: skip
    unknown = [s for s in samplers if s not in sampler_label]
    if unknown:
        sys.exit(f"Unknown sampler(s) {', '.join(unknown)}: choose from {', '.join(sampler_label)}.")
    from bench.emoji_eval import EmojiReference

    reference_faces = EmojiReference.build(args.resolution)
    judged: dict[str, dict[str, dict[str, float]]] = {}
    scores: dict[str, dict[str, float]] = {}
    levels: dict[str, dict[str, dict[str, float]]] = {}
    samples: dict[tuple[str, str], torch.Tensor] = {}
    for name in names:
        pipe = load_pipeline(str(runs_dir / name), device="cpu")
        if args.weights == "raw":
            pipe.unet.load_state_dict(raw_unet(runs_dir / name).state_dict())
        elif args.weights.startswith("sigma_rel="):
            pipe.unet.load_state_dict(posthoc_state_dict(runs_dir / name, float(args.weights.partition("=")[2])))
        pipe.set_progress_bar_config(disable=True)
        scores[name], levels[name], judged[name] = {}, {}, {}
        for sampler in samplers:
            driven, steps = sampler_pipeline(pipe, sampler, fast_name, fast_steps)
            driven.set_progress_bar_config(disable=True)
            start = time.perf_counter()
            count = max(args.num_images, args.judge_images) if sampler == "fast" else args.num_images
            images = generate(driven, count, seed=0, batch_size=64, num_inference_steps=steps) * 2 - 1
            samples[name, sampler] = images[: args.num_images]  # per-image seeds: the first 64 as with count 64
            levels[name][sampler] = swd(images[: args.num_images], held_out)  # the mean over sets of 64
            scores[name][sampler] = levels[name][sampler]["avg"]
            judged[name][sampler] = reference_faces.judge(images) | {"images": len(images)}
            if sampler == "fast" and wide > TEST_IMAGES:
                wide_scores[name] = sliced_wasserstein_distance(images[:wide], train_reference)["avg"]
                print(f"[{name}] {sampler_label[sampler]}: SWD of {wide} against training images "
                      f"{wide_scores[name]:.1f} (floor {wide_floor:.1f})", flush=True)  # fmt: skip
            per_level = ", ".join(f"{k} px {v:.1f}" for k, v in levels[name][sampler].items() if k != "avg")
            shares = judged[name][sampler]
            print(f"[{name}] {sampler_label[sampler]}: SWD {scores[name][sampler]:.1f} ({per_level}); smileys "
                  f"{shares['smiley_share']:.0%} of {len(images)}, off-data {shares['off_share']:.0%} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)  # fmt: skip

    # ------------------------------------------------------------------------- report
    wide_label = [f"SWD {wide} vs training ({sampler_label['fast']})"] if wide_scores else []
    lines = [f"| recipe | steps in {args.minutes:g} min | final loss | "
             + " | ".join([*(f"SWD {sampler_label[s]}" for s in samplers), *wide_label]) + " |"]  # fmt: skip
    lines.append("|---" * (3 + len(samplers) + len(wide_label)) + "|")
    for name in names:
        cells = " | ".join([*(f"{scores[name][s]:.1f}" for s in samplers),
                            *([f"{wide_scores[name]:.1f}"] if wide_scores else [])])  # fmt: skip
        lines.append(f"| {recipes[name]['label']} | {training[name]['steps']} | {training[name]['final_loss']:.4f} | {cells} |")  # fmt: skip
    floors = [f"{floor:.1f}" for _ in samplers] + ([f"{wide_floor:.1f}"] if wide_scores else [])
    lines.append(f"| real training images (the floor) | - | - | {' | '.join(floors)} |")
    table = "\n".join(lines)
    if args.seeds:  # mean and spread over the seeds, per recipe
        lines = ["| recipe | seeds | " + " | ".join([*(f"SWD {sampler_label[s]} mean (min-max)" for s in samplers), *wide_label])
                 + " | smileys (fast) | off-data (fast) |", "|---" * (4 + len(samplers) + len(wide_label)) + "|"]  # fmt: skip
        for recipe in recipe_names:
            runs = [n for n, (r, _) in run_recipe.items() if r == recipe]
            cells = []
            for sampler in samplers:
                values = [scores[n][sampler] for n in runs]
                cells.append(f"{sum(values) / len(values):.1f} ({min(values):.1f}-{max(values):.1f})")
            shares = [judged[n].get("fast", next(iter(judged[n].values()))) for n in runs]
            smiley = [j["smiley_share"] for j in shares]
            off = [j["off_share"] for j in shares]
            if all(n in wide_scores for n in runs):
                values = [wide_scores[n] for n in runs]
                cells.append(f"{sum(values) / len(values):.1f} ({min(values):.1f}-{max(values):.1f})")
            lines.append(f"| {recipes[recipe]['label']} | {len(runs)} | {' | '.join(cells)} | "
                         f"{sum(smiley) / len(smiley):.0%} ({min(smiley):.0%}-{max(smiley):.0%}) | "
                         f"{sum(off) / len(off):.0%} ({min(off):.0%}-{max(off):.0%}) |")  # fmt: skip
        table += "\n\nOver the seeds:\n\n" + "\n".join(lines)
    table += (
        f"\n\nThe data: {reference_faces.data_smiley_share:.0%} smileys; the nearest-neighbour judge labels "
        f"{reference_faces.classifier_accuracy:.0%} of the held-out test images right; 'off-data' counts samples "
        "farther from every training image than 95% of the held-out images are (bench/emoji_eval.py)."
    )
    ratios, excess_ratios = {}, {}
    if "reference" in names:
        for name in names:
            if name != "reference":
                ratios[name] = {s: scores["reference"][s] / scores[name][s] for s in samplers}
                # The same ratio of the distances above what real images score (64 images cannot score 0).
                excess_ratios[name] = {
                    s: (scores["reference"][s] - floor) / max(scores[name][s] - floor, 1e-9) for s in samplers
                }

    rows = [(f"{name}, {sampler_label[sampler]}: SWD {scores[name][sampler]:.0f}", samples[name, sampler])
            for name in names for sampler in samplers]  # fmt: skip
    grid = comparison_grid(rows, held_out, min(args.grid_columns, args.num_images),
                           f"{args.minutes:g} min each, {args.resolution} px; same seeds per column", len(samplers))  # fmt: skip
    suffix = "" if args.weights == "ema" else f"-{args.weights}"
    grid_path = Path(args.grid) if args.grid else output_dir / f"bench_recipe{suffix}.png"
    grid_path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(grid_path)

    report = {
        "minutes": args.minutes,
        "resolution": args.resolution,
        "recipes": {name: recipes[name] for name in names},
        "training": training,
        "swd": scores,
        "swd_levels": levels,
        "swd_real_floor": floor,
        "swd_train": {"images": wide, "swd": wide_scores, "floor": wide_floor} if wide_scores else None,
        "judged": judged,
        "seeds": seeds,
        "swd_ratio_reference_over": ratios,
        "swd_above_floor_ratio_reference_over": excess_ratios,
        "fast_sampler": f"{fast_name} {fast_steps}",
        "weights": args.weights,
        "grid": str(grid_path),
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / f"results{suffix}.json").write_text(json.dumps(report, indent=2))
    print("\nSWD x1e3 against the 64 held-out emoji test images (lower is better):\n")
    print(table)
    for name, ratio in ratios.items():
        print(f"reference / {name}: " + ", ".join(f"{sampler_label[s]} {r:.2f}x" for s, r in ratio.items())
              + "; above the floor: " + ", ".join(f"{excess_ratios[name][s]:.1f}x" for s in samplers))  # fmt: skip
    print(f"\ngrid: {grid_path}; results: {output_dir / f'results{suffix}.json'}")


if __name__ == "__main__":
    main()

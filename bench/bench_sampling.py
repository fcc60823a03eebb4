"""Sampling speed: AnimeDDPMPipeline against a bare loop of UNet calls and against diffusers' DDPMPipeline.

All in one process, alternated round by round (A B C, B C A, ...) so that every ratio compares runs under the same
machine load:
- per image, at each batch size: our pipeline, the same number of bare `unet(x, t)` calls (no scheduler, no
  pipeline: the floor), the bare calls plus `scheduler.step` (what any sampler must do), and diffusers'
  `DDPMPipeline`, all with the same UNet and `DDPMScheduler` respaced to `--steps` steps; overhead = pipeline /
  bare - 1 (target < 3%);
- the pipeline's own cost per denoising step with a UNet that returns instantly (scheduler step, Python, callbacks
  off and on), in milliseconds, for both pipelines;
- time to a grid of 64 images with the small 32 px UNet: 25 DPM-Solver++ steps (run in full) and 1000 DDPM steps
  (extrapolated from `--ddpm-steps` timed steps per image batch unless `--full-ddpm`; the output says which).

The UNet is `build_unet("small", 32)` with random weights (speed does not depend on the weights) unless `--model`
names a saved pipeline.

    .venv/bin/python bench/bench_sampling.py [--steps 20] [--batch-sizes 1,16] [--rounds 3] [--ddpm-steps 20]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any

import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from diffusers.models.unets.unet_2d import UNet2DOutput

from anime_ddpm.models import build_unet
from anime_ddpm.pipeline import AnimeDDPMPipeline, DenoisingRecorder
from anime_ddpm.schedulers import scheduler_from


GRID = 64


class InstantUNet(UNet2DModel):
    """A UNet2DModel whose forward returns zeros at once: what is left of a sampling step is the pipeline's cost."""

    def forward(self, sample, timestep, class_labels=None, return_dict=True):
        return UNet2DOutput(sample=torch.zeros_like(sample))


def bare_loop(unet: UNet2DModel, scheduler: DDPMScheduler, batch_size: int, steps: int, with_step: bool = False):
    """The floor: the UNet calls a sampler must make (same noise, same timesteps), nothing else; `with_step` adds
    `scheduler.step`, the least any sampler does besides (so the pipeline's own code is the rest)."""
    scheduler.set_timesteps(steps)
    config = unet.config
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, config.in_channels, config.sample_size, config.sample_size, generator=generator)
    with torch.no_grad():
        for t in scheduler.timesteps:
            out = unet(x, t.expand(batch_size)).sample
            if with_step:
                x = scheduler.step(out, t, x, generator=generator).prev_sample
    return x


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def alternate(candidates: dict[str, Any], rounds: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in candidates}
    names = list(candidates)
    for name in names:  # warm-up
        candidates[name]()
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name].append(timed(candidates[name]))
    return times


def ratio(times: dict[str, list[float]], name: str, base: str) -> float:
    return statistics.median(a / b for a, b in zip(times[name], times[base]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a saved pipeline folder or Hub id (default: random small 32 px UNet)")
    parser.add_argument("--steps", type=int, default=20, help="DDPM steps per timed sampling run")
    parser.add_argument("--batch-sizes", default="1,16", help="comma-separated")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ddpm-steps", type=int, default=20, help="timed steps of the 64-image DDPM grid")
    parser.add_argument("--full-ddpm", action="store_true", help="run the 64-image grid's 1000 DDPM steps in full")
    parser.add_argument("--no-grid", action="store_true", help="skip the 64-image grids")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--json", help="also write the key figures to this file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.model:
        unet = AnimeDDPMPipeline.from_pretrained(args.model).unet
    else:
        torch.manual_seed(0)
        unet = build_unet("small", 32)
    unet.eval()
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    ours = AnimeDDPMPipeline(unet=unet, scheduler=DDPMScheduler.from_config(scheduler.config))
    theirs = DDPMPipeline(unet=unet, scheduler=DDPMScheduler.from_config(scheduler.config))
    for pipe in (ours, theirs):
        pipe.set_progress_bar_config(disable=True)
    resolution = unet.config.sample_size
    summary: dict[str, Any] = {"overhead": {}, "overhead_vs_step": {}, "vs_ddpm_pipeline": {}, "grid": {}}
    params = sum(p.numel() for p in unet.parameters()) / 1e6
    print(
        f"Sampling: UNet {params:.1f}M parameters at {resolution} px, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; {args.rounds} alternated rounds, medians; DDPMScheduler respaced to "
        f"{args.steps} steps.\n"
    )

    # ---------------------------------------------------------------- per image: pipeline vs bare UNet vs DDPMPipeline
    print("| batch | bare UNet calls, s/image | + scheduler.step, s/image | AnimeDDPMPipeline, s/image "
          "| overhead vs bare UNet | overhead vs UNet + step | DDPMPipeline, s/image | ours vs DDPMPipeline |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for batch in [int(b) for b in args.batch_sizes.split(",") if b]:
        candidates = {
            "bare": lambda b=batch: bare_loop(unet, DDPMScheduler.from_config(scheduler.config), b, args.steps),
            "bare+step": lambda b=batch: bare_loop(
                unet, DDPMScheduler.from_config(scheduler.config), b, args.steps, with_step=True
            ),
            "ours": lambda b=batch: ours(
                batch_size=b, generator=torch.Generator().manual_seed(0), num_inference_steps=args.steps,
                output_type="pt",
            ),
            "ddpm": lambda b=batch: theirs(
                batch_size=b, generator=torch.Generator().manual_seed(0), num_inference_steps=args.steps,
                output_type="np",
            ),
        }  # fmt: skip
        times = alternate(candidates, args.rounds)
        per_image = {name: statistics.median(t) / batch for name, t in times.items()}
        summary["overhead"][batch] = ratio(times, "ours", "bare") - 1
        summary["vs_ddpm_pipeline"][batch] = 1 / ratio(times, "ours", "ddpm")
        print(
            f"| {batch} | {per_image['bare']:.3f} | {per_image['bare+step']:.3f} | {per_image['ours']:.3f} "
            f"| {ratio(times, 'ours', 'bare') - 1:+.1%} | {ratio(times, 'ours', 'bare+step') - 1:+.1%} "
            f"| {per_image['ddpm']:.3f} | {1 / ratio(times, 'ours', 'ddpm'):.2f}x |",
            flush=True,
        )
        summary["overhead_vs_step"][batch] = ratio(times, "ours", "bare+step") - 1

    # ---------------------------------------------------------------- the pipelines' own cost per step
    instant = InstantUNet(**{k: v for k, v in unet.config.items() if not k.startswith("_")})
    steps = 200
    recorder = DenoisingRecorder(num_snapshots=10)
    stub = {
        "AnimeDDPMPipeline": AnimeDDPMPipeline(unet=instant, scheduler=DDPMScheduler.from_config(scheduler.config)),
        "DDPMPipeline": DDPMPipeline(unet=instant, scheduler=DDPMScheduler.from_config(scheduler.config)),
    }
    for pipe in stub.values():
        pipe.set_progress_bar_config(disable=True)
    candidates = {
        "AnimeDDPMPipeline": lambda: stub["AnimeDDPMPipeline"](
            batch_size=16, num_inference_steps=steps, output_type="pt"
        ),  # noqa: E501
        "AnimeDDPMPipeline + DenoisingRecorder": lambda: stub["AnimeDDPMPipeline"](
            batch_size=16, num_inference_steps=steps, output_type="pt", callback_on_step_end=recorder
        ),
        "DDPMPipeline": lambda: stub["DDPMPipeline"](batch_size=16, num_inference_steps=steps, output_type="np"),
    }
    times = alternate(candidates, args.rounds)
    unet_step = {}
    x = torch.randn(16, 3, resolution, resolution)
    with torch.no_grad():
        unet(x, torch.full((16,), 500))
        unet_step = statistics.median(timed(lambda: unet(x, torch.full((16,), 500))) for _ in range(3))
    print(f"\nPipeline cost per denoising step, batch 16, UNet replaced by one that returns at once ({steps} steps); "
          f"one real UNet call at batch 16 takes {unet_step * 1e3:.0f} ms:\n")  # fmt: skip
    print("| pipeline | ms per step | share of a real step |")
    print("|---|---|---|")
    for name, t in times.items():
        per_step = statistics.median(t) / steps
        print(f"| {name} | {per_step * 1e3:.2f} | {per_step / (per_step + unet_step):.2%} |")

    # ---------------------------------------------------------------- 64-image grids
    if not args.no_grid:
        print(f"\nTime to a grid of {GRID} images ({resolution} px, one batch of {GRID}):\n")
        print("| sampler | steps | seconds per step | time to grid | how |")
        print("|---|---|---|---|---|")
        dpm = AnimeDDPMPipeline(unet=unet, scheduler=scheduler_from("dpm++", scheduler))
        dpm.set_progress_bar_config(disable=True)
        seconds = timed(lambda: dpm(batch_size=GRID, generator=torch.Generator().manual_seed(0),
                                    num_inference_steps=25, output_type="pt"))  # fmt: skip
        print(f"| DPM-Solver++ (2M) | 25 | {seconds / 25:.2f} | {seconds:.0f} s | run in full |", flush=True)
        summary["grid"]["dpm++ 25"] = (seconds, "run in full")
        ddpm_steps = 1000 if args.full_ddpm else args.ddpm_steps
        # DDPMScheduler respaced to k steps does the same work per step as the 1000-step chain.
        seconds = timed(lambda: ours(batch_size=GRID, generator=torch.Generator().manual_seed(0),
                                     num_inference_steps=ddpm_steps, output_type="pt"))  # fmt: skip
        per_step = seconds / ddpm_steps
        how = (
            "run in full" if ddpm_steps == 1000 else f"{ddpm_steps} steps timed, x 1000 / {ddpm_steps} (extrapolated)"
        )
        print(f"| DDPM | 1000 | {per_step:.2f} | {per_step * 1000 / 60:.1f} min | {how} |")
        summary["grid"]["ddpm 1000"] = (per_step * 1000, how)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())

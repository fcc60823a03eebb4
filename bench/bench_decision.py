"""Where along the chain a sampler decides between a smiley and a person: the smiley share of the predicted x_0.

An emoji model's samplers draw different smiley shares from the same UNet (DDPM 1000 about 10%, DPM-Solver++ 25 about
18%, the data 17%; docs/recipe.md). This follows the predicted x_0 of the same starting noises down each chain and
judges it with `bench/emoji_eval.py`'s nearest-neighbour judge at every recorded step, so the table says at which
noise level the shares part: a fault of the model at high noise (layout) or at low noise (a smiley melting into a
person). "agrees" is the share of samples whose label at that step is already their final one.

    python -m bench.bench_decision outputs/min60-ip/runs/ours@0 --samplers ddpm,fast --num-images 64
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from anime_ddpm.pipeline import DenoisingRecorder
from anime_ddpm.sampling import generate, load_pipeline
from bench.bench_recipe import sampler_pipeline
from bench.emoji_eval import EmojiReference


def follow(
    pipe, sampler: str, num_images: int, snapshots: int
) -> tuple[list[float], list[torch.Tensor], torch.Tensor]:
    """The recorded timesteps, the predicted x_0 at each (in [-1, 1]) and the final samples, for seeds 0..N-1."""
    driven, steps = sampler_pipeline(pipe, sampler, "dpm++", 25)
    driven.set_progress_bar_config(disable=True)
    recorder = DenoisingRecorder(num_snapshots=snapshots)
    images = generate(driven, num_images, seed=0, batch_size=num_images, num_inference_steps=steps,
                      callback_on_step_end=recorder)  # fmt: skip
    return recorder.timesteps, [x.clamp(-1, 1) for x in recorder.pred_original_samples], images * 2 - 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="saved pipelines (a run's output folder)")
    parser.add_argument("--samplers", default="ddpm,fast", help="any of ddpm, ddim, fast (DPM-Solver++ 25)")
    parser.add_argument("--num-images", type=int, default=64)
    parser.add_argument("--snapshots", type=int, default=21, help="recorded steps per chain, evenly spaced")
    parser.add_argument("--output", default=None, help="JSON file for the tables")
    args = parser.parse_args()

    judge = EmojiReference.build()
    print(
        f"the data: {judge.data_smiley_share:.0%} smileys; judge accuracy on held-out {judge.classifier_accuracy:.0%}"
    )
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    for run in args.runs:
        pipe = load_pipeline(run, device="cpu")
        results[run] = {}
        for sampler in args.samplers.split(","):
            start = time.perf_counter()
            timesteps, predictions, final = follow(pipe, sampler, args.num_images, args.snapshots)
            final_labels = judge.labels(final)
            rows = []
            for t, x0 in zip(timesteps, predictions, strict=True):
                labels = judge.labels(x0)
                rows.append({"t": t, "smileys": float(labels.float().mean()),
                             "agrees": float((labels == final_labels).float().mean())})  # fmt: skip
            rows.append({"t": -1, "smileys": float(final_labels.float().mean()), "agrees": 1.0})
            results[run][sampler] = rows
            print(f"\n{run} {sampler} ({time.perf_counter() - start:.0f} s)\n| t | smileys | agrees with final |")
            for row in rows:
                label = "final" if row["t"] < 0 else f"{row['t']:.0f}"
                print(f"| {label} | {row['smileys']:.0%} | {row['agrees']:.0%} |", flush=True)
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

"""How much a run has fitted its training images beyond the data: the x_0 error on training vs held-out images.

The emoji data has about 575 training images, so a 15-minute run sees each of them ~135 times (the README's `make
train`). Overfitting would show as a denoising error on the training images lower than on the 64 held-out ones at the
same noise levels with the same noises; a regulariser (dropout, flips) is worth trying where that gap grows with
training. Each checkpoint's EMA weights (or the saved pipeline's UNet) predict x_0 from x_t = sqrt(a) x_0 +
sqrt(1 - a) e for the same e per image slot, at a few timesteps, averaged over `--repeats` draws of e; "gap" is
held-out / training.

    python -m bench.bench_generalization outputs/ddpm-emoji-32 --checkpoints 500,1500,3000,final
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from diffusers import DDPMScheduler, UNet2DModel

from anime_ddpm.data import DataConfig, take_images
from anime_ddpm.pipeline import predict_original_sample


def predicted_x0(unet: UNet2DModel, scheduler: DDPMScheduler, noisy: torch.Tensor, t: int) -> torch.Tensor:
    """The UNet's estimate of x_0 whatever it predicts (x_0, epsilon or v); a self-conditioned UNet gets no estimate."""
    model_input = noisy
    if getattr(unet.config, "self_condition", False):
        model_input = torch.cat([noisy, torch.zeros_like(noisy)], dim=1)
    output = unet(model_input, torch.full((len(noisy),), t)).sample[:, : noisy.shape[1]]
    return predict_original_sample(output, noisy, scheduler.alphas_cumprod[t], scheduler.config.prediction_type)


@torch.no_grad()
def x0_error(
    unet: UNet2DModel, scheduler: DDPMScheduler, images: torch.Tensor, t: int, repeats: int, batch_size: int = 128
) -> float:
    """Mean squared error of the x_0 estimate at timestep t; the noise of image i and draw r depends on (t, r, i) only,
    so two models, or two image sets of the same size, see the same noises."""
    total = 0.0
    for repeat in range(repeats):
        noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(1000 * t + repeat))
        noisy = scheduler.add_noise(images, noise, torch.tensor([t]))
        for start in range(0, len(images), batch_size):
            estimate = predicted_x0(unet, scheduler, noisy[start : start + batch_size], t)
            total += (estimate.float() - images[start : start + batch_size]).pow(2).sum().item()
    return total / (repeats * images.numel())


def load_unet(run: Path, checkpoint: str) -> UNet2DModel:
    """`final`: the saved pipeline's UNet; otherwise the EMA weights of `checkpoint-N` (the raw ones without an EMA)."""
    if checkpoint == "final":
        return UNet2DModel.from_pretrained(run / "unet").eval()
    folder = run / f"checkpoint-{checkpoint}"
    for sub in ("unet_ema", "unet"):
        if (folder / sub / "config.json").exists():
            return UNet2DModel.from_pretrained(folder / sub).eval()
    raise SystemExit(f"{folder} holds no UNet: pass the steps of its checkpoint-N folders, or final.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="run folders (the trainer's --output_dir)")
    parser.add_argument("--checkpoints", default="final", help="comma-separated checkpoint steps, or final")
    parser.add_argument("--timesteps", default="100,400,700,850,950")
    parser.add_argument("--train-images", type=int, default=512, help="training images scored (the held-out are 64)")
    parser.add_argument("--repeats", type=int, default=4, help="noise draws per image and timestep")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default=None, help="JSON file for the table")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    def images(split: str, count: int) -> torch.Tensor:
        config = DataConfig(dataset="emoji", split=split, resolution=args.resolution, shuffle_buffer=0)
        return take_images(config, count)

    held_out, train = images("test", 64), images("train", args.train_images)
    timesteps = [int(t) for t in args.timesteps.split(",")]
    print(f"{len(train)} training and {len(held_out)} held-out images; x_0 MSE training / held-out = gap")
    results = []
    for run in map(Path, args.runs):
        scheduler = DDPMScheduler.from_pretrained(run, subfolder="scheduler")
        for checkpoint in args.checkpoints.split(","):
            unet = load_unet(run, checkpoint.strip())
            row = {"run": str(run), "checkpoint": checkpoint, "timesteps": {}}
            for t in timesteps:
                seen = x0_error(unet, scheduler, train, t, args.repeats)
                unseen = x0_error(unet, scheduler, held_out, t, args.repeats)
                row["timesteps"][t] = {"train": seen, "held_out": unseen, "gap": unseen / seen}
            results.append(row)
            cells = [
                f"t={t} {v['train']:.4f}/{v['held_out']:.4f} = {v['gap']:.2f}" for t, v in row["timesteps"].items()
            ]
            print(f"{run.name} {checkpoint}: " + " | ".join(cells), flush=True)
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

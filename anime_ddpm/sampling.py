"""One way to turn (model, seed, scheduler, steps) into images, shared by the CLI, the demo and training previews.

Image i of a request always uses `torch.Generator().manual_seed(seed + i)`, so the same seed gives the same images
whatever the batch size, and the web demo reproduces `anime-ddpm sample` exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from PIL import Image

from .pipeline import AnimeDDPMPipeline
from .schedulers import DEFAULT_STEPS, scheduler_from


def load_pipeline(model: str, device: str | torch.device | None = None, **kwargs: Any) -> AnimeDDPMPipeline:
    """A saved pipeline from a folder or Hub repo id, on `device` (default: CUDA when available)."""
    pipe = AnimeDDPMPipeline.from_pretrained(model, **kwargs)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return pipe.to(device)


def with_scheduler(pipe: AnimeDDPMPipeline, name: str | None) -> AnimeDDPMPipeline:
    """The same weights driven by another sampler; `None` keeps the saved scheduler."""
    if name is None:
        return pipe
    return AnimeDDPMPipeline(unet=pipe.unet, scheduler=scheduler_from(name, pipe.scheduler))


def default_steps(name: str | None) -> int:
    return DEFAULT_STEPS.get(name or "ddpm", 1000)


def seed_generators(seed: int, start: int, count: int, device: str | torch.device = "cpu") -> list[torch.Generator]:
    return [torch.Generator(device).manual_seed(seed + start + i) for i in range(count)]


def iter_batches(
    pipe: AnimeDDPMPipeline,
    num_images: int,
    seed: int = 0,
    batch_size: int = 16,
    num_inference_steps: int = 1000,
    callback_on_step_end: Callable | None = None,
    **call_kwargs: Any,
) -> Iterator[torch.Tensor]:
    """Yields (B, C, H, W) tensors in [0, 1], batch by batch, image i seeded with `seed + i`."""
    if num_images < 1:
        raise ValueError(f"The number of images must be at least 1, got {num_images}.")
    if batch_size < 1:
        raise ValueError(f"The batch size must be at least 1, got {batch_size}.")
    for start in range(0, num_images, batch_size):
        count = min(batch_size, num_images - start)
        generators = seed_generators(seed, start, count)
        yield pipe(
            batch_size=count,
            generator=generators,
            num_inference_steps=num_inference_steps,
            output_type="pt",
            callback_on_step_end=callback_on_step_end,
            **call_kwargs,
        ).images.cpu()


def generate(pipe: AnimeDDPMPipeline, num_images: int, **kwargs: Any) -> torch.Tensor:
    """All images of a request as one (N, C, H, W) tensor in [0, 1]."""
    return torch.cat(list(iter_batches(pipe, num_images, **kwargs)))


def sample_grid(
    pipe: AnimeDDPMPipeline,
    num_images: int,
    *,
    seed: int = 0,
    scheduler: str | None = None,
    num_inference_steps: int | None = None,
) -> Image.Image:
    """The grid the trainer, `posthoc-ema` and `push_to_hub` show: image i seeded with `seed + i` (so grids of one run
    compare over time), small images upscaled for the eye, and one labelled row per domain for a model trained with
    `--condition_on_source` (the same seeds in every row)."""
    from . import viz
    from .conditioning import domain_grid

    sampler = with_scheduler(pipe, scheduler)
    sampler.set_progress_bar_config(disable=True)
    steps = num_inference_steps or default_steps(scheduler)
    kwargs = dict(seed=seed, batch_size=min(num_images, 64), num_inference_steps=steps)
    if sampler.domains:
        return domain_grid(sampler, num_images, **kwargs)
    images = generate(sampler, num_images, **kwargs)
    return viz.make_grid(images, scale=viz.auto_scale(images.shape[-1]))

"""The `anime-ddpm` command: sample, watch the reverse and forward processes, preview data, evaluate.

Heavy libraries are imported inside the commands so `anime-ddpm --help` answers at once. User mistakes (missing
model, unknown scheduler, zero images, no network) end with one sentence on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .demo import add_parser as add_demo_parser  # imports no gradio


BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid", "laplace")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


class CLIError(ValueError):
    """A user-facing one-sentence error."""


# ----------------------------------------------------------------------------------------------------- parsing
def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _name_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="a folder written by training or save_pretrained, or a Hub repo id")
    parser.add_argument(
        "--scheduler",
        default=None,
        help="sampler: ddpm, ddim, dpm++, euler, euler-a, heun, unipc; none keeps the saved one",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="denoising steps; none: the sampler's usual count (ddpm 1000, ddim 50, dpm++ 25...)",
    )
    parser.add_argument("--seed", type=int, default=0, help="image i is seeded with seed + i")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1...; none: cuda when available")
    parser.add_argument("--domain", default=None, help="for domain-conditioned models: the domain to sample")
    parser.add_argument("--guidance-scale", type=float, default=1.0, help="classifier-free guidance with --domain")


def _data_options(parser: argparse.ArgumentParser, with_resolution: bool) -> None:
    parser.add_argument("--dataset", default=None, help="preset, Hub id, folder, parquet, or mixture; none: emoji")
    if with_resolution:
        parser.add_argument("--resolution", type=int, default=32, help="image size")
    parser.add_argument("--dataset-config-name", default=None, help="Hub dataset configuration")
    parser.add_argument("--image-column", default=None, help="dataset column holding the images")
    parser.add_argument("--split", default="train", help="dataset split")
    parser.add_argument("--train-data-dir", default=None, help="a local image folder (diffusers' flag)")
    parser.add_argument("--cache-dir", default=None, help="datasets cache folder")


def _command(commands: Any, name: str, help: str) -> argparse.ArgumentParser:
    """A sub-command whose --help shows every default."""
    return commands.add_parser(name, help=help, formatter_class=argparse.ArgumentDefaultsHelpFormatter)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anime-ddpm", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sample = _command(commands, "sample", help="sample a grid of images from a saved pipeline")
    _model_options(sample)
    sample.add_argument("--num", type=int, default=16, help="number of images")
    sample.add_argument("--batch-size", type=int, default=16, help="images per pipeline call")
    sample.add_argument("--output", default="samples.png", help="grid PNG")
    sample.add_argument("--save-individual", metavar="DIR", default=None, help="also write one PNG per image")
    sample.add_argument("--scale", type=int, default=1, help="nearest-neighbour upscaling of the grid")
    sample.set_defaults(handler=cmd_sample)

    denoise = _command(commands, "denoise", help="the reverse process as a strip PNG and an animated GIF")
    _model_options(denoise)
    denoise.add_argument("--num", type=int, default=4, help="number of samples (seeds seed..seed+num-1)")
    denoise.add_argument("--snapshots", type=int, default=8, help="columns of the strip")
    denoise.add_argument("--gif-frames", type=int, default=40, help="frames of the GIF (0: every step)")
    denoise.add_argument("--output", default="denoising.png", help="strip PNG")
    denoise.add_argument("--gif", default="denoising.gif", help="animated GIF ('' to skip)")
    denoise.add_argument("--frame-ms", type=int, default=80, help="GIF frame duration")
    denoise.add_argument("--scale", type=int, default=0, help="integer upscaling, 0: auto (cells of at least 64 px)")
    denoise.set_defaults(handler=cmd_denoise)

    noise = _command(commands, "noise", help="the forward process q(x_t | x_0) for noise schedules, as a strip")
    noise.add_argument("source", metavar="IMAGE_OR_DATASET", help="an image file, or a dataset as for --dataset")
    noise.add_argument("--timesteps", type=_int_list, default="0,100,250,500,750,999", help="one column each")
    noise.add_argument(
        "--beta-schedule",
        type=_name_list,
        default="linear,squaredcos_cap_v2",
        help=f"comma-separated, one row each: {', '.join(BETA_SCHEDULES)}",
    )
    noise.add_argument("--num-train-timesteps", type=int, default=1000, help="T of the schedule")
    noise.add_argument("--beta-start", type=float, default=1e-4, help="first beta (linear, scaled_linear)")
    noise.add_argument("--beta-end", type=float, default=0.02, help="last beta (linear, scaled_linear)")
    noise.add_argument("--resolution", type=int, default=64, help="image size")
    noise.add_argument("--num-images", type=int, default=1, help="images taken from a dataset")
    noise.add_argument("--image-column", default=None, help="dataset column holding the images")
    noise.add_argument("--seed", type=int, default=0, help="the noise (shared by all schedules)")
    noise.add_argument("--output", default="noising.png", help="strip PNG")
    noise.add_argument("--scale", type=int, default=0, help="integer upscaling, 0: auto (cells of at least 64 px)")
    noise.set_defaults(handler=cmd_noise)

    preview = _command(commands, "data-preview", help="a grid of training images exactly as the model sees them")
    _data_options(preview, with_resolution=True)
    preview.add_argument("--random-crop", action="store_true", help="random instead of centre crop")
    preview.add_argument("--random-flip", action="store_true")
    preview.add_argument("--num", type=int, default=64)
    preview.add_argument("--seed", type=int, default=0, help="shuffle / crop / flip seed")
    preview.add_argument("--output", default="data-preview.png", help="grid PNG")
    preview.add_argument("--scale", type=int, default=0, help="integer upscaling, 0: auto (cells of at least 64 px)")
    preview.set_defaults(handler=cmd_data_preview)

    evaluate = _command(commands, "evaluate", help="SWD, FD_DINOv2, FID/KID between samples and dataset images")
    _model_options(evaluate)
    _data_options(evaluate, with_resolution=False)
    evaluate.add_argument("--num", type=int, default=1000, help="samples and dataset images (N each)")
    evaluate.add_argument("--batch-size", type=int, default=64, help="images per pipeline call")
    evaluate.add_argument(
        "--metrics",
        default="auto",
        help="comma-separated from swd, fd_dinov2, fid, kid; 'auto' runs all and skips those without weights",
    )
    evaluate.add_argument("--dinov2", default="facebook/dinov2-base", help="DINOv2 folder or Hub id")
    evaluate.add_argument(
        "--dinov2-resolution", type=int, default=224, help="DINOv2 input size (multiple of its patch size)"
    )
    evaluate.add_argument("--inception-weights", default=None, help="torch-fidelity's Inception-v3 weights file")
    evaluate.add_argument("--output", default="metrics.json", help="JSON report")
    evaluate.add_argument("--grid", default=None, help="also save a grid of (up to 64) samples")
    evaluate.set_defaults(handler=cmd_evaluate)

    add_demo_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print("anime-ddpm: interrupted.", file=sys.stderr)
        return 130
    except Exception as error:
        if not is_user_error(error):
            raise
        print(f"anime-ddpm {args.command}: error: {first_line(error)}", file=sys.stderr)
        return 1


def is_user_error(error: BaseException) -> bool:
    """Mistakes and missing resources a user can fix (one sentence), as opposed to bugs (a traceback)."""
    if isinstance(error, (ValueError, OSError, NotImplementedError)):
        return True
    metrics = sys.modules.get("anime_ddpm.metrics")
    return metrics is not None and isinstance(error, metrics.MetricUnavailable)


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


# ----------------------------------------------------------------------------------------------------- helpers
def _positive(value: int, what: str) -> int:
    if value < 1:
        raise CLIError(f"The number of {what} must be at least 1, got {value}.")
    return value


def _check_model_source(model: str) -> dict[str, Any]:
    """Fail in seconds, with a sentence, when a model cannot be found (diffusers would retry the Hub for ~25 s)."""
    from .metrics import hub_reachable, looks_like_path

    if os.path.isdir(model):
        return {}
    if os.path.exists(model):
        raise CLIError(f"{model} is a file: give the folder that training or save_pretrained wrote, or a Hub repo id.")
    if looks_like_path(model):
        raise CLIError(f"There is no model folder at {model}.")
    if hub_reachable():
        return {}
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(model, "model_index.json"), str):
        return {"local_files_only": True}
    raise CLIError(
        f"{model!r} is not a local folder nor a model in the local Hugging Face cache, and the Hub cannot be reached."
    )


def _scheduler_name(pipe: Any) -> str | None:
    from .schedulers import SCHEDULERS

    return next((name for name, cls in SCHEDULERS.items() if type(pipe.scheduler) is cls), None)


def open_pipeline(args: argparse.Namespace) -> tuple[Any, str | None, int]:
    """(pipeline, scheduler name, steps) from the model options, validated before any sampling starts."""
    from .sampling import default_steps, load_pipeline, with_scheduler
    from .schedulers import SCHEDULERS, max_inference_steps

    if args.scheduler is not None and args.scheduler not in SCHEDULERS:
        raise CLIError(f"Unknown scheduler {args.scheduler!r}; choose one of {', '.join(SCHEDULERS)}.")
    load_kwargs = _check_model_source(args.model)
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()  # the "Loading pipeline components" bar; our own bar follows
    pipe = with_scheduler(load_pipeline(args.model, device=args.device, **load_kwargs), args.scheduler)
    pipe.set_progress_bar_config(disable=True)
    name = args.scheduler or _scheduler_name(pipe)
    max_steps = max_inference_steps(name, pipe.scheduler.config.num_train_timesteps)
    steps = args.steps if args.steps is not None else min(default_steps(name), max_steps)
    if not 1 <= steps <= max_steps:
        raise CLIError(f"--steps must be between 1 and {max_steps} for {name or 'this scheduler'}, got {steps}.")
    if args.domain is not None:
        pipe._domain_label(args.domain)  # raises the pipeline's sentence for unknown domains
    return pipe, name, steps


def _call_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    if args.domain is None:
        return {}
    return {"domain": args.domain, "guidance_scale": args.guidance_scale}


def count_timesteps(pipe: Any, steps: int) -> int:
    """Callback calls per image batch: len(timesteps), which is 2 * steps - 1 for Heun."""
    pipe.scheduler.set_timesteps(steps)
    return len(pipe.scheduler.timesteps)


class StepProgress:
    """A `callback_on_step_end` that advances a tqdm bar once per denoising step."""

    tensor_inputs = ["latents"]

    def __init__(self, bar: Any):
        self.bar = bar

    def __call__(self, pipe: Any, step: int, timestep: Any, callback_kwargs: dict) -> dict:
        self.bar.update(1)
        return {}


class Callbacks:
    """Several `callback_on_step_end`s as one."""

    def __init__(self, *callbacks: Callable):
        self.callbacks = callbacks
        self.tensor_inputs = sorted({name for c in callbacks for name in getattr(c, "tensor_inputs", ["latents"])})

    def __call__(self, pipe: Any, step: int, timestep: Any, callback_kwargs: dict) -> dict:
        for callback in self.callbacks:
            callback(pipe, step, timestep, callback_kwargs)
        return {}


def sample_with_progress(
    pipe: Any, num: int, seed: int, batch_size: int, steps: int, call_kwargs: dict, extra_callback=None
) -> Any:
    """All images (N, 3, H, W) in [0, 1] via `sampling.iter_batches` (image i seeded seed + i), with one step bar."""
    import torch
    from tqdm.auto import tqdm

    from .sampling import iter_batches

    per_batch = count_timesteps(pipe, steps)
    total = math.ceil(num / batch_size) * per_batch
    batches = []
    with tqdm(total=total, desc=f"sampling {num} image{'s' * (num != 1)}", unit="step", file=sys.stderr) as bar:
        callback = StepProgress(bar) if extra_callback is None else Callbacks(extra_callback, StepProgress(bar))
        for images in iter_batches(
            pipe, num, seed=seed, batch_size=batch_size, num_inference_steps=steps,
            callback_on_step_end=callback, **call_kwargs,
        ):  # fmt: skip
            batches.append(images)
            bar.set_postfix_str(f"{sum(len(b) for b in batches)}/{num} images")
    return torch.cat(batches)


def _save(image: Any, path: str) -> str:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def _describe(pipe: Any, name: str | None, steps: int) -> str:
    return f"{name or type(pipe.scheduler).__name__}, {steps} steps"


# ----------------------------------------------------------------------------------------------------- sample
def cmd_sample(args: argparse.Namespace) -> int:
    from .viz import make_grid, to_pil

    _positive(args.num, "images")
    _positive(args.batch_size, "images per batch")
    pipe, name, steps = open_pipeline(args)
    images = sample_with_progress(pipe, args.num, args.seed, args.batch_size, steps, _call_kwargs(args))
    print(_save(make_grid(images, scale=args.scale), args.output))
    if args.save_individual:
        folder = Path(args.save_individual)
        folder.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(to_pil(images)):
            image.save(folder / f"{i:04d}_seed{args.seed + i}.png")
        print(f"{len(images)} images in {folder}")
    return 0


# ----------------------------------------------------------------------------------------------------- denoise
def evenly_spaced(total: int, count: int) -> list[int]:
    """`count` step indices from the first to the last step (all of them when count <= 0 or >= total)."""
    if count <= 0 or count >= total:
        return list(range(total))
    if count == 1:
        return [total - 1]
    return sorted({round(i * (total - 1) / (count - 1)) for i in range(count)})


def _display_latents(pipe: Any, step: int, latents: Any) -> Any:
    """x_t on the [-1, 1] scale: sigma-space samplers (Euler, Heun) carry x_0 + sigma * eps, i.e. sqrt(1 + sigma^2)
    times a variance-preserving x_t."""
    sigmas = getattr(pipe.scheduler, "sigmas", None)
    if sigmas is None or float(pipe.scheduler.init_noise_sigma) <= 1.0 + 1e-6 or step + 1 >= len(sigmas):
        return latents
    sigma = float(sigmas[step + 1])
    return latents / math.sqrt(1 + sigma**2)


def cmd_denoise(args: argparse.Namespace) -> int:
    from .pipeline import DenoisingRecorder
    from .viz import auto_scale, denoising_frame, denoising_strip, save_gif

    _positive(args.num, "samples")
    _positive(args.snapshots, "snapshots")
    pipe, name, steps = open_pipeline(args)
    total = count_timesteps(pipe, steps)
    strip_steps = evenly_spaced(total, args.snapshots)
    gif_steps = evenly_spaced(total, args.gif_frames) if args.gif else []
    recorder = DenoisingRecorder(steps=sorted(set(strip_steps) | set(gif_steps)))
    sample_with_progress(pipe, args.num, args.seed, args.num, steps, _call_kwargs(args), extra_callback=recorder)

    snapshots = {
        step: (_display_latents(pipe, step, x_t), x0, t)
        for step, x_t, x0, t in zip(
            recorder.steps, recorder.latents, recorder.pred_original_samples, recorder.timesteps
        )
    }
    scale = args.scale or auto_scale(pipe.unet.config.sample_size)
    strip = denoising_strip(
        [snapshots[s][0] for s in strip_steps],
        [snapshots[s][1] for s in strip_steps],
        [f"t={snapshots[s][2]:.0f}" for s in strip_steps],
        scale=scale,
        title=f"x_t after the step at t, and below it the x0 predicted at t ({_describe(pipe, name, steps)})",
    )
    print(_save(strip, args.output))
    if args.gif:
        frames = [
            denoising_frame(snapshots[s][0], snapshots[s][1], f"step {s + 1}/{total}  t={snapshots[s][2]:.0f}", scale)
            for s in gif_steps
        ]
        print(save_gif(frames, args.gif, duration_ms=args.frame_ms))
    return 0


# ----------------------------------------------------------------------------------------------------- noise
def load_image(path: str, resolution: int) -> Any:
    """One image as the data pipeline prepares it: short side resized (bilinear, antialiased), centre crop,
    [-1, 1]. Returns (1, 3, R, R)."""
    import numpy as np
    import torch
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(path).convert("RGB")
    except UnidentifiedImageError:
        raise CLIError(f"{path} is not an image PIL can read.") from None
    w, h = image.size
    ratio = resolution / min(w, h)
    new_w, new_h = max(resolution, round(w * ratio)), max(resolution, round(h * ratio))
    image = image.resize((new_w, new_h), Image.BILINEAR)
    left, top = int(round((new_w - resolution) / 2.0)), int(round((new_h - resolution) / 2.0))
    image = image.crop((left, top, left + resolution, top + resolution))
    array = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)
    return (array / 127.5 - 1)[None]


def take_dataset_images(config_kwargs: dict[str, Any], num: int) -> Any:
    """`data.take_images` through the data module's contract, as (n, 3, R, R) in [-1, 1]."""
    try:
        from .data import DataConfig, take_images
    except ModuleNotFoundError as error:
        raise CLIError(f"The data module is not available ({error}).") from None
    images = take_images(DataConfig(**config_kwargs), num)
    if len(images) == 0:
        raise CLIError("The dataset gave no images.")
    return images


def _noise_source(args: argparse.Namespace) -> Any:
    path = Path(args.source)
    if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
        return load_image(str(path), args.resolution)
    config = {"dataset": args.source, "resolution": args.resolution, "image_column": args.image_column}
    return take_dataset_images(config, _positive(args.num_images, "images"))


def _noise_scheduler(schedule: str, args: argparse.Namespace) -> Any:
    from diffusers import DDPMScheduler

    if schedule not in BETA_SCHEDULES:
        raise CLIError(f"Unknown beta schedule {schedule!r}; choose from {', '.join(BETA_SCHEDULES)}.")
    return DDPMScheduler(
        num_train_timesteps=args.num_train_timesteps,
        beta_schedule=schedule,
        beta_start=args.beta_start,
        beta_end=args.beta_end,
    )


def noised(scheduler: Any, images: Any, noise: Any, timestep: int) -> Any:
    """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, in float32 (fp16 would round sqrt(1 - abar_t) to 0)."""
    import torch

    t = torch.full((len(images),), timestep, dtype=torch.long)
    return scheduler.add_noise(images.float(), noise.float(), t)


def cmd_noise(args: argparse.Namespace) -> int:
    import torch

    from .viz import auto_scale, labelled_table, to_pil

    _positive(args.num_train_timesteps, "training timesteps")
    _positive(args.resolution, "pixels of resolution")
    if not args.timesteps or not args.beta_schedule:
        raise CLIError("Give at least one timestep (--timesteps) and one schedule (--beta-schedule).")
    bad = [t for t in args.timesteps if not 0 <= t < args.num_train_timesteps]
    if bad:
        raise CLIError(f"Timesteps must lie in [0, {args.num_train_timesteps - 1}], got {bad}.")
    schedulers = {name: _noise_scheduler(name, args) for name in args.beta_schedule}
    images = _noise_source(args)
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(args.seed))
    scale = args.scale or auto_scale(images.shape[-1])
    rows, labels = [], []
    for name, scheduler in schedulers.items():
        for k in range(len(images)):
            row = torch.cat([noised(scheduler, images[k : k + 1], noise[k : k + 1], t) for t in args.timesteps])
            rows.append(to_pil((row + 1) / 2, scale))
            labels.append(name if len(images) == 1 else f"{name} #{k}")
    title = f"q(x_t | x_0), T = {args.num_train_timesteps}, noise seed {args.seed}"
    table = labelled_table(rows, [f"t={t}" for t in args.timesteps], labels, title=title)
    print(_save(table, args.output))
    for name, scheduler in schedulers.items():
        abar = scheduler.alphas_cumprod[args.timesteps]
        print(f"{name:>18}: sqrt(abar_t) = " + ", ".join(f"{v:.3f}" for v in abar.sqrt().tolist()))
    return 0


# ----------------------------------------------------------------------------------------------------- data-preview
def _data_config(args: argparse.Namespace, resolution: int, **extra: Any) -> dict[str, Any]:
    config = {
        "dataset": args.dataset,
        "resolution": resolution,
        "dataset_config_name": args.dataset_config_name,
        "image_column": args.image_column,
        "split": args.split,
        "train_data_dir": args.train_data_dir,
        "cache_dir": args.cache_dir,
        "seed": args.seed,
    }
    config.update(extra)
    return config


def cmd_data_preview(args: argparse.Namespace) -> int:
    from .viz import auto_scale, make_grid

    _positive(args.num, "images")
    _positive(args.resolution, "pixels of resolution")
    config = _data_config(args, args.resolution, center_crop=not args.random_crop, random_flip=args.random_flip)
    images = take_dataset_images(config, args.num)
    scale = args.scale or auto_scale(images.shape[-1])
    print(_save(make_grid((images + 1) / 2, scale=scale), args.output))
    print(
        f"{len(images)} images of {tuple(images.shape[1:])}, values in [{images.min():.3f}, {images.max():.3f}], "
        f"mean {images.mean():.3f}"
    )
    return 0


# ----------------------------------------------------------------------------------------------------- evaluate
def _metric_request(spec: str) -> tuple[list[str], bool]:
    from .metrics import ALL_METRICS, parse_metrics

    if spec.strip().lower() == "auto":
        return list(ALL_METRICS), True
    return parse_metrics(spec), False


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .metrics import Evaluator, format_table
    from .viz import make_grid

    _positive(args.num, "images")
    _positive(args.batch_size, "images per batch")
    metrics, skip_unavailable = _metric_request(args.metrics)
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # DINOv2's "Loading weights" bar
    pipe, name, steps = open_pipeline(args)
    resolution = pipe.unet.config.sample_size
    reference = take_dataset_images(_data_config(args, resolution, center_crop=True, random_flip=False), args.num)
    if len(reference) < args.num:
        print(f"note: the dataset has {len(reference)} images; evaluating {len(reference)}.", file=sys.stderr)
    evaluator = Evaluator(
        reference,
        metrics,
        dinov2=args.dinov2,
        dinov2_resolution=args.dinov2_resolution,
        inception_weights=args.inception_weights,
        seed=args.seed,
        device=pipe.device,
        batch_size=args.batch_size,
        skip_unavailable=skip_unavailable,
    )
    for reason in dict.fromkeys(evaluator.skipped.values()):
        names = ", ".join(m for m, r in evaluator.skipped.items() if r == reason)
        print(f"note: {names} skipped: {reason}", file=sys.stderr)
    samples = sample_with_progress(pipe, len(reference), args.seed, args.batch_size, steps, _call_kwargs(args))
    if args.grid:
        print(_save(make_grid(samples[:64]), args.grid))
    results = evaluator(samples * 2 - 1)
    report = {
        "model": args.model,
        "dataset": args.dataset or args.train_data_dir or "emoji",
        "split": args.split,
        "num_images": len(reference),
        "resolution": resolution,
        "scheduler": name or type(pipe.scheduler).__name__,
        "steps": steps,
        "seed": args.seed,
        "metrics": results,
        "skipped": evaluator.skipped,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    print(format_table(results))
    print(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The `anime-ddpm` command: sample, watch the reverse and forward processes, preview data, evaluate, rebuild an EMA.

Heavy libraries are imported inside the commands so `anime-ddpm --help` answers at once. User mistakes (missing
model, unknown scheduler, zero images, an output that cannot be written, no network) end with one sentence on stderr
and exit status 1, and every value and path is checked before the model is loaded or sampled.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .demo import add_parser as add_demo_parser  # imports neither gradio nor torch
from .errors import first_line


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
# Sampling that will take longer than this gets a one-line estimate once the first model calls have been timed.
ESTIMATE_OVER_S = 30.0
TIMED_CALLS = 4  # callbacks before the estimate: the first call (warm-up) is not counted
FAST_SCHEDULER = "dpm++"


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


def _finite_float(text: str) -> float:
    """A float flag that refuses nan and inf, which every range check would otherwise let through."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


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
    parser.add_argument(
        "--guidance-scale", type=_finite_float, default=1.0, help="classifier-free guidance with --domain (1: none)"
    )


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
        help="comma-separated, one row each: any beta schedule training accepts",
    )
    noise.add_argument("--num-train-timesteps", type=int, default=1000, help="T of the schedule")
    noise.add_argument("--beta-start", type=_finite_float, default=1e-4, help="first beta (linear, scaled_linear)")
    noise.add_argument("--beta-end", type=_finite_float, default=0.02, help="last beta (linear, scaled_linear)")
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

    posthoc = _command(commands, "posthoc-ema", help="a pipeline with an EMA of any length, made after the run")
    posthoc.add_argument("run_dir", help="the --output_dir of a finished run trained with --ema_snapshot_steps")
    posthoc.add_argument(
        "--sigma-rel",
        type=_finite_float,
        default=0.10,
        help="the EMA length, relative to the run (Karras et al. 2024)",
    )
    posthoc.add_argument("--step", type=int, default=None, help="the snapshot step to rebuild at (default: the last)")
    posthoc.add_argument("--output-dir", default=None, help="the new pipeline (default: RUN_DIR-ema-<sigma-rel>)")
    posthoc.set_defaults(handler=cmd_posthoc_ema)

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


# ----------------------------------------------------------------------------------------------------- checks
def _positive(value: int, what: str) -> int:
    if value < 1:
        raise CLIError(f"The number of {what} must be at least 1, got {value}.")
    return value


def _at_least(flag: str, value: int, low: int, meaning: str = "") -> int:
    if not value >= low:
        raise CLIError(f"{flag} must be at least {low}{meaning}, got {value}.")
    return value


def check_folder(path: str | Path, flag: str, given: str | None = None) -> None:
    """Fail now, not after all the sampling, when `path` cannot be (or become) a folder we can write into; the
    sentence names the `given` value of `flag` (default: `path`)."""
    from .paths import why_not_writable

    reason = why_not_writable(path)
    if reason:
        raise CLIError(f"Cannot write {flag} {given or path}: {reason}.")


def check_output_file(path: str, flag: str, image: bool = True, animated: bool = False) -> None:
    """Fail now when `path` is a folder, has no suffix Pillow can write (for an image), or lies where no file can be
    written; `animated`: a format with frames (GIF, PNG, WebP)."""
    target = Path(path)
    suffix = ".gif" if animated else ".png" if image else ".json"
    if target.is_dir():
        raise CLIError(f"{flag} {path} is a folder: give a file name inside it, such as {target / ('out' + suffix)}.")
    if image:
        from PIL import Image

        Image.init()
        writers = Image.SAVE_ALL if animated else Image.SAVE
        if Image.registered_extensions().get(target.suffix.lower()) not in writers:
            kind, others = ("an animated image", ".png, .webp") if animated else ("an image", ".jpg, .webp...")
            raise CLIError(f"{flag} {path} is not {kind} file name Pillow writes: end it in {suffix} (or {others}).")
    if target.exists() and not os.access(target, os.W_OK):
        raise CLIError(f"Cannot write {flag} {path}: the file is read-only.")
    check_folder(target.parent, flag, given=path)


def _check_model_source(model: str) -> dict[str, Any]:
    """Fail in seconds, with a sentence, when a model cannot be found (diffusers would retry the Hub for ~25 s)."""
    from .network import hub_reachable, is_repo_id

    if os.path.isdir(model):
        return {}
    if os.path.exists(model):
        raise CLIError(f"{model} is a file: give the folder that training or save_pretrained wrote, or a Hub repo id.")
    if not is_repo_id(model):
        raise CLIError(f"There is no model folder at {model}.")
    if hub_reachable():
        return {}
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(model, "model_index.json"), str):
        return {"local_files_only": True}
    raise CLIError(
        f"{model!r} is not a local folder nor a model in the local Hugging Face cache, and the Hub cannot be reached."
    )


# ----------------------------------------------------------------------------------------------------- helpers
def _scheduler_name(pipe: Any) -> str | None:
    from .schedulers import SCHEDULERS

    return next((name for name, cls in SCHEDULERS.items() if type(pipe.scheduler) is cls), None)


def open_pipeline(args: argparse.Namespace) -> tuple[Any, str | None, int]:
    """(pipeline, scheduler name, steps) from the model options, validated before any sampling starts."""
    from .sampling import default_steps, load_pipeline, with_scheduler
    from .schedulers import SCHEDULERS, max_inference_steps

    if args.scheduler is not None and args.scheduler not in SCHEDULERS:
        raise CLIError(f"Unknown scheduler {args.scheduler!r}; choose one of {', '.join(SCHEDULERS)}.")
    if not args.guidance_scale >= 0:
        raise CLIError(f"--guidance-scale must be 0 or more (1: no guidance), got {args.guidance_scale}.")
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
    """Callback calls (model evaluations) per image batch: len(timesteps), which is 2 * steps - 1 for Heun."""
    pipe.scheduler.set_timesteps(steps)
    return len(pipe.scheduler.timesteps)


def completed_steps(calls: int, steps: int, calls_per_batch: int) -> int:
    """Denoising steps done after `calls` callbacks, counted as the user asked for them: Heun calls back twice for
    each step but the last, the other samplers once per step."""
    batches, within = divmod(calls, calls_per_batch)
    return batches * steps + within * steps // calls_per_batch


class StepProgress:
    """A `callback_on_step_end` that advances a tqdm bar in denoising steps (not in Heun's model evaluations)."""

    tensor_inputs = ["latents"]

    def __init__(self, bar: Any, steps: int, calls_per_batch: int):
        self.bar = bar
        self.steps = steps
        self.calls_per_batch = calls_per_batch
        self.calls = 0

    def __call__(self, pipe: Any, step: int, timestep: Any, callback_kwargs: dict) -> dict:
        self.calls += 1
        self.bar.update(completed_steps(self.calls, self.steps, self.calls_per_batch) - self.bar.n)
        return {}


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class TimeEstimate:
    """A `callback_on_step_end` that times the first model calls and, when all of them will take longer than
    `ESTIMATE_OVER_S`, says once how long and what is faster, before the user has waited long for nothing."""

    tensor_inputs = ["latents"]

    def __init__(self, total_calls: int, message: Callable[[float], str], clock: Callable[[], float] = time.monotonic):
        self.total_calls = total_calls
        self.message = message
        self.clock = clock
        self.calls = 0
        self.first_call_end: float | None = None

    def __call__(self, pipe: Any, step: int, timestep: Any, callback_kwargs: dict) -> dict:
        self.calls += 1
        if self.calls == 1:
            self.first_call_end = self.clock()
        elif self.calls == min(TIMED_CALLS, self.total_calls):
            seconds = (self.clock() - self.first_call_end) / (self.calls - 1) * self.total_calls
            if seconds > ESTIMATE_OVER_S:
                from tqdm.auto import tqdm

                tqdm.write(self.message(seconds), file=sys.stderr)
        return {}


def _estimate_message(pipe: Any, name: str | None, steps: int, num: int) -> Callable[[float], str]:
    from .schedulers import DEFAULT_STEPS

    label = name or type(pipe.scheduler).__name__
    fast_steps = DEFAULT_STEPS[FAST_SCHEDULER]
    hint = f"; --scheduler {FAST_SCHEDULER} takes {fast_steps} steps" if steps > fast_steps else ""
    images = f"{num} image{'s' * (num != 1)}"
    return lambda seconds: f"anime-ddpm: about {_duration(seconds)} for {steps} {label} steps x {images}{hint}."


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
    pipe: Any,
    num: int,
    seed: int,
    batch_size: int,
    steps: int,
    call_kwargs: dict,
    extra_callback: Callable | None = None,
    name: str | None = None,
) -> Any:
    """All images (N, 3, H, W) in [0, 1] via `sampling.iter_batches` (image i seeded seed + i), with a bar counted
    in denoising steps and, when sampling will be long, an estimate of how long."""
    import torch
    from tqdm.auto import tqdm

    from .sampling import iter_batches

    per_batch = count_timesteps(pipe, steps)
    num_batches = math.ceil(num / batch_size)
    estimate = TimeEstimate(num_batches * per_batch, _estimate_message(pipe, name, steps, num))
    batches = []
    desc = f"sampling {num} image{'s' * (num != 1)}"
    with tqdm(total=num_batches * steps, desc=desc, unit="step", file=sys.stderr) as bar:
        callbacks = [c for c in (extra_callback, StepProgress(bar, steps, per_batch), estimate) if c is not None]
        for images in iter_batches(
            pipe, num, seed=seed, batch_size=batch_size, num_inference_steps=steps,
            callback_on_step_end=Callbacks(*callbacks), **call_kwargs,
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
    _positive(args.num, "images")
    _positive(args.batch_size, "images per batch")
    _at_least("--scale", args.scale, 1)
    check_output_file(args.output, "--output")
    if args.save_individual:
        check_folder(args.save_individual, "--save-individual")
    pipe, name, steps = open_pipeline(args)
    from .viz import make_grid, to_pil

    images = sample_with_progress(pipe, args.num, args.seed, args.batch_size, steps, _call_kwargs(args), name=name)
    print(_save(make_grid(images, scale=args.scale), args.output))
    if args.save_individual:
        folder = Path(args.save_individual)
        folder.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(to_pil(images)):
            image.save(folder / f"{i:04d}_seed{args.seed + i}.png")
        print(f"{len(images)} images in {folder}")
    return 0


# ----------------------------------------------------------------------------------------------------- denoise
def _check_denoise_args(args: argparse.Namespace) -> None:
    _positive(args.num, "samples")
    _positive(args.snapshots, "snapshots")
    _at_least("--gif-frames", args.gif_frames, 0, " (0: every step)")
    _at_least("--frame-ms", args.frame_ms, 1)
    _at_least("--scale", args.scale, 0, " (0: automatic)")
    check_output_file(args.output, "--output")
    if args.gif:
        check_output_file(args.gif, "--gif", animated=True)


def cmd_denoise(args: argparse.Namespace) -> int:
    _check_denoise_args(args)
    pipe, name, steps = open_pipeline(args)
    from .pipeline import DenoisingRecorder, display_scale, evenly_spaced_steps
    from .viz import auto_scale, denoising_frame, denoising_strip, save_gif

    total = count_timesteps(pipe, steps)
    strip_steps = evenly_spaced_steps(total, args.snapshots)
    gif_steps = evenly_spaced_steps(total, args.gif_frames) if args.gif else []
    recorder = DenoisingRecorder(steps=sorted(set(strip_steps) | set(gif_steps)))
    call_kwargs = _call_kwargs(args)
    sample_with_progress(pipe, args.num, args.seed, args.num, steps, call_kwargs, extra_callback=recorder, name=name)

    snapshots = {
        step: (x_t * display_scale(pipe.scheduler, step), x0, t)
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
        frames = []
        for s in gif_steps:
            label = f"step {completed_steps(s + 1, steps, total)}/{steps}  t={snapshots[s][2]:.0f}"
            frames.append(denoising_frame(snapshots[s][0], snapshots[s][1], label, scale))
        print(save_gif(frames, args.gif, duration_ms=args.frame_ms))
    return 0


# ----------------------------------------------------------------------------------------------------- noise
def load_image(path: str, resolution: int) -> Any:
    """One image as the data pipeline prepares it: short side resized (bilinear, antialiased), centre crop,
    [-1, 1]. Returns (1, 3, R, R)."""
    import warnings

    import numpy as np
    import torch
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path).convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise CLIError(
            f"{path} has more pixels than the {Image.MAX_IMAGE_PIXELS:,} that Pillow opens safely "
            "(a decompression-bomb guard): give a smaller image."
        ) from None
    except UnidentifiedImageError:
        raise CLIError(f"{path} is not an image PIL can read.") from None
    except OSError as error:
        raise CLIError(f"{path} could not be read as an image ({first_line(error)}).") from None
    w, h = image.size
    ratio = resolution / min(w, h)
    new_w, new_h = max(resolution, round(w * ratio)), max(resolution, round(h * ratio))
    image = image.resize((new_w, new_h), Image.BILINEAR)
    left, top = int(round((new_w - resolution) / 2.0)), int(round((new_h - resolution) / 2.0))
    image = image.crop((left, top, left + resolution, top + resolution))
    array = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)
    return (array / 127.5 - 1)[None]


def take_dataset_images(options: Any, num: int, **overrides: Any) -> Any:
    """`num` images (n, 3, R, R) in [-1, 1] from the dataset that the data flags in `options` name (`overrides`
    win), through `data.take_images`."""
    try:
        from .data import DataConfig, take_images
    except ModuleNotFoundError as error:
        raise CLIError(f"The data module is not available ({error}).") from None
    images = take_images(DataConfig.from_options(options, **overrides), num)
    if len(images) == 0:
        raise CLIError("The dataset gave no images.")
    return images


def _noise_source(args: argparse.Namespace) -> Any:
    path = Path(args.source)
    if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
        return load_image(str(path), args.resolution)
    # --seed is the noise's; the dataset's images stay the same whatever it is.
    return take_dataset_images(args, args.num_images, dataset=args.source, seed=None)


def _noise_scheduler(schedule: str, args: argparse.Namespace) -> Any:
    from diffusers import DDPMScheduler

    from .losses import BETA_SCHEDULES

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


def _check_noise_args(args: argparse.Namespace) -> None:
    _positive(args.num_train_timesteps, "training timesteps")
    _positive(args.resolution, "pixels of resolution")
    _positive(args.num_images, "images")
    _at_least("--scale", args.scale, 0, " (0: automatic)")
    if not args.timesteps or not args.beta_schedule:
        raise CLIError("Give at least one timestep (--timesteps) and one schedule (--beta-schedule).")
    bad = [t for t in args.timesteps if not 0 <= t < args.num_train_timesteps]
    if bad:
        raise CLIError(f"Timesteps must lie in [0, {args.num_train_timesteps - 1}], got {bad}.")
    for flag, beta in (("--beta-start", args.beta_start), ("--beta-end", args.beta_end)):
        if not 0 < beta < 1:
            raise CLIError(f"{flag} must lie strictly between 0 and 1, got {beta}.")
    check_output_file(args.output, "--output")


def cmd_noise(args: argparse.Namespace) -> int:
    _check_noise_args(args)
    import torch

    from .viz import auto_scale, labelled_table, to_pil

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
def cmd_data_preview(args: argparse.Namespace) -> int:
    _positive(args.num, "images")
    _positive(args.resolution, "pixels of resolution")
    _at_least("--scale", args.scale, 0, " (0: automatic)")
    check_output_file(args.output, "--output")
    from .viz import auto_scale, make_grid

    images = take_dataset_images(args, args.num, center_crop=not args.random_crop)
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


def _check_evaluate_args(args: argparse.Namespace) -> None:
    _positive(args.num, "images")
    _positive(args.batch_size, "images per batch")
    _at_least("--dinov2-resolution", args.dinov2_resolution, 1)
    check_output_file(args.output, "--output", image=False)
    if args.grid:
        check_output_file(args.grid, "--grid")


def cmd_evaluate(args: argparse.Namespace) -> int:
    _check_evaluate_args(args)
    metrics, skip_unavailable = _metric_request(args.metrics)
    from transformers.utils import logging as transformers_logging

    from .metrics import Evaluator, format_table
    from .viz import make_grid

    transformers_logging.disable_progress_bar()  # DINOv2's "Loading weights" bar
    pipe, name, steps = open_pipeline(args)
    resolution = pipe.unet.config.sample_size
    reference = take_dataset_images(args, args.num, resolution=resolution, center_crop=True, random_flip=False)
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
    call_kwargs = _call_kwargs(args)
    samples = sample_with_progress(pipe, len(reference), args.seed, args.batch_size, steps, call_kwargs, name=name)
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


def cmd_posthoc_ema(args: argparse.Namespace) -> int:
    from .posthoc_ema import MAX_SIGMA_REL

    if not 0 < args.sigma_rel <= MAX_SIGMA_REL:
        raise CLIError(f"--sigma-rel must be above 0 and at most {MAX_SIGMA_REL}, got {args.sigma_rel}.")
    run = Path(args.run_dir)
    if not (run / "model_index.json").is_file():
        raise CLIError(f"{run} holds no trained pipeline (model_index.json): give the --output_dir of a finished run, or finish this one with --resume_from_checkpoint latest.")  # fmt: skip
    output = Path(args.output_dir or f"{str(run).rstrip('/')}-ema-{args.sigma_rel:g}")
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise CLIError(f"--output-dir {output} already exists: choose another, or remove it first.")
    check_folder(output, "--output-dir")
    from . import ema_snapshots
    from .pipeline import AnimeDDPMPipeline

    snapshots = ema_snapshots.find(str(run))
    if not snapshots:
        raise CLIError(f"{run} has no EMA snapshots ({run / ema_snapshots.SNAPSHOT_DIR}): train with --ema_snapshot_steps N to write them.")  # fmt: skip
    try:
        state_dict, step = ema_snapshots.reconstruct(snapshots, args.sigma_rel, args.step)
    except ValueError as error:
        raise CLIError(f"Cannot rebuild the EMA from {run / ema_snapshots.SNAPSHOT_DIR}: {error}.") from None
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()  # the "Loading pipeline components" bar
    pipe = AnimeDDPMPipeline.from_pretrained(run)
    pipe.unet.load_state_dict(state_dict)
    used = sum(snapshot.step <= step for snapshot in snapshots)
    tmp = output.with_name(f".tmp-{output.name}")  # a killed command leaves no half pipeline at --output-dir
    shutil.rmtree(tmp, ignore_errors=True)
    card = _posthoc_card(run, pipe, args.sigma_rel, step, used, output.name)
    if card is None:
        pipe.save_pretrained(tmp)
    else:
        from .hub import save_for_hub

        save_for_hub(pipe, tmp, card[0], sample_grid=card[1])
    if output.exists():
        output.rmdir()  # empty, checked above
    os.replace(tmp, output)
    print(f"The EMA of sigma_rel {args.sigma_rel:g} at step {step}, from {used} snapshots: {output}")
    return 0


def _posthoc_card(run: Path, pipe, sigma_rel: float, step: int, used: int, name: str):
    """The model card facts and sample grid of a post-hoc EMA pipeline: the run's card with this EMA and step, and
    samples of these weights drawn as the trainer draws its own; None (with a warning) if the run's files are gone."""
    from .run_log import read_training_config
    from .training import card_info, sample_grid

    try:
        config = read_training_config(run)
        summary = json.loads((run / "summary.json").read_text())
        info = card_info(config, summary, ema=None)
    except (OSError, ValueError, TypeError, KeyError) as error:
        print(f"anime-ddpm posthoc-ema: no model card ({run} lacks a readable training_config.json or summary.json: {error}).", file=sys.stderr)  # fmt: skip
        return None
    if step != summary["steps"]:  # rebuilt at an earlier snapshot: the run's last loss and epochs are not its own
        info.pop("final_loss", None)
        info.pop("epochs", None)
    info.pop("repo_id", None)  # the run's --hub_model_id names the run's model, not this one
    info.update(model_name=name, train_steps=step, use_ema=True, ema_sigma_rel=sigma_rel)
    info["extra"] = {
        "EMA rebuilt after the run": f"from {used} snapshots (`anime-ddpm posthoc-ema`, Karras et al. 2024)"
    }
    return info, sample_grid(pipe.unet, pipe.scheduler, config, config.num_samples)


if __name__ == "__main__":
    sys.exit(main())

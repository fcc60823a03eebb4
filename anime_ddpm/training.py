"""Train a DDPM with Accelerate: the configuration, the training loop, and the checkpoint helpers it uses.

`train()` reads from top to bottom: set-up (Accelerator, data, model, loss, optimiser, LR schedule, EMA), resume,
the loop (one optimiser step per `gradient_accumulation_steps` micro-batches: loss, backward, clip, step, EMA,
log, checkpoint, preview), then the final save. Everything else in this file is a helper it calls.

Accepts every argument of diffusers' `examples/unconditional_image_generation/train_unconditional.py` with the same
name and meaning, and fixes what that script gets wrong (see ../shared/DESIGN.md, "Diffusers facts"):
- the forward (noising) process runs in float32; only the UNet call is autocast (bf16/fp16);
- the LR schedule is stepped once per optimiser step, so warm-up and length are counted in optimiser steps whatever
  the gradient accumulation and the number of processes;
- checkpoints are written by every process (DeepSpeed/FSDP need it) into a temporary folder that is renamed to
  `checkpoint-<step>` only when complete, so `--resume_from_checkpoint latest` never picks a half-written one; they
  hold the model, EMA, optimiser, LR schedule, RNG states, step, data position and per-rank noise generator;
- streams have no length: `--max_train_steps` sets the length; `--seed` makes runs reproducible;
- `--hub_private_repo` is honoured and checkpoints are never uploaded.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import shutil
import signal
import sys
import time
import types
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DistributedType, ProjectConfiguration, broadcast, set_seed
from diffusers import UNet2DModel
from diffusers.optimization import TYPE_TO_SCHEDULER_FUNCTION, get_scheduler
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from . import hub, losses, viz
from .budget import TimeBudgetLR, TrainingClock, format_duration, parse_duration
from .conditioning import SourceConditioning, conditional_unet_config, domain_grid
from .data import DataConfig, DataError, build_dataloader, build_dataset
from .models import PRESETS, build_unet, count_parameters
from .pipeline import AnimeDDPMPipeline
from .sampling import generate
from .schedulers import DEFAULT_STEPS, SCHEDULERS, scheduler_from


logger = get_logger(__name__)

# Without --max_train_steps, --num_epochs or --max_train_time, a run trains for this long: the budget the default
# recipe was chosen for (bench/bench_recipe.py), and a predictable wait on any machine.
DEFAULT_MAX_TRAIN_TIME = "15m"
CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
TMP_PREFIX = ".tmp-checkpoint-"  # must not start with "checkpoint": `latest` (ours and diffusers') ignores it
OLD_PREFIX = ".old-checkpoint-"
TRACKER_PROJECT = "train_with_accelerate"
LOGGERS = ("tensorboard", "wandb", "comet_ml", "mlflow", "aim", "clearml", "dvclive", "swanlab", "all", "none")


class TrainingError(RuntimeError):
    """A one-sentence, user-facing reason to stop; `exit_code` is 2 for bad settings, 1 for failures while training."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


# ============================================================================================= configuration
def _opt(default: Any = None, help: str = "", *, type: Any = None, choices: Sequence | None = None, group: str = "",
         hidden: bool = False, example: bool = False) -> Any:  # fmt: skip
    """A TrainingConfig field with its command-line description (`example`: a train_unconditional.py flag)."""
    meta = dict(help=help, type=type, choices=choices, group=group, hidden=hidden, example=example)
    return field(default=default, metadata=meta)


@dataclass
class TrainingConfig:
    """Every setting of a training run; `build_parser()` turns each field into `--<name>`.

    Fields marked `example=True` are the flags of diffusers' train_unconditional.py, with the same names and meaning
    (some defaults differ: ours train a small model on a CPU in minutes).
    """

    # ---- data
    dataset: str | None = _opt(None, "Dataset: a preset (emoji, anime, anime-21k, celeba, ...), a Hub id, a local folder, parquet files, or a mixture 'anime:0.7,celeba:0.3'. Default: the embedded emoji faces (or --train_data_dir).", type=str, group="data")  # fmt: skip
    dataset_name: str | None = _opt(None, "diffusers' name for --dataset (a Hub id or local dataset); the two are the same setting.", type=str, group="data", example=True)  # fmt: skip
    dataset_config_name: str | None = _opt(None, "The config of the Hub dataset, if it has several.", type=str, group="data", example=True)  # fmt: skip
    train_data_dir: str | None = _opt(None, "A local folder of images (imagefolder layout); used when no dataset is named.", type=str, group="data", example=True)  # fmt: skip
    image_column: str | None = _opt(None, "The dataset column holding the images (default: 'image' or the preset's).", type=str, group="data")  # fmt: skip
    cache_dir: str | None = _opt(None, "Where downloaded datasets (and models) are cached.", type=str, group="data", example=True)  # fmt: skip
    resolution: int = _opt(32, "Training resolution: images are resized (short side) and cropped to this square size.", group="data", example=True)  # fmt: skip
    center_crop: bool = _opt(True, "Center-crop after resizing (--no-center_crop: random crop, as diffusers' default).", group="data", example=True)  # fmt: skip
    random_flip: bool = _opt(False, "Randomly flip images horizontally.", group="data", example=True)
    shuffle_buffer: int | None = _opt(None, "Shuffle buffer of streamed datasets (0: no shuffling; default: the data module's).", type=int, group="data")  # fmt: skip
    dataloader_num_workers: int = _opt(0, "Data loading subprocesses per training process (0: load in the main process).", group="data", example=True)  # fmt: skip

    # ---- model and noise schedule
    model: str = _opt("small", "UNet preset (one attention head per block).", choices=tuple(PRESETS), group="model")  # fmt: skip
    model_config_name_or_path: str | None = _opt(None, "A UNet2DModel config (folder, config.json or Hub id) to use instead of --model.", type=str, group="model", example=True)  # fmt: skip
    prediction_type: str = _opt("sample", "What the UNet predicts: sample (x_0; our default: the colours and backgrounds of a short run come out right, see bench/bench_recipe.py), epsilon (DDPM and diffusers' default) or v_prediction.", choices=losses.PREDICTION_TYPES, group="model", example=True)  # fmt: skip
    variance_type: str = _opt("fixed_small", "fixed_small, or learned_range: the UNet also learns the variance (Improved DDPM hybrid loss, 2x output channels).", choices=("fixed_small", "learned_range"), group="model")  # fmt: skip
    ddpm_num_steps: int = _opt(1000, "Diffusion steps T of the training chain.", group="model", example=True)
    ddpm_beta_schedule: str = _opt("squaredcos_cap_v2", "Beta schedule (squaredcos_cap_v2 = 'cosine', Improved DDPM; diffusers' default is linear).", choices=(*losses.BETA_SCHEDULES, "cosine"), group="model", example=True)  # fmt: skip
    ddpm_num_inference_steps: int = _opt(1000, "Sampling steps for previews when --sample_scheduler is ddpm (diffusers' meaning).", group="model", example=True)  # fmt: skip
    snr_gamma: float | None = _opt(None, "Min-SNR loss weighting gamma (Hang et al. 2023; 5 is the paper's choice). Default: off.", type=float, group="model")  # fmt: skip
    enable_xformers_memory_efficient_attention: bool = _opt(False, "Use xformers attention (needs xformers and a GPU).", group="model", example=True)  # fmt: skip
    condition_on_source: bool = _opt(False, "Make the UNet class-conditional on each image's dataset source (a mixture's domains, sampled with domain=...); one source trains unconditionally.", group="model")  # fmt: skip
    class_dropout_prob: float = _opt(0.1, "With --condition_on_source: probability of replacing a label by the null class (classifier-free guidance).", group="model")  # fmt: skip

    # ---- optimisation
    train_batch_size: int = _opt(16, "Batch size per process (the total is x processes x accumulation).", group="optimisation", example=True)  # fmt: skip
    max_train_steps: int | None = _opt(None, f"Optimiser steps to train; with --num_epochs or --max_train_time too, whichever ends first. With none of the three, training runs for {DEFAULT_MAX_TRAIN_TIME} (give steps for runs that repeat bitwise).", type=int, group="optimisation")  # fmt: skip
    max_train_time: str | None = _opt(None, "Wall-clock budget of the training loop: minutes (e.g. 15) or a duration (15m, 2h, 1h30m). Training ends cleanly when it is spent (same final save); the LR schedule after warm-up is laid over the time, not over steps. With --max_train_steps or --num_epochs too, whichever ends first.", type=str, group="optimisation")  # fmt: skip
    num_epochs: int | None = _opt(None, "Passes over the data (needs a dataset of known length; diffusers' default is 100, ours is --max_train_steps).", type=int, group="optimisation", example=True)  # fmt: skip
    gradient_accumulation_steps: int = _opt(1, "Micro-batches per optimiser step.", group="optimisation", example=True)  # fmt: skip
    learning_rate: float = _opt(1e-3, "Peak learning rate (after warm-up).", group="optimisation", example=True)
    lr_scheduler: str = _opt("cosine", "LR schedule (diffusers' get_scheduler), counted in optimiser steps.", choices=tuple(str(k.value) for k in TYPE_TO_SCHEDULER_FUNCTION), group="optimisation", example=True)  # fmt: skip
    lr_warmup_steps: int = _opt(100, "Linear warm-up, in optimiser steps.", group="optimisation", example=True)
    adam_beta1: float = _opt(0.95, "AdamW beta1.", group="optimisation", example=True)
    adam_beta2: float = _opt(0.999, "AdamW beta2.", group="optimisation", example=True)
    adam_weight_decay: float = _opt(1e-6, "AdamW weight decay.", group="optimisation", example=True)
    adam_epsilon: float = _opt(1e-8, "AdamW epsilon.", group="optimisation", example=True)
    max_grad_norm: float = _opt(1.0, "Clip the gradient norm to this (0: no clipping).", group="optimisation")
    use_ema: bool = _opt(True, "Keep an exponential moving average of the weights; the saved pipeline holds it.", group="optimisation", example=True)  # fmt: skip
    ema_inv_gamma: float = _opt(1.0, "EMA warm-up inverse gamma: decay = 1 - (1 + step / inv_gamma) ** -power.", group="optimisation", example=True)  # fmt: skip
    ema_power: float = _opt(0.75, "EMA warm-up power.", group="optimisation", example=True)
    ema_max_decay: float = _opt(0.9999, "EMA maximum decay.", group="optimisation", example=True)
    mixed_precision: str | None = _opt(None, "no, fp16 (GPU only) or bf16. Default: fp16/bf16 when `accelerate launch` or its config asks for it, else bf16 where the hardware runs it natively (a CUDA GPU with bf16, a CPU with AVX512-BF16 or AMX), else no (fp32).", type=str, choices=("no", "fp16", "bf16"), group="optimisation", example=True)  # fmt: skip
    compile: bool = _opt(False, "Compile the UNet with torch.compile (about 2 minutes of start-up the first time; 1.1-1.2x the eager step on a CPU, see README Performance).", group="optimisation")  # fmt: skip
    seed: int = _opt(0, "Seed for the weights, the noise and the data order.", group="optimisation")
    max_nonfinite_steps: int = _opt(5, "Skip optimiser steps with a non-finite loss or gradient norm, and stop after this many in a row (0: no check, no host sync per step).", group="optimisation")  # fmt: skip

    # ---- output, checkpoints, previews
    output_dir: str | None = _opt(None, "Where the pipeline, samples, logs and checkpoints go (default: ddpm-<dataset>-<resolution>).", type=str, group="output", example=True)  # fmt: skip
    overwrite_output_dir: bool = _opt(False, "Accepted for compatibility; unused (as in diffusers).", group="output", example=True)  # fmt: skip
    checkpointing_steps: int = _opt(500, "Save a resumable checkpoint-<step> every this many optimiser steps.", group="output", example=True)  # fmt: skip
    checkpoints_total_limit: int | None = _opt(None, "Keep at most this many checkpoints (the oldest are deleted).", type=int, group="output", example=True)  # fmt: skip
    resume_from_checkpoint: str | None = _opt(None, "'latest' or a checkpoint folder (path, or name inside --output_dir).", type=str, group="output", example=True)  # fmt: skip
    save_images_steps: int | None = _opt(250, "Save a preview grid every this many optimiser steps (0: never).", type=int, group="output")  # fmt: skip
    save_images_epochs: int | None = _opt(None, "Also save a preview grid every this many epochs.", type=int, group="output", example=True)  # fmt: skip
    save_model_epochs: int | None = _opt(None, "Also save the pipeline to --output_dir every this many epochs.", type=int, group="output", example=True)  # fmt: skip
    eval_batch_size: int = _opt(16, "Images in each preview grid.", group="output", example=True)
    sample_scheduler: str = _opt("dpm++", "Sampler for previews and the final grid.", choices=tuple(SCHEDULERS), group="output")  # fmt: skip
    sample_steps: int | None = _opt(None, "Steps of --sample_scheduler (default: 25 for dpm++, --ddpm_num_inference_steps for ddpm).", type=int, group="output")  # fmt: skip
    num_samples: int = _opt(64, "Images in the final grid (output_dir/samples.png).", group="output")

    # ---- logging
    logger: str = _opt("tensorboard", "Experiment tracker ('none' for none).", choices=LOGGERS, group="logging", example=True)  # fmt: skip
    logging_dir: str = _opt("logs", "Tracker folder, relative to --output_dir.", group="logging", example=True)
    logging_steps: int = _opt(10, "Log metrics every this many optimiser steps (the only host syncs besides the non-finite check).", group="logging")  # fmt: skip

    # ---- Hub
    push_to_hub: bool = _opt(False, "Push the final pipeline, card and samples to the Hub (never the checkpoints).", group="hub", example=True)  # fmt: skip
    hub_token: str | None = _opt(None, "Hub token (default: HF_TOKEN or the cached login); never logged.", type=str, group="hub", example=True)  # fmt: skip
    hub_model_id: str | None = _opt(None, "Hub repository (default: the name of --output_dir).", type=str, group="hub", example=True)  # fmt: skip
    hub_private_repo: bool = _opt(False, "Create the Hub repository as private.", group="hub", example=True)

    # ---- launcher compatibility
    local_rank: int = _opt(-1, "Set by old launchers; Accelerate reads LOCAL_RANK itself.", group="launch", example=True)  # fmt: skip
    config: str | None = _opt(None, "A YAML or JSON file of defaults for any of these settings (flags on the command line win).", type=str, group="launch")  # fmt: skip

    # ---- test hooks (hidden from --help)
    debug_dump_dir: str | None = _opt(None, "Per-rank JSONL: per step lr and example hashes, final parameter hash.", type=str, hidden=True)  # fmt: skip
    debug_nan_batches: str | None = _opt(None, "Micro-batch indices to replace by NaN, e.g. '3,8-'.", type=str, hidden=True)  # fmt: skip
    debug_kill_in_checkpoint: int | None = _opt(None, "SIGKILL this process half-way through writing this checkpoint.", type=int, hidden=True)  # fmt: skip
    debug_step_sleep: float = _opt(0.0, "Sleep this long after each optimiser step.", hidden=True)

    # ----------------------------------------------------------------------------------------------- helpers
    @classmethod
    def from_namespace(cls, args: argparse.Namespace | dict) -> TrainingConfig:
        values = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    @property
    def dataset_spec(self) -> str | None:
        return self.dataset or self.dataset_name

    def resolved_output_dir(self) -> str:
        if self.output_dir:
            return self.output_dir
        name = self.dataset_spec or (Path(self.train_data_dir).name if self.train_data_dir else "emoji")
        slug = re.sub(r"[^A-Za-z0-9]+", "-", Path(name.rstrip("/")).name).strip("-") or "data"
        return f"ddpm-{slug}-{self.resolution}"

    def budget_seconds(self) -> float | None:
        """The time budget: --max_train_time, else the default one when nothing else limits the run."""
        if self.max_train_time is not None:
            return parse_duration(self.max_train_time)
        if self.max_train_steps is None and self.num_epochs is None:
            return parse_duration(DEFAULT_MAX_TRAIN_TIME)
        return None

    def preview_steps(self) -> int:
        if self.sample_steps:
            return self.sample_steps
        if self.sample_scheduler == "ddpm":
            return self.ddpm_num_inference_steps
        return DEFAULT_STEPS[self.sample_scheduler]

    def validate(self) -> None:
        """Raise TrainingError (one sentence) for settings that cannot work, before anything heavy starts."""
        for f in dataclasses.fields(self):
            choices, value = f.metadata.get("choices"), getattr(self, f.name)
            if choices and value is not None and value not in choices:
                raise TrainingError(f"--{f.name} {value!r} is not one of: {', '.join(map(str, choices))}.")
        if self.dataset and self.dataset_name and self.dataset != self.dataset_name:
            raise TrainingError("--dataset and --dataset_name name the same setting: give only one.")
        positive = ["resolution", "train_batch_size", "gradient_accumulation_steps", "checkpointing_steps",
                    "eval_batch_size", "num_samples", "logging_steps", "ddpm_num_steps", "ddpm_num_inference_steps"]  # fmt: skip
        optional_positive = ["max_train_steps", "num_epochs", "checkpoints_total_limit", "save_images_epochs",
                             "save_model_epochs", "sample_steps"]  # fmt: skip
        for name in positive + optional_positive:
            value = getattr(self, name)
            if value is not None and value < 1:
                raise TrainingError(f"--{name} must be at least 1, got {value}.")
        for name in (
            "learning_rate",
            "lr_warmup_steps",
            "max_grad_norm",
            "adam_weight_decay",
            "dataloader_num_workers",
        ):
            if getattr(self, name) < 0:
                raise TrainingError(f"--{name} must not be negative, got {getattr(self, name)}.")
        if self.save_images_steps is not None and self.save_images_steps < 0:
            raise TrainingError(f"--save_images_steps must not be negative, got {self.save_images_steps}.")
        if not 0 <= self.ema_max_decay <= 1:
            raise TrainingError(f"--ema_max_decay must be in [0, 1], got {self.ema_max_decay}.")
        if self.snr_gamma is not None and self.snr_gamma <= 0:
            raise TrainingError(f"--snr_gamma must be positive, got {self.snr_gamma}.")
        if not 0 <= self.class_dropout_prob <= 1:
            raise TrainingError(f"--class_dropout_prob must be in [0, 1], got {self.class_dropout_prob}.")
        if self.max_train_time is not None:
            try:
                parse_duration(self.max_train_time)
            except ValueError as error:
                raise TrainingError(f"--max_train_time: {error}") from None
        if self.preview_steps() > self.ddpm_num_steps:
            raise TrainingError(f"--sample_steps {self.preview_steps()} exceeds the {self.ddpm_num_steps} training steps.")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """The command line: one flag per TrainingConfig field, grouped, with defaults shown."""
    parser = argparse.ArgumentParser(
        prog="train_with_accelerate.py",
        description="Train a DDPM (diffusers UNet2DModel + DDPMScheduler) with Accelerate. Accepts every flag of "
        "diffusers' train_unconditional.py. Launch with `accelerate launch train_with_accelerate.py ...`.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    groups: dict[str, Any] = {}
    for f in dataclasses.fields(TrainingConfig):
        meta = f.metadata
        group_name = meta["group"]
        if group_name and group_name not in groups:
            groups[group_name] = parser.add_argument_group(group_name)
        kwargs: dict[str, Any] = dict(dest=f.name, default=f.default)
        kwargs["help"] = argparse.SUPPRESS if meta["hidden"] else meta["help"]
        if isinstance(f.default, bool):
            kwargs["action"] = argparse.BooleanOptionalAction  # --use_ema / --no-use_ema
        else:
            kwargs["type"] = meta["type"] or type(f.default)
            if meta["choices"]:
                kwargs["choices"] = list(meta["choices"])
        (groups[group_name] if group_name else parser).add_argument(f"--{f.name}", **kwargs)
    return parser


def load_config_file(path: str) -> dict[str, Any]:
    """Settings from a YAML or JSON file: a mapping of field names (dashes or underscores) to values."""
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise TrainingError(f"Cannot read the config file {path}: {error.strerror or error}.") from None
    try:
        if path.endswith(".json"):
            values = json.loads(text)
        else:
            import yaml

            values = yaml.safe_load(text)
    except Exception as error:  # yaml.YAMLError / json.JSONDecodeError
        raise TrainingError(f"The config file {path} is not valid YAML/JSON: {str(error).splitlines()[0]}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise TrainingError(f"The config file {path} must hold a mapping of setting names to values.")
    names = {f.name for f in dataclasses.fields(TrainingConfig)}
    settings = {str(k).replace("-", "_"): v for k, v in values.items()}
    unknown = sorted(set(settings) - names)
    if unknown:
        raise TrainingError(f"Unknown setting(s) in {path}: {', '.join(unknown)} (see --help for the names).")
    settings.pop("config", None)
    return settings


def parse_args(argv: Sequence[str] | None = None) -> TrainingConfig:
    """Command line -> TrainingConfig; a --config file supplies defaults that flags override."""
    parser = build_parser()
    known, _ = parser.parse_known_args(argv)
    if known.config:
        parser.set_defaults(**load_config_file(known.config))
    args = parser.parse_args(argv)
    env_local_rank = int(os.environ.get("LOCAL_RANK", -1))
    if env_local_rank != -1:
        args.local_rank = env_local_rank
    return TrainingConfig.from_namespace(args)


# ============================================================================================= checkpoints
def list_checkpoints(output_dir: str) -> list[tuple[int, str]]:
    """Complete checkpoints in output_dir as (step, path), oldest first (temporary folders are not listed)."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        match = CHECKPOINT_PATTERN.match(name)
        if match and os.path.isdir(os.path.join(output_dir, name)):
            found.append((int(match.group(1)), os.path.join(output_dir, name)))
    return sorted(found)


def find_checkpoint(output_dir: str, spec: str) -> str | None:
    """'latest' -> the newest complete checkpoint or None; otherwise a folder path or a name inside output_dir."""
    if spec == "latest":
        checkpoints = list_checkpoints(output_dir)
        return checkpoints[-1][1] if checkpoints else None
    for candidate in (spec, os.path.join(output_dir, os.path.basename(os.path.normpath(spec)))):
        if os.path.isdir(candidate):
            return candidate
    raise TrainingError(f"No checkpoint folder {spec!r} (looked for it as a path and inside {output_dir}).")


def rotate_checkpoints(output_dir: str, total_limit: int | None) -> list[str]:
    """Delete the oldest checkpoints so that at most total_limit remain; returns the deleted paths."""
    if total_limit is None:
        return []
    checkpoints = list_checkpoints(output_dir)
    doomed = [path for _, path in checkpoints[: max(0, len(checkpoints) - total_limit)]]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


def remove_incomplete_checkpoints(output_dir: str) -> None:
    """Temporary folders left by a run killed while writing a checkpoint."""
    if os.path.isdir(output_dir):
        for name in os.listdir(output_dir):
            if name.startswith((TMP_PREFIX, OLD_PREFIX)):
                shutil.rmtree(os.path.join(output_dir, name), ignore_errors=True)


def _fsync_tree(folder: str) -> None:
    for root, _, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def save_checkpoint(
    accelerator: Accelerator,
    output_dir: str,
    step: int,
    rank_state: dict[str, Any],
    total_limit: int | None = None,
    kill_half_way: bool = False,
) -> str:
    """Write checkpoint-<step> atomically: every process saves into a temporary folder, then the main process
    renames it. `rank_state` (step, data position, noise generator...) is saved per process.

    Accelerate's save_state must run on every process (DeepSpeed and FSDP write one shard per rank); output_dir
    must be on a file system all processes share.
    """
    final = os.path.join(output_dir, f"checkpoint-{step}")
    tmp = os.path.join(output_dir, f"{TMP_PREFIX}{step}")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(tmp)
    torch.save(rank_state, os.path.join(tmp, f"trainer_state_{accelerator.process_index}.pt"))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        summary = {"step": step, "num_processes": accelerator.num_processes, "time": time.time()}
        Path(tmp, "trainer_state.json").write_text(json.dumps(summary, indent=2))
        if kill_half_way:  # test hook: a crash while the checkpoint is being written
            os.kill(os.getpid(), signal.SIGKILL)
        _fsync_tree(tmp)
        if os.path.exists(final):  # re-saving a step (resumed from an earlier checkpoint): replace it
            old = os.path.join(output_dir, f"{OLD_PREFIX}{step}")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)  # atomic: `latest` sees the whole checkpoint or none of it
        for path in rotate_checkpoints(output_dir, total_limit):
            logger.info(f"Removed old checkpoint {path} (--checkpoints_total_limit {total_limit})")
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Accelerator, path: str) -> dict[str, Any]:
    """Restore what save_checkpoint wrote (model, optimiser, registered objects, RNGs) and return this rank's state."""
    rank_file = os.path.join(path, f"trainer_state_{accelerator.process_index}.pt")
    if not os.path.isfile(rank_file):
        raise TrainingError(
            f"{path} has no state for process {accelerator.process_index}: resume with the number of processes that "
            "wrote it (see its trainer_state.json)."
        )
    accelerator.load_state(path)
    return torch.load(rank_file, map_location="cpu", weights_only=False)


# ============================================================================================= set-up helpers
def data_config_from(config: TrainingConfig) -> DataConfig:
    values = dict(
        dataset=config.dataset_spec,
        resolution=config.resolution,
        center_crop=config.center_crop,
        random_flip=config.random_flip,
        image_column=config.image_column,
        dataset_config_name=config.dataset_config_name,
        train_data_dir=config.train_data_dir,
        cache_dir=config.cache_dir,
        seed=config.seed,
    )
    if config.shuffle_buffer is not None:
        values["shuffle_buffer"] = config.shuffle_buffer
    accepted = {f.name for f in dataclasses.fields(DataConfig)}
    return DataConfig(**{k: v for k, v in values.items() if k in accepted})


def build_model(
    config: TrainingConfig, noise_scheduler, conditioning: SourceConditioning | None = None
) -> UNet2DModel:
    """The UNet: a named preset, or diffusers' --model_config_name_or_path; output channels match the variance.

    With `conditioning` (--condition_on_source on a mixture) it has a class per domain plus the null class, and the
    domain names in its config."""
    out_channels = losses.model_out_channels(noise_scheduler)
    if config.model_config_name_or_path:
        try:
            unet_config = UNet2DModel.load_config(config.model_config_name_or_path, cache_dir=config.cache_dir)
        except (OSError, ValueError) as error:
            raise TrainingError(f"Cannot load the UNet config {config.model_config_name_or_path}: {error}") from None
        try:
            if conditioning is not None:
                unet_config = conditional_unet_config(unet_config, conditioning.domains)
            elif unet_config.get("num_class_embeds") or unet_config.get("class_embed_type"):
                raise ValueError("The UNet config is class-conditional: train it with --condition_on_source on a mixture.")  # fmt: skip
        except ValueError as error:
            raise TrainingError(str(error)) from None
        model = UNet2DModel.from_config(unet_config)
        if model.config.out_channels != out_channels:
            raise TrainingError(
                f"The UNet config has out_channels={model.config.out_channels} but variance_type "
                f"{config.variance_type!r} needs {out_channels}."
            )
    else:
        try:
            model = build_unet(
                config.model,
                config.resolution,
                learned_variance=losses.learns_variance(noise_scheduler),
                num_class_embeds=conditioning.num_class_embeds if conditioning is not None else None,
            )
        except ValueError as error:
            raise TrainingError(str(error)) from None
    if conditioning is not None:
        conditioning.prepare(model)  # the domain names travel in unet/config.json
    if config.enable_xformers_memory_efficient_attention:
        from diffusers.utils.import_utils import is_xformers_available

        if not is_xformers_available():
            raise TrainingError("xformers is not available: install it or drop --enable_xformers_memory_efficient_attention.")  # fmt: skip
        model.enable_xformers_memory_efficient_attention()
    return model


ADAM_IMPLEMENTATIONS = ("fused", "foreach", "for-loop", "default")


def build_optimizer(config: TrainingConfig, model: torch.nn.Module, accelerator: Accelerator,
                    implementation: str | None = None) -> torch.optim.Optimizer:  # fmt: skip
    """AdamW with the config's hyper-parameters.

    `implementation` None picks torch's fused AdamW kernel where it is safe (one process or DDP, on a CPU or a GPU):
    on the CPU it is several times faster than the default per-parameter loop (bench/bench_train.py). DeepSpeed and
    FSDP keep torch's default; "foreach", "for-loop" and "default" are there for benchmarks and comparisons.
    """
    if implementation is None:
        plain = accelerator.distributed_type in (DistributedType.NO, DistributedType.MULTI_GPU, DistributedType.MULTI_CPU)  # fmt: skip
        implementation = "fused" if plain and accelerator.device.type in ("cpu", "cuda") else "default"
    if implementation not in ADAM_IMPLEMENTATIONS:
        raise ValueError(f"Unknown AdamW implementation {implementation!r}; choose one of {ADAM_IMPLEMENTATIONS}.")
    kwargs = {"fused": {"fused": True}, "foreach": {"foreach": True}, "for-loop": {"foreach": False}}.get(implementation, {})  # fmt: skip
    return torch.optim.AdamW(
        model.parameters(),
        lr=config.learning_rate,
        betas=(config.adam_beta1, config.adam_beta2),
        weight_decay=config.adam_weight_decay,
        eps=config.adam_epsilon,
        **kwargs,
    )


def _fp32_group_norm_forward(self: torch.nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    with torch.autocast(x.device.type, enabled=False):
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return torch.nn.functional.group_norm(x.float(), self.num_groups, weight, bias, self.eps).to(x.dtype)


def fp32_group_norms(model: torch.nn.Module) -> int:
    """Run every GroupNorm of `model` in float32 (output cast back to the input dtype); returns how many.

    CUDA autocast already does this (group_norm is on its float32 list); CPU autocast runs GroupNorm in bfloat16,
    which is slower there (forward and backward) than float32, as well as less precise.
    """
    count = 0
    for module in model.modules():
        if isinstance(module, torch.nn.GroupNorm):
            module.forward = types.MethodType(_fp32_group_norm_forward, module)
            count += 1
    return count


def resolve_mixed_precision(requested: str | None, environ: dict[str, str] | None = None,
                            cpu_flags: str | None = None) -> str:  # fmt: skip
    """The precision to train in: the flag; else the launcher's fp16/bf16; else bf16 where it is native, else no.

    bf16 autocast is ~1.3x faster on a CPU with AVX512-BF16 (bench_recipe.py) and trains as well at our sizes; on
    CPUs without it, bf16 is emulated and slower than fp32. `accelerate launch` always sets a precision ("no"
    unless told), so only its fp16/bf16 count as a choice; pass --mixed_precision no to the script for fp32.
    """
    if requested:
        return requested
    environ = os.environ if environ is None else environ
    launcher = environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()
    if launcher in ("fp16", "bf16", "fp8"):
        return launcher
    use_cpu = environ.get("ACCELERATE_USE_CPU", "false").lower() in ("1", "true", "yes")
    if torch.cuda.is_available() and not use_cpu:
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "no"
    if cpu_flags is None:
        try:
            cpu_flags = Path("/proc/cpuinfo").read_text()
        except OSError:  # not Linux: do not guess
            cpu_flags = ""
    return "bf16" if re.search(r"\b(avx512_bf16|amx_bf16)\b", cpu_flags) else "no"


# Inductor's layout optimisation (it moves convolutions to channels-last) returns wrong UNet gradients in torch 2.13
# on CPU, silently: against float64, eager float32 is off by 1e-6 in relative norm, the compiled backward by 12% at
# 32 px and 47% for the tiny UNet, with exact zeros for whole blocks (bench/bench_compile_gradients.py; pinned with
# torch._inductor.compiler_bisector; the forward agrees). Without it the compiled gradients match eager (1e-6);
# tests/test_compile.py checks this.
COMPILE_OPTIONS = {"layout_optimization": False}


def speed_up_model(config: TrainingConfig, model: torch.nn.Module, accelerator: Accelerator,
                   groupnorm_fp32: bool = False) -> torch.nn.Module:  # fmt: skip
    """Speed-ups that keep the maths, applied to the prepared model in place (its state_dict keys do not change).

    - `--compile`: `torch.compile` of the UNet (`nn.Module.compile`, in place, so checkpoints, EMA and previews see
      the same module and parameter names), with Inductor's layout optimisation off (COMPILE_OPTIONS);
    - `groupnorm_fp32` (off: benchmarks only): GroupNorm in float32 under CPU bf16 autocast. bench/bench_train.py
      measured it +10-14% at 32 px but -12% at 64 px, with 20-30% more peak memory (float32 copies kept for the
      backward), so training does not use it.
    """
    unet = accelerator.unwrap_model(model)
    if groupnorm_fp32:
        fp32_group_norms(unet)
    if config.compile:
        unet.compile(options=COMPILE_OPTIONS)
    return model


def training_length(config: TrainingConfig, dataset, loader, accelerator: Accelerator) -> int | None:
    """Optimiser steps to train: --max_train_steps, --num_epochs (data of known size), whichever ends first; None
    when only a time budget limits the run."""
    steps = [config.max_train_steps] if config.max_train_steps else []
    if config.num_epochs:
        try:
            batches = len(loader)
        except TypeError:  # a stream: its size may still be known (file lists, Hub split info)
            size = getattr(dataset, "num_examples", None)
            batches = math.ceil(size // accelerator.num_processes / config.train_batch_size) if size else None
        if not batches:
            if not steps:
                raise TrainingError("This dataset is a stream of unknown length: give --max_train_steps or --max_train_time instead of --num_epochs.")  # fmt: skip
            logger.warning("--num_epochs is ignored for a stream of unknown length; --max_train_steps decides.")
        else:
            # Ranks may hold different shares: all must take the same number of steps, so use the smallest.
            batches = int(accelerator.gather(torch.tensor([batches], device=accelerator.device)).min())
            steps.append(config.num_epochs * math.ceil(batches / config.gradient_accumulation_steps))
    return min(steps) if steps else None


def noise_generator(seed: int, rank: int, device: torch.device) -> torch.Generator:
    """The generator of noise and timesteps: different on every rank, saved and restored with checkpoints."""
    mixed = int(np.random.SeedSequence([seed, rank]).generate_state(1, dtype=np.uint64)[0] >> 1)
    return torch.Generator(device=device).manual_seed(mixed)


def tracker_config(config: TrainingConfig, **extra: Any) -> dict[str, Any]:
    """Hyperparameters for the trackers (TensorBoard accepts only scalars and strings; the token is never logged)."""
    values = {}
    for f in dataclasses.fields(config):
        if f.metadata["hidden"] or f.name == "hub_token":
            continue
        values[f.name] = getattr(config, f.name)
    values.update(extra)
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in values.items()}


class Batches:
    """Endless batches: re-iterates the loader epoch after epoch (set_epoch first); its position is resumable."""

    def __init__(self, loader, epoch: int = 0):
        self.loader, self.epoch, self._iterator = loader, epoch, None
        self.loader.set_epoch(epoch)

    def __next__(self) -> dict[str, torch.Tensor]:
        if self._iterator is None:
            self._iterator = iter(self.loader)
        try:
            return next(self._iterator)
        except StopIteration:
            self.epoch += 1
            self.loader.set_epoch(self.epoch)
            self._iterator = iter(self.loader)
            try:
                return next(self._iterator)
            except StopIteration:
                raise TrainingError("The dataset yielded no images.", exit_code=1) from None

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "loader": self.loader.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = state["epoch"]
        self.loader.set_epoch(self.epoch)
        self.loader.load_state_dict(state["loader"])
        self._iterator = None


def parse_index_spec(spec: str | None) -> list[tuple[int, float]]:
    """'3,8-,10-12' -> [(3, 3), (8, inf), (10, 12)] (test hook)."""
    ranges = []
    for part in filter(None, (spec or "").split(",")):
        start, _, end = part.partition("-")
        ranges.append((int(start), int(start) if not _ else (float("inf") if not end else int(end))))
    return ranges


def parameters_sha256(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class DebugDump:
    """Test hook: one JSON line per optimiser step (lr, example hashes) and a final parameter hash, per rank."""

    def __init__(self, folder: str | None, rank: int):
        self.file = None
        if folder:
            os.makedirs(folder, exist_ok=True)
            self.file = open(os.path.join(folder, f"rank{rank}.jsonl"), "a")  # noqa: SIM115
        self.hashes: list[str] = []

    def batch(self, pixel_values: torch.Tensor) -> None:
        if self.file:
            images = pixel_values.detach().float().cpu().numpy()
            self.hashes += [hashlib.sha1(image.tobytes()).hexdigest()[:16] for image in images]

    def write(self, **record: Any) -> None:
        if self.file:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
            self.hashes = []


def sample_grid(unet: UNet2DModel, noise_scheduler, config: TrainingConfig, num_images: int):
    """A grid of `num_images` samples with the preview sampler (fixed seed, so grids are comparable over time)."""
    pipe = AnimeDDPMPipeline(unet=unet, scheduler=scheduler_from(config.sample_scheduler, noise_scheduler))
    pipe.set_progress_bar_config(disable=True)
    if pipe.domains:  # --condition_on_source: a labelled row per domain, the same seeds in every row
        return domain_grid(
            pipe,
            num_images,
            seed=config.seed,
            batch_size=min(num_images, 64),
            num_inference_steps=config.preview_steps(),
        )
    images = generate(
        pipe, num_images, seed=config.seed, batch_size=min(num_images, 64), num_inference_steps=config.preview_steps()
    )
    return viz.make_grid(images, scale=viz.auto_scale(images.shape[-1]))


def log_grid(accelerator: Accelerator, grid, step: int, tag: str = "samples") -> None:
    for tracker in accelerator.trackers:
        try:
            if tracker.name == "tensorboard":
                tracker.writer.add_image(tag, np.asarray(grid), step, dataformats="HWC")
            else:
                tracker.log_images({tag: [grid]}, step=step)
        except Exception as error:  # a tracker that cannot take images must not stop training
            logger.warning(f"Could not send the sample grid to {tracker.name}: {error}")


def copy_weights(target: UNet2DModel, accelerator: Accelerator, model, ema: EMAModel | None) -> UNet2DModel:
    """Load the weights to sample or save into `target`: the EMA when on, else the trained model.

    Call on every process (gathering a sharded model is collective); only the main process's `target` is used.
    """
    state_dict = None if ema is not None else accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        if ema is not None:
            ema.copy_to(target.parameters())
        else:
            target.load_state_dict(state_dict)
    return target


def save_final(accelerator, config, output_dir, unet, noise_scheduler, info: dict[str, Any]) -> int:
    """Main process: the pipeline, samples.png and the model card; then the optional push. Returns an exit code.

    Everything is on disk before the push starts, so a failed push loses nothing (exit code 1, the command to retry).
    """
    pipeline = AnimeDDPMPipeline(unet=unet, scheduler=losses.sampling_scheduler(noise_scheduler, unet))
    grid = sample_grid(unet, noise_scheduler, config, config.num_samples)
    try:
        hub.save_for_hub(pipeline, output_dir, info, sample_grid=grid)  # pipeline + README.md + samples.png
    except Exception as error:  # the card is a nicety: save the pipeline and the grid without it
        logger.warning(f"Could not write the model card: {error}")
        pipeline.save_pretrained(output_dir)
        grid.save(os.path.join(output_dir, "samples.png"))
    log_grid(accelerator, grid, info["train_steps"], tag="final_samples")
    logger.info(f"Saved the pipeline and samples.png to {output_dir}")
    if not config.push_to_hub:
        return 0
    repo_id = config.hub_model_id or Path(output_dir).resolve().name
    try:
        url = hub.push_to_hub(output_dir, repo_id, token=config.hub_token, private=config.hub_private_repo)
    except Exception as error:
        message = str(error).replace(config.hub_token, "***") if config.hub_token else str(error)
        print(f"train_with_accelerate: the push to {repo_id} failed: {message} The trained pipeline is saved in "
              f"{output_dir}; push it later with `python -c \"from anime_ddpm.hub import push_to_hub; push_to_hub('{output_dir}', '{repo_id}')\"` (it uploads the model, never checkpoints or logs).", file=sys.stderr)  # fmt: skip
        return 1
    logger.info(f"Pushed to {url}")
    return 0


def card_info(config: TrainingConfig, **results: Any) -> dict[str, Any]:
    """What the model card reports (anime_ddpm.hub.TrainingInfo fields; unknown keys become extra rows)."""
    if config.variance_type == "learned_range":
        loss = "L_hybrid = L_simple + 0.001 L_vlb (Improved DDPM)"
    else:
        loss = f"L_simple (MSE of the {config.prediction_type} target)"
    if config.snr_gamma:
        loss += f", min-SNR-{config.snr_gamma:g} weighted"
    dataset = config.dataset_spec or (config.train_data_dir and f"local folder {config.train_data_dir}") or "emoji"
    info = dict(
        repo_id=config.hub_model_id,
        dataset=dataset,
        resolution=config.resolution,
        unet_preset=None if config.model_config_name_or_path else config.model,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        lr_scheduler=config.lr_scheduler,
        lr_warmup_steps=config.lr_warmup_steps,
        optimizer=f"AdamW (betas {config.adam_beta1}, {config.adam_beta2}, weight decay {config.adam_weight_decay:g})",
        num_train_timesteps=config.ddpm_num_steps,
        beta_schedule=config.ddpm_beta_schedule,
        variance_type=config.variance_type,
        prediction_type=config.prediction_type,
        loss=loss,
        snr_gamma=config.snr_gamma,
        use_ema=config.use_ema,
        seed=config.seed,
        sample_caption=f"{config.num_samples} samples, {config.sample_scheduler} with {config.preview_steps()} steps, seed {config.seed}",
    )  # fmt: skip
    info.update(results)
    return {k: v for k, v in info.items() if v is not None}


def _check_push_possible(config: TrainingConfig) -> None:
    if config.push_to_hub and not config.hub_token:
        from huggingface_hub import get_token

        if not get_token():
            raise TrainingError("--push_to_hub needs a token: pass --hub_token, set HF_TOKEN or run `hf auth login`.")


class TrainStep:
    """One micro-batch's forward and backward and, at the end of an accumulation window, the optimiser step.

    Shared by `train()` and bench/bench_train.py, so the benchmark times the loop's own step. Loss sums stay on the
    device in `pending` (no host sync per micro-batch) until `drain_into` moves them to the logging window.
    """

    PENDING_KEYS = ("loss", "simple", "vlb", "micro", "images")

    def __init__(self, accelerator: Accelerator, model, optimizer, loss_fn, generator: torch.Generator,
                 max_grad_norm: float | None, check_finite: bool = True):  # fmt: skip
        self.accelerator, self.model, self.optimizer, self.loss_fn = accelerator, model, optimizer, loss_fn
        self.generator = generator
        self.max_grad_norm = max_grad_norm or float("inf")  # inf: measure the norm, do not clip
        self.check_finite = check_finite
        self.scaler_in_use = accelerator.scaler is not None  # fp16: the GradScaler may skip overflowing steps
        zero = torch.zeros((), device=accelerator.device)
        self.pending = {key: zero.clone() for key in self.PENDING_KEYS}
        self.grad_norm = zero.clone()

    def denoise(self, x_t, t, class_labels=None):  # only the UNet runs under autocast; noising stays in fp32
        with self.accelerator.autocast():
            return self.model(x_t, t, class_labels=class_labels).sample

    def __call__(self, x0: torch.Tensor, class_labels: torch.Tensor | None = None) -> bool | None:
        """None inside an accumulation window; else whether the optimiser stepped (False: not finite, skipped)."""
        accelerator, pending = self.accelerator, self.pending
        with accelerator.accumulate(self.model):
            out = self.loss_fn(self.denoise, x0, class_labels=class_labels, generator=self.generator)
            accelerator.backward(out.loss)
            for key, value in (("loss", out.loss.detach()), ("simple", out.simple)):
                pending[key] += value
            if out.vlb_bits_per_dim is not None:
                pending["vlb"] += out.vlb_bits_per_dim
            pending["micro"] += 1
            pending["images"] += x0.shape[0]
            step_ok = None
            if accelerator.sync_gradients:
                # Gradients are all-reduced by now, so the norm (and the decision) is identical on every rank.
                grad_norm = accelerator.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
                if grad_norm is None:  # DeepSpeed clips internally and may not report it: judge by the loss
                    grad_norm = accelerator.reduce(pending["loss"].clone(), reduction="sum")
                self.grad_norm = torch.as_tensor(grad_norm, dtype=torch.float32, device=accelerator.device)
                step_ok = True
                if self.check_finite:  # one host sync per optimiser step
                    step_ok = bool(torch.isfinite(self.grad_norm))
                if step_ok or self.scaler_in_use:
                    self.optimizer.step()
                    step_ok = step_ok and not accelerator.optimizer_step_was_skipped
            self.optimizer.zero_grad(set_to_none=True)
        return step_ok

    def discard(self) -> None:
        """Forget a skipped step's sums."""
        for value in self.pending.values():
            value.zero_()

    def drain_into(self, window: dict[str, torch.Tensor]) -> None:
        """Add the finished step's sums (and its gradient norm) to the logging window."""
        for key, value in self.pending.items():
            window[key] += value
            value.zero_()
        window["grad_norm"] += self.grad_norm
        window["steps"] += 1


# ============================================================================================= the loop
def train(config: TrainingConfig | argparse.Namespace) -> int:
    """Train, save the pipeline and samples, optionally push. Returns the process exit code (0: success)."""
    if not isinstance(config, TrainingConfig):
        config = TrainingConfig.from_namespace(config)
    config.validate()
    _check_push_possible(config)
    output_dir = config.resolved_output_dir()

    # ---------------------------------------------------------------- Accelerator, logging, seed
    accelerator = Accelerator(
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        mixed_precision=resolve_mixed_precision(config.mixed_precision),
        log_with=None if config.logger == "none" else config.logger,
        project_config=ProjectConfiguration(
            project_dir=output_dir, logging_dir=os.path.join(output_dir, config.logging_dir)
        ),
    )
    if accelerator.mixed_precision == "fp16" and accelerator.device.type == "cpu":
        raise TrainingError("fp16 mixed precision needs a GPU (on a CPU Accelerate would silently train in fp32): use --mixed_precision bf16 or no.")  # fmt: skip
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    for noisy in ("datasets", "diffusers", "transformers", "huggingface_hub", "accelerate"):
        logging.getLogger(noisy).setLevel(logging.WARNING if accelerator.is_main_process else logging.ERROR)
    if accelerator.is_main_process:
        os.makedirs(output_dir, exist_ok=True)
        remove_incomplete_checkpoints(output_dir)
    accelerator.wait_for_everyone()
    set_seed(config.seed)  # the same initial weights on every process
    rank, world_size = accelerator.process_index, accelerator.num_processes

    # ---------------------------------------------------------------- data (each rank reads its own disjoint share)
    dataset = build_dataset(data_config_from(config), rank=rank, world_size=world_size)
    loader = build_dataloader(dataset, config.train_batch_size, config.dataloader_num_workers)
    conditioning = None  # --condition_on_source on a mixture: class i = source i, the last class = null label
    if config.condition_on_source:
        try:
            conditioning = SourceConditioning.from_sources(dataset.source_names, config.class_dropout_prob)
        except ValueError as error:  # e.g. the same source twice in the mixture
            raise TrainingError(f"--condition_on_source: {error}") from None

    # ---------------------------------------------------------------- noise schedule, UNet, loss
    try:
        noise_scheduler = losses.make_noise_scheduler(
            num_train_timesteps=config.ddpm_num_steps,
            beta_schedule=config.ddpm_beta_schedule,
            prediction_type=config.prediction_type,
            variance_type=config.variance_type,
        )
    except ValueError as error:
        raise TrainingError(str(error)) from None
    model = build_model(config, noise_scheduler, conditioning)
    loss_fn = losses.DiffusionLoss(noise_scheduler, snr_gamma=config.snr_gamma)
    preview_unet = None  # a copy that previews load the EMA (or current) weights into: main process only
    if accelerator.is_main_process:
        preview_unet = UNet2DModel.from_config(model.config).to(accelerator.device).eval()

    # ---------------------------------------------------------------- optimiser, LR schedule, EMA
    max_train_steps = training_length(config, dataset, loader, accelerator)  # None: only the time budget limits
    clock = TrainingClock(config.budget_seconds())  # seconds in the loop, carried over resumes
    optimizer = build_optimizer(config, model, accelerator)  # fused AdamW where safe
    # Not passed to accelerator.prepare: we step it once per optimiser step, so warm-up and length are in optimiser
    # steps whatever the accumulation and process count (Accelerate's wrapper steps it once per process). With a
    # time budget (and no step limit) the schedule after warm-up is laid over the budget's seconds instead.
    if max_train_steps is None:  # only a time budget (--max_train_time or the default one)
        lr_scheduler = TimeBudgetLR(config.lr_scheduler, optimizer, config.lr_warmup_steps, clock)
    else:
        lr_scheduler = get_scheduler(
            config.lr_scheduler,
            optimizer=optimizer,
            num_warmup_steps=config.lr_warmup_steps,
            num_training_steps=max_train_steps,
        )
    if accelerator.state.deepspeed_plugin is not None:  # no prepared loader tells DeepSpeed the batch size
        accelerator.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = config.train_batch_size
    model, optimizer = accelerator.prepare(model, optimizer)
    model = speed_up_model(config, model, accelerator)  # --compile
    ema = None
    if config.use_ema:
        ema = EMAModel(
            accelerator.unwrap_model(model).parameters(),
            decay=config.ema_max_decay,
            use_ema_warmup=True,
            inv_gamma=config.ema_inv_gamma,
            power=config.ema_power,
            foreach=True,
        )
        ema.to(accelerator.device)
        accelerator.register_for_checkpointing(ema)
    accelerator.register_for_checkpointing(lr_scheduler)
    generator = noise_generator(config.seed, rank, accelerator.device)
    batches = Batches(loader)

    # ---------------------------------------------------------------- resume
    global_step = 0
    if config.resume_from_checkpoint:
        path = find_checkpoint(output_dir, config.resume_from_checkpoint)
        if path is None:
            accelerator.print(f"Checkpoint '{config.resume_from_checkpoint}' does not exist. Starting a new training run.")  # fmt: skip
        else:
            accelerator.print(f"Resuming from {path}")
            state = load_checkpoint(accelerator, path)
            if ema is not None:
                ema.to(accelerator.device)
            global_step = state["step"]
            batches.load_state_dict(state["data"])
            generator.set_state(state["generator"])
            clock.load_state_dict(state.get("clock", {}))

    # ---------------------------------------------------------------- trackers
    num_parameters = count_parameters(accelerator.unwrap_model(model))
    total_batch_size = config.train_batch_size * world_size * config.gradient_accumulation_steps
    if accelerator.is_main_process:
        Path(output_dir, "training_config.json").write_text(json.dumps(tracker_config(config), indent=2))
    accelerator.init_trackers(
        TRACKER_PROJECT,
        config=tracker_config(config, max_train_steps_resolved=max_train_steps, num_processes=world_size,
                              total_batch_size=total_batch_size, num_parameters=num_parameters,
                              mixed_precision_resolved=accelerator.mixed_precision),
    )  # fmt: skip
    limits = ([f"{max_train_steps} optimiser steps"] if max_train_steps is not None else []) + (
        [f"{format_duration(clock.budget_seconds)} of training"] if clock.budget_seconds is not None else []
    )
    length = " or ".join(limits) + (" (whichever ends first)" if len(limits) > 1 else "")
    logger.info(
        f"Training {num_parameters / 1e6:.2f}M parameters on {accelerator.device} x {world_size} process(es), "
        f"{'fp32' if accelerator.mixed_precision == 'no' else accelerator.mixed_precision} precision: {length} "
        f"of {total_batch_size} images "
        f"({config.train_batch_size} per process x {config.gradient_accumulation_steps} accumulation), "
        f"starting at step {global_step}; output in {output_dir}"
    )

    # ---------------------------------------------------------------- the loop
    step = TrainStep(accelerator, model, optimizer, loss_fn, generator, config.max_grad_norm,
                     check_finite=bool(config.max_nonfinite_steps))  # fmt: skip
    debug = DebugDump(config.debug_dump_dir, rank)
    nan_batches = parse_index_spec(config.debug_nan_batches)
    nonfinite_limit = config.max_nonfinite_steps + (16 if step.scaler_in_use else 0)
    zero = torch.zeros((), device=accelerator.device)
    window = {key: zero.clone() for key in ("loss", "simple", "vlb", "grad_norm", "micro", "steps", "images")}
    window_start, paused, micro_batches_drawn, nonfinite_in_a_row = time.perf_counter(), 0.0, 0, 0
    last_logs: dict[str, float] = {}
    epoch_at_last_step = batches.epoch
    run_start = time.perf_counter()
    progress = tqdm(total=max_train_steps, initial=global_step, desc="steps", dynamic_ncols=True,
                    disable=not accelerator.is_local_main_process)  # fmt: skip
    model.train()

    def agreed_elapsed() -> float:
        """Loop seconds so far; every process takes rank 0's, so all stop at the same step with the same LR."""
        if clock.budget_seconds is None or world_size == 1:
            return clock.elapsed()
        return float(broadcast(torch.tensor([clock.elapsed()], dtype=torch.float64, device=accelerator.device))[0])

    clock.restart()  # set-up and resume loading are not training time
    elapsed = clock.elapsed()
    done = (max_train_steps is not None and global_step >= max_train_steps) or clock.spent(elapsed)
    while not done:
        # -- one micro-batch: forward and backward; the optimiser acts on the last one of each accumulation window
        batch = next(batches)
        x0 = batch["pixel_values"].to(accelerator.device, non_blocking=True)
        if any(start <= micro_batches_drawn <= end for start, end in nan_batches):
            x0 = torch.full_like(x0, float("nan"))
        micro_batches_drawn += 1
        debug.batch(x0)
        class_labels = None
        if conditioning is not None:  # the source index, dropped to the null class with --class_dropout_prob
            class_labels = conditioning.labels(batch["source"], generator, device=accelerator.device)
        step_ok = step(x0, class_labels)
        if step_ok is None:  # inside an accumulation window
            continue

        # -- a skipped step (non-finite loss or gradients): no update, no LR/EMA step, the step is retried
        if not step_ok:
            nonfinite_in_a_row += 1
            step.discard()
            logger.warning(f"Non-finite loss or gradients at step {global_step + 1}: skipped ({nonfinite_in_a_row} in a row).")  # fmt: skip
            if nonfinite_in_a_row >= nonfinite_limit:
                progress.close()
                checkpoints = list_checkpoints(output_dir)
                last = checkpoints[-1][1] if checkpoints else "none was written"
                raise TrainingError(
                    f"The loss was not finite for {nonfinite_in_a_row} optimiser steps in a row (at step "
                    f"{global_step + 1}), so training stopped; the last good checkpoint is {last} (try a lower "
                    "--learning_rate or --mixed_precision no).",
                    exit_code=1,
                )
            continue
        nonfinite_in_a_row = 0

        # -- the optimiser step happened: LR schedule, EMA, counters
        step_lr = optimizer.param_groups[0]["lr"]
        if ema is not None:
            ema.step(accelerator.unwrap_model(model).parameters())
        global_step += 1
        elapsed = agreed_elapsed()
        # The dump records the time that decides whether to stop (read after the EMA step), not an earlier reading.
        debug.write(step=global_step, lr=step_lr, examples=debug.hashes, elapsed=elapsed)
        if isinstance(lr_scheduler, TimeBudgetLR):
            lr_scheduler.step(global_step, elapsed)
        else:
            lr_scheduler.step()
        done = (max_train_steps is not None and global_step >= max_train_steps) or clock.spent(elapsed)
        progress.update(1)
        step.drain_into(window)
        if config.debug_step_sleep:
            time.sleep(config.debug_step_sleep)

        # -- logging: sums over the window, all-reduced over processes (the only collective besides DDP's)
        if global_step % config.logging_steps == 0 or done:
            totals = accelerator.reduce(torch.stack(list(window.values())), reduction="sum").tolist()
            sums = dict(zip(window, totals))
            window_seconds = time.perf_counter() - window_start - paused
            logs = {
                "loss": sums["loss"] / max(sums["micro"], 1),
                "loss_simple": sums["simple"] / max(sums["micro"], 1),
                "grad_norm": sums["grad_norm"] / max(sums["steps"], 1) / world_size,
                "lr": lr_scheduler.get_last_lr()[0],
                "images_per_sec": sums["images"] / max(window_seconds, 1e-9),
                "epoch": batches.epoch,
            }
            if loss_fn.learned_variance:
                logs["vlb_bits_per_dim"] = sums["vlb"] / max(sums["micro"], 1)
            if ema is not None:
                logs["ema_decay"] = ema.cur_decay_value
            accelerator.log(logs, step=global_step)
            progress.set_postfix(loss=f"{logs['loss']:.4f}", lr=f"{logs['lr']:.2e}", refresh=False)
            last_logs = logs
            for value in window.values():
                value.zero_()
            window_start, paused = time.perf_counter(), 0.0

        # -- checkpoint, previews, epoch-based saves (diffusers' flags)
        pause_start = time.perf_counter()
        epoch_done = batches.epoch > epoch_at_last_step
        epoch_at_last_step = batches.epoch
        if global_step % config.checkpointing_steps == 0:
            rank_state = {"step": global_step, "data": batches.state_dict(), "generator": generator.get_state(),
                          "clock": clock.state_dict(elapsed)}  # fmt: skip
            path = save_checkpoint(accelerator, output_dir, global_step, rank_state, config.checkpoints_total_limit,
                                   kill_half_way=config.debug_kill_in_checkpoint == global_step)  # fmt: skip
            logger.info(f"Saved {path}")
        images_due = bool(config.save_images_steps) and global_step % config.save_images_steps == 0
        images_due |= epoch_done and bool(config.save_images_epochs) and batches.epoch % config.save_images_epochs == 0
        if images_due:
            copy_weights(preview_unet, accelerator, model, ema)
            if accelerator.is_main_process:
                grid = sample_grid(preview_unet, noise_scheduler, config, config.eval_batch_size)
                os.makedirs(os.path.join(output_dir, "samples"), exist_ok=True)
                grid.save(os.path.join(output_dir, "samples", f"step-{global_step:07d}.png"))
                log_grid(accelerator, grid, global_step)
        if epoch_done and config.save_model_epochs and batches.epoch % config.save_model_epochs == 0:
            copy_weights(preview_unet, accelerator, model, ema)
            if accelerator.is_main_process:
                scheduler = losses.sampling_scheduler(noise_scheduler, preview_unet)
                AnimeDDPMPipeline(unet=preview_unet, scheduler=scheduler).save_pretrained(output_dir)
        paused += time.perf_counter() - pause_start

    progress.close()
    train_time = time.perf_counter() - run_start

    # ---------------------------------------------------------------- final save (EMA weights when EMA is on)
    accelerator.wait_for_everyone()
    final_unet = copy_weights(UNet2DModel.from_config(accelerator.unwrap_model(model).config), accelerator, model, ema)
    debug.write(final=True, step=global_step, params_sha256=parameters_sha256(accelerator.unwrap_model(model)),
                ema_sha256=parameters_sha256(final_unet) if accelerator.is_main_process else None)  # fmt: skip
    exit_code = 0
    if accelerator.is_main_process:
        info = card_info(
            config,
            train_steps=global_step,
            epochs=batches.epoch,
            num_parameters=num_parameters,
            num_processes=world_size,
            batch_size=total_batch_size,
            mixed_precision=accelerator.mixed_precision,
            ema_decay=ema.cur_decay_value if ema is not None and global_step else None,
            final_loss=last_logs.get("loss"),
            training_time=f"{train_time / 60:.1f} min on {world_size} x {accelerator.device.type}",
        )
        exit_code = save_final(accelerator, config, output_dir, final_unet.to(accelerator.device), noise_scheduler, info)  # fmt: skip
        accelerator.print(
            f"Trained {global_step} steps in {train_time:.0f} s; final loss {last_logs.get('loss', float('nan')):.4f}; "
            f"pipeline and samples.png in {output_dir}"
        )
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return exit_code


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of train_with_accelerate.py: parse, train, turn known errors into one line and an exit code."""
    try:
        return train(parse_args(argv))
    except (TrainingError, DataError) as error:
        print(f"train_with_accelerate: error: {error}", file=sys.stderr)
        return getattr(error, "exit_code", 2)

"""Every setting of a training run, in one place: the command line, `--config` files and the model card read it.

Each option is one line: its name, type, default and a short help. The groups are dataclasses that `TrainingConfig`
combines, so `--help` shows them in this order. Flags of diffusers' `train_unconditional.py` keep their names and
meaning (some defaults differ: ours train a small model on a CPU in minutes); `tests/test_training.py` lists them.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import math
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffusers.optimization import TYPE_TO_SCHEDULER_FUNCTION

from .budget import parse_duration
from .errors import TrainingError
from .losses import BETA_SCHEDULES, PREDICTION_TYPES, WEIGHTING_SCHEMES
from .models import DEFAULT_PRESET, PRESETS
from .posthoc_ema import MAX_SIGMA_REL
from .schedulers import DEFAULT_STEPS, SCHEDULERS


# The EMA of --use_ema: a power-function EMA of this sigma_rel (docs/recipe.md, "The EMA: a power-function EMA ...").
DEFAULT_EMA_SIGMA_REL = 0.15
# diffusers' warm-up EMA, which --ema_sigma_rel 0 selects, and the settings that shape it (and nothing else).
WARMUP_EMA_SETTINGS = ("ema_inv_gamma", "ema_power", "ema_max_decay")
# Without --max_train_steps, --num_epochs or --max_train_time a run trains for this long: the budget the default
# recipe was chosen for, and a predictable wait on any machine.
DEFAULT_MAX_TRAIN_TIME = "15m"
LR_SCHEDULES = tuple(str(kind.value) for kind in TYPE_TO_SCHEDULER_FUNCTION)
LOGGERS = ("tensorboard", "wandb", "comet_ml", "mlflow", "aim", "clearml", "dvclive", "swanlab", "all", "none")


def option(default: Any, help: str, choices: Sequence | None = None) -> Any:
    """A setting: its default, its `--help` line and, optionally, the values it accepts."""
    return field(default=default, metadata={"help": help, "choices": tuple(choices) if choices else None})


@dataclass
class DataOptions:
    dataset: str | None = option(None, "preset (emoji, anime, celeba...), Hub id, folder, parquet or 'anime:0.7,celeba:0.3'")  # fmt: skip
    dataset_name: str | None = option(None, "diffusers' name for --dataset (give one of the two)")
    dataset_config_name: str | None = option(None, "the config of a Hub dataset that has several")
    train_data_dir: str | None = option(None, "a local folder of images, used when no dataset is named")
    image_column: str | None = option(None, "the column holding the images (default: 'image' or the preset's)")
    cache_dir: str | None = option(None, "where downloaded datasets are cached")
    resolution: int = option(32, "square training size: short side resized to it, then cropped")
    center_crop: bool = option(True, "centre crop after resizing (--no-center_crop: random crop)")
    random_flip: bool = option(False, "flip images horizontally at random")
    jpeg_draft: bool = option(True, "decode JPEGs twice the needed size or more at 1/2-1/8 scale (--no-jpeg_draft: exact)")  # fmt: skip
    shuffle_buffer: int | None = option(None, "shuffle buffer of streamed datasets (0: no shuffling)")
    dataloader_num_workers: int | None = option(None, "data loading subprocesses per process (default: none on a CPU; on a GPU up to 8 cores' worth)")  # fmt: skip
    data_retry_minutes: float = option(30.0, "wait this long for a stream that lost the network, then stop with a checkpoint")  # fmt: skip


@dataclass
class ModelOptions:
    model: str = option(DEFAULT_PRESET, "UNet preset (the README's table: parameters, widths)", PRESETS)
    model_config_name_or_path: str | None = option(None, "a UNet2DModel config (folder, file or Hub id) instead of --model")  # fmt: skip
    prediction_type: str = option("sample", "what the UNet predicts: sample (x_0), epsilon or v_prediction", PREDICTION_TYPES)  # fmt: skip
    variance_type: str = option("fixed_small", "learned_range: learn the variance too (Improved DDPM)", ("fixed_small", "learned_range"))  # fmt: skip
    ddpm_num_steps: int = option(1000, "diffusion steps T of the training chain")
    ddpm_beta_schedule: str = option("squaredcos_cap_v2", "beta schedule (squaredcos_cap_v2 = cosine)", (*BETA_SCHEDULES, "cosine"))  # fmt: skip
    ddpm_num_inference_steps: int = option(1000, "preview steps when --sample_scheduler is ddpm")
    snr_gamma: float | None = option(None, "min-SNR loss weighting gamma (5 in the paper; default off)")
    x0_weight_cap: float = option(0.0, "with --prediction_type sample: weigh the x_0 error by min(SNR + 1, this), v-prediction's weight capped (e.g. 5; 0: off, the uniform weight)")  # fmt: skip
    weighting_scheme: str = option("logit_normal", "how training timesteps are drawn: logit_normal (SD3) or none (uniform)", WEIGHTING_SCHEMES)  # fmt: skip
    logit_mean: float = option(0.5, "with logit_normal: mean of the logit of t/T (> 0: more noise; 0 in SD3)")
    logit_std: float = option(1.0, "with logit_normal: its standard deviation")
    input_perturbation: float = option(0.1, "noise the inputs with noise + this * another noise, the target unchanged (DDPM-IP, 0.1 as in the paper; 0: off)")  # fmt: skip
    self_condition: bool = option(False, "feed the UNet its previous x_0 estimate as extra input channels (self-conditioning, Chen et al. 2022)")  # fmt: skip
    enable_xformers_memory_efficient_attention: bool = option(False, "xformers attention (needs xformers and a GPU)")
    condition_on_source: bool = option(False, "condition the UNet on each image's source in a mixture")
    class_dropout_prob: float = option(0.1, "with --condition_on_source: label dropout for classifier-free guidance")


@dataclass
class OptimisationOptions:
    train_batch_size: int = option(16, "images per process and micro-batch")
    max_train_steps: int | None = option(None, f"optimiser steps (none of the three limits: {DEFAULT_MAX_TRAIN_TIME} of training)")  # fmt: skip
    max_train_time: str | None = option(None, "wall-clock budget: minutes or 15m, 2h, 1h30m (LR laid over the time)")
    num_epochs: int | None = option(None, "passes over data of known size (the first limit reached ends the run)")
    gradient_accumulation_steps: int = option(1, "micro-batches per optimiser step")
    learning_rate: float = option(1e-3, "peak learning rate, after the warm-up")
    lr_scheduler: str = option("cosine", "LR schedule over optimiser steps (or over the time budget)", LR_SCHEDULES)
    lr_warmup_steps: int = option(100, "linear warm-up, in optimiser steps")
    adam_beta1: float = option(0.95, "AdamW beta1")
    adam_beta2: float = option(0.999, "AdamW beta2")
    adam_weight_decay: float = option(1e-6, "AdamW weight decay")
    adam_epsilon: float = option(1e-8, "AdamW epsilon")
    max_grad_norm: float = option(1.0, "clip the gradient norm to this (0: no clipping)")
    use_ema: bool = option(True, "keep an EMA of the weights; the saved pipeline holds it")
    ema_sigma_rel: float = option(DEFAULT_EMA_SIGMA_REL, f"the EMA's length as a fraction of the run: a power-function EMA (Karras et al. 2024) of this relative width, at most {MAX_SIGMA_REL}; 0: diffusers' warm-up EMA of --ema_inv_gamma, --ema_power and --ema_max_decay (the default before December 2026)")  # fmt: skip
    ema_inv_gamma: float = option(1.0, "warm-up EMA (--ema_sigma_rel 0): decay = 1 - (1 + step / inv_gamma) ** -power")
    ema_power: float = option(0.75, "warm-up EMA (--ema_sigma_rel 0): its power")
    ema_max_decay: float = option(0.9999, "warm-up EMA (--ema_sigma_rel 0): its maximum decay")
    ema_snapshot_steps: int = option(0, "every this many steps, save two power-function EMAs (Karras et al. 2024) to output_dir/ema_snapshots/, from which `anime-ddpm posthoc-ema` makes an EMA of any length after the run (0: off)")  # fmt: skip
    mixed_precision: str | None = option(None, "no, fp16 (GPU) or bf16 (default: the launcher's, else bf16 where native)", ("no", "fp16", "bf16"))  # fmt: skip
    compile: bool = option(False, "torch.compile the UNet (minutes of start-up the first time)")
    seed: int = option(0, "seed of the weights, the noise and the data order")
    max_nonfinite_steps: int = option(5, "skip non-finite steps; stop after this many in a row (0: no check)")


@dataclass
class OutputOptions:
    output_dir: str | None = option(None, "the run's folder (default: ddpm-<dataset>-<resolution>)")
    overwrite_output_dir: bool = option(False, "start over in an output_dir that holds another run (deletes its outputs)")  # fmt: skip
    checkpointing_steps: int = option(500, "save a resumable checkpoint-<step> every this many optimiser steps")
    checkpoints_total_limit: int | None = option(None, "keep at most this many of this run's checkpoints")
    resume_from_checkpoint: str | None = option(None, "'latest' (the newest that verifies) or a checkpoint folder")
    save_images_steps: int | None = option(250, "save a preview grid every this many optimiser steps (0: never)")
    save_images_epochs: int | None = option(None, "also save a preview grid every this many epochs")
    save_model_epochs: int | None = option(None, "also save the pipeline every this many epochs")
    eval_batch_size: int = option(16, "images in each preview grid")
    sample_scheduler: str = option("dpm++", "sampler of the previews and the final grid", SCHEDULERS)
    sample_steps: int | None = option(None, "steps of --sample_scheduler (default: its usual count)")
    num_samples: int = option(64, "images in the final grid, output_dir/samples.png")


@dataclass
class LoggingOptions:
    logger: str = option("tensorboard", "experiment tracker ('none' for none)", LOGGERS)
    logging_dir: str = option("logs", "tracker folder, relative to --output_dir")
    logging_steps: int = option(10, "log metrics every this many optimiser steps")


@dataclass
class HubOptions:
    push_to_hub: bool = option(False, "push the final pipeline, card and samples (never checkpoints)")
    hub_token: str | None = option(None, "Hub token (push, private data); visible in `ps`: prefer HF_TOKEN or `hf auth login`")  # fmt: skip
    hub_model_id: str | None = option(None, "Hub repository (default: the name of --output_dir)")
    hub_private_repo: bool = option(False, "create the Hub repository as private")


@dataclass
class LaunchOptions:
    local_rank: int = option(-1, "set by old launchers; Accelerate reads LOCAL_RANK itself")
    config: str | None = option(None, "a YAML or JSON file of settings (flags on the command line win)")


GROUPS = {
    "data": DataOptions,
    "model": ModelOptions,
    "optimisation": OptimisationOptions,
    "output": OutputOptions,
    "logging": LoggingOptions,
    "hub": HubOptions,
    "launch": LaunchOptions,
}
# Settings that came after checkpoints existed and change the run, with the value every earlier run had: part of the
# identity only when they differ from it, so a checkpoint written before them still resumes (and still refuses a run
# that changes them, whatever the defaults become).
IDENTITY_WHEN_SET = {"weighting_scheme": "none", "logit_mean": 0.0, "logit_std": 1.0, "input_perturbation": 0.0,
                     "self_condition": False, "ema_sigma_rel": 0.0, "x0_weight_cap": 0.0}  # fmt: skip
# What a checkpoint belongs to: a run resumes only with the same values (checkpoint.py compares them). Limits
# (steps, time), checkpoints, previews, logging and the Hub may change between resumes; so may --jpeg_draft, which
# came later (a new name here would disown every earlier checkpoint) and changes pixels by ~3/255 on average.
RUN_IDENTITY = (
    *(f.name for f in dataclasses.fields(DataOptions) if f.name not in ("dataset_name", "cache_dir", "data_retry_minutes", "jpeg_draft")),
    *(f.name for f in dataclasses.fields(ModelOptions) if f.name not in ("ddpm_num_inference_steps", "enable_xformers_memory_efficient_attention", *IDENTITY_WHEN_SET)),
    "train_batch_size",
    "gradient_accumulation_steps",
    "use_ema",
    "seed",
)  # fmt: skip
# Ranges of numeric settings, checked before anything heavy starts; NaN and infinity fail every check.
AT_LEAST_ONE = ("resolution", "train_batch_size", "gradient_accumulation_steps", "checkpointing_steps", "eval_batch_size",
                "num_samples", "logging_steps", "ddpm_num_steps", "ddpm_num_inference_steps", "max_train_steps",
                "num_epochs", "checkpoints_total_limit", "save_images_epochs", "save_model_epochs", "sample_steps")  # fmt: skip
NOT_NEGATIVE = ("data_retry_minutes", "learning_rate", "lr_warmup_steps", "max_grad_norm", "adam_weight_decay", "dataloader_num_workers",
                "save_images_steps", "max_nonfinite_steps", "shuffle_buffer", "input_perturbation", "ema_snapshot_steps", "x0_weight_cap")  # fmt: skip
POSITIVE = ("adam_epsilon", "ema_inv_gamma", "ema_power", "snr_gamma", "logit_std")
UNIT_INTERVAL = ("ema_max_decay", "class_dropout_prob", "adam_beta1", "adam_beta2")


@dataclass
class TrainingConfig(LaunchOptions, HubOptions, LoggingOptions, OutputOptions, OptimisationOptions, ModelOptions, DataOptions):  # fmt: skip
    """Every setting of a training run; `build_parser()` turns each field into `--<name>`."""

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

    def run_identity(self, num_processes: int) -> dict[str, Any]:
        """The settings that make a run this run: a checkpoint resumes only into the same ones."""
        identity = {name: getattr(self, name) for name in RUN_IDENTITY}
        # The logit-normal parameters shape nothing when timesteps are uniform: a uniform run is one run whatever they are.
        effective = {name: getattr(self, name) for name in IDENTITY_WHEN_SET}
        if self.weighting_scheme != "logit_normal":
            effective.update(logit_mean=IDENTITY_WHEN_SET["logit_mean"], logit_std=IDENTITY_WHEN_SET["logit_std"])
        if not self.use_ema:  # nor does the EMA's kind when there is no EMA
            effective.update(ema_sigma_rel=IDENTITY_WHEN_SET["ema_sigma_rel"])
        identity.update({name: value for name, value in effective.items() if value != IDENTITY_WHEN_SET[name]})
        identity.update(dataset=self.dataset_spec, num_processes=num_processes)
        return identity

    def public_settings(self) -> dict[str, Any]:
        """Every setting but the token, for training_config.json, the trackers and the model card."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "hub_token"}

    def validate(self) -> None:
        """Raise TrainingError (one sentence) for settings that cannot work, before anything heavy starts."""
        for f in dataclasses.fields(self):
            choices, value = f.metadata["choices"], getattr(self, f.name)
            if choices and value is not None and value not in choices:
                raise TrainingError(f"--{f.name} {value!r} is not one of: {', '.join(map(str, choices))}.")
        if self.overwrite_output_dir and self.resume_from_checkpoint:
            raise TrainingError("--overwrite_output_dir starts over and --resume_from_checkpoint continues: give one.")
        if self.dataset and self.dataset_name and self.dataset != self.dataset_name:
            raise TrainingError("--dataset and --dataset_name name the same setting: give only one.")
        checks = [(AT_LEAST_ONE, lambda v: v >= 1, "must be at least 1"),
                  (NOT_NEGATIVE, lambda v: v >= 0, "must be a number >= 0"),
                  (POSITIVE, lambda v: v > 0, "must be a positive number"),
                  (UNIT_INTERVAL, lambda v: 0 <= v <= 1, "must be a number in [0, 1]")]  # fmt: skip
        for names, accepts, requirement in checks:
            for name in names:
                value = getattr(self, name)
                if value is not None and not (math.isfinite(value) and accepts(value)):
                    raise TrainingError(f"--{name} {requirement}, got {value}.")
        if not 0 <= self.ema_sigma_rel <= MAX_SIGMA_REL:  # NaN fails too
            raise TrainingError(f"--ema_sigma_rel must be 0 (the warm-up EMA) or at most {MAX_SIGMA_REL}, got {self.ema_sigma_rel}.")  # fmt: skip
        warmup_changed = [name for name in WARMUP_EMA_SETTINGS if getattr(self, name) != getattr(TrainingConfig, name)]
        if self.use_ema and self.ema_sigma_rel and warmup_changed:
            raise TrainingError(f"--{warmup_changed[0]} shapes diffusers' warm-up EMA, which only --ema_sigma_rel 0 selects: add --ema_sigma_rel 0 to use it, or drop --{warmup_changed[0]} to keep the power-function EMA of --ema_sigma_rel {self.ema_sigma_rel}.")  # fmt: skip
        if self.x0_weight_cap:
            if not self.x0_weight_cap >= 1:  # NaN fails too
                raise TrainingError(f"--x0_weight_cap must be 0 (off) or at least 1 (the weight at pure noise), got {self.x0_weight_cap}.")  # fmt: skip
            if self.prediction_type != "sample":
                raise TrainingError(f"--x0_weight_cap weighs the x_0 error: use it with --prediction_type sample (this run: {self.prediction_type}), or drop it.")  # fmt: skip
            if self.snr_gamma:
                raise TrainingError("--x0_weight_cap and --snr_gamma are two loss weights: give one.")
        if self.adam_beta1 == 1 or self.adam_beta2 == 1:
            raise TrainingError("--adam_beta1 and --adam_beta2 must be below 1 (1 would never update the moments).")
        if self.max_train_time is not None:
            try:
                parse_duration(self.max_train_time)
            except ValueError as error:
                raise TrainingError(f"--max_train_time: {error}") from None
        if self.preview_steps() > self.ddpm_num_steps:
            raise TrainingError(f"--sample_steps {self.preview_steps()} exceeds the {self.ddpm_num_steps} training steps.")  # fmt: skip


# ============================================================================================= the command line
class ArgumentParser(argparse.ArgumentParser):
    """argparse that answers a mistyped flag with one line and the nearest real flag, not the whole usage."""

    def error(self, message: str) -> None:
        match = re.match(r"unrecognized arguments: (\S+)", message)
        if match:
            flag = match.group(1).split("=")[0]
            known = [option for action in self._actions for option in action.option_strings]
            nearest = difflib.get_close_matches(flag, known, n=1, cutoff=0.6)
            hint = f"; did you mean {nearest[0]}?" if nearest else "; see --help for the flags."
            message = f"unknown flag {flag}{hint}"
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """One flag per TrainingConfig field, in its group, with its default shown."""
    parser = ArgumentParser(
        prog="train_with_accelerate.py",
        description="Train a DDPM (diffusers UNet2DModel + DDPMScheduler) with Accelerate. Accepts every flag of "
        "diffusers' train_unconditional.py. Launch with `accelerate launch train_with_accelerate.py ...`.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        allow_abbrev=False,
    )
    for title, group_class in GROUPS.items():
        group = parser.add_argument_group(title)
        for f in dataclasses.fields(group_class):
            kwargs: dict[str, Any] = {"dest": f.name, "default": f.default, "help": f.metadata["help"]}
            if isinstance(f.default, bool):
                kwargs["action"] = argparse.BooleanOptionalAction  # --use_ema / --no-use_ema
            else:
                kwargs["type"] = _value_type(f)
                if f.metadata["choices"]:
                    kwargs["choices"] = list(f.metadata["choices"])
            group.add_argument(f"--{f.name}", **kwargs)
    return parser


def _value_type(f: dataclasses.Field) -> type:
    """int, float or str from the annotation ("int | None" -> int)."""
    annotation = str(f.type)
    return next((t for t in (int, float) if annotation.startswith(t.__name__)), str)


def load_config_file(path: str) -> dict[str, Any]:
    """Settings from a YAML or JSON file: a mapping of setting names (dashes or underscores) to values."""
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
    known, _ = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    if known.config:
        parser.set_defaults(**load_config_file(known.config))
    args = parser.parse_args(argv)
    env_local_rank = int(os.environ.get("LOCAL_RANK", -1))
    if env_local_rank != -1:
        args.local_rank = env_local_rank
    return TrainingConfig.from_namespace(args)

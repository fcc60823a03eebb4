"""What a run tells people and programs: the trackers, `metrics.jsonl`, `summary.json` and the log lines.

Benchmarks and tests read `summary.json` (steps, images, seconds, losses, skipped files, precision, versions) and
`metrics.jsonl` (one line per logging step) instead of the wording of the log.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from tqdm.auto import tqdm

from .budget import format_duration
from .config import TrainingConfig
from .data import SKIP_REASONS
from .state import TrainingState
from .step import TrainStep, new_window


logger = get_logger(__name__)

TRACKER_PROJECT = "train_with_accelerate"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
VERSIONED = ("anime-ddpm", "torch", "diffusers", "accelerate", "datasets", "huggingface_hub")


def precision_name(mixed_precision: str) -> str:
    return "fp32" if mixed_precision == "no" else mixed_precision


def tracker_config(config: TrainingConfig, **extra: Any) -> dict[str, Any]:
    """Hyperparameters for the trackers (TensorBoard accepts only scalars and strings; the token is never logged)."""
    values = {**config.public_settings(), **extra}
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in values.items()}


def read_training_config(output_dir: str | os.PathLike) -> TrainingConfig:
    """The settings of a run from its training_config.json (tracker_config's None written as "None" read back)."""
    values = json.loads(Path(output_dir, "training_config.json").read_text())
    return TrainingConfig.from_namespace({k: None if v == "None" else v for k, v in values.items()})


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in VERSIONED:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(name)
    return found


def log_grid(accelerator: Accelerator, grid, step: int, tag: str = "samples") -> None:
    for tracker in accelerator.trackers:
        try:
            if tracker.name == "tensorboard":
                tracker.writer.add_image(tag, np.asarray(grid), step, dataformats="HWC")
            else:
                tracker.log_images({tag: [grid]}, step=step)
        except Exception as error:  # a tracker that cannot take images must not stop training
            logger.warning(f"Could not send the sample grid to {tracker.name}: {error}")


def window_logs(sums: dict[str, float], seconds: float, lr: float, num_processes: int) -> dict[str, float]:
    """The logged means of a logging window's sums (over micro-batches, optimiser steps and processes)."""
    micro = max(sums["micro"], 1)
    return {
        "loss": sums["loss"] / micro,
        "loss_simple": sums["simple"] / micro,
        "grad_norm": sums["grad_norm"] / max(sums["steps"], 1) / num_processes,
        "lr": lr,
        "images_per_sec": sums["images"] / max(seconds, 1e-9),
    }


def keep_metrics_until(output_dir: str, step: int) -> int:
    """Drop the lines of metrics.jsonl past `step` (a killed run's steps that the resumed or new run will redo), so
    that the file is one timeline; returns how many went. Rewritten atomically."""
    path = os.path.join(output_dir, METRICS_FILE)
    try:
        lines = Path(path).read_text().splitlines(keepends=True)
    except FileNotFoundError:
        return 0

    def kept(line: str) -> bool:
        try:
            return json.loads(line)["step"] <= step
        except (ValueError, KeyError, TypeError):
            return False  # a line cut short by the kill

    keep = [line for line in lines if kept(line)]
    if len(keep) == len(lines):
        return 0
    temporary = path + ".tmp"
    with open(temporary, "w") as f:
        f.writelines(keep)
    os.replace(temporary, path)
    return len(lines) - len(keep)


class RunLog:
    """The logging window (device sums, reduced over processes every `logging_steps`), the progress bar, and the
    files in output_dir. Time spent on checkpoints and previews (`paused()`) is left out of images/s."""

    def __init__(self, config: TrainingConfig, state: TrainingState, output_dir: str):
        self.config, self.state, self.output_dir = config, state, output_dir
        self.accelerator = accelerator = state.accelerator
        self.window = new_window(accelerator.device)
        self.window_start, self.paused_seconds = time.perf_counter(), 0.0
        self.last: dict[str, float] = {}
        self.images_seen = 0.0
        self.started = time.perf_counter()
        self.first_step = state.step  # > 0 when resumed: this process trains the steps after it
        self.progress = tqdm(total=state.max_train_steps, initial=state.step, desc="steps", dynamic_ncols=True,
                             disable=not accelerator.is_local_main_process)  # fmt: skip

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    def start(self, threads: str) -> None:
        """training_config.json, the trackers with the hyperparameters, and one line saying what will happen
        (`threads`: why the process uses the CPU threads it uses)."""
        config, state, accelerator = self.config, self.state, self.accelerator
        world_size = accelerator.num_processes
        total_batch = config.train_batch_size * world_size * config.gradient_accumulation_steps
        if self.main:
            Path(self.output_dir, "training_config.json").write_text(json.dumps(tracker_config(config), indent=2))
            dropped = keep_metrics_until(self.output_dir, state.step)
            if dropped:
                logger.info(f"{METRICS_FILE}: dropped {dropped} line(s) past step {state.step}, from a run that stopped before saving a checkpoint there.")  # fmt: skip
        # TensorBoard hides what an earlier, interrupted timeline logged at this step and after (purge_step).
        accelerator.init_trackers(
            TRACKER_PROJECT,
            config=tracker_config(config, max_train_steps_resolved=state.max_train_steps, num_processes=world_size,
                                  total_batch_size=total_batch, num_parameters=state.unet.num_parameters(),
                                  mixed_precision_resolved=accelerator.mixed_precision),
            init_kwargs={"tensorboard": {"purge_step": state.step + 1}},
        )  # fmt: skip
        limits = [f"{state.max_train_steps} optimiser steps"] if state.max_train_steps is not None else []
        if state.clock.budget_seconds is not None:
            limits.append(f"{format_duration(state.clock.budget_seconds)} of training")
        length = " or ".join(limits) + (" (whichever ends first)" if len(limits) > 1 else "")
        logger.info(
            f"Training {state.unet.num_parameters() / 1e6:.2f}M parameters on {accelerator.device} x {world_size} "
            f"process(es), {precision_name(accelerator.mixed_precision)} precision, {torch.get_num_threads()} CPU "
            f"thread(s) per process ({threads}): {length} of {total_batch} images ({config.train_batch_size} per process x "
            f"{config.gradient_accumulation_steps} accumulation), starting at step {state.step}; output in "
            f"{self.output_dir}"
        )

    def step_done(self, step: TrainStep, done: bool) -> None:
        """Count the finished optimiser step; every `logging_steps` (and at the end) log the window."""
        step.drain_into(self.window)
        self.progress.update(1)
        if self.state.step % self.config.logging_steps == 0 or done:
            self._log_window()

    def _log_window(self) -> None:
        state, accelerator = self.state, self.accelerator
        # One all-reduce for the window's sums and the skipped-file counts (cumulative per process).
        skips = torch.tensor([state.dataset.skipped.get(r, 0) for r in SKIP_REASONS], device=accelerator.device)
        totals = accelerator.reduce(torch.cat([torch.stack(list(self.window.values())), skips.float()]), reduction="sum").tolist()  # fmt: skip
        sums = dict(zip(self.window, totals))
        skipped = {reason: int(n) for reason, n in zip(SKIP_REASONS, totals[len(self.window) :]) if n}
        seconds = time.perf_counter() - self.window_start - self.paused_seconds
        logs = window_logs(sums, seconds, state.lr_scheduler.get_last_lr()[0], accelerator.num_processes)
        logs["epoch"] = state.batches.epoch
        if state.loss_fn.learned_variance:
            logs["vlb_bits_per_dim"] = sums["vlb"] / max(sums["micro"], 1)
        if state.ema is not None:
            logs["ema_decay"] = state.ema.cur_decay_value
        for reason, count in skipped.items():
            logs[f"skipped_files/{reason}"] = count
        if state.batches.waited_seconds:
            logs["data_wait_seconds"] = state.batches.waited_seconds
        accelerator.log(logs, step=state.step)
        if self.main:
            record = {"step": state.step, "elapsed": round(state.clock.elapsed(), 3), **logs}
            with open(os.path.join(self.output_dir, METRICS_FILE), "a") as f:
                f.write(json.dumps(record) + "\n")
        self.progress.set_postfix(loss=f"{logs['loss']:.4f}", lr=f"{logs['lr']:.2e}", refresh=False)
        self.images_seen += sums["images"]
        self.last = logs
        for value in self.window.values():
            value.zero_()
        self.window_start, self.paused_seconds = time.perf_counter(), 0.0

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Time that is not training (checkpoints, previews): left out of images/s."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.paused_seconds += time.perf_counter() - start

    def skipped_files(self) -> dict[str, int]:
        """Unusable files met by every process, by reason (a collective: call on every process)."""
        counts = torch.tensor([self.state.dataset.skipped.get(r, 0) for r in SKIP_REASONS], device=self.accelerator.device)  # fmt: skip
        totals = self.accelerator.reduce(counts, reduction="sum").tolist()
        return {reason: int(n) for reason, n in zip(SKIP_REASONS, totals) if n}

    def finish(self, status: str, **extra: Any) -> dict[str, Any]:
        """summary.json and the closing line (main process); returns the summary. Call on every process."""
        self.progress.close()
        skipped = self.skipped_files()
        state, accelerator = self.state, self.accelerator
        seconds = time.perf_counter() - self.started
        summary = {
            "status": status,
            "steps": state.step,
            "resumed_from_step": self.first_step,
            "epochs": state.batches.epoch,
            "images": int(self.images_seen),
            "seconds": round(seconds, 3),
            "images_per_sec": self.images_seen / max(seconds, 1e-9),
            "final_loss": self.last.get("loss"),
            "final_loss_simple": self.last.get("loss_simple"),
            "skipped_files": skipped,
            "data_wait_seconds": round(state.batches.waited_seconds, 3),
            "mixed_precision": accelerator.mixed_precision,
            "num_processes": accelerator.num_processes,
            "device": str(accelerator.device),
            "cpu_threads": torch.get_num_threads(),
            "num_parameters": state.unet.num_parameters(),
            "output_dir": self.output_dir,
            "versions": versions(),
            **extra,
        }
        if self.main:
            Path(self.output_dir, SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
            if skipped:
                reasons = ", ".join(f"{n} {reason}" for reason, n in skipped.items())
                logger.warning(f"Skipped an unusable image {sum(skipped.values())} times ({reasons}); every pass over the data meets the same files again.")  # fmt: skip
        return summary

    def closing_line(self, summary: dict[str, Any]) -> str:
        """What the run did, in the terms the README's measured runs are given in, and how to get further."""
        loss = summary["final_loss"]
        steps, first = summary["steps"], summary["resumed_from_step"]
        done = f"{steps} steps" if not first else f"{steps - first} steps, from step {first} (resumed) to {steps}"
        line = (
            f"Trained {done} ({summary['images']:,} images, {summary['images_per_sec']:.0f} "
            f"images/s) in {format_duration(summary['seconds'])}, {precision_name(summary['mixed_precision'])} on "
            f"{summary['num_processes']} x {summary['device']} with {summary['cpu_threads']} CPU thread(s); final "
            f"loss {float('nan') if loss is None else loss:.4f}; pipeline and samples.png in {self.output_dir}"
        )
        clock = self.state.clock
        if clock.spent() and clock.budget_seconds is not None:  # the time budget ended it, not a step count
            seconds = 2 * clock.budget_seconds
            longer = f"{seconds / 60:g}m" if seconds >= 60 else f"{seconds:g}s"
            faster = ""
            if summary["device"] == "cpu":
                faster = "; a GPU" + (" or a CPU with bf16" if summary["mixed_precision"] == "no" else "")
                faster += " makes more steps in the same time"
            line += (
                f". The time budget ended the run: more time gives better samples (--resume_from_checkpoint latest "
                f"--max_train_time {longer} continues from the last checkpoint{faster})."
            )
        return line

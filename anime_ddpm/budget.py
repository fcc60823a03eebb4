"""Wall-clock training budgets (`--max_train_time`): when to stop, and an LR schedule laid over the time.

A step count is a poor unit on a shared machine (the same run may go twice as fast or as slow from one hour to the
next), so a time budget measures progress in seconds of the training loop: the warm-up still counts optimiser
steps, and the rest of diffusers' schedule (cosine, linear, ...) is stretched over the remaining seconds. The
clock is saved in checkpoints, so a resumed run with the same budget ends when an uninterrupted one would have.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import torch
from diffusers.optimization import get_scheduler


# diffusers' schedules are functions of a step count; past the warm-up, progress in [0, 1] maps to this many steps.
PROGRESS_RESOLUTION = 1_000_000
_DURATION = re.compile(r"(?:(\d+(?:\.\d*)?)h)?(?:(\d+(?:\.\d*)?)m)?(?:(\d+(?:\.\d*)?)s)?")


def parse_duration(text: str | float | int) -> float:
    """Seconds in '90' (minutes), '1.5' (minutes), '15m', '2h', '1h30m', '45s'; ValueError with the fix otherwise."""
    value = str(text).strip().lower().replace(" ", "")
    try:
        seconds = float(value) * 60.0
    except ValueError:
        match = _DURATION.fullmatch(value)
        if not value or match is None or not any(match.groups()):
            raise ValueError(
                f"{text!r} is not a duration: give minutes (e.g. 15) or a duration like 15m, 2h, 1h30m, 90s."
            ) from None
        hours, minutes, secs = (float(group) if group else 0.0 for group in match.groups())
        seconds = hours * 3600 + minutes * 60 + secs
    if not seconds > 0:
        raise ValueError(f"{text!r} is not a positive duration: give e.g. 15m.")
    return seconds


def format_duration(seconds: float) -> str:
    if seconds < 120:
        return f"{round(seconds, 1):g} s"
    if seconds < 7200:
        return f"{round(seconds / 60, 1):g} min"
    return f"{round(seconds / 3600, 1):g} h"


class TrainingClock:
    """Seconds spent in the training loop, carried across resumes; `spent` once the budget (if any) is used up."""

    def __init__(self, budget_seconds: float | None = None, clock: Callable[[], float] = time.monotonic):
        self.budget_seconds = budget_seconds
        self._clock = clock
        self._carried = 0.0  # seconds from before the last (re)start
        self._started = clock()
        self.warmup_end: float | None = None  # elapsed seconds when the LR warm-up ended

    def elapsed(self) -> float:
        return self._carried + self._clock() - self._started

    def restart(self) -> None:
        """Start counting now from the seconds carried over (call when the loop starts)."""
        self._started = self._clock()

    def spent(self, elapsed: float | None = None) -> bool:
        if self.budget_seconds is None:
            return False
        return (self.elapsed() if elapsed is None else elapsed) >= self.budget_seconds

    def progress(self, elapsed: float) -> float:
        """Fraction of the post-warm-up time used, in [0, 1]."""
        if self.budget_seconds is None:
            raise ValueError("progress() needs a budget")
        start = self.warmup_end or 0.0
        return min(max((elapsed - start) / max(self.budget_seconds - start, 1e-9), 0.0), 1.0)

    def state_dict(self, elapsed: float | None = None) -> dict[str, float | None]:
        """`elapsed`: the time all processes agreed on (default: this process's clock)."""
        return {"elapsed": self.elapsed() if elapsed is None else elapsed, "warmup_end": self.warmup_end}

    def load_state_dict(self, state: dict) -> None:
        self._carried, self._started = float(state.get("elapsed", 0.0)), self._clock()
        self.warmup_end = state.get("warmup_end")


class TimeBudgetLR:
    """diffusers' `get_scheduler(name)` with the warm-up in optimiser steps and the rest laid over a time budget.

    `step(optimizer_steps_done, elapsed)` sets the LR for the next optimiser step. It is a torch LR scheduler
    underneath (its state goes into Accelerate's checkpoints like any other), driven at a position derived from the
    clock instead of from a step count.
    """

    def __init__(self, name: str, optimizer: torch.optim.Optimizer, num_warmup_steps: int, clock: TrainingClock):
        self.num_warmup_steps = num_warmup_steps
        self.clock = clock
        self.scheduler = get_scheduler(
            name,
            optimizer=optimizer,
            num_warmup_steps=num_warmup_steps,
            num_training_steps=num_warmup_steps + PROGRESS_RESOLUTION,
        )

    def position(self, optimizer_steps: int, elapsed: float) -> float:
        if optimizer_steps < self.num_warmup_steps:
            return float(optimizer_steps)
        if self.clock.warmup_end is None:
            self.clock.warmup_end = elapsed
        return self.num_warmup_steps + self.clock.progress(elapsed) * PROGRESS_RESOLUTION

    def step(self, optimizer_steps: int, elapsed: float) -> None:
        self.scheduler.last_epoch = self.position(optimizer_steps, elapsed) - 1
        self.scheduler.step()  # LambdaLR: last_epoch += 1, lr = base_lr * lambda(last_epoch)

    def get_last_lr(self) -> list[float]:
        return self.scheduler.get_last_lr()

    def state_dict(self) -> dict:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.scheduler.load_state_dict(state)

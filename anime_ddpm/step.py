"""One optimiser step, and the loss sums of a logging window, kept on the device.

`TrainStep` is shared by the training loop and bench/bench_train.py, so the benchmark times the loop's own step.
"""

from __future__ import annotations

import torch
from accelerate import Accelerator

from .losses import DiffusionLoss


WINDOW_KEYS = ("loss", "simple", "vlb", "grad_norm", "micro", "steps", "images")


class TrainStep:
    """One micro-batch's forward and backward and, at the end of an accumulation window, the optimiser step.

    Loss sums stay on the device in `pending` (no host sync per micro-batch) until `drain_into` moves them to the
    logging window; the only host sync per optimiser step is the non-finite check (`check_finite`).
    """

    PENDING_KEYS = ("loss", "simple", "vlb", "micro", "images")

    def __init__(self, accelerator: Accelerator, model, optimizer, loss_fn: DiffusionLoss, generator: torch.Generator,
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


def new_window(device: torch.device) -> dict[str, torch.Tensor]:
    """Zeroed device sums for one logging window."""
    return {key: torch.zeros((), device=device) for key in WINDOW_KEYS}

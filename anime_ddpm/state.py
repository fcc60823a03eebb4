"""Everything a training run carries from step to step, built once: `TrainingState`.

The data stream, the noise schedule and loss, the UNet, its EMA, the optimiser, the LR schedule, the clock, the
noise generator and the step count: `TrainingState.build` makes them from a config, `checkpoint_state` and
`load_checkpoint_state` move the parts that are not Accelerate's to and from a checkpoint.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DistributedType, broadcast
from diffusers import UNet2DModel
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel

from . import losses, network
from .budget import TimeBudgetLR, TrainingClock, format_duration
from .conditioning import SourceConditioning, conditional_unet_config
from .config import TrainingConfig
from .data import DataConfig, TrainDataset, TrainLoader, build_dataloader, build_dataset
from .errors import TrainingError, first_line
from .models import build_unet
from .posthoc_ema import SNAPSHOT_SIGMA_RELS, PowerFunctionEMA


logger = get_logger(__name__)
rank_logger = logging.getLogger(__name__)  # what every process says for itself (its own data stream)

ADAM_IMPLEMENTATIONS = ("fused", "foreach", "for-loop", "default")
# Inductor's layout optimisation (it moves convolutions to channels-last) returns wrong UNet gradients on CPU,
# silently (whole blocks of zeros; the forward agrees). Without it the compiled gradients match eager;
# tests/test_compile.py checks this against float64 and bench/bench_compile_gradients.py measures it.
COMPILE_OPTIONS = {"layout_optimization": False}


# ============================================================================================= precision and speed
def resolve_mixed_precision(requested: str | None, environ: dict[str, str] | None = None,
                            cpu_flags: str | None = None) -> str:  # fmt: skip
    """The precision to train in: the flag; else the launcher's fp16/bf16; else bf16 where it is native, else no.

    On CPUs without AVX512-BF16 or AMX, bf16 is emulated and slower than fp32. `accelerate launch` always sets a
    precision ("no" unless told), so only its fp16/bf16 count as a choice; --mixed_precision no forces fp32.
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


def _fp32_group_norm_forward(self: torch.nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    with torch.autocast(x.device.type, enabled=False):
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return torch.nn.functional.group_norm(x.float(), self.num_groups, weight, bias, self.eps).to(x.dtype)


def fp32_group_norms(model: torch.nn.Module) -> int:
    """Run every GroupNorm of `model` in float32 (output cast back to the input dtype); returns how many.

    CUDA autocast already does this; CPU autocast runs GroupNorm in bfloat16. A benchmark lever only
    (bench/bench_train.py): training does not use it.
    """
    count = 0
    for module in model.modules():
        if isinstance(module, torch.nn.GroupNorm):
            module.forward = types.MethodType(_fp32_group_norm_forward, module)
            count += 1
    return count


def speed_up_model(config: TrainingConfig, model: torch.nn.Module, accelerator: Accelerator,
                   groupnorm_fp32: bool = False) -> torch.nn.Module:  # fmt: skip
    """Speed-ups that keep the maths, applied to the prepared model in place (its state_dict keys do not change).

    `--compile` compiles the UNet in place (`nn.Module.compile`), so checkpoints, EMA and previews see the same
    module and parameter names, with COMPILE_OPTIONS; `groupnorm_fp32` is for benchmarks.
    """
    unet = accelerator.unwrap_model(model)
    if groupnorm_fp32:
        fp32_group_norms(unet)
    if config.compile:
        unet.compile(options=COMPILE_OPTIONS)
    return model


def _launcher_set_one_thread(environ: dict[str, str], parent_environ: str | None) -> bool:
    """Whether OMP_NUM_THREADS=1 came from `accelerate launch`'s default rather than from the user.

    accelerate launch (without --cpu or --num_cpu_threads_per_process) gives the script OMP_NUM_THREADS=1 when its
    own environment has none; the launcher's environment as it started (/proc/<ppid>/environ) tells which it was.
    """
    if environ.get("OMP_NUM_THREADS") != "1" or "ACCELERATE_MIXED_PRECISION" not in environ:
        return False  # not under accelerate launch, or a thread count someone chose
    if parent_environ is None:
        return False  # cannot tell: keep what was set
    return not any(entry.startswith("OMP_NUM_THREADS=") for entry in parent_environ.split("\0"))


def choose_cpu_threads(accelerator: Accelerator, environ: dict[str, str] | None = None) -> str:
    """Use every core for a CPU run whose thread count nobody chose; returns the reason for the log line.

    The launcher's default of one thread leaves the other cores idle; a count set by the user (OMP_NUM_THREADS,
    --num_cpu_threads_per_process) is kept, as is any count on a GPU run (there the CPU only feeds the data).
    """
    environ = os.environ if environ is None else environ
    if accelerator.device.type != "cpu":
        return "the GPU does the work"
    try:
        parent_environ = Path(f"/proc/{os.getppid()}/environ").read_bytes().decode(errors="replace")
    except OSError:
        parent_environ = None
    if not _launcher_set_one_thread(environ, parent_environ):
        return "as set" if environ.get("OMP_NUM_THREADS") else "torch's default"
    try:
        import psutil

        cores = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:
        cores = os.cpu_count() or 1
    threads = max(1, cores // local_processes(accelerator, environ))
    torch.set_num_threads(threads)
    return f"all {cores} cores; accelerate launch would use 1: --num_cpu_threads_per_process N chooses"


def local_processes(accelerator: Accelerator, environ: dict[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    return max(1, int(environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes)))


MAX_DEFAULT_WORKERS = 8


def default_loader_workers(accelerator: Accelerator) -> int:
    """DataLoader workers when none were asked for: on a CPU none (the cores train the model); on a GPU, where the CPU
    only decodes, this process's share of the cores less one for the process itself, at most 8 (a 64 px CelebA
    JPEG costs ~0.5 ms, so 8 cores feed ~10,000 images/s: docs/data.md)."""
    if accelerator.device.type == "cpu":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(0, min(MAX_DEFAULT_WORKERS, cores // local_processes(accelerator) - 1))


# ============================================================================================= builders
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
        if config.self_condition:
            if unet_config.get("in_channels") != 6:
                raise TrainingError(f"--self_condition needs a UNet config with in_channels=6 (the image and the previous x_0 estimate); {config.model_config_name_or_path} has {unet_config.get('in_channels')}.")  # fmt: skip
            unet_config = {**unet_config, "self_condition": True}
        elif unet_config.get("self_condition"):
            raise TrainingError(f"The UNet config {config.model_config_name_or_path} is self-conditioned: train it with --self_condition.")  # fmt: skip
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
                self_condition=config.self_condition,
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


def build_optimizer(config: TrainingConfig, model: torch.nn.Module, accelerator: Accelerator,
                    implementation: str | None = None) -> torch.optim.Optimizer:  # fmt: skip
    """AdamW with the config's hyper-parameters.

    `implementation` None picks torch's fused AdamW kernel where it is safe (one process or DDP, on a CPU or a GPU),
    much faster than the per-parameter loop on a CPU; DeepSpeed and FSDP keep torch's default. The other names are
    for benchmarks.
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


def build_objective(config: TrainingConfig) -> tuple[Any, losses.DiffusionLoss]:
    """The training noise schedule and the loss over it."""
    try:
        noise_scheduler = losses.make_noise_scheduler(
            num_train_timesteps=config.ddpm_num_steps,
            beta_schedule=config.ddpm_beta_schedule,
            prediction_type=config.prediction_type,
            variance_type=config.variance_type,
        )
    except ValueError as error:
        raise TrainingError(str(error)) from None
    objective = losses.DiffusionLoss(
        noise_scheduler,
        snr_gamma=config.snr_gamma,
        weighting_scheme=config.weighting_scheme,
        logit_mean=config.logit_mean,
        logit_std=config.logit_std,
        input_perturbation=config.input_perturbation,
        self_condition=config.self_condition,
        x0_weight_cap=config.x0_weight_cap,
    )
    return noise_scheduler, objective


def build_lr_scheduler(config: TrainingConfig, optimizer: torch.optim.Optimizer, max_train_steps: int | None,
                       clock: TrainingClock):  # fmt: skip
    """diffusers' LR schedule over optimiser steps, or, with only a time budget, laid over the budget's seconds.

    Not given to accelerator.prepare: stepped once per optimiser step, so warm-up and length count optimiser steps
    whatever the gradient accumulation and the number of processes.
    """
    if max_train_steps is None:
        return TimeBudgetLR(config.lr_scheduler, optimizer, config.lr_warmup_steps, clock)
    return get_scheduler(config.lr_scheduler, optimizer=optimizer, num_warmup_steps=config.lr_warmup_steps,
                         num_training_steps=max_train_steps)  # fmt: skip


def build_ema(config: TrainingConfig, unet: UNet2DModel, foreach: bool = True) -> EMAModel | None:
    """The EMA of the weights, saved as `unet_ema/` in checkpoints: a power-function EMA of --ema_sigma_rel, whose
    length stays that fraction of the run however long it is; with --ema_sigma_rel 0, diffusers' warm-up EMA."""
    if not config.use_ema:
        return None
    if config.ema_sigma_rel:
        return PowerFunctionEMA(unet.parameters(), config.ema_sigma_rel, foreach=foreach)
    return EMAModel(
        unet.parameters(),
        decay=config.ema_max_decay,
        use_ema_warmup=True,
        inv_gamma=config.ema_inv_gamma,
        power=config.ema_power,
        foreach=foreach,
    )


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


class DataOutage(TrainingError):
    """The training data has been unreachable for longer than --data_retry_minutes."""

    def __init__(self, message: str):
        super().__init__(message, exit_code=1)


class Batches:
    """Endless batches: re-iterates the loader epoch after epoch (set_epoch first); its position is resumable.

    A network failure of the stream (refused or dropped connections, timeouts, 5xx, 429) is waited out: the loader
    is reopened, with backoff, at the position of the last batch handed out, for up to `retry_seconds` since that
    batch; then `DataOutage`. The time spent waiting is counted in `waited_seconds`.
    """

    def __init__(self, loader: TrainLoader, epoch: int = 0, retry_seconds: float = 0.0,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):  # fmt: skip
        self.loader, self.epoch, self._iterator = loader, epoch, None
        self.retry_seconds, self._clock, self._sleep = retry_seconds, clock, sleep
        self.waited_seconds = 0.0
        self._delivered: dict[str, Any] | None = None  # the position after the last batch handed out
        self._at_step: dict[str, Any] | None = None  # ... and after the last optimiser step (what checkpoints hold)
        self.loader.set_epoch(epoch)

    def __next__(self) -> dict[str, torch.Tensor]:
        wait = network.OutageWait(self.retry_seconds, clock=self._clock, sleep=self._sleep)
        while True:
            try:
                batch = self._next_batch()
            except Exception as error:
                if isinstance(error, TrainingError) or not self.retry_seconds or not network.is_transient(error):
                    raise
                reason = first_line(error, 160)
                if wait.exhausted():
                    raise DataOutage(f"The training data has been unreachable for {format_duration(wait.seconds)} ({reason})") from error  # fmt: skip
                wait.pause(
                    rank_logger.warning,
                    f"The training data stream failed ({reason}): waiting for it to come back, for up to "
                    f"{format_duration(self.retry_seconds)} (--data_retry_minutes).",
                    lambda seconds, reason=reason: (
                        f"Still waiting for the training data ({reason}): {format_duration(seconds)} so far."
                    ),  # fmt: skip
                )
                self._reopen()
                continue
            if wait.failures:
                self.waited_seconds += wait.seconds
                rank_logger.warning(f"The training data is back after {format_duration(wait.seconds)}; training goes on from the same position.")  # fmt: skip
            self._delivered = self.state_now()
            return batch

    def _next_batch(self) -> dict[str, torch.Tensor]:
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

    def _reopen(self) -> None:
        """A fresh iterator at the position of the last batch handed out (the epoch's start if none was)."""
        if self._delivered is not None:
            self.load_state_dict(self._delivered)
        else:
            self.loader.set_epoch(self.epoch)
            self._iterator = None

    def state_now(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "loader": self.loader.state_dict()}

    def mark_step(self) -> None:
        """An optimiser step ended: this is the position a checkpoint records."""
        self._at_step = self._delivered

    def state_dict(self) -> dict[str, Any]:
        """The position after the last optimiser step (mid-accumulation micro-batches are read again on resume)."""
        return self._at_step if self._at_step is not None else self.state_now()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = state["epoch"]
        self.loader.set_epoch(self.epoch)
        self.loader.load_state_dict(state["loader"])
        self._iterator = None
        self._delivered = self._at_step = state


# ============================================================================================= the state
@dataclass
class TrainingState:
    """What changes as training goes, and what it is made of; the model and optimiser are Accelerate-prepared."""

    config: TrainingConfig
    accelerator: Accelerator
    dataset: TrainDataset
    batches: Batches
    conditioning: SourceConditioning | None
    noise_scheduler: Any
    loss_fn: losses.DiffusionLoss
    model: torch.nn.Module
    ema: EMAModel | None
    optimizer: torch.optim.Optimizer
    lr_scheduler: Any
    clock: TrainingClock
    generator: torch.Generator
    max_train_steps: int | None  # None: only the time budget limits the run
    step: int = 0  # optimiser steps done
    # --ema_snapshot_steps: the power-function EMAs snapshotted for post-hoc EMA, by sigma_rel (empty when off)
    snapshot_emas: dict[float, PowerFunctionEMA] = field(default_factory=dict)

    @classmethod
    def build(cls, config: TrainingConfig, accelerator: Accelerator) -> TrainingState:
        rank, world_size = accelerator.process_index, accelerator.num_processes
        # Data: each rank reads its own disjoint share (split by the data module, not by accelerator.prepare).
        dataset = build_dataset(
            DataConfig.from_options(config, dataset=config.dataset_spec, token=config.hub_token), rank, world_size
        )
        workers = config.dataloader_num_workers
        loader = build_dataloader(dataset, config.train_batch_size,
                                  default_loader_workers(accelerator) if workers is None else workers)  # fmt: skip
        retry_seconds = config.data_retry_minutes * 60
        network.set_stream_retries(retry_seconds)  # reads and opens retried in place by datasets, first
        conditioning = None  # --condition_on_source on a mixture: class i = source i, the last class = null label
        if config.condition_on_source:
            try:
                conditioning = SourceConditioning.from_sources(dataset.source_names, config.class_dropout_prob)
            except ValueError as error:  # e.g. the same source twice in the mixture
                raise TrainingError(f"--condition_on_source: {error}") from None
        noise_scheduler, loss_fn = build_objective(config)
        model = build_model(config, noise_scheduler, conditioning)
        max_train_steps = training_length(config, dataset, loader, accelerator)
        clock = TrainingClock(config.budget_seconds())  # seconds in the loop, carried over resumes
        optimizer = build_optimizer(config, model, accelerator)
        lr_scheduler = build_lr_scheduler(config, optimizer, max_train_steps, clock)
        if accelerator.state.deepspeed_plugin is not None:  # no prepared loader tells DeepSpeed the batch size
            accelerator.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = config.train_batch_size  # fmt: skip
        model, optimizer = accelerator.prepare(model, optimizer)
        model = speed_up_model(config, model, accelerator)
        ema = build_ema(config, accelerator.unwrap_model(model))
        if ema is not None:
            ema.to(accelerator.device)
        batches = Batches(loader, retry_seconds=retry_seconds)
        state = cls(config, accelerator, dataset, batches, conditioning, noise_scheduler, loss_fn, model, ema,
                    optimizer, lr_scheduler, clock, noise_generator(config.seed, rank, accelerator.device),
                    max_train_steps)  # fmt: skip
        if config.ema_snapshot_steps:
            for sigma_rel in SNAPSHOT_SIGMA_RELS:
                state.snapshot_emas[sigma_rel] = PowerFunctionEMA(state.unet.parameters(), sigma_rel)
                state.snapshot_emas[sigma_rel].to(accelerator.device)
        return state

    @property
    def unet(self) -> UNet2DModel:
        return self.accelerator.unwrap_model(self.model)

    def agreed_elapsed(self) -> float:
        """Loop seconds so far; every process takes rank 0's, so all stop at the same step with the same LR."""
        if self.clock.budget_seconds is None or self.accelerator.num_processes == 1:
            return self.clock.elapsed()
        now = torch.tensor([self.clock.elapsed()], dtype=torch.float64, device=self.accelerator.device)
        return float(broadcast(now)[0])

    def done(self, elapsed: float) -> bool:
        return (self.max_train_steps is not None and self.step >= self.max_train_steps) or self.clock.spent(elapsed)

    def finish_step(self, elapsed: float) -> None:
        """After an optimiser step: the EMA follows the weights, the step counts, the LR moves on."""
        for ema in (self.ema, *self.snapshot_emas.values()):
            if ema is not None:
                ema.step(self.unet.parameters())
        self.step += 1
        self.batches.mark_step()
        if isinstance(self.lr_scheduler, TimeBudgetLR):
            self.lr_scheduler.step(self.step, elapsed)
        else:
            self.lr_scheduler.step()

    def checkpoint_state(self, elapsed: float) -> tuple[dict[str, Any], dict[str, Any]]:
        """(shared, per-process) state that Accelerate does not save: JSON for all, tensors and ints per rank."""
        shared = {"lr_scheduler": self.lr_scheduler.state_dict(), "clock": self.clock.state_dict(elapsed)}
        if self.ema is not None:  # its counters; the weights are in unet_ema/
            shared["ema"] = {k: v for k, v in self.ema.state_dict().items() if k != "shadow_params"}
        if self.snapshot_emas:  # their weights are in unet_ema_sigma_rel_*/
            shared["snapshot_emas"] = {repr(s): ema.optimization_step for s, ema in self.snapshot_emas.items()}
        per_rank = {"step": self.step, "data": self.batches.state_dict(), "generator": self.generator.get_state()}
        return shared, per_rank

    def load_checkpoint_state(self, shared: dict[str, Any], per_rank: dict[str, Any]) -> None:
        self.lr_scheduler.load_state_dict(shared["lr_scheduler"])
        if self.ema is not None:
            self.ema.load_state_dict(shared["ema"])
        for sigma_rel, ema in self.snapshot_emas.items():
            ema.optimization_step = shared["snapshot_emas"][repr(sigma_rel)]
        self.clock.load_state_dict(shared["clock"])
        self.step = per_rank["step"]
        self.batches.load_state_dict(per_rank["data"])
        self.generator.set_state(per_rank["generator"])

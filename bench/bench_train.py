"""Training throughput: our training step against diffusers' `train_unconditional.py` step, alternated in one process.

For each (UNet preset, resolution, batch, precision) a worker subprocess (Accelerate allows one mixed-precision
setting per process) builds every variant from the same initial weights and feeds them the same in-memory batches,
then times rounds of a few steps, variant after variant, rotating the order each round (A B C, B C A, ...). Each
round gives every variant's time under the same machine load, so the reported figures are per-round ratios against
the reference (median over rounds), never absolute times compared across runs.

Variants (`--variants`):
- `reference`: the step of diffusers' examples/unconditional_image_generation/train_unconditional.py on the same
  UNet config, batch, precision and AdamW hyper-parameters: noise drawn and added in the model dtype,
  `accelerator.accumulate`, `F.mse_loss`, `accelerator.backward`, `clip_grad_norm_`, `optimizer.step()` (AdamW's
  default implementation), `lr_scheduler.step()`, `zero_grad()`, `EMAModel.step` (foreach off) and
  `loss.detach().item()` logged with `progress_bar.set_postfix` every step.
- `ours`: the step of `anime_ddpm.training.train` with its defaults (`state.build_optimizer`, `speed_up_model`,
  `DiffusionLoss` with fp32 noising, EMA with foreach, sums kept on the device and logged every `logging_steps`),
  on the reference's objective (epsilon, linear betas) so that both steps do the same maths.
- `reference:heads=8`: the reference with the UNet as train_unconditional.py builds it, diffusers' default
  `attention_head_dim=8` (8 heads of 8 channels at 64 channels), same parameter count as our one-head preset.
- ablations of `ours`, options joined with "+": `ours:adamw=for-loop|foreach|fused|default`, `ours:ema_foreach=0`,
  `ours:gn_fp32=1` (GroupNorm in fp32 under CPU bf16 autocast), `ours:nonfinite_check=0`, `ours:compile=1`,
  `ours:heads=8`; `ours:adamw=for-loop` is the training step as it was before this benchmark.

Also reported per configuration: model FLOPs of one forward+backward (torch.utils.flop_counter) divided by the step
time, against a large matmul in the same precision timed in the same rounds; peak memory per variant (a fresh
subprocess each: growth of ru_maxrss over the process's size before the model is built, or
torch.cuda.max_memory_allocated on a GPU); and the loss curve: mean training loss over all steps of each variant
(same initial weights and batches, independent noise draws) and the final loss on one fixed evaluation batch (same
images, timesteps and noise for every variant), both in fp32.

    .venv/bin/python bench/bench_train.py                       # small 32 px b32 and small 64 px b16, fp32 + bf16
    .venv/bin/python bench/bench_train.py --configs small:32:32 --precisions bf16 --variants reference,ours,ours:gn_fp32=0
    .venv/bin/python bench/bench_train.py --quick               # a smoke run (seconds; figures meaningless)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any


DEFAULT_CONFIGS = ("small:32:32", "small:64:16")
DEFAULT_VARIANTS = ("reference", "ours", "reference:heads=8")
ABLATIONS = (
    "ours:adamw=for-loop",
    "ours:adamw=foreach",
    "ours:ema_foreach=0",
    "ours:nonfinite_check=0",
    "ours:gn_fp32=1",
)
LR_WARMUP_STEPS = 5  # short, so that a 30-step loss curve moves


# ======================================================================================================= helpers
def machine_description() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
            f.seek(0)
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        flags = []
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return dict(
        cpu=cpu,
        cores=os.cpu_count(),
        torch_threads=torch.get_num_threads(),
        isa=isa,
        torch=torch.__version__,
        gpu=gpu,
        load_average=os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    )


def parse_variant(spec: str) -> tuple[str, dict[str, str]]:
    base, _, rest = spec.partition(":")
    options = dict(item.split("=", 1) for item in rest.split("+") if item) if rest else {}
    return base, options


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic_batches(count: int, batch: int, resolution: int, seed: int = 0):
    """Smooth random colour fields in [-1, 1]: image-like statistics, deterministic, no data loading in the timing."""
    import torch
    import torch.nn.functional as F

    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        coarse = torch.rand(batch, 3, 4, 4, generator=generator) * 2 - 1
        images = F.interpolate(coarse, size=(resolution, resolution), mode="bicubic", align_corners=False)
        images = images + 0.05 * torch.randn(images.shape, generator=generator)
        batches.append(images.clamp(-1, 1).contiguous())
    return batches


# ======================================================================================================= variants
@dataclass
class Setup:
    accelerator: Any
    preset: str
    resolution: int
    batch: int
    total_steps: int
    initial_state: dict
    seed: int = 0


class ReferenceStep:
    """The training step of diffusers' train_unconditional.py (epsilon prediction, EMA on, one process)."""

    def __init__(self, setup: Setup, options: dict[str, str]):
        import torch
        from diffusers import DDPMScheduler, UNet2DModel
        from diffusers.optimization import get_scheduler
        from diffusers.training_utils import EMAModel
        from tqdm.auto import tqdm

        from anime_ddpm.config import TrainingConfig

        defaults = TrainingConfig()
        accelerator = self.accelerator = setup.accelerator
        model = initial_unet(setup, options)
        self.noise_scheduler = DDPMScheduler(num_train_timesteps=1000)
        optimizer = torch.optim.AdamW(
            model.parameters(),
            lr=defaults.learning_rate,
            betas=(defaults.adam_beta1, defaults.adam_beta2),
            weight_decay=defaults.adam_weight_decay,
            eps=defaults.adam_epsilon,
        )
        lr_scheduler = get_scheduler(
            defaults.lr_scheduler,
            optimizer=optimizer,
            num_warmup_steps=LR_WARMUP_STEPS,
            num_training_steps=setup.total_steps,
        )
        self.model, self.optimizer, self.lr_scheduler = accelerator.prepare(model, optimizer, lr_scheduler)
        self.ema = EMAModel(
            self.model.parameters(),
            decay=defaults.ema_max_decay,
            use_ema_warmup=True,
            inv_gamma=defaults.ema_inv_gamma,
            power=defaults.ema_power,
            model_cls=UNet2DModel,
            model_config=model.config,
        )
        self.ema.to(accelerator.device)
        self.weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, None)
        self.weight_dtype = self.weight_dtype or torch.float32
        self.progress_bar = tqdm(total=setup.total_steps, file=io.StringIO())
        self.global_step = 0
        self.model.train()

    def step(self, batch):
        import torch
        import torch.nn.functional as F

        accelerator = self.accelerator
        clean_images = batch.to(accelerator.device).to(self.weight_dtype)
        noise = torch.randn(clean_images.shape, dtype=self.weight_dtype, device=clean_images.device)
        bsz = clean_images.shape[0]
        timesteps = torch.randint(
            0, self.noise_scheduler.config.num_train_timesteps, (bsz,), device=clean_images.device
        ).long()
        noisy_images = self.noise_scheduler.add_noise(clean_images, noise, timesteps)
        with accelerator.accumulate(self.model):
            model_output = self.model(noisy_images, timesteps).sample
            loss = F.mse_loss(model_output.float(), noise.float())
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(self.model.parameters(), 1.0)
            self.optimizer.step()
            self.lr_scheduler.step()
            self.optimizer.zero_grad()
        if accelerator.sync_gradients:
            self.ema.step(self.model.parameters())
            self.progress_bar.update(1)
            self.global_step += 1
        logs = {"loss": loss.detach().item(), "lr": self.lr_scheduler.get_last_lr()[0], "step": self.global_step}
        logs["ema_decay"] = self.ema.cur_decay_value
        self.progress_bar.set_postfix(**logs)
        accelerator.log(logs, step=self.global_step)
        return loss.detach()

    @property
    def unet(self):
        return self.accelerator.unwrap_model(self.model)


def initial_unet(setup: Setup, options: dict[str, str]):
    """The UNet every variant starts from (the same initial weights), with `heads=N` attention heads if asked."""
    from diffusers import UNet2DModel

    from anime_ddpm.models import unet_config

    kwargs = unet_config(setup.preset, setup.resolution)
    if "heads" in options:
        kwargs["attention_head_dim"] = int(options["heads"])
    model = UNet2DModel(**kwargs)
    model.load_state_dict(setup.initial_state)
    return model


class OurStep:
    """One optimiser step of `anime_ddpm.training.train` (gradient accumulation 1), with its default settings except
    the objective, which is the reference's.

    Built with the trainer's own builders (anime_ddpm.state: objective, optimiser, LR schedule, speed-ups, EMA) and
    run with its `TrainStep` (forward, backward, clip, non-finite check, optimiser step), then LR, EMA and the
    logging window every `logging_steps`, as the loop does; only the data comes from memory.
    """

    def __init__(self, setup: Setup, options: dict[str, str]):
        from tqdm.auto import tqdm

        from anime_ddpm import state
        from anime_ddpm.budget import TrainingClock
        from anime_ddpm.config import TrainingConfig
        from anime_ddpm.step import TrainStep, new_window

        # The reference's objective (epsilon on linear betas, as train_unconditional.py): the step is compared at the
        # same maths, and the loss check below needs the same loss. The default x_0 target on cosine betas costs the
        # same per step (bench_recipe.py compares the recipes).
        overrides: dict[str, Any] = {"prediction_type": "epsilon", "ddpm_beta_schedule": "linear",
                                     "weighting_scheme": "none", "input_perturbation": 0.0,
                                     "lr_warmup_steps": LR_WARMUP_STEPS}  # fmt: skip
        if "compile" in options:
            overrides["compile"] = options["compile"] == "1"
        if options.get("nonfinite_check") == "0":
            overrides["max_nonfinite_steps"] = 0
        known = set(TrainingConfig.__dataclass_fields__)
        self.config = config = TrainingConfig(**{k: v for k, v in overrides.items() if k in known})
        # Levers this version of the trainer has no setting for: the bench applies them itself (see below).
        self.ignored = sorted(set(overrides) - known)
        accelerator = self.accelerator = setup.accelerator

        model = initial_unet(setup, options)
        _, self.loss_fn = state.build_objective(config)
        optimizer = state.build_optimizer(config, model, accelerator, implementation=options.get("adamw"))
        self.lr_scheduler = state.build_lr_scheduler(config, optimizer, setup.total_steps, TrainingClock())
        self.model, self.optimizer = accelerator.prepare(model, optimizer)
        groupnorm_fp32 = options.get("gn_fp32") == "1"
        self.model = state.speed_up_model(config, self.model, accelerator, groupnorm_fp32=groupnorm_fp32)
        self.ema = state.build_ema(config, self.unet, foreach=options.get("ema_foreach", "1") == "1")
        if self.ema is not None:
            self.ema.to(accelerator.device)
        generator = state.noise_generator(setup.seed, 0, accelerator.device)
        self.train_step = TrainStep(accelerator, self.model, self.optimizer, self.loss_fn, generator,
                                    config.max_grad_norm, check_finite=bool(config.max_nonfinite_steps))  # fmt: skip
        self.window = new_window(accelerator.device)
        self.progress = tqdm(total=setup.total_steps, file=io.StringIO())
        self.global_step = 0
        self.model.train()

    def step(self, batch):
        import torch

        from anime_ddpm.run_log import window_logs

        accelerator, config, window = self.accelerator, self.config, self.window
        self.train_step(batch.to(accelerator.device, non_blocking=True))  # train()'s own step
        loss = self.train_step.pending["loss"].clone()
        self.lr_scheduler.step()
        if self.ema is not None:
            self.ema.step(self.unet.parameters())
        self.global_step += 1
        self.progress.update(1)
        self.train_step.drain_into(window)
        if self.global_step % config.logging_steps == 0:
            totals = accelerator.reduce(torch.stack(list(window.values())), reduction="sum").tolist()
            logs = window_logs(dict(zip(window, totals)), 1.0, self.lr_scheduler.get_last_lr()[0], 1)
            if self.ema is not None:
                logs["ema_decay"] = self.ema.cur_decay_value
            accelerator.log(logs, step=self.global_step)
            self.progress.set_postfix(loss=f"{logs['loss']:.4f}", lr=f"{logs['lr']:.2e}", refresh=False)
            for value in window.values():
                value.zero_()
        return loss

    @property
    def unet(self):
        return self.accelerator.unwrap_model(self.model)


def build_variant(spec: str, setup: Setup):
    base, options = parse_variant(spec)
    if base == "reference":
        return ReferenceStep(setup, options)
    if base == "ours":
        return OurStep(setup, options)
    raise ValueError(f"Unknown variant {spec!r}: use reference or ours[:option=value+...].")


# ======================================================================================================= measures
def flops_per_step(unet, batch, accelerator) -> int:
    """Model FLOPs of one forward + backward (convolutions, matmuls, attention) at this batch."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = batch.to(accelerator.device)
    t = torch.randint(0, 1000, (x.shape[0],), device=x.device)
    counter = FlopCounterMode(display=False)
    with counter:
        with accelerator.autocast():
            out = unet(x, t).sample
        out.float().square().mean().backward()
    unet.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def matmul_flops_per_second(dtype, device, size: int = 2048, repeats: int = 3) -> float:
    """Throughput of a square matmul in `dtype` (the machine's practical peak for this precision), best of a few."""
    import torch

    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    a @ b
    best = math.inf
    for _ in range(repeats):
        synchronize(a.device)
        start = time.perf_counter()
        a @ b
        synchronize(a.device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def eval_loss(unet, batch, seed: int = 1234) -> float:
    """Epsilon MSE in fp32 on one fixed batch, fixed timesteps and noise: the same inputs for every variant."""
    import torch

    from anime_ddpm.losses import DiffusionSchedule, make_noise_scheduler

    device = next(unet.parameters()).device
    schedule = DiffusionSchedule.from_scheduler(make_noise_scheduler())
    generator = torch.Generator().manual_seed(seed)
    x0 = batch.float()
    t = torch.randint(0, 1000, (x0.shape[0],), generator=generator)
    noise = torch.randn(x0.shape, generator=generator)
    x_t = schedule.add_noise(x0, noise, t)
    was_training = unet.training
    unet.eval()
    with torch.no_grad():
        pred = unet(x_t.to(device), t.to(device)).sample.float().cpu()
    unet.train(was_training)
    return float(torch.nn.functional.mse_loss(pred, noise))


# ======================================================================================================= worker
def make_setup(args, total_steps: int):
    import torch
    from accelerate import Accelerator

    from anime_ddpm.models import build_unet

    preset, resolution, batch = parse_config(args.config)
    accelerator = Accelerator(mixed_precision=args.precision)
    torch.manual_seed(args.seed)
    initial_state = {k: v.clone() for k, v in build_unet(preset, resolution).state_dict().items()}
    return Setup(accelerator, preset, resolution, batch, total_steps, initial_state, args.seed)


def worker_timing(args) -> dict[str, Any]:
    import torch

    preset, resolution, batch = parse_config(args.config)
    total_steps = args.warmup + args.rounds * args.steps
    setup = make_setup(args, total_steps)
    accelerator = setup.accelerator
    data = synthetic_batches(8, batch, resolution, seed=args.seed)
    eval_batch = synthetic_batches(1, 64, resolution, seed=args.seed + 1)[0]
    matmul_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(accelerator.mixed_precision, torch.float32)
    if accelerator.device.type == "cpu" and matmul_dtype == torch.float16:
        matmul_dtype = torch.float32  # fp16 autocast is off on CPU: Accelerate runs fp32

    variants = {spec: build_variant(spec, setup) for spec in args.variants}
    losses_by_variant: dict[str, list] = {spec: [] for spec in variants}
    cursor = dict.fromkeys(variants, 0)

    def run(spec: str, steps: int) -> float:
        variant = variants[spec]
        synchronize(accelerator.device)
        start = time.perf_counter()
        for _ in range(steps):
            losses_by_variant[spec].append(variant.step(data[cursor[spec] % len(data)]))
            cursor[spec] += 1
        synchronize(accelerator.device)
        return time.perf_counter() - start

    warmup_seconds = {spec: run(spec, args.warmup) for spec in variants}  # compile happens here
    times: dict[str, list[float]] = {spec: [] for spec in variants}
    matmul: list[float] = []
    order = list(variants)
    for r in range(args.rounds):
        rotated = order[r % len(order) :] + order[: r % len(order)]
        for spec in rotated:
            times[spec].append(run(spec, args.steps))
        matmul.append(matmul_flops_per_second(matmul_dtype, accelerator.device))

    flops = {}
    for spec, variant in variants.items():
        unet = variant.unet
        key = json.dumps(dict(unet.config), sort_keys=True, default=str)
        if key not in flops:
            flops[key] = flops_per_step(unet, data[0], accelerator)
        flops[spec] = flops[key]
    result = {
        "config": args.config,
        "precision": args.precision,
        "batch": batch,
        "steps_per_round": args.steps,
        "rounds": args.rounds,
        "matmul_flops": statistics.median(matmul),
        "matmul_dtype": str(matmul_dtype).replace("torch.", ""),
        "device": str(accelerator.device),
        "variants": {},
    }
    for spec, variant in variants.items():
        step_losses = [float(x) for x in losses_by_variant[spec]]
        median_step = statistics.median(times[spec]) / args.steps
        result["variants"][spec] = {
            "round_seconds": times[spec],
            "step_seconds": median_step,
            "images_per_second": batch / median_step,
            "warmup_seconds": warmup_seconds[spec],
            "flops_per_step": flops[spec],
            "num_parameters": sum(p.numel() for p in variant.unet.parameters()),
            "losses": step_losses,
            "eval_loss": eval_loss(variant.unet, eval_batch),
            "ignored_options": getattr(variant, "ignored", []),
        }
    return result


def worker_memory(args) -> dict[str, Any]:
    """Peak memory of a few steps of one variant, in a fresh process."""
    import torch

    preset, resolution, batch = parse_config(args.config)
    device_is_cuda = torch.cuda.is_available()
    baseline_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    setup = make_setup(args, total_steps=args.memory_steps)
    data = synthetic_batches(2, batch, resolution, seed=args.seed)
    if device_is_cuda:
        torch.cuda.reset_peak_memory_stats()
    variant = build_variant(args.variants[0], setup)
    for i in range(args.memory_steps):
        variant.step(data[i % 2])
    synchronize(setup.accelerator.device)
    if device_is_cuda:
        peak = torch.cuda.max_memory_allocated()
        kind = "cuda max_memory_allocated"
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline_kib) * 1024
        kind = "ru_maxrss growth"
    return {"variant": args.variants[0], "peak_bytes": peak, "kind": kind}


def parse_config(spec: str) -> tuple[str, int, int]:
    preset, resolution, batch = spec.split(":")
    return preset, int(resolution), int(batch)


# ======================================================================================================= driver
def run_worker(args, mode: str, config: str, precision: str, variants: list[str]) -> dict[str, Any]:
    command = [
        sys.executable,
        os.path.abspath(__file__),
        f"--worker={mode}",
        f"--configs={config}",
        f"--precisions={precision}",
        f"--variants={','.join(variants)}",
        f"--rounds={args.rounds}",
        f"--steps={args.steps}",
        f"--warmup={args.warmup}",
        f"--seed={args.seed}",
        f"--memory-steps={args.memory_steps}",
    ]
    if args.threads:
        command.append(f"--threads={args.threads}")
    env = dict(os.environ, PYTHONWARNINGS="ignore", TQDM_DISABLE="1")
    env.setdefault("HF_HUB_OFFLINE", "1")
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {mode} {config} {precision} {variants} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def summarise(result: dict[str, Any], memory: dict[str, float]) -> list[dict[str, Any]]:
    variants = result["variants"]
    reference = variants.get("reference")
    ours = variants.get("ours")
    rows = []
    for spec, v in variants.items():
        row = {
            "config": result["config"],
            "precision": result["precision"],
            "variant": spec,
            "images_per_second": v["images_per_second"],
            "step_ms": v["step_seconds"] * 1e3,
            "warmup_s": v["warmup_seconds"],
            "params_m": v["num_parameters"] / 1e6,
            "gflops_per_step": v["flops_per_step"] / 1e9,
            "achieved_gflops": v["flops_per_step"] / v["step_seconds"] / 1e9,
            "matmul_gflops": result["matmul_flops"] / 1e9,
            "utilisation": v["flops_per_step"] / v["step_seconds"] / result["matmul_flops"],
            "mean_loss": statistics.fmean(v["losses"]),
            "loss_se": statistics.stdev(v["losses"]) / math.sqrt(len(v["losses"])) if len(v["losses"]) > 1 else 0,
            "eval_loss": v["eval_loss"],
            "loss_steps": len(v["losses"]),
            "peak_mib": memory.get(spec, float("nan")) / 2**20,
            "ignored": v["ignored_options"],
        }
        for name, base in (("reference", reference), ("ours", ours)):
            if base is None:
                row[f"x_{name}"] = float("nan")
                continue
            ratios = [b / t for b, t in zip(base["round_seconds"], v["round_seconds"])]  # per-round, same load
            row[f"x_{name}"] = statistics.median(ratios)
            row[f"x_{name}_range"] = (min(ratios), max(ratios))
        rows.append(row)
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| config (preset:px:batch) | precision | variant | img/s | x reference | x ours | warm-up s | GFLOP/step "
        "| GFLOP/s | matmul GFLOP/s | utilisation | peak MiB | mean loss ± SE (steps) | eval loss |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lo, hi = r.get("x_reference_range", (math.nan, math.nan))
        lines.append(
            f"| {r['config']} | {r['precision']} | {r['variant']} | {r['images_per_second']:.1f} "
            f"| {r['x_reference']:.2f} ({lo:.2f}-{hi:.2f}) | {r['x_ours']:.2f} | {r['warmup_s']:.1f} "
            f"| {r['gflops_per_step']:.1f} | {r['achieved_gflops']:.0f} | {r['matmul_gflops']:.0f} "
            f"| {r['utilisation']:.0%} | {r['peak_mib']:.0f} "
            f"| {r['mean_loss']:.4f} ± {r['loss_se']:.4f} ({r['loss_steps']}) | {r['eval_loss']:.4f} |"
        )
    return "\n".join(lines)


def loss_verdicts(rows: list[dict[str, Any]]) -> list[str]:
    """Same loss curve within noise: |mean_ours - mean_ref| < 3 combined standard errors."""
    notes = []
    by_key: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        by_key.setdefault((r["config"], r["precision"]), {})[r["variant"]] = r
    for (config, precision), group in by_key.items():
        ref = group.get("reference")
        if ref is None:
            continue
        for name, r in group.items():
            if name == "reference":
                continue
            diff = r["mean_loss"] - ref["mean_loss"]
            se = math.hypot(r["loss_se"], ref["loss_se"])
            verdict = "same within noise" if abs(diff) <= 3 * se else "DIFFERENT"
            notes.append(
                f"- {config} {precision} {name}: mean loss {r['mean_loss']:.4f} vs reference {ref['mean_loss']:.4f} "
                f"(diff {diff:+.4f}, 3 SE = {3 * se:.4f}: {verdict}); eval loss {r['eval_loss']:.4f} vs "
                f"{ref['eval_loss']:.4f}"
            )
    return notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--configs", default=",".join(DEFAULT_CONFIGS), help="preset:resolution:batch, comma-separated"
    )
    parser.add_argument("--precisions", default="no,bf16", help="comma-separated: no (fp32), bf16, fp16 (GPU)")
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help="comma-separated variant specs")
    parser.add_argument("--ablations", action="store_true", help="also time each lever of ours on its own")
    parser.add_argument("--compile", action="store_true", help="also time ours:compile=1 (compile time reported)")
    parser.add_argument("--rounds", type=int, default=6, help="alternated rounds per configuration")
    parser.add_argument("--steps", type=int, default=5, help="steps per variant per round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first (compile, allocs)")
    parser.add_argument("--memory-steps", type=int, default=3, help="steps per peak-memory subprocess (0: skip)")
    parser.add_argument("--memory-variants", default="reference,ours", help="variants to measure peak memory of")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch threads in the workers (default: torch's choice)")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny preset, 2 rounds of 1 step")
    parser.add_argument("--json", help="also write the raw results to this file")
    parser.add_argument("--worker", choices=("timing", "memory"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.configs, args.rounds, args.steps, args.warmup, args.memory_steps = "tiny:32:8", 2, 1, 1, 1
    args.precisions = [p for p in args.precisions.split(",") if p]
    variants = [v for v in args.variants.split(",") if v]
    if args.ablations:
        variants += [v for v in ABLATIONS if v not in variants]
    if args.compile:
        variants.append("ours:compile=1")
    args.variants = variants

    if args.worker:
        args.config, args.precision = args.configs, args.precisions[0]
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        with contextlib.redirect_stdout(sys.stderr):
            result = worker_timing(args) if args.worker == "timing" else worker_memory(args)
        print(json.dumps(result))
        return 0

    machine = machine_description()
    if args.threads:
        machine["torch_threads"] = args.threads
    rows, raw = [], []
    for config in args.configs.split(","):
        for precision in args.precisions:
            start = time.perf_counter()
            result = run_worker(args, "timing", config, precision, variants)
            memory = {}
            if args.memory_steps:
                for spec in variants:
                    if spec not in args.memory_variants.split(",") or "compile" in spec:
                        continue  # compile: Inductor's compile workers would dominate the process's peak
                    memory[spec] = run_worker(args, "memory", config, precision, [spec])["peak_bytes"]
            raw.append({"timing": result, "memory": memory})
            rows += summarise(result, memory)
            print(f"[{config} {precision}: {time.perf_counter() - start:.0f} s]", file=sys.stderr, flush=True)
    print(
        f"Machine: {machine['cpu']}, {machine['cores']} cores ({machine['torch_threads']} torch threads), "
        f"{' '.join(machine['isa'])}, torch {machine['torch']}"
        + (f", GPU {machine['gpu']}" if machine["gpu"] else ", no GPU")
        + f"; OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}"
        + f"; load average at start {machine['load_average']:.1f}"
    )
    print(
        f"Training step throughput: {args.rounds} alternated rounds of {args.steps} steps per variant after "
        f"{args.warmup} warm-up steps; x = median over rounds of the per-round time ratio (range in brackets); "
        "precision 'no' = fp32; utilisation = model FLOPs per step / step time / matmul FLOP/s in the same precision "
        "(median of the rounds); peak MiB = growth of max RSS over a fresh process running "
        f"{args.memory_steps} steps of that variant alone.\n"
    )
    print(markdown_table(rows))
    print()
    print("\n".join(loss_verdicts(rows)))
    ignored = {o for r in rows for o in r["ignored"]}
    if ignored:
        print(f"\nNote: training.py has no setting {sorted(ignored)}: the bench applied those levers itself.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "results": raw, "rows": rows}, f, indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())

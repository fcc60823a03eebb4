"""One prepared run on one accelerator: training speed, memory and utilisation, sampling, the data loader, correctness.

    python -m bench.device_report --device cuda              # the GPU run: under 8 minutes, one table, one JSON
    python -m bench.device_report --device cpu --smoke       # the same code paths in seconds (tested in CI)

Sections, cheapest and most decisive first, each skipped (and said so) when the time budget would not hold it:
1. correctness: bf16 noising stays fp32 (the UNet's input dtype under autocast); fp16 with its GradScaler trains the
   tiny preset with finite losses and counts the steps the scaler skipped; `--compile` gradients against float64
   within the CPU test's tolerance (TF32 off for this check, since cuDNN's TF32 convolutions are ~1e-3 off).
2. the accelerator's matmul throughput per precision, measured here (the denominator of utilisation).
3. training: images/s, peak memory and model FLOP utilisation of the trainer's own step (`bench_train.OurStep`:
   the builders of `anime_ddpm.state` and `step.TrainStep`) for the presets at their resolutions, fp32/bf16/fp16,
   eager and `--compile`.
4. sampling: seconds for 64 images with DDPM 1000 and DPM-Solver++ 25.
5. data: images/s of the training loader (decode, crop, resize, flip, batch) for anime-shaped (64 px JPEG) and
   CelebA-shaped (178x218 JPEG, the 128 px face crop) parquet with 0/4/8/all-core workers, against the fastest
   training consumption measured above at 64 px.

Accelerate keeps one mixed-precision setting per process; this script resets its state between precisions, so the
whole report is one process (one set of imports, one CUDA context).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))

import torch  # noqa: E402

from bench.bench_train import OurStep, Setup, flops_per_step, matmul_flops_per_second, synthetic_batches  # noqa: E402
from bench.run_all import machine_line  # noqa: E402


PRECISIONS = ("no", "bf16", "fp16")  # Accelerate's names; "no" is fp32
PRESETS = (("tiny", 32, 128), ("small", 32, 128), ("ddpm-cifar10", 64, 64), ("ddim-celeba64", 64, 64))
SMOKE_PRESETS = (("tiny", 16, 4),)
GRADIENT_TOLERANCE = 1e-5  # tests/test_compile.py
DTYPES = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Report:
    """What the run found, in the order it ran; `skipped` names what the budget left out."""

    device: str
    machine: str
    budget_seconds: float
    started: float = field(default_factory=time.perf_counter)
    checks: list[dict] = field(default_factory=list)
    matmul: dict[str, float] = field(default_factory=dict)
    training: list[dict] = field(default_factory=list)
    sampling: list[dict] = field(default_factory=list)
    data: list[dict] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def left(self) -> float:
        return self.budget_seconds - (time.perf_counter() - self.started)

    def fits(self, what: str, seconds: float) -> bool:
        if self.left() >= seconds:
            return True
        self.skipped.append(f"{what} (needs ~{seconds:.0f} s, {max(0.0, self.left()):.0f} s left)")
        return False

    def to_json(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k != "started"}
        data["seconds"] = round(time.perf_counter() - self.started, 1)
        return data


# ----------------------------------------------------------------------------------------------- helpers
def accelerator_for(precision: str, device: str):
    """A fresh Accelerator with this precision (Accelerate's process-wide state reset first)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    return Accelerator(mixed_precision=precision, cpu=device == "cpu")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    torch._dynamo.reset()


# ----------------------------------------------------------------------------------------------- 1. correctness
def check_bf16_noising(device: str) -> dict:
    """The UNet sees fp32 inputs under bf16 autocast: noising (x_t = a x0 + s eps) is never rounded to bf16."""
    from anime_ddpm.config import TrainingConfig
    from anime_ddpm.models import build_unet
    from anime_ddpm.state import build_objective

    accelerator = accelerator_for("bf16", device)
    unet = build_unet("tiny", 16).to(accelerator.device)
    seen: list[torch.dtype] = []
    unet.register_forward_pre_hook(lambda module, args: seen.append(args[0].dtype))
    _, loss_fn = build_objective(TrainingConfig(model="tiny", resolution=16))

    def denoise(x_t, t, class_labels=None):
        with accelerator.autocast():
            return unet(x_t, t).sample

    x0 = torch.rand(4, 3, 16, 16, device=accelerator.device) * 2 - 1
    out = loss_fn(denoise, x0, generator=torch.Generator(accelerator.device).manual_seed(0))
    ok = seen == [torch.float32] and out.loss.dtype == torch.float32
    return {"check": "bf16 autocast: noising and loss in fp32", "ok": ok,
            "detail": f"UNet input {seen[0]}, loss {out.loss.dtype}"}  # fmt: skip


def check_fp16_scaler(device: str, steps: int) -> dict:
    """fp16 with Accelerate's GradScaler: finite losses, the skipped (overflowing) steps counted, not trained on."""
    setup = make_setup("fp16", device, "tiny", 32, 32, steps)
    variant = OurStep(setup, {})
    skipped, losses = 0, []
    for batch in synthetic_batches(steps, 32, 32):
        losses.append(variant.step(batch.to(setup.accelerator.device)))
        skipped += bool(setup.accelerator.optimizer_step_was_skipped)
    finite = bool(torch.isfinite(torch.stack(losses)).all()) and all(
        bool(torch.isfinite(p).all()) for p in variant.unet.parameters()
    )
    scaler = setup.accelerator.scaler
    if scaler is None:  # a CPU: Accelerate runs "fp16" as fp32 without a scaler; the code path ran all the same
        return {"check": "fp16 GradScaler", "ok": None, "detail": f"no GradScaler on a CPU ({steps} fp32 steps ran)"}
    return {"check": "fp16 GradScaler: finite, skipped steps counted", "ok": finite and skipped < steps,
            "detail": f"{steps} steps, {skipped} skipped by the scaler, final scale {scaler.get_scale():g}"}  # fmt: skip


def check_compiled_gradients(device: str) -> dict:
    """`--compile` trains the same model as eager: gradients against float64 (as tests/test_compile.py, on device)."""
    from anime_ddpm.config import TrainingConfig
    from anime_ddpm.models import build_unet
    from anime_ddpm.state import speed_up_model
    from bench.bench_compile_gradients import gradients

    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        accelerator = accelerator_for("no", device)
        dev = accelerator.device
        torch.manual_seed(0)
        unet = build_unet("tiny", 16).to(dev)
        generator = torch.Generator().manual_seed(1)
        x_t = torch.randn(4, 3, 16, 16, generator=generator, dtype=torch.float64).to(dev)
        target = torch.randn(x_t.shape, generator=generator, dtype=torch.float64).to(dev)
        t = torch.randint(0, 1000, (4,), generator=generator).to(dev)
        exact = gradients(copy.deepcopy(unet).double(), x_t, t, target)
        eager = gradients(copy.deepcopy(unet), x_t, t, target)
        compiled = speed_up_model(TrainingConfig(compile=True), copy.deepcopy(unet), accelerator)
        for _ in range(2):  # the first call compiles, the second runs the cached graphs
            got = gradients(compiled, x_t, t, target)
        errors = [float((g - exact).norm() / exact.norm()) for g in (eager, got)]
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    return {"check": "--compile gradients vs float64", "ok": errors[1] < GRADIENT_TOLERANCE,
            "detail": f"relative error eager {errors[0]:.1e}, compiled {errors[1]:.1e} (tolerance {GRADIENT_TOLERANCE:g})"}  # fmt: skip


# ----------------------------------------------------------------------------------------------- 2-3. training
def make_setup(precision: str, device: str, preset: str, resolution: int, batch: int, total_steps: int) -> Setup:
    from anime_ddpm.models import build_unet

    accelerator = accelerator_for(precision, device)
    torch.manual_seed(0)
    state = {k: v.clone() for k, v in build_unet(preset, resolution).state_dict().items()}
    return Setup(accelerator, preset, resolution, batch, total_steps, state)


def measure_training(precision: str, device: str, preset: str, resolution: int, batch: int, compiled: bool,
                     warmup: int, steps: int, matmul: float) -> dict:  # fmt: skip
    """Images/s of the trainer's step (median of 3 timed blocks), peak memory, and FLOP utilisation."""
    setup = make_setup(precision, device, preset, resolution, batch, warmup + 3 * steps)
    dev = setup.accelerator.device
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    variant = OurStep(setup, {"compile": "1"} if compiled else {})
    data = [b.to(dev) for b in synthetic_batches(4, batch, resolution)]
    cursor = iter(range(10**9))

    def run(n: int) -> None:
        for _ in range(n):
            variant.step(data[next(cursor) % len(data)])

    warmup_seconds = timed(lambda: run(warmup), dev)  # compilation happens here
    seconds = statistics.median(timed(lambda: run(steps), dev) for _ in range(3)) / steps
    flops = flops_per_step(variant.unet, data[0], setup.accelerator)
    peak = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else None
    row = {"preset": preset, "resolution": resolution, "batch": batch, "precision": precision_name(precision),
           "compile": compiled, "images_per_second": batch / seconds, "step_ms": seconds * 1e3,
           "warmup_seconds": warmup_seconds, "peak_memory_gib": peak / 2**30 if peak is not None else None,
           "tflops": flops / seconds / 1e12, "utilisation": flops / seconds / matmul if matmul else None}  # fmt: skip
    return row  # the model goes with this frame; the caller frees the memory


def precision_name(precision: str) -> str:
    return "fp32" if precision == "no" else precision


# ----------------------------------------------------------------------------------------------- 4. sampling
def measure_sampling(device: str, preset: str, resolution: int, images: int, ddpm_steps: int, fast_steps: int) -> dict:
    from diffusers import DDPMScheduler, DPMSolverMultistepScheduler

    from anime_ddpm import AnimeDDPMPipeline
    from anime_ddpm.models import build_unet

    dev = torch.device(device)
    torch.manual_seed(0)
    unet = build_unet(preset, resolution).to(dev).eval()
    pipe = AnimeDDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=1000))
    pipe.set_progress_bar_config(disable=True)
    row = {"preset": preset, "resolution": resolution, "images": images}
    for name, scheduler, steps in (
        ("ddpm", DDPMScheduler(num_train_timesteps=1000), ddpm_steps),
        ("dpm++", DPMSolverMultistepScheduler(num_train_timesteps=1000), fast_steps),
    ):
        pipe.scheduler = scheduler
        generator = torch.Generator(dev).manual_seed(0)

        def call(g: torch.Generator = generator, n: int = steps) -> Any:
            return pipe(batch_size=images, generator=g, num_inference_steps=n, output_type="pt")

        row[f"{name}_{steps}_seconds"] = timed(call, dev)
    return row


# ----------------------------------------------------------------------------------------------- 5. data
def write_parquets(root: Path, images: int) -> dict[str, tuple[str, tuple | None]]:
    """Anime-shaped (64 px) and CelebA-shaped (178x218) JPEG parquet, 100 rows per row group as datasets writes."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from anime_ddpm.data import CELEBA_FACE_BOX
    from tests.hub_datasets import face_like, jpeg

    rng = np.random.default_rng(0)
    shapes = {"anime 64 px JPEG": ((64, 64), None), "CelebA 178x218 JPEG, face crop": ((178, 218), CELEBA_FACE_BOX)}
    out = {}
    for i, (label, (size, box)) in enumerate(shapes.items()):
        rows = [{"bytes": jpeg(face_like(rng, *size)), "path": None} for _ in range(images)]
        path = root / f"shape{i}.parquet"
        pq.write_table(pa.table({"image": rows}), path, row_group_size=100)
        out[label] = (str(path), box)
    return out


def loader_rate(path: str, crop_box: tuple | None, workers: int, batch: int, images: int, cache: str) -> float:
    """Images/s through the training loader from a local parquet file (a fresh loader: worker start-up counted)."""
    import dataclasses

    from anime_ddpm import data

    config = data.DataConfig(dataset=path, resolution=64, random_flip=True, cache_dir=cache)
    source = dataclasses.replace(data.resolve_source(path, 1.0, config), crop_box=crop_box)
    stream, rows = data._source_stream(source, 0, config)
    loader = data.build_dataloader(data.TrainDataset(stream, [source], config, num_examples=rows), batch, workers)
    start, seen = time.perf_counter(), 0
    for batch_ in loader:
        seen += len(batch_["pixel_values"])
        if seen >= images:
            break
    return seen / (time.perf_counter() - start)


# ----------------------------------------------------------------------------------------------- the run
def run(args: argparse.Namespace) -> Report:
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device here; use --device cpu.")
    report = Report(device, machine_line(), args.budget_minutes * 60)
    smoke = args.smoke
    presets = SMOKE_PRESETS if smoke else PRESETS
    warmup, steps = (1, 1) if smoke else (5, 10)
    # On a CPU, Accelerate runs "fp16" as fp32 with no scaler: only the smoke run goes through it (the code path).
    precisions = [p for p in PRECISIONS if p != "fp16" or device == "cuda" or smoke]
    compile_cost = 150 if device == "cpu" else 60  # seconds per compiled configuration (first compilation)

    report.checks.append(check_bf16_noising(device))
    report.checks.append(check_fp16_scaler(device, 4 if smoke else 30))
    if args.compile and report.fits("--compile gradient check", compile_cost):
        report.checks.append(check_compiled_gradients(device))

    size = 1024 if device == "cpu" else 8192
    for precision in ("no", "bf16", "fp16"):
        report.matmul[precision_name(precision)] = matmul_flops_per_second(
            DTYPES[precision], torch.device(device), size
        )
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        report.matmul["tf32"] = matmul_flops_per_second(torch.float32, torch.device(device), size)
        torch.backends.cuda.matmul.allow_tf32 = False
    # cuDNN runs fp32 convolutions in TF32 by default: fp32 utilisation is against the TF32 matmul.
    peak = {"no": report.matmul.get("tf32", report.matmul["fp32"]), "bf16": report.matmul["bf16"],
            "fp16": report.matmul["fp16"]}  # fmt: skip

    eager_cost = 20 if not smoke else 5
    plan = [(p, preset, False) for p in precisions for preset in presets]
    if args.compile:  # bf16 first: the precision the recipes use on a GPU; the smoke run compiles one (fp32)
        compiled_precisions = ["no"] if smoke else sorted(precisions, key=lambda p: p != "bf16")
        plan += [(p, preset, True) for p in compiled_precisions for preset in presets]
    for precision, (preset, resolution, batch), compiled in plan:
        label = f"train {preset} {resolution} px {precision_name(precision)}{' --compile' if compiled else ''}"
        if report.fits(label, compile_cost if compiled else eager_cost):
            report.training.append(measure_training(precision, device, preset, resolution, batch, compiled,
                                                    warmup, steps, peak[precision]))  # fmt: skip
            free_memory()
        if compiled and not smoke and report.left() < 3 * 60:
            report.skipped.append("the remaining --compile configurations (time kept for sampling and data)")
            break

    images, ddpm_steps = (2, 2) if smoke else (64, 1000)
    for preset, resolution, _ in presets:
        if report.fits(f"sampling {preset}", 5 if smoke else 40):
            report.sampling.append(
                measure_sampling(device, preset, resolution, images, ddpm_steps, 2 if smoke else 25)
            )
            free_memory()

    # What the loader must keep up with: the fastest training measured at 64 px (in a smoke run, at any size).
    rates = [r["images_per_second"] for r in report.training if r["resolution"] == 64 or smoke]
    consumption = max(rates, default=None)
    cores = os.cpu_count() or 1
    workers = sorted({0, 2} if smoke else {0, 4, 8, cores})
    with tempfile.TemporaryDirectory() as tmp:
        sources = write_parquets(Path(tmp), 64 if smoke else 4096)
        for label, (path, box) in sources.items():
            for n in workers:
                if report.fits(f"data {label}, {n} workers", 5 if smoke else 25):
                    rate = loader_rate(path, box, n, 64, 64 if smoke else 4096, str(Path(tmp) / "cache"))
                    report.data.append({"shape": label, "workers": n, "images_per_second": rate,
                                        "x_consumption": rate / consumption if consumption else None})  # fmt: skip
    return report


def markdown(report: Report) -> str:
    """One table: every measurement a row."""
    lines = [f"Machine: {report.machine}.", "", "| section | what | result |", "|---|---|---|"]
    for check in report.checks:
        verdict = {True: "ok", False: "**FAILED**", None: "n/a"}[check["ok"]]
        lines.append(f"| check | {check['check']} | {verdict}: {check['detail']} |")
    for name, flops in report.matmul.items():
        lines.append(f"| matmul | {name} | {flops / 1e12:.1f} TFLOP/s |")
    for r in report.training:
        memory = f", peak {r['peak_memory_gib']:.2f} GiB" if r["peak_memory_gib"] is not None else ""
        mfu = f", {r['utilisation']:.0%} of the matmul peak" if r["utilisation"] is not None else ""
        lines.append(f"| train | {r['preset']} {r['resolution']} px b{r['batch']} {r['precision']}"
                     f"{' compile' if r['compile'] else ''} | {r['images_per_second']:,.0f} img/s ({r['step_ms']:.1f} ms/step, "
                     f"{r['tflops']:.1f} TFLOP/s{mfu}{memory}; warm-up {r['warmup_seconds']:.0f} s) |")  # fmt: skip
    for r in report.sampling:
        times = ", ".join(f"{k.removesuffix('_seconds').replace('_', ' ')} steps {v:.1f} s"
                          for k, v in r.items() if k.endswith("_seconds"))  # fmt: skip
        lines.append(f"| sample | {r['images']} images, {r['preset']} {r['resolution']} px fp32 | {times} |")
    for r in report.data:
        ratio = f" ({r['x_consumption']:.2f}x the fastest training)" if r["x_consumption"] else ""
        lines.append(f"| data | {r['shape']} to 64 px, {r['workers']} workers | {r['images_per_second']:,.0f} img/s{ratio} |")  # fmt: skip
    for what in report.skipped:
        lines.append(f"| skipped | {what} | time budget |")
    lines.append(f"\n_{report.to_json()['seconds']:.0f} s in all._")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: the code paths in seconds, no figures")
    parser.add_argument("--budget-minutes", type=float, default=7.5, help="what does not fit is skipped and listed")
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="leave out --compile")
    parser.add_argument("--json", default="device_report.json", help="where the figures go")
    args = parser.parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")
    report = run(args)
    Path(args.json).write_text(json.dumps(report.to_json(), indent=1, default=str))
    print(markdown(report))
    failed = [c["check"] for c in report.checks if c["ok"] is False]
    if failed:
        print(f"\nFailed checks: {'; '.join(failed)}.")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Does the data pipeline keep up with training? Images/s decoded and augmented, against the train step's appetite.

Measures, in one run on this machine:
- images/s through `build_dataset` + `build_dataloader` (decode, RGB, resize, crop, flip, normalise, collate) at
  64 px, with 0 and 2 DataLoader workers, for synthetic anime-like JPEGs in a folder, CelebA-sized JPEGs in parquet
  and the embedded emoji set; the 2-worker folder pass also with a plain `torch.utils.data.DataLoader`, to show
  what `StatefulDataLoader` (resumable) costs;
- the images/s that training consumes: fp32 train steps of `build_unet("small", 32)` with AdamW at batch 32;
- the cost of one image, decode and preprocessing alone (one thread, no loader), for the two preset shapes: an
  anime-shaped 64 px JPEG and a CelebA-shaped 178x218 JPEG with its 128 px face crop, to 64 and 32 px, with
  `jpeg_draft` (reduced-scale decode) and without: the cores a GPU's rate needs follow from it.

    .venv/bin/python bench/bench_data.py [--images 2048] [--steps 3]

Prints a markdown table; the target is data >= 5x consumption.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import datasets.config
import numpy as np
import torch
from datasets import Dataset
from datasets import Image as ImageFeature

from anime_ddpm.data import DataConfig, build_dataloader, build_dataset
from anime_ddpm.models import build_unet
from tests.hub_datasets import face_like, jpeg


datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = 0  # the 5 s pause after a pass is not data loading time
RESOLUTION = 64
BATCH = 32


def make_sources(root: Path, count: int) -> dict[str, str]:
    rng = np.random.default_rng(0)
    folder = root / "anime-like"
    folder.mkdir()
    for i in range(count):
        face_like(rng, 96, 96).save(folder / f"{i:05d}.jpg", quality=90)
    celeba = [{"bytes": jpeg(face_like(rng, 178, 218)), "path": None} for _ in range(count)]  # JPEG as CelebA's
    table = Dataset.from_dict({"image": celeba}).cast_column("image", ImageFeature())
    table.to_parquet(str(root / "celeba-like.parquet"), batch_size=256)
    return {"folder, 96 px JPEG": str(folder), "parquet, 178x218 JPEG": str(root / "celeba-like.parquet")}


def images_per_second(loader, limit: int) -> tuple[float, int]:
    start = time.perf_counter()
    seen = 0
    for batch in loader:
        seen += len(batch["pixel_values"])
        if seen >= limit:
            break
    return seen / (time.perf_counter() - start), seen


def data_rate(dataset_name: str, workers: int, limit: int, cache_dir: str, plain: bool = False) -> tuple[float, int]:
    """One pass (workers started, images decoded and batched) through a fresh loader: images/s and images."""
    config = DataConfig(dataset=dataset_name, resolution=RESOLUTION, random_flip=True, cache_dir=cache_dir)
    dataset = build_dataset(config)
    if plain:
        loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, num_workers=min(workers, dataset.num_shards))
    else:
        loader = build_dataloader(dataset, BATCH, num_workers=workers)
    return images_per_second(loader, limit)


def train_rate(steps: int) -> tuple[float, float, int]:
    """Images/s consumed by fp32 train steps of the small 32 px UNet (AdamW, batch 32), seconds per step, threads.

    The fastest step counts, with one thread or torch's default, whichever is faster (on a busy machine two
    OpenMP threads can be 5x slower than one): the consumption is overestimated, the ratio conservative.
    """
    default_threads = torch.get_num_threads()
    best = (0.0, float("inf"), default_threads)
    for threads in sorted({1, default_threads}):
        torch.set_num_threads(threads)
        rate, seconds = _train_rate(steps)
        best = max(best, (rate, seconds, threads))
    torch.set_num_threads(default_threads)
    return best


def _train_rate(steps: int) -> tuple[float, float]:
    torch.manual_seed(0)
    model = build_unet("small", 32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(BATCH, 3, 32, 32)

    def step() -> None:
        noise = torch.randn_like(x)
        t = torch.randint(0, 1000, (BATCH,))
        loss = torch.nn.functional.mse_loss(model(x + noise, t).sample, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # warm-up
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return BATCH / min(times), min(times)


def per_image_costs(count: int, rounds: int) -> list[tuple[str, int, float, float]]:
    """(shape, resolution, ms per image exact, ms per image with jpeg_draft): decode + preprocess, one thread,
    draft on and off alternated round by round, the median round."""
    from anime_ddpm.data import CELEBA_FACE_BOX, Preprocess

    rng = np.random.default_rng(1)

    shapes = {"anime 64 px JPEG": ((64, 64), None), "CelebA 178x218 JPEG, face crop": ((178, 218), CELEBA_FACE_BOX)}
    rows = []
    for label, (size, box) in shapes.items():
        payloads = [jpeg(face_like(rng, *size)) for _ in range(count)]
        for resolution in (64, 32):
            times: dict[bool, list[float]] = {False: [], True: []}
            for r in range(rounds):
                for draft in (r % 2 == 0, r % 2 == 1):
                    pre = Preprocess(resolution, True, True, draft)
                    generator = np.random.default_rng(0)
                    start = time.perf_counter()
                    for payload in payloads:
                        pre.from_file({"bytes": payload}, generator, box)
                    times[draft].append((time.perf_counter() - start) / count * 1e3)
            rows.append((label, resolution, float(np.median(times[False])), float(np.median(times[True]))))
    return rows


def median(measurements: list[tuple[float, int]]) -> tuple[float, int]:
    return sorted(measurements)[len(measurements) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2048, help="images per source and measurement")
    parser.add_argument("--steps", type=int, default=3, help="timed train steps")
    parser.add_argument("--repeats", type=int, default=3, help="passes per data measurement (the median counts)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sources = make_sources(root, args.images)
        sources["emoji (embedded)"] = "emoji"
        consume, step_seconds, threads = train_rate(args.steps)
        rows = []
        for label, name in sources.items():
            for workers in (0, 2):
                rates = [data_rate(name, workers, args.images, str(root / "cache")) for _ in range(args.repeats)]
                rows.append((label, workers, "StatefulDataLoader", *median(rates)))
            if name == sources["folder, 96 px JPEG"]:
                rates = [data_rate(name, 2, args.images, str(root / "cache"), True) for _ in range(args.repeats)]
                rows.append((label, 2, "torch DataLoader", *median(rates)))

    print(
        f"Training consumes {consume:.0f} img/s (small UNet, 32 px, batch {BATCH}, fp32, AdamW, {threads} thread(s), "
        f"{step_seconds:.2f} s/step)."
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    costs = per_image_costs(min(args.images, 512), max(2, args.repeats + 1 - args.repeats % 2))
    torch.set_num_threads(threads)
    print("\nOne image, decode + preprocessing only (one thread, no DataLoader):\n")
    print("| shape | to | ms/image exact | ms/image jpeg_draft | img/s per core (draft) | cores for 5,000 img/s |")
    print("|---|---|---|---|---|---|")
    for label, resolution, exact, drafted in costs:
        print(f"| {label} | {resolution} px | {exact:.3f} | {drafted:.3f} ({exact / drafted:.2f}x) | "
              f"{1e3 / drafted:,.0f} | {5000 * drafted / 1e3:.1f} |")  # fmt: skip
    print(f"\nData decoded and augmented to {RESOLUTION} px:\n")
    print("| source | workers | loader | images per pass | img/s (median) | x consumption |")
    print("|---|---|---|---|---|---|")
    for label, workers, loader, rate, seen in rows:
        print(f"| {label} | {workers} | {loader} | {seen} | {rate:,.0f} | {rate / consume:.1f}x |")


if __name__ == "__main__":
    main()

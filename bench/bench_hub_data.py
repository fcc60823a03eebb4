"""What does streaming from the Hub cost? Images/s through `build_dataset` + `build_dataloader` (decode, RGB, resize,
crop, normalise, collate at 64 px) from the loopback Hub look-alike (tests/hub_server.py: parquet read over HTTP
with Range requests by the unmodified datasets / huggingface_hub clients) against the same parquet files on disk.

Both preset shapes (tests/hub_datasets.py): anime (one parquet file, 64-100 px JPEGs) and CelebA (three files,
178x218 JPEGs), 100 rows per row group; 0, 2 and 4 DataLoader workers; a shuffle buffer of 100 (the default 1000 is
for the real 63,565 and 202,599 images: a buffer as large as these stand-ins would read them whole before the first
batch, hiding the transfer in the set-up). The Hub streams
are read by id (no CelebA face crop), so both sides do the same image work. The server runs in its own process on
the same machine, so its CPU time is part of the Hub figures. Candidates alternate round by round and the median
round counts; "setup" is the time from `build_dataset` to the first batch (Hub metadata requests included).

    .venv/bin/python bench/bench_hub_data.py [--images 2048] [--repeats 3]
    .venv/bin/python bench/bench_hub_data.py --quick      # a few seconds: 256 images per source, one round

Prints a markdown table, with the Hub / local ratio per row and each rate against what training consumes (the
fp32 steps of `bench_data.train_rate`, measured in the same run).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
RESOLUTION = 64
BATCH = 32
SERVE = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    from tests.hub_server import HubServer

    root, port, repos = Path(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
    server = HubServer(root, port=port)
    for folder in sorted(repos.iterdir()):
        files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
        server.add_dataset(folder.name.replace("--", "/"), files)
    server.start()
    print("ready", flush=True)
    while True:
        time.sleep(3600)
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def point_clients_at(url: str, home: Path) -> None:
    """Before datasets or huggingface_hub is imported: both read these once, at import."""
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_TOKEN"):
        os.environ.pop(name, None)
    os.environ.update(
        HF_ENDPOINT=url, HF_HOME=str(home), HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1"
    )


def write_repos(root: Path, images: int) -> dict[str, Path]:
    """The two stand-in repos as folders (`owner--name/...`), which are also the local copies."""
    sys.path.insert(0, str(ROOT))
    from tests import hub_datasets

    anime, _ = hub_datasets.anime_files(images)
    celeba, _ = hub_datasets.celeba_files(max(1, images // 3))
    folders = {}
    for repo_id, files in ((hub_datasets.ANIME_ID, anime), (hub_datasets.CELEBA_ID, celeba)):
        folder = root / repo_id.replace("/", "--")
        for path, data in files.items():
            (folder / path).parent.mkdir(parents=True, exist_ok=True)
            (folder / path).write_bytes(data)
        folders[repo_id] = folder
    return folders


def one_pass(dataset: str, workers: int, buffer: int, cache_dir: str) -> tuple[float, float, int]:
    """(setup seconds, images/s after the first batch, images) for one pass through a fresh dataset and loader."""
    from huggingface_hub import HfFileSystem

    from anime_ddpm.data import DataConfig, build_dataloader, build_dataset

    HfFileSystem.clear_instance_cache()  # no listings remembered from an earlier round
    start = time.perf_counter()
    config = DataConfig(dataset=dataset, resolution=RESOLUTION, shuffle_buffer=buffer, cache_dir=cache_dir)
    loader = build_dataloader(build_dataset(config), BATCH, num_workers=workers)
    seen, first = 0, None
    for batch in loader:
        if first is None:
            first = time.perf_counter()
        else:
            seen += len(batch["pixel_values"])
    end = time.perf_counter()
    return first - start, seen / (end - first), seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2048, help="images per source (CelebA: a third per file)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds (the median counts)")
    parser.add_argument("--shuffle_buffer", type=int, default=100, help="shuffle buffer (0: none)")
    parser.add_argument("--workers", default="0,2,4", help="DataLoader workers to measure, comma-separated")
    parser.add_argument("--quick", action="store_true", help="256 images, one round: a smoke run of a few seconds")
    args = parser.parse_args()
    if args.quick:
        args.images, args.repeats = 256, 1
    worker_counts = [int(n) for n in args.workers.split(",") if n]

    with tempfile.TemporaryDirectory(prefix="bench-hub-") as tmp:
        root = Path(tmp)
        port = free_port()
        point_clients_at(f"http://127.0.0.1:{port}", root / "hf-home")
        sys.path.insert(0, str(ROOT))
        from bench.bench_data import train_rate  # after point_clients_at: it imports huggingface_hub

        consume, step_seconds, threads = train_rate(1 if args.quick else 3)
        import datasets.config

        datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = 0  # the 5 s pause after a pass is not data loading time
        datasets.disable_progress_bars()
        folders = write_repos(root / "repos", args.images)
        server = subprocess.Popen(
            [sys.executable, "-c", SERVE, str(ROOT), str(root / "server"), str(port), str(root / "repos")],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.stdout.readline().strip() == "ready", "the Hub look-alike did not start"
            candidates = [
                (shape, where, workers, name if where == "Hub" else str(folder))
                for shape, (name, folder) in zip(("anime (1 file)", "CelebA (3 files)"), folders.items())
                for workers in worker_counts
                for where in ("local", "Hub")
            ]
            results: dict[tuple, list] = {c[:3]: [] for c in candidates}
            for round_ in range(args.repeats):
                shift = round_ % len(candidates)
                for shape, where, workers, dataset in candidates[shift:] + candidates[:shift]:
                    cache = str(root / "cache" / f"{round_}-{len(results[shape, where, workers])}-{where}-{workers}")
                    results[shape, where, workers].append(one_pass(dataset, workers, args.shuffle_buffer, cache))
        finally:
            server.kill()
            server.wait()

    print(
        f"Images/s decoded and preprocessed to {RESOLUTION} px (batch {BATCH}, shuffle buffer {args.shuffle_buffer}), median of "
        f"{args.repeats} round(s), {args.images} images per source, {os.cpu_count()} CPU cores; training consumes "
        f"{consume:,.0f} img/s (small UNet, 32 px, batch 32, fp32, {threads} thread(s), {step_seconds:.2f} s/step):\n"
    )
    print("| shape | workers | local img/s | Hub img/s | Hub / local | Hub / training | local setup s | Hub setup s |")
    print("|---|---|---|---|---|---|---|---|")
    for shape in ("anime (1 file)", "CelebA (3 files)"):
        for workers in worker_counts:
            local = sorted(results[shape, "local", workers], key=lambda r: r[1])[args.repeats // 2]
            hub = sorted(results[shape, "Hub", workers], key=lambda r: r[1])[args.repeats // 2]
            setup_local = statistics.median(r[0] for r in results[shape, "local", workers])
            setup_hub = statistics.median(r[0] for r in results[shape, "Hub", workers])
            print(
                f"| {shape} | {workers} | {local[1]:,.0f} | {hub[1]:,.0f} | {hub[1] / local[1]:.2f}x | "
                f"{hub[1] / consume:.1f}x | {setup_local:.2f} | {setup_hub:.2f} |"
            )


if __name__ == "__main__":
    main()

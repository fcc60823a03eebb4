"""The `anime-ddpm` command end to end: each command in its own process on a tiny saved model, offline."""

import json
import os
import re
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from PIL import Image, ImageDraw

from anime_ddpm import AnimeDDPMPipeline, build_unet
from anime_ddpm.cli import main
from anime_ddpm.sampling import generate, with_scheduler


RESOLUTION = 8


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A tiny saved model, a folder of face-like PNGs, one PNG, a decompression bomb, a text file and a small random
    DINOv2 folder."""
    from transformers import Dinov2Config, Dinov2Model

    root = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    pipe = AnimeDDPMPipeline(unet=build_unet("tiny", RESOLUTION), scheduler=DDPMScheduler(num_train_timesteps=1000))
    pipe.save_pretrained(root / "model")
    rng = np.random.default_rng(0)
    (root / "faces").mkdir()
    for i in range(10):
        image = Image.new("RGB", (24, 20), tuple(int(c) for c in rng.integers(0, 256, 3)))
        ImageDraw.Draw(image).ellipse((4, 2, 20, 18), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        image.save(root / "faces" / f"{i:02d}.png")
    Image.open(root / "faces" / "00.png").save(root / "face.png")
    _decompression_bomb(root / "bomb.png")
    (root / "notes.txt").write_text("a file, not a folder")
    config = Dinov2Config(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=16, patch_size=4
    )
    Dinov2Model(config).save_pretrained(root / "dinov2")
    return root


def run(workdir, *args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "anime_ddpm.cli", *map(str, args)],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


def ok(result):
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result


def one_sentence_error(result, command, fragment):
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith(f"anime-ddpm {command}: error: ") and fragment in lines[0], lines[0]


def pixels(path):
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


# ----------------------------------------------------------------------------------------------------- commands
def test_sample_writes_grid_and_images_that_match_the_sampling_api(workdir):
    args = ["--num", 5, "--batch-size", 2, "--scheduler", "ddim", "--steps", 3, "--seed", 3]
    ok(run(workdir, "sample", "model", *args, "--output", "out/grid.png", "--save-individual", "out/each"))
    assert Image.open(workdir / "out" / "grid.png").size == (3 * 10 + 2, 2 * 10 + 2)  # 3 x 2 cells of 8 px + 2 px
    names = sorted(os.listdir(workdir / "out" / "each"))
    assert names == [f"{i:04d}_seed{3 + i}.png" for i in range(5)]

    # The same images as sampling.generate with one batch: image i is seeded seed + i whatever the batch size.
    pipe = with_scheduler(AnimeDDPMPipeline.from_pretrained(workdir / "model"), "ddim")
    pipe.set_progress_bar_config(disable=True)
    expected = generate(pipe, 5, seed=3, batch_size=5, num_inference_steps=3)
    expected = (expected * 255).round().permute(0, 2, 3, 1).numpy().astype(np.int16)
    for i, name in enumerate(names):
        assert np.abs(pixels(workdir / "out" / "each" / name) - expected[i]).max() <= 1
    grid = pixels(workdir / "out" / "grid.png")
    assert np.abs(grid[2:10, 12:20] - expected[1]).max() <= 1  # second cell of the first row


def test_denoise_writes_strip_and_gif(workdir):
    ok(run(workdir, "denoise", "model", "--num", 2, "--steps", 6, "--snapshots", 4, "--gif-frames", 0))
    strip = Image.open(workdir / "denoising.png")
    cell = RESOLUTION * 8  # upscaled to 64 px
    assert strip.width >= 4 * cell and strip.height >= 4 * cell  # 4 snapshots; x_t and x0 rows for 2 samples
    gif = Image.open(workdir / "denoising.gif")
    assert gif.n_frames == 6  # every step


def test_noise_compares_schedules_at_chosen_timesteps(workdir):
    result = ok(
        run(
            workdir, "noise", "face.png", "--timesteps", "0,500,999", "--beta-schedule", "linear,squaredcos_cap_v2",
            "--resolution", 16, "--output", "noise.png",
        )
    )  # fmt: skip
    strip = Image.open(workdir / "noise.png")
    assert strip.width >= 3 * 64 and strip.height >= 2 * 64
    abar = DDPMScheduler(num_train_timesteps=1000).alphas_cumprod[[0, 500, 999]].sqrt()
    line = next(line for line in result.stdout.splitlines() if line.strip().startswith("linear:"))
    assert line.split("=")[1].strip() == ", ".join(f"{v:.3f}" for v in abar.tolist())


def test_data_preview_shows_training_images(workdir):
    args = ["--dataset", "faces", "--resolution", RESOLUTION, "--num", 8, "--random-flip", "--output", "prev.png"]
    result = ok(run(workdir, "data-preview", *args))
    assert "8 images of (3, 8, 8)" in result.stdout
    assert Image.open(workdir / "prev.png").size == (3 * 66 + 2, 3 * 66 + 2)  # 3 x 3 cells of 64 px


def test_evaluate_writes_json_and_table_and_skips_missing_weights(workdir):
    args = ["--dataset", "faces", "--num", 6, "--steps", 2, "--scheduler", "ddim", "--batch-size", 4]
    result = ok(run(workdir, "evaluate", "model", *args, "--dinov2", "dinov2", "--dinov2-resolution", 16))
    report = json.loads((workdir / "metrics.json").read_text())
    assert report["num_images"] == 6 and report["scheduler"] == "ddim" and report["steps"] == 2
    assert set(report["metrics"]) == {"swd_8", "swd_avg", "fd_dinov2"}
    assert all(np.isfinite(v) and v > 0 for v in report["metrics"].values())
    assert set(report["skipped"]) == {"fid", "kid"} and "--inception-weights" in report["skipped"]["fid"]
    assert "note: fid, kid skipped" in result.stderr
    assert "swd_avg" in result.stdout and "fd_dinov2" in result.stdout


# ----------------------------------------------------------------------------------------------------- errors
def test_missing_model_folder_through_the_console_script(workdir):
    """The installed `anime-ddpm` script: one sentence on stderr, exit status 1, no traceback."""
    script = os.path.join(os.path.dirname(sys.executable), "anime-ddpm")
    command = [script] if os.path.exists(script) else [sys.executable, "-m", "anime_ddpm.cli"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [*command, "sample", str(workdir / "no-such-model")], env=env, capture_output=True, text=True, timeout=120
    )
    one_sentence_error(result, "sample", "There is no model folder at")


@pytest.mark.parametrize(
    "argv,fragment",
    [
        (["denoise", "model", "--scheduler", "magic"], "Unknown scheduler 'magic'; choose one of ddpm, ddim"),
        (["evaluate", "model", "--num", "0"], "The number of images must be at least 1, got 0."),
        (["sample", "model", "--num", "0"], "The number of images must be at least 1, got 0."),
        (["sample", "model", "--steps", "5000"], "--steps must be between 1 and"),
        (["sample", "someone/not-a-cached-model"], "the Hub cannot be reached"),
        (["sample", "model", "--domain", "anime"], "unconditional"),
        (["noise", "face.png", "--beta-schedule", "cubic"], "Unknown beta schedule"),
        (["noise", "face.png", "--timesteps", "0,1000"], "Timesteps must lie in [0, 999]"),
        (["noise", "no-such.png"], "no-such.png"),
        (["evaluate", "model", "--dataset", "faces", "--num", "2", "--metrics", "fid"], "--inception-weights"),
        (["evaluate", "model", "--metrics", "fid,is"], "Unknown metric is"),
        (["sample", "model", "--guidance-scale", "-1"], "--guidance-scale must be 0 or more"),
        (["noise", "face.png", "--beta-end", "1.5"], "--beta-end must lie strictly between 0 and 1, got 1.5."),
        (["noise", "bomb.png"], "decompression-bomb"),
        (["noise", "face.png", "--scale", "-1"], "--scale must be at least 0 (0: automatic), got -1."),
    ],
)
def test_bad_arguments_give_one_sentence(workdir, monkeypatch, capsys, argv, fragment):
    """The same `main` as the console script, in-process to spare a 5 s interpreter start per case."""
    monkeypatch.chdir(workdir)
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"anime-ddpm {argv[0]}: error: ") and fragment in err[-1], err


def _decompression_bomb(path):
    """A valid PNG header of 30000 x 30000 pixels (more than twice Pillow's limit) with no image data."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 30000, 30000, 1, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )


@pytest.fixture
def no_sampling(workdir, monkeypatch):
    """In `workdir`, with loading the model or the dataset an error: what a check must refuse before them."""
    from anime_ddpm import cli

    monkeypatch.chdir(workdir)

    def expensive(*args, **kwargs):
        raise AssertionError("the model or the dataset was loaded before the arguments were checked")

    monkeypatch.setattr(cli, "open_pipeline", expensive)
    monkeypatch.setattr(cli, "take_dataset_images", expensive)


@pytest.mark.parametrize(
    "argv,fragment",
    [
        (["sample", "model", "--scale", "0"], "--scale must be at least 1, got 0."),
        (["sample", "model", "--output", "notes.txt/grid.png"], "notes.txt is a file, not a folder"),
        (
            ["sample", "model", "--output", "grid.txt"],
            "grid.txt is not an image file name Pillow writes: end it in .png",
        ),
        (["sample", "model", "--output", "faces"], "is a folder: give a file name inside it"),
        (["sample", "model", "--output", "/proc/anime-ddpm/grid.png"], "the folder /proc does not accept new files"),
        (["sample", "model", "--save-individual", "notes.txt"], "--save-individual notes.txt: "),
        (["denoise", "model", "--gif", "notes.txt/a.gif"], "Cannot write --gif notes.txt/a.gif"),
        (
            ["denoise", "model", "--gif", "strip.jpg"],
            "strip.jpg is not an animated image file name Pillow writes: end it in .gif",
        ),
        (["denoise", "model", "--gif-frames", "-1"], "--gif-frames must be at least 0 (0: every step)"),
        (["denoise", "model", "--frame-ms", "0"], "--frame-ms must be at least 1"),
        (["noise", "face.png", "--output", "notes.txt/noise.png"], "is a file, not a folder"),
        (["data-preview", "--dataset", "faces", "--output", "notes.txt/p.png"], "is a file, not a folder"),
        (["data-preview", "--dataset", "faces", "--scale", "-2"], "--scale must be at least 0"),
        (["evaluate", "model", "--output", "notes.txt/m.json"], "is a file, not a folder"),
        (["evaluate", "model", "--grid", "grid"], "--grid grid is not an image file name"),
        (["evaluate", "model", "--dinov2-resolution", "0"], "--dinov2-resolution must be at least 1"),
    ],
)
def test_paths_and_values_are_checked_before_any_work(no_sampling, capsys, argv, fragment):
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"anime-ddpm {argv[0]}: error: ") and fragment in err[0], err


@pytest.mark.parametrize(
    "argv,fragment",
    [
        (["sample", "model", "--guidance-scale", "nan"], "argument --guidance-scale: expected a finite number"),
        (["noise", "face.png", "--beta-start", "inf"], "argument --beta-start: expected a finite number, got 'inf'"),
        (["demo", "model", "--port", "70000"], "argument --port: expected a port number from 1 to 65535"),
        (["demo", "model", "--port", "0"], "expected a port number from 1 to 65535, got '0'"),
    ],
)
def test_values_no_command_can_take_are_refused_when_parsed(capsys, argv, fragment):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"anime-ddpm {argv[0]}: error: ") and fragment in err[-1], err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_folder_is_refused_before_sampling(no_sampling, workdir, capsys):
    locked = workdir / "locked"
    locked.mkdir(exist_ok=True)
    locked.chmod(0o500)
    try:
        assert main(["sample", "model", "--output", "locked/grid.png"]) == 1
    finally:
        locked.chmod(0o700)
    assert "does not accept new files" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------- progress
def test_heun_progress_counts_the_steps_asked_for(workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    argv = ["sample", "model", "--scheduler", "heun", "--steps", "4", "--num", "1", "--output", "heun.png"]
    assert main([*argv, "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "4/4" in err and "7/7" not in err  # 4 Heun steps are 7 model evaluations
    assert "anime-ddpm: about" not in err  # a fast run gets no estimate


def test_completed_steps_follow_heuns_two_evaluations_per_step():
    from anime_ddpm.cli import completed_steps

    assert [completed_steps(calls, 4, 7) for calls in range(1, 8)] == [0, 1, 1, 2, 2, 3, 4]
    assert [completed_steps(calls, 3, 3) for calls in range(1, 7)] == [1, 2, 3, 4, 5, 6]  # two batches of DDIM


def test_a_long_sampling_run_gets_an_estimate(workdir, monkeypatch, capsys):
    from anime_ddpm import cli

    monkeypatch.chdir(workdir)
    monkeypatch.setattr(cli, "ESTIMATE_OVER_S", 0.0)  # every run is "long" for the tiny model
    argv = ["sample", "model", "--scheduler", "ddpm", "--steps", "30", "--num", "3", "--batch-size", "2"]
    assert main([*argv, "--output", "long.png", "--device", "cpu"]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "anime-ddpm: about" in line]
    assert len(lines) == 1, lines
    assert re.fullmatch(
        r"anime-ddpm: about \d+ s for 30 ddpm steps x 3 images; --scheduler dpm\+\+ takes 25 steps\.", lines[0]
    )


def test_estimate_from_the_first_model_calls():
    from anime_ddpm.cli import TimeEstimate

    said = []
    clock = lambda: 10.0 + 0.2 * estimate.calls  # noqa: E731 - each model call takes 0.2 s
    estimate = TimeEstimate(1000, lambda seconds: said.append(seconds) or "", clock=clock)
    for step in range(4):
        estimate(None, step, 999 - step, {})
    assert said == [pytest.approx(200.0)]

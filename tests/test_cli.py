"""The `anime-ddpm` command end to end: each command in its own process on a tiny saved model, offline."""

import json
import os
import subprocess
import sys

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
    """A tiny saved model, a folder of face-like PNGs, one PNG and a small random DINOv2 folder."""
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
    ],
)
def test_bad_arguments_give_one_sentence(workdir, monkeypatch, capsys, argv, fragment):
    """The same `main` as the console script, in-process to spare a 5 s interpreter start per case."""
    monkeypatch.chdir(workdir)
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"anime-ddpm {argv[0]}: error: ") and fragment in err[-1], err

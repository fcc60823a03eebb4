"""Tests of the training loop (anime_ddpm/training.py, train_with_accelerate.py).

Fast in-process tests cover the command line, config files and checkpoint bookkeeping. The rest share one set of
real training runs (tiny UNet, 16 px, embedded emoji data), started together by the module fixture `runs`:
- A: `accelerate launch`, 12 optimiser steps of 2 x 4 images, checkpoints every 4, at most 2 kept;
- B: the same run SIGKILLed from outside after checkpoint-4, resumed and SIGKILLed again half-way through writing
  checkpoint-8, resumed again to the end: it must end with exactly A's weights, EMA and optimiser state;
- NaN: bf16, a NaN batch once (skipped) and then for ever (stops after 5 in a row, last checkpoint intact);
- fp16 on a CPU: refused with one sentence.
"""

from __future__ import annotations

import json
import logging
import math
import types

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from anime_ddpm import checkpoint, config, run_log, state
from anime_ddpm.config import TrainingConfig
from anime_ddpm.errors import TrainingError
from tests.test_training_runs import (
    TINY,
    accelerate_launch,
    diffusers_lr_schedule,
    read_jsonl,
    read_summary,
    start,
    wait_for,
)
from tests.train_with_hooks import parse_index_spec


parse_args = config.parse_args


RUN = [
    *TINY,
    "--train_batch_size", "4",
    "--gradient_accumulation_steps", "2",
    "--max_train_steps", "12",
    "--checkpointing_steps", "4",
    "--checkpoints_total_limit", "2",
    "--learning_rate", "1e-3",
    "--lr_warmup_steps", "4",
    "--save_images_steps", "6",
    "--logging_steps", "3",
    "--ema_snapshot_steps", "3",
    "--seed", "3",
]  # fmt: skip
NAN_RUN = [
    *TINY,
    "--train_batch_size", "4",
    "--max_train_steps", "40",
    "--checkpointing_steps", "2",
    "--save_images_steps", "0",
    "--logger", "none",
    "--mixed_precision", "bf16",
    "--debug_nan_batches", "3,8-",
]  # fmt: skip


# ============================================================================================ shared runs
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("training")
    out = types.SimpleNamespace(root=root, a=root / "a", b=root / "b", nan=root / "nan")
    dump_a = root / "dump-a"

    # Independent runs start together (start-up dominates their time).
    run_a = start([*RUN, "--output_dir", str(out.a), "--debug_dump_dir", str(dump_a)], root / "a.log",
                  launcher=accelerate_launch("--num_processes", "1"))  # fmt: skip
    run_nan = start([*NAN_RUN, "--output_dir", str(out.nan)], root / "nan.log")
    run_fp16 = start([*TINY, "--mixed_precision", "fp16", "--output_dir", str(root / "fp16")], root / "fp16.log")
    out.push = root / "push"
    run_push = start([*TINY, "--max_train_steps", "2", "--logger", "none", "--output_dir", str(out.push),
                      "--push_to_hub", "--hub_token", "hf_secret_token", "--hub_model_id", "me/ddpm"],
                     root / "push.log", HF_ENDPOINT="http://127.0.0.1:9")  # fmt: skip

    out.sc = root / "sc"
    run_sc = start([*TINY, "--max_train_steps", "4", "--checkpointing_steps", "2", "--logger", "none",
                    "--self_condition", "--output_dir", str(out.sc)], root / "sc.log")  # fmt: skip

    # Skip: a folder with unusable files among its images.
    faces = root / "faces"
    faces.mkdir()
    for i in range(8):
        Image.new("RGB", (16, 16), (30 * i, 80, 160)).save(faces / f"{i}.png")
    (faces / "empty.png").write_bytes(b"")
    (faces / "notes.jpg").write_text("not an image")
    (faces / "cut.png").write_bytes((faces / "0.png").read_bytes()[:60])
    out.skip = root / "skip"
    run_skip = start([*TINY, "--train_data_dir", str(faces), "--train_batch_size", "4", "--max_train_steps", "6",
                      "--logging_steps", "3", "--logger", "none", "--output_dir", str(out.skip)], root / "skip.log")  # fmt: skip
    # B1: killed from outside, mid-training, once checkpoint-4 is complete.
    b1 = start([*RUN, "--output_dir", str(out.b), "--debug_step_sleep", "0.4"], root / "b1.log")
    wait_for(out.b / "checkpoint-4", b1)
    b1.kill()
    out.b_after_kill = sorted(p.name for p in out.b.iterdir())
    out.b1 = b1
    # B2: resumed, then killed half-way through writing checkpoint-8 (after save_state, before the rename).
    b2 = start([*RUN, "--output_dir", str(out.b), "--resume_from_checkpoint", "latest",
                "--debug_kill_in_checkpoint", "8"], root / "b2.log").wait()  # fmt: skip
    out.b_after_crash = sorted(p.name for p in out.b.iterdir())
    out.latest_after_crash = checkpoint.find_resumable(str(out.b), "latest")[0]
    out.b2 = b2
    # B3: resumed again, to the end.
    out.b3 = start([*RUN, "--output_dir", str(out.b), "--resume_from_checkpoint", "latest"], root / "b3.log").wait()

    out.run_a, out.run_nan, out.run_fp16, out.run_push = run_a.wait(), run_nan.wait(), run_fp16.wait(), run_push.wait()
    out.run_skip, out.run_sc = run_skip.wait(), run_sc.wait()
    out.dump_a = read_jsonl(dump_a / "rank0.jsonl") if (dump_a / "rank0.jsonl").exists() else []
    return out


slow = pytest.mark.slow


def ok(run) -> None:
    assert run.returncode == 0, run.output[-4000:]


# ============================================================================================ resume and kill
@slow
def test_killed_and_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(runs):
    ok(runs.run_a)
    assert runs.b1.returncode == -9 and "checkpoint-8" not in runs.b_after_kill, runs.b_after_kill
    assert runs.b2.returncode == -9, runs.b2.output[-3000:]
    ok(runs.b3)
    assert "Resuming from" in runs.b3.output and "checkpoint-4" in runs.b3.output

    weights = "diffusion_pytorch_model.safetensors"
    snapshots = sorted(p.relative_to(runs.a).as_posix() for p in (runs.a / "ema_snapshots").iterdir())
    assert len(snapshots) == 8  # steps 3, 6, 9, 12; sigma_rel 0.05 and 0.10; the killed run's extra ones redone
    assert snapshots == sorted(p.relative_to(runs.b).as_posix() for p in (runs.b / "ema_snapshots").iterdir())
    names = [f"checkpoint-12/unet/{weights}", f"checkpoint-12/unet_ema/{weights}", f"unet/{weights}", *snapshots]
    names += [f"checkpoint-12/unet_ema_sigma_rel_{s}/{weights}" for s in ("0.050", "0.100")]
    for name in names:
        a, b = load_file(runs.a / name), load_file(runs.b / name)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)
    optim_a = torch.load(runs.a / "checkpoint-12/optimizer.bin", weights_only=True)
    optim_b = torch.load(runs.b / "checkpoint-12/optimizer.bin", weights_only=True)
    for index, moments in optim_a["state"].items():
        for key, value in moments.items():
            assert torch.equal(value, optim_b["state"][index][key]), (index, key)
    manifest_a, manifest_b = (checkpoint.verify(run / "checkpoint-12") for run in (runs.a, runs.b))
    assert manifest_a["ema"] == manifest_b["ema"] and manifest_a["ema"]["optimization_step"] == 12
    assert manifest_a["snapshot_emas"] == manifest_b["snapshot_emas"] == {"0.05": 12, "0.1": 12}
    assert manifest_a["lr_scheduler"] == manifest_b["lr_scheduler"]
    assert manifest_a["run_id"] == manifest_b["run_id"]


@slow
def test_a_kill_while_writing_a_checkpoint_leaves_nothing_latest_would_pick(runs):
    assert ".tmp-checkpoint-8" in runs.b_after_crash and "checkpoint-8" not in runs.b_after_crash
    assert runs.latest_after_crash.endswith("checkpoint-4")
    # The next run cleans the temporary folder up and writes checkpoint-8 properly.
    assert not any(p.name.startswith(".") for p in runs.b.iterdir())
    assert sorted(p.name for p in runs.b.glob("checkpoint-*")) == ["checkpoint-12", "checkpoint-8"]


@slow
def test_checkpoints_are_named_and_rotated_like_diffusers(runs):
    ok(runs.run_a)
    assert sorted(p.name for p in runs.a.glob("checkpoint-*")) == ["checkpoint-12", "checkpoint-8"]
    files = {p.name for p in (runs.a / "checkpoint-12").iterdir()}
    ema_folders = {"unet_ema", "unet_ema_sigma_rel_0.050", "unet_ema_sigma_rel_0.100"}  # RUN snapshots its EMAs
    assert files == {
        "unet",
        *ema_folders,
        "optimizer.bin",
        "random_states_0.pkl",
        "rank_state_0.pt",
        "checkpoint.json",
    }
    rank_state = torch.load(runs.a / "checkpoint-12/rank_state_0.pt", weights_only=True)
    assert rank_state["step"] == 12 and {"data", "generator"} <= set(rank_state)
    manifest = checkpoint.verify(runs.a / "checkpoint-12")  # every file there, with its size and checksum
    assert manifest["step"] == 12 and set(manifest["files"]) >= {"optimizer.bin", "unet_ema/config.json"}
    # A checkpoint's UNets are plain diffusers models: sample from one without the trainer.
    from diffusers import UNet2DModel

    assert UNet2DModel.from_pretrained(runs.a / "checkpoint-12", subfolder="unet_ema").config.sample_size == 16


# ============================================================================================ outputs
@slow
def test_final_pipeline_holds_the_ema_weights_and_samples(runs):
    from anime_ddpm import AnimeDDPMPipeline

    ok(runs.run_a)
    pipe = AnimeDDPMPipeline.from_pretrained(runs.a)
    ema = load_file(runs.a / "checkpoint-12/unet_ema/diffusion_pytorch_model.safetensors")
    raw = load_file(runs.a / "checkpoint-12/unet/diffusion_pytorch_model.safetensors")
    params = dict(pipe.unet.named_parameters())
    assert params.keys() <= ema.keys()
    for name, param in params.items():
        assert torch.equal(param.detach(), ema[name]), name
    assert any(not torch.equal(p.detach(), raw[name]) for name, p in params.items())
    assert pipe.scheduler.config.num_train_timesteps == 1000
    image = pipe(batch_size=1, num_inference_steps=2, output_type="pt").images
    assert image.shape == (1, 3, 16, 16) and torch.isfinite(image).all()
    assert (runs.a / "samples.png").is_file()
    assert sorted(p.name for p in (runs.a / "samples").iterdir()) == ["step-0000006.png", "step-0000012.png"]
    # the default EMA, named on the card: a power-function one (test_posthoc_ema checks its weights)
    assert (
        "| EMA | yes, power-function EMA of sigma_rel 0.15 (Karras et al. 2024) |"
        in (runs.a / "README.md").read_text()
    )


def test_a_self_conditioned_run_saves_a_pipeline_that_feeds_its_unet_and_resumes_only_as_one(runs):
    from anime_ddpm import AnimeDDPMPipeline, scheduler_from

    ok(runs.run_sc)
    pipe = AnimeDDPMPipeline.from_pretrained(runs.sc)
    assert pipe.unet.config.in_channels == 6 and pipe.unet.config.self_condition
    pipe.scheduler = scheduler_from("dpm++", pipe.scheduler)
    image = pipe(batch_size=2, num_inference_steps=3, output_type="pt").images
    assert image.shape == (2, 3, 16, 16) and torch.isfinite(image).all()
    assert "self-conditioned" in (runs.sc / "README.md").read_text()
    refused = start([*TINY, "--max_train_steps", "6", "--logger", "none", "--output_dir", str(runs.sc),
                     "--resume_from_checkpoint", "latest"], runs.root / "sc-refused.log").wait()  # fmt: skip
    assert refused.returncode != 0
    assert "belongs to another run: --self_condition True (this run: False)" in refused.output


def test_posthoc_ema_makes_a_pipeline_of_any_ema_length_from_the_snapshots(runs, tmp_path, capsys):
    from anime_ddpm import AnimeDDPMPipeline, cli

    ok(runs.run_a)
    weights = "diffusion_pytorch_model.safetensors"
    assert cli.main(["posthoc-ema", str(runs.a), "--sigma-rel", "0.05", "--output-dir", str(tmp_path / "e05")]) == 0
    assert "The EMA of sigma_rel 0.05 at step 12, from 8 snapshots" in capsys.readouterr().out
    rebuilt = load_file(tmp_path / "e05" / "unet" / weights)
    tracked = load_file(runs.a / "checkpoint-12" / "unet_ema_sigma_rel_0.050" / weights)  # the run's own 0.05 EMA
    for key in tracked:
        torch.testing.assert_close(rebuilt[key], tracked[key], rtol=1e-4, atol=1e-6)
    assert cli.main(["posthoc-ema", str(runs.a), "--sigma-rel", "0.2", "--step", "9", "--output-dir", str(tmp_path / "e20")]) == 0  # fmt: skip
    pipe = AnimeDDPMPipeline.from_pretrained(tmp_path / "e20")
    image = pipe(batch_size=2, num_inference_steps=3, output_type="pt").images
    assert image.shape == (2, 3, 16, 16) and torch.isfinite(image).all()
    assert not torch.equal(load_file(tmp_path / "e20" / "unet" / weights)["conv_in.weight"], rebuilt["conv_in.weight"])
    # a model card of its own, ready for the Hub: the run's facts with this EMA and step, and samples of these weights
    card = (tmp_path / "e20" / "README.md").read_text()
    for row in ["| EMA | yes, power-function EMA of sigma_rel 0.2 (Karras et al. 2024) |", "| Training steps | 9 |",
                "| EMA rebuilt after the run | from 6 snapshots", "![Samples from e20](samples.png)"]:  # fmt: skip
        assert row in card, row
    assert "Final loss" not in card  # the run's last loss is not this step's
    grid, run_grid = Image.open(tmp_path / "e20" / "samples.png"), Image.open(runs.a / "samples.png")
    assert grid.size == run_grid.size and list(grid.getdata()) != list(run_grid.getdata())

    capsys.readouterr()
    new, taken = str(tmp_path / "new"), str(tmp_path / "e05")
    for argv, message in [
        ([str(runs.a), "--sigma-rel", "0.4", "--output-dir", new], "--sigma-rel must be above 0 and at most 0.28"),
        (
            [str(runs.a), "--step", "10", "--output-dir", new],
            "there is no snapshot at step 10; the snapshots are at steps 3 to 12.",
        ),  # fmt: skip
        ([str(runs.a), "--output-dir", taken], f"--output-dir {taken} already exists: choose another"),
        ([str(runs.sc), "--output-dir", new], "has no EMA snapshots"),
        ([str(tmp_path), "--output-dir", new], "holds no trained pipeline (model_index.json)"),
    ]:
        assert cli.main(["posthoc-ema", *argv]) == 1, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "new").exists()


def test_a_run_without_snapshots_does_not_resume_with_them(runs):
    ok(runs.run_sc)
    refused = start([*TINY, "--max_train_steps", "6", "--logger", "none", "--output_dir", str(runs.sc), "--self_condition",
                     "--ema_snapshot_steps", "2", "--resume_from_checkpoint", "latest"], runs.root / "snap-refused.log").wait()  # fmt: skip
    assert refused.returncode != 0
    assert "was written without the EMA that unet_ema_sigma_rel_0.050/ would hold: resume it without --ema_snapshot_steps" in refused.output  # fmt: skip


@slow
def test_tensorboard_gets_metrics_images_and_hyperparameters(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ok(runs.run_a)
    scalars, images = {}, set()
    for events in (runs.a / "logs").rglob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0, "images": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            scalars[tag] = [event.step for event in accumulator.Scalars(tag)]
        images |= set(accumulator.Tags()["images"])
    for tag in ("loss", "loss_simple", "lr", "ema_decay", "images_per_sec", "grad_norm"):
        assert scalars.get(tag) == [3, 6, 9, 12], (tag, scalars)
    assert {"samples", "final_samples"} <= images
    hparams = next((runs.a / "logs").rglob("hparams.yml")).read_text()
    assert "learning_rate" in hparams and "hub_token" not in hparams


@slow
def test_lr_schedule_is_counted_in_optimizer_steps(runs):
    """12 optimiser steps of 2 micro-batches: warm-up and cosine over optimiser steps, not micro-batches."""
    ok(runs.run_a)
    steps = [record for record in runs.dump_a if "lr" in record]
    assert [record["step"] for record in steps] == list(range(1, 13))
    assert all(len(record["examples"]) == 8 for record in steps)  # batch 4 x accumulation 2
    expected = diffusers_lr_schedule("cosine", warmup_steps=4, total_steps=12)
    assert [record["lr"] for record in steps] == pytest.approx(expected)
    assert expected[3] == pytest.approx(7.5e-4) and expected[4] == pytest.approx(1e-3)


# ============================================================================================ failures
@slow
def test_non_finite_steps_are_skipped_then_training_stops_with_the_checkpoint_intact(runs):
    run = runs.run_nan
    assert run.returncode == 1, run.output[-4000:]
    assert "bf16 precision" in run.output
    assert "skipped (1 in a row)" in run.output  # the single NaN batch (index 3)
    assert "not finite for 5 optimiser steps in a row" in run.output
    error = [line for line in run.output.splitlines() if line.startswith("train_with_accelerate: error:")]
    assert (
        len(error) == 1
        and "the last good checkpoint is" in error[0]
        and error[0].endswith("checkpoint-6 (try a lower --learning_rate or --mixed_precision no).")
    ), error
    # Batches 0-2 -> steps 1-3, batch 3 skipped, 4-7 -> steps 4-7, then NaN for ever: checkpoints 2, 4, 6.
    assert sorted(p.name for p in runs.nan.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    weights = load_file(runs.nan / "checkpoint-6/unet/diffusion_pytorch_model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert checkpoint.verify(runs.nan / "checkpoint-6")["step"] == 6
    assert not (runs.nan / "model_index.json").exists()


@slow
def test_fp16_on_a_cpu_is_refused_in_one_sentence(runs):
    run = runs.run_fp16
    assert run.returncode == 2
    last = run.output.strip().splitlines()[-1]
    assert last.startswith("train_with_accelerate: error: fp16 mixed precision needs a GPU"), last
    assert "Traceback" not in run.output


@slow
def test_a_failed_push_keeps_everything_and_exits_non_zero(runs):
    run = runs.run_push
    assert run.returncode == 1, run.output[-4000:]
    for name in ("model_index.json", "unet/diffusion_pytorch_model.safetensors", "samples.png", "README.md"):
        assert (runs.push / name).is_file(), name
    assert "the push to me/ddpm failed" in run.output and "push_to_hub(" in run.output
    assert "hf_secret_token" not in run.output and "Traceback" not in run.output


# ============================================================================================ command line
EXAMPLE_FLAGS = {
    # every flag of diffusers' train_unconditional.py with a value, and the field it sets
    "--dataset_name": ("huggan/anime-faces", "huggan/anime-faces"),
    "--dataset_config_name": ("default", "default"),
    "--model_config_name_or_path": ("google/ddpm-cifar10-32", "google/ddpm-cifar10-32"),
    "--train_data_dir": ("/data/faces", "/data/faces"),
    "--output_dir": ("out", "out"),
    "--cache_dir": ("/cache", "/cache"),
    "--resolution": ("64", 64),
    "--train_batch_size": ("16", 16),
    "--eval_batch_size": ("8", 8),
    "--dataloader_num_workers": ("2", 2),
    "--num_epochs": ("100", 100),
    "--save_images_epochs": ("10", 10),
    "--save_model_epochs": ("10", 10),
    "--gradient_accumulation_steps": ("4", 4),
    "--learning_rate": ("1e-4", 1e-4),
    "--lr_scheduler": ("constant_with_warmup", "constant_with_warmup"),
    "--lr_warmup_steps": ("500", 500),
    "--adam_beta1": ("0.9", 0.9),
    "--adam_beta2": ("0.99", 0.99),
    "--adam_weight_decay": ("0.01", 0.01),
    "--adam_epsilon": ("1e-6", 1e-6),
    "--ema_inv_gamma": ("2.0", 2.0),
    "--ema_power": ("0.6667", 0.6667),
    "--ema_max_decay": ("0.999", 0.999),
    "--hub_token": ("hf_x", "hf_x"),
    "--hub_model_id": ("me/ddpm", "me/ddpm"),
    "--logger": ("wandb", "wandb"),
    "--logging_dir": ("tb", "tb"),
    "--local_rank": ("0", 0),
    "--mixed_precision": ("bf16", "bf16"),
    "--prediction_type": ("sample", "sample"),
    "--ddpm_num_steps": ("4000", 4000),
    "--ddpm_num_inference_steps": ("250", 250),
    "--ddpm_beta_schedule": ("squaredcos_cap_v2", "squaredcos_cap_v2"),
    "--checkpointing_steps": ("1000", 1000),
    "--checkpoints_total_limit": ("3", 3),
    "--resume_from_checkpoint": ("latest", "latest"),
}
EXAMPLE_SWITCHES = ["--center_crop", "--random_flip", "--use_ema", "--push_to_hub", "--hub_private_repo",
                    "--enable_xformers_memory_efficient_attention", "--overwrite_output_dir"]  # fmt: skip


def test_accepts_every_flag_of_diffusers_train_unconditional(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    argv = [part for flag, (value, _) in EXAMPLE_FLAGS.items() for part in (flag, value)] + EXAMPLE_SWITCHES
    argv += ["--ema_sigma_rel", "0"]  # the example's warm-up EMA, whose settings are refused with our default EMA
    config = parse_args(argv)
    for flag, (_, expected) in EXAMPLE_FLAGS.items():
        assert getattr(config, flag[2:]) == expected, flag
    for switch in EXAMPLE_SWITCHES:
        assert getattr(config, switch[2:]) is True
    assert config.dataset_spec == "huggan/anime-faces"  # --dataset_name is --dataset


def test_defaults_and_negated_switches():
    config = parse_args([])
    assert (config.model, config.resolution, config.dataset_spec, config.mixed_precision) == ("small4", 32, None, None)
    assert config.use_ema and config.center_crop and not config.random_flip
    assert config.resolved_output_dir() == "ddpm-emoji-32"
    assert parse_args(["--dataset", "anime", "--resolution", "64"]).resolved_output_dir() == "ddpm-anime-64"
    negated = parse_args(["--no-use_ema", "--no-center_crop"])
    assert not negated.use_ema and not negated.center_crop
    assert config.preview_steps() == 25
    assert parse_args(["--sample_scheduler", "ddpm", "--ddpm_num_inference_steps", "100"]).preview_steps() == 100  # fmt: skip


def test_config_file_gives_defaults_and_flags_win(tmp_path):
    yaml_file = tmp_path / "recipe.yaml"
    yaml_file.write_text("model: tiny\nresolution: 16\nlearning_rate: 3e-4\nmax-train-steps: 7\nuse_ema: false\n")
    config = parse_args(["--config", str(yaml_file), "--resolution", "8"])
    assert (config.model, config.resolution, config.learning_rate, config.max_train_steps) == ("tiny", 8, 3e-4, 7)
    assert config.use_ema is False
    json_file = tmp_path / "recipe.json"
    json_file.write_text(json.dumps({"train_batch_size": 8, "lr_scheduler": "linear"}))
    config = parse_args(["--config", str(json_file)])
    assert (config.train_batch_size, config.lr_scheduler) == (8, "linear")


@pytest.mark.parametrize(
    "content, message",
    [
        ("modell: tiny\n", "Unknown setting(s) in"),
        ("- 1\n- 2\n", "must hold a mapping"),
        ("model: [unclosed\n", "is not valid YAML/JSON"),
    ],
)
def test_bad_config_files_are_one_sentence(tmp_path, content, message):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(TrainingError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_args(["--config", str(path)])


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"dataset": "anime", "dataset_name": "celeba"}, "name the same setting"),
        ({"train_batch_size": 0}, "--train_batch_size must be at least 1"),
        ({"lr_scheduler": "sawtooth"}, "--lr_scheduler 'sawtooth' is not one of"),
        ({"sample_steps": 2000}, "exceeds the 1000 training steps"),
        ({"checkpoints_total_limit": 0}, "--checkpoints_total_limit must be at least 1"),
        ({"learning_rate": math.nan}, "--learning_rate must be a number >= 0, got nan"),
        ({"learning_rate": math.inf}, "--learning_rate must be a number >= 0, got inf"),
        ({"adam_beta1": 2.0}, "--adam_beta1 must be a number in \\[0, 1\\], got 2.0"),
        ({"adam_beta2": 1.0}, "must be below 1"),
        ({"adam_epsilon": 0.0}, "--adam_epsilon must be a positive number"),
        ({"ema_max_decay": math.nan}, "--ema_max_decay must be a number in"),
        ({"ema_sigma_rel": 0.3}, "--ema_sigma_rel must be 0 \\(the warm-up EMA\\) or at most 0.28, got 0.3"),
        ({"ema_sigma_rel": -0.1}, "--ema_sigma_rel must be 0"),
        ({"ema_power": 0.6}, "--ema_power shapes diffusers' warm-up EMA, which only --ema_sigma_rel 0 selects: add"),
        ({"snr_gamma": -math.inf}, "--snr_gamma must be a positive number"),
        ({"x0_weight_cap": 0.5}, "--x0_weight_cap must be 0 \\(off\\) or at least 1"),
        ({"x0_weight_cap": -1.0}, "--x0_weight_cap must be a number >= 0"),
        (
            {"x0_weight_cap": 5.0, "prediction_type": "epsilon"},
            "use it with --prediction_type sample \\(this run: epsilon\\)",
        ),
        ({"x0_weight_cap": 5.0, "snr_gamma": 5.0}, "two loss weights: give one"),
        ({"max_grad_norm": math.nan}, "--max_grad_norm must be a number >= 0"),
        ({"overwrite_output_dir": True, "resume_from_checkpoint": "latest"}, "give one"),
    ],
)
def test_validation_rejects_impossible_settings(changes, message):
    with pytest.raises(TrainingError, match=message):
        TrainingConfig(**changes).validate()


def test_the_model_card_names_the_loss_weight_a_run_used():
    from anime_ddpm.training import card_info

    summary = {"num_processes": 1, "steps": 0, "epochs": 0, "num_parameters": 1, "mixed_precision": "no",
               "final_loss": None, "seconds": 60.0, "device": "cpu"}  # fmt: skip
    capped = card_info(TrainingConfig(x0_weight_cap=5.0), summary, None)["loss"]
    assert capped.startswith("L_simple (MSE of the sample target), weighted by min(SNR + 1, 5),")
    assert "SNR" not in card_info(TrainingConfig(), summary, None)["loss"]


# ============================================================================================ checkpoint helpers
def test_index_spec_for_the_nan_hook():
    assert parse_index_spec("3,8-,10-12") == [(3, 3), (8, math.inf), (10, 12)]
    assert parse_index_spec(None) == []


class _FakeAccelerator:
    num_processes = 2
    device = torch.device("cpu")

    def gather(self, tensor):
        return torch.cat([tensor, tensor + 1])  # the other rank holds one batch more: the smaller count wins


class _Stream:
    def __init__(self, num_examples=None):
        self.num_examples = num_examples


class _Unsized:
    def __len__(self):
        raise TypeError("a stream has no length")


@pytest.mark.parametrize(
    "settings, num_examples, expected",
    [
        ({}, None, None),  # only the default time budget
        ({"max_train_steps": 10}, None, 10),
        ({"num_epochs": 3}, 200, 3 * math.ceil(13 / 2)),  # 100 per rank / batch 8 = 13 batches, 2 per step
        ({"num_epochs": 3, "max_train_steps": 10}, 200, 10),
        ({"num_epochs": 3, "max_train_steps": 50}, None, 50),  # unknown length: max_train_steps decides
    ],
)
def test_training_length_in_optimizer_steps(settings, num_examples, expected, monkeypatch):
    monkeypatch.setattr(state, "logger", logging.getLogger("test"))  # no AcceleratorState here
    settings = TrainingConfig(train_batch_size=8, gradient_accumulation_steps=2, **settings)
    assert state.training_length(settings, _Stream(num_examples), _Unsized(), _FakeAccelerator()) == expected


def test_epochs_of_a_stream_of_unknown_length_need_max_train_steps():
    with pytest.raises(TrainingError, match="give --max_train_steps"):
        state.training_length(TrainingConfig(num_epochs=2), _Stream(), _Unsized(), _FakeAccelerator())


def test_tracker_config_is_scalars_without_the_token():
    values = run_log.tracker_config(TrainingConfig(hub_token="hf_secret"), extra=(1, 2))
    assert "hub_token" not in values and "hf_secret" not in str(values)
    assert values["dataset"] == "None" and values["extra"] == "(1, 2)" and values["learning_rate"] == 1e-3
    assert all(isinstance(v, (int, float, str, bool)) for v in values.values())


def test_preview_samplers_clip_the_predicted_x0_like_ddpm():
    from anime_ddpm.losses import make_noise_scheduler
    from anime_ddpm.schedulers import scheduler_from

    base = make_noise_scheduler()
    dpm = scheduler_from("dpm++", base)
    assert type(dpm).__name__ == "DPMSolverMultistepScheduler"
    assert dpm.config.thresholding and dpm.config.sample_max_value == 1.0
    assert scheduler_from("ddim", base).config.clip_sample
    assert "thresholding" not in scheduler_from("euler", base).config
    unclipped = make_noise_scheduler(clip_sample=False)
    assert not scheduler_from("dpm++", unclipped).config.thresholding


@pytest.mark.parametrize(
    "flag, launcher, cpu_flags, expected",
    [
        ("no", "bf16", "avx512_bf16", "no"),  # the script's flag wins
        (None, "bf16", "", "bf16"),  # then the launcher's fp16/bf16
        (None, "fp16", "avx512_bf16", "fp16"),
        (None, "no", "fpu avx512f avx512_bf16 sse", "bf16"),  # `accelerate launch` says "no" unless told
        (None, None, "fpu amx_bf16 amx_tile", "bf16"),
        (None, "no", "fpu avx512f avx512bw", "no"),  # bf16 would be emulated: slower than fp32
    ],
)
def test_default_precision_is_bf16_only_where_the_hardware_has_it(flag, launcher, cpu_flags, expected, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    environ = {"ACCELERATE_MIXED_PRECISION": launcher} if launcher else {}
    assert state.resolve_mixed_precision(flag, environ, cpu_flags) == expected


@pytest.mark.parametrize(
    "environ, parent, expected",
    [
        ({"OMP_NUM_THREADS": "1", "ACCELERATE_MIXED_PRECISION": "no"}, "PATH=/bin\0HOME=/root\0", True),  # the default
        (
            {"OMP_NUM_THREADS": "1", "ACCELERATE_MIXED_PRECISION": "no"},
            "PATH=/bin\0OMP_NUM_THREADS=1\0",
            False,
        ),  # chosen
        (
            {"OMP_NUM_THREADS": "4", "ACCELERATE_MIXED_PRECISION": "no"},
            "PATH=/bin\0",
            False,
        ),  # --num_cpu_threads_per_process
        ({"OMP_NUM_THREADS": "1"}, "PATH=/bin\0", False),  # not under accelerate launch: someone chose 1
        ({"OMP_NUM_THREADS": "1", "ACCELERATE_MIXED_PRECISION": "no"}, None, False),  # cannot tell
    ],
)
def test_only_accelerate_launchs_default_of_one_thread_is_replaced_by_all_cores(environ, parent, expected):
    assert state._launcher_set_one_thread(environ, parent) is expected


@pytest.mark.parametrize(("device", "processes", "cores", "expected"),
                         [("cpu", 1, 16, 0), ("cuda", 1, 16, 8), ("cuda", 4, 16, 3), ("cuda", 1, 4, 3), ("cuda", 8, 8, 0)])  # fmt: skip
def test_loader_workers_default_to_the_cores_a_gpu_leaves_free(monkeypatch, device, processes, cores, expected):
    import types

    monkeypatch.setattr(state.os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    accelerator = types.SimpleNamespace(device=torch.device(device), num_processes=processes)
    assert state.default_loader_workers(accelerator) == expected


def test_the_non_finite_stop_names_the_last_good_checkpoint_or_says_there_is_none():
    from anime_ddpm.training import nonfinite_error

    none_yet = str(nonfinite_error(5, 1, None, None))
    assert "no checkpoint was written" in none_yet and "is none" not in none_yet
    assert "the last good checkpoint is out/checkpoint-500 " in str(
        nonfinite_error(5, 510, "out/checkpoint-500", None)
    )
    resumed = nonfinite_error(5, 3, None, ("out/checkpoint-2", {}))  # nothing written since the resume
    assert "the last good checkpoint is out/checkpoint-2 " in str(resumed) and resumed.exit_code == 1


@slow
def test_unusable_files_are_counted_by_reason_in_the_summary_the_metrics_and_the_log(runs):
    ok(runs.run_skip)
    # 6 steps of 4 = 3 passes over the 8 good images; each pass meets the 3 bad files again
    expected = {"empty": 3, "not an image": 3, "truncated": 3}
    assert read_summary(runs.skip)["skipped_files"] == expected
    last = read_jsonl(runs.skip / "metrics.jsonl")[-1]
    assert {k: v for k, v in last.items() if k.startswith("skipped_files/")} == {f"skipped_files/{r}": n for r, n in expected.items()}  # fmt: skip
    assert "Skipped an unusable image 9 times (3 empty, 3 not an image, 3 truncated)" in runs.run_skip.output

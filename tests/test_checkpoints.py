"""Checkpoints and run folders you can trust (anime_ddpm/checkpoint.py, anime_ddpm/rundir.py).

Fast tests build checkpoint folders by hand with the format's own `write_manifest`. The slow ones train one tiny
run (checkpoints at 5, 10, 15) and then try, each in a copy of its folder and all at once, what users do to run
folders: start again in it, resume it with other settings, resume it after its newest checkpoint was damaged, and
resume a checkpoint with a planted pickle.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import shutil
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from anime_ddpm import checkpoint, rundir
from anime_ddpm.checkpoint import Checkpointer, InvalidCheckpoint
from anime_ddpm.config import IDENTITY_WHEN_SET, TrainingConfig
from anime_ddpm.errors import TrainingError
from tests.test_training_runs import TINY, start, wait_for


RUN = {"model": "tiny", "seed": 0, "train_batch_size": 4, "num_processes": 1}


def fake_checkpoint(folder: Path, step: int, run: dict = RUN, payload: bytes = b"weights") -> Path:
    path = folder / f"checkpoint-{step}"
    (path / "unet").mkdir(parents=True)
    (path / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(payload * 100)
    (path / "optimizer.bin").write_bytes(b"moments" * 50)
    checkpoint.write_manifest(str(path), step, run, 1, {"clock": {"elapsed": 1.0}})
    return path


# ============================================================================================ the format
def test_latest_is_the_newest_that_verifies_and_ignores_temporary_folders(tmp_path):
    for step in (3, 9, 10):
        fake_checkpoint(tmp_path, step)
    (tmp_path / ".tmp-checkpoint-11").mkdir()
    (tmp_path / "checkpoint-x").mkdir()
    (tmp_path / "checkpoint-12").write_text("a file, not a checkpoint")
    assert [step for step, _ in checkpoint.list_checkpoints(tmp_path)] == [3, 9, 10]
    path, manifest = checkpoint.find_resumable(str(tmp_path), "latest")
    assert path == str(tmp_path / "checkpoint-10") and manifest["step"] == 10
    assert checkpoint.find_resumable(str(tmp_path / "empty"), "latest") is None
    assert checkpoint.find_resumable(str(tmp_path), "checkpoint-9")[0] == str(tmp_path / "checkpoint-9")
    assert checkpoint.find_resumable("elsewhere", str(tmp_path / "checkpoint-3"))[0] == str(tmp_path / "checkpoint-3")
    with pytest.raises(TrainingError, match="No checkpoint folder 'checkpoint-4'"):
        checkpoint.find_resumable(str(tmp_path), "checkpoint-4")


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda p: (p / "optimizer.bin").write_bytes(b"short"), "optimizer.bin has 5 bytes instead of 350"),
        (lambda p: (p / "optimizer.bin").write_bytes(b"x" * 350), "optimizer.bin does not match its checksum"),
        (lambda p: (p / "unet" / "diffusion_pytorch_model.safetensors").unlink(), "is missing"),
        (lambda p: (p / "checkpoint.json").write_text("{"), "checkpoint.json is unreadable"),
        (lambda p: (p / "checkpoint.json").unlink(), "it has no checkpoint.json"),
    ],
)
def test_a_damaged_newest_checkpoint_is_skipped_with_the_reason_and_the_previous_one_resumed(tmp_path, caplog, damage, reason):  # fmt: skip
    fake_checkpoint(tmp_path, 10)
    damage(fake_checkpoint(tmp_path, 15))
    with caplog.at_level(logging.WARNING, logger="anime_ddpm.checkpoint"):
        path, _ = checkpoint.find_resumable(str(tmp_path), "latest")
    assert path.endswith("checkpoint-10")
    assert f"Skipping {tmp_path / 'checkpoint-15'}: " in caplog.text and reason in caplog.text
    with pytest.raises(TrainingError, match=f"Cannot resume from .*checkpoint-15: .*{reason}"):
        checkpoint.find_resumable(str(tmp_path), "checkpoint-15")  # asked for by name: one sentence, no fallback


def test_when_no_checkpoint_verifies_resuming_latest_says_why_for_each(tmp_path):
    (fake_checkpoint(tmp_path, 5) / "optimizer.bin").write_bytes(b"")
    legacy = tmp_path / "checkpoint-7"  # the format before manifests
    legacy.mkdir()
    (legacy / "trainer_state_0.pt").write_bytes(b"pickle")
    with pytest.raises(TrainingError) as error:
        checkpoint.find_resumable(str(tmp_path), "latest")
    message = str(error.value)
    assert "No checkpoint in" in message and "\n" not in message
    assert (
        "checkpoint-7: written by an older anime-ddpm" in message
        and "checkpoint-5: optimizer.bin has 0 bytes" in message
    )


def test_a_checkpoint_of_another_run_is_refused_naming_what_differs(tmp_path):
    path = fake_checkpoint(tmp_path, 5, run={**RUN, "seed": 7, "train_batch_size": 16})
    manifest = checkpoint.verify(path)
    checkpoint.check_belongs(str(path), manifest, {**RUN, "seed": 7, "train_batch_size": 16})  # the same run: fine
    with pytest.raises(TrainingError) as error:
        checkpoint.check_belongs(str(path), manifest, RUN)
    assert "belongs to another run: --seed 7 (this run: 0), --train_batch_size 16 (this run: 4)" in str(error.value)


def resumes_only_as_it_was(tmp_path, name: str, earlier_value, refusal: str) -> None:
    """A checkpoint written before the default of `name` changed (its manifest does not name it) resumes with the
    earlier value, and today's default is refused with `refusal`."""
    earlier = TrainingConfig(**{name: earlier_value}).run_identity(1)
    path = fake_checkpoint(tmp_path / f"before_{name}", 5, run=earlier)
    manifest = checkpoint.verify(path)
    assert name not in manifest["run"]
    checkpoint.check_belongs(str(path), manifest, earlier)
    with pytest.raises(TrainingError) as error:
        checkpoint.check_belongs(str(path), manifest, TrainingConfig().run_identity(1))
    assert refusal in str(error.value)


def test_settings_added_later_keep_earlier_checkpoints_resumable_and_a_changed_one_is_refused(tmp_path):
    """--weighting_scheme came after checkpoints existed: a checkpoint of an earlier version, whose manifest does not
    name it, holds the value runs had then (uniform); it resumes with that value and refuses today's default
    (logit-normal) with the settings to pass named. At the value runs had then, the names stay out of the identity."""
    uniform = TrainingConfig(**IDENTITY_WHEN_SET).run_identity(1)  # what runs had before these settings existed
    assert not set(IDENTITY_WHEN_SET) & set(uniform)
    earlier = fake_checkpoint(tmp_path / "earlier", 5, run=uniform)
    manifest = checkpoint.verify(earlier)
    checkpoint.check_belongs(str(earlier), manifest, uniform)
    # --weighting_scheme none alone continues it: the logit-normal mean (0.5 by default) does not shape a uniform run.
    checkpoint.check_belongs(
        str(earlier),
        manifest,
        TrainingConfig(weighting_scheme="none", input_perturbation=0, ema_sigma_rel=0).run_identity(1),
    )
    with pytest.raises(TrainingError) as error:
        checkpoint.check_belongs(str(earlier), manifest, TrainingConfig(input_perturbation=0.0).run_identity(1))
    assert "--logit_mean 0.0 (this run: 0.5), --weighting_scheme none (this run: logit_normal)" in str(error.value)
    # Today's default is in the identity, so its checkpoints refuse a uniform resume the same way.
    default = TrainingConfig().run_identity(1)
    assert default["weighting_scheme"] == "logit_normal" and "logit_std" not in default
    current = fake_checkpoint(tmp_path / "current", 5, run=default)
    manifest = checkpoint.verify(current)
    checkpoint.check_belongs(str(current), manifest, TrainingConfig().run_identity(1))
    with pytest.raises(TrainingError) as error:
        checkpoint.check_belongs(str(current), manifest, uniform)
    assert "--logit_mean 0.5 (this run: 0.0), --weighting_scheme logit_normal (this run: none)" in str(error.value)
    # --input_perturbation came later still (default 0.1 since): at 0 it stays out of the identity, so a checkpoint
    # written before it resumes with --input_perturbation 0 and refuses today's default, naming that flag.
    assert default["input_perturbation"] == 0.1
    resumes_only_as_it_was(tmp_path, "input_perturbation", 0.0, "--input_perturbation 0.0 (this run: 0.1)")
    # --self_condition likewise: off, it is not in the identity; a self-conditioned checkpoint refuses a plain resume.
    assert "self_condition" not in default
    conditioned = TrainingConfig(self_condition=True).run_identity(1)
    manifest = checkpoint.verify(current)
    with pytest.raises(TrainingError) as error:
        checkpoint.check_belongs(str(current), manifest, conditioned)
    assert "--self_condition False (this run: True)" in str(error.value)
    # The EMA became a power-function one of sigma_rel 0.15 (December 2026): a checkpoint of a warm-up-EMA run names
    # no sigma_rel, resumes with --ema_sigma_rel 0 and refuses today's default, naming that flag; without an EMA the
    # kind of EMA is no part of the run.
    assert default["ema_sigma_rel"] == 0.15
    resumes_only_as_it_was(tmp_path, "ema_sigma_rel", 0.0,
                           "belongs to another run: --ema_sigma_rel 0.0 (this run: 0.15); resume with those settings")  # fmt: skip
    # --x0_weight_cap (off by default) likewise: off it is no part of the run, and an uncapped checkpoint refuses a capped resume.
    assert "x0_weight_cap" not in default
    capped = TrainingConfig(x0_weight_cap=5.0).run_identity(1)
    with pytest.raises(TrainingError) as error:
        checkpoint.check_belongs(str(current), manifest, capped)
    assert "--x0_weight_cap 0.0 (this run: 5.0)" in str(error.value)
    assert TrainingConfig(use_ema=False).run_identity(1) == TrainingConfig(
        use_ema=False, ema_sigma_rel=0
    ).run_identity(1)


def test_a_run_of_the_old_default_unet_is_refused_with_the_flag_that_continues_it(tmp_path):
    """The default UNet changed from `small` to `small4`: a checkpoint of the old default names its preset, so
    resuming it with no --model is refused in one sentence naming --model small, and --model small continues it."""
    old_default = TrainingConfig(model="small", **IDENTITY_WHEN_SET).run_identity(1)
    earlier = fake_checkpoint(tmp_path / "earlier", 5, run=old_default)
    manifest = checkpoint.verify(earlier)
    with pytest.raises(TrainingError) as error:
        checkpoint.check_belongs(str(earlier), manifest, TrainingConfig(**IDENTITY_WHEN_SET).run_identity(1))
    assert "--model small (this run: small4)" in str(error.value)
    checkpoint.check_belongs(
        str(earlier), manifest, TrainingConfig(model="small", **IDENTITY_WHEN_SET).run_identity(1)
    )


def test_rotation_deletes_only_this_runs_oldest_checkpoints(tmp_path):
    for step in (5, 10, 15, 20):
        fake_checkpoint(tmp_path, step)
    fake_checkpoint(tmp_path, 3, run={**RUN, "seed": 7})  # another run's
    legacy = tmp_path / "checkpoint-4"  # nobody's that can be told
    legacy.mkdir()
    rotator = Checkpointer(accelerator=None, output_dir=str(tmp_path), identity=RUN, total_limit=2)
    removed = rotator.rotate()
    assert [Path(p).name for p in removed] == ["checkpoint-5", "checkpoint-10"]
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["checkpoint-15", "checkpoint-20", "checkpoint-3", "checkpoint-4"]
    assert checkpoint.other_runs_checkpoints(str(tmp_path), checkpoint.run_id(RUN)) == [str(tmp_path / "checkpoint-3")]


# ============================================================================================ the run folder
def test_an_output_dir_that_is_a_file_or_lies_under_one_or_is_not_writable_is_refused_first(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    for output_dir in (tmp_path / "file", tmp_path / "file" / "run"):
        with pytest.raises(TrainingError, match=f"cannot be the run's folder: {tmp_path / 'file'} is a file, not a folder"):  # fmt: skip
            rundir.check_writable(str(output_dir))
    import tempfile

    def refuse(*args, **kwargs):  # what a read-only folder answers to a non-root user
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    with pytest.raises(TrainingError, match=f"the folder {tmp_path} does not accept new files; choose another"):
        rundir.check_writable(str(tmp_path / "new" / "run"))


def test_a_folder_holding_a_run_is_refused_to_a_new_run_and_cleared_only_on_request(tmp_path):
    fake_checkpoint(tmp_path, 5)
    (tmp_path / "model_index.json").write_text("{}")
    (tmp_path / "samples").mkdir()
    (tmp_path / "my-notes.txt").write_text("the user's own file")
    with rundir.RunDirectory(str(tmp_path)) as folder, pytest.raises(TrainingError) as error:
        folder.refuse_if_held()
    assert "holds a previous run's checkpoint-5" in str(error.value)
    assert "--resume_from_checkpoint latest" in str(error.value) and "--overwrite_output_dir" in str(error.value)
    with rundir.RunDirectory(str(tmp_path), overwrite=True) as folder:
        folder.refuse_if_held()  # cleared
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my-notes.txt"]


def claim_in_another_process(folder: Path) -> subprocess.CompletedProcess:
    code = "import sys; from anime_ddpm import rundir; rundir.RunDirectory(sys.argv[1]).__enter__()"
    return subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, timeout=120)


def test_two_runs_never_write_to_one_folder_at_once(tmp_path):
    with rundir.RunDirectory(str(tmp_path / "run")):
        other = claim_in_another_process(tmp_path / "run")
        assert other.returncode != 0
        assert re.search(r"Another training run \(pid \d+ on .*\) is writing to", other.stderr), other.stderr
        if os.fork() == 0:  # a forked child (a DataLoader worker) does not inherit the lock...
            time.sleep(3)
            os._exit(0)
    assert claim_in_another_process(tmp_path / "run").returncode == 0  # ...so the run's end frees the folder at once


def test_a_run_that_fails_before_writing_anything_leaves_no_empty_folder(tmp_path):
    with pytest.raises(RuntimeError), rundir.RunDirectory(str(tmp_path / "run")):
        raise RuntimeError("no data")
    assert not (tmp_path / "run").exists()


# ============================================================================================ real runs
BASE = [*TINY, "--train_batch_size", "4", "--checkpointing_steps", "5", "--logger", "none",
        "--save_images_steps", "0", "--lr_warmup_steps", "2", "--max_train_steps", "15"]  # fmt: skip
MARKER = "planted-pickle-ran"


class Planted:
    """A pickle that, when unpickled without weights_only, creates a marker file: what an attacker would do."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def plant(path: Path, marker: Path) -> None:
    """Replace one file of a checkpoint with a code-running pickle and re-sign the manifest, as a forger would."""
    torch.save({"state": Planted(str(marker))}, path)
    folder = next(p for p in path.parents if checkpoint.PATTERN.match(p.name))
    manifest = json.loads((folder / "checkpoint.json").read_text())
    manifest["files"][path.relative_to(folder).as_posix()] = {
        "size": path.stat().st_size,
        "sha256": checkpoint._sha256(path),
    }
    (folder / "checkpoint.json").write_text(json.dumps(manifest))


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("folders")
    base = root / "base"
    run = start([*BASE, "--output_dir", str(base)], root / "base.log").wait()
    assert run.returncode == 0, run.output[-3000:]

    def copy(name: str) -> Path:
        shutil.copytree(base, root / name)
        return root / name

    runs = {}
    runs["again"] = start([*BASE, "--output_dir", str(copy("again"))], root / "again.log")
    runs["overwrite"] = start([*BASE, "--output_dir", str(copy("overwrite")), "--overwrite_output_dir", "--seed", "7"], root / "overwrite.log")  # fmt: skip
    runs["other"] = start([*BASE, "--output_dir", str(copy("other")), "--seed", "7", "--train_batch_size", "2",
                           "--resume_from_checkpoint", "latest"], root / "other.log")  # fmt: skip
    damaged = copy("damaged")
    random_states = damaged / "checkpoint-15" / "random_states_0.pkl"
    random_states.write_bytes(random_states.read_bytes()[:100])  # once resumed without the RNG, without a word
    runs["damaged"] = start([*BASE, "--output_dir", str(damaged), "--resume_from_checkpoint", "latest"], root / "damaged.log")  # fmt: skip
    for name in ("rank_state_0.pt", "random_states_0.pkl", "optimizer.bin"):
        folder = copy(f"planted-{name}")
        plant(folder / "checkpoint-10" / name, root / f"{MARKER}-{name}")
        runs[f"planted-{name}"] = start([*BASE, "--output_dir", str(folder), "--resume_from_checkpoint",
                                         str(folder / "checkpoint-10")], root / f"planted-{name}.log")  # fmt: skip
    for run in runs.values():
        run.wait()
    return types.SimpleNamespace(root=root, base=base, runs=runs)


def one_sentence_error(run) -> str:
    lines = [line for line in run.output.splitlines() if line.startswith("train_with_accelerate: error:")]
    assert len(lines) == 1 and "Traceback" not in run.output, run.output[-3000:]
    return lines[0]


@pytest.mark.slow
def test_a_second_run_into_a_used_folder_refuses_and_leaves_it_untouched(folders):
    run = folders.runs["again"]
    assert run.returncode == 2
    assert "holds a previous run's 3 checkpoints (checkpoint-5 to checkpoint-15)" in one_sentence_error(run)
    for name in ("checkpoint-15/unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.safetensors"):
        assert (folders.root / "again" / name).read_bytes() == (folders.base / name).read_bytes()


@pytest.mark.slow
def test_overwrite_output_dir_starts_over_with_nothing_of_the_old_run_left(folders):
    run, folder = folders.runs["overwrite"], folders.root / "overwrite"
    assert run.returncode == 0, run.output[-3000:]
    owners = {checkpoint.verify(path)["run"]["seed"] for _, path in checkpoint.list_checkpoints(folder)}
    assert owners == {7} and len(checkpoint.list_checkpoints(folder)) == 3


@pytest.mark.slow
def test_resuming_with_other_settings_says_what_differs(folders):
    run = folders.runs["other"]
    assert run.returncode == 2
    message = one_sentence_error(run)
    assert "belongs to another run: --seed 0 (this run: 7), --train_batch_size 4 (this run: 2)" in message


@pytest.mark.slow
def test_a_damaged_latest_resumes_from_the_previous_checkpoint_and_ends_as_an_uninterrupted_run(folders):
    run = folders.runs["damaged"]
    assert run.returncode == 0, run.output[-3000:]
    assert "checkpoint-15: random_states_0.pkl has 100 bytes" in run.output
    assert "Resuming from" in run.output and "checkpoint-10" in run.output
    name = "unet/diffusion_pytorch_model.safetensors"
    a, b = load_file(folders.base / name), load_file(folders.root / "damaged" / name)
    assert all(torch.equal(a[key], b[key]) for key in a)  # steps 11-15 again, bitwise the same
    assert checkpoint.verify(folders.root / "damaged" / "checkpoint-15")  # rewritten whole


@pytest.mark.slow
@pytest.mark.parametrize("name", ["rank_state_0.pt", "random_states_0.pkl", "optimizer.bin"])
def test_no_planted_pickle_runs_on_resume(folders, name):
    run = folders.runs[f"planted-{name}"]
    assert not (folders.root / f"{MARKER}-{name}").exists(), "the planted code ran"
    assert run.returncode != 0
    assert "holds objects that are not plain data" in one_sentence_error(run)


def test_the_planted_pickle_would_run_without_weights_only(tmp_path):
    """The test's forgery is real: loaded the unsafe way, it runs."""
    path = tmp_path / "state.pt"
    torch.save({"state": Planted(str(tmp_path / "ran"))}, path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    torch.load(path, weights_only=False)
    assert (tmp_path / "ran").exists()
    with pytest.raises(InvalidCheckpoint):
        checkpoint.read_manifest(tmp_path)


def tensorboard_steps(logs: Path, tag: str = "loss") -> list[int]:
    """The steps TensorBoard shows for a scalar, after its reader applied the runs' purge events."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # The shallowest folder: the scalars; the hyper-parameters go to one subfolder per run.
    run_dir = min({path.parent for path in logs.rglob("events.out.tfevents.*")}, key=lambda path: len(path.parts))
    accumulator = EventAccumulator(str(run_dir), purge_orphaned_data=True)
    accumulator.Reload()
    return [event.step for event in accumulator.Scalars(tag)]


@pytest.mark.slow
def test_a_run_killed_after_its_checkpoint_resumes_into_one_timeline_of_metrics(tmp_path):
    # Killed (SIGKILL) at step 8, after checkpoint-5: steps 6-8 were logged and will be trained again.
    args = [*TINY, "--train_batch_size", "4", "--checkpointing_steps", "5", "--save_images_steps", "0",
            "--logging_steps", "1", "--logger", "tensorboard", "--max_train_steps", "10", "--output_dir", str(tmp_path)]  # fmt: skip
    killed = start([*args, "--debug_step_sleep", "0.5"], tmp_path.parent / "killed.log")
    wait_for(tmp_path / "checkpoint-5" / "checkpoint.json", killed)
    deadline = time.monotonic() + 60
    while (not (tmp_path / "metrics.jsonl").exists() or '"step": 8,' not in (tmp_path / "metrics.jsonl").read_text()) and time.monotonic() < deadline:  # fmt: skip
        time.sleep(0.05)
    os.killpg(killed.process.pid, 9)
    killed.wait()
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()][-1] >= 8

    resumed = start([*args, "--resume_from_checkpoint", "latest"], tmp_path.parent / "resumed.log").wait()
    assert resumed.returncode == 0, resumed.output[-3000:]
    assert "dropped" in resumed.output and "past step 5" in resumed.output
    assert "Trained 5 steps, from step 5 (resumed) to 10 (20 images" in resumed.output  # this process's share
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 11))
    assert tensorboard_steps(tmp_path / "logs") == list(range(1, 11))

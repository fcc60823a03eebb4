"""Real DDP on one CPU machine: `ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2` (gloo).

Runs of a tiny learned-variance UNet on 64 distinct random images, 2 ranks x batch 4 x accumulation 2 for 4
optimiser steps (exactly one pass), checkpoint every 2 steps: A uninterrupted, B SIGKILLed after checkpoint-2 and
resumed. Each rank writes its example hashes, learning rates and final parameter hash through the trainer's test
hook.
"""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from tests.test_training_runs import TINY, accelerate_launch, diffusers_lr_schedule, read_jsonl, start, wait_for


pytestmark = pytest.mark.slow
NUM_IMAGES = 64


def ddp_args(images, out, dump):
    return [
        *TINY,
        "--train_data_dir", str(images),
        "--train_batch_size", "4",
        "--gradient_accumulation_steps", "2",
        "--max_train_steps", "4",
        "--checkpointing_steps", "2",
        "--lr_warmup_steps", "2",
        "--learning_rate", "1e-3",
        "--variance_type", "learned_range",
        "--logging_steps", "2",
        "--save_images_steps", "0",
        "--output_dir", str(out),
        "--debug_dump_dir", str(dump),
    ]  # fmt: skip


def ddp_launcher(port: int) -> list[str]:
    return accelerate_launch("--multi_gpu", "--num_processes", "2", "--main_process_port", str(port))


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    """A: uninterrupted. B: the same, SIGKILLed (launcher and both ranks) after checkpoint-2, then resumed."""
    root = tmp_path_factory.mktemp("ddp")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(NUM_IMAGES):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(images / f"{i:03d}.png")
    run_a = start(ddp_args(images, root / "a", root / "dump-a"), root / "a.log", launcher=ddp_launcher(29517),
                  ACCELERATE_USE_CPU="true")  # fmt: skip
    # T: a 3-second budget instead of a step count; the ranks must agree on when to stop and on every LR.
    timed_args = ddp_args(images, root / "t", root / "dump-t")
    index = timed_args.index("--max_train_steps")
    timed_args[index : index + 2] = ["--max_train_time", "3s", "--debug_step_sleep", "0.1"]
    run_t = start(timed_args, root / "t.log", launcher=ddp_launcher(29520), ACCELERATE_USE_CPU="true")
    b1 = start([*ddp_args(images, root / "b", root / "dump-b1"), "--debug_step_sleep", "1"], root / "b1.log",
               launcher=ddp_launcher(29518), ACCELERATE_USE_CPU="true")  # fmt: skip
    wait_for(root / "b" / "checkpoint-2", b1)
    b1.kill()
    b2 = start([*ddp_args(images, root / "b", root / "dump-b2"), "--resume_from_checkpoint", "latest"],
               root / "b2.log", launcher=ddp_launcher(29519), ACCELERATE_USE_CPU="true").wait()  # fmt: skip
    run_a.wait()
    run_t.wait()
    for run in (run_a, b2, run_t):
        assert run.returncode == 0, run.output[-5000:]
    dumps = {
        name: [read_jsonl(root / f"dump-{name}" / f"rank{r}.jsonl") for r in range(2)] for name in ("a", "b2", "t")
    }
    return types.SimpleNamespace(root=root, a=root / "a", b=root / "b", dumps=dumps, output=run_a.output, b2=b2)


@pytest.fixture(scope="module")
def ddp_run(ddp_runs):
    return ddp_runs.a, ddp_runs.dumps["a"], ddp_runs.output


def test_two_processes_really_ran(ddp_run):
    _, ranks, output = ddp_run
    assert "x 2 process(es)" in output
    assert all(records[-1].get("final") for records in ranks)


def test_parameters_identical_on_both_ranks(ddp_run):
    _, ranks, _ = ddp_run
    assert ranks[0][-1]["params_sha256"] == ranks[1][-1]["params_sha256"]


def test_data_disjoint_and_complete(ddp_run):
    _, ranks, _ = ddp_run
    seen = [[h for record in records if "examples" in record for h in record["examples"]] for records in ranks]
    assert [len(s) for s in seen] == [32, 32]  # 4 steps x batch 4 x accumulation 2 on each rank
    assert not set(seen[0]) & set(seen[1])
    assert len(set(seen[0]) | set(seen[1])) == NUM_IMAGES


def test_lr_schedule_is_the_same_per_optimizer_step_on_every_rank(ddp_run):
    _, ranks, _ = ddp_run
    expected = diffusers_lr_schedule("cosine", warmup_steps=2, total_steps=4)
    for records in ranks:
        assert [r["lr"] for r in records if "lr" in r] == pytest.approx(expected)


def test_checkpoint_has_every_rank_and_the_pipeline_learns_its_variance(ddp_run):
    from anime_ddpm import AnimeDDPMPipeline

    out, _, _ = ddp_run
    files = {p.name for p in (out / "checkpoint-4").iterdir()}
    assert {"rank_state_0.pt", "rank_state_1.pt", "random_states_0.pkl", "random_states_1.pkl"} <= files
    states = [torch.load(out / "checkpoint-4" / f"rank_state_{r}.pt", weights_only=True) for r in range(2)]
    assert not torch.equal(states[0]["generator"], states[1]["generator"])  # different noise on each rank
    pipe = AnimeDDPMPipeline.from_pretrained(out)
    assert pipe.unet.config.out_channels == 6 and pipe.scheduler.config.variance_type == "learned_range"


def test_a_killed_ddp_run_resumes_every_rank_where_it_was(ddp_runs):
    assert "Resuming from" in ddp_runs.b2.output
    for name in ("checkpoint-4/unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.safetensors"):
        a, b = load_file(ddp_runs.a / name), load_file(ddp_runs.b / name)
        assert all(torch.equal(a[key], b[key]) for key in a), name
    for rank in range(2):  # after the resume each rank continues with exactly the examples it would have seen
        after_a = [r["examples"] for r in ddp_runs.dumps["a"][rank] if r.get("step", 0) > 2 and "examples" in r]
        after_b = [r["examples"] for r in ddp_runs.dumps["b2"][rank] if "examples" in r]
        assert after_a == after_b and len(after_b) == 2


def test_a_time_budget_stops_every_rank_at_the_same_step_with_the_same_lr(ddp_runs):
    """Each rank's own clock differs a little; rank 0's is broadcast, so the stop and the LR laid over the time agree."""
    steps = [[(r["step"], r["lr"]) for r in records if "lr" in r] for records in ddp_runs.dumps["t"]]
    assert len(steps[0]) >= 4 and steps[0] == steps[1]
    assert (ddp_runs.root / "t" / "model_index.json").exists()

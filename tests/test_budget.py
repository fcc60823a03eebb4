"""Wall-clock budgets (`--max_train_time`, anime_ddpm/budget.py): parsing, the LR laid over the time, and real runs
that stop on time with the usual final save and resume with the clock they had."""

from __future__ import annotations

import logging
import math
import shutil

import pytest
import torch

from anime_ddpm import checkpoint, state
from anime_ddpm.budget import TimeBudgetLR, TrainingClock, parse_duration
from anime_ddpm.config import TrainingConfig
from anime_ddpm.errors import TrainingError
from tests.test_training_runs import TINY, read_jsonl, read_summary, start


@pytest.mark.parametrize(
    "text, seconds",
    [("15", 900), ("1.5", 90), ("15m", 900), ("2h", 7200), ("1h30m", 5400), ("90s", 90), ("2m30s", 150),
     (" 15M ", 900), (0.5, 30)],
)  # fmt: skip
def test_durations_in_minutes_or_with_units(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "abc", "15 minutes", "m", "-5", "0", "1d"])
def test_bad_durations_name_the_accepted_forms(text):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_bad_budget_is_one_sentence_before_training():
    with pytest.raises(TrainingError, match=r"--max_train_time: '15 min' is not a duration: give minutes"):
        TrainingConfig(max_train_time="15 min").validate()


class FakeTime:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_clock_counts_only_the_loop_and_carries_over_a_resume():
    now = FakeTime()
    clock = TrainingClock(60.0, clock=now)
    now.now += 30  # set-up: not training time
    clock.restart()
    now.now += 45
    assert clock.elapsed() == 45 and not clock.spent()
    clock.warmup_end = 5.0
    state = clock.state_dict()

    resumed = TrainingClock(60.0, clock=now)
    resumed.load_state_dict(state)
    now.now += 10  # loading the checkpoint
    resumed.restart()
    assert resumed.elapsed() == 45 and resumed.warmup_end == 5.0
    now.now += 15
    assert resumed.spent() and resumed.elapsed() == 60
    assert not TrainingClock(None, clock=now).spent()


def test_lr_warms_up_in_steps_then_follows_the_schedule_over_the_time():
    """Cosine: peak after the warm-up steps, half the peak half-way through the remaining time, zero at the end."""
    now = FakeTime()
    clock = TrainingClock(100.0, clock=now)
    clock.restart()
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    schedule = TimeBudgetLR("cosine", optimizer, num_warmup_steps=4, clock=clock)
    assert optimizer.param_groups[0]["lr"] == 0  # before the first step, as diffusers' schedule starts
    for step in range(1, 4):
        now.now += 5
        optimizer.step()
        schedule.step(step, clock.elapsed())
        assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * step / 4)
    now.now += 5
    schedule.step(4, clock.elapsed())  # warm-up over at 20 s: the cosine spans the remaining 80 s
    assert clock.warmup_end == 20 and optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)
    schedule.step(5, 60.0)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(5e-4)
    schedule.step(6, 80.0)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 0.75)))
    schedule.step(7, 130.0)  # past the budget: the end of the schedule, never beyond
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0, abs=1e-12)
    assert schedule.get_last_lr() == [optimizer.param_groups[0]["lr"]]


def test_only_a_budget_means_no_step_limit_and_no_limit_means_fifteen_minutes(monkeypatch):
    from tests.test_training import _FakeAccelerator, _Stream, _Unsized

    monkeypatch.setattr(state, "logger", logging.getLogger("test"))
    lengths = [
        state.training_length(TrainingConfig(**settings), _Stream(), _Unsized(), _FakeAccelerator())
        for settings in ({"max_train_time": "15m"}, {"max_train_time": "15m", "max_train_steps": 7}, {})
    ]
    assert lengths == [None, 7, None]
    budgets = [TrainingConfig(**settings).budget_seconds() for settings in
               ({}, {"max_train_steps": 7}, {"num_epochs": 2}, {"max_train_time": "2h", "max_train_steps": 7})]  # fmt: skip
    assert budgets == [15 * 60, None, None, 7200]


# ============================================================================================ real runs
BUDGET = "4s"
BUDGET_RUN = [
    *TINY,
    "--train_batch_size", "4",
    "--max_train_time", BUDGET,
    "--debug_step_sleep", "0.2",  # steps of ~0.2 s whatever the machine: ~20 in the budget
    "--checkpointing_steps", "4",
    "--lr_warmup_steps", "2",
    "--learning_rate", "1e-3",
    "--logging_steps", "2",
    "--logger", "none",
    "--save_images_steps", "0",
]  # fmt: skip


@pytest.fixture(scope="module")
def budget_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("budget")
    whole = start([*BUDGET_RUN, "--output_dir", str(root / "whole"), "--debug_dump_dir", str(root / "dump-whole")],
                  root / "whole.log").wait()  # fmt: skip
    # Resume a copy of the uninterrupted run's checkpoint-4 with the same budget.
    (root / "resumed").mkdir()
    if (root / "whole" / "checkpoint-4").exists():
        shutil.copytree(root / "whole" / "checkpoint-4", root / "resumed" / "checkpoint-4")
    resumed = start([*BUDGET_RUN, "--output_dir", str(root / "resumed"), "--resume_from_checkpoint", "latest",
                     "--debug_dump_dir", str(root / "dump-resumed")], root / "resumed.log").wait()  # fmt: skip
    return root, whole, resumed


@pytest.mark.slow
def test_a_budgeted_run_stops_on_time_with_the_usual_final_save(budget_runs):
    root, whole, _ = budget_runs
    assert whole.returncode == 0, whole.output[-3000:]
    assert "fp32 precision, 1 CPU thread(s) per process (as set): 4 s of training of 4 images" in whole.output
    summary = read_summary(root / "whole")
    assert summary["status"] == "completed" and summary["mixed_precision"] == "no" and summary["cpu_threads"] == 1
    for name in ("model_index.json", "samples.png", "README.md", "unet/config.json"):
        assert (root / "whole" / name).exists(), name
    records = [r for r in read_jsonl(root / "dump-whole" / "rank0.jsonl") if "lr" in r]
    steps = len(records)
    assert 8 <= steps <= 25, steps  # 4 s of ~0.2 s steps (at least the checkpoint the resume needs)
    lrs = [r["lr"] for r in records]
    assert lrs[:3] == pytest.approx([0, 5e-4, 1e-3])  # warm-up in steps
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:]))  # then the cosine, laid over the time...
    clock = checkpoint.verify(root / "whole" / "checkpoint-4")["clock"]
    assert 0 < clock["elapsed"] < 4 and clock["warmup_end"] is not None
    # The checkpoint holds the loop's clock at its step (not, say, the seconds of a logging window).
    assert clock["elapsed"] == pytest.approx(records[3]["elapsed"], abs=0.15)
    assert lrs[-1] < 0.15e-3  # ...which ends near zero when the time is up


@pytest.mark.slow
def test_a_resumed_budgeted_run_keeps_the_clock_it_had(budget_runs):
    root, whole, resumed = budget_runs
    assert resumed.returncode == 0, resumed.output[-3000:]
    assert "Resuming from" in resumed.output
    whole = [r for r in read_jsonl(root / "dump-whole" / "rank0.jsonl") if "lr" in r]
    resumed_records = [r for r in read_jsonl(root / "dump-resumed" / "rank0.jsonl") if "lr" in r]
    assert resumed_records[0]["step"] == 5
    # The clock went on from the checkpoint's time (a restarted one would read ~0.2 s after step 5) and stopped the
    # run once the whole budget was spent, like the uninterrupted run; times are the loop's own, so a loaded machine
    # changes the number of steps, not these.
    at_checkpoint = checkpoint.verify(root / "resumed" / "checkpoint-4")["clock"]
    assert at_checkpoint["elapsed"] < resumed_records[0]["elapsed"] < at_checkpoint["elapsed"] + 1.5
    for records in (whole, resumed_records):
        assert 4.0 <= records[-1]["elapsed"] < 5.5, records[-1]
        assert all(r["elapsed"] < 4.0 for r in records[:-1])
    assert (root / "resumed" / "model_index.json").exists()


def test_durations_read_as_people_write_them():
    from anime_ddpm.budget import format_duration

    assert [format_duration(s) for s in (42.25, 249.734, 900, 7200 + 1800)] == ["42.2 s", "4.2 min", "15 min", "2.5 h"]

"""Helpers (no tests) shared by test_training.py and test_distributed.py: run train_with_accelerate.py in subprocesses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(ROOT / "train_with_accelerate.py")
HOOKS_SCRIPT = str(ROOT / "tests" / "train_with_hooks.py")  # the same trainer with test hooks (--debug_* flags)
ACCELERATE = str(Path(sys.executable).with_name("accelerate"))
# A tiny UNet at 16 px: a step takes milliseconds, so a run is mostly the ~5-9 s of start-up.
# fp32 unless a test says otherwise (the default is bf16 on CPUs that have it natively).
TINY = ["--model", "tiny", "--resolution", "16", "--sample_steps", "4", "--eval_batch_size", "4", "--num_samples", "4",
        "--mixed_precision", "no"]  # fmt: skip


def env(**extra: str) -> dict[str, str]:
    values = dict(os.environ)
    values.update(
        OMP_NUM_THREADS="1",  # tiny models gain nothing from threads and lose a lot on a shared machine
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        PYTHONUNBUFFERED="1",
        TOKENIZERS_PARALLELISM="false",
    )
    values.pop("ACCELERATE_MIXED_PRECISION", None)
    values.update(extra)
    return values


@dataclass
class Run:
    args: list[str]
    log: Path
    process: subprocess.Popen
    returncode: int | None = None

    def wait(self, timeout: float = 300) -> Run:
        self.returncode = self.process.wait(timeout=timeout)
        return self

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the run's whole process tree (torch's elastic launcher starts each rank in its own session)."""
        import psutil

        parent = psutil.Process(self.process.pid)
        processes = [parent, *parent.children(recursive=True)]
        for process in processes:
            try:
                process.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(processes[1:], timeout=30)
        self.wait()


def start(args: list[str], log: Path, launcher: list[str] | None = None, **extra_env: str) -> Run:
    """Start a training process in its own session (the test's signals never reach pytest); runs with a --debug_*
    flag go through the test hooks' script."""
    script = HOOKS_SCRIPT if any(arg.startswith("--debug_") for arg in args) else SCRIPT
    command = (launcher or [sys.executable]) + [script, *args]
    handle = open(log, "w")  # noqa: SIM115 - closed by the child's exit
    process = subprocess.Popen(
        command, cwd=ROOT, env=env(**extra_env), stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
    )
    handle.close()
    return Run(args, log, process)


def accelerate_launch(*flags: str) -> list[str]:
    return [ACCELERATE, "launch", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", *flags]


def wait_for(path: Path, run: Run, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if run.process.poll() is not None:
            raise AssertionError(f"the run ended before {path.name} appeared:\n{run.output[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear in {timeout} s")
        time.sleep(0.02)


def read_summary(output_dir: Path) -> dict:
    """The run's summary.json (steps, images, seconds, losses...)."""
    import json

    return json.loads((output_dir / "summary.json").read_text())


def read_jsonl(path: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def diffusers_lr_schedule(name: str, warmup_steps: int, total_steps: int, lr: float = 1e-3) -> list[float]:
    """The LR of each optimiser step under diffusers' scheduler of this name: what a run's logged LRs must equal."""
    import torch
    from diffusers.optimization import get_scheduler

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    schedule = get_scheduler(name, optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps)
    rates = []
    for _ in range(total_steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return rates

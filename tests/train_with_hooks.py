#!/usr/bin/env python
"""train_with_accelerate.py with test hooks, as `training.Callbacks`: the production loop carries none of them.

    --debug_dump_dir DIR          per-rank JSONL: per step the LR, clock and example hashes; at the end parameter hashes
    --debug_nan_batches 3,8-      replace these micro-batches (0-based, this process) by NaN
    --debug_kill_in_checkpoint N  SIGKILL the main process once checkpoint-N's files are written, before it is published
    --debug_step_sleep S          sleep S seconds after each optimiser step (steps of a known length)

Every other flag goes to the trainer unchanged.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from anime_ddpm.training import Callbacks, main  # noqa: E402


def parse_index_spec(spec: str | None) -> list[tuple[int, float]]:
    """'3,8-,10-12' -> [(3, 3), (8, inf), (10, 12)]."""
    ranges = []
    for part in filter(None, (spec or "").split(",")):
        start, dash, end = part.partition("-")
        ranges.append((int(start), int(start) if not dash else (float("inf") if not end else int(end))))
    return ranges


def parameters_sha256(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class TestHooks(Callbacks):
    def __init__(self, dump_dir: str | None, nan_batches: str | None, kill_in_checkpoint: int | None, sleep: float):
        self.nan_batches = parse_index_spec(nan_batches)
        self.kill_in_checkpoint, self.sleep = kill_in_checkpoint, sleep
        self.dump_dir, self.file, self.hashes = dump_dir, None, []

    def _write(self, state, **record) -> None:
        if self.dump_dir is None:
            return
        if self.file is None:
            os.makedirs(self.dump_dir, exist_ok=True)
            self.file = open(os.path.join(self.dump_dir, f"rank{state.accelerator.process_index}.jsonl"), "a")  # noqa: SIM115
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def on_micro_batch(self, index, x0):
        if any(start <= index <= end for start, end in self.nan_batches):
            x0 = torch.full_like(x0, float("nan"))
        if self.dump_dir is not None:
            images = x0.detach().float().cpu().numpy()
            self.hashes += [hashlib.sha1(image.tobytes()).hexdigest()[:16] for image in images]
        return x0

    def on_step_end(self, state, lr, elapsed):
        self._write(state, step=state.step, lr=lr, examples=self.hashes, elapsed=elapsed)
        self.hashes = []
        if self.sleep:
            time.sleep(self.sleep)

    def on_checkpoint_written(self, folder, step):
        if step == self.kill_in_checkpoint:  # a crash while the checkpoint is being written
            os.kill(os.getpid(), signal.SIGKILL)

    def on_train_end(self, state, final_unet):
        main_process = state.accelerator.is_main_process
        self._write(state, final=True, step=state.step, params_sha256=parameters_sha256(state.unet),
                    ema_sha256=parameters_sha256(final_unet) if main_process else None)  # fmt: skip


if __name__ == "__main__":
    hooks = argparse.ArgumentParser(add_help=False)
    hooks.add_argument("--debug_dump_dir")
    hooks.add_argument("--debug_nan_batches")
    hooks.add_argument("--debug_kill_in_checkpoint", type=int)
    hooks.add_argument("--debug_step_sleep", type=float, default=0.0)
    args, rest = hooks.parse_known_args()
    callbacks = TestHooks(args.debug_dump_dir, args.debug_nan_batches, args.debug_kill_in_checkpoint, args.debug_step_sleep)  # fmt: skip
    sys.exit(main(rest, callbacks, script=True))

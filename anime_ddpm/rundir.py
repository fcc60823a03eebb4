"""An output folder belongs to one run: checked, locked and, on request, cleared before any training starts.

A new run into a folder that holds another run's checkpoints or trained pipeline would overwrite some of them,
leave others to be mixed with its own, and let a later `--resume_from_checkpoint latest` continue the wrong run.
So a new run refuses such a folder (one sentence offering `--resume_from_checkpoint latest` or
`--overwrite_output_dir`), and two runs never write to one folder at the same time (a lock file).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket

from . import checkpoint
from .ema_snapshots import SNAPSHOT_DIR
from .errors import TrainingError
from .paths import why_not_writable


logger = logging.getLogger(__name__)

LOCK_FILE = ".anime-ddpm.lock"
# What a run writes at the top of its folder: removed by --overwrite_output_dir, nothing else is.
RUN_OUTPUTS = ("samples", "unet", "scheduler", "model_index.json", "pipeline.py", "README.md", "samples.png",
               "training_config.json", "metrics.jsonl", "summary.json", "logs", SNAPSHOT_DIR)  # fmt: skip


def check_writable(output_dir: str) -> None:
    """One sentence, before any work, when output_dir cannot be the run's folder."""
    reason = why_not_writable(output_dir)
    if reason:
        raise TrainingError(f"--output_dir {output_dir} cannot be the run's folder: {reason}; choose another.")


def previous_run(output_dir: str) -> str | None:
    """What the folder already holds of a run, in a few words, or None when a new run may start in it."""
    names = [os.path.basename(path) for _, path in checkpoint.list_checkpoints(output_dir)]
    if names:
        return names[0] if len(names) == 1 else f"{len(names)} checkpoints ({names[0]} to {names[-1]})"
    if os.path.isfile(os.path.join(output_dir, "model_index.json")):
        return "trained pipeline"
    snapshots = os.path.join(output_dir, SNAPSHOT_DIR)
    if os.path.isdir(snapshots) and os.listdir(snapshots):
        return "EMA snapshots"
    return None


class RunDirectory:
    """The main process's claim on output_dir for the length of a run (a context manager).

    On entry: the folder is created, locked against a second run and cleaned of temporary checkpoint folders;
    `overwrite` clears the previous run's outputs. A new run calls `refuse_if_held`. On exit: unlocked; a folder this
    run created and left empty (it failed before writing anything) is removed.
    """

    def __init__(self, output_dir: str, overwrite: bool = False, main_process: bool = True):
        self.output_dir, self.overwrite, self.main = output_dir, overwrite, main_process
        self._lock = None
        self._created = False

    def __enter__(self) -> RunDirectory:
        if not self.main:
            return self
        check_writable(self.output_dir)
        self._created = not os.path.exists(self.output_dir)
        try:
            os.makedirs(self.output_dir, exist_ok=True)
        except OSError as error:
            raise TrainingError(f"Cannot create --output_dir {self.output_dir}: {error.strerror or error}.") from None
        self._take_lock()
        try:
            checkpoint.remove_incomplete(self.output_dir)
            held = previous_run(self.output_dir)
            if held and self.overwrite:
                self._clear(held)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def refuse_if_held(self) -> None:
        """A new run may not start where another run's checkpoints or pipeline are: say how to go on instead."""
        held = previous_run(self.output_dir)
        if held:
            raise TrainingError(
                f"{self.output_dir} already holds a previous run's {held}: continue it with "
                "--resume_from_checkpoint latest, start over with --overwrite_output_dir (deletes them), or choose "
                "another --output_dir."
            )

    def __exit__(self, *exc) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None
            with contextlib.suppress(OSError):
                os.remove(os.path.join(self.output_dir, LOCK_FILE))
        if self._created:
            with contextlib.suppress(OSError):
                os.rmdir(self.output_dir)  # only if empty

    def _take_lock(self) -> None:
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            return
        path = os.path.join(self.output_dir, LOCK_FILE)
        handle = open(path, "a+")  # noqa: SIM115 - held open for the run
        try:
            # A POSIX record lock, not flock: forked DataLoader workers do not inherit it, so a killed run's
            # orphaned workers cannot keep its folder locked.
            fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise TrainingError(
                f"Another training run ({holder}) is writing to {self.output_dir}: wait for it to end, or choose "
                "another --output_dir."
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}")
        handle.flush()
        self._lock = handle

    def _clear(self, held: str) -> None:
        removed = [path for _, path in checkpoint.list_checkpoints(self.output_dir)]
        removed += [os.path.join(self.output_dir, n) for n in RUN_OUTPUTS if os.path.exists(os.path.join(self.output_dir, n))]  # fmt: skip
        for path in removed:
            if os.path.isdir(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
        logger.warning(
            f"--overwrite_output_dir: removed the previous run's {held} and outputs from {self.output_dir}."
        )

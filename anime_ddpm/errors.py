"""Failures said in one sentence: the trainer's exception type, and the first line of anyone else's."""

from __future__ import annotations


class TrainingError(RuntimeError):
    """A one-sentence, user-facing reason to stop; `exit_code` is 2 for bad settings, 1 for failures while training.

    `threads_stuck`: library threads may still be blocked in network I/O (a data outage), so the process should end
    without the interpreter's shutdown, which can abort in their C++ thread pools ("terminate called ...").
    """

    def __init__(self, message: str, exit_code: int = 2, threads_stuck: bool = False):
        super().__init__(message)
        self.exit_code = exit_code
        self.threads_stuck = threads_stuck


def first_line(error: BaseException | str, limit: int = 200) -> str:
    """The first line of an exception's message (or its type's name), cut to `limit` characters: what a user needs
    of a library's error inside our own sentence."""
    lines = str(error).strip().splitlines()
    message = lines[0] if lines else type(error).__name__
    return message if len(message) <= limit else message[: limit - 3] + "..."

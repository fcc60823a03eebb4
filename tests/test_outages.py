"""Waiting out network failures of the data stream (state.Batches, network.is_transient), with a fake clock.

The end-to-end tests, which cut a loopback Hub under a running training, are in tests/test_hub_streaming.py.
"""

from __future__ import annotations

import httpx2
import pytest
from huggingface_hub.errors import HfHubHTTPError

from anime_ddpm import network
from anime_ddpm.state import Batches, DataOutage


class FakeTime:
    def __init__(self):
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class FlakyLoader:
    """A resumable loader of `size` numbered batches per epoch whose reads fail while `down(time)` says so."""

    def __init__(self, size: int, time: FakeTime, down=lambda now, index: False, error=None):
        self.size, self.time, self.down = size, time, down
        self.error = error or httpx2.ConnectError("[Errno 111] Connection refused")
        self.epoch, self.position, self.resume_at = 0, 0, None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.resume_at = state["epoch"], state["position"]

    def __iter__(self):
        self.position, self.resume_at = (self.resume_at or 0), None
        while self.position < self.size:
            if self.down(self.time.now, self.position):
                raise self.error
            self.position += 1
            yield {"index": (self.epoch, self.position - 1)}


def take(batches: Batches, n: int) -> list:
    return [next(batches)["index"] for _ in range(n)]


def test_an_outage_is_waited_out_and_the_stream_goes_on_where_it_was(caplog):
    time = FakeTime()
    expected = take(Batches(FlakyLoader(5, FakeTime())), 12)  # no outage: 2 epochs and a bit
    outage = lambda now, index: index == 3 and now < 100  # noqa: E731 - down for 100 s at batch 3
    batches = Batches(FlakyLoader(5, time, outage), retry_seconds=600, clock=time.clock, sleep=time.sleep)
    assert take(batches, 12) == expected
    assert 100 <= time.now < 170 and batches.waited_seconds == time.now
    assert time.sleeps[:4] == [1, 2, 4, 8] and max(time.sleeps) <= 60  # backoff, capped
    waiting = [r.message for r in caplog.records if "waiting for it" in r.message]
    assert (
        waiting and len(waiting) <= 4 and "Connection refused" in waiting[0] and "--data_retry_minutes" in waiting[0]
    )
    assert any("back after" in r.message for r in caplog.records)


def test_an_outage_at_an_epoch_boundary_resumes_the_new_epoch():
    time = FakeTime()
    expected = take(Batches(FlakyLoader(3, FakeTime())), 7)
    loader = FlakyLoader(3, time, lambda now, index: index == 0 and 0 < now < 30)
    time.now = 1.0  # the first epoch is read before the outage
    batches = Batches(loader, retry_seconds=600, clock=time.clock, sleep=time.sleep)
    first = take(batches, 1)
    time.now = 0.0
    loader.down = lambda now, index: index == 0 and loader.epoch == 1 and now < 30
    assert first + take(batches, 6) == expected


def test_past_the_budget_the_outage_stops_training_in_one_sentence():
    time = FakeTime()
    loader = FlakyLoader(5, time, lambda now, index: index >= 2)
    batches = Batches(loader, retry_seconds=120, clock=time.clock, sleep=time.sleep)
    take(batches, 2)
    with pytest.raises(DataOutage) as error:
        next(batches)
    message = str(error.value)
    assert message.startswith("The training data has been unreachable for 2 min (") and "\n" not in message
    assert error.value.exit_code == 1 and time.now == pytest.approx(120)
    assert batches.state_dict() == {"epoch": 0, "loader": {"epoch": 0, "position": 2}}  # what a checkpoint records


def test_other_failures_are_not_waited_for():
    time = FakeTime()
    loader = FlakyLoader(5, time, lambda now, index: index == 1, error=OSError("No space left on device"))
    batches = Batches(loader, retry_seconds=600, clock=time.clock, sleep=time.sleep)
    next(batches)
    with pytest.raises(OSError, match="No space"):
        next(batches)
    assert time.sleeps == []


def test_checkpoints_record_the_position_of_the_last_optimiser_step():
    batches = Batches(FlakyLoader(10, FakeTime()))
    take(batches, 2)
    batches.mark_step()
    take(batches, 1)  # a micro-batch of the next, unfinished accumulation window
    assert batches.state_dict()["loader"]["position"] == 2


def _status_error(status: int) -> HfHubHTTPError:
    return HfHubHTTPError(f"{status}", response=httpx2.Response(status, request=httpx2.Request("GET", "http://hub")))


@pytest.mark.parametrize(
    "error, transient",
    [
        (httpx2.ConnectError("[Errno 111] Connection refused"), True),
        (httpx2.ReadTimeout("timed out"), True),
        (httpx2.RemoteProtocolError("peer closed connection without sending complete message body"), True),
        (ConnectionError("Server Disconnected"), True),  # datasets, after its own retries
        (RuntimeError("Cannot send a request, as the client has been closed."), True),  # huggingface_hub's race
        (_status_error(503), True),
        (_status_error(429), True),
        (_status_error(404), False),
        (_status_error(401), False),
        (RuntimeError("Caught ConnectError in DataLoader worker process 1.\nOriginal Traceback ..."), True),
        (RuntimeError("Caught ValueError in DataLoader worker process 1.\nOriginal Traceback ..."), False),
        (FileNotFoundError("data/train.parquet"), False),
        (ValueError("bad image"), False),
    ],
)
def test_what_counts_as_a_network_failure(error, transient):
    assert network.is_transient(error) is transient


def test_datasets_retries_streamed_reads_in_place_for_the_budget():
    import datasets

    before = (datasets.config.STREAMING_READ_MAX_RETRIES, datasets.config.STREAMING_OPEN_MAX_RETRIES)
    try:
        network.set_stream_retries(30 * 60)
        interval = datasets.config.STREAMING_READ_RETRY_INTERVAL
        assert datasets.config.STREAMING_READ_MAX_RETRIES * interval >= 30 * 60
    finally:
        datasets.config.STREAMING_READ_MAX_RETRIES, datasets.config.STREAMING_OPEN_MAX_RETRIES = before


def test_retry_warnings_of_an_outage_are_one_line_then_one_a_minute():
    import logging

    time = FakeTime()
    retry_filter = network.RetryLogFilter(clock=time.clock)

    def said(message: str) -> str | None:
        record = logging.LogRecord("huggingface_hub.utils._http", logging.WARNING, __file__, 1, message, None, None)
        return record.getMessage() if retry_filter.filter(record) else None

    lines = []
    for second in range(0, 150, 2):  # an outage of 150 s: a retry line every 2 s
        time.now = second
        lines.append(said("'[Errno 111] Connection refused' thrown while requesting GET http://hub/x"))
        lines.append(said("Retrying in 2s [Retry 2/5]."))
    shown = [line for line in lines if line]
    assert len(shown) == 3  # at the start, at 60 s, at 120 s
    assert shown[0].startswith("The data host does not answer ('[Errno 111] Connection refused'")
    assert shown[1].startswith("Still retrying the data host: 60 s so far")
    assert said("Something else entirely.") == "Something else entirely."
    time.now = 1000  # a new outage later is announced again
    assert said("Retrying in 1s [Retry 1/5].").startswith("The data host does not answer")


def test_the_stream_opening_and_the_mid_run_reopen_wait_alike(caplog):
    """One backoff for both waits (network.OutageWait): 1, 2, 4 ... 30 s, one line as the outage begins and then about
    one a minute, whether the Hub fails as the stream opens or mid-run."""
    outage = 10 * 60
    mid_run = FakeTime()
    loader = FlakyLoader(5, mid_run, lambda now, index: index == 1 and now < outage)
    batches = Batches(loader, retry_seconds=1800, clock=mid_run.clock, sleep=mid_run.sleep)
    with caplog.at_level("WARNING"):
        take(batches, 3)
    mid_run_lines = [r.message for r in caplog.records if "training data" in r.message]
    caplog.clear()

    opening = FakeTime()

    def open_stream():
        if opening.now < outage:
            raise ConnectionRefusedError("[Errno 111] Connection refused")
        return "the stream"

    with caplog.at_level("WARNING"):
        assert (
            network.retry_while_transient(open_stream, 1800, "The Hub", opening.clock, opening.sleep) == "the stream"
        )
    opening_lines = [r.message for r in caplog.records if "The Hub" in r.message]

    assert mid_run.sleeps == opening.sleeps
    assert mid_run.sleeps[:6] == [1, 2, 4, 8, 16, 30] and set(mid_run.sleeps[6:]) == {30}
    # A start line, a line about every minute of the 10, and the end: never one per retry (there are ~25).
    for lines in (mid_run_lines, opening_lines):
        assert 9 <= len(lines) <= 12 < len(mid_run.sleeps)
    assert "waiting for it" in opening_lines[0] and opening_lines[-1] == "The Hub answers again after 601 s."
    assert "waiting for it" in mid_run_lines[0] and "back after" in mid_run_lines[-1]

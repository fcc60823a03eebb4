"""The Hub, seen from here: is it reachable, is offline mode on, is a name a repo id.

Without a network, `datasets` and `from_pretrained` retry for many seconds before failing; the probe answers in
about `PROBE_TIMEOUT` so that a user hears one sentence at once. Data loading, metric weights and the command line
all ask these questions here.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import socket
import threading
import time
from urllib.parse import urlparse

from .budget import format_duration


logger = logging.getLogger(__name__)

PROBE_TIMEOUT = 2.0  # seconds for the TCP connection to the Hub endpoint (DNS included)
_TRUE = ("1", "ON", "YES", "TRUE")


def is_offline() -> bool:
    """huggingface_hub's or datasets' offline mode (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE), read now.

    huggingface_hub.constants.HF_HUB_OFFLINE is read once at import; the environment is read again so that a
    variable set later (a test, a notebook) counts too.
    """
    from huggingface_hub import constants

    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("HF_DATASETS_OFFLINE", ""))
    return bool(constants.HF_HUB_OFFLINE) or any(flag.strip().upper() in _TRUE for flag in flags)


def behind_proxy() -> bool:
    """A proxy may reach the Hub where a direct connection cannot: then the probe cannot decide."""
    names = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
    return any(os.environ.get(name) for name in names)


def is_repo_id(name: str) -> bool:
    """Whether `name` is a valid Hub repo id ("name" or "namespace/name"), by huggingface_hub's own rules."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def hub_reachable(timeout: float = PROBE_TIMEOUT) -> bool:
    """Whether a TCP connection to the Hub endpoint opens within `timeout` seconds; False at once when offline."""
    return why_unreachable(timeout) is None


NO_NETWORK = "no network"  # what `why_unreachable` says when the host name does not resolve or has no route


def why_unreachable(timeout: float = PROBE_TIMEOUT) -> str | None:
    """None when a TCP connection to the Hub endpoint opens within `timeout` seconds; else why not: "offline mode",
    NO_NETWORK (the name does not resolve, or no route: this machine has no network, which waiting will not cure),
    or "refused" / "no answer" (the host is there but does not serve: an outage, which waiting may cure).

    DNS lookups cannot be timed out, so the probe runs in a daemon thread.
    """
    if is_offline():
        return "offline mode"
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    result: list[str | None] = []

    def probe() -> None:
        try:
            socket.create_connection((url.hostname, port), timeout=timeout).close()
            result.append(None)
        except socket.gaierror:
            result.append(NO_NETWORK)
        except ConnectionRefusedError:
            result.append("refused")
        except OSError as error:  # ENETUNREACH, EHOSTUNREACH: no route; a timeout: no answer
            result.append(NO_NETWORK if error.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH) else "no answer")

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return result[0] if result else "no answer"


class OutageWait:
    """Waiting out one network outage: pauses of 1, 2, 4 ... 30 s for up to `budget` seconds from `started`, one
    line as it begins and about one a minute after. The stream's opening (`retry_while_transient`) and the mid-run
    reopen (`state.Batches`) both wait with it, so they back off and speak alike."""

    MAX_PAUSE = 30.0

    def __init__(self, budget: float, started: float | None = None, clock=time.monotonic, sleep=time.sleep):
        self.budget, self.clock, self.sleep = budget, clock, sleep
        self.started = clock() if started is None else started
        self.failures = 0
        self._said_at = 0.0

    @property
    def seconds(self) -> float:
        """How long the outage has lasted so far."""
        return self.clock() - self.started

    def exhausted(self) -> bool:
        return self.seconds >= self.budget

    def pause(self, warn, first: str, again) -> None:
        """Sleep the next backoff; warn(first) at the first failure, then warn(again(seconds so far)) once a minute."""
        outage = self.seconds
        self.failures += 1
        pause = min(self.MAX_PAUSE, 2.0 ** (self.failures - 1), max(0.1, self.budget - outage))
        if self.failures == 1:
            warn(first)
        elif outage + pause - self._said_at >= 60:
            self._said_at = outage + pause
            warn(again(outage + pause))
        self.sleep(pause)


def retry_while_transient(call, retry_seconds: float, what: str, clock=time.monotonic, sleep=time.sleep):
    """`call()`, again with backoff while it fails with a network failure (`is_transient`), for up to
    `retry_seconds`; then its last error."""
    wait = OutageWait(retry_seconds, clock=clock, sleep=sleep)
    while True:
        try:
            result = call()
        except Exception as error:
            if not retry_seconds or not is_transient(error) or wait.exhausted():
                raise
            wait.pause(
                logger.warning,
                f"{what} does not answer ({error}); waiting for it up to {format_duration(retry_seconds)} "
                "(--data_retry_minutes).",
                lambda seconds, error=error: (
                    f"{what} still does not answer ({error}): {format_duration(seconds)} so far."
                ),
            )
            continue
        if wait.failures:
            logger.warning(f"{what} answers again after {wait.seconds:.0f} s.")
        return result


# ============================================================================================= outages
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
TRANSIENT_CLASSES = frozenset({"TimeoutException", "NetworkError", "RemoteProtocolError", "ProxyError",
                               "ClientConnectionError", "ServerDisconnectedError", "ServerTimeoutError"})  # fmt: skip
# How a transient failure reads once a DataLoader worker has re-raised it in the main process (torch rebuilds the
# exception from its text, or makes it a RuntimeError): the names of the errors below, and their messages.
TRANSIENT_MARKERS = (
    "ConnectError", "ConnectTimeout", "ReadTimeout", "ReadError", "WriteError", "RemoteProtocolError",
    "NetworkError", "TimeoutException", "ConnectionError", "ConnectionResetError", "ConnectionRefusedError",
    "Server Disconnected", "client has been closed", "Temporary failure in name resolution",
    "503 Server Error", "502 Server Error", "504 Server Error", "500 Server Error", "429 Client Error",
)  # fmt: skip


def _chain(error: BaseException):
    seen: set[int] = set()
    stack = [error]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        stack += [current.__cause__, current.__context__]


def is_transient(error: BaseException) -> bool:
    """Whether a failure of the data stream is the network's (refused, dropped, timed out, 5xx, 429), which waiting
    may cure, rather than the data's or the code's."""
    from huggingface_hub.errors import HfHubHTTPError

    for current in _chain(error):
        if isinstance(current, (ConnectionError, TimeoutError)):
            return True
        names = {cls.__name__ for cls in type(current).__mro__}
        if names & TRANSIENT_CLASSES:  # httpx/httpx2 (what huggingface_hub retries itself), aiohttp, requests
            return True
        response = getattr(current, "response", None)  # HfHubHTTPError, httpx's HTTPStatusError
        if isinstance(current, HfHubHTTPError) or "HTTPStatusError" in names:
            if response is not None and getattr(response, "status_code", None) in TRANSIENT_STATUS:
                return True
        if isinstance(current, RuntimeError) and "client has been closed" in str(current):
            return True  # huggingface_hub closes its shared client after a refused connection, under other threads
    text = str(error)
    return "DataLoader worker" in text and any(marker in text for marker in TRANSIENT_MARKERS)


def set_stream_retries(seconds: float) -> None:
    """Make `datasets` retry opening and reading streamed files in place for about `seconds` (it gives up after
    about a minute and a half by default): a retried read keeps the stream's exact position, shuffle buffer
    included."""
    import datasets

    for kind in ("READ", "OPEN"):
        interval = getattr(datasets.config, f"STREAMING_{kind}_RETRY_INTERVAL")
        setattr(datasets.config, f"STREAMING_{kind}_MAX_RETRIES", max(1, math.ceil(seconds / interval)))


class RetryLogFilter(logging.Filter):
    """Collapses the retry warnings of huggingface_hub and datasets (one per request and per retry: thousands in a
    long outage) to one line when an outage starts and one a minute while it lasts."""

    PATTERNS = ("thrown while requesting", "Retrying in", "Got disconnected from remote data host",
                "Failed to connect to remote data host", "HTTP Error 5", "HTTP Error 429", "Rate limited")  # fmt: skip

    def __init__(self, clock=time.monotonic, every: float = 60.0):
        super().__init__()
        self.clock, self.every = clock, every
        self.started: float | None = None  # when the current outage's first retry was logged
        self.last_said = self.last_seen = -float("inf")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not any(pattern in message for pattern in self.PATTERNS):
            return True
        now = self.clock()
        if self.started is None or now - self.last_seen > self.every:  # a new outage
            self.started, self.last_said = now, now
            record.msg, record.args = f"The data host does not answer ({message}); retrying.", None
            self.last_seen = now
            return True
        self.last_seen = now
        if now - self.last_said >= self.every:
            self.last_said = now
            record.msg, record.args = f"Still retrying the data host: {now - self.started:.0f} s so far ({message}).", None  # fmt: skip
            return True
        return False


def quiet_retry_warnings() -> None:
    """Install RetryLogFilter on the loggers that report retries (once per process)."""
    retry_filter = RetryLogFilter()
    for name in ("huggingface_hub.utils._http", "datasets.utils.file_utils"):
        target = logging.getLogger(name)
        if not any(isinstance(f, RetryLogFilter) for f in target.filters):
            target.addFilter(retry_filter)

"""The Hub, seen from here: is it reachable, is offline mode on, is a name a repo id.

Without a network, `datasets` and `from_pretrained` retry for many seconds before failing; the probe answers in
about `PROBE_TIMEOUT` so that a user hears one sentence at once. Data loading, metric weights and the command line
all ask these questions here.
"""

from __future__ import annotations

import os
import socket
import threading
from urllib.parse import urlparse


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
    """Whether a TCP connection to the Hub endpoint opens within `timeout` seconds; False at once when offline.

    DNS lookups cannot be timed out, so the probe runs in a daemon thread.
    """
    if is_offline():
        return False
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((url.hostname, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(result and result[0])

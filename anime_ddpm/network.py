"""A quick answer to "is the Hub reachable?", shared by data loading and metric weights.

Without a network, `datasets` and `from_pretrained` retry for ~25 s before failing; this probe answers in seconds.
"""

from __future__ import annotations

import socket
import threading
from urllib.parse import urlparse


def hub_reachable(timeout: float = 2.0) -> bool:
    """Whether a TCP connection to the Hub endpoint opens within `timeout` seconds (DNS included).

    DNS lookups cannot be timed out, so the probe runs in a daemon thread.
    """
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

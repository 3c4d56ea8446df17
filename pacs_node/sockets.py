"""Socket options for the DICOM associations the node accepts, set when a connection
opens."""

from __future__ import annotations

import logging
import socket
from typing import Any

from pynetdicom import evt
from pynetdicom.events import Event

logger = logging.getLogger(__name__)


def no_delay(event: Event) -> None:
    """``EVT_CONN_OPEN`` handler: send without Nagle's delay (``TCP_NODELAY``).

    A DIMSE message ends in a short segment; with Nagle's algorithm on, the sender holds
    it until the peer acknowledges the previous one, and a peer that delays its
    acknowledgements (Linux: up to 40 ms) stalls every instance by that much. pynetdicom
    leaves the option off; dcmtk sets it when ``TCP_NODELAY`` is in its environment.
    """
    transport = event.assoc.dul.socket
    raw = getattr(transport, "socket", None)
    if raw is None:
        return
    try:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError as exc:  # not TCP (a test's socket pair), or closed meanwhile
        logger.debug("TCP_NODELAY not set: %s", exc)


# Bound to every association the node accepts (not to those it opens to send: see
# pacs_node/scu.py).
CONNECTION_HANDLERS: list[Any] = [(evt.EVT_CONN_OPEN, no_delay)]

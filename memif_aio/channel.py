"""The control channel: one asyncio Protocol per control connection.

It feeds the sans-I/O handshake machine (:mod:`.protocol`) with what the
:class:`~memif_aio.transport.SeqpacketTransport` delivers, carries out the
machine's outputs, and reports what happened through the callbacks it was
given.  It knows nothing of sockets, interfaces or queues: whoever creates it
decides what an accepted INIT, an established session or a close mean.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Union

from .protocol import (
    ClientHandshake,
    Closed,
    Established,
    InitAccepted,
    Output,
    SendMessage,
    ServerHandshake,
    Session,
)
from .transport import SeqpacketTransport
from .wire import to_text

log = logging.getLogger("memif_aio")

#: ``on_init(channel, interface_id)``: a server channel's INIT named an interface
InitCallback = Callable[["ControlChannel", int], None]
#: ``on_established(channel, session)``: the handshake completed
EstablishedCallback = Callable[["ControlChannel", Session], None]
#: ``on_closed(channel, reason, by_peer)``: the connection ended (once)
ClosedCallback = Callable[["ControlChannel", str, bool], None]


def _ignore_init(channel: ControlChannel, interface_id: int) -> None:
    return None


class ControlChannel(asyncio.Protocol):
    """asyncio Protocol for one control connection (server or client side)."""

    def __init__(self, machine: Union[ServerHandshake, ClientHandshake],
                 handshake_timeout: float, *,
                 on_established: EstablishedCallback, on_closed: ClosedCallback,
                 on_init: InitCallback = _ignore_init,
                 peer_credentials: Any = None) -> None:
        self.machine = machine
        self.transport: SeqpacketTransport | None = None
        #: PeerCredentials of an accepted connection (None for a client channel)
        self.peer_credentials = peer_credentials
        self._on_init = on_init
        self._on_established = on_established
        self._on_closed = on_closed
        self._timeout = handshake_timeout
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    # --- asyncio.Protocol -----------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, SeqpacketTransport)
        self.transport = transport
        self._timer = asyncio.get_running_loop().call_later(self._timeout, self._on_timeout)
        self._apply(self.machine.start())

    def message_received(self, data: bytes, fds: list[int], truncated: bool) -> None:
        self._apply(self.machine.receive(data, fds, truncated))

    def eof_received(self) -> bool | None:
        self._apply(self.machine.eof())
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._apply(self.machine.eof())

    # --- local actions ------------------------------------------------------------
    def close(self, reason: str) -> None:
        """Send DISCONNECT(reason) and close."""
        self._apply(self.machine.close(reason))

    def _on_timeout(self) -> None:
        self._timer = None
        self._apply(self.machine.timeout())

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _apply(self, outputs: list[Output]) -> None:
        for out in outputs:
            if isinstance(out, SendMessage):
                assert self.transport is not None
                self.transport.send_message(out.data, out.fd)
            elif isinstance(out, InitAccepted):
                log.debug("INIT accepted for interface %d from %r", out.interface_id,
                          to_text(out.peer_name))
                self._on_init(self, out.interface_id)
            elif isinstance(out, Established):
                self._cancel_timer()
                self._on_established(self, out.session)
            elif isinstance(out, Closed):
                self._cancel_timer()
                self._closed = True
                if self.transport is not None:
                    self.transport.close()
                self._on_closed(self, out.reason, out.by_peer)

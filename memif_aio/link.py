"""One established connection: its control channel, session, rings and queues.

An :class:`~memif_aio.Interface` has at most one :class:`Link` at a time.  The
link is created when the handshake completes and is torn down exactly once,
when its control channel closes; everything that belongs to that connection
(queues, shared memory, eventfds) lives and dies with it, so nothing of one
connection can leak into the next.
"""

from __future__ import annotations

from collections.abc import Callable

from .channel import ControlChannel
from .config import RxMode
from .errors import Disconnected, ProtocolViolation
from .protocol import Session
from .queue import RxQueue, Tap, TxQueue


class Link:
    """The owner of one established connection (internal).

    ``on_violation(exc)`` hears about every protocol violation found on the
    data path (the link then disconnects with that reason)."""

    def __init__(self, interface_id: int, channel: ControlChannel, session: Session, *,
                 rx_mode: RxMode, tx_timeout: float | None, taps: list[Tap],
                 on_violation: Callable[[ProtocolViolation], None]) -> None:
        self._id = interface_id
        self._channel = channel
        self._session = session
        self._on_violation = on_violation
        self._down: Disconnected | None = None
        self._rx = tuple(RxQueue(self, i, ring, session.rx_eventfds[i], rx_mode, taps)
                         for i, ring in enumerate(session.rx))
        self._tx = tuple(TxQueue(self, i, ring, session.tx_eventfds[i], tx_timeout, taps)
                         for i, ring in enumerate(session.tx))

    # --- what the interface reads ---------------------------------------------------
    @property
    def interface_id(self) -> int:
        return self._id

    @property
    def channel(self) -> ControlChannel:
        return self._channel

    @property
    def session(self) -> Session:
        return self._session

    @property
    def rx_queues(self) -> tuple[RxQueue, ...]:
        return self._rx

    @property
    def tx_queues(self) -> tuple[TxQueue, ...]:
        return self._tx

    @property
    def is_down(self) -> bool:
        return self._down is not None

    # --- actions --------------------------------------------------------------------
    def protocol_violation(self, reason: str) -> None:
        """A check on the data path failed: disconnect with that reason (QueueOwner)."""
        if self._down is not None:
            return
        # reported (and logged) as a background error, then DISCONNECT with the reason
        self._on_violation(ProtocolViolation(f"interface {self._id}: peer violated the "
                                             f"protocol: {reason}"))
        self._channel.close(reason)

    def close(self, reason: str) -> None:
        """Send DISCONNECT(reason); :meth:`teardown` follows when the channel reports."""
        self._channel.close(reason)

    def teardown(self, reason: str, by_peer: bool) -> Disconnected:
        """The channel closed: wake every pending call with :class:`Disconnected`,
        then release the rings, unmap the memory and close the eventfds (once)."""
        if self._down is not None:
            return self._down
        exc = Disconnected(reason, by_peer)
        self._down = exc
        # Every step runs even if one before it raised (a bug): a queue left alive would
        # touch unmapped memory, and a skipped close would leak the rings' fds and memory.
        # The first error is raised once everything is released.
        failed: BaseException | None = None
        for q in (*self._rx, *self._tx):
            try:
                q._kill(exc)
            except BaseException as err:  # re-raised below
                failed = failed or err
        try:
            self._session.close()
        except BaseException as err:  # re-raised below
            failed = failed or err
        if failed is not None:
            raise failed
        return exc

"""Typed errors.  Every error carries what happened and, when known, the peer's reason.

A reason may be the peer's own text (its DISCONNECT string).  ``reason`` and the
message (``str(exc)``) carry it escaped by :func:`memif_aio._text.printable`, so that
printing or logging an error never sends a peer's control characters to a terminal;
``raw_reason`` keeps the text exactly as received (see docs/security.md).
"""

from __future__ import annotations

from ._text import printable


class MemifError(Exception):
    """Base class of every error raised by memif_aio."""


class ProtocolViolation(MemifError):
    """The peer sent something invalid.  ``reason`` is what we tell the peer in DISCONNECT
    (escaped: it may quote what the peer sent)."""

    def __init__(self, reason: str) -> None:
        self.raw_reason = reason
        self.reason = printable(reason)
        super().__init__(self.reason)


class Disconnected(MemifError):
    """The link is down (or went down while an operation was pending).

    ``reason`` is the peer's DISCONNECT string, or ours, or a description of
    the event (EOF, handshake timeout, ...), escaped for display; ``raw_reason`` is
    the same text unescaped; ``by_peer`` says who ended it.
    Wait for the next connection with ``await interface.wait_connected()``.
    """

    def __init__(self, reason: str = "not connected", by_peer: bool = False) -> None:
        self.raw_reason = reason
        self.reason = printable(reason)
        super().__init__(self.reason)
        self.by_peer = by_peer


class NotConnected(Disconnected):
    """An operation needs a connected interface and there is none yet."""


class ConnectionRefused(MemifError):
    """A connect attempt failed before the link came up.

    ``reason`` is the peer's DISCONNECT string when it refused the handshake
    (``by_peer`` True: "incorrect secret", "mode mismatch", ...), or ours
    (the socket could not be reached, the handshake timed out, the peer broke
    the protocol): escaped for display, with ``raw_reason`` exact, as for
    :class:`Disconnected`.  A slave keeps retrying in the background; fix the
    cause (secret, mode, id, socket path) or delete the interface.
    """

    def __init__(self, reason: str, by_peer: bool = False) -> None:
        self.raw_reason = reason
        self.reason = printable(reason)
        self.by_peer = by_peer
        super().__init__(self.reason)


class InterfaceDeleted(MemifError):
    """The interface was deleted (by :meth:`Interface.delete`, its ``async with``
    block, or its socket's deletion): create a new one to connect again."""


class WouldBlock(MemifError):
    """A ``*_nowait`` call found nothing to read or no room to write."""


class PacketTooLarge(MemifError, ValueError):
    """A packet does not fit the ring even with every slot chained."""


class ListenerError(MemifError):
    """Something happened to a socket's listener in the background.

    Never raised to a caller: reported through the socket's background-error path (logged,
    at most one line per kind every few seconds, with a count of the ones not logged).
    """


class AcceptFailed(ListenerError):
    """``accept()`` failed (``errno``; EMFILE/ENFILE/ENOBUFS/ENOMEM when the process or the
    system is out of resources).  The listener stops reading and retries in ``retry_in``
    seconds, doubling up to 1 s, so a full fd table costs no CPU; free fds (or raise
    ``RLIMIT_NOFILE``) and it serves again by itself."""

    def __init__(self, message: str, errno: int | None, retry_in: float) -> None:
        super().__init__(message)
        self.errno = errno
        self.retry_in = retry_in


class ListenerLost(ListenerError):
    """The listener's socket file was deleted or replaced (``path``).

    ``recreated`` is True when a new listener now serves ``path`` again; False when it could
    not be re-created (the path belongs to someone else now, or bind failed): new slaves
    cannot reach this socket until the path is free again, which is re-checked every second.
    Established links are not affected either way."""

    def __init__(self, message: str, path: str, recreated: bool) -> None:
        super().__init__(message)
        self.path = path
        self.recreated = recreated


class ConnectionEvicted(ListenerError):
    """A connection that had not sent INIT yet was closed to make room for a new one
    (too many connections waiting for INIT on the socket, or from one uid).
    ``credentials`` is the evicted peer's ``PeerCredentials`` (or None)."""

    def __init__(self, message: str, credentials: object) -> None:
        super().__init__(message)
        self.credentials = credentials

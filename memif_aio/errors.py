"""Typed errors.  Every error carries what happened and, when known, the peer's reason."""

from __future__ import annotations


class MemifError(Exception):
    """Base class of every error raised by memif_aio."""


class ProtocolViolation(MemifError):
    """The peer sent something invalid.  ``reason`` is what we tell the peer in DISCONNECT."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Disconnected(MemifError):
    """The link is down (or went down while an operation was pending).

    ``reason`` is the peer's DISCONNECT string, or ours, or a description of
    the event (EOF, handshake timeout, ...); ``by_peer`` says who ended it.
    Wait for the next connection with ``await interface.wait_connected()``.
    """

    def __init__(self, reason: str = "not connected", by_peer: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.by_peer = by_peer


class NotConnected(Disconnected):
    """An operation needs a connected interface and there is none yet."""


class ConnectionRefused(MemifError):
    """A connect attempt failed before the link came up (peer refused, socket missing)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class WouldBlock(MemifError):
    """A ``*_nowait`` call found nothing to read or no room to write."""


class PacketTooLarge(MemifError, ValueError):
    """A packet does not fit the ring even with every slot chained."""

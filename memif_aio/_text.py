"""Peer-controlled text made safe to show: one helper for every display and log site.

A peer chooses its application name (HELLO/INIT), its interface name (CONNECT/
CONNECTED) and its DISCONNECT reason.  Printed raw, those bytes reach an operator's
terminal or a log file: ``"\\x1b[2J"`` clears the screen, ``"\\x1b]0;...\\x07"`` retitles
the window, a newline forges a log line, U+202E reverses the text after it.

:func:`printable` keeps ordinary text (any letter, digit, mark, punctuation or symbol
of any script, and the space) and writes everything else as an escape: ``\\xNN`` for
code points up to U+00FF (C0 and C1 controls, DEL, NBSP, soft hyphen), ``\\uNNNN`` /
``\\UNNNNNNNN`` beyond (format characters such as bidi overrides, line and paragraph
separators, unassigned and private-use code points, lone surrogates).  Bytes are
decoded as UTF-8 first; a byte that is not valid UTF-8 becomes ``\\xNN`` as well.

The result contains only characters for which :meth:`str.isprintable` holds, and
applying :func:`printable` again changes nothing (backslashes are kept as they are,
so that escaping twice, at a raise site and again at a log site, is harmless).  The
price is that a peer that sends the four characters ``\\x1b`` looks like one that sent
an ESC; the exact text stays available where the library keeps it
(:attr:`memif_aio.Disconnected.raw_reason`, the status endpoint's JSON).
"""

from __future__ import annotations

__all__ = ["printable"]


def _escape(ch: str) -> str:
    n = ord(ch)
    if n <= 0xFF:
        return f"\\x{n:02x}"
    if n <= 0xFFFF:
        return f"\\u{n:04x}"
    return f"\\U{n:08x}"


def printable(s: str | bytes) -> str:
    """``s`` with every non-printable character escaped (see the module docstring).

    Cheap for the common case: text that is already printable is returned as is.
    """
    if isinstance(s, (bytes, bytearray, memoryview)):
        s = bytes(s).decode("utf-8", "backslashreplace")
    elif not isinstance(s, str):
        s = str(s)
    if s.isprintable():
        return s
    return "".join(ch if ch.isprintable() else _escape(ch) for ch in s)

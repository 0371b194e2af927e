"""Terminal escapes from the peer never reach a terminal or a log (issue 9, item 8).

A hostile peer (``tests/hostile.py``) names itself and its interface, and says
DISCONNECT, with text full of control characters: a screen clear, a window-title
OSC ended by BEL, the C1 CSI, CR/LF (log forging), a bidi override and a byte that
is not UTF-8.  Wherever memif_aio shows or logs that text - ``format_show``, the
``memif-aio show`` tool (text and ``--json``), the status endpoint's answer, the
log records, the messages of the exceptions that carry the peer's reason - no
control character may come out; the peer's text stays readable, escaped; the
exact text stays available (``raw_reason``, the accessors, the JSON document).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import sys
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager

import pytest
from hostile import HostileClient, HostileServer, T, handshaken_client, raw

from memif_aio import (
    Arguments,
    ConnectionRefused,
    Disconnected,
    Interface,
    ProtocolViolation,
    Socket,
)
from memif_aio._text import printable
from memif_aio.cli.status import StatusEndpoint, format_show
from memif_aio.wire import MsgHello, MsgType

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: 21 bytes: fits every name field (32) and the reason (96)
EVIL = b"\x1b[2J\x1b]0;pwned\x07\xc2\x9b\r\n\xe2\x80\xae\xff"
EVIL_TEXT = EVIL.decode("utf-8", "replace")  # what the accessors return
EVIL_NAME = b"app" + EVIL
EVIL_IF = b"if" + EVIL
EVIL_REASON = b"bye" + EVIL + b" for now"
#: how they look once escaped (the decoded text, with U+FFFD for the bad byte)
NAME_SHOWN = printable(EVIL_NAME.decode("utf-8", "replace"))
IF_SHOWN = printable(EVIL_IF.decode("utf-8", "replace"))
REASON_SHOWN = printable(EVIL_REASON.decode("utf-8", "replace"))

both_loops = pytest.mark.both_loops


def controls(text: str, lines: bool = False) -> list[str]:
    """The characters of ``text`` that a terminal could act on (newlines allowed
    between the lines of a multi-line output when ``lines``)."""
    return [c for c in text if not c.isprintable() and not (lines and c == "\n")]


def bad_bytes(data: bytes) -> list[int]:
    """C0 controls (but newline), DEL, and the UTF-8 encodings of C1 controls."""
    out = [b for b in data if (b < 0x20 and b != 0x0A) or b == 0x7F]
    out += [data[i + 1] for i in range(len(data) - 1)
            if data[i] == 0xC2 and 0x80 <= data[i + 1] <= 0x9F]
    return out


def check_records(records: Iterable[logging.LogRecord]) -> None:
    for r in records:
        text = r.getMessage()
        if r.exc_info:
            text += logging.Formatter().formatException(r.exc_info)
        assert not controls(text, lines=bool(r.exc_info)), text


# --------------------------------------------------------------------------
# The helper
# --------------------------------------------------------------------------
def test_printable_escapes_controls_and_keeps_text() -> None:
    assert printable("plain ascii, ü, 日本語, emoji 🦆, ½ → ∞") == \
        "plain ascii, ü, 日本語, emoji 🦆, ½ → ∞"
    assert printable("\x1b[2J\x1b]0;pwned\x07") == "\\x1b[2J\\x1b]0;pwned\\x07"
    assert printable("a\r\nb\tc\x00d\x7fe") == "a\\x0d\\x0ab\\x09c\\x00d\\x7fe"
    assert printable("\x9b\x85\xa0\xad") == "\\x9b\\x85\\xa0\\xad"  # C1, NBSP, soft hyphen
    assert printable("\u202eevil\u2028\u200b\ue000") == "\\u202eevil\\u2028\\u200b\\ue000"
    assert printable("\U000e0001") == "\\U000e0001"  # a tag character (format, Cf)
    assert printable(b"ok \xff\x1b") == "ok \\xff\\x1b"  # not UTF-8: \xNN as well
    assert printable(EVIL) == "\\x1b[2J\\x1b]0;pwned\\x07\\x9b\\x0d\\x0a\\u202e\\xff"
    for s in (EVIL, EVIL_TEXT, "x\x1by", "\\x1b"):
        once = printable(s)
        assert once.isprintable()
        assert printable(once) == once  # idempotent: escaping twice is harmless


def test_errors_carry_escaped_and_raw_reason() -> None:
    for cls in (Disconnected, ConnectionRefused, ProtocolViolation):
        exc = cls(EVIL_TEXT)
        assert exc.reason == printable(EVIL_TEXT) == str(exc)
        assert exc.raw_reason == EVIL_TEXT
        assert not controls(str(exc)) and not controls(repr(exc))


# --------------------------------------------------------------------------
# Against a hostile peer
# --------------------------------------------------------------------------
@asynccontextmanager
async def evil_slave(path: str) -> AsyncIterator[tuple[Interface, HostileClient]]:
    """A memif_aio master connected to a hostile client named EVIL_NAME / EVIL_IF."""
    async with Socket(path) as sock:
        itf = sock.new_interface(Arguments(id=0, is_master=True, name="py-master"))
        async with handshaken_client(path, name=EVIL_NAME, if_name=EVIL_IF) as (hc, _mem):
            await itf.wait_connected(T)
            yield itf, hc


@both_loops
async def test_master_shows_and_logs_a_hostile_slave_escaped(
        sock_path: str, no_leaks: None, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="memif_aio")
    async with evil_slave(sock_path) as (itf, hc):
        assert itf.get_remote_name() == "app" + EVIL_TEXT  # the accessors keep the text
        assert itf.get_peer_name() == "if" + EVIL_TEXT
        shown = format_show([itf])
        assert not controls(shown, lines=True), shown
        assert f'remote-name "{NAME_SHOWN}"' in shown
        assert f'remote-interface "{IF_SHOWN}"' in shown
        reader = asyncio.ensure_future(itf.get_rx_queue(0).read_packet())
        await asyncio.sleep(0)
        await hc.send(raw(MsgType.DISCONNECT, code=1, string=EVIL_REASON))
        await hc.expect_eof()
        with pytest.raises(Disconnected) as info:
            await asyncio.wait_for(reader, T)
        reason = EVIL_REASON.decode("utf-8", "replace")
        assert info.value.raw_reason == reason and info.value.by_peer
        assert info.value.reason == str(info.value) == REASON_SHOWN
        assert not controls(str(info.value))
        assert itf.get_disconnect_reason() == reason
        shown = format_show([itf])
        assert not controls(shown, lines=True), shown
        assert f'last reason "{REASON_SHOWN}"' in shown
        with pytest.raises(Disconnected) as info:  # a later call on the dead queue
            itf.get_rx_queue(0).read_packet_nowait()
        assert info.value.raw_reason == reason and not controls(str(info.value))
        with pytest.raises(TimeoutError) as timeout:
            await itf.wait_connected(0.05)
        assert REASON_SHOWN in str(timeout.value)
        assert not controls(str(timeout.value))
    messages = [r.getMessage() for r in caplog.records]
    assert any(REASON_SHOWN in m for m in messages), messages
    assert any(repr(EVIL_NAME.decode("utf-8", "replace")) in m for m in messages), messages
    check_records(caplog.records)


@both_loops
async def test_pre_init_disconnect_is_logged_escaped(
        sock_path: str, no_leaks: None, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="memif_aio")
    async with Socket(sock_path) as sock:
        sock.new_interface(Arguments(id=0, is_master=True))
        async with await HostileClient.connect(sock_path) as hc:
            await hc.send(raw(MsgType.DISCONNECT, code=1, string=EVIL_REASON))
            await hc.expect_eof()
        for _ in range(100):
            if any("before INIT" in r.getMessage() for r in caplog.records):
                break
            await asyncio.sleep(0.01)
    logged = [r.getMessage() for r in caplog.records if "before INIT" in r.getMessage()]
    assert logged and REASON_SHOWN in logged[0], logged
    check_records(caplog.records)


@both_loops
async def test_slave_shows_and_logs_a_hostile_master_escaped(
        sock_dir: str, no_leaks: None, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="memif_aio")
    path = os.path.join(sock_dir, "evil.sock")
    async with HostileServer(path) as srv, Socket(path) as sock:
        itf = sock.new_interface(Arguments(id=0, is_master=False, name="py-slave",
                                           reconnect_min_delay=5, reconnect_max_delay=5))
        # first attempt: refused during the handshake with the hostile reason
        conn = await srv.accept()
        await conn.send(MsgHello(EVIL_NAME))
        await conn.expect(MsgType.INIT)
        await conn.send(raw(MsgType.DISCONNECT, code=1, string=EVIL_REASON))
        reason = EVIL_REASON.decode("utf-8", "replace")
        for _ in range(300):
            if itf.get_disconnect_reason() == reason:
                break
            await asyncio.sleep(0.01)
        assert itf.get_disconnect_reason() == reason
        shown = format_show([itf])
        assert not controls(shown, lines=True), shown
        assert REASON_SHOWN in shown
        with pytest.raises(TimeoutError) as timeout:
            await itf.wait_connected(0.05)
        assert not controls(str(timeout.value)) and REASON_SHOWN in str(timeout.value)
        conn.close()
        srv.conns.clear()
        # second attempt: connected to a master named EVIL_NAME / EVIL_IF
        await itf.disconnect()
        # request_connection() returns once the link is up: serve it meanwhile
        request = asyncio.ensure_future(itf.request_connection())
        conn = await srv.accept()
        await conn.serve(hello=MsgHello(EVIL_NAME), if_name=EVIL_IF)
        await asyncio.wait_for(request, T)
        await itf.wait_connected(T)
        assert itf.get_peer_name() == "if" + EVIL_TEXT
        shown = format_show([itf])
        assert not controls(shown, lines=True), shown
        assert f'remote-name "{NAME_SHOWN}"' in shown
        assert f'remote-interface "{IF_SHOWN}"' in shown
        await itf.disconnect()
    check_records(caplog.records)
    assert any(REASON_SHOWN in r.getMessage() for r in caplog.records)


@both_loops
async def test_show_tool_and_status_endpoint_escape_a_hostile_peer(
        sock_path: str, no_leaks: None) -> None:
    async with evil_slave(sock_path) as (itf, hc), \
            StatusEndpoint(sock_path, lambda: [itf], app="escapes-test") as ep:
        assert ep.name == sock_path + ".ctl"
        # the endpoint's answer: JSON escapes every control character, the text is exact
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.setblocking(False)
            loop = asyncio.get_running_loop()
            await loop.sock_connect(s, ep.name)
            await loop.sock_sendall(s, b'{"request": "status"}\n')
            answer = b""
            while chunk := await asyncio.wait_for(loop.sock_recv(s, 65536), T):
                answer += chunk
        finally:
            s.close()
        assert bad_bytes(answer) == [], answer
        (doc,) = json.loads(answer)["interfaces"]
        assert doc["remote_name"] == "app" + EVIL_TEXT and doc["peer_name"] == "if" + EVIL_TEXT

        env = {**os.environ, "PYTHONPATH": ROOT}
        for extra in ([], ["--json"]):
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "memif_aio", "show", "--socket", sock_path, *extra,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
            try:
                out, err = await asyncio.wait_for(proc.communicate(), 30)
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            assert proc.returncode == 0, err
            assert bad_bytes(out) == [] and bad_bytes(err) == [], (out, err)
            if extra:
                (process,) = json.loads(out)
                assert process["interfaces"][0]["peer_name"] == "if" + EVIL_TEXT
            else:
                text = out.decode()
                assert f'remote-name "{NAME_SHOWN}"' in text, text
                assert f'remote-interface "{IF_SHOWN}"' in text, text
        await hc.send(raw(MsgType.DISCONNECT, code=1, string=EVIL_REASON))
        await hc.expect_eof()
        for _ in range(300):
            if not itf.is_connected():
                break
            await asyncio.sleep(0.01)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "memif_aio", "show", "--socket", sock_path,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err
        assert bad_bytes(out) == [], out
        assert f'last reason "{REASON_SHOWN}"' in out.decode()


@both_loops
async def test_format_show_escapes_a_forged_status_document() -> None:
    """A status document read from another process is no more trusted than a peer."""
    evil = EVIL_TEXT
    doc = {"name": evil, "id": 0, "role": "master" + evil, "socket": "/x" + evil,
           "state": "up" + evil, "connections": evil, "last_reason": evil,
           "connect_error": evil, "remote_name": evil, "peer_name": evil, "mode": evil,
           "rx_mode": evil, "secret": False,
           "memory": {"num_queue_pairs": evil, "log2_ring_size": 1,
                      "packet_buffer_size": evil},
           "regions": [[evil, evil]],
           "rx": [{"qid": evil, "ring_size": evil, "head": evil, "tail": evil,
                   "interrupts": evil, "packets": evil, "bytes": evil, "drops": evil,
                   "bad_descriptors": evil}],
           "tx": []}
    shown = format_show([doc])
    assert not controls(shown, lines=True), shown
    assert printable(evil) in shown


# a sanity check of the checker itself: it does see what it must refuse
def test_the_checks_catch_raw_controls() -> None:
    assert controls(EVIL_TEXT)
    assert bad_bytes(EVIL) and bad_bytes("\x9b".encode())
    assert not bad_bytes(printable(EVIL).encode())

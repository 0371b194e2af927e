"""What every ``memif-aio`` tool shares: the interface options, running one interface
with its status endpoint, waiting for the link, signals, and the exit statuses.

Exit statuses (docs/cli.md): 0 success, 1 the run ended but its result is negative
(``ping``: replies missing; ``bench``: no packet moved or packets lost), 2 bad
arguments or no connection (socket unreachable, refused by the peer, no link within
``--timeout``, socket path in use), 130 a second Ctrl-C/SIGTERM forced the exit
(the first one ends the run normally, with its summary).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, TextIO, TypeVar

from .._text import printable
from ..config import DEFAULT_SOCKET_FILENAME, Arguments, MemoryConfig, RxMode
from ..errors import MemifError
from ..events import LinkEvent, Subscription
from ..interface import Interface
from ..queue import RxQueue, TxQueue
from ..serving import serve as serve_interface
from ..socket import Socket
from ..wire import MAX_LOG2_RING_SIZE, InterfaceMode
from .packet import parse_ip, parse_mac
from .status import StatusEndpoint

T = TypeVar("T")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2  #: bad arguments, and every failure to get a link
EXIT_FORCED = 130

#: the environment variables read when --socket / --secret are absent (the Contiv convention)
ENV_SOCKET = "MEMIF_SOCKET"
ENV_SECRET = "MEMIF_SECRET"


class ToolError(Exception):
    """Ends a tool with ``message`` on stderr and exit status ``code``."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


# --- argument types ------------------------------------------------------------------------


def int_range(lo: int, hi: int) -> Callable[[str], int]:
    def conv(text: str) -> int:
        try:
            v = int(text, 0)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"must be in {lo}..{hi}, not {v}")
        return v

    conv.__name__ = "integer"
    return conv


def positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number: {text!r}")
    return v


def timeout_arg(text: str) -> float:
    """A non-negative number of seconds; 0 means no limit."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not v >= 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(
            f"must be a number of seconds, 0 for no limit: {text!r}")
    return v


def mac_arg(text: str) -> bytes:
    try:
        return parse_mac(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def ip_arg(text: str) -> bytes:
    try:
        return parse_ip(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_socket_option(p: argparse.ArgumentParser | argparse._ArgumentGroup,
                      what: str) -> None:
    """``--socket``; when absent, :func:`apply_environment` fills in $MEMIF_SOCKET or the
    library's default."""
    p.add_argument("--socket", default=None, metavar="PATH",
                   help=f"{what} (default: ${ENV_SOCKET} if set, else "
                        f"{DEFAULT_SOCKET_FILENAME})")


def apply_environment(ns: argparse.Namespace) -> None:
    """Fill the ``--socket`` and ``--secret`` a command line left out from $MEMIF_SOCKET
    and $MEMIF_SECRET (an empty variable counts as unset)."""
    if getattr(ns, "socket", "") is None:
        ns.socket = os.environ.get(ENV_SOCKET) or DEFAULT_SOCKET_FILENAME
    if getattr(ns, "secret", "") is None:
        ns.secret = os.environ.get(ENV_SECRET) or ""


def add_interface_options(p: argparse.ArgumentParser, command: str) -> None:
    """The options every interface-running tool takes."""
    g = p.add_argument_group("interface options (common to every tool)")
    add_socket_option(g, "memif socket: a file path, or @name for an abstract socket")
    g.add_argument("--id", type=int_range(0, 0xFFFFFFFF), default=0,
                   help="interface id (default: %(default)s)")
    g.add_argument("--role", choices=("master", "slave"), default="slave",
                   help="master listens on the socket, slave connects (default: %(default)s)")
    g.add_argument("--secret", default=None,
                   help=f"shared secret (default: ${ENV_SECRET} if set, else none)")
    g.add_argument("--rsize", type=int_range(1, MAX_LOG2_RING_SIZE), default=10,
                   metavar="LOG2",
                   help="ring size as log2 of the slots; the slave's value is used "
                        "(default: %(default)s = 1024 slots)")
    g.add_argument("--bsize", type=int_range(1, 65535), default=2048, metavar="BYTES",
                   help="buffer size; the slave's value is used (default: %(default)s)")
    g.add_argument("--queues", type=int_range(1, 256), default=1, metavar="N",
                   help="queue pairs (default: %(default)s)")
    g.add_argument("--mode", choices=("ethernet", "ip"), default="ethernet",
                   help="interface mode: Ethernet frames or bare IP packets "
                        "(default: %(default)s)")
    g.add_argument("--rx-mode", choices=[m.value for m in RxMode], default="interrupt",
                   help="how receive queues wait: eventfd interrupts, busy polling, or "
                        "adaptive (default: %(default)s)")
    g.add_argument("--name", default=command, help="interface name (default: %(default)s)")
    g.add_argument("--timeout", type=timeout_arg, default=10.0, metavar="SECONDS",
                   help="how long to wait for the link to come up; a slave retries "
                        "connecting until then; 0 waits for a peer forever "
                        "(default: %(default)s)")
    g.add_argument("--no-status", action="store_true",
                   help="do not serve the status endpoint <socket>.ctl that "
                        "'memif-aio show' reads")
    g.add_argument("--uvloop", action=argparse.BooleanOptionalAction, default=True,
                   help="run on uvloop rather than the default asyncio loop (default: uvloop)")
    g.add_argument("-v", "--verbose", action="count", default=0,
                   help="log what memif_aio does to stderr (-v info, -vv debug)")


def build_arguments(ns: argparse.Namespace) -> Arguments:
    try:
        return Arguments(
            id=ns.id, is_master=ns.role == "master", name=ns.name,
            mode=InterfaceMode.ETHERNET if ns.mode == "ethernet" else InterfaceMode.IP,
            secret=ns.secret.encode(), rx_mode=RxMode(ns.rx_mode),
            memory_config=MemoryConfig(num_queue_pairs=ns.queues, log2_ring_size=ns.rsize,
                                       packet_buffer_size=ns.bsize))
    except ValueError as exc:
        raise ToolError(f"bad interface options: {exc}") from None


def configure_logging(verbose: int) -> None:
    level = logging.DEBUG if verbose >= 2 else logging.INFO if verbose == 1 else None
    if level is None:
        # the tools report connection problems themselves; keep library chatter quiet
        logging.getLogger("memif_aio").setLevel(logging.ERROR)
        return
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")


def run_loop(coro: Coroutine[Any, Any, T], use_uvloop: bool) -> T:
    """Run ``coro`` to its end on a new uvloop or default asyncio loop."""
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if use_uvloop:
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


def fmt_rate(value: float, unit: str) -> str:
    """``value`` ``unit`` with a k/M/G prefix: ``fmt_rate(1.5e6, "pkt/s")`` is
    ``"1.50 Mpkt/s"``."""
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.2f} {prefix}{unit}"
    return f"{value:.0f} {unit}"


class ProgressLine:
    """A progress line: redrawn in place with ``\\r`` on a terminal, one plain line
    per update otherwise."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.width = 0

    def show(self, line: str) -> None:
        if self.tty:
            pad = max(0, self.width - len(line))
            self.width = len(line)
            self.stream.write("\r" + line + " " * pad)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def finish(self) -> None:
        """End a redrawn line (before the next output)."""
        if self.tty and self.width:
            self.stream.write("\n")
            self.stream.flush()
            self.width = 0


# --- one run -------------------------------------------------------------------------------


class Tool:
    """One run of a tool: its socket and interface, the status endpoint and the stop
    event set by the first SIGINT/SIGTERM."""

    def __init__(self, ns: argparse.Namespace, command: str) -> None:
        self.ns = ns
        self.command = command
        self.prog = f"memif-aio {command}"
        self.args = build_arguments(ns)
        self.stop = asyncio.Event()
        self.signal: int | None = None
        self.sock: Socket | None = None
        self._itf: Interface | None = None
        self.endpoint: StatusEndpoint | None = None
        self.out: TextIO = sys.stdout

    @property
    def itf(self) -> Interface:
        assert self._itf is not None
        return self._itf

    def error(self, message: str) -> None:
        # messages quote the peer's names and reasons: never let its escapes through
        print(printable(f"{self.prog}: {message}"), file=sys.stderr, flush=True)

    def say(self, message: str) -> None:
        print(message, file=self.out, flush=True)

    def link_summary(self) -> str:
        itf = self.itf
        mc = itf.get_memory_config()
        return (f"connected to {itf.get_remote_name()!r} interface {itf.get_peer_name()!r} "
                f"as {'master' if itf.is_master() else 'slave'}: {len(itf.tx_queues)} queue "
                f"pair(s), ring {1 << mc.log2_ring_size}, buffer {mc.packet_buffer_size}")

    async def connect(self, end: float | None = None) -> bool:
        """Wait for the first link up, at most ``--timeout`` seconds (0: no limit).
        False when stopped by a signal first, or when the loop time ``end`` (the end
        of a ``--duration`` counted from the start) came first; :class:`ToolError`
        (status 2) when the peer refused the connection (its reason) or nothing
        connected in time.  Woken by the interface's link events, never polling."""
        itf = self.itf
        if itf.is_connected():
            return True
        loop = asyncio.get_running_loop()
        timeout = self.ns.timeout if self.ns.timeout > 0 else None
        async with itf.events() as evs:
            self._check_refused()  # an attempt may have failed before we subscribed
            up = asyncio.ensure_future(itf.wait_connected(timeout))
            refused = asyncio.ensure_future(self._watch_refusals(evs))
            stop = asyncio.ensure_future(self.stop.wait())
            try:
                left = None if end is None else max(0.0, end - loop.time())
                await asyncio.wait({up, refused, stop}, timeout=left,
                                   return_when=asyncio.FIRST_COMPLETED)
                if up.done():
                    try:
                        up.result()
                    except TimeoutError:
                        raise self._no_link() from None
                    return True
                if refused.done():
                    refused.result()  # raises the ToolError
                return False  # a signal, or ``end``
            finally:
                for t in (up, refused, stop):
                    t.cancel()
                await asyncio.gather(up, refused, stop, return_exceptions=True)

    def _check_refused(self) -> None:
        itf = self.itf
        reason = itf.get_disconnect_reason()
        if reason and not itf.is_master() and not itf.is_connected():
            raise ToolError(f"connection refused: {reason}")

    async def _watch_refusals(self, evs: Subscription[LinkEvent]) -> None:
        """A slave whose handshake is refused (a reason, not an unreachable socket) gives up."""
        async for ev in evs:
            if ev.kind == "refused":
                self._check_refused()

    def _no_link(self) -> ToolError:
        itf = self.itf
        t = self.ns.timeout
        reason = itf.get_disconnect_reason()
        if itf.is_master():
            last = f" (last refused: {reason})" if reason else ""
            return ToolError(f"no slave connected to {self.ns.socket} (id {self.ns.id}) "
                             f"within {t:g} s{last}")
        why = itf.get_connect_error() or "no answer to the handshake"
        return ToolError(f"could not connect to {self.ns.socket} within {t:g} s: {why}")

    def drained(self) -> bool:
        """The peer has taken every packet we published on our transmit rings (or
        the link is down)."""
        itf = self.itf
        try:
            for q in itf.tx_queues:
                st = q.stats()
                if itf.is_master():  # M2S: the slave posts buffers (head) we fill (tail)
                    if (st.head - st.tail) & 0xFFFF != st.ring_size:
                        return False
                elif st.head != st.tail:  # S2M: we publish head, the master's tail follows
                    return False
        except MemifError:
            return True
        return True

    async def drain(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for :meth:`drained` (not after a signal)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.itf.is_connected() and not self.drained() and loop.time() < deadline \
                and not self.stop.is_set():
            await asyncio.sleep(0.01)

    def finished(self, done: asyncio.Event | None = None, end: float | None = None) -> bool:
        """The stop event, ``done``, or the loop time ``end`` has come."""
        return self.stop.is_set() or (done is not None and done.is_set()) or \
            (end is not None and asyncio.get_running_loop().time() >= end)

    async def until(self, aws: Iterable[Awaitable[Any]], done: asyncio.Event | None = None,
                    end: float | None = None) -> bool:
        """Run ``aws`` until they all end, or the stop event, ``done``, or the loop time
        ``end``; whatever still runs is then cancelled.  True when they all ended by
        themselves.  An exception of one of them is raised.  With no ``aws``, wait for
        the stop event, ``done`` or ``end`` (True when ``end`` came)."""
        tasks = [asyncio.ensure_future(a) for a in aws]
        events = [asyncio.ensure_future(self.stop.wait())]
        if done is not None:
            events.append(asyncio.ensure_future(done.wait()))
        loop = asyncio.get_running_loop()
        try:
            pending = set(tasks)
            while (pending or not tasks) and not self.finished(done, end):
                left = None if end is None else max(0.0, end - loop.time())
                await asyncio.wait({*pending, *events}, timeout=left,
                                   return_when=asyncio.FIRST_COMPLETED)
                pending = {t for t in tasks if not t.done()}
                for t in tasks:
                    if t.done() and not t.cancelled() and t.exception() is not None:
                        raise t.exception()  # type: ignore[misc]
            return not pending if tasks else not self.finished(done)
        finally:
            for t in (*tasks, *events):
                t.cancel()
            await asyncio.gather(*tasks, *events, return_exceptions=True)

    async def serve(self, per_queue: Callable[[RxQueue, TxQueue], Coroutine[Any, Any, None]],
                    *, duration: float | None = None,
                    done: asyncio.Event | None = None) -> None:
        """Run ``per_queue(rx, tx)`` on every queue pair of every connection until the
        stop event, ``done``, or ``duration`` seconds, with :func:`memif_aio.serve`:
        ``per_queue`` returns (or raises ``Disconnected``) when its queues go down; a
        link down is reported with its reason on stderr, and the next link (a slave
        reconnects by itself; a master waits for a slave) gets its summary line."""
        loop = asyncio.get_running_loop()
        end = None if duration is None else loop.time() + duration

        def on_event(ev: LinkEvent) -> None:
            if ev.kind == "down":
                self.error(f"link down: {ev.reason or 'unknown reason'}")
            elif ev.kind == "up" and self.itf.is_connected():
                self.say(self.link_summary())

        await self.until([serve_interface(self.itf, per_queue, on_event=on_event)], done, end)


def run(ns: argparse.Namespace, command: str,
        body: Callable[[Tool], Coroutine[Any, Any, int]]) -> int:
    """Run ``body(tool)`` with the interface up to it; map errors to exit statuses."""
    configure_logging(ns.verbose)
    try:
        return run_loop(_main(ns, command, body), ns.uvloop)
    except ToolError as exc:
        print(printable(f"memif-aio {command}: {exc.message}"), file=sys.stderr, flush=True)
        return exc.code
    except (KeyboardInterrupt, asyncio.CancelledError):
        print(f"memif-aio {command}: interrupted", file=sys.stderr, flush=True)
        return EXIT_FORCED


async def _main(ns: argparse.Namespace, command: str,
                body: Callable[[Tool], Coroutine[Any, Any, int]]) -> int:
    tool = Tool(ns, command)
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    assert main is not None

    def on_signal(signum: int) -> None:
        if tool.stop.is_set():
            main.cancel()  # the second one: stop now
        tool.signal = signum
        tool.stop.set()

    for s in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(s, on_signal, s)
    try:
        try:
            sock = Socket(ns.socket, app_name=tool.prog)
        except ValueError as exc:
            raise ToolError(f"bad --socket: {exc}") from None
        tool.sock = sock
        tool._itf = sock.new_interface(tool.args)
        try:
            await sock.start_polling()
        except (MemifError, OSError) as exc:
            await sock.delete()
            raise ToolError(str(exc)) from None
        try:
            if not ns.no_status:
                tool.endpoint = StatusEndpoint(ns.socket, lambda: sock.interfaces, tool.prog)
                await tool.endpoint.start()
            return await body(tool)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(sock.delete(), 5.0)
            if tool.endpoint is not None:
                await tool.endpoint.close()
    finally:
        for s in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(s)

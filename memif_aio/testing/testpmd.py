"""Drive DPDK ``dpdk-testpmd`` with a ``net_memif`` port: a real memif peer for tests,
benchmarks and demos.

``TestPmd`` is an async context manager that starts one ``dpdk-testpmd`` process
(through ``asyncio`` subprocesses), waits until it is ready, follows its output
while it runs, and always stops it::

    async with TestPmd("server", "/tmp/x/memif.sock", forward_mode="macswap") as tp:
        async with Socket("/tmp/x/memif.sock") as sock:
            itf = sock.new_interface(Arguments(id=0, is_master=False))
            await itf.wait_connected(10)
            await tp.wait_connected(10)
            ...
            st = await tp.next_stats()      # a stats block sampled after this call
            print(st.rx_packets, st.tx_packets)

What it does for you (every pitfall in ``docs/interop.md`` that a driver can handle):

* EAL options that work without hugepages, PCI or root-only features:
  ``--no-huge -m 256 --no-pci --no-shconf --no-telemetry``, a unique ``--file-prefix``, a
  fresh temporary working directory, ``--total-num-mbufs`` (the default pool does not fit
  in ``-m 256``), ``--log-level=pmd.net.memif:info`` (memif logs nothing by default) and
  ``--stats-period 1`` (the only way to read counters from a non-interactive testpmd,
  which also keeps it from exiting at once when stdin is at EOF).
* ``--lcores=0@C,1@C``: testpmd busy-polls one CPU; by default the last CPU when there
  are several, so CPU 0 stays free for Python (pin yourself with ``os.sched_setaffinity``).
* stdout is made line-buffered with ``stdbuf -oL`` when available (testpmd's stdout is
  block-buffered on a pipe).
* A stale socket file makes a DPDK server silently not listen: a server removes
  its socket path first (filesystem sockets only).
* Ready means: the port exists (``Port 0: <MAC>`` and the first stats block) and, for a
  server, the socket is listening (``/proc/net/unix``).  Probe failures (bad devargs,
  socket errors, EAL errors, early exit) raise :class:`TestPmdError` with the log tail.
* The periodic ``NIC statistics`` blocks are parsed into :class:`PortStats` (these are the
  memif driver's own counters; they reset when the memif link goes down).  The
  ``Forward statistics`` printed at exit are unreliable for memif and are ignored.
* memif log lines are kept: ``Connected.``, ``Disconnect received: <reason>``, ...
* Stop: SIGINT, SIGKILL of the whole process group after ``stop_timeout``, reap, then
  remove ``/var/run/dpdk/<prefix>``, the working directory and (server) a leftover
  socket file.  Every wait is bounded.  :func:`kill_all` is a synchronous last resort
  for processes whose owner never got to stop them.
* Importing this module changes nothing in the process.  While at least one testpmd
  runs, two guards are in place, and they are removed when the last one stops: an
  :mod:`atexit` hook and a SIGTERM handler (main thread only), both calling
  :func:`kill_all`.  ``atexit`` does not run on SIGTERM, hence the handler; it then
  hands the signal to the handler it replaced (or, if that was the default, lets the
  signal end the process as it would have).

DPDK facts this relies on were observed with DPDK 22.11 (Debian 12 ``dpdk-dev``).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import itertools
import os
import re
import shutil
import signal
import tempfile
import threading
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..address import is_socket, remove_stale_socket, unix_listening

__all__ = [
    "CONNECT_ATTEMPTS",
    "CONNECT_SETTLE",
    "DEBIAN_PACKAGES",
    "PortStats",
    "TestPmd",
    "TestPmdCrashWarning",
    "TestPmdError",
    "connect_both",
    "find_testpmd",
    "kill_all",
    "link_up",
    "runtime_dir",
    "unix_listening",
]

#: Debian/Ubuntu packages that provide ``dpdk-testpmd`` with the memif PMD
DEBIAN_PACKAGES = ("dpdk-dev", "librte-net-memif23", "librte-mempool-ring23")

_ESCAPES = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_NIC_HEADER = re.compile(r"NIC statistics for port (\d+)")
_RX1 = re.compile(r"RX-packets:\s+(\d+)\s+RX-missed:\s+(\d+)\s+RX-bytes:\s+(\d+)")
_RX_ERR = re.compile(r"RX-errors:\s+(\d+)")
_RX_NOMBUF = re.compile(r"RX-nombuf:\s+(\d+)")
_TX1 = re.compile(r"TX-packets:\s+(\d+)\s+TX-errors:\s+(\d+)\s+TX-bytes:\s+(\d+)")
_BLOCK_END = re.compile(r"^\s*#+\s*$")
_PORT_MAC = re.compile(r"^Port (\d+): ([0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){5})\s*$")
_DISCONNECT = re.compile(r"Disconnect received: (.*?)\s*$")
_CONNECTED = re.compile(r"memif_connect\(\): Connected\.")
_REMOTE_CONNECTED = re.compile(r"memif_msg_receive_connect\(\): Remote interface .* connected\.")
#: lines after which testpmd runs on but is useless: raise instead of waiting
_FATAL = (
    re.compile(r"No probed ethernet devices"),
    re.compile(r"Failed to setup socket"),
    re.compile(r"failed to initialize net_memif"),
    re.compile(r"Fail to start port"),
    re.compile(r"Fail to configure port"),
    re.compile(r"Cause: "),
)

_counter = itertools.count()
_live: dict[int, TestPmd] = {}


class TestPmdError(RuntimeError):
    """testpmd could not be started or misbehaved; the message ends with its log tail."""


class TestPmdCrashWarning(UserWarning):
    """testpmd died of its known crash at connect (docs/interop.md pitfall 39) and the
    link was set up again from scratch."""

    __test__ = False


#: how many times :func:`connect_both` callers set a link up, the first time included,
#: when testpmd dies of its known crash at connect (pitfall 39)
CONNECT_ATTEMPTS = 3
#: seconds a link with a multi-queue DPDK server is watched after it came up: the crash
#: of pitfall 39 came within half a second of "Connected." in every case observed
CONNECT_SETTLE = 0.5


@dataclass(frozen=True)
class PortStats:
    """One ``NIC statistics`` block of one port (the memif driver's counters).

    ``seq`` numbers the blocks of this process from 1; ``started`` is the
    ``time.monotonic()`` at which the block's first line arrived (testpmd samples
    the counters just before printing it).
    """

    port: int
    rx_packets: int
    rx_missed: int
    rx_bytes: int
    rx_errors: int
    rx_nombuf: int
    tx_packets: int
    tx_errors: int
    tx_bytes: int
    seq: int
    started: float

    def counters(self) -> tuple[int, ...]:
        """The counters only (no ``seq``/``started``), to compare two blocks."""
        return (self.rx_packets, self.rx_missed, self.rx_bytes, self.rx_errors,
                self.rx_nombuf, self.tx_packets, self.tx_errors, self.tx_bytes)


def find_testpmd() -> str | None:
    """The path of ``dpdk-testpmd``, or None.

    ``$MEMIF_AIO_TESTPMD``, when set, is the only candidate (a custom build; set it to
    an empty string to act as if testpmd were not installed); otherwise ``$PATH``,
    then ``/usr/bin`` and ``/usr/local/bin``.
    """
    env = os.environ.get("MEMIF_AIO_TESTPMD")
    if env is not None:
        candidates = [env]
    else:
        found = shutil.which("dpdk-testpmd")
        candidates = [found] if found else []
        candidates += ["/usr/bin/dpdk-testpmd", "/usr/local/bin/dpdk-testpmd"]
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


def runtime_dir(prefix: str) -> str:
    """Where EAL keeps its runtime files for ``--file-prefix=prefix`` (DPDK's rule)."""
    if os.geteuid() == 0:
        base = "/var/run"
    else:
        base = os.environ.get("XDG_RUNTIME_DIR") or "/tmp"
    return os.path.join(base, "dpdk", prefix)


def default_cpu() -> int:
    """The CPU testpmd is pinned to by default: the last one, so CPU 0 stays for Python."""
    n = os.cpu_count() or 1
    return n - 1 if n > 1 else 0


class TestPmd:
    """One ``dpdk-testpmd`` process with one ``net_memif`` port.

    Parameters (the memif ones map to the ``--vdev`` devargs of DPDK's net_memif):

    ``role``
        ``"server"`` (DPDK listens; memif master) or ``"client"`` (DPDK connects; slave).
    ``socket``
        A filesystem path, or an abstract name (``"@name"``, or ``abstract=True``).
        A memif_aio peer names the same abstract socket ``"@name"``.
    ``id``, ``secret``, ``bsize`` (buffer size), ``rsize`` (log2 ring size), ``mac``
        As the devargs; None keeps DPDK's default (id 0, no secret, 2048, 10, random).
        Only the *client's* ``bsize``/``rsize`` shape the rings; a DPDK server with a
        ``bsize`` different from its peer's buffers misbehaves (see docs/interop.md).
    ``forward_mode``
        testpmd ``--forward-mode``: ``macswap``, ``io``, ``txonly``, ``rxonly``, ...
    ``queues``
        ``--rxq``/``--txq``.  A memif client must use exactly the server's count.
    ``txpkts``
        ``--txpkts`` for ``txonly``: an int or a sequence of segment lengths
        (``(2048, 2048, 2048, 2048, 808)`` sends 9000-byte chained mbufs).
    ``mbuf_size``
        ``--mbuf-size`` (e.g. 9216 to send 9000-byte single-segment mbufs).
    ``extra_args``
        More testpmd application arguments (after ``--``).
    ``eal_args``
        More EAL arguments (before ``--``).
    ``cpu``
        The CPU for both lcores (default :func:`default_cpu`).
    ``log_level``
        memif PMD log level, ``"info"`` (connect/disconnect reasons) or ``"debug"``.
    ``start_timeout`` / ``stop_timeout``
        Bounds for :meth:`start` and for the SIGINT phase of :meth:`stop`.
    """

    __test__ = False  # not a pytest test class despite the name

    def __init__(self, role: str, socket: str, id: int = 0, forward_mode: str = "macswap",
                 secret: str | None = None, bsize: int | None = None, rsize: int | None = None,
                 queues: int = 1, abstract: bool = False, extra_args: Sequence[str] = (),
                 txpkts: int | Sequence[int] | None = None, *, mbuf_size: int | None = None,
                 mac: str | None = None, total_num_mbufs: int = 16384, memory_mb: int = 256,
                 cpu: int | None = None, eal_args: Sequence[str] = (),
                 log_level: str = "info", stats_period: int = 1,
                 start_timeout: float = 30.0, stop_timeout: float = 5.0,
                 executable: str | None = None) -> None:
        if role not in ("server", "client"):
            raise ValueError("role must be 'server' or 'client'")
        if socket.startswith("@"):
            socket, abstract = socket[1:], True
        if not socket:
            raise ValueError("empty socket name")
        if "," in socket or (secret is not None and "," in secret):
            raise ValueError("devargs cannot contain ','")
        self.role = role
        self.socket = socket
        self.abstract = abstract
        self.id = id
        self.forward_mode = forward_mode
        self.queues = queues
        self.executable = executable or find_testpmd()
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.prefix = f"memif_aio_{os.getpid()}_{next(_counter)}_{os.urandom(3).hex()}"
        self.cpu = default_cpu() if cpu is None else cpu

        devargs = [f"net_memif0,role={role}", f"id={id}", f"socket={socket}",
                   f"socket-abstract={'yes' if abstract else 'no'}"]
        if secret is not None:
            devargs.append(f"secret={secret}")
        if bsize is not None:
            devargs.append(f"bsize={bsize}")
        if rsize is not None:
            devargs.append(f"rsize={rsize}")
        if mac is not None:
            devargs.append(f"mac={mac}")
        self.devargs = ",".join(devargs)
        eal = [f"--lcores=0@{self.cpu},1@{self.cpu}", "--no-huge", f"-m{memory_mb}",
               "--no-pci", "--no-shconf", "--no-telemetry", f"--file-prefix={self.prefix}",
               f"--log-level=pmd.net.memif:{log_level}", f"--vdev={self.devargs}", *eal_args]
        app = [f"--total-num-mbufs={total_num_mbufs}", f"--forward-mode={forward_mode}",
               "--stats-period", str(stats_period)]
        if queues != 1:
            app += [f"--rxq={queues}", f"--txq={queues}"]
        if mbuf_size is not None:
            app.append(f"--mbuf-size={mbuf_size}")
        if txpkts is not None:
            segs = [txpkts] if isinstance(txpkts, int) else list(txpkts)
            app.append("--txpkts=" + ",".join(str(s) for s in segs))
        app += list(extra_args)
        self.argv: list[str] = [self.executable or "dpdk-testpmd", *eal, "--", *app]

        self.proc: asyncio.subprocess.Process | None = None
        self.workdir: str | None = None
        self.stdout_lines: list[str] = []
        self.stderr_lines: list[str] = []
        self.mac: str | None = None
        self.stats_history: list[PortStats] = []
        self._latest: dict[int, PortStats] = {}
        self._block: dict[str, Any] | None = None
        self._seq = 0
        self._changed: asyncio.Condition | None = None
        self._readers: list[asyncio.Task[None]] = []
        self._fatal: str | None = None
        self._stopped = False
        self.returncode: int | None = None
        self.started_at = 0.0

    # --- lifetime ---------------------------------------------------------------------
    async def __aenter__(self) -> TestPmd:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Spawn testpmd and wait until it is ready (bounded by ``start_timeout``)."""
        if self.proc is not None:
            raise RuntimeError("already started")
        if self.executable is None:
            raise TestPmdError("dpdk-testpmd not found; install the Debian packages "
                               + " ".join(DEBIAN_PACKAGES))
        if self.role == "server" and not self.abstract:
            _remove_stale(self.socket)
        self._changed = asyncio.Condition()
        self.workdir = tempfile.mkdtemp(prefix="memif-aio-testpmd-")
        argv = list(self.argv)
        stdbuf = shutil.which("stdbuf")
        if stdbuf:
            argv = [stdbuf, "-oL", *argv]
        self.started_at = time.monotonic()
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, cwd=self.workdir, start_new_session=True)
        except BaseException:
            self._cleanup_files()
            raise
        _live[self.proc.pid] = self
        _guard()
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._readers = [asyncio.create_task(self._read(self.proc.stdout, self._on_stdout)),
                         asyncio.create_task(self._read(self.proc.stderr, self._on_stderr))]
        try:
            await self._wait_ready()
        except BaseException:
            await self.stop()
            raise

    async def _wait_ready(self) -> None:
        listen_name = ("@" if self.abstract else "") + self.socket
        deadline = self.started_at + self.start_timeout
        while True:
            self._check_alive("while starting")
            ready = bool(self._latest)  # the first stats block comes after port start
            if ready and (self.role == "client" or unix_listening(listen_name)):
                return
            if ready and self.role == "server":
                raise self._error(f"the server is not listening on {listen_name}")
            if time.monotonic() > deadline:
                raise self._error(f"not ready after {self.start_timeout} s")
            await self._wait_change(0.05)

    async def stop(self) -> int | None:
        """SIGINT, then SIGKILL (process group) after ``stop_timeout``; reap; clean up.

        Safe to call twice and after a failed start.  Returns the exit status.
        """
        if self._stopped:
            return self.returncode
        self._stopped = True
        proc = self.proc
        try:
            if proc is not None:
                if proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.send_signal(signal.SIGCONT)  # in case it was paused
                        proc.send_signal(signal.SIGINT)
                    try:
                        await asyncio.wait_for(proc.wait(), self.stop_timeout)
                    except TimeoutError:
                        _killpg(proc.pid)
                        await asyncio.wait_for(proc.wait(), 10)
                else:
                    _killpg(proc.pid)  # leftovers of the group, if any
                self.returncode = proc.returncode
                if self._readers:
                    _done, pending = await asyncio.wait(self._readers, timeout=2)
                    for t in pending:
                        t.cancel()
                _live.pop(proc.pid, None)
        finally:
            self._cleanup_files()
            if not _live:
                _unguard()
        return self.returncode

    def _cleanup_files(self) -> None:
        shutil.rmtree(runtime_dir(self.prefix), ignore_errors=True)
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        if self.role == "server" and not self.abstract:
            # a crash or SIGKILL leaves the socket file behind
            with contextlib.suppress(OSError):
                if is_socket(self.socket) and not unix_listening(self.socket):
                    os.unlink(self.socket)

    def pause(self) -> None:
        """SIGSTOP: freeze testpmd (its counters and rings stay as they are)."""
        if self.proc is not None and self.proc.returncode is None:
            os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        if self.proc is not None and self.proc.returncode is None:
            os.killpg(self.proc.pid, signal.SIGCONT)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    # --- output -------------------------------------------------------------------------
    async def _read(self, stream: asyncio.StreamReader, handler: Callable[[str], None]) -> None:
        while True:
            try:
                raw = await stream.readline()
            except (ValueError, asyncio.LimitOverrunError):  # absurdly long line: skip it
                continue
            if not raw:
                break
            handler(raw.decode(errors="replace").rstrip("\r\n"))
            await self._notify()
        await self._notify()

    async def _notify(self) -> None:
        assert self._changed is not None
        async with self._changed:
            self._changed.notify_all()

    async def _wait_change(self, timeout: float) -> None:
        assert self._changed is not None
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout)

    def _on_stderr(self, line: str) -> None:
        self.stderr_lines.append(line)
        if self._fatal is None:
            for pat in _FATAL:
                if pat.search(line):
                    self._fatal = line
                    break

    def _on_stdout(self, line: str) -> None:
        line = _ESCAPES.sub("", line)
        self.stdout_lines.append(line)
        m = _PORT_MAC.match(line.strip())
        if m and int(m.group(1)) == 0 and self.mac is None:
            self.mac = m.group(2).lower()
            return
        m = _NIC_HEADER.search(line)
        if m:
            self._block = {"port": int(m.group(1)), "started": time.monotonic()}
            return
        b = self._block
        if b is None:
            return
        if (m := _RX1.search(line)):
            b["rx_packets"], b["rx_missed"], b["rx_bytes"] = map(int, m.groups())
        elif (m := _TX1.search(line)):
            b["tx_packets"], b["tx_errors"], b["tx_bytes"] = map(int, m.groups())
        elif (m := _RX_ERR.search(line)):
            b["rx_errors"] = int(m.group(1))
        elif (m := _RX_NOMBUF.search(line)):
            b["rx_nombuf"] = int(m.group(1))
        elif _BLOCK_END.match(line):
            self._block = None
            need = ("rx_packets", "rx_missed", "rx_bytes", "tx_packets", "tx_errors", "tx_bytes")
            if all(k in b for k in need):
                self._seq += 1
                st = PortStats(b["port"], b["rx_packets"], b["rx_missed"], b["rx_bytes"],
                               b.get("rx_errors", 0), b.get("rx_nombuf", 0), b["tx_packets"],
                               b["tx_errors"], b["tx_bytes"], self._seq, b["started"])
                self._latest[st.port] = st
                self.stats_history.append(st)
                del self.stats_history[:-1000]

    # --- queries ------------------------------------------------------------------------
    @property
    def stats(self) -> PortStats | None:
        """The latest stats block of port 0 (None before the first one)."""
        return self._latest.get(0)

    @property
    def memif_log(self) -> list[str]:
        """stderr lines of the memif PMD (``memif_...(): ...``)."""
        return [line for line in self.stderr_lines if "memif" in line]

    @property
    def disconnect_reasons(self) -> list[str]:
        """Reasons of every DISCONNECT testpmd received (``Disconnect received: <reason>``)."""
        return [m.group(1) for line in self.stderr_lines if (m := _DISCONNECT.search(line))]

    @property
    def connections(self) -> int:
        """How many times the memif link came up (``memif_connect(): Connected.``)."""
        return sum(1 for line in self.stderr_lines if _CONNECTED.search(line))

    @property
    def crashed_at_connect(self) -> bool:
        """testpmd died of SIGSEGV with the link up: nothing but ``Remote interface ...
        connected.`` in its memif log after its last ``memif_connect(): Connected.``.
        DPDK 22.11's crash when a memif server with more than one queue pair is
        starved of CPU as the link comes up (pitfall 39)."""
        if self.proc is None or self.proc.returncode != -signal.SIGSEGV:
            return False
        memif = self.memif_log
        last = max((i for i, line in enumerate(memif) if _CONNECTED.search(line)), default=-1)
        return last >= 0 and all(_REMOTE_CONNECTED.search(line) for line in memif[last + 1:])

    def log_tail(self, n: int = 25) -> str:
        lines = [f"  err| {x}" for x in self.stderr_lines[-n:]]
        lines += [f"  out| {x}" for x in self.stdout_lines[-n:] if x.strip()]
        return "\n".join(lines)

    def _error(self, what: str) -> TestPmdError:
        return TestPmdError(f"testpmd ({self.role}, {self.prefix}): {what}\n"
                            f"command: {' '.join(self.argv)}\n{self.log_tail()}")

    def _check_alive(self, doing: str) -> None:
        if self._fatal is not None:
            raise self._error(f"failed {doing}: {self._fatal}")
        if self.proc is not None and self.proc.returncode is not None:
            raise self._error(f"exited with status {self.proc.returncode} {doing}")

    async def wait_for(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        """Wait until ``predicate()`` is truthy (re-checked on every output line and
        every 50 ms); return its value.  ``TimeoutError`` names ``what`` and the log."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            self._check_alive(f"while waiting for {what}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"testpmd: no {what} within {timeout} s\n{self.log_tail()}")
            await self._wait_change(0.05)

    async def wait_log(self, pattern: str, timeout: float = 10.0,
                       start: int = 0) -> re.Match[str]:
        """Wait for a stderr line (index >= ``start``) matching the regex ``pattern``."""
        rx = re.compile(pattern)

        def find() -> re.Match[str] | None:
            for line in self.stderr_lines[start:]:
                m = rx.search(line)
                if m:
                    return m
            return None

        result: re.Match[str] = await self.wait_for(find, timeout, f"log line /{pattern}/")
        return result

    async def wait_connected(self, timeout: float = 10.0, count: int = 1) -> None:
        """Wait until the memif link came up ``count`` times in total."""
        await self.wait_for(lambda: self.connections >= count, timeout,
                            f"memif connection #{count}")

    async def wait_disconnect_reason(self, timeout: float = 10.0) -> str:
        """Wait for a DISCONNECT with a reason (a client refused by its server)."""
        reasons: list[str] = await self.wait_for(lambda: self.disconnect_reasons, timeout,
                                                 "'Disconnect received'")
        return reasons[-1]

    async def next_stats(self, timeout: float = 10.0, port: int = 0) -> PortStats:
        """The next stats block whose first line arrives after this call."""
        t = time.monotonic()
        st: PortStats = await self.wait_for(
            lambda: (s := self._latest.get(port)) is not None and s.started > t and s,
            timeout, "stats block")
        return st

    async def wait_stats(self, predicate: Callable[[PortStats], bool], timeout: float = 10.0,
                         port: int = 0) -> PortStats:
        """The first stats block (the latest one included) for which ``predicate`` holds."""
        st: PortStats = await self.wait_for(
            lambda: (s := self._latest.get(port)) is not None and predicate(s) and s,
            timeout, "stats block matching the condition")
        return st

    async def stable_stats(self, timeout: float = 15.0, port: int = 0) -> PortStats:
        """Two consecutive blocks, both begun after this call, with equal counters:
        nothing moved for at least one stats period.  Returns the second block."""
        deadline = time.monotonic() + timeout
        prev = await self.next_stats(timeout, port)
        while True:
            cur = await self.next_stats(max(0.1, deadline - time.monotonic()), port)
            if cur.counters() == prev.counters():
                return cur
            prev = cur


async def connect_both(itf: Any, tp: TestPmd, timeout: float, *, settle: float = 0.0,
                       attempt: int = 1, attempts: int = CONNECT_ATTEMPTS) -> bool:
    """Wait until memif_aio's interface ``itf`` and ``tp`` both report the link up, then
    ``settle`` seconds more with testpmd still alive.

    Returns False, with a :class:`TestPmdCrashWarning`, only when testpmd died of its
    known crash at connect (:attr:`TestPmd.crashed_at_connect`) and ``attempt`` is not
    the last of ``attempts``: the caller tears the link down and sets it up again.
    Anything else that goes wrong raises ``AssertionError`` with testpmd's log, the
    known crash on the last attempt included."""
    deadline = time.monotonic() + timeout
    settled_at: float | None = None
    while True:
        if not tp.running:  # the child watcher sets the exit status as it comes
            if tp.crashed_at_connect and attempt < attempts:
                warnings.warn(TestPmdCrashWarning(
                    f"testpmd ({tp.role}) died of SIGSEGV as the link came "
                    f"up (DPDK 22.11, docs/interop.md pitfall 39); setting the link up again "
                    f"(attempt {attempt + 1} of {attempts})"), stacklevel=2)
                return False
            status = tp.proc.returncode if tp.proc is not None else None
            raise AssertionError(f"testpmd exited with status {status} while the link came "
                                 f"up (attempt {attempt} of {attempts})\n"
                                 f"{tp.log_tail()}")
        now = time.monotonic()
        if settled_at is None and itf.is_connected() and tp.connections >= 1:
            settled_at = now + settle
        if settled_at is not None and now >= settled_at:
            return True
        if now > deadline and settled_at is None:
            raise AssertionError(f"the link did not come up within {timeout} s: memif_aio "
                                 f"connected: {itf.is_connected()}, testpmd connections: "
                                 f"{tp.connections}, testpmd running: {tp.running}\n"
                                 f"{tp.log_tail()}")
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def link_up(setup: Callable[[contextlib.AsyncExitStack], Awaitable[tuple[Any, TestPmd]]],
                  timeout: float, *, settle: float = 0.0, connect: bool = True,
                  attempts: int = CONNECT_ATTEMPTS) -> AsyncIterator[tuple[Any, TestPmd]]:
    """``async with link_up(setup, timeout) as (itf, tp):`` a link between a memif_aio
    interface and a testpmd, up (unless ``connect=False``).  ``setup(stack)`` starts both
    on ``stack`` and returns them; :func:`connect_both` waits for the link.  When testpmd
    dies of its known crash at connect (pitfall 39), the stack stops everything and
    ``setup`` runs again on a fresh one, at most ``attempts`` times in all."""
    for attempt in range(1, attempts + 1):
        async with contextlib.AsyncExitStack() as stack:
            itf, tp = await setup(stack)
            if connect and not await connect_both(itf, tp, timeout, settle=settle,
                                                  attempt=attempt, attempts=attempts):
                continue
            yield itf, tp
            return


def _killpg(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGCONT)
        os.killpg(pid, signal.SIGKILL)


def _remove_stale(path: str) -> None:
    """Remove a socket file a dead process left at ``path`` (DPDK would not listen
    otherwise); refuse a live listener or something that is not a socket."""
    if unix_listening(path):
        raise TestPmdError(f"something is already listening on {path}")
    try:
        remove_stale_socket(path)
    except OSError as exc:
        raise TestPmdError(f"cannot serve {path}: {exc.strerror or exc}") from None


def kill_all() -> list[int]:
    """SIGKILL and reap every testpmd started by this process that is still alive and
    remove its files; synchronous, for clean-up paths.  Returns the pids killed."""
    killed = []
    for pid, tp in list(_live.items()):
        _killpg(pid)
        with contextlib.suppress(ChildProcessError, OSError):
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                done, _status = os.waitpid(pid, os.WNOHANG)
                if done:
                    break
                time.sleep(0.01)
        tp._stopped = True
        tp._cleanup_files()
        _live.pop(pid, None)
        killed.append(pid)
    _unguard()
    return killed


# --- guards while a testpmd runs ----------------------------------------------------------------
_guarded = False
_previous_sigterm: Any = None


def _guard() -> None:
    """Install the atexit hook and the SIGTERM handler (once, while testpmds run)."""
    global _guarded, _previous_sigterm
    if _guarded:
        return
    _guarded = True
    atexit.register(kill_all)
    if threading.current_thread() is threading.main_thread():
        with contextlib.suppress(ValueError, OSError):
            _previous_sigterm = signal.signal(signal.SIGTERM, _on_sigterm)


def _unguard() -> None:
    """Remove the guards (the last testpmd stopped)."""
    global _guarded, _previous_sigterm
    if not _guarded:
        return
    _guarded = False
    atexit.unregister(kill_all)
    if threading.current_thread() is threading.main_thread():
        with contextlib.suppress(ValueError, OSError, TypeError):
            if signal.getsignal(signal.SIGTERM) is _on_sigterm:  # nobody replaced it since
                signal.signal(signal.SIGTERM, _previous_sigterm or signal.SIG_DFL)
    _previous_sigterm = None


def _on_sigterm(signum: int, frame: Any) -> None:
    previous = _previous_sigterm
    kill_all()  # which also puts ``previous`` back as the SIGTERM handler
    if callable(previous):
        previous(signum, frame)
    elif previous == signal.SIG_IGN:
        return
    else:  # the default action: terminate, by this very signal
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

"""Interface status: :func:`format_show` (like VPP's ``show memif``) and the local status
endpoint that lets ``memif-aio show`` read the interfaces of another memif-aio process.

In this process::

    print(format_show(sock.interfaces))

Across processes: every ``memif-aio`` command that runs an interface serves a
:class:`StatusEndpoint`, a UNIX stream socket next to the memif socket
(``<socket path>.ctl``, or ``<socket path>.<pid>.ctl`` when another process
already serves that name; ``@name.ctl`` for an abstract ``@name``).  A client
sends one JSON line ``{"request": "status"}`` and reads one JSON line back (the
:func:`process_status` document).  :func:`find_endpoints` and :func:`query_status`
are the client side used by ``memif-aio show``.

This endpoint is a memif_aio convention, not part of memif: VPP, libmemif, gomemif
and DPDK do not serve it, so ``memif-aio show`` only sees memif-aio processes.  It
answers only to the same user (or root): the socket file is mode 0600 and the
peer's credentials are checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import glob
import json
import logging
import os
import re
import socket as _socket
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Union

from .._text import printable
from ..address import (
    bind_unix,
    connect_unix,
    is_socket,
    listening_names,
    parse_address,
    peer_credentials,
    remove_stale_socket,
)
from ..interface import Interface
from ..wire import VERSION_MAJOR, VERSION_MINOR

__all__ = [
    "StatusEndpoint",
    "endpoint_names",
    "find_endpoints",
    "format_show",
    "interface_status",
    "process_status",
    "query_status",
]

log = logging.getLogger("memif_aio")

#: the longest request line the endpoint reads
MAX_REQUEST = 4096
#: how long the endpoint waits for a client's request
REQUEST_TIMEOUT = 2.0


def interface_status(itf: Interface) -> dict[str, Any]:
    """The status of one interface as a JSON-ready dict: every field of
    :meth:`Interface.stats` plus ``rx_mode``, ``secret`` (set or not, never the value),
    ``connect_error`` and the queue directions."""
    st = dataclasses.asdict(itf.stats())
    args = itf.get_arguments()
    st["rx_mode"] = args.rx_mode.value
    st["secret"] = bool(args.secret)
    st["connect_error"] = itf.get_connect_error()
    return st


def process_status(interfaces: Iterable[Interface], app: str = "") -> dict[str, Any]:
    """The document a status endpoint serves: this process and its interfaces."""
    from .. import __version__

    return {"pid": os.getpid(), "app": app, "version": __version__,
            "protocol": f"{VERSION_MAJOR}.{VERSION_MINOR}",
            "interfaces": [interface_status(i) for i in interfaces]}


# --- show ------------------------------------------------------------------------------------

StatusLike = Union[Interface, Mapping[str, Any]]


def _ring_dirs(role: str) -> tuple[str, str]:
    """(rx, tx) ring names: a master receives on S2M rings, a slave on M2S rings."""
    return ("slave-to-master", "master-to-slave") if role == "master" else \
        ("master-to-slave", "slave-to-master")


def format_show(interfaces: Iterable[StatusLike]) -> str:
    """A text report of ``interfaces`` much like VPP's ``show memif``.

    Takes :class:`~memif_aio.Interface` objects (this process) or the dicts of
    :func:`interface_status` (as read from another process by ``memif-aio show``).
    Per interface: name, id, role, socket (and its network namespace, if not ours),
    state, peer application and interface names, mode, receive (interrupt) mode, the
    negotiated queue pairs, ring and buffer sizes, the regions, and per queue the
    ring's head and tail and the counters.

    Every line is escaped by :func:`memif_aio._text.printable`: the peer chooses its
    names and its DISCONNECT reason, and a status document read from another process
    is no more trusted, so no control character reaches the terminal.
    """
    out: list[str] = []
    for item in interfaces:
        st = interface_status(item) if isinstance(item, Interface) else item
        role = st["role"]
        mem = st["memory"]
        out.append(f"interface {st['name'] or '(unnamed)'} (id {st['id']}, {role})")
        netns = f" netns {st['netns']}" if st.get("netns") else ""
        out.append(f"  socket {st['socket']}{netns}")
        state = f"  state {st['state']}, connections {st['connections']}"
        if st.get("last_reason"):
            state += f", last reason \"{st['last_reason']}\""
        out.append(state)
        if st.get("connect_error"):
            out.append(f"  connect error \"{st['connect_error']}\"")
        out.append(f"  remote-name \"{st['remote_name']}\" "
                   f"remote-interface \"{st['peer_name']}\"")
        out.append(f"  mode {st['mode']} rx-mode {st.get('rx_mode', '?')} "
                   f"secret {'yes' if st.get('secret') else 'no'}")
        rxq = mem.get("num_rx_queues", mem["num_queue_pairs"])
        txq = mem.get("num_tx_queues", mem["num_queue_pairs"])
        queues = (f"queue-pairs {mem['num_queue_pairs']}" if rxq == txq
                  else f"rx-queues {rxq} tx-queues {txq}")
        out.append(f"  {queues} "
                   f"ring-size {1 << mem['log2_ring_size']} "
                   f"buffer-size {mem['packet_buffer_size']} num-regions {len(st['regions'])}")
        for index, size in st["regions"]:
            out.append(f"  region {index} size {size}")
        rx_dir, tx_dir = _ring_dirs(role)
        for kind, direction, queues in (("rx", rx_dir, st["rx"]), ("tx", tx_dir, st["tx"])):
            for q in queues:
                what = "interrupts" if kind == "rx" else "signals"
                out.append(f"  {kind} queue {q['qid']} ({direction} ring): "
                           f"ring-size {q['ring_size']} head {q['head']} tail {q['tail']} "
                           f"{what} {q['interrupts']}")
                out.append(f"    packets {q['packets']} bytes {q['bytes']} drops {q['drops']} "
                           f"bad-descriptors {q['bad_descriptors']}")
    return "\n".join(printable(line) for line in out) + ("\n" if out else "")


# --- endpoint names ----------------------------------------------------------------------------


def _abstract(name: str) -> str | None:
    """The abstract name of a memif socket name (None for a filesystem path)."""
    try:
        addr = parse_address(name)
    except ValueError:
        return None
    return addr.name if addr.abstract else None


def _fallback_base(memif_socket: str) -> str:
    return "@memif-aio:" + os.path.abspath(memif_socket)


def endpoint_names(memif_socket: str, pid: int | None = None) -> list[str]:
    """The names a process serving ``memif_socket`` tries, in order: ``<path>.ctl``,
    ``<path>.<pid>.ctl``, then (for a filesystem path whose directory we cannot
    write) the same under the abstract ``@memif-aio:<absolute path>``.  Abstract
    names are written ``@name``."""
    pid = os.getpid() if pid is None else pid
    ab = _abstract(memif_socket)
    bases = ["@" + ab] if ab is not None else [memif_socket, _fallback_base(memif_socket)]
    return [n for b in bases for n in (f"{b}.ctl", f"{b}.{pid}.ctl")]


def _abstract_listeners() -> list[str]:
    """Every listening abstract AF_UNIX stream socket (``@name``) of this network
    namespace, from ``/proc/net/unix``."""
    return listening_names(_socket.SOCK_STREAM, abstract_only=True)


def find_endpoints(memif_socket: str) -> list[str]:
    """Status endpoint names that may serve ``memif_socket`` (files that exist and
    listening abstract sockets); stale ones are filtered out by :func:`query_status`."""
    ab = _abstract(memif_socket)
    bases = ["@" + ab] if ab is not None else [memif_socket, _fallback_base(memif_socket)]
    found: list[str] = []
    abstract = None
    for base in bases:
        pat = re.compile(re.escape(base) + r"(?:\.\d+)?\.ctl")
        if base.startswith("@"):
            if abstract is None:
                abstract = _abstract_listeners()
            names = [n for n in abstract if pat.fullmatch(n)]
        else:
            cands = glob.glob(glob.escape(base) + ".ctl") + \
                glob.glob(glob.escape(base) + ".*.ctl")
            names = [n for n in cands if pat.fullmatch(n) and is_socket(n)]
        # <base>.ctl first, then <base>.<pid>.ctl by pid
        found += sorted(set(names), key=lambda n: (n != f"{base}.ctl", len(n), n))
    return found


def query_status(name: str, timeout: float = 2.0) -> dict[str, Any]:
    """Ask the endpoint ``name`` for its status (blocking).  ``OSError`` when nobody
    answers there (``ConnectionRefusedError`` for a stale file), ``ValueError`` for
    an answer that is not a status document."""
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        s.settimeout(timeout)
        connect_unix(s, name)
        s.sendall(b'{"request": "status"}\n')
        buf = bytearray()
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
            if len(buf) > 64 << 20:
                raise ValueError(f"{name}: answer too large")
    finally:
        s.close()
    try:
        doc = json.loads(buf)
    except ValueError:
        raise ValueError(f"{name}: not a memif-aio status endpoint") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("interfaces"), list):
        raise ValueError(f"{name}: not a memif-aio status endpoint")
    return doc


# --- the endpoint --------------------------------------------------------------------------


class StatusEndpoint:
    """Serve :func:`process_status` on a UNIX stream socket for ``memif-aio show``.

    ``interfaces`` is called for every request and returns the interfaces to report.
    ``async with StatusEndpoint(memif_socket, interfaces, app=...) as ep`` binds the
    first free name of :func:`endpoint_names` (``ep.name``; None when none could be
    bound, which is logged and otherwise harmless) and removes its file on exit.
    """

    def __init__(self, memif_socket: str, interfaces: Callable[[], Iterable[Interface]],
                 app: str = "") -> None:
        self.memif_socket = memif_socket
        self.interfaces = interfaces
        self.app = app
        self.name: str | None = None
        self._server: asyncio.AbstractServer | None = None
        self._inode: tuple[int, int] | None = None
        self._clients: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> StatusEndpoint:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> str | None:
        """Bind and listen; returns the name served (None if no name could be bound)."""
        errors = []
        for name in endpoint_names(self.memif_socket):
            try:
                sock = self._bind(name)
            except OSError as exc:
                errors.append(f"{name}: {exc.strerror or exc}")
                continue
            try:
                self._server = await asyncio.start_unix_server(self._serve, sock=sock)
            except BaseException:
                sock.close()
                self._unlink()
                raise
            self.name = name
            log.debug("status endpoint on %s", name)
            return name
        log.warning("no status endpoint for %s (memif-aio show will not see this process): %s",
                    self.memif_socket, "; ".join(errors))
        return None

    def _bind(self, name: str) -> _socket.socket:
        if not name.startswith("@"):
            remove_stale_socket(name, _socket.SOCK_STREAM)
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
        try:
            bind_unix(sock, name)
            if not name.startswith("@"):
                # only this user may connect (the peer's uid is checked as well, which is
                # what guards abstract names and the moment before this chmod)
                os.chmod(name, 0o600)
                st = os.stat(name)
                self._inode = (st.st_dev, st.st_ino)
            sock.listen(8)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._clients.add(task)
        try:
            if not _peer_allowed(writer):
                return
            try:
                line = await asyncio.wait_for(reader.readline(), REQUEST_TIMEOUT)
            except (TimeoutError, ValueError, ConnectionError):
                return
            try:
                req = json.loads(line[:MAX_REQUEST]) if line else {}
            except ValueError:
                req = {}
            if not isinstance(req, dict) or req.get("request") != "status":
                answer: dict[str, Any] = {"error": "unknown request; send "
                                          "{\"request\": \"status\"}"}
            else:
                answer = process_status(self.interfaces(), self.app)
            writer.write(json.dumps(answer).encode() + b"\n")
            with contextlib.suppress(ConnectionError, TimeoutError):
                await asyncio.wait_for(writer.drain(), REQUEST_TIMEOUT)
        finally:
            writer.close()
            if task is not None:
                self._clients.discard(task)

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            for t in list(self._clients):
                t.cancel()
            if self._clients:
                await asyncio.gather(*self._clients, return_exceptions=True)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)
        self._unlink()

    def _unlink(self) -> None:
        inode, self._inode = self._inode, None
        name = self.name
        if inode is None or name is None or name.startswith("@"):
            return
        try:
            st = os.lstat(name)
            if (st.st_dev, st.st_ino) == inode:  # never remove someone else's replacement
                os.unlink(name)
        except OSError:
            pass


def _peer_allowed(writer: asyncio.StreamWriter) -> bool:
    sock = writer.get_extra_info("socket")
    creds = peer_credentials(sock) if sock is not None else None
    return creds is not None and creds.uid in (os.getuid(), 0)

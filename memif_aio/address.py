"""AF_UNIX addresses, written once: memif socket names, network namespaces, long paths,
stale socket files, ``/proc/net/unix`` and ``SO_PEERCRED``.

Used by :class:`~memif_aio.Socket`, the CLI's status endpoint and the DPDK test driver.

Names (:func:`parse_address`):

* ``@NAME`` and ``abstract:NAME``: the abstract socket ``"\\0NAME"`` (compact, as libmemif's
  ``@``, VPP's ``abstract:`` and DPDK 21.08+ use it);
* ``abstract:NAME,netns_name=NS`` and ``abstract:NAME,netns_pid=PID``: VPP's forms for an
  abstract socket in another network namespace (a bare ``NS`` is ``/var/run/netns/NS``);
* ``...,padded``: the abstract name padded with NULs to the whole 108 bytes of ``sun_path``
  (DPDK 20.11-21.05 and CNDP before its PR #120 bind and connect that way);
* anything else is a filesystem path, of any length: paths longer than ``sun_path`` go
  through an ``O_PATH`` fd of their directory and ``/proc/self/fd/N/NAME``.

A namespace is entered only by a short-lived thread of our own that creates the socket and
returns it unbound (never a pooled executor worker: one left in a foreign namespace would
poison later calls); ``bind``/``listen``/``connect`` then run wherever the caller is, and the
socket keeps its namespace.  Nothing here creates a namespace.
"""

from __future__ import annotations

import errno
import os
import socket as _socket
import stat
import struct
import sys
import threading
from dataclasses import dataclass
from typing import IO, Any, Union

__all__ = [
    "SUN_PATH_MAX", "Netns", "NetnsSpec", "PeerCredentials", "SocketAddress", "UnixSocketEntry",
    "bind_unix", "connect_unix", "is_socket", "listening_names", "open_netns", "parse_address",
    "peer_credentials", "remove_stale_socket", "socket_address", "socket_in_netns",
    "unix_listening", "unix_sockets",
]

#: bytes of ``sockaddr_un.sun_path`` (Linux): a path or abstract name has at most 107 + NUL
SUN_PATH_MAX = 108
#: where ``ip netns add NAME`` puts a named namespace (VPP's ``netns_name=`` resolves there)
NETNS_RUN_DIR = "/var/run/netns"
_CLONE_NEWNET = 0x40000000
_UCRED = struct.Struct("3i")  # pid, uid, gid

#: what ``netns=`` takes: a name (``/var/run/netns/NAME``), a path (``/proc/PID/ns/net``,
#: a bind mount), an open fd, or an open file
NetnsSpec = Union[str, int, IO[Any]]


# --- peer credentials -----------------------------------------------------------------------

@dataclass(frozen=True)
class PeerCredentials:
    """The peer process of a control connection, from ``SO_PEERCRED``."""

    pid: int
    uid: int
    gid: int


def peer_credentials(sock: _socket.socket) -> PeerCredentials | None:
    """``SO_PEERCRED`` of a connected AF_UNIX socket (None if the kernel will not tell)."""
    try:
        raw = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, _UCRED.size)
    except OSError:
        return None
    return PeerCredentials(*_UCRED.unpack(raw))


# --- network namespaces ------------------------------------------------------------------------

@dataclass(frozen=True)
class Netns:
    """A network namespace named by the user, not yet opened (:func:`open_netns` opens it).

    ``path`` is what is opened (None for an fd given by the caller); ``label`` is how it is
    shown (``show``, the status endpoint, link events, ``repr(Socket)``)."""

    label: str
    path: str | None = None
    fd: int | None = None  #: the caller's fd (it stays theirs: :func:`open_netns` dups it)

    @classmethod
    def from_spec(cls, spec: NetnsSpec | Netns) -> Netns:
        if isinstance(spec, Netns):
            return spec
        if isinstance(spec, bool):
            raise TypeError("netns must be a name, a path, an fd or an open file")
        if isinstance(spec, int):
            if spec < 0:
                raise ValueError(f"netns fd {spec} is not an open fd")
            return cls(f"fd {spec}", fd=spec)
        if isinstance(spec, str):
            if not spec or "\0" in spec:
                raise ValueError(f"netns {spec!r} is not a namespace name or path")
            if "/" in spec:
                return cls(spec, spec)
            if spec in (".", ".."):
                raise ValueError(f"netns {spec!r} is not a namespace name")
            return cls(spec, os.path.join(NETNS_RUN_DIR, spec))
        fileno = getattr(spec, "fileno", None)
        if callable(fileno):
            name = getattr(spec, "name", None)
            fd = int(fileno())
            return cls(name if isinstance(name, str) else f"fd {fd}", fd=fd)
        raise TypeError("netns must be a name, a path, an fd or an open file")

    @classmethod
    def of_pid(cls, pid: int) -> Netns:
        if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
            raise ValueError(f"netns_pid must be a positive pid, not {pid!r}")
        return cls(f"pid {pid}", f"/proc/{pid}/ns/net")


def _permission_hint(what: str, exc: OSError) -> PermissionError:
    return PermissionError(
        exc.errno or errno.EPERM,
        f"{what}: {exc.strerror or 'permission denied'} (entering another network namespace "
        "needs CAP_SYS_ADMIN, and opening /proc/PID/ns/net of another user's process needs "
        "ptrace access to it: run as root or grant CAP_SYS_ADMIN)")


def open_netns(ns: Netns) -> int:
    """A new O_CLOEXEC fd of the namespace ``ns`` (the caller closes it).

    ``FileNotFoundError`` names a missing namespace (we never create one);
    ``PermissionError`` carries the CAP_SYS_ADMIN hint; ``ValueError`` if it is not a
    network namespace."""
    if ns.fd is not None:
        try:
            fd = os.dup(ns.fd)
        except OSError as exc:
            raise ValueError(f"netns {ns.label}: {exc.strerror}") from None
    else:
        assert ns.path is not None
        try:
            fd = os.open(ns.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            hint = (" (a name is looked up in /var/run/netns/, as `ip netns add NAME` makes it"
                    "; memif_aio never creates a namespace)" if ns.path.startswith(NETNS_RUN_DIR)
                    else " (memif_aio never creates a namespace)")
            raise FileNotFoundError(errno.ENOENT, f"network namespace {ns.label!r} not found at "
                                                  f"{ns.path}{hint}", ns.path) from None
        except PermissionError as exc:
            raise _permission_hint(f"cannot open network namespace {ns.path}", exc) from None
    try:
        st = os.fstat(fd)
        # nsfs files are regular-looking inodes on the nsfs filesystem; a directory, a socket,
        # ... is certainly not one (setns says EINVAL for the rest)
        if stat.S_ISDIR(st.st_mode) or stat.S_ISSOCK(st.st_mode) or stat.S_ISFIFO(st.st_mode):
            raise ValueError(f"netns {ns.label} is not a network namespace")
    except BaseException:
        os.close(fd)
        raise
    return fd


if sys.version_info >= (3, 12):
    def _setns(fd: int) -> None:
        os.setns(fd, os.CLONE_NEWNET)
else:  # Python 3.11 has no os.setns: libc's, through ctypes (imported on first use only)
    _libc: Any = None

    def _setns(fd: int) -> None:
        global _libc
        if _libc is None:
            import ctypes
            import ctypes.util

            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            libc.setns.argtypes = (ctypes.c_int, ctypes.c_int)
            libc.setns.restype = ctypes.c_int
            _libc = (libc, ctypes.get_errno)
        libc, get_errno = _libc
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            err = get_errno()
            raise OSError(err, os.strerror(err))


def socket_in_netns(netns_fd: int | None, sock_type: int = _socket.SOCK_SEQPACKET,
                    label: str = "") -> _socket.socket:
    """A new, unbound, non-blocking AF_UNIX socket (CLOEXEC) in the namespace ``netns_fd``
    (None: ours).  The socket is created by a dedicated short-lived thread that enters the
    namespace and ends; the calling thread never changes namespace."""
    kind = sock_type | _socket.SOCK_CLOEXEC | _socket.SOCK_NONBLOCK
    if netns_fd is None:
        return _socket.socket(_socket.AF_UNIX, kind)
    result: list[_socket.socket | BaseException] = []

    def enter_and_create() -> None:
        try:
            _setns(netns_fd)
        except OSError as exc:
            what = f"cannot enter network namespace {label or netns_fd}"
            if exc.errno == errno.EPERM:
                result.append(_permission_hint(what, exc))
            elif exc.errno == errno.EINVAL:
                result.append(ValueError(f"{what}: not a network namespace"))
            else:
                result.append(OSError(exc.errno, f"{what}: {exc.strerror}"))
            return
        try:
            result.append(_socket.socket(_socket.AF_UNIX, kind))
        except OSError as exc:
            result.append(exc)

    # a few syscalls: joined at once (its namespace dies with it)
    thread = threading.Thread(target=enter_and_create, name="memif_aio netns", daemon=True)
    thread.start()
    thread.join()
    out = result[0]
    if isinstance(out, BaseException):
        raise out
    return out


# --- names -----------------------------------------------------------------------------------

_OPTIONS = ("netns_name=", "netns_pid=")


@dataclass(frozen=True)
class SocketAddress:
    """A parsed memif socket name.

    ``name`` is the abstract name (without the NUL) or the filesystem path; ``netns`` the
    namespace it lives in (None: ours); ``padded``: the abstract name is padded with NULs
    to the whole ``sun_path``."""

    name: str
    abstract: bool
    padded: bool = False
    netns: Netns | None = None

    @property
    def sockaddr(self) -> bytes:
        """The bytes of ``sun_path`` for bind/connect (abstract names: with the leading NUL
        and, padded, the trailing ones).  A path longer than ``sun_path`` has none: use
        :func:`bind_unix` / :func:`connect_unix`."""
        raw = os.fsencode(self.name)
        if self.abstract:
            raw = b"\0" + raw
            return raw.ljust(SUN_PATH_MAX, b"\0") if self.padded else raw
        return raw

    @property
    def display(self) -> str:
        """How /proc/net/unix and ``ss`` show it (``@name`` for abstract)."""
        return "@" + self.name if self.abstract else self.name

    def __str__(self) -> str:
        return self.display


def parse_address(filename: str, *, netns: NetnsSpec | Netns | None = None,
                  padded: bool = False) -> SocketAddress:
    """Parse a memif socket name (see the module docstring).

    ``netns=`` names the namespace for the ``@NAME`` and path forms (for ``abstract:``, the
    string's ``netns_name=``/``netns_pid=`` may be used instead, not both); ``padded=True``
    is the same as a ``,padded`` suffix (abstract names only)."""
    if not isinstance(filename, str):
        raise TypeError("a socket name is a str")
    ns = Netns.from_spec(netns) if netns is not None else None
    abstract = filename.startswith(("@", "abstract:"))
    if abstract:
        body = filename[1:] if filename.startswith("@") else filename[len("abstract:"):]
        parts = body.split(",")
        # trailing options; a comma followed by anything else stays part of the name
        while len(parts) > 1 and (parts[-1] == "padded" or parts[-1].startswith(_OPTIONS)):
            opt = parts.pop()
            if opt == "padded":
                padded = True
                continue
            if ns is not None:
                raise ValueError(f"{filename!r}: give the namespace once (netns= or "
                                 f"{opt.split('=')[0]}=), not twice")
            key, _, value = opt.partition("=")
            if not value:
                raise ValueError(f"{filename!r}: {key}= needs a value")
            if key == "netns_pid":
                try:
                    pid = int(value, 10)
                except ValueError:
                    raise ValueError(f"{filename!r}: netns_pid={value!r} is not a pid") from None
                ns = Netns.of_pid(pid)
            else:
                ns = Netns.from_spec(value)
        name = ",".join(parts)
    else:
        name = filename
        if padded:
            raise ValueError(f"{filename!r}: only an abstract name can be padded")
    if not name:
        raise ValueError("empty socket name")
    if "\0" in name:
        raise ValueError(f"socket name {filename!r} contains NUL")
    if abstract and len(os.fsencode(name)) > SUN_PATH_MAX - 1:
        raise ValueError(f"abstract socket name {filename!r} too long (at most "
                         f"{SUN_PATH_MAX - 1} bytes)")
    return SocketAddress(name, abstract, padded, ns)


def socket_address(filename: str) -> str:
    """The ``sockaddr_un`` path for a memif socket name, as a str (``"\\0name"`` for
    abstract names; kept for callers of the old helper; :func:`parse_address` is the full
    parser)."""
    addr = parse_address(filename)
    return os.fsdecode(addr.sockaddr)


# --- bind/connect, any path length -------------------------------------------------------------

def _via_dir_fd(path: str) -> tuple[int | None, bytes]:
    """(dir fd or None, the address to use) for ``path``: itself when it fits sun_path,
    else ``/proc/self/fd/N/NAME`` through an O_PATH fd of its directory."""
    raw = os.fsencode(path)
    if len(raw) < SUN_PATH_MAX:
        return None, raw
    head, tail = os.path.split(raw)
    if not tail:
        raise ValueError(f"socket path {path!r} names a directory")
    dfd = os.open(head or b".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    short = b"/proc/self/fd/%d/%s" % (dfd, tail)
    if len(short) >= SUN_PATH_MAX:
        os.close(dfd)
        raise ValueError(f"socket path {path!r}: its last component is too long for "
                         f"sun_path ({len(tail)} bytes; at most {SUN_PATH_MAX - 25})")
    return dfd, short


def _sockaddr(addr: SocketAddress | str) -> tuple[int | None, bytes]:
    if isinstance(addr, str):
        addr = parse_address(addr)
    if addr.abstract:
        return None, addr.sockaddr
    return _via_dir_fd(addr.name)


def bind_unix(sock: _socket.socket, addr: SocketAddress | str) -> None:
    """``sock.bind`` at ``addr`` (a parsed name or a memif name string), any path length."""
    dfd, raw = _sockaddr(addr)
    try:
        sock.bind(raw)
    finally:
        if dfd is not None:
            os.close(dfd)


def connect_unix(sock: _socket.socket, addr: SocketAddress | str) -> None:
    """``sock.connect`` to ``addr``, any path length (non-blocking sockets raise as usual)."""
    dfd, raw = _sockaddr(addr)
    try:
        sock.connect(raw)
    finally:
        if dfd is not None:
            os.close(dfd)


# --- socket files --------------------------------------------------------------------------------

def is_socket(path: str) -> bool:
    """True if ``path`` is a socket file (not following a symlink)."""
    try:
        return stat.S_ISSOCK(os.lstat(path).st_mode)
    except OSError:
        return False


def remove_stale_socket(path: str, sock_type: int = _socket.SOCK_SEQPACKET) -> bool:
    """Unlink the socket file at ``path`` if nobody listens on it (a dead process left it).

    True if one was removed, False if there was nothing.  ``FileExistsError`` if ``path``
    is not a socket (it is left alone), ``OSError(EADDRINUSE)`` if a live socket is bound
    there (as VPP refuses it), another ``OSError`` if it cannot be probed.  The probe is a
    non-blocking ``connect`` of type ``sock_type``; it never waits."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISSOCK(st.st_mode):
        raise FileExistsError(errno.EEXIST, f"{path} exists and is not a socket", path)
    probe = _socket.socket(_socket.AF_UNIX, sock_type | _socket.SOCK_CLOEXEC)
    probe.setblocking(False)
    try:
        connect_unix(probe, parse_address(path))
    except ConnectionRefusedError:
        os.unlink(path)
        return True
    except BlockingIOError:
        pass  # backlog full: someone is listening
    except OSError as exc:
        if exc.errno != errno.EPROTOTYPE:  # bound by a live socket of another type
            raise OSError(exc.errno, f"cannot probe existing socket {path}: {exc.strerror}",
                          path) from None
    else:
        pass  # accepted: a live listener
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, f"{path} is in use by a live listener (another process "
                                    "serves it)", path)


# --- /proc/net/unix ------------------------------------------------------------------------------

#: ``/proc/net/unix`` flag of a listening socket (``__SO_ACCEPTCON``)
_SO_ACCEPTCON = 0x10000


@dataclass(frozen=True)
class UnixSocketEntry:
    """One line of ``/proc/net/unix``."""

    inode: int
    type: int  #: ``socket.SOCK_STREAM``, ``SOCK_DGRAM``, ``SOCK_SEQPACKET``
    state: int
    flags: int
    name: str  #: ``@name`` for abstract (each NUL shown as ``@``), a path, or ''

    @property
    def listening(self) -> bool:
        return bool(self.flags & _SO_ACCEPTCON)


def unix_sockets(pid: int | None = None) -> list[UnixSocketEntry]:
    """The AF_UNIX sockets of a network namespace: ours, or that of process ``pid``
    (``/proc/PID/net/unix``).  Empty if the table cannot be read."""
    entries = []
    try:
        with open("/proc/net/unix" if pid is None else f"/proc/{pid}/net/unix") as f:
            next(f, None)
            for line in f:
                parts = line.rstrip("\n").split(None, 7)
                if len(parts) < 7:
                    continue
                try:
                    entries.append(UnixSocketEntry(
                        inode=int(parts[6]), type=int(parts[4], 16), state=int(parts[5], 16),
                        flags=int(parts[3], 16), name=parts[7] if len(parts) == 8 else ""))
                except ValueError:
                    continue
    except OSError:
        pass
    return entries


def listening_names(sock_type: int | None = None, pid: int | None = None,
                    abstract_only: bool = False) -> list[str]:
    """Names of the listening AF_UNIX sockets (of ``sock_type``, if given) of our network
    namespace or that of process ``pid``; ``abstract_only``: only ``@name`` ones."""
    return [e.name for e in unix_sockets(pid)
            if e.listening and e.name and (sock_type is None or e.type == sock_type)
            and (not abstract_only or e.name.startswith("@"))]


def unix_listening(name: str, pid: int | None = None) -> bool:
    """True if a listening AF_UNIX socket named ``name`` (``@x`` for abstract) exists in our
    network namespace or that of process ``pid``."""
    return name in listening_names(pid=pid)

"""The memif control channel as sans-I/O state machines (protocol reference §5).

:class:`ServerHandshake` runs one accepted connection on the master side,
:class:`ClientHandshake` one connection of a slave interface.  Both are fed
with what arrives - ``receive(data, fds)``, ``eof()``, ``timeout()`` - and
answer with a list of outputs for the shell to carry out, in order.  An output
is either a :class:`Command` (something to do) or an :class:`Event` (something
that happened):

* :class:`SendMessage` (command) - one 128-byte datagram, maybe with one fd;
* :class:`InitAccepted` (event) - (server) the connection now holds interface ``id``;
* :class:`Established` (event) - the handshake is complete, here is the :class:`Session`;
* :class:`Closed` (event) - the connection is over (close the socket after the sends).

They never touch a socket, the event loop or a clock.  They own every fd
received until it is handed over in a :class:`Session` (or closed on error):
whatever the peer sends, nothing leaks (see "Who owns an fd" below).

The two machines
================

Each role's states and transitions are written once, as data, in
:data:`SERVER_TRANSITIONS` and :data:`CLIENT_TRANSITIONS` below (the way h11's
``_state.py`` writes HTTP/1.1's): ``TABLE[state][trigger] -> next state``,
where a trigger is a message type either received from the peer
(``(RECEIVED, type)``) or sent by this machine (``(SENT, type)``).  The rules:

1. A message received in a state whose row has no ``(RECEIVED, its type)``
   entry is a protocol violation, ``"unexpected message <TYPE>"``.  Nothing
   else decides which message may come when.
2. A received message first moves the machine to the state the table names,
   then its handler checks the message's fields and builds the outputs.  Any
   check that fails is a violation, and a violation ends in ``CLOSED``, so the
   early move is never seen from outside.
3. A message this machine sends moves it only where its row has a
   ``(SENT, type)`` entry (the client's CONNECT: from then on it waits for
   CONNECTED, not for an ACK).  Other sends leave the state alone.
4. In every state but ``CLOSED``: a DISCONNECT received or EOF (``by_peer``),
   a local :meth:`close` or a violation (we send DISCONNECT(reason) first)
   lead to ``CLOSED``; :meth:`timeout` does so only before ``CONNECTED``.
   These apply everywhere, so they are rules, not table rows.
5. ``CLOSED`` is final: its row is empty, and what reaches a closed machine
   is dropped (fds closed) with no output.
6. Before the table is consulted a datagram must be a whole 128-byte message
   of a known type, carrying at most the one fd its type may carry
   (:data:`FD_MESSAGES`: ADD_REGION, ADD_RING).  Only the server takes those:
   an fd sent to a client is an "unexpected file descriptor".

Server (master) - it speaks first, sending HELLO on accept::

    WAIT_INIT      --INIT-->        WAIT_CONFIG     ACK; the target interface checked
    WAIT_CONFIG    --ADD_REGION-->  WAIT_CONFIG     ACK; region mapped
    WAIT_CONFIG    --ADD_RING-->    WAIT_CONFIG     ACK; ring checked
    WAIT_CONFIG    --CONNECT-->     CONNECTED       Established, then CONNECTED
    CONNECTED      --ACK-->         CONNECTED       ignored

Client (slave) - each configuration message waits for the server's ACK::

    WAIT_HELLO     --HELLO-->       WAIT_ACK        region, eventfds made; send INIT
    WAIT_ACK       --ACK-->         WAIT_ACK        send the next: ADD_REGION, ADD_RING...
    WAIT_ACK       ==CONNECT==>     WAIT_CONNECTED  (sent, the last one)
    WAIT_CONNECTED --CONNECTED-->   CONNECTED       Established
    CONNECTED      --ACK-->         CONNECTED       ignored

Who owns an fd
==============

* An fd that arrives with a message belongs to :meth:`_Machine.receive` while
  the message is handled, held in an :class:`IncomingFd`.  A handler that keeps
  it calls :meth:`IncomingFd.hand_over`: the owner it names (a mapped
  :class:`Region`, or the machine's list of held eventfds) owns it once that
  call returns; if the call raises, the fd is still the message's.  Whatever
  was not handed over when the handler returns or raises is closed.
* The machine owns the regions and eventfds it holds (``_regions``,
  ``_held_fds``) until :meth:`_Machine._hand_over` gives them to the
  :class:`Session` of :class:`Established`; from then on the session (the
  interface's link) closes them.  Teardown closes whatever the machine still
  holds - nothing, after a hand-over.
"""

from __future__ import annotations

import enum
import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, Union

from .config import DEFAULT_PACKET_BUFFER_SIZE, MemoryConfig
from .errors import ProtocolViolation
from .eventfd import check_peer_eventfd, close_fds, new_eventfd
from .memory import MAX_REGION_SIZE, ClientLayout, Region, infer_cache_line
from .ring import (
    M2SConsumer,
    M2SProducer,
    S2MConsumer,
    S2MProducer,
    check_ring_geometry,
    validate_initial_indices,
)
from .wire import (
    DESC_LENGTH_OFF,
    MAX_LOG2_RING_SIZE,
    MAX_REGION_INDEX,
    MAX_RING_INDEX,
    MAX_USABLE_LOG2_RING_SIZE,
    MSG_ADD_RING_FLAG_S2M,
    U32,
    VERSION,
    Message,
    MsgAck,
    MsgAddRegion,
    MsgAddRing,
    MsgConnect,
    MsgConnected,
    MsgDisconnect,
    MsgHello,
    MsgInit,
    MsgType,
    RingLayout,
    RingType,
    WireError,
    decode_message,
    message_type,
    to_text,
)

# ----------------------------------------------------------------------------
# States and transitions
# ----------------------------------------------------------------------------


class ServerState(enum.Enum):
    WAIT_INIT = "wait-init"
    WAIT_CONFIG = "wait-config"
    CONNECTED = "connected"
    CLOSED = "closed"


class ClientState(enum.Enum):
    WAIT_HELLO = "wait-hello"
    WAIT_ACK = "wait-ack"
    WAIT_CONNECTED = "wait-connected"
    CONNECTED = "connected"
    CLOSED = "closed"


class Way(enum.Enum):
    """Which way the message of a trigger travelled."""

    RECEIVED = "received"  #: from the peer
    SENT = "sent"  #: by this machine


RECEIVED = Way.RECEIVED
SENT = Way.SENT
#: what moves a machine: a message type, received or sent
Trigger = tuple[Way, MsgType]
#: the message types that may carry an fd on the wire (rule 6)
FD_MESSAGES = frozenset({MsgType.ADD_REGION, MsgType.ADD_RING})

SERVER_TRANSITIONS: Mapping[ServerState, Mapping[Trigger, ServerState]] = {
    ServerState.WAIT_INIT: {
        (RECEIVED, MsgType.INIT): ServerState.WAIT_CONFIG,
    },
    ServerState.WAIT_CONFIG: {
        (RECEIVED, MsgType.ADD_REGION): ServerState.WAIT_CONFIG,
        (RECEIVED, MsgType.ADD_RING): ServerState.WAIT_CONFIG,
        (RECEIVED, MsgType.CONNECT): ServerState.CONNECTED,
    },
    ServerState.CONNECTED: {
        (RECEIVED, MsgType.ACK): ServerState.CONNECTED,
    },
    ServerState.CLOSED: {},
}

CLIENT_TRANSITIONS: Mapping[ClientState, Mapping[Trigger, ClientState]] = {
    ClientState.WAIT_HELLO: {
        (RECEIVED, MsgType.HELLO): ClientState.WAIT_ACK,
    },
    ClientState.WAIT_ACK: {
        (RECEIVED, MsgType.ACK): ClientState.WAIT_ACK,
        (SENT, MsgType.CONNECT): ClientState.WAIT_CONNECTED,
    },
    ClientState.WAIT_CONNECTED: {
        (RECEIVED, MsgType.CONNECTED): ClientState.CONNECTED,
    },
    ClientState.CONNECTED: {
        (RECEIVED, MsgType.ACK): ClientState.CONNECTED,
    },
    ClientState.CLOSED: {},
}

# ----------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------


class Command:
    """An output the shell carries out (today: send a message)."""

    __slots__ = ()


class Event:
    """An output that tells the shell what happened to the connection."""

    __slots__ = ()


@dataclass(frozen=True)
class SendMessage(Command):
    data: bytes
    fd: int | None = None


@dataclass(frozen=True)
class InitAccepted(Event):
    interface_id: int
    peer_name: bytes


@dataclass(frozen=True)
class Established(Event):
    session: Session


@dataclass(frozen=True)
class Closed(Event):
    reason: str
    by_peer: bool


Output = Union[Command, Event]


# ----------------------------------------------------------------------------
# The session: what a completed handshake hands over
# ----------------------------------------------------------------------------


@dataclass
class Session:
    """Shared memory, rings and eventfds of one connection, owned by the interface.

    ``rx[i]``/``tx[i]`` are the rings of queue ``i`` from this side's point of
    view; ``rx_eventfds[i]``/``tx_eventfds[i]`` their interrupt eventfds.
    """

    is_master: bool
    regions: list[Region]
    rx: list[Union[S2MConsumer, M2SConsumer]]
    tx: list[Union[S2MProducer, M2SProducer]]
    rx_eventfds: list[int]
    tx_eventfds: list[int]
    peer_name: bytes
    peer_if_name: bytes
    log2_ring_size: int
    buffer_size: int
    #: the negotiated geometry, validated by MemoryConfig's own checks
    memory_config: MemoryConfig
    #: the cache-line size of the ring layout (a master in auto mode: the inferred one)
    cache_line_size: int = 64
    closed: bool = field(default=False)

    def close(self) -> None:
        """Release ring views, unmap every region, close every fd (§5.7)."""
        if self.closed:
            return
        self.closed = True
        for ring in (*self.rx, *self.tx):
            ring.release()
        for region in self.regions:
            region.close()
        close_fds(self.rx_eventfds)
        close_fds(self.tx_eventfds)


_ACK = MsgAck().encode()
T = TypeVar("T")
S = TypeVar("S", bound=enum.Enum)
#: a handler: checks one received message (and its fd) and builds the outputs
Handler = Callable[[Any, "IncomingFd"], list[Output]]


class IncomingFd:
    """The fd (if any) that came with one received message, and its hand-over.

    :meth:`_Machine.receive` owns it while the message is handled and closes it
    afterwards unless a handler handed it over (see "Who owns an fd" above).
    """

    __slots__ = ("_fd",)

    def __init__(self, fd: int | None) -> None:
        self._fd = fd

    @property
    def present(self) -> bool:
        return self._fd is not None

    def hand_over(self, owner: Callable[[int], T]) -> T:
        """Give the fd to ``owner(fd)``.  Once it returns, what it returned owns the fd;
        if it raises, the fd is still this message's (and closed with it)."""
        assert self._fd is not None, "no fd to hand over"
        result = owner(self._fd)
        self._fd = None
        return result

    def close(self) -> None:
        """Close the fd unless it was handed over."""
        if self._fd is not None:
            close_fds([self._fd])
            self._fd = None


class _Machine(Generic[S]):
    """Common plumbing of both roles: the table lookup, fd ownership, teardown,
    DISCONNECT/EOF/timeout handling (rules 1-6 above)."""

    #: the message types that may carry an fd to this role (rule 6)
    _FD_TYPES: frozenset[MsgType] = frozenset()

    def __init__(self, table: Mapping[S, Mapping[Trigger, S]], initial: S, connected: S,
                 closed: S) -> None:
        self._table = table
        self.state: S = initial
        self._connected_state = connected
        self._closed_state = closed
        self._handlers: dict[MsgType, Handler] = {}
        # what this machine owns until _hand_over() gives it to a Session
        self._regions: list[Region] = []
        self._held_fds: list[int] = []  # eventfds

    @property
    def closed(self) -> bool:
        """The connection is over (``state`` is ``CLOSED``)."""
        return self.state is self._closed_state

    @property
    def established(self) -> bool:
        """The handshake completed and the connection is still up (``state`` is ``CONNECTED``)."""
        return self.state is self._connected_state

    # -- inputs ----------------------------------------------------------------
    def receive(self, data: bytes, fds: list[int] | tuple[int, ...] = (),
                truncated: bool = False) -> list[Output]:
        """Feed one datagram (and the fds that came with it)."""
        fds = list(fds)
        if self.closed:
            close_fds(fds)
            return []
        try:
            if truncated:
                raise ProtocolViolation("truncated message or control data")
            try:
                t = message_type(data)
            except WireError as exc:
                raise ProtocolViolation(str(exc)) from None
            if t == MsgType.DISCONNECT:
                close_fds(fds)
                msg = decode_message(data)
                assert isinstance(msg, MsgDisconnect)
                return self._teardown(to_text(msg.string) or "peer disconnected", by_peer=True)
            if len(fds) > (1 if t in FD_MESSAGES else 0):
                raise ProtocolViolation(
                    f"{len(fds)} file descriptors attached to a {_type_name(t)} message")
            try:
                msg = decode_message(data)
            except WireError as exc:
                raise ProtocolViolation(str(exc)) from None
        except ProtocolViolation as exc:
            close_fds(fds)
            return self._fail(exc.reason)
        incoming = IncomingFd(fds.pop() if fds else None)
        try:
            return self._step(msg, incoming)
        except ProtocolViolation as exc:
            incoming.close()  # before the teardown's DISCONNECT, as the fds above
            return self._fail(exc.reason)
        finally:
            incoming.close()

    def eof(self) -> list[Output]:
        """The peer closed the socket (or it failed): same as an empty DISCONNECT."""
        if self.closed:
            return []
        return self._teardown(self._eof_reason(), by_peer=True)

    def timeout(self) -> list[Output]:
        """The handshake timer fired (the shell calls this only before Established)."""
        if self.closed or self.established:
            return []
        return self._fail("handshake timeout")

    def close(self, reason: str) -> list[Output]:
        """A local decision to disconnect: DISCONNECT(reason), then close."""
        if self.closed:
            return []
        return self._fail(reason, by_peer=False)

    # -- the table -----------------------------------------------------------------
    def _step(self, msg: Message, fd: IncomingFd) -> list[Output]:
        """Rules 1 and 2: look the message up in this state's row, move, then handle it."""
        if fd.present and msg.TYPE not in self._FD_TYPES:
            raise ProtocolViolation("unexpected file descriptor")
        next_state = self._table[self.state].get((RECEIVED, msg.TYPE))
        if next_state is None:
            raise _unexpected(msg)
        self.state = next_state
        return self._handlers[msg.TYPE](msg, fd)

    def _send(self, data: bytes, t: MsgType, fd: int | None = None) -> SendMessage:
        """Rule 3: a message of type ``t`` goes out (moving the state if the row says so)."""
        next_state = self._table[self.state].get((SENT, t))
        if next_state is not None:
            self.state = next_state
        return SendMessage(data, fd)

    # -- ownership -------------------------------------------------------------------
    def _hold(self, fd: int) -> int:
        """Own an eventfd until the hand-over (an :meth:`IncomingFd.hand_over` owner)."""
        self._held_fds.append(fd)
        return fd

    def _hand_over(self) -> list[Region]:
        """Give the regions and held eventfds away (to the Session being built): the
        machine owns nothing from here on.  Returns the regions."""
        regions = self._regions
        self._regions = []
        self._held_fds = []
        return regions

    # -- helpers -----------------------------------------------------------------
    def _eof_reason(self) -> str:
        return "peer closed the connection"

    def _fail(self, reason: str, by_peer: bool = False) -> list[Output]:
        out: list[Output] = [SendMessage(MsgDisconnect.reason(reason).encode())]
        out.extend(self._teardown(reason, by_peer))
        return out

    def _teardown(self, reason: str, by_peer: bool) -> list[Output]:
        self.state = self._closed_state
        for region in self._regions:
            region.close()
        self._regions = []
        close_fds(self._held_fds)
        return [Closed(reason, by_peer)]


def _type_name(t: int) -> str:
    try:
        return MsgType(t).name
    except ValueError:
        return f"type 0x{t:x}"


def _unexpected(msg: Message) -> ProtocolViolation:
    return ProtocolViolation(f"unexpected message {msg.TYPE.name}")


# ----------------------------------------------------------------------------
# Server (master)
# ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerTarget:
    """What the server machine needs to know about a master interface: a snapshot
    the shell takes when INIT names the interface (``ServerConfig.lookup``)."""

    mode: int = 0
    secret: bytes = b""
    busy: bool = False  #: already connected or handshaking (or deleted): refuse
    if_name: bytes = b""
    cache_line_size: int = 64
    require_seal: bool = True
    #: infer the client's cache-line size from its ring layout at CONNECT
    #: (:func:`~memif_aio.memory.infer_cache_line`); ``cache_line_size`` is then the
    #: fallback for a layout that shows nothing (no region holding two rings)
    infer_cache_line: bool = False


#: Regions one connection may add before CONNECT (a policy below the wire's 256).  Copy-mode
#: clients add 1 (VPP, DPDK, gomemif, memif_aio) or 2 (libmemif); zero-copy clients add region 0
#: plus one per buffer pool (VPP) or memseg list in use (DPDK), "typically 2 to 3" (§8.1, §8.2).
DEFAULT_MAX_REGIONS = 16
#: What a received region costs in fds while it is mapped: our fd and the mapping's own
#: (Python's ``mmap`` keeps a dup of the fd).  Charged in full even once the region fd is
#: released, so the bound holds whatever ``memory.py`` keeps open.
REGION_FDS = 2


class HandshakeBudget:
    """What every connection of one socket that has not reached CONNECT may make us hold,
    together: fds (regions and ring eventfds) and bytes of mapped regions.

    Pure bookkeeping shared by the :class:`ServerHandshake` machines of a socket: a machine
    charges a region or a ring before it keeps it and gives everything back when it is
    established (the link owns the resources from then on) or torn down.
    """

    def __init__(self, max_fds: int, max_bytes: int) -> None:
        if max_fds < 0 or max_bytes < 0:
            raise ValueError("handshake budget limits must not be negative")
        self.max_fds = max_fds
        self.max_bytes = max_bytes
        self.fds = 0
        self.bytes = 0

    def refusal(self, fds: int, nbytes: int = 0) -> str | None:
        """Why ``fds`` more fds and ``nbytes`` more bytes cannot be taken (None: they can)."""
        if self.fds + fds > self.max_fds:
            return "too many file descriptors held by handshakes in progress"
        if self.bytes + nbytes > self.max_bytes:
            return "too much memory mapped by handshakes in progress"
        return None

    def take(self, fds: int, nbytes: int = 0) -> None:
        self.fds += fds
        self.bytes += nbytes

    def give(self, fds: int, nbytes: int = 0) -> None:
        self.fds -= fds
        self.bytes -= nbytes
        assert self.fds >= 0 and self.bytes >= 0, "handshake budget given back twice"


def _unbounded_budget() -> HandshakeBudget:
    return HandshakeBudget(1 << 62, 1 << 62)


@dataclass(frozen=True)
class ServerConfig:
    """The server machines' policy; one per socket (``budget`` is shared by its machines)."""

    app_name: bytes = b"memif_aio"
    lookup: Callable[[int], ServerTarget | None] = lambda _id: None
    max_total_region_size: int = 1 << 34  # 16 GiB of mappings per connection
    max_regions: int = DEFAULT_MAX_REGIONS  # per connection, 1..MAX_REGION_INDEX + 1
    budget: HandshakeBudget = field(default_factory=_unbounded_budget)

    def __post_init__(self) -> None:
        if not 1 <= self.max_regions <= MAX_REGION_INDEX + 1:
            raise ValueError(f"max_regions must be in 1..{MAX_REGION_INDEX + 1}")


class ServerHandshake(_Machine[ServerState]):
    """One accepted connection on a master socket (§5.6; :data:`SERVER_TRANSITIONS`)."""

    _FD_TYPES = FD_MESSAGES

    def __init__(self, config: ServerConfig) -> None:
        super().__init__(SERVER_TRANSITIONS, ServerState.WAIT_INIT, ServerState.CONNECTED,
                         ServerState.CLOSED)
        self._handlers = {
            MsgType.INIT: self._on_init,
            MsgType.ADD_REGION: self._on_add_region,
            MsgType.ADD_RING: self._on_add_ring,
            MsgType.CONNECT: self._on_connect,
            MsgType.ACK: self._on_ack,
        }
        self.config = config
        self.layout = RingLayout.for_cache_line(64)  # the interface's own, from INIT on
        self._require_seal = True
        self._infer_cache_line = False
        self._fallback_cache_line = 64
        self.interface_id: int | None = None
        self.peer_name = b""
        self._if_name = b""
        self._total_size = 0
        self._rings: dict[RingType, list[tuple[MsgAddRing, int]]] = {RingType.S2M: [],
                                                                      RingType.M2S: []}
        self._spans: list[tuple[int, int, int]] = []  # (region, start, end) of accepted rings
        self._charged_fds = 0  # what this connection holds of config.budget
        self._charged_bytes = 0

    def start(self) -> list[Output]:
        """Right after accept(): send HELLO."""
        # max_region stays the reference's 255 (its test vector, §14) even when max_regions is
        # lower: no client reads it (§5.2), and a refusal names the limit ("too many regions")
        hello = MsgHello(self.config.app_name, VERSION, VERSION, MAX_REGION_INDEX,
                         MAX_RING_INDEX, MAX_RING_INDEX, MAX_LOG2_RING_SIZE)
        return [self._send(hello.encode(), hello.TYPE)]

    def _charge(self, fds: int, nbytes: int = 0) -> None:
        """Take ``fds`` and ``nbytes`` from the socket's handshake budget, or refuse."""
        budget = self.config.budget
        refusal = budget.refusal(fds, nbytes)
        if refusal is not None:
            raise ProtocolViolation(refusal)
        budget.take(fds, nbytes)
        self._charged_fds += fds
        self._charged_bytes += nbytes

    def _uncharge(self) -> None:
        self.config.budget.give(self._charged_fds, self._charged_bytes)
        self._charged_fds = self._charged_bytes = 0

    def _teardown(self, reason: str, by_peer: bool) -> list[Output]:
        out = super()._teardown(reason, by_peer)
        self._uncharge()  # (after an Established hand-over there is nothing left to give)
        return out

    def _ack(self) -> SendMessage:
        return self._send(_ACK, MsgType.ACK)

    # -- handlers (reached through SERVER_TRANSITIONS only) ----------------------------
    def _on_ack(self, msg: MsgAck, fd: IncomingFd) -> list[Output]:
        return []  # an ACK after CONNECT is ignored

    def _on_init(self, msg: MsgInit, fd: IncomingFd) -> list[Output]:
        if msg.version != VERSION:
            raise ProtocolViolation("incompatible version")
        target = self.config.lookup(msg.id)
        if target is None:
            raise ProtocolViolation("unmatched interface id")
        if target.busy:
            raise ProtocolViolation("already connected")
        if msg.mode != target.mode:
            raise ProtocolViolation("mode mismatch")
        if target.secret:
            if not msg.secret:
                raise ProtocolViolation("secret required")
            if not hmac.compare_digest(msg.secret, target.secret):
                raise ProtocolViolation("incorrect secret")
        self.interface_id = msg.id
        self._if_name = target.if_name
        self._infer_cache_line = target.infer_cache_line
        self._fallback_cache_line = target.cache_line_size
        # inferring: rings are checked with the smaller layout until CONNECT settles it
        self.layout = RingLayout.for_cache_line(64 if target.infer_cache_line
                                                else target.cache_line_size)
        self._require_seal = target.require_seal
        self.peer_name = msg.name
        return [InitAccepted(msg.id, msg.name), self._ack()]

    def _on_add_region(self, msg: MsgAddRegion, fd: IncomingFd) -> list[Output]:
        if not fd.present:
            raise ProtocolViolation("missing memory region fd")
        if msg.index != len(self._regions):
            raise ProtocolViolation("unexpected region index")
        if msg.index >= self.config.max_regions:
            raise ProtocolViolation("too many regions")
        if self._total_size + msg.size > self.config.max_total_region_size:
            raise ProtocolViolation("regions too large")
        refusal = self.config.budget.refusal(REGION_FDS, msg.size)
        if refusal is not None:
            raise ProtocolViolation(refusal)
        # the region owns the fd once mapped (a refusal leaves it to receive(), which closes it)
        region = fd.hand_over(lambda n: Region.map_peer(n, msg.size,
                                                        require_seal=self._require_seal))
        self._regions.append(region)  # owned by the machine until the hand-over
        self._charge(REGION_FDS, msg.size)  # cannot fail: checked above, nothing ran between
        self._total_size += msg.size
        return [self._ack()]

    def _on_add_ring(self, msg: MsgAddRing, fd: IncomingFd) -> list[Output]:
        if not fd.present:
            raise ProtocolViolation("missing ring interrupt fd")
        self._charge(1)  # refused: the fd is still the message's, and receive() closes it
        efd = fd.hand_over(self._hold)  # held from here on; closed at teardown
        check_peer_eventfd(efd)  # an eventfd, not a semaphore; made non-blocking
        if msg.private_hdr_size:
            raise ProtocolViolation("private headers not supported")
        rtype = msg.ring_type
        rings = self._rings[rtype]
        if msg.index != len(rings):
            raise ProtocolViolation("unexpected ring index")
        if msg.index > MAX_RING_INDEX:
            raise ProtocolViolation("too many rings")
        start, end = check_ring_geometry(self._regions, msg.region, msg.offset,
                                         msg.log2_ring_size, self.layout)
        for region, s, e in self._spans:
            if region == msg.region and start < e and s < end:
                raise ProtocolViolation("ring overlaps another ring")
        self._spans.append((msg.region, start, end))
        rings.append((msg, efd))
        return [self._ack()]

    def _on_connect(self, msg: MsgConnect, fd: IncomingFd) -> list[Output]:
        s2m = self._rings[RingType.S2M]
        m2s = self._rings[RingType.M2S]
        if not s2m or not m2s:
            raise ProtocolViolation("at least one ring per direction is required")
        if self._infer_cache_line:
            self._settle_cache_line()
        rx: list[S2MConsumer] = []
        tx: list[M2SProducer] = []
        for ring_msgs, cls, out in ((s2m, S2MConsumer, rx), (m2s, M2SProducer, tx)):
            for m, _fd in ring_msgs:
                ring = cls(self._regions, m.region, m.offset, m.log2_ring_size, self.layout)
                out.append(ring)  # type: ignore[arg-type]
                if not ring.cookie_ok():
                    for r in (*rx, *tx):
                        r.release()
                    kind = "rx" if cls is S2MConsumer else "tx"
                    raise ProtocolViolation(f"wrong cookie on {kind} ring {m.index}")
        first = s2m[0][0]
        # Every client initialises S2M descriptors with length = its buffer size (§6.5);
        # VPP's zero-copy client leaves them at 0: unknown, so the default of every peer.
        bsize = int(U32.unpack_from(rx[0].buf, rx[0].desc0 + DESC_LENGTH_OFF)[0]) \
            or DEFAULT_PACKET_BUFFER_SIZE
        try:
            for r in (*rx, *tx):
                validate_initial_indices(r)
            try:  # the negotiated geometry passes MemoryConfig's checks, or the peer is refused
                memory = MemoryConfig(log2_ring_size=first.log2_ring_size,
                                      packet_buffer_size=bsize, num_rx_queues=len(rx),
                                      num_tx_queues=len(tx))
            except ValueError as exc:
                raise ProtocolViolation(
                    f"unusable rings: rx ring 0 announces {bsize}-byte buffers "
                    f"in descriptor 0 ({exc})") from None
        except ProtocolViolation:
            for r in (*rx, *tx):
                r.release()
            raise
        session = Session(
            is_master=True, regions=self._hand_over(), rx=list(rx), tx=list(tx),
            rx_eventfds=[efd for _m, efd in s2m], tx_eventfds=[efd for _m, efd in m2s],
            peer_name=self.peer_name, peer_if_name=msg.if_name,
            log2_ring_size=first.log2_ring_size, buffer_size=bsize, memory_config=memory,
            cache_line_size=self.layout.cache_line)
        self._uncharge()  # the link owns them now: no longer what an unconnected peer holds
        connected = MsgConnected(self._if_name)
        return [Established(session), self._send(connected.encode(), connected.TYPE)]

    def _settle_cache_line(self) -> None:
        """Auto mode, at CONNECT: infer the client's cache-line size from its ring offsets
        (the platform value when no region holds two rings), then check every ring again,
        bounds and overlaps, with the layout inferred (ADD_RING checked the smaller one)."""
        rings = [(f"{rtype.name} ring {m.index}", m.region, m.offset, m.log2_ring_size)
                 for rtype in (RingType.S2M, RingType.M2S) for m, _fd in self._rings[rtype]]
        cache_line = infer_cache_line(rings)
        if cache_line is None:
            cache_line = self._fallback_cache_line
        if cache_line == self.layout.cache_line:
            return
        self.layout = RingLayout.for_cache_line(cache_line)
        spans: list[tuple[int, int, int]] = []
        for _name, region, offset, log2 in rings:
            start, end = check_ring_geometry(self._regions, region, offset, log2, self.layout)
            for r, s, e in spans:
                if r == region and start < e and s < end:
                    raise ProtocolViolation(
                        f"ring overlaps another ring (cache line {cache_line})")
            spans.append((region, start, end))


# ----------------------------------------------------------------------------
# Client (slave)
# ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientConfig:
    id: int
    mode: int = 0
    secret: bytes = b""
    app_name: bytes = b"memif_aio"
    if_name: bytes = b""
    num_queue_pairs: int = 1
    log2_ring_size: int = 10
    buffer_size: int = 2048
    cache_line: int = 64
    #: rx (M2S) and tx (S2M) ring counts asked for; 0: ``num_queue_pairs``
    num_rx_queues: int = 0
    num_tx_queues: int = 0


class ClientHandshake(_Machine[ClientState]):
    """One connection attempt of a slave interface (§5.6; :data:`CLIENT_TRANSITIONS`)."""

    def __init__(self, config: ClientConfig) -> None:
        super().__init__(CLIENT_TRANSITIONS, ClientState.WAIT_HELLO, ClientState.CONNECTED,
                         ClientState.CLOSED)
        self._handlers = {
            MsgType.HELLO: self._on_hello,
            MsgType.ACK: self._on_ack,
            MsgType.CONNECTED: self._on_connected,
        }
        self.config = config
        self.ring_layout = RingLayout.for_cache_line(config.cache_line)
        self.peer_name = b""
        self.layout: ClientLayout | None = None
        #: what is still to send, one message per ACK: (type, encoded message, fd)
        self._queue: list[tuple[MsgType, bytes, int | None]] = []
        self._sent = 0  # queued messages sent so far (INIT is the first)
        self._s2m_fds: list[int] = []
        self._m2s_fds: list[int] = []

    def start(self) -> list[Output]:
        return []  # the server speaks first

    def _eof_reason(self) -> str:
        if self.state in (ClientState.WAIT_ACK, ClientState.WAIT_CONNECTED):
            if self._sent == 2:
                # INIT was acknowledged, then the peer hung up: libmemif's answer to an
                # unknown interface id (protocol reference §11, item 11)
                return "peer closed the connection during the handshake (unknown interface id?)"
            return "peer closed the connection during the handshake"
        return super()._eof_reason()

    # -- handlers (reached through CLIENT_TRANSITIONS only) ----------------------------
    def _on_hello(self, msg: MsgHello, fd: IncomingFd) -> list[Output]:
        if not msg.min_version <= VERSION <= msg.max_version:
            raise ProtocolViolation("incompatible protocol version")
        cfg = self.config
        # a slave transmits on S2M rings and receives on M2S rings (§5.2: each direction
        # is the client's own count, capped by the largest index the server advertises)
        ns = min(cfg.num_tx_queues or cfg.num_queue_pairs, msg.max_s2m_ring + 1)
        nm = min(cfg.num_rx_queues or cfg.num_queue_pairs, msg.max_m2s_ring + 1)
        log2 = min(cfg.log2_ring_size, msg.max_log2_ring_size, MAX_USABLE_LOG2_RING_SIZE)
        if log2 < 1:
            raise ProtocolViolation(f"peer's maximum ring size (log2 {msg.max_log2_ring_size}) "
                                    "is too small")
        self.peer_name = msg.name
        layout = ClientLayout(ns, nm, log2, cfg.buffer_size, self.ring_layout)
        if layout.region_size > MAX_REGION_SIZE:
            raise ProtocolViolation("memory configuration exceeds the 4 GiB a region can address")
        try:
            region = Region.create(layout.region_size, f"memif_aio{cfg.id} region 0")
        except OSError as exc:
            raise ProtocolViolation(f"cannot create shared memory: {exc.strerror}") from None
        self._regions.append(region)
        layout.initialise(region)
        self.layout = layout
        q = self._queue

        def queue(m: Message, fd: int | None = None) -> None:
            q.append((m.TYPE, m.encode(), fd))

        queue(MsgInit(cfg.id, cfg.mode, cfg.secret, cfg.app_name))
        queue(MsgAddRegion(0, layout.region_size), region.fd)
        for rtype, count, fds in ((RingType.S2M, ns, self._s2m_fds),
                                  (RingType.M2S, nm, self._m2s_fds)):
            for i in range(count):
                efd = self._hold(new_eventfd())
                fds.append(efd)
                flags = MSG_ADD_RING_FLAG_S2M if rtype is RingType.S2M else 0
                queue(MsgAddRing(flags, i, 0, layout.ring_offset(rtype, i), log2), efd)
        queue(MsgConnect(cfg.if_name))  # sending it moves us to WAIT_CONNECTED (rule 3)
        return self._next()

    def _on_ack(self, msg: MsgAck, fd: IncomingFd) -> list[Output]:
        if self.state is ClientState.CONNECTED:
            return []  # an ACK after CONNECTED is ignored
        return self._next()

    def _next(self) -> list[Output]:
        """Send the next queued message (the table ends the ACKs with CONNECT)."""
        assert self._queue, "WAIT_ACK with nothing left to send"
        t, data, fd = self._queue.pop(0)
        self._sent += 1
        return [self._send(data, t, fd)]

    def _on_connected(self, msg: MsgConnected, fd: IncomingFd) -> list[Output]:
        layout = self.layout
        assert layout is not None
        regions = self._regions
        tx: list[S2MProducer] = []
        rx: list[M2SConsumer] = []
        R = layout.ring_slots
        for rtype, count, cls, out in ((RingType.S2M, layout.num_s2m, S2MProducer, tx),
                                       (RingType.M2S, layout.num_m2s, M2SConsumer, rx)):
            for i in range(count):
                offsets = [layout.buffer_offset(rtype, i, j) for j in range(R)]
                ring = cls(regions, 0, layout.ring_offset(rtype, i), layout.log2_ring_size,
                           self.ring_layout, offsets, layout.buffer_size)
                out.append(ring)  # type: ignore[arg-type]
        memory = MemoryConfig(log2_ring_size=layout.log2_ring_size,
                              packet_buffer_size=layout.buffer_size, num_rx_queues=len(rx),
                              num_tx_queues=len(tx))
        session = Session(
            is_master=False, regions=self._hand_over(), rx=list(rx), tx=list(tx),
            rx_eventfds=list(self._m2s_fds), tx_eventfds=list(self._s2m_fds),
            peer_name=self.peer_name, peer_if_name=msg.if_name,
            log2_ring_size=layout.log2_ring_size, buffer_size=layout.buffer_size,
            memory_config=memory, cache_line_size=self.ring_layout.cache_line)
        for ring in rx:
            ring.refill()  # our receive buffers go to the server only now (§7.9)
        return [Established(session)]


"""Frozen, validated configuration: :class:`MemoryConfig` and :class:`Arguments`."""

from __future__ import annotations

import enum
import platform
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Union

from .memory import MAX_REGION_SIZE, ClientLayout
from .wire import MAX_LOG2_RING_SIZE, NAME_SIZE, SECRET_SIZE, InterfaceMode, RingLayout

DEFAULT_SOCKET_FILENAME = "/run/vpp/memif.sock"
DEFAULT_NUM_QUEUE_PAIRS = 1
DEFAULT_LOG2_RING_SIZE = 10
DEFAULT_PACKET_BUFFER_SIZE = 2048
#: ``Arguments(cache_line_size=CACHE_LINE_AUTO)``: a master infers the slave's layout.
CACHE_LINE_AUTO = "auto"


def default_cache_line_size() -> int:
    """64 on x86-64 and most hosts; 128 on aarch64, like VPP's generic aarch64 build and
    libmemif since 24.02 (§6.2).  Not every aarch64 peer agrees (VPP's Neoverse and Octeon
    platform builds, DPDK's Neoverse and Ampere configurations and gomemif use 64): a
    master infers its peer's by default (``cache_line_size="auto"``)."""
    return 128 if platform.machine().lower() in ("aarch64", "arm64") else 64


class RxMode(enum.Enum):
    """How a receive queue waits for packets (§7.8)."""

    INTERRUPT = "interrupt"  #: wait on the eventfd (MASK_INT clear)
    POLLING = "polling"  #: busy-poll, yielding to the loop (MASK_INT set)
    ADAPTIVE = "adaptive"  #: poll while traffic flows, fall back to the eventfd when idle


Callback = Callable[["Any"], Union[Awaitable[None], None]]


def _check_int(name: str, value: object, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, not {type(value).__name__}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be in {lo}..{hi}, not {value}")


@dataclass(frozen=True)
class MemoryConfig:
    """Shared-memory geometry a slave asks for (the master learns it from the slave).

    ``num_queue_pairs`` 1..256, ``log2_ring_size`` 0..14,
    ``packet_buffer_size`` 1..65535 bytes (buffer sizes are u16 in the C peers).
    ``log2_ring_size`` 0 (one-slot rings) is legal on the wire and a connected master
    may report it; :class:`Arguments` asks for 1..14.  A master builds the negotiated
    configuration through these same checks: a peer whose rings fail them is refused.

    ``num_rx_queues`` / ``num_tx_queues`` (keywords, 1..256 each) are the queue counts
    seen from the interface's own side: a slave's rx queues are the M2S rings, its tx
    queues the S2M rings; a master's rx queues are the S2M rings.  Each defaults to
    ``num_queue_pairs`` (0 means "not given"), so gomemif's ``NumQueuePairs`` sets both.
    Once built, ``num_queue_pairs`` reads ``min(num_rx_queues, num_tx_queues)``: the
    number of complete pairs (``MemoryConfig(num_rx_queues=1, num_tx_queues=2)`` has
    ``num_queue_pairs == 1``).
    """

    num_queue_pairs: int = DEFAULT_NUM_QUEUE_PAIRS
    log2_ring_size: int = DEFAULT_LOG2_RING_SIZE
    packet_buffer_size: int = DEFAULT_PACKET_BUFFER_SIZE
    num_rx_queues: int = field(default=0, kw_only=True)
    num_tx_queues: int = field(default=0, kw_only=True)

    def __post_init__(self) -> None:
        _check_int("num_queue_pairs", self.num_queue_pairs, 1, 256)
        _check_int("log2_ring_size", self.log2_ring_size, 0, MAX_LOG2_RING_SIZE)
        _check_int("packet_buffer_size", self.packet_buffer_size, 1, 65535)
        self._resolve_queue_counts()

    def _resolve_queue_counts(self) -> None:
        """Each direction defaults to ``num_queue_pairs``; the pairs are then the minimum."""
        for name in ("num_rx_queues", "num_tx_queues"):
            value = getattr(self, name)
            if isinstance(value, int) and not isinstance(value, bool) and value == 0:
                object.__setattr__(self, name, self.num_queue_pairs)
            else:
                _check_int(name, value, 1, 256)
        object.__setattr__(self, "num_queue_pairs", min(self.num_rx_queues, self.num_tx_queues))

    def region_size(self, cache_line: int = 64) -> int:
        """Bytes of the single region a slave creates with this configuration (§6.4)."""
        # a slave transmits on its S2M rings and receives on its M2S rings
        return ClientLayout(self.num_tx_queues, self.num_rx_queues, self.log2_ring_size,
                            self.packet_buffer_size,
                            RingLayout.for_cache_line(cache_line)).region_size


@dataclass(frozen=True, eq=False)
class Arguments:
    """Everything that defines one interface (gomemif ``Arguments``, Python style).

    Validated at construction: a bad value raises ``ValueError`` naming the field.
    Callbacks may be plain functions or coroutine functions; they receive the
    :class:`~memif_aio.Interface`.
    """

    id: int
    is_master: bool
    name: str = ""
    mode: InterfaceMode = InterfaceMode.ETHERNET
    secret: bytes = b""
    memory_config: MemoryConfig = field(default_factory=MemoryConfig)
    connected_func: Callback | None = None
    disconnected_func: Callback | None = None
    private_data: Any = None
    # --- extras beyond gomemif ------------------------------------------------
    rx_mode: RxMode = RxMode.INTERRUPT
    #: 64 or 128; ``"auto"`` (masters: inferred from the slave's ring layout).  None, the
    #: default, means ``"auto"`` for a master and :func:`default_cache_line_size` for a slave.
    cache_line_size: int | str | None = None
    handshake_timeout: float = 10.0
    reconnect_min_delay: float = 0.1
    reconnect_max_delay: float = 2.0
    require_seal: bool = True
    tx_timeout: float | None = None

    def __post_init__(self) -> None:
        _check_int("id", self.id, 0, 0xFFFFFFFF)
        if not isinstance(self.is_master, bool):
            raise ValueError("is_master must be a bool")
        if not isinstance(self.name, str):
            raise ValueError("name must be a str")
        raw = self.name.encode("utf-8")
        if len(raw) > NAME_SIZE - 1 or "\0" in self.name:
            raise ValueError(f"name must be at most {NAME_SIZE - 1} UTF-8 bytes without NUL")
        try:
            object.__setattr__(self, "mode", InterfaceMode(self.mode))
        except ValueError:
            raise ValueError(f"mode must be an InterfaceMode, not {self.mode!r}") from None
        secret = self.secret
        if isinstance(secret, str):
            secret = secret.encode("utf-8")
            object.__setattr__(self, "secret", secret)
        if not isinstance(secret, bytes):
            raise ValueError("secret must be bytes")
        if len(secret) > SECRET_SIZE - 1 or b"\0" in secret:
            raise ValueError(f"secret must be at most {SECRET_SIZE - 1} bytes without NUL")
        if not isinstance(self.memory_config, MemoryConfig):
            raise ValueError("memory_config must be a MemoryConfig")
        if self.memory_config.log2_ring_size < 1:
            raise ValueError("memory_config.log2_ring_size must be in 1..14 (two slots or more)")
        for cb in ("connected_func", "disconnected_func"):
            f = getattr(self, cb)
            if f is not None and not callable(f):
                raise ValueError(f"{cb} must be callable")
        try:
            object.__setattr__(self, "rx_mode", RxMode(self.rx_mode))
        except ValueError:
            raise ValueError(f"rx_mode must be an RxMode, not {self.rx_mode!r}") from None
        self._resolve_cache_line_size()
        if self.memory_config.region_size(self.layout_cache_line_size()) > MAX_REGION_SIZE:
            raise ValueError("memory_config needs a region above 4 GiB, which memif cannot address")
        for name in ("handshake_timeout", "reconnect_min_delay", "reconnect_max_delay"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or v <= 0:
                raise ValueError(f"{name} must be a positive number of seconds")
        if self.reconnect_max_delay < self.reconnect_min_delay:
            raise ValueError("reconnect_max_delay must be >= reconnect_min_delay")
        if self.tx_timeout is not None and (not isinstance(self.tx_timeout, (int, float))
                                            or self.tx_timeout <= 0):
            raise ValueError("tx_timeout must be None or a positive number of seconds")


    def _resolve_cache_line_size(self) -> None:
        """None becomes ``"auto"`` (master) or the platform's value (slave); §4 of issue 12."""
        value = self.cache_line_size
        if value is None:
            value = CACHE_LINE_AUTO if self.is_master else default_cache_line_size()
            object.__setattr__(self, "cache_line_size", value)
        if value == CACHE_LINE_AUTO:
            if not self.is_master:
                raise ValueError('cache_line_size="auto" is for masters: a slave lays out '
                                 "the rings, so it needs 64 or 128")
        elif isinstance(value, bool) or not isinstance(value, int) or value not in (64, 128):
            raise ValueError('cache_line_size must be 64, 128 or "auto" (masters)')

    def layout_cache_line_size(self) -> int:
        """The concrete cache-line size: the configured one, or (``"auto"``) the platform's
        value, which a master in auto mode falls back to when the layout shows nothing."""
        value = self.cache_line_size
        return value if isinstance(value, int) else default_cache_line_size()


def role_to_string(is_master: bool) -> str:
    """``"Master"`` or ``"Slave"``, as gomemif's ``RoleToString``."""
    return "Master" if is_master else "Slave"

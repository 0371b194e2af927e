"""memif_aio: a pure-Python, asyncio-native memif (FD.io shared memory packet interface v2.0).

The public surface follows gomemif in Python style::

    async with Socket("/run/vpp/memif.sock") as sock:
        itf = sock.new_interface(Arguments(id=0, is_master=False, name="py0"))
        await itf.wait_connected()
        pkt = await itf.get_rx_queue(0).read_packet()
"""

import logging
from typing import TYPE_CHECKING, Any

from .config import (
    DEFAULT_LOG2_RING_SIZE,
    DEFAULT_NUM_QUEUE_PAIRS,
    DEFAULT_PACKET_BUFFER_SIZE,
    DEFAULT_SOCKET_FILENAME,
    Arguments,
    MemoryConfig,
    RxMode,
    role_to_string,
)
from .errors import (
    ConnectionRefused,
    Disconnected,
    InterfaceDeleted,
    MemifError,
    NotConnected,
    PacketTooLarge,
    ProtocolViolation,
    WouldBlock,
)
from .events import LinkEvent, Subscription
from .interface import Interface, InterfaceStats
from .queue import Queue, QueueStats, Reservation, RxQueue, TxQueue
from .serving import serve
from .socket import PeerCredentials, Socket
from .wire import (
    VERSION,
    VERSION_MAJOR,
    VERSION_MINOR,
    InterfaceMode,
    MsgAck,
    MsgAddRegion,
    MsgAddRing,
    MsgConnect,
    MsgConnected,
    MsgDisconnect,
    MsgHello,
    MsgInit,
    MsgType,
    WireError,
    decode_message,
)

__version__ = "0.1.0"

# a library adds no output of its own: the application configures logging
logging.getLogger("memif_aio").addHandler(logging.NullHandler())

if TYPE_CHECKING:
    from .capture import Capture, PcapWriter
    from .cli.status import format_show
    from .workers import WorkerEvent, WorkerInfo, WorkerPool

#: names imported on first use: ``import memif_aio`` loads the library only
_LAZY = {
    "Capture": ".capture",
    "PcapWriter": ".capture",
    "format_show": ".cli.status",
    "WorkerEvent": ".workers",
    "WorkerInfo": ".workers",
    "WorkerPool": ".workers",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'memif_aio' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})

__all__ = [
    "DEFAULT_LOG2_RING_SIZE",
    "DEFAULT_NUM_QUEUE_PAIRS",
    "DEFAULT_PACKET_BUFFER_SIZE",
    "DEFAULT_SOCKET_FILENAME",
    "VERSION",
    "VERSION_MAJOR",
    "VERSION_MINOR",
    "Arguments",
    "Capture",
    "ConnectionRefused",
    "Disconnected",
    "Interface",
    "InterfaceDeleted",
    "InterfaceMode",
    "InterfaceStats",
    "LinkEvent",
    "MemifError",
    "MemoryConfig",
    "MsgAck",
    "MsgAddRegion",
    "MsgAddRing",
    "MsgConnect",
    "MsgConnected",
    "MsgDisconnect",
    "MsgHello",
    "MsgInit",
    "MsgType",
    "NotConnected",
    "PacketTooLarge",
    "PcapWriter",
    "PeerCredentials",
    "ProtocolViolation",
    "Queue",
    "QueueStats",
    "Reservation",
    "RxMode",
    "RxQueue",
    "Socket",
    "Subscription",
    "TxQueue",
    "WireError",
    "WorkerEvent",
    "WorkerInfo",
    "WorkerPool",
    "WouldBlock",
    "decode_message",
    "format_show",
    "role_to_string",
    "serve",
]

"""memif_aio: a pure-Python, asyncio-native memif (FD.io shared memory packet interface v2.0).

The public surface follows gomemif in Python style::

    async with Socket("/run/vpp/memif.sock") as sock:
        itf = sock.new_interface(Arguments(id=0, is_master=False, name="py0"))
        await itf.wait_connected()
        pkt = await itf.get_rx_queue(0).read_packet()
"""

import logging

from .capture import Capture, PcapWriter
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
from .socket import PeerCredentials, Socket
from .status import format_show
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
    "WouldBlock",
    "decode_message",
    "format_show",
    "role_to_string",
]

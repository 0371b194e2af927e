"""Configuration objects validate at construction and name the bad field."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

import memif_aio
from memif_aio import Arguments, InterfaceMode, MemoryConfig, RxMode, role_to_string


def test_public_constants() -> None:
    assert memif_aio.VERSION_MAJOR == 2 and memif_aio.VERSION_MINOR == 0
    assert memif_aio.VERSION == 0x0200
    assert memif_aio.DEFAULT_SOCKET_FILENAME == "/run/vpp/memif.sock"
    assert memif_aio.DEFAULT_NUM_QUEUE_PAIRS == 1
    assert memif_aio.DEFAULT_LOG2_RING_SIZE == 10
    assert memif_aio.DEFAULT_PACKET_BUFFER_SIZE == 2048
    assert [m.value for m in InterfaceMode] == [0, 1, 2]
    assert InterfaceMode.PUNT_INJECT.name == "PUNT_INJECT"
    assert role_to_string(True) == "Master" and role_to_string(False) == "Slave"
    for name in memif_aio.__all__:
        assert hasattr(memif_aio, name), name


def test_defaults() -> None:
    mc = MemoryConfig()
    assert (mc.num_queue_pairs, mc.log2_ring_size, mc.packet_buffer_size) == (1, 10, 2048)
    assert mc.region_size(64) == 4227328  # protocol reference §6.4 worked example
    assert mc.region_size(128) == 4227584
    a = Arguments(id=3, is_master=True)
    assert a.mode is InterfaceMode.ETHERNET and a.secret == b"" and a.memory_config == mc
    assert a.rx_mode is RxMode.INTERRUPT
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.id = 4  # type: ignore[misc]


@pytest.mark.parametrize("kwargs,field", [
    ({"num_queue_pairs": 0}, "num_queue_pairs"),
    ({"num_queue_pairs": 257}, "num_queue_pairs"),
    ({"log2_ring_size": -1}, "log2_ring_size"),
    ({"log2_ring_size": 15}, "log2_ring_size"),
    ({"packet_buffer_size": 0}, "packet_buffer_size"),
    ({"packet_buffer_size": 65536}, "packet_buffer_size"),
    ({"packet_buffer_size": 2048.0}, "packet_buffer_size"),
])
def test_memory_config_rejects(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        MemoryConfig(**kwargs)


def test_one_slot_rings_are_a_geometry_but_not_a_request() -> None:
    """A connected master may report log2 0 (legal on the wire); nobody asks for it."""
    assert MemoryConfig(log2_ring_size=0).region_size() > 0
    with pytest.raises(ValueError, match="log2_ring_size"):
        Arguments(id=0, is_master=False, memory_config=MemoryConfig(log2_ring_size=0))


@pytest.mark.parametrize("kwargs,field", [
    ({"id": -1}, "id"),
    ({"id": 1 << 32}, "id"),
    ({"id": True}, "id"),
    ({"is_master": 1}, "is_master"),
    ({"name": "x" * 32}, "name"),
    ({"name": "é" * 16}, "name"),  # 32 UTF-8 bytes
    ({"mode": 7}, "mode"),
    ({"secret": b"x" * 24}, "secret"),
    ({"secret": b"a\0b"}, "secret"),
    ({"secret": 5}, "secret"),
    ({"memory_config": {"num_queue_pairs": 2}}, "memory_config"),
    ({"connected_func": 3}, "connected_func"),
    ({"rx_mode": "turbo"}, "rx_mode"),
    ({"cache_line_size": 32}, "cache_line_size"),
    ({"handshake_timeout": 0}, "handshake_timeout"),
    ({"reconnect_min_delay": 2, "reconnect_max_delay": 1}, "reconnect_max_delay"),
    ({"tx_timeout": -1}, "tx_timeout"),
    ({"memory_config": MemoryConfig(256, 14, 65535)}, "4 GiB"),
])
def test_arguments_reject(kwargs: dict[str, Any], field: str) -> None:
    base: dict[str, Any] = {"id": 0, "is_master": False}
    base.update(kwargs)
    with pytest.raises(ValueError, match=field):
        Arguments(**base)


def test_arguments_accept_edge_values() -> None:
    # str and int where the types say bytes and enums: accepted and converted (on purpose)
    a = Arguments(id=0xFFFFFFFF, is_master=False, name="n" * 31,
                  secret="s" * 23,  # type: ignore[arg-type]
                  mode=1, rx_mode="polling",  # type: ignore[arg-type]
                  cache_line_size=128)
    assert a.secret == b"s" * 23 and a.mode is InterfaceMode.IP and a.rx_mode is RxMode.POLLING

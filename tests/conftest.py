"""Shared fixtures: both event loops, temporary socket paths, and leak checks."""

from __future__ import annotations

import asyncio
import gc
import os
import tempfile
from collections.abc import Iterator, Mapping
from typing import Any, Callable

import pytest
import uvloop
from leaks import memfd_mappings, open_fds  # a plain module: see leaks.py

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


def pytest_asyncio_loop_factories(config: Any, item: pytest.Item) -> Mapping[str, Any] | None:
    """Tests marked ``both_loops`` run once on the default loop and once on uvloop."""
    if item.get_closest_marker("both_loops") is not None:
        return LOOPS
    return {"asyncio": asyncio.new_event_loop}




@pytest.fixture
def sock_dir() -> Iterator[str]:
    """A temporary directory for socket files; it must be empty again at the end."""
    with tempfile.TemporaryDirectory(prefix="memif-aio-") as d:
        yield d
        leftovers = os.listdir(d)
        assert not leftovers, f"files left behind in the socket directory: {leftovers}"


@pytest.fixture
def sock_path(sock_dir: str) -> str:
    return os.path.join(sock_dir, "memif.sock")


@pytest.fixture
def no_leaks() -> Iterator[None]:
    """Fail the test if it leaves fds or memfd mappings behind."""
    gc.collect()
    fds_before = open_fds()
    maps_before = memfd_mappings()
    yield
    gc.collect()
    leaked = open_fds() - fds_before
    # fds of the event loop itself (epoll, pipes) close with the loop, after this fixture
    leaked = {fd for fd in leaked if not _is_loop_fd(fd)}
    assert not leaked, f"leaked fds: {[_describe(fd) for fd in leaked]}"
    assert memfd_mappings() <= maps_before, "memfd mappings left behind"


def _describe(fd: int) -> str:
    try:
        return f"{fd}->{os.readlink(f'/proc/self/fd/{fd}')}"
    except OSError:
        return str(fd)


def _is_loop_fd(fd: int) -> bool:
    """True for fds memif_aio never creates (event loop internals such as epoll,
    uvloop's pipes, asyncio's self-pipe socketpair): we create memfds, eventfds
    and SOCK_SEQPACKET sockets only."""
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return True
    if target.startswith("/memfd:") or target == "anon_inode:[eventfd]":
        return False
    if target.startswith("socket:"):
        return _is_stream_socket(fd)
    return True


def _is_stream_socket(fd: int) -> bool:
    import socket

    try:
        s = socket.socket(fileno=os.dup(fd))
    except OSError:
        return False
    try:
        return s.type != socket.SOCK_SEQPACKET
    finally:
        s.close()

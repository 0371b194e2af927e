"""Leak probes shared by conftest.py and tests that count fds and mappings themselves.

A plain module (not conftest.py): ``from conftest import ...`` would resolve to whichever
conftest.py pytest imported last (tests/interop has its own).
"""

from __future__ import annotations

import os


def open_fds() -> set[int]:
    return {int(n) for n in os.listdir("/proc/self/fd")}


def memfd_mappings() -> int:
    """Mappings of memfd regions (ours or a peer's) in this process."""
    with open("/proc/self/maps") as f:
        return sum(1 for line in f if "memfd:" in line)

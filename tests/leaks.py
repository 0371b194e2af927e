"""Leak probes shared by conftest.py and tests that count fds and mappings themselves.

A plain module (not conftest.py): ``from conftest import ...`` would resolve to whichever
conftest.py pytest imported last (tests/interop has its own).
"""

from __future__ import annotations

import os


def open_fds() -> set[int]:
    """Open fds of this process (not counting the one listdir itself used)."""
    fds = set()
    for n in os.listdir("/proc/self/fd"):
        try:
            os.fstat(int(n))
        except OSError:
            continue
        fds.add(int(n))
    return fds


def memfd_mappings() -> int:
    """Mappings of memfd regions (ours or a peer's) in this process."""
    with open("/proc/self/maps") as f:
        return sum(1 for line in f if "memfd:" in line)

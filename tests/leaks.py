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


def child_processes() -> set[int]:
    """pids of this process's children, zombies (not yet reaped) included."""
    me = os.getpid()
    kids = set()
    for n in os.listdir("/proc"):
        if not n.isdigit():
            continue
        try:
            with open(f"/proc/{n}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces and parentheses
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 1 and int(fields[1]) == me:
            kids.add(int(n))
    return kids


def describe_process(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        cmd = ""
    return f"{pid} ({cmd or 'zombie or gone'})"


def dpdk_runtime_dirs(pid: int | None = None) -> set[str]:
    """DPDK runtime directories of the testpmds that process ``pid`` (default: this one)
    started through :mod:`memif_aio.testing.testpmd` (``--file-prefix=memif_aio_<pid>_...``)."""
    import glob

    from memif_aio.testing.testpmd import runtime_dir

    pid = os.getpid() if pid is None else pid
    return set(glob.glob(runtime_dir(f"memif_aio_{pid}_*")))

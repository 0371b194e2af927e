"""The leak probes, for tests that count fds and mappings themselves.

They live in :mod:`memif_aio.testing.leaks` (one home: the pytest plugin's fixtures use
them too); this module only re-exports them under the name the tests import.  A plain
module (not conftest.py): ``from conftest import ...`` would resolve to whichever
conftest.py pytest imported last (tests/interop has its own).
"""

from __future__ import annotations

from memif_aio.testing.leaks import (
    LeakGuard,
    child_processes,
    describe_fd,
    describe_process,
    dpdk_runtime_dirs,
    is_memif_fd,
    memfd_mappings,
    open_fds,
)

__all__ = ["LeakGuard", "child_processes", "describe_fd", "describe_process",
           "dpdk_runtime_dirs", "is_memif_fd", "memfd_mappings", "open_fds"]

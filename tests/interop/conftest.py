"""Fixtures for the interoperability tests against DPDK ``dpdk-testpmd`` (net_memif).

* ``dpdk`` (tests/conftest.py): the path of ``dpdk-testpmd``.  When it is missing the
  tests skip with the Debian packages to install, except under CI (``CI=true``), where
  they fail: CI must install DPDK (``.ci/run`` does).  One home for that check:
  :func:`memif_aio.testing.plugin.require_testpmd`, which the plugin's ``testpmd``
  fixture uses too.
* CPU placement: testpmd busy-polls one whole CPU; :mod:`memif_aio.testing.testpmd` pins it
  to the last CPU, and each test here pins the event loop thread to CPU 0 (restored
  afterwards) so that the two never share a CPU on a 2-core machine.
* Leftovers: after each test no testpmd started by it may still run, and no
  ``/var/run/dpdk/<prefix>`` directory of ours may remain (socket files are checked
  by ``sock_dir``); ``no_leaks`` (fds, mappings, child processes, DPDK runtime
  directories) applies to every test here.
"""

from __future__ import annotations

import glob
import os
import shutil
import uuid
from collections.abc import Iterator

import pytest

from memif_aio.testing import testpmd as tpmod


@pytest.fixture(autouse=True)
def pin_to_cpu0() -> Iterator[None]:
    """Keep this thread (the event loop) off the CPU testpmd polls on."""
    before = os.sched_getaffinity(0)
    if tpmod.default_cpu() != 0 and 0 in before:
        os.sched_setaffinity(0, {0})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


@pytest.fixture(autouse=True)
def no_testpmd_leftovers(no_leaks: None) -> Iterator[None]:
    yield
    killed = tpmod.kill_all()
    dirs = glob.glob(tpmod.runtime_dir(f"memif_aio_{os.getpid()}_*"))
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)
    assert not killed, f"testpmd processes left running by the test (killed now): {killed}"
    assert not dirs, f"DPDK runtime directories left behind: {dirs}"


@pytest.fixture
def abstract_name() -> Iterator[str]:
    """A unique abstract socket name (without the leading '@'); nothing may listen on it
    once the test is over."""
    name = f"memif-aio-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    yield name
    assert not tpmod.unix_listening("@" + name), f"abstract socket @{name} still listening"

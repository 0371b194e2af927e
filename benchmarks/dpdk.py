"""Scenarios against DPDK's dpdk-testpmd (net_memif server, memif_aio slave)."""

from __future__ import annotations

import os
import statistics
import tempfile

from memif_aio import MemoryConfig, RxMode
from memif_aio.testing.testpmd import PortStats, TestPmd, find_testpmd

from .runner import (
    PEER_CPU,
    Result,
    Settings,
    measure_pingpong,
    measure_rx,
    measure_tx,
    our_interface,
)


def _testpmd(path: str, mode: str, size: int = 64) -> TestPmd:
    kw: dict[str, object] = {}
    if mode == "txonly":
        kw.update(txpkts=size)
        if size > 2048:
            kw.update(mbuf_size=size + 216)
    return TestPmd("server", path, forward_mode=mode, cpu=PEER_CPU, **kw)  # type: ignore[arg-type]


async def dpdk_scenarios(settings: Settings, loop_name: str, sizes: list[int],
                         only: set[str] | None) -> list[Result]:
    if find_testpmd() is None:
        raise SystemExit("dpdk-testpmd not found: install dpdk-dev librte-net-memif23 "
                         "librte-mempool-ring23, or use --peer python")
    results: list[Result] = []

    def wanted(name: str) -> bool:
        return only is None or name in only

    with tempfile.TemporaryDirectory(prefix="memif-bench-") as d:
        path = os.path.join(d, "dpdk.sock")
        for api in ("burst", "single", "lease"):
            if wanted(f"rx-{api}"):
                async with _testpmd(path, "txonly") as tp, \
                        our_interface(path, RxMode.INTERRUPT) as itf:
                    await tp.wait_connected(10)
                    vals = await measure_rx(itf, settings, api)
                results.append(Result(f"rx-{api}", "dpdk", loop_name, "Mpps",
                                      [v / 1e6 for v in vals]))
            tx_api = "reserve" if api == "lease" else api
            if wanted(f"tx-{tx_api}"):
                async with _testpmd(path, "rxonly") as tp, \
                        our_interface(path, RxMode.INTERRUPT) as itf:
                    await tp.wait_connected(10)
                    sent0 = itf.get_tx_queue(0).stats().packets
                    vals = await measure_tx(itf, settings, tx_api, 64)
                    sent = itf.get_tx_queue(0).stats().packets - sent0

                    def all_in(s: PortStats, n: int = sent) -> bool:
                        return s.rx_packets >= n
                    st = await tp.wait_stats(all_in, timeout=10)
                results.append(Result(f"tx-{tx_api}", "dpdk", loop_name, "Mpps",
                                      [v / 1e6 for v in vals],
                                      extra={"sent": sent, "testpmd_rx": st.rx_packets}))
        for mode, rx_mode in (("interrupt", RxMode.INTERRUPT), ("busy-poll", RxMode.POLLING)):
            if wanted(f"pingpong-{mode}"):
                async with _testpmd(path, "macswap") as tp, our_interface(path, rx_mode) as itf:
                    await tp.wait_connected(10)
                    vals = await measure_pingpong(itf, settings)
                results.append(Result(f"pingpong-{mode}", "dpdk", loop_name, "us RTT", vals))
        for size in sizes:
            if wanted("rx-burst-size"):
                # Frames above one 2048-byte buffer: DPDK 22.11's server cannot chain into a
                # nearly full ring without overrunning it (docs/interop.md), so the receive
                # side uses buffers as large as the frame and DPDK never chains.
                mc = MemoryConfig(packet_buffer_size=max(2048, size))
                async with _testpmd(path, "txonly", size) as tp, \
                        our_interface(path, RxMode.INTERRUPT, mc=mc) as itf:
                    await tp.wait_connected(10)
                    vals = await measure_rx(itf, settings, "burst")
                results.append(Result("rx-burst-size", "dpdk", loop_name, "Mpps",
                                      [v / 1e6 for v in vals], size=size,
                                      extra={"gbps": statistics.median(vals) * size * 8 / 1e9}))
            if wanted("tx-burst-size"):
                async with _testpmd(path, "rxonly", size) as tp, \
                        our_interface(path, RxMode.INTERRUPT) as itf:
                    await tp.wait_connected(10)
                    vals = await measure_tx(itf, settings, "burst", size)
                results.append(Result("tx-burst-size", "dpdk", loop_name, "Mpps",
                                      [v / 1e6 for v in vals], size=size,
                                      extra={"gbps": statistics.median(vals) * size * 8 / 1e9}))
    return results

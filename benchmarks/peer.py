"""The Python peer of the benchmarks: a second memif_aio process.

    python -m benchmarks.peer --socket PATH --role master|slave --mode blast|sink|echo
        [--size 64] [--queues 1] [--rx-mode interrupt|polling] [--uvloop] [--cpu N]

It prints "READY" once connected, then runs until stdin closes (the runner
holds the pipe) or SIGTERM, and prints one JSON line of counters at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys

from memif_aio import Arguments, Disconnected, MemoryConfig, RxMode, Socket


async def run(ns: argparse.Namespace) -> dict[str, int]:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_reader(sys.stdin.fileno(), lambda: stop.set() if not sys.stdin.read(1) else None)
    counts = {"packets": 0, "bytes": 0}
    mc = MemoryConfig(num_queue_pairs=ns.queues, log2_ring_size=ns.log2_ring_size,
                      packet_buffer_size=ns.buffer_size)
    args = Arguments(id=0, is_master=ns.role == "master", name=f"bench-{ns.mode}",
                     memory_config=mc, rx_mode=RxMode(ns.rx_mode))
    async with Socket(ns.socket, app_name="memif_aio-bench") as sock:
        itf = sock.new_interface(args)
        await itf.wait_connected(30)
        print("READY", flush=True)

        async def blast(q: int) -> None:
            tx = itf.get_tx_queue(q)
            burst = [bytes(range(256)) * (ns.size // 256) + bytes(ns.size % 256)] * 64
            while not stop.is_set():
                n = tx.write_burst_nowait(burst)
                counts["packets"] += n
                counts["bytes"] += n * ns.size
                if n < len(burst):
                    await asyncio.sleep(0)

        async def sink(q: int) -> None:
            rx = itf.get_rx_queue(q)
            while not stop.is_set():
                pkts = await rx.read_burst(256)
                counts["packets"] += len(pkts)

        async def echo(q: int) -> None:
            rx, tx = itf.get_rx_queue(q), itf.get_tx_queue(q)
            while not stop.is_set():
                pkts = await rx.read_burst(256)
                counts["packets"] += len(pkts)
                sent = 0  # write_burst publishes what fits, like socket.send
                while sent < len(pkts):
                    sent += await tx.write_burst(pkts[sent:])

        job = {"blast": blast, "sink": sink, "echo": echo}[ns.mode]
        tasks = [asyncio.ensure_future(job(q)) for q in range(ns.queues)]
        stopper = asyncio.ensure_future(stop.wait())
        await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
        for t in (*tasks, stopper):
            t.cancel()
        for t in tasks:
            try:
                await t
            except (asyncio.CancelledError, Disconnected):
                pass
    return counts


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.peer")
    p.add_argument("--socket", required=True)
    p.add_argument("--role", choices=["master", "slave"], required=True)
    p.add_argument("--mode", choices=["blast", "sink", "echo"], required=True)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--queues", type=int, default=1)
    p.add_argument("--log2-ring-size", type=int, default=10)
    p.add_argument("--buffer-size", type=int, default=2048)
    p.add_argument("--rx-mode", default="interrupt")
    p.add_argument("--uvloop", action="store_true")
    p.add_argument("--cpu", type=int, default=None)
    ns = p.parse_args()
    if ns.cpu is not None:
        os.sched_setaffinity(0, {ns.cpu})
    if ns.uvloop:
        import uvloop

        counts = uvloop.run(run(ns))
    else:
        counts = asyncio.run(run(ns))
    print(json.dumps(counts), flush=True)


if __name__ == "__main__":
    main()

"""A memif peer in its own process, driven by argv, stdin lines and stdout JSON lines.

    python tests/peers/peer.py --role master|slave --socket PATH [--ids 0,1] [--queues N]
                               [--secret S] [--loop asyncio|uvloop] [--reconnect-delay S]
                               [--rx-mode interrupt|polling|adaptive]

It creates one memif Socket with one interface per id (all of ``--role``) and
echoes every packet it receives on rx queue ``q`` back on tx queue ``q`` of the
same interface, for as long as the link is up.

stdout (one JSON object per line):
    {"event": "ready", "pid": N}                    the socket is polling (a master listens)
    {"event": "connected", "id": I, "queues": N}    an interface came up
    {"event": "disconnected", "id": I, "reason": R} an interface went down
    {"event": "status", "interfaces": [...]}        answer to "status"
    {"event": "bye"}                                answer to "quit", just before exiting 0
stdin commands: "status", "quit".  EOF on stdin, or the death of the parent
process, ends the peer at once.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import signal
import sys
from typing import Any

sys.path.insert(0, __file__.rsplit("/tests/", 1)[0])  # run from a checkout without install

from memif_aio import Arguments, Disconnected, Interface, MemoryConfig, RxMode, Socket


def emit(**obj: Any) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def echo(itf: Interface, qid: int) -> None:
    rx, tx = itf.get_rx_queue(qid), itf.get_tx_queue(qid)
    try:
        while True:
            pkts = await rx.read_burst(64)
            sent = 0  # write_burst publishes what fits, like socket.send
            while sent < len(pkts):
                sent += await tx.write_burst(pkts[sent:])
    except Disconnected:
        pass


async def main(ns: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()

    def connected(itf: Interface) -> None:
        emit(event="connected", id=itf.get_id(), queues=len(itf.tx_queues))
        for q in range(min(len(itf.rx_queues), len(itf.tx_queues))):
            t = loop.create_task(echo(itf, q))
            tasks.add(t)
            t.add_done_callback(tasks.discard)

    def disconnected(itf: Interface) -> None:
        emit(event="disconnected", id=itf.get_id(), reason=itf.get_disconnect_reason())

    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    async with Socket(ns.socket, app_name=f"peer-{ns.role}") as sock:
        itfs = [sock.new_interface(Arguments(
            id=i, is_master=ns.role == "master", name=f"peer-{ns.role}-{i}", secret=ns.secret,
            memory_config=MemoryConfig(num_queue_pairs=ns.queues),
            connected_func=connected, disconnected_func=disconnected, rx_mode=RxMode(ns.rx_mode),
            reconnect_min_delay=ns.reconnect_delay, reconnect_max_delay=ns.reconnect_delay))
            for i in ns.ids]
        emit(event="ready", pid=__import__("os").getpid())
        while True:
            line = (await stdin.readline()).decode().strip()
            if not line:  # EOF: the parent is gone or wants us gone
                return 1
            if line == "status":
                emit(event="status", interfaces=[
                    {"id": i.get_id(), "connected": i.is_connected(),
                     "reason": i.get_disconnect_reason(), "remote": i.get_remote_name(),
                     "peer": i.get_peer_name()} for i in itfs])
            elif line == "quit":
                break
            else:
                emit(event="error", text=f"unknown command {line!r}")
    for t in list(tasks):
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    emit(event="bye")
    return 0


def run() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--role", choices=("master", "slave"), required=True)
    p.add_argument("--socket", required=True)
    p.add_argument("--ids", type=lambda s: [int(x) for x in s.split(",")], default=[0])
    p.add_argument("--queues", type=int, default=1)
    p.add_argument("--secret", default="")
    p.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    p.add_argument("--reconnect-delay", type=float, default=0.1)
    p.add_argument("--rx-mode", choices=[m.value for m in RxMode], default="interrupt")
    ns = p.parse_args()
    try:  # die with the parent (PR_SET_PDEATHSIG)
        ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    factory = None
    if ns.loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main(ns))


if __name__ == "__main__":
    sys.exit(run())

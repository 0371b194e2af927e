"""``memif-aio show``: the interfaces of the memif-aio processes using a socket.

It reads the status endpoints (``<socket>.ctl``, ``<socket>.<pid>.ctl``) that
every ``memif-aio`` command running an interface serves (see
:mod:`memif_aio.cli.status`) and prints them like VPP's ``show memif``.  Only
memif-aio processes serve that endpoint: VPP, DPDK or libmemif peers on the same
socket are not shown (ask them: ``vppctl show memif``).
"""

from __future__ import annotations

import argparse
import json
import sys

from .._text import printable
from .common import EXIT_OK, EXIT_USAGE, add_socket_option, positive_float
from .status import find_endpoints, format_show, query_status


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "show", help="show the interfaces of memif-aio processes on a socket",
        description="Print the interfaces of every memif-aio process using the memif socket "
                    "--socket, like VPP's 'show memif': role, id, state, peer names, "
                    "negotiated ring and buffer sizes, regions, queues with head/tail, "
                    "interrupt mode and counters. It reads the status endpoint "
                    "<socket>.ctl (or <socket>.<pid>.ctl) that memif-aio commands serve, so "
                    "it only sees memif-aio processes, not VPP, DPDK or libmemif.",
        epilog="Exit status: 0 at least one process answered; 2 bad arguments, or no "
               "memif-aio process answered for that socket.")
    add_socket_option(p, "memif socket path or @abstract name")
    p.add_argument("--json", action="store_true",
                   help="print a JSON list of the processes' status documents")
    p.add_argument("--timeout", type=positive_float, default=2.0, metavar="SECONDS",
                   help="how long to wait for each process (default: %(default)s)")
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="also report endpoints that did not answer")
    p.set_defaults(func=main)


def main(ns: argparse.Namespace) -> int:
    docs = []
    for name in find_endpoints(ns.socket):
        try:
            doc = query_status(name, ns.timeout)
        except (OSError, ValueError) as exc:
            if ns.verbose:
                print(printable(f"memif-aio show: {name}: {exc}"), file=sys.stderr)
            continue
        doc["endpoint"] = name
        docs.append(doc)
    if not docs:
        print(f"memif-aio show: no memif-aio process answers for {ns.socket} (looked for "
              f"{ns.socket}.ctl; only memif-aio commands serve it)", file=sys.stderr)
        return EXIT_USAGE
    if ns.json:
        # ensure_ascii (the default) writes every control character as \uNNNN
        print(json.dumps(docs, indent=2, ensure_ascii=True))
        return EXIT_OK
    for i, doc in enumerate(docs):
        if i:
            print()
        print(printable(f"process {doc.get('pid')} ({doc.get('app') or 'memif_aio'}, memif_aio "
                        f"{doc.get('version')}, memif {doc.get('protocol')}) "
                        f"via {doc['endpoint']}"))
        sys.stdout.write(format_show(doc["interfaces"]))
    sys.stdout.flush()
    return EXIT_OK

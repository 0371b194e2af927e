"""The ``memif-aio`` command (also ``python -m memif_aio``).

Subcommands:

``demo``
    A master here and a slave in a child process exchange verified traffic of
    mixed packet sizes both ways and print the rates; exit status 0 only when
    every byte was verified.
``version``
    Print the package and memif protocol versions.
``responder``, ``ping``, ``bench``, ``capture``, ``show``, ``replay``, ``gen``
    The tools of :mod:`memif_aio.cli` (see docs/cli.md).

``demo-peer`` is the hidden child side of ``demo``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from .. import VERSION_MAJOR, VERSION_MINOR, __version__
from . import TOOLS
from .common import apply_environment, int_range
from .common import positive_float as _positive_float


def _sizes(text: str) -> tuple[int, ...]:
    from .demo import MAX_SIZE, MIN_SIZE

    try:
        sizes = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of sizes: {text!r}") \
            from None
    if not sizes:
        raise argparse.ArgumentTypeError("at least one size is needed")
    bad = [s for s in sizes if not MIN_SIZE <= s <= MAX_SIZE]
    if bad:
        raise argparse.ArgumentTypeError(
            f"sizes must be in {MIN_SIZE}..{MAX_SIZE} bytes (the header takes {MIN_SIZE}): {bad}")
    return sizes


def _traffic_options(p: argparse.ArgumentParser) -> None:
    from .demo import DEFAULT_SIZES, FAULTS

    p.add_argument("--duration", type=_positive_float, default=3.0, metavar="SECONDS",
                   help="how long each side sends (default: %(default)s)")
    p.add_argument("--queues", type=int_range(1, 256), default=1, metavar="N",
                   help="queue pairs, each carrying traffic both ways (default: %(default)s)")
    p.add_argument("--sizes", type=_sizes, default=DEFAULT_SIZES, metavar="N,N,...",
                   help="packet sizes in bytes, mixed pseudo-randomly; sizes above the "
                        "2048-byte buffers travel as chained buffers "
                        "(default: " + ",".join(map(str, DEFAULT_SIZES)) + ")")
    p.add_argument("--uvloop", action=argparse.BooleanOptionalAction, default=True,
                   help="run on uvloop rather than the default asyncio loop (default: uvloop)")
    p.add_argument("--seed", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--fault", choices=FAULTS, default=None, help=argparse.SUPPRESS)
    p.add_argument("-v", "--verbose", action="store_true",
                   help="log what memif_aio does (to stderr)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="memif-aio",
        description="Pure-Python asyncio memif (FD.io shared memory packet interface, "
                    "protocol 2.0).")
    parser.add_argument("--version", action="version",
                        version=f"memif-aio {__version__} (memif {VERSION_MAJOR}.{VERSION_MINOR})")
    sub = parser.add_subparsers(
        dest="command", required=True,
        metavar="{demo,version,responder,ping,bench,capture,show,replay,gen}")

    demo = sub.add_parser(
        "demo", help="master here, slave in a child process: verified traffic both ways",
        description="Start a master interface in this process and a slave interface in a child "
                    "process on a socket in a temporary directory, send packets of mixed sizes "
                    "both ways on every queue pair for --duration seconds, verify every byte "
                    "(order, content, no loss, no duplicates) and print packets, packets per "
                    "second and bits per second per direction. Exit status 0 only when "
                    "everything was verified.",
        epilog="Exit status: 0 everything verified, 1 FAILED, 2 bad arguments, 3 the watchdog "
               "ended a stuck run, 130 interrupted (Ctrl-C), 143 terminated (SIGTERM). The "
               "child process and the temporary directory are removed in every case.")
    _traffic_options(demo)
    demo.add_argument("--timeout", type=_positive_float, default=None, metavar="SECONDS",
                      help="give up (FAILED) after this long; a watchdog ends the process 5 s "
                           "later whatever happens (default: duration + 20)")

    sub.add_parser("version", help="print the package and protocol versions",
                   description="Print the memif_aio version and the memif protocol version.")

    import importlib

    for name in TOOLS:
        importlib.import_module(f".{name}", __package__).add_parser(sub)

    peer = sub.add_parser("demo-peer", description="The child (slave) side of 'demo'; "
                          "not meant to be run by hand.")
    _traffic_options(peer)
    peer.add_argument("--socket", required=True)
    peer.add_argument("--id", type=int, default=0)
    peer.add_argument("--parent-pid", type=int, default=0)
    peer.add_argument("--cleanup-dir", default=None)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    apply_environment(ns)
    if getattr(ns, "func", None) is not None:
        rc: int = ns.func(ns)
        return rc
    if getattr(ns, "verbose", False):
        logging.basicConfig(level=logging.DEBUG, stream=sys.stderr,
                            format="%(process)d %(name)s %(levelname)s %(message)s")
    if ns.command == "version":
        print(f"memif-aio {__version__}, memif protocol {VERSION_MAJOR}.{VERSION_MINOR}")
        return 0
    from . import demo

    if ns.command == "demo":
        return demo.demo_main(ns)
    return demo.peer_main(ns)


if __name__ == "__main__":
    sys.exit(main())

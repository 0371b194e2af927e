"""The applications built on memif_aio: the ``memif-aio`` command and what it needs.

Nothing here is imported by ``import memif_aio``; everything builds on the public API.

* :mod:`memif_aio.cli.main`: the command's dispatch (``memif-aio``, ``python -m memif_aio``);
* :mod:`memif_aio.cli.demo`: ``memif-aio demo`` (a master here, a slave in a child process);
* the tools ``responder``, ``ping``, ``bench``, ``capture``, ``show``, ``replay`` and ``gen``:
  each module has ``add_parser(subparsers)`` (its options, with ``--help``) and
  ``main(namespace) -> exit status``; :mod:`memif_aio.cli.common` holds the shared interface
  options, signal handling, exit statuses, rate formatting and the loop runner, and
  :mod:`memif_aio.cli.traffic` the sending side of ``replay`` and ``gen`` (docs/cli.md);
* :mod:`memif_aio.cli.status`: the status endpoint ``<socket>.ctl`` and its client (``show``);
* :mod:`memif_aio.cli.packet`: minimal Ethernet/ARP/IPv4/ICMP/UDP builders and parsers.
"""

from __future__ import annotations

#: tool name -> module (imported only when the tool runs or its parser is built)
TOOLS = ("responder", "ping", "bench", "capture", "show", "replay", "gen")

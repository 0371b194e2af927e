"""The ``memif-aio`` tools: ``responder``, ``ping``, ``bench``, ``capture``, ``show``,
``replay`` and ``gen``.

Each module has ``add_parser(subparsers)`` (its options, with ``--help``) and
``main(namespace) -> exit status``; :mod:`memif_aio.tools.common` holds the shared
interface options, the status endpoint, signal handling and exit statuses
(docs/cli.md).
"""

from __future__ import annotations

#: tool name -> module (imported only when the tool runs or its parser is built)
TOOLS = ("responder", "ping", "bench", "capture", "show", "replay", "gen")

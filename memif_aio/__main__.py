"""``python -m memif_aio``: the ``memif-aio`` command (:mod:`memif_aio.cli.main`)."""

import sys

from .cli.main import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())

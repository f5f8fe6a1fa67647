"""The ``cxpulse`` command line: ``worker``, ``demo``, ``replay``, ``report``, ``acls`` and the other commands, one
module a family in streams/commands/ (read in the order of its package docstring).

Settings come from ``CXPULSE_*`` environment variables (streams.config.Settings); flags override them.
Errors print one line to stderr and exit non-zero: 1 for a failure, 2 for bad usage.
"""

from __future__ import annotations

# each command module registers its commands on the app, in the order `cxpulse --help` lists them
from streams.commands import run  # noqa: F401

# isort: split
from streams.commands import history, kafka, offline, store  # noqa: F401
from streams.commands.base import app
from streams.render import err, out
from streams.runtime import tune_gc

__all__ = ["app", "err", "main", "out"]


def main() -> None:
    """The ``cxpulse`` entry point."""
    tune_gc()
    app()


if __name__ == "__main__":
    main()

"""``python -m streams.processes merge|journeys|sink METRICS_PORT LOGLEVEL`` (streams/processes/__init__.py)."""

import sys

from streams.processes import main

sys.exit(main())

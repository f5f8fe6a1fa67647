"""The commands of ``cxpulse`` (streams/cli.py is the entry point), one module a family.  Read in this order:

1. ``base``: the typer app and what every command shares (one-line errors, settings, options, progress).
2. ``kafka``: ``broker``, ``topics``, ``acls``, ``produce``, ``simulate``, ``read``.
3. ``run``: ``worker``, ``sink``, ``demo``.
4. ``offline``: ``replay``.
5. ``store``: ``report``, ``drivers``, ``journey``; ``queries``: the store queries they run.
"""

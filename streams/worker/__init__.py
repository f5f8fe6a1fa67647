"""The stream worker (``cxpulse worker``), one step a module.  Read in this order:

1. ``supervisor``: the command: topics, the processes of one worker, their summed /metrics, stop and restart.
2. ``hotpath``: the librdkafka batch loop, one Kafka transaction per batch (feedback in; dead letters,
   partials, seen ids and the input offsets out).
3. ``ingest``: the hot path's pure batch step: decode, validate, de-duplicate, aggregate into pane deltas.
4. ``records``: the message formats and table values, each encoded and decoded in one place.
5. ``merge_agent``: MergeAgent, the Faust agent on the partials: absorb, tail check, expiry, results.
6. ``merge``: the merge agent's pure step: absorb deltas once, follow each source's chain, results.
7. ``repair``: reading back partial messages the Faust consumer skipped.

The Faust process that runs the merge agent is built in streams/processes.py, on streams/agents/ (the batch-agent
skeleton, the results producer, metrics, health); nothing here imports sinks/.
"""

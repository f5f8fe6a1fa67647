"""The stream worker (``cxpulse worker``), one step a module.  Read in this order:

1. ``supervisor``: the command: topics, the processes of one worker, their summed /metrics, stop and restart.
2. ``hotpath``: the librdkafka batch loop of a hot-path slot, one Kafka transaction per batch (feedback and routed
   answers in; dead letters, routed answers, partials, seen ids and the input offsets out).
3. ``transactor``: the slot's transactional producer: one transaction per batch, a new producer when one is lost.
4. ``seen_restore``: a routed partition's committed offset and remembered ids, restored at assignment.
5. ``seen``: the remembered ids on disk (fingerprints in sorted runs up to a changelog checkpoint).
6. ``ingest``: the hot path's pure batch step: route (decode, validate, send by event id), then count
   (de-duplicate, aggregate into pane deltas).
7. ``outputs``: what a batch writes, topic by topic; ``positions``: lag, and how far each partition is routed.
8. ``records``: the message formats and table values, each encoded and decoded in one place.
9. ``merge_agent``: MergeAgent, the Faust agent on the partials: absorb, tail check, expiry, results.
10. ``merge``: the merge agent's pure step: absorb deltas once, follow each source's chain, results.
11. ``repair``: reading back partial messages the Faust consumer skipped; the readers' Protocols.
12. ``tail_watch``: when merge and the journey agent read a partition's tail back (no next message reveals a skip
    at the end).
13. ``journey_agent``: JourneyAgent, the Faust agent on the journey answers (streams/core/journeys.py its pure part).

The Faust processes that run the merge and journey agents are built in streams/processes/ (the composition
root: it also makes their readers and offset views), on streams/agents/ (the batch-agent skeleton, the results
producer, metrics, health); nothing here imports sinks/.
"""

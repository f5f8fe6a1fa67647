"""The pure core of cxpulse: docs/contract.md in code, one implementation of every rule and formula, shared by the
stream, `cxpulse replay` and the tests.  Nothing here imports a Kafka, Faust or ClickHouse client, or does I/O.
Read in this order:

1. ``validate``: what an answer is, and why one is refused (contract sections 1-2); labels normalised.
2. ``aggregate``: what one answer counts as, the counters that add up, and the KPI values made from them (3-4).
3. ``windows``: panes and rolling windows, the result record (5-6).
4. ``dedup``: the first copy of an event id counts (2).
5. ``effort``: the effort-spike CUSUM and its root cause (7).
6. ``journeys``: customer journey instances and their revisions (8); ``journey_kpis``: their additive counters
   and KPI values; ``journey_state``: what the journey agent keeps of one (customer, journey).
7. ``followups``: detractor follow-ups, and the token bucket that paces them.
8. ``privacy``: customer ids as keyed pseudonyms.
9. ``comments``: what customers say: comments redacted, cut into words and read as themes (9); ``answers``: a
   counted answer as the store keeps it; ``quotes``: the latest comments of high-effort answers, which an effort
   alert quotes (7, 9).
10. ``synth``: realistic feedback for tests and benchmarks.
"""

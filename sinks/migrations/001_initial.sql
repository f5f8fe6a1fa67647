-- cxpulse ClickHouse schema, version 1.  Applied by cxpulse at start (sinks/clickhouse.py `migrate`), each file of
-- this folder once, in name order, recorded in cxpulse.schema_version; by hand: clickhouse-client --multiquery < this.
-- Statements are separated by a line holding only ";".

-- Pane results (docs/contract.md section 6), one row per revision; ReplacingMergeTree keeps the highest version of a pane
-- group, so a re-delivered or revised result replaces and never adds.  Read with FINAL (or argMax by version).
-- sx and sx2 are the exact fixed-point sums (sum_x * 2,520,000,000 and sum_x2 * 6,350,400,000, streams/aggregate.py):
-- rolling windows and rollups sum them and compute, never average values.
CREATE TABLE IF NOT EXISTS cxpulse.pane_results
(
    window_start    DateTime64(3, 'UTC'),
    window_end      DateTime64(3, 'UTC'),
    channel         LowCardinality(String),
    journey         LowCardinality(String),
    metric          LowCardinality(String),
    n               UInt64,
    promoters       UInt64,
    passives        UInt64,
    detractors      UInt64,
    positive        UInt64,
    high_effort     UInt64,
    sx              Int64,
    sx2             Int64,
    sum_x           Float64,
    sum_x2          Float64,
    value           Float64,
    moe95           Nullable(Float64),
    mean_normalized Float64,
    version         UInt64,
    drivers         Array(Tuple(name String, n UInt64, high_effort UInt64)),
    written_at      DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(window_start)
ORDER BY (metric, channel, journey, window_start)
TTL toDateTime(window_start) + INTERVAL 400 DAY
SETTINGS non_replicated_deduplication_window = 1000
;
-- Every counted answer (valid, first copy), with its dimensions, reason codes and comment, for drill-down and root
-- cause.  One row per event_id: the sorting key ends with it, and an answer's other key columns never change.
-- promoter ... high_effort, sx, sx2 are the answer's contribution (docs/contract.md section 3, fixed point as above), so
-- any grouping of answers sums to the exact counters of section 4.
CREATE TABLE IF NOT EXISTS cxpulse.answers
(
    event_id       String,
    occurred_at    DateTime64(3, 'UTC'),
    source         LowCardinality(String),
    channel        LowCardinality(String),
    journey        LowCardinality(String),
    touchpoint     LowCardinality(String),
    metric         LowCardinality(String),
    score          Int16,
    scale_min      Int16,
    scale_max      Int16,
    customer_id    String,
    interaction_id String,
    agent_id       LowCardinality(String),
    team           LowCardinality(String),
    reason_codes   Array(LowCardinality(String)),
    comment        String,
    promoter       UInt8,
    passive        UInt8,
    detractor      UInt8,
    positive       UInt8,
    high_effort    UInt8,
    sx             Int64,
    sx2            Int64,
    written_at     DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (metric, channel, journey, toStartOfHour(occurred_at), event_id)
TTL toDateTime(occurred_at) + INTERVAL 400 DAY
SETTINGS non_replicated_deduplication_window = 1000
;
-- The latest revision of every pane group.
CREATE VIEW IF NOT EXISTS cxpulse.panes AS
SELECT * EXCEPT (written_at) FROM cxpulse.pane_results FINAL

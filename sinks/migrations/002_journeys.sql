-- cxpulse ClickHouse schema, version 2: customer journeys (docs/contract.md section 8).  Applied like 001.
-- Statements are separated by a line holding only ";".

-- Journey instances, one row per revision of cx.journeys.  The key is (customer_id, journey, start_at); the newest
-- version wins and a replaced instance's last revision has deleted = 1, so `FINAL` gives exactly the live
-- instances (ReplacingMergeTree's is_deleted column drops them).  start_at / end_at are the record's start / end.
-- The KPIs sum the counters of closed instances (one_stop, contacts, channel_switches, ...): exact, never averaged.
CREATE TABLE IF NOT EXISTS cxpulse.journey_instances
(
    customer_id      String,
    journey          LowCardinality(String),
    start_at         DateTime64(3, 'UTC'),
    end_at           DateTime64(3, 'UTC'),
    first_channel    LowCardinality(String),
    answers          UInt32,
    contacts         UInt32,
    channels         UInt16,
    channel_switches UInt32,
    touchpoints      UInt16,
    ces_n            UInt32,
    ces_high_effort  UInt32,
    first_x          Float64,
    last_x           Float64,
    last_nps         LowCardinality(String),
    one_stop         UInt8,
    recoverable      UInt8,
    recovered        UInt8,
    closed           UInt8,
    version          UInt64,
    deleted          UInt8,
    written_at       DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(version, deleted)
PARTITION BY toYYYYMM(start_at)
ORDER BY (customer_id, journey, start_at)
TTL toDateTime(end_at) + INTERVAL 400 DAY
SETTINGS non_replicated_deduplication_window = 1000
;
-- `cxpulse journey CUSTOMER_ID` reads one customer's answers: a skip index on customer_id spares a scan of every
-- granule of cxpulse.answers (sorted by metric, channel, journey, hour).
ALTER TABLE cxpulse.answers ADD INDEX IF NOT EXISTS answers_customer customer_id TYPE bloom_filter(0.01) GRANULARITY 4
;
ALTER TABLE cxpulse.answers MATERIALIZE INDEX answers_customer

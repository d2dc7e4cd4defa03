-- Highest input position stored, per sink partition and input partition (and budget, for
-- allocations). A worker that crashes or loses a partition replays its uncommitted input
-- and publishes those outputs again as new Kafka records; the sink skips any output whose
-- input position is at or below this watermark (see clickhouse_sink.py), so base tables
-- and the daily roll-ups never hold a row twice. Kept by views on insert, read at
-- partition assignment; max() merges, so the table stays one row per key.
CREATE TABLE IF NOT EXISTS origin_watermarks
(
    table_name LowCardinality(String),
    _topic LowCardinality(String),
    _partition Int32,
    origin_topic LowCardinality(String),
    origin_partition Int32,
    scope String,
    max_offset SimpleAggregateFunction(max, Int64)
)
ENGINE = AggregatingMergeTree
ORDER BY (table_name, _topic, _partition, origin_topic, origin_partition, scope);

INSERT INTO origin_watermarks
SELECT 'priced_usage', _topic, _partition, origin_topic, origin_partition, '', max(origin_offset)
FROM priced_usage GROUP BY _topic, _partition, origin_topic, origin_partition;

CREATE MATERIALIZED VIEW IF NOT EXISTS origin_watermarks_priced_mv TO origin_watermarks AS
SELECT 'priced_usage' AS table_name, _topic, _partition, origin_topic, origin_partition,
       '' AS scope, max(origin_offset) AS max_offset
FROM priced_usage GROUP BY _topic, _partition, origin_topic, origin_partition;

INSERT INTO origin_watermarks
SELECT 'cost_allocations', _topic, _partition, origin_topic, origin_partition, budget_id,
       max(origin_offset)
FROM cost_allocations GROUP BY _topic, _partition, origin_topic, origin_partition, budget_id;

CREATE MATERIALIZED VIEW IF NOT EXISTS origin_watermarks_allocations_mv TO origin_watermarks AS
SELECT 'cost_allocations' AS table_name, _topic, _partition, origin_topic, origin_partition,
       toString(budget_id) AS scope, max(origin_offset) AS max_offset
FROM cost_allocations GROUP BY _topic, _partition, origin_topic, origin_partition, budget_id;

INSERT INTO origin_watermarks
SELECT 'dead_letters', _topic, _partition, origin_topic, origin_partition, '', max(origin_offset)
FROM dead_letters GROUP BY _topic, _partition, origin_topic, origin_partition;

CREATE MATERIALIZED VIEW IF NOT EXISTS origin_watermarks_dead_mv TO origin_watermarks AS
SELECT 'dead_letters' AS table_name, _topic, _partition, origin_topic, origin_partition,
       '' AS scope, max(origin_offset) AS max_offset
FROM dead_letters GROUP BY _topic, _partition, origin_topic, origin_partition;

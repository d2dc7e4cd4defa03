-- Cost-allocation batch records (schemas/batches.py, format allocations/1: the rows one
-- price-stage batch sends to one partition, as JSON arrays) take the native path too: the
-- sink sends each record as one JSONCompactEachRow line ["topic", partition, offset, rows]
-- into this Null staging table, and the view flattens the rows into cost_allocations as
-- 0004 does for single Avro records. Money arrives as integer nano-units (the raw value of
-- Decimal(38, 9), so a multiplication by 1e-9 is exact) and times as epoch microseconds.
CREATE TABLE IF NOT EXISTS cost_allocation_rows_json
(
    _topic String,
    _partition Int32,
    _offset Int64,
    rows Array(Tuple(
        event_id String,
        budget_id String,
        matched_via String,
        period_key String,
        period_start_us Int64,
        period_end_us Int64,
        occurred_at_us Int64,
        amount_nanos Int128,
        currency String,
        source String,
        provider String,
        model String,
        org String,
        team String,
        project String,
        user String,
        department String,
        feature String,
        tags Map(String, String),
        origin_topic String,
        origin_partition Int32,
        origin_offset Int64))
)
ENGINE = Null;

CREATE MATERIALIZED VIEW IF NOT EXISTS cost_allocation_rows_json_mv TO cost_allocations AS
SELECT
    concat(r.event_id, '/', r.budget_id) AS allocation_id,
    r.event_id AS event_id,
    r.budget_id AS budget_id,
    r.matched_via AS matched_via,
    r.period_key AS period_key,
    fromUnixTimestamp64Micro(r.period_start_us, 'UTC') AS period_start,
    fromUnixTimestamp64Micro(r.period_end_us, 'UTC') AS period_end,
    fromUnixTimestamp64Micro(r.occurred_at_us, 'UTC') AS occurred_at,
    r.amount_nanos * toDecimal128('0.000000001', 9) AS amount,
    r.currency AS currency,
    r.source AS source,
    r.provider AS provider,
    r.model AS model,
    r.org AS org,
    r.team AS team,
    r.project AS project,
    r.user AS user,
    r.department AS department,
    r.feature AS feature,
    r.tags AS tags,
    r.origin_topic AS origin_topic,
    r.origin_partition AS origin_partition,
    r.origin_offset AS origin_offset,
    _topic,
    _partition,
    _offset
FROM cost_allocation_rows_json
ARRAY JOIN rows AS r;

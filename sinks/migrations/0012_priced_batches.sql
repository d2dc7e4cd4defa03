-- Priced-usage batch records of format priced/2 (schemas/batches.py: the priced event
-- flattened into priced_usage's columns, as JSON arrays) take the native path, as
-- allocations do since 0007: the sink sends each record as one JSONCompactEachRow line
-- ["topic", partition, offset, rows] into this Null staging table, and the view flattens
-- the rows into priced_usage exactly as the decoding path does. The usage payload (a union
-- of four Avro records) is flattened by the price stage, so nothing here reads Avro. Money
-- arrives as integer nano-units (the raw value of Decimal(38, 9): multiplying by 1e-9 as
-- a Decimal is exact) and times as epoch microseconds. priced/1 records (the event as Avro
-- inside the JSON) are still decoded by the sink.
CREATE TABLE IF NOT EXISTS priced_usage_rows_json
(
    _topic String,
    _partition Int32,
    _offset Int64,
    rows Array(Tuple(
        event_id String,
        occurred_at_us Int64,
        source String,
        provider String,
        model String,
        operation String,
        org String, team String, project String, user String, department String,
        session String, feature String,
        tags Map(String, String),
        input_tokens UInt64, output_tokens UInt64, cache_read_tokens UInt64,
        cache_write_tokens UInt64, reasoning_tokens UInt64, images UInt64,
        cache_write_1h_tokens UInt64, service_tier String, batch UInt8,
        actor_id String, run_id String, platform String, workflow_id String,
        execution_id String, status String,
        compute_units_nanos Int128, results UInt64, tasks UInt64, operations UInt64,
        duration_ms UInt64, category String,
        cost_nanos Int128,
        currency String,
        priced UInt8,
        components Array(Tuple(name String, quantity_nanos Int128, unit String, amount_nanos Int128)),
        price_source String,
        price_version String,
        origin_topic String,
        origin_partition Int32,
        origin_offset Int64,
        priced_at_us Int64))
)
ENGINE = Null;

CREATE MATERIALIZED VIEW IF NOT EXISTS priced_usage_rows_json_mv TO priced_usage AS
SELECT
    r.event_id AS event_id,
    fromUnixTimestamp64Micro(r.occurred_at_us, 'UTC') AS occurred_at,
    r.source AS source,
    r.provider AS provider,
    r.model AS model,
    r.operation AS operation,
    r.org AS org, r.team AS team, r.project AS project, r.user AS user,
    r.department AS department, r.session AS session, r.feature AS feature,
    r.tags AS tags,
    r.input_tokens AS input_tokens,
    r.output_tokens AS output_tokens,
    r.cache_read_tokens AS cache_read_tokens,
    r.cache_write_tokens AS cache_write_tokens,
    r.reasoning_tokens AS reasoning_tokens,
    r.images AS images,
    r.cache_write_1h_tokens AS cache_write_1h_tokens,
    r.service_tier AS service_tier,
    r.batch AS batch,
    r.actor_id AS actor_id,
    r.run_id AS run_id,
    r.platform AS platform,
    r.workflow_id AS workflow_id,
    r.execution_id AS execution_id,
    r.status AS status,
    r.compute_units_nanos * toDecimal128('0.000000001', 9) AS compute_units,
    r.results AS results,
    r.tasks AS tasks,
    r.operations AS operations,
    r.duration_ms AS duration_ms,
    r.category AS category,
    r.cost_nanos * toDecimal128('0.000000001', 9) AS cost,
    r.currency AS currency,
    r.priced AS priced,
    arrayMap(c -> (c.1, c.2 * toDecimal128('0.000000001', 9), c.3,
                   c.4 * toDecimal128('0.000000001', 9)), r.components) AS components,
    r.price_source AS price_source,
    r.price_version AS price_version,
    r.origin_topic AS origin_topic,
    r.origin_partition AS origin_partition,
    r.origin_offset AS origin_offset,
    fromUnixTimestamp64Micro(r.priced_at_us, 'UTC') AS priced_at,
    _topic,
    _partition,
    _offset
FROM priced_usage_rows_json
ARRAY JOIN rows AS r;

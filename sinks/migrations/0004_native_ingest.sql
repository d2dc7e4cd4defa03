-- Native Avro ingest (see sinks/native_ingest.py): the sink sends cost-allocations records
-- as an Avro container file into this Null staging table (one column per field of the
-- wrapper record; nested Avro records are Tuples); the view flattens them into
-- cost_allocations exactly as the decode-per-row path does. Nothing is stored here.
CREATE TABLE IF NOT EXISTS cost_allocations_avro
(
    _topic String,
    _partition Int32,
    _offset Int64,
    value Tuple(
        allocation_id String,
        event_id String,
        budget_id String,
        matched_via String,
        period_key String,
        period_start DateTime64(6, 'UTC'),
        period_end DateTime64(6, 'UTC'),
        occurred_at DateTime64(6, 'UTC'),
        amount Decimal(38, 9),
        currency String,
        source String,
        provider Nullable(String),
        model Nullable(String),
        attributes Tuple(
            org Nullable(String), team Nullable(String), project Nullable(String),
            user Nullable(String), department Nullable(String), session Nullable(String),
            feature Nullable(String), tags Map(String, String)),
        origin Tuple(topic String, partition Int32, offset Int64))
)
ENGINE = Null;

CREATE MATERIALIZED VIEW IF NOT EXISTS cost_allocations_avro_mv TO cost_allocations AS
SELECT
    value.allocation_id AS allocation_id,
    value.event_id AS event_id,
    value.budget_id AS budget_id,
    value.matched_via AS matched_via,
    value.period_key AS period_key,
    value.period_start AS period_start,
    value.period_end AS period_end,
    value.occurred_at AS occurred_at,
    value.amount AS amount,
    value.currency AS currency,
    value.source AS source,
    ifNull(value.provider, '') AS provider,
    ifNull(value.model, '') AS model,
    ifNull(value.attributes.org, '') AS org,
    ifNull(value.attributes.team, '') AS team,
    ifNull(value.attributes.project, '') AS project,
    ifNull(value.attributes.user, '') AS user,
    ifNull(value.attributes.department, '') AS department,
    ifNull(value.attributes.feature, '') AS feature,
    value.attributes.tags AS tags,
    value.origin.topic AS origin_topic,
    value.origin.partition AS origin_partition,
    value.origin.offset AS origin_offset,
    _topic,
    _partition,
    _offset
FROM cost_allocations_avro;

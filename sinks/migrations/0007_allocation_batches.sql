-- Cost-allocation batch records (CostAllocationBatch: the allocations one price-stage
-- batch sends to one partition) take the native Avro path too: the sink sends them into
-- this Null staging table, and the view flattens each record's array into one row per
-- allocation, exactly as 0004 does for single CostAllocation records. Nothing is stored here.
CREATE TABLE IF NOT EXISTS cost_allocation_batches_avro
(
    _topic String,
    _partition Int32,
    _offset Int64,
    value Tuple(allocations Array(Tuple(
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
        origin Tuple(topic String, partition Int32, offset Int64))))
)
ENGINE = Null;

CREATE MATERIALIZED VIEW IF NOT EXISTS cost_allocation_batches_avro_mv TO cost_allocations AS
SELECT
    a.allocation_id AS allocation_id,
    a.event_id AS event_id,
    a.budget_id AS budget_id,
    a.matched_via AS matched_via,
    a.period_key AS period_key,
    a.period_start AS period_start,
    a.period_end AS period_end,
    a.occurred_at AS occurred_at,
    a.amount AS amount,
    a.currency AS currency,
    a.source AS source,
    ifNull(a.provider, '') AS provider,
    ifNull(a.model, '') AS model,
    ifNull(a.attributes.org, '') AS org,
    ifNull(a.attributes.team, '') AS team,
    ifNull(a.attributes.project, '') AS project,
    ifNull(a.attributes.user, '') AS user,
    ifNull(a.attributes.department, '') AS department,
    ifNull(a.attributes.feature, '') AS feature,
    a.attributes.tags AS tags,
    a.origin.topic AS origin_topic,
    a.origin.partition AS origin_partition,
    a.origin.offset AS origin_offset,
    _topic,
    _partition,
    _offset
FROM cost_allocation_batches_avro
ARRAY JOIN value.allocations AS a;

-- Core tables. Money is Decimal(38, 9): exact nano-units, the same scale as the stream.
-- ReplacingMergeTree on a stable id is the backstop against a retried insert; money
-- queries use FINAL (or argMax) because duplicates disappear only at merge time.
-- _topic/_partition/_offset is the row's position in the sink's source topic: the sink
-- resumes after the highest one stored, so a crash between insert and commit adds nothing.

CREATE TABLE IF NOT EXISTS priced_usage
(
    event_id String,
    occurred_at DateTime64(6, 'UTC'),
    source LowCardinality(String),
    provider LowCardinality(String),
    model LowCardinality(String),
    operation LowCardinality(String),
    org String, team String, project String, user String, department String,
    session String, feature String,
    tags Map(String, String),
    input_tokens UInt64, output_tokens UInt64, cache_read_tokens UInt64,
    cache_write_tokens UInt64, reasoning_tokens UInt64, images UInt64,
    actor_id String, run_id String, platform LowCardinality(String), workflow_id String,
    execution_id String, status LowCardinality(String),
    compute_units Decimal(38, 9), results UInt64, tasks UInt64, operations UInt64,
    duration_ms UInt64, category LowCardinality(String),
    cost Decimal(38, 9),
    currency LowCardinality(String),
    priced UInt8,
    components Array(Tuple(name String, quantity Decimal(38, 9), unit String, amount Decimal(38, 9))),
    price_source LowCardinality(String),
    price_version LowCardinality(String),
    origin_topic LowCardinality(String), origin_partition Int32, origin_offset Int64,
    priced_at DateTime64(6, 'UTC'),
    _topic LowCardinality(String), _partition Int32, _offset Int64,
    inserted_at DateTime64(6, 'UTC') DEFAULT now64(6)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (event_id)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE TABLE IF NOT EXISTS cost_allocations
(
    allocation_id String,
    event_id String,
    budget_id LowCardinality(String),
    matched_via LowCardinality(String),
    period_key LowCardinality(String),
    period_start DateTime64(6, 'UTC'),
    period_end DateTime64(6, 'UTC'),
    occurred_at DateTime64(6, 'UTC'),
    amount Decimal(38, 9),
    currency LowCardinality(String),
    source LowCardinality(String),
    provider LowCardinality(String),
    model LowCardinality(String),
    org String, team String, project String, user String, department String, feature String,
    tags Map(String, String),
    origin_topic LowCardinality(String), origin_partition Int32, origin_offset Int64,
    _topic LowCardinality(String), _partition Int32, _offset Int64,
    inserted_at DateTime64(6, 'UTC') DEFAULT now64(6)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (budget_id, allocation_id)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE TABLE IF NOT EXISTS budget_alerts
(
    alert_id String,
    budget_id LowCardinality(String),
    budget_name String,
    period_key LowCardinality(String),
    kind LowCardinality(String),
    threshold_percent Nullable(Decimal(12, 4)),
    action LowCardinality(String),
    downgrade_to String,
    severity LowCardinality(String),
    spent Decimal(38, 9),
    limit Decimal(38, 9),
    currency LowCardinality(String),
    message String,
    triggered_by String,
    triggered_at DateTime64(6, 'UTC'),
    _topic LowCardinality(String), _partition Int32, _offset Int64,
    inserted_at DateTime64(6, 'UTC') DEFAULT now64(6)
)
ENGINE = ReplacingMergeTree
ORDER BY (alert_id)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE TABLE IF NOT EXISTS budgets
(
    budget_id String,
    name String,
    parent_id String,
    limit Decimal(38, 9),
    currency LowCardinality(String),
    period LowCardinality(String),
    timezone String,
    scope String,
    thresholds String,
    deleted UInt8,
    updated_at DateTime64(6, 'UTC'),
    _topic LowCardinality(String), _partition Int32, _offset Int64,
    inserted_at DateTime64(6, 'UTC') DEFAULT now64(6)
)
ENGINE = ReplacingMergeTree(_offset)
ORDER BY (budget_id)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE TABLE IF NOT EXISTS dead_letters
(
    origin_topic LowCardinality(String), origin_partition Int32, origin_offset Int64,
    event_id String,
    error_code LowCardinality(String),
    reason String,
    raw_value String,
    rejected_at DateTime64(6, 'UTC'),
    _topic LowCardinality(String), _partition Int32, _offset Int64,
    inserted_at DateTime64(6, 'UTC') DEFAULT now64(6)
)
ENGINE = ReplacingMergeTree
ORDER BY (origin_topic, origin_partition, origin_offset)
SETTINGS non_replicated_deduplication_window = 10000;

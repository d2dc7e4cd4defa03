-- Daily roll-ups, maintained by materialized views on insert. They are SummingMergeTree:
-- query them with sum() ... GROUP BY (rows for one key merge in the background).
-- The sink inserts with deduplicate_blocks_in_dependent_materialized_views = 1, so a
-- retried block that the base table drops is dropped here too. A backfill runs before
-- each view exists, so rows inserted by then are counted exactly once.

CREATE TABLE IF NOT EXISTS daily_spend
(
    day Date,
    source LowCardinality(String),
    provider LowCardinality(String),
    model LowCardinality(String),
    team String,
    project String,
    currency LowCardinality(String),
    cost Decimal(38, 9),
    events UInt64
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (day, source, provider, model, team, project, currency)
SETTINGS non_replicated_deduplication_window = 1000;

-- backfill what the base table already holds (token-deduplicated if this is re-run)
INSERT INTO daily_spend
SELECT toDate(occurred_at) AS day, source, provider, model, team, project, currency,
       sum(cost) AS cost, count() AS events
FROM priced_usage FINAL
GROUP BY day, source, provider, model, team, project, currency;

CREATE MATERIALIZED VIEW IF NOT EXISTS daily_spend_mv TO daily_spend AS
SELECT toDate(occurred_at) AS day, source, provider, model, team, project, currency,
       sum(cost) AS cost, count() AS events
FROM priced_usage
GROUP BY day, source, provider, model, team, project, currency;

CREATE TABLE IF NOT EXISTS daily_spend_by_budget
(
    day Date,
    budget_id LowCardinality(String),
    period_key LowCardinality(String),
    currency LowCardinality(String),
    cost Decimal(38, 9),
    events UInt64
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (budget_id, day, period_key, currency)
SETTINGS non_replicated_deduplication_window = 1000;

INSERT INTO daily_spend_by_budget
SELECT toDate(occurred_at) AS day, budget_id, period_key, currency,
       sum(amount) AS cost, count() AS events
FROM cost_allocations FINAL
GROUP BY day, budget_id, period_key, currency;

CREATE MATERIALIZED VIEW IF NOT EXISTS daily_spend_by_budget_mv TO daily_spend_by_budget AS
SELECT toDate(occurred_at) AS day, budget_id, period_key, currency,
       sum(amount) AS cost, count() AS events
FROM cost_allocations
GROUP BY day, budget_id, period_key, currency;

CREATE TABLE IF NOT EXISTS daily_alerts
(
    day Date,
    budget_id LowCardinality(String),
    kind LowCardinality(String),
    severity LowCardinality(String),
    alerts UInt64
)
ENGINE = SummingMergeTree
ORDER BY (day, budget_id, kind, severity)
SETTINGS non_replicated_deduplication_window = 1000;

INSERT INTO daily_alerts
SELECT toDate(triggered_at) AS day, budget_id, kind, severity, count() AS alerts
FROM budget_alerts FINAL
GROUP BY day, budget_id, kind, severity;

CREATE MATERIALIZED VIEW IF NOT EXISTS daily_alerts_mv TO daily_alerts AS
SELECT toDate(triggered_at) AS day, budget_id, kind, severity, count() AS alerts
FROM budget_alerts
GROUP BY day, budget_id, kind, severity;

-- The live definition of every budget (deleted ones stay in `budgets` as history).
CREATE VIEW IF NOT EXISTS budgets_current AS
SELECT budget_id,
       argMax(name, _offset) AS name,
       argMax(parent_id, _offset) AS parent_id,
       argMax(`limit`, _offset) AS `limit`,
       argMax(currency, _offset) AS currency,
       argMax(period, _offset) AS period,
       argMax(timezone, _offset) AS timezone,
       argMax(scope, _offset) AS scope,
       argMax(thresholds, _offset) AS thresholds,
       argMax(updated_at, _offset) AS updated_at
FROM budgets
GROUP BY budget_id
HAVING argMax(deleted, _offset) = 0;

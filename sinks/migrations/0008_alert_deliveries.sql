-- The delivery log of `spendstream notify` (from the alert-deliveries topic): one row per
-- attempt to deliver an alert to a channel, so analysts see what reached whom and when.
-- outcome: delivered | retrying (that attempt failed, another follows) | failed (given up;
-- the alert is also on alerts.dlq). Errors never hold a channel's secrets.
CREATE TABLE IF NOT EXISTS alert_deliveries
(
    alert_id String,
    budget_id LowCardinality(String),
    channel LowCardinality(String),
    channel_type LowCardinality(String),
    attempt UInt16,
    outcome LowCardinality(String),
    status_code Nullable(Int32),
    latency_ms Float64,
    error String,
    digest String,
    at DateTime64(6, 'UTC'),
    _topic LowCardinality(String), _partition Int32, _offset Int64,
    inserted_at DateTime64(6, 'UTC') DEFAULT now64(6)
)
ENGINE = ReplacingMergeTree
ORDER BY (alert_id, channel, attempt, at)
SETTINGS non_replicated_deduplication_window = 10000;

-- Where each alert stands per channel: the last attempt's outcome.
CREATE VIEW IF NOT EXISTS alert_delivery_status AS
SELECT alert_id, channel,
       argMax(outcome, (at, attempt)) AS last_outcome,
       max(attempt) AS attempts,
       argMax(status_code, (at, attempt)) AS last_status,
       argMax(error, (at, attempt)) AS last_error,
       minIf(at, outcome = 'delivered') AS delivered_at
FROM alert_deliveries FINAL
GROUP BY alert_id, channel;

-- Alerts carry the projection of their period when they fired (BudgetAlert v2).
ALTER TABLE budget_alerts ADD COLUMN IF NOT EXISTS projected_total Nullable(Decimal(38, 9)) AFTER triggered_at;

-- Acknowledgements and resolutions of alerts (from the alert-actions topic).
CREATE TABLE IF NOT EXISTS alert_actions
(
    alert_id String,
    budget_id LowCardinality(String),
    action LowCardinality(String),
    actor String,
    note String,
    at DateTime64(6, 'UTC'),
    _topic LowCardinality(String), _partition Int32, _offset Int64,
    inserted_at DateTime64(6, 'UTC') DEFAULT now64(6)
)
ENGINE = ReplacingMergeTree
ORDER BY (alert_id, action, at)
SETTINGS non_replicated_deduplication_window = 10000;

-- Every alert with where it stands: open, acknowledged or resolved.
CREATE VIEW IF NOT EXISTS alerts_current AS
SELECT a.*,
       multiIf(s.resolved_at > 0, 'resolved', s.acknowledged_at > 0, 'acknowledged', 'open') AS state,
       s.acknowledged_at, s.resolved_at, s.last_actor
FROM budget_alerts AS a FINAL
LEFT JOIN
(
    SELECT alert_id,
           maxIf(at, action = 'acknowledge') AS acknowledged_at,
           maxIf(at, action = 'resolve') AS resolved_at,
           argMax(actor, at) AS last_actor
    FROM alert_actions FINAL
    GROUP BY alert_id
) AS s USING (alert_id);

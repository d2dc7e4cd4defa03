-- Who changed a budget: every version's actor and note, and the whole definition as JSON
-- (allocations and owner included), so `spendstream budgets history ID` can diff any field.
-- `budgets` is a ReplacingMergeTree ordered by budget_id: merges keep one row per budget,
-- so it cannot be the history. `budget_history` keeps every version, one row per budgets
-- topic record (ordered by its position: a replayed record replaces its own row only),
-- filled from every insert into `budgets` by the view below. Versions stored before this
-- migration are copied once (with no actor, note or definition: the history shows what
-- their columns hold). IF NOT EXISTS everywhere: safe to run again.
ALTER TABLE budgets ADD COLUMN IF NOT EXISTS actor String DEFAULT '';

ALTER TABLE budgets ADD COLUMN IF NOT EXISTS note String DEFAULT '';

ALTER TABLE budgets ADD COLUMN IF NOT EXISTS definition String DEFAULT '';

CREATE TABLE IF NOT EXISTS budget_history
(
    budget_id String,
    deleted UInt8,
    updated_at DateTime64(6, 'UTC'),
    actor String,
    note String,
    definition String,
    name String,
    parent_id String,
    limit Decimal(38, 9),
    currency LowCardinality(String),
    period LowCardinality(String),
    timezone String,
    scope String,
    thresholds String,
    custom_start Nullable(DateTime64(6, 'UTC')),
    custom_end Nullable(DateTime64(6, 'UTC')),
    _topic LowCardinality(String), _partition Int32, _offset Int64,
    inserted_at DateTime64(6, 'UTC') DEFAULT now64(6)
)
ENGINE = ReplacingMergeTree
ORDER BY (budget_id, _topic, _partition, _offset)
SETTINGS non_replicated_deduplication_window = 10000;

INSERT INTO budget_history
SELECT budget_id, deleted, updated_at, actor, note, definition, name, parent_id, `limit`,
       currency, period, timezone, scope, thresholds, custom_start, custom_end,
       _topic, _partition, _offset, inserted_at
FROM budgets;

CREATE MATERIALIZED VIEW IF NOT EXISTS budget_history_mv TO budget_history AS
SELECT budget_id, deleted, updated_at, actor, note, definition, name, parent_id, `limit`,
       currency, period, timezone, scope, thresholds, custom_start, custom_end,
       _topic, _partition, _offset, inserted_at
FROM budgets;

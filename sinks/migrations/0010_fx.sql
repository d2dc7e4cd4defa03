-- Budgets in any currency (streams/fx.py). Costs stay in the currency the provider bills
-- (cost_allocations.amount / currency); an allocation to a budget in another currency is
-- converted by the aggregator at the reference rate of the event's day and recorded here,
-- with the rate and the day it belongs to. One row per event and budget.
CREATE TABLE IF NOT EXISTS allocation_conversions
(
    event_id String,
    budget_id LowCardinality(String),
    period_key LowCardinality(String),
    occurred_at DateTime64(6, 'UTC'),
    amount Decimal(38, 9),
    currency LowCardinality(String),
    budget_currency LowCardinality(String),
    rate Decimal(38, 18),
    rate_day Date32,
    budget_amount Decimal(38, 9),
    converted_at DateTime64(6, 'UTC'),
    _topic LowCardinality(String), _partition Int32, _offset Int64,
    inserted_at DateTime64(6, 'UTC') DEFAULT now64(6)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (budget_id, event_id)
SETTINGS non_replicated_deduplication_window = 10000;

-- The reference rates published (fx-rates topic): 1 base = rate quote on day.
CREATE TABLE IF NOT EXISTS fx_rates
(
    day Date32,
    base LowCardinality(String),
    quote LowCardinality(String),
    rate Decimal(38, 12),
    source String,
    published_at DateTime64(6, 'UTC'),
    _topic LowCardinality(String), _partition Int32, _offset Int64,
    inserted_at DateTime64(6, 'UTC') DEFAULT now64(6)
)
ENGINE = ReplacingMergeTree(published_at)
ORDER BY (base, quote, day);

-- Every allocation in its budget's currency: as billed when the currencies agree, else
-- as converted; ``held`` = still waiting for its day's rate (budget_amount NULL then).
CREATE VIEW IF NOT EXISTS allocations_in_budget_currency AS
SELECT a.event_id AS event_id, a.budget_id AS budget_id, a.period_key AS period_key,
       a.occurred_at AS occurred_at, a.amount AS amount, a.currency AS currency,
       b.currency AS budget_currency,
       if(a.currency = b.currency, CAST(a.amount AS Nullable(Decimal(38, 9))),
          if(c.event_id = '', NULL, CAST(c.budget_amount AS Nullable(Decimal(38, 9))))) AS budget_amount,
       if(a.currency = b.currency OR c.event_id = '', NULL, c.rate) AS rate,
       if(a.currency = b.currency OR c.event_id = '', NULL, c.rate_day) AS rate_day,
       a.currency != b.currency AND c.event_id = '' AS held,
       a.source AS source, a.provider AS provider, a.model AS model, a.team AS team,
       a.project AS project, a.user AS user
FROM cost_allocations AS a FINAL
INNER JOIN (SELECT budget_id, argMax(currency, updated_at) AS currency FROM budgets FINAL
            GROUP BY budget_id) AS b ON a.budget_id = b.budget_id
LEFT JOIN (SELECT * FROM allocation_conversions FINAL) AS c
       ON a.budget_id = c.budget_id AND a.event_id = c.event_id;

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

-- Every allocation in its budget's currency, a drop-in for cost_allocations in reports
-- about a budget: ``amount`` / ``currency`` are the budget's (as billed when the currencies
-- agree, else as converted), ``billed_amount`` / ``billed_currency`` what the provider
-- billed; ``held`` = still waiting for its day's rate (amount 0 until it is converted).
-- A budget the budgets table does not know (yet) keeps the billed currency.
CREATE VIEW IF NOT EXISTS allocations_in_budget_currency AS
SELECT a.allocation_id AS allocation_id, a.event_id AS event_id, a.budget_id AS budget_id,
       a.matched_via AS matched_via, a.period_key AS period_key, a.period_start AS
       period_start, a.period_end AS period_end, a.occurred_at AS occurred_at, a.source AS
       source, a.provider AS provider, a.model AS model, a.org AS org, a.team AS team,
       a.project AS project, a.user AS user, a.department AS department, a.feature AS
       feature, a.tags AS tags, a.origin_topic AS origin_topic, a.origin_partition AS
       origin_partition, a.origin_offset AS origin_offset,
       a.amount AS billed_amount, a.currency AS billed_currency,
       if(b.budget_currency = '', a.currency, b.budget_currency) AS currency,
       if(a.currency = currency, a.amount, c.budget_amount) AS amount,
       if(a.currency = currency, toDecimal128(1, 18), c.rate) AS rate,
       if(a.currency = currency, toDate32(a.occurred_at), c.rate_day) AS rate_day,
       a.currency != currency AND c.event_id = '' AS held
FROM cost_allocations AS a FINAL
LEFT JOIN (SELECT budget_id, argMaxIf(currency, _offset, deleted = 0) AS budget_currency FROM budgets
            GROUP BY budget_id) AS b ON a.budget_id = b.budget_id
LEFT JOIN (SELECT event_id, budget_id, budget_amount, rate, rate_day
           FROM allocation_conversions FINAL) AS c
       ON a.budget_id = c.budget_id AND a.event_id = c.event_id;

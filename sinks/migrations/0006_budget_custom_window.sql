-- The window of a custom budget, so a report can find every budget's current period from
-- its stored definition (period, time zone and, for custom budgets, these two instants)
-- and project it the way the stream does. NULL for the other periods and for versions
-- stored before this migration. ADD COLUMN IF NOT EXISTS: safe to run again.
ALTER TABLE budgets ADD COLUMN IF NOT EXISTS custom_start Nullable(DateTime64(6, 'UTC'));

ALTER TABLE budgets ADD COLUMN IF NOT EXISTS custom_end Nullable(DateTime64(6, 'UTC'));

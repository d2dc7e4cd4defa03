-- How each LLM call was billed, so reports can split batch from interactive spend, show
-- the service tier that served a call and the cache writes made with the 1-hour lifetime
-- (LlmUsage v3: cache_write_1h_tokens is the part of cache_write_tokens written for an
-- hour). Rows stored before this migration read 0, '' and 0: what they were billed as.
-- ADD COLUMN IF NOT EXISTS: safe to run again.
ALTER TABLE priced_usage ADD COLUMN IF NOT EXISTS cache_write_1h_tokens UInt64 DEFAULT 0;

ALTER TABLE priced_usage ADD COLUMN IF NOT EXISTS service_tier LowCardinality(String) DEFAULT '';

ALTER TABLE priced_usage ADD COLUMN IF NOT EXISTS batch UInt8 DEFAULT 0;

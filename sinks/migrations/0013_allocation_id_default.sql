-- Columnar allocation records (schemas/columnar.py, format allocations/2) go into
-- cost_allocations as Native blocks without a view (sinks/native_ingest.py), so the table
-- computes allocation_id itself, exactly as the views of 0004 and 0007 do. Rows written
-- with an allocation_id keep theirs.
ALTER TABLE cost_allocations
    MODIFY COLUMN allocation_id String DEFAULT concat(event_id, '/', budget_id);

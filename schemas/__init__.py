"""Contracts: Avro schemas (``*.avsc``), their pydantic models and the wire codec."""

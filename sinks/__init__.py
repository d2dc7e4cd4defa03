"""Delivery to stores: the ClickHouse sink, migrations, queries and reports."""

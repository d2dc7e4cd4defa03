"""README promises that must hold: the config table and the example SQL."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest

from spendstream.config import load_settings, settings_env_names
from spendstream.sinks.warehouse import connect, migrate

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_configuration_table_lists_exactly_the_settings():
    documented = set(re.findall(r"^\| `(SPENDSTREAM_[A-Z_]+)` \|", README, flags=re.M))
    assert documented == settings_env_names()


SQL_EXAMPLES = [
    statement.strip()
    for block in re.findall(r"```sql\n(.*?)```", README, flags=re.S)
    for statement in block.split(";")
    if "SELECT" in statement
]


def test_readme_has_sql_examples():
    assert len(SQL_EXAMPLES) >= 4


@pytest.mark.parametrize("sql", SQL_EXAMPLES)
def test_readme_sql_runs_on_the_real_schema(sql, chdb_dir):
    settings = load_settings(data_dir=chdb_dir.parent, clickhouse_dsn=f"chdb://{chdb_dir}",
                             clickhouse_database=f"readme_{uuid.uuid4().hex[:6]}")  # fmt: skip
    client = connect(settings)
    migrate(client)
    client.query(sql)

"""The read-only guard: ClickHouse's own parser, our allow-lists, a session of its own.

Runs on real ClickHouse SQL (chDB, no broker): every statement that once reached files,
the network, other databases or the writer's session is refused; every README query and
ordinary analyst SQL still runs.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from spendstream.config import load_settings
from spendstream.sinks.sql_guard import AstNode, ReadPolicy, parse_explain_ast
from spendstream.sinks.warehouse import (
    QueryRefused,
    ReaderWarehouse,
    WarehouseError,
    connect,
    migrate,
)

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture(scope="module")
def db(chdb_dir):
    settings = load_settings(clickhouse_dsn=f"chdb://{chdb_dir}",
                             clickhouse_database=f"guard_{uuid.uuid4().hex[:6]}")  # fmt: skip
    writer = connect(settings)
    migrate(writer)
    reader = ReaderWarehouse(connect(settings), settings.clickhouse_database)
    yield settings, writer, reader
    reader.close()


def test_parse_explain_ast_builds_the_tree_from_indentation():
    root = parse_explain_ast([
        "SelectWithUnionQuery (children 2)", " ExpressionList (children 1)",
        "  SelectQuery (children 1)", "   ExpressionList (children 1)",
        "    Function file (alias x) (children 1)", "     ExpressionList (children 1)",
        "      Literal '/etc/passwd'", " Identifier Native",
    ])  # fmt: skip
    assert [c.kind for c in root.children] == ["ExpressionList", "Identifier"]
    func = root.children[0].children[0].children[0].children[0]
    assert (func.kind, func.name) == ("Function", "file")
    with pytest.raises(QueryRefused, match="one statement"):
        parse_explain_ast(["SelectWithUnionQuery", "SelectWithUnionQuery"])


def test_policy_refuses_a_table_of_another_database_without_chdb():
    policy = ReadPolicy("spendstream")
    tree = AstNode("DescribeQuery", "", [
        AstNode("TableExpression", "", [AstNode("TableIdentifier", "system.one")])])  # fmt: skip
    with pytest.raises(QueryRefused, match="system.one"):
        policy.check(tree)
    ours = AstNode("DescribeQuery", "", [
        AstNode("TableExpression", "", [AstNode("TableIdentifier", "spendstream.budgets")])])  # fmt: skip
    policy.check(ours)


REFUSED = {
    "SELECT file('{secret}')": "file",
    "SELECT * FROM file('{secret}', 'LineAsString')": "file",
    "WITH (SELECT file('{secret}')) AS x SELECT x": "file",
    "INSERT INTO FUNCTION file('{out}', 'CSV', 'x String') VALUES ('x')": "INSERT",
    "SELECT 1 INTO OUTFILE '{out}'": "OUTFILE",
    "SELECT * FROM url('http://127.0.0.1:9/', 'CSV')": "url",
    "SELECT * FROM s3('http://127.0.0.1:9/a.csv')": "s3",
    "SELECT * FROM remote('127.0.0.1', system.one)": "remote",
    "SELECT * FROM executable('x.sh', 'TSV', 'x String')": "executable",
    "SELECT * FROM merge('system', '^one$')": "merge",
    "SELECT * FROM system.tables": "system.tables",
    "SELECT * FROM `system`.`one`": "system.one",
    "SELECT * FROM INFORMATION_SCHEMA.tables": "INFORMATION_SCHEMA",
    "SELECT * FROM view(SELECT * FROM system.one)": "system.one",
    "SELECT * FROM numbers(1) AS n JOIN system.one AS o ON 1": "system.one",
    "SELECT 1 IN system.one": "system.one",
    "DESCRIBE TABLE system.one": "system.one",
    "SHOW TABLES FROM system": "FROM",
    "SELECT dictGet('d', 'a', toUInt64(1))": "dictGet",
    "SELECT sleep(3)": "sleep",
    "SET max_threads = 1": "SET",
    "USE system": "USE",
    "KILL QUERY WHERE 1": "KILL",
    "DROP TABLE priced_usage": "DROP",
    "OPTIMIZE TABLE priced_usage": "OPTIMIZE",
    "EXPLAIN SELECT 1": "EXPLAIN",
    "SELECT 1 FORMAT CSV": "FORMAT",
    "": "empty",
}
#: refused by ClickHouse itself (readonly session or its parser), before anything runs
FAILING = [
    "SELECT 1; KILL QUERY WHERE 1",
    "SELECT 1; SELECT 2",
    "SELECT 1 SETTINGS max_threads = 1",
    "SYSTEM FLUSH LOGS",
    "SELECT * FROM {t:Identifier}",
]


@pytest.mark.parametrize("template", list(REFUSED))
def test_guard_refuses(db, tmp_path, template):
    _, _, reader = db
    secret = tmp_path / "secret.txt"
    secret.write_text("top-secret-line\n")
    out = tmp_path / "out.txt"
    with pytest.raises(QueryRefused, match=REFUSED[template]) as refused:
        reader.query(template.format(secret=secret, out=out))
    assert "top-secret-line" not in str(refused.value)
    assert not out.exists()


@pytest.mark.parametrize("sql", FAILING)
def test_clickhouse_refuses_the_rest(db, sql):
    _, _, reader = db
    with pytest.raises(WarehouseError):
        reader.query(sql, {"t": "system.one"})


def test_readme_queries_and_ordinary_sql_run(db):
    _, _, reader = db
    blocks = [b.split("```", 1)[0] for b in README.read_text().split("```sql")[1:]]
    readme = [s.strip() for block in blocks for s in block.split(";") if s.strip()]
    assert len(readme) >= 10
    ordinary = [
        "SHOW TABLES", "DESCRIBE TABLE priced_usage", "SELECT * FROM numbers(3)",
        "WITH a AS (SELECT 1 AS x) SELECT * FROM a UNION ALL SELECT 2",
        "SELECT 1 INTERSECT SELECT 1", "SELECT sum(number) OVER (ORDER BY number) FROM numbers(3)",
        "SELECT number FROM numbers(10) WHERE number IN (SELECT 1) LIMIT 1 BY number",
        "SELECT count() FROM cost_allocations AS a FINAL ARRAY JOIN [1, 2] AS k",
        "SELECT arrayMap(x -> x + 1, [1, 2]), [1, 2][1], map('a', 1), CAST(1 AS String), INTERVAL 1 DAY",
    ]  # fmt: skip
    for sql in readme + ordinary:
        reader.query(sql)
    assert reader.query("SELECT count() FROM budgets WHERE budget_id = {b:String}",
                        {"b": "x"}).scalar() == 0  # fmt: skip


def test_reader_session_is_not_the_writers(db):
    """A reader's refused statements never change the writer (once, one `SET` through the
    port left every later insert failing with "Cannot execute query in readonly mode")."""
    _, writer, reader = db
    for sql in ("SET max_threads = 1", "SET readonly = 1", "INSERT INTO budgets (budget_id) "
                "VALUES ('x')", "SELECT 1 SETTINGS readonly = 1"):  # fmt: skip
        with pytest.raises(WarehouseError):
            reader.query(sql)
    writer.insert("schema_migrations", [["guard-test"]], column_names=["version"])
    assert writer.query("SELECT getSetting('readonly')").result_rows[0][0] == 0

"""Every bad input gets a clear message and a non-zero exit, never a traceback."""

from __future__ import annotations

from typer.testing import CliRunner

from spendstream.cli import app

runner = CliRunner()


def invoke(*args: str, env: dict[str, str] | None = None):
    return runner.invoke(app, list(args), env=env)


def test_invalid_configuration_names_the_variable(tmp_path):
    result = invoke("kafka", "status", env={"SPENDSTREAM_TOPIC_PARTITIONS": "-3",
                                            "SPENDSTREAM_DATA_DIR": str(tmp_path)})  # fmt: skip
    assert result.exit_code == 1
    assert "SPENDSTREAM_TOPIC_PARTITIONS" in result.output
    assert "Traceback" not in result.output


def test_kafka_status_when_stopped(tmp_path):
    result = invoke("kafka", "status", env={"SPENDSTREAM_DATA_DIR": str(tmp_path)})
    assert result.exit_code == 3 and "False" in result.output


def test_budgets_apply_rejects_bad_files_with_reasons(tmp_path):
    bad = tmp_path / "budgets.yaml"
    bad.write_text("budgets:\n  - budget_id: a\n    name: A\n    limit: '10'\n"
                   "    timezone: Mars/Base\n")  # fmt: skip
    result = invoke("budgets", "apply", str(bad), env={"SPENDSTREAM_DATA_DIR": str(tmp_path)})
    assert result.exit_code == 1
    assert "budget a" in result.output and "IANA" in result.output
    missing = invoke("budgets", "apply", str(tmp_path / "nope.yaml"))
    assert missing.exit_code == 1 and "cannot read" in missing.output
    broken = tmp_path / "broken.yaml"
    broken.write_text("budgets: [\n")
    assert "not valid" in invoke("budgets", "apply", str(broken)).output


def test_sql_without_any_data_says_what_to_run(tmp_path):
    result = invoke("sql", "SELECT 1", env={"SPENDSTREAM_DATA_DIR": str(tmp_path)})
    assert result.exit_code == 1
    assert "spendstream demo" in result.output


def test_publish_missing_file(tmp_path):
    result = invoke("publish", str(tmp_path / "none.jsonl"))
    assert result.exit_code == 1 and "cannot read" in result.output


def test_price_json_output_is_exact(tmp_path):
    import json

    from tests.unit.test_builders import ANTHROPIC

    payload = tmp_path / "msg.json"
    payload.write_text(json.dumps(ANTHROPIC))
    result = invoke("price", str(payload), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["total_cost"] == "0.018195000" and data["currency"] == "USD"
    assert sum(__import__("decimal").Decimal(c["amount"]) for c in data["components"]) == \
        __import__("decimal").Decimal(data["total_cost"])  # fmt: skip
    assert data["event"]["payload"]["input_tokens"] == 12050


def test_price_reads_stdin_and_reports_bad_input():
    from tests.unit.test_builders import OPENAI_CHAT

    ok = runner.invoke(app, ["price", "-"], input=__import__("json").dumps(OPENAI_CHAT))
    assert ok.exit_code == 0 and "cost breakdown" in ok.output
    unknown = runner.invoke(app, ["price", "-"], input='{"a": 1}')
    assert unknown.exit_code == 1 and "--source" in unknown.output
    not_json = runner.invoke(app, ["price", "-"], input="hello")
    assert not_json.exit_code == 1 and "not JSON" in not_json.output
    unpriced = runner.invoke(app, ["price", "-", "--source", "openai-chat"],
                             input='{"model": "gpt-99", "usage": {"prompt_tokens": 1}}')  # fmt: skip
    assert unpriced.exit_code == 1 and "unknown model" in unpriced.output
    assert "Traceback" not in unknown.output + not_json.output + unpriced.output


def test_sql_json_is_valid_for_every_clickhouse_value(capsys):
    import json
    import math
    from datetime import UTC, date, datetime
    from decimal import Decimal
    from ipaddress import IPv4Address, IPv6Address
    from uuid import UUID

    from spendstream.render import print_result

    uid = UUID("61f0c404-5cb3-11e7-907b-a6006ad3dba0")
    row = (
        [Decimal("1.500000000"), Decimal("0.000000001")],  # Array(Decimal)
        uid,
        IPv4Address("1.2.3.4"),
        IPv6Address("::1"),
        date(2026, 11, 24),
        datetime(2026, 11, 24, 10, 0, 0, 123456, tzinfo=UTC),
        math.nan,
        math.inf,
        -math.inf,
        b"ab\x00",  # FixedString
        {uid: (Decimal("2.50"), "x")},  # Map(UUID, Tuple(Decimal, String))
        Decimal("0.000000001"),
    )
    columns = [f"c{i}" for i in range(len(row))]
    print_result(columns, [row], "json")

    def no_constants(name: str) -> None:
        raise AssertionError(f"invalid JSON constant {name}")

    data = json.loads(capsys.readouterr().out, parse_constant=no_constants)
    assert list(data[0].values()) == [
        ["1.500000000", "0.000000001"],
        str(uid),
        "1.2.3.4",
        "::1",
        "2026-11-24",
        "2026-11-24T10:00:00.123456+00:00",
        None,
        None,
        None,
        "ab\x00",
        {str(uid): ["2.50", "x"]},
        "0.000000001",  # exact, never 1E-9
    ]


def test_sql_csv_ends_lines_with_newline_and_keeps_money_exact(capsys):
    from decimal import Decimal

    from spendstream.render import print_result

    print_result(["a", "b"], [(Decimal("0.000000001"), [Decimal("1.50")]), (None, [])], "csv")
    out = capsys.readouterr().out
    assert "\r" not in out
    assert out == 'a,b\n0.000000001,"[""1.50""]"\n,[]\n'


def test_budgets_delete_without_a_terminal_asks_for_yes(tmp_path):
    # CliRunner's stdin is not a TTY: no prompt can be answered; nothing else is touched
    result = invoke("budgets", "delete", "acme", env={
        "SPENDSTREAM_DATA_DIR": str(tmp_path),
        "SPENDSTREAM_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"})  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "--yes" in result.output and "unexpected" not in result.output


def test_an_unanswered_prompt_is_a_clear_error_not_an_unexpected_one():
    import click
    import pytest
    import typer

    from spendstream.cli.base import _run

    def prompt() -> None:
        raise click.exceptions.Abort()

    with pytest.raises(typer.Exit) as exit_info:
        _run(prompt)
    assert exit_info.value.exit_code == 1


def test_price_prices_each_line_of_json_lines(tmp_path):
    import json

    from tests.unit.test_builders import ANTHROPIC, OPENAI_CHAT

    lines = tmp_path / "payloads.jsonl"
    lines.write_text(json.dumps(ANTHROPIC) + "\n" + '{"a": 1}\n\n' + json.dumps(OPENAI_CHAT) + "\n")
    table = invoke("price", str(lines))
    assert table.exit_code == 1  # one line could not be priced
    assert "Extra data" not in table.output
    assert "line 2:" in table.output and "--source" in table.output
    assert "0.018195000" in table.output  # line 1 priced
    as_json = invoke("price", str(lines), "--json")
    assert as_json.exit_code == 1
    results = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [r["line"] for r in results] == [1, 2, 4]
    assert results[0]["total_cost"] == "0.018195000" and "error" in results[1]
    assert results[2]["event"]["payload"]["model"]


def test_price_of_one_broken_document_is_still_not_json(tmp_path):
    broken = tmp_path / "one.json"
    broken.write_text('{\n  "model": "gpt-4o",\n  "usage": {\n')
    result = invoke("price", str(broken))
    assert result.exit_code == 1 and "is not JSON" in result.output


def test_budget_file_errors_name_the_rule_not_an_event(tmp_path):
    bad_id = tmp_path / "ids.yaml"
    bad_id.write_text("budgets:\n  - budget_id: 'a:b'\n    name: A\n    limit: '10'\n")
    result = invoke("budgets", "apply", str(bad_id), env={"SPENDSTREAM_DATA_DIR": str(tmp_path)})
    assert result.exit_code == 1
    assert "budget_id:" in result.output and "letters, digits" in result.output
    zero = tmp_path / "zero.yaml"
    zero.write_text("budgets:\n  - budget_id: a\n    name: A\n    limit: '0'\n")
    result = invoke("budgets", "apply", str(zero), env={"SPENDSTREAM_DATA_DIR": str(tmp_path)})
    assert result.exit_code == 1
    assert "budget a: limit must be greater than zero" in result.output
    assert "event" not in result.output


def test_notify_without_rules_and_with_bad_rules_says_what_to_do(tmp_path):
    result = invoke("notify", env={"SPENDSTREAM_DATA_DIR": str(tmp_path)})
    assert result.exit_code == 1 and "SPENDSTREAM_NOTIFY_RULES" in result.output
    bad = tmp_path / "rules.yaml"
    bad.write_text("channels: {a: {type: slack, url: 'x'}}\nrules: [{channels: [b]}]\n")
    result = invoke("notify", "--rules", str(bad), "--check")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "channels.a.url: must be an http" in result.output
    assert "rules.0.channels: unknown channel 'b'" in result.output


def test_notify_check_lists_the_routes(tmp_path):
    env = {"ALERTS_WEBHOOK_URL": "https://hooks.example/a", "ALERTS_WEBHOOK_SECRET": "x" * 20,
           "SLACK_WEBHOOK_URL": "https://hooks.slack.example/T/B/x", "SMTP_HOST": "smtp.example",
           "SMTP_USER": "u", "SMTP_PASSWORD": "pw", "SPENDSTREAM_DATA_DIR": str(tmp_path)}  # fmt: skip
    from pathlib import Path

    rules = Path(__file__).resolve().parents[2] / "examples" / "notify.yaml"
    result = invoke("notify", "--rules", str(rules), "--check", env=env)
    assert result.exit_code == 0, result.output
    assert "budget team-* and tier >=90 -> ops-webhook, finance-slack" in result.output
    assert "pw" not in result.output.split() and "x" * 20 not in result.output


def test_sql_with_an_unknown_format_is_a_clear_error():
    import pytest

    from spendstream.errors import UserError
    from spendstream.render import print_result

    with pytest.raises(UserError, match="unknown format 'xml': use table, csv or json"):
        print_result(["a"], [(1,)], "xml")

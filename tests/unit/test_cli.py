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

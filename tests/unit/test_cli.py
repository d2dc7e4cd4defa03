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

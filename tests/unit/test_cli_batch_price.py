"""`spendstream price` of batch API result lines (typer's CliRunner, no broker)."""

from __future__ import annotations

import json
from decimal import Decimal

from typer.testing import CliRunner

from spendstream.cli import app
from tests.unit.test_billing_modes import OPENAI_BATCH_LINE, anthropic_result

runner = CliRunner()


def test_price_of_one_anthropic_batch_result_line_is_at_batch_rates(tmp_path):
    line = tmp_path / "result.json"
    line.write_text(json.dumps(anthropic_result()))
    result = runner.invoke(app, ["price", str(line), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    # claude-sonnet-4-6 at batch rates (half): 0.0031425 input + 0.0015 cache read +
    # 0.0028125 5-minute writes + 0.0075 1-hour writes + 0.0037725 output
    assert data["total_cost"] == "0.018727500" and data["batch"] is True
    amounts = {c["name"]: Decimal(c["amount"]) for c in data["components"]}
    assert amounts["cache_write_1h"] == Decimal("0.0075")
    assert sum(amounts.values()) == Decimal(data["total_cost"])
    table = runner.invoke(app, ["price", str(line)])
    assert table.exit_code == 0 and "batch rates" in table.output
    assert "cache_write_1h" in table.output


def test_price_of_a_results_file_skips_unbilled_lines_and_numbers_bad_ones(tmp_path):
    results = tmp_path / "results.jsonl"
    results.write_text("\n".join([json.dumps(OPENAI_BATCH_LINE),
                                  json.dumps(anthropic_result("expired")),
                                  '{"custom_id": "x", "result": {"type": "mystery"}}']) + "\n")  # fmt: skip
    out = runner.invoke(app, ["price", str(results), "--json"])
    assert out.exit_code == 1  # line 3 is bad; lines 1 and 2 are fine
    rows = [json.loads(x) for x in out.stdout.splitlines()]
    assert rows[0]["line"] == 1 and rows[0]["total_cost"] == "0.000180000"  # gpt-4o-mini batch
    assert rows[1]["line"] == 2 and "expired, not billed" in rows[1]["not_billed"]
    assert rows[2]["line"] == 3 and "unknown result type" in rows[2]["error"]
    assert "Traceback" not in out.output


def test_price_of_one_unbilled_line_says_so_and_succeeds(tmp_path):
    line = tmp_path / "errored.json"
    line.write_text(json.dumps(anthropic_result("errored")))
    result = runner.invoke(app, ["price", str(line)])
    assert result.exit_code == 0 and "errored, not billed" in result.output

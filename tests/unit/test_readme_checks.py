"""The README's pre-flight examples must mean something with the shipped example budgets:
each one matches at least one of them (a check that matches nothing always says allow)."""

from __future__ import annotations

import json
import re
import shlex
from datetime import UTC, datetime
from pathlib import Path

from spendstream.schemas.budget import load_budgets_file
from spendstream.schemas.checks import CheckRequest
from spendstream.schemas.models import Attributes
from spendstream.streams.matching import BudgetRegistry
from spendstream.streams.preflight import check
from spendstream.streams.pricing import Pricer

ROOT = Path(__file__).resolve().parents[2]


def readme_check_requests() -> list[tuple[str, CheckRequest]]:
    found = []
    for line in (ROOT / "README.md").read_text().splitlines():
        line = line.split("  #", 1)[0].strip()
        if line.startswith("curl") and "/check" in line:
            body = json.loads(re.search(r"-d '(\{.*\})'", line).group(1))
            found.append((line, CheckRequest.model_validate(body)))
        elif line.startswith("spendstream check"):
            args = shlex.split(line)[2:]
            data: dict = {"attributes": {"tags": {}}}
            options = {"--cost": "estimated_cost", "--provider": "provider", "--model": "model",
                       "--input-tokens": "input_tokens", "--output-tokens": "output_tokens"}  # fmt: skip
            for flag, value in zip(args, args[1:], strict=False):
                if flag in options:
                    data[options[flag]] = value
                elif flag == "--attr":
                    key, _, val = value.partition("=")
                    if key in Attributes.model_fields:
                        data["attributes"][key] = val
                    else:
                        data["attributes"]["tags"][key] = val
            found.append((line, CheckRequest.model_validate(data)))
    return found


def test_every_readme_check_example_matches_an_example_budget():
    requests = readme_check_requests()
    assert len(requests) >= 4
    registry = BudgetRegistry(load_budgets_file(ROOT / "examples" / "budgets.yaml"))
    for line, request in requests:
        result = check(request, registry, lambda key: None, Pricer(), datetime.now(UTC))
        assert result.budgets, f"README example matches no example budget: {line}"

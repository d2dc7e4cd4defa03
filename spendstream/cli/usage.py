"""Usage events: ``publish`` them, ``price`` raw payloads, ``check`` before spending."""

from __future__ import annotations

import json
import sys
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from spendstream.cli.base import (
    CliError,
    _read_budgets,
    _run,
    _settings,
    broker_check_s,
    console,
    err,
)
from spendstream.schemas.money import plain
from spendstream.sources import WIRE_KINDS, sources

#: its commands join the root app unnamed (app.py)
app = typer.Typer()


#: exit codes of `spendstream check`, so scripts can branch on the answer
CHECK_EXIT = {"allow": 0, "warn": 0, "downgrade": 10, "throttle": 11, "block": 12}


@app.command("check")
def check_cmd(
    cost: Annotated[str | None, typer.Option(help="Estimated cost, e.g. 0.25.")] = None,
    currency: Annotated[str, typer.Option(help="Currency of --cost.")] = "USD",
    source: Annotated[str, typer.Option(help=f"{', '.join(WIRE_KINDS)}.")] = "llm",
    provider: Annotated[str | None, typer.Option(help="LLM provider (to price tokens).")] = None,
    model: Annotated[str | None, typer.Option(help="LLM model (to price tokens).")] = None,
    input_tokens: Annotated[int, typer.Option(help="Estimated input tokens.")] = 0,
    output_tokens: Annotated[int, typer.Option(help="Estimated output tokens.")] = 0,
    attr: Annotated[
        list[str] | None, typer.Option(help="Attribute or tag as key=value (repeatable).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the answer as JSON.")] = False,
) -> None:
    """Pre-flight: may I spend this? Answers allow / warn / downgrade / throttle / block with
    the reason from every matching budget and ancestor. Exit code 0 for allow and warn,
    10 downgrade, 11 throttle, 12 block."""

    def body() -> str:
        from datetime import UTC, datetime

        from pydantic import ValidationError

        from spendstream.schemas.checks import CheckRequest
        from spendstream.schemas.models import Attributes, explain
        from spendstream.streams.api import dump
        from spendstream.streams.preflight import check, spent_from
        from spendstream.streams.pricing import Catalog, Pricer

        attrs: dict[str, Any] = {"tags": {}}
        for item in attr or []:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise CliError(f"--attr '{item}' is not key=value")
            if key in Attributes.model_fields and key != "tags":
                attrs[key] = value
            else:
                attrs["tags"][key] = value
        try:
            request = CheckRequest.model_validate({
                "estimated_cost": cost, "currency": currency, "source": source,
                "provider": provider, "model": model, "input_tokens": input_tokens,
                "output_tokens": output_tokens, "attributes": attrs,
            })  # fmt: skip
        except ValidationError as exc:
            raise CliError(explain(exc, "check")) from None
        settings = _settings()
        feed = _read_budgets(settings, follow_status=True)
        pricer = Pricer(Catalog.for_settings(settings.price_catalog))
        result = check(request, feed.registry, spent_from(feed.statuses), pricer,
                       datetime.now(UTC), feed.fx)  # fmt: skip
        if as_json:
            print(json.dumps(dump(result), indent=2))
            return result.decision
        colour = {"allow": "green", "warn": "yellow"}.get(result.decision, "red")
        console.print(f"[{colour}]{result.decision}[/{colour}]"
                      + (f" -> {result.downgrade_to}" if result.downgrade_to else "")
                      + f"  (estimated {plain(result.estimated_cost)} {result.currency}): "
                      + result.reason, highlight=False)  # fmt: skip
        for v in result.budgets:
            console.print(f"  {v.decision:9} {v.reason}", highlight=False)
        return result.decision

    decision = _run(body)
    raise typer.Exit(CHECK_EXIT[decision])


@app.command()
def publish(
    file: Annotated[
        Path,
        typer.Argument(
            help="JSON lines: usage events, raw provider payloads, or a batch API results "
            "file (OpenAI, Anthropic, Gemini)."
        ),
    ],
) -> None:
    """Publish usage events from a JSON-lines file, with progress (on stderr) and a summary.

    A batch API results file is published whole: each billed line is one event marked
    batch; lines for requests the provider did not bill (errored, canceled, expired) are
    counted and skipped; a bad line is reported with its number."""

    def body() -> None:
        from pydantic import ValidationError
        from rich.progress import track

        from spendstream.builders import BuilderError, NotBilled, build
        from spendstream.producer import UsagePublisher
        from spendstream.schemas.models import explain
        from spendstream.topics import wait_for_broker

        settings = _settings()
        try:
            # bytes: one line that is not UTF-8 is one bad line, not a bad file
            lines = file.read_bytes().splitlines()
        except OSError as exc:
            raise CliError(f"cannot read {file}: {exc.strerror}") from None
        # without a broker the producer would retry for minutes, logging every attempt
        wait_for_broker(settings.bootstrap_servers, broker_check_s(settings))
        rejected: list[str] = []
        not_billed = batch_calls = 0
        with UsagePublisher(settings) as publisher:
            for number, raw in track(
                list(enumerate(lines, 1)), description="publishing", console=err
            ):
                if not raw.strip():
                    continue
                try:
                    line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
                    event = build(json.loads(line))
                    publisher.publish(event)
                    batch_calls += bool(getattr(event.payload, "batch", False))
                except NotBilled:
                    not_billed += 1
                except UnicodeDecodeError as exc:
                    rejected.append(f"line {number}: not valid UTF-8 (byte 0x"
                                    f"{exc.object[exc.start]:02x} at position {exc.start + 1})")  # fmt: skip
                except ValidationError as exc:
                    rejected.append(f"line {number}: {explain(exc)}")
                except json.JSONDecodeError as exc:
                    rejected.append(f"line {number}: not JSON: {exc}")
                except BuilderError as exc:
                    rejected.append(f"line {number}: {exc}")
                except RecursionError:
                    rejected.append(f"line {number}: JSON nested too deeply")
            report = publisher.flush()
        extra = f" ({batch_calls} batch calls)" if batch_calls else ""
        skipped = f", not billed {not_billed}" if not_billed else ""
        console.print(
            f"sent {report.sent}{extra}, failed {report.failed}, rejected {len(rejected)}{skipped}"
        )
        for reason in rejected[:20] + report.errors[:20]:
            console.print(f"  {reason}")
        if rejected or report.failed:
            raise typer.Exit(1)

    _run(body)


@app.command()
def price(
    file: Annotated[
        str,
        typer.Argument(help="A JSON payload, or JSON lines (one payload a line); - for stdin."),
    ],
    source: Annotated[
        str | None,
        typer.Option(help=f"Force the format: {', '.join(sources().format_names())}."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="JSON on stdout (JSON lines: one object a line).")
    ] = False,
) -> None:
    """Price raw provider payloads: the normalized usage event and its cost breakdown.

    A file of JSON lines is priced line by line: one result per line, and a bad line is
    reported with its number (exit code 1) while the others are still priced."""

    def body() -> None:
        from spendstream.builders import NotBilled, build
        from spendstream.streams.pricing import Catalog, Pricer

        settings = _settings()
        try:
            text = sys.stdin.read() if file == "-" else Path(file).read_text(encoding="utf-8-sig")
        except OSError as exc:
            raise CliError(f"cannot read {file}: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            raise CliError(f"{file} is not UTF-8 text: {exc.reason} at byte {exc.start}") from None
        pricer = Pricer(Catalog.for_settings(settings.price_catalog))
        try:
            payload = json.loads(text)
        except json.JSONDecodeError as exc:
            if not _json_lines(text, exc):
                raise CliError(f"{file} is not JSON: {exc}") from None
            if not _price_lines(text, source, pricer, as_json):
                raise typer.Exit(1) from None
            return
        except RecursionError:
            raise CliError(f"{file}: JSON nested too deeply") from None
        try:
            event = build(payload, source)
        except NotBilled as exc:
            if as_json:
                print(json.dumps({"not_billed": str(exc)}, indent=2))
            else:
                console.print(str(exc), highlight=False, markup=False)
            return
        cost = pricer.price(event)
        if as_json:
            print(json.dumps(_priced_json(event, cost), indent=2))
            return
        console.print_json(event.model_dump_json())
        table = Table("line", "quantity", "unit", "amount", title="cost breakdown")
        for c in cost.components:
            table.add_row(c.name, plain(c.quantity), c.unit, format(c.amount, "f"))
        table.add_row("[bold]total[/bold]", "", "", f"[bold]{cost.total} {cost.currency}[/bold]")
        console.print(table)
        console.print(f"priced by {cost.source} ({cost.version}){_billing_note(event.payload)}")

    _run(body)


def _billing_note(payload: Any) -> str:
    """How the call was billed, when not interactive at standard rates."""
    notes = []
    if getattr(payload, "batch", False):
        notes.append("batch rates")
    if getattr(payload, "service_tier", None):
        notes.append(f"service tier {payload.service_tier}")
    if getattr(payload, "cache_write_1h_tokens", 0):
        notes.append(f"{payload.cache_write_1h_tokens} cache writes with the 1-hour lifetime")
    return f"; {', '.join(notes)}" if notes else ""


def _json_lines(text: str, exc: json.JSONDecodeError) -> bool:
    """Whether ``text``, which is not one JSON document, reads as JSON lines: more than
    one value ("Extra data"), or a first line that is JSON on its own."""
    if exc.msg == "Extra data":
        return True
    lines = [line for line in text.split("\n") if line.strip()]
    if len(lines) < 2:
        return False
    try:
        json.loads(lines[0])
    except (json.JSONDecodeError, RecursionError):
        return False
    return True


def _priced_json(event: Any, cost: Any) -> dict[str, Any]:
    return {
        "event": event.model_dump(mode="json"),
        "total_cost": format(cost.total, "f"),
        "currency": cost.currency,
        "price_source": cost.source,
        "price_version": cost.version,
        "batch": bool(getattr(event.payload, "batch", False)),
        "components": [
            {"name": c.name, "quantity": format(c.quantity.normalize(), "f"), "unit": c.unit,
             "amount": format(c.amount, "f")}
            for c in cost.components
        ],
    }  # fmt: skip


def _what(payload: Any) -> str:
    """What a payload is, in a few words: provider and model, actor, workflow, category."""
    names = ("provider", "model", "actor_id", "platform", "workflow_id", "category")
    return " ".join(str(v) for v in (getattr(payload, n, None) for n in names) if v)


def _price_lines(text: str, source: str | None, pricer: Any, as_json: bool) -> bool:
    """Price each line of JSON lines; prints one result per line. True if all priced."""
    from pydantic import ValidationError

    from spendstream.builders import BuilderError, NotBilled, build
    from spendstream.schemas.models import explain
    from spendstream.streams.pricing import PricingError

    table = Table("line", "event", "what", "total", "currency", "priced by")
    failures: list[str] = []
    totals: dict[str, Decimal] = {}
    for number, line in enumerate(text.split("\n"), 1):  # JSON strings may hold U+2028
        if not line.strip():
            continue
        try:
            event = build(json.loads(line), source)
            cost = pricer.price(event)
        except NotBilled as exc:  # a batch result the provider did not bill: no cost, no fault
            if as_json:
                print(json.dumps({"line": number, "not_billed": str(exc)}))
            else:
                table.add_row(str(number), "-", "not billed", "0", "", "")
            continue
        except json.JSONDecodeError as exc:
            reason = f"not JSON: {exc}"
        except (BuilderError, PricingError) as exc:
            reason = str(exc)
        except ValidationError as exc:
            reason = explain(exc)
        except RecursionError:
            reason = "JSON nested too deeply"
        else:
            if as_json:
                print(json.dumps({"line": number, **_priced_json(event, cost)}))
            else:
                table.add_row(str(number), event.event_id, _what(event.payload),
                              format(cost.total, "f"), cost.currency, cost.source)  # fmt: skip
                totals[cost.currency] = totals.get(cost.currency, Decimal(0)) + cost.total
            continue
        failures.append(f"line {number}: {reason}")
        if as_json:
            print(json.dumps({"line": number, "error": reason}))
    if not as_json:
        for currency, total in sorted(totals.items()):
            table.add_row("[bold]total[/bold]", "", "", f"[bold]{format(total, 'f')}[/bold]",
                          currency, "")  # fmt: skip
        console.print(table)
        for failure in failures:
            err.print(failure, highlight=False, markup=False, soft_wrap=True)
    return not failures

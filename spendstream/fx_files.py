"""Reading exchange-rate files for ``spendstream fx publish``.

Two formats, told apart by their header:

- the ECB's reference-rate CSV, daily (``eurofxref.csv``: ``Date, USD, JPY, ...`` then
  ``26 November 2026, 1.0540, 161.50, ...``) or historical (``eurofxref-hist.csv``:
  ISO dates, ``N/A`` where a currency had no rate); every rate is 1 EUR = rate currency;
- a simple ``date,currency,rate`` CSV: 1 <base> = rate <currency> (``--base``, default
  EUR, like the ECB's).

Rates are read as decimal strings (never floats). Every problem is reported with its line,
all at once, and nothing is published from a file with problems.
"""

from __future__ import annotations

import csv
import io
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path

from pydantic import ValidationError

from spendstream.errors import UserError
from spendstream.schemas.fx import FxRate

ECB_DATE_FORMATS = ("%Y-%m-%d", "%d %B %Y")
MAX_PROBLEMS = 20


class FxFileError(UserError, ValueError):
    """The rates file cannot be read; the message lists every problem with its line."""


def read_rates(path: Path, base: str = "EUR") -> list[FxRate]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise FxFileError(f"cannot read {path}: {exc}") from None
    return parse_rates(text, source=path.name, base=base)


def parse_rates(text: str, *, source: str = "", base: str = "EUR") -> list[FxRate]:
    rows = [
        (number, [cell.strip() for cell in row])
        for number, row in enumerate(csv.reader(io.StringIO(text)), start=1)
        if any(cell.strip() for cell in row)
    ]
    if not rows:
        raise FxFileError(f"{source or 'the file'} holds no rates")
    header = [cell for cell in rows[0][1] if cell]
    lower = [cell.lower() for cell in header]
    if lower == ["date", "currency", "rate"]:
        rates, problems = _simple(rows[1:], source, base.upper())
    elif lower and lower[0] == "date" and len(header) > 1:
        rates, problems = _ecb(header[1:], rows[1:], source)
    else:
        raise FxFileError(
            f"{source or 'the file'}: unknown format (header {', '.join(header[:5])!s}); "
            "expected the ECB's reference-rate CSV (Date, USD, JPY, ...) or "
            "'date,currency,rate'"
        )
    if problems:
        shown = problems[:MAX_PROBLEMS]
        more = len(problems) - len(shown)
        tail = f"\n  ... and {more} more" if more else ""
        raise FxFileError(
            f"{source or 'the file'}: {len(problems)} problem(s), nothing published:\n  "
            + "\n  ".join(shown)
            + tail
        )
    if not rates:
        raise FxFileError(f"{source or 'the file'} holds no rates")
    return rates


def _day(text: str) -> date:
    for fmt in ECB_DATE_FORMATS:
        try:
            return datetime.strptime(text, fmt).date()
        except ValueError:
            continue
    raise ValueError(f"'{text}' is not a date (YYYY-MM-DD or '26 November 2026')")


def _rate(number: int, day: date, base: str, quote: str, text: str, source: str) -> FxRate | str:
    try:
        value = Decimal(text)
    except InvalidOperation:
        return f"line {number}: {quote} rate '{text}' is not a number"
    try:
        return FxRate(day=day, base=base, quote=quote, rate=value, source=source)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        return f"line {number}: {where} {err['msg'].removeprefix('Value error, ')}"


def _simple(
    rows: list[tuple[int, list[str]]], source: str, base: str
) -> tuple[list[FxRate], list[str]]:
    rates: list[FxRate] = []
    problems: list[str] = []
    for number, cells in rows:
        if len(cells) != 3:
            problems.append(f"line {number}: expected date,currency,rate, got {len(cells)} fields")
            continue
        try:
            day = _day(cells[0])
        except ValueError as exc:
            problems.append(f"line {number}: {exc}")
            continue
        found = _rate(number, day, base, cells[1].upper(), cells[2], source)
        (problems.append if isinstance(found, str) else rates.append)(found)  # type: ignore[arg-type]
    return rates, problems


def _ecb(
    currencies: list[str], rows: list[tuple[int, list[str]]], source: str
) -> tuple[list[FxRate], list[str]]:
    rates: list[FxRate] = []
    problems: list[str] = []
    for number, cells in rows:
        try:
            day = _day(cells[0])
        except ValueError as exc:
            problems.append(f"line {number}: {exc}")
            continue
        for quote, text in zip(currencies, cells[1:], strict=False):
            if not text or text.upper() == "N/A":  # no rate that day (ECB's hist file)
                continue
            found = _rate(number, day, "EUR", quote.upper(), text, source or "ECB")
            (problems.append if isinstance(found, str) else rates.append)(found)  # type: ignore[arg-type]
    return rates, problems

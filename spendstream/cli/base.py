"""What every command module shares: the consoles, ``CliError``, loading the settings,
``_run`` (the one place a failure becomes a message and an exit code) and reading the
budgets topics, which budgets, alerts and ``check`` all need."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import click
import typer
from rich.console import Console

from spendstream.config import Settings, load_settings
from spendstream.errors import SpendstreamError, UserError

if TYPE_CHECKING:
    from spendstream.streams.budget_feed import BudgetFeed


console = Console()
err = Console(stderr=True)
T = TypeVar("T")


class CliError(UserError):
    """An error whose message is the whole story for the user."""


def _settings() -> Settings:
    settings = load_settings()
    from spendstream.schemas.avro import configure_registry

    configure_registry(settings.schema_registry_url or None)
    logging.basicConfig(
        level=getattr(logging, settings.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if settings.log_level != "DEBUG":
        # librdkafka reports transient, retried conditions as warnings; show errors only
        logging.getLogger("spendstream.kafka").setLevel(logging.ERROR)
    return settings


def _run(action: Callable[[], T]) -> T:
    """Run a command body, turning every known failure into a message and exit code 1."""
    try:
        return action()
    except SpendstreamError as exc:
        # one line, unwrapped: a message to read, grep and paste, whatever the terminal width
        err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        err.print("interrupted")
        raise typer.Exit(130) from None
    except click.exceptions.Abort:  # a prompt that got no answer (Ctrl-D, no terminal)
        err.print("[red]error:[/red] aborted: nothing was changed", highlight=False)
        raise typer.Exit(1) from None
    except typer.Exit:
        raise
    except Exception as exc:  # last resort: still no bare traceback
        err.print(
            f"[red]unexpected error:[/red] {type(exc).__name__}: {exc}\n"
            "Set SPENDSTREAM_LOG_LEVEL=DEBUG for details and report it if it persists.",
            highlight=False,
        )
        if logging.getLogger().isEnabledFor(logging.DEBUG):
            logging.exception("details")
        raise typer.Exit(2) from None


#: seconds a one-shot command waits for Kafka before saying it is unreachable (the producer
#: alone would retry for minutes and log every failed connection)
BROKER_CHECK_S = 5.0


def broker_check_s(settings: Settings) -> float:
    """``SPENDSTREAM_KAFKA_CHECK_S`` when set (tests of the unreachable path set 1 s),
    else ``BROKER_CHECK_S``."""
    return settings.kafka_check_s or BROKER_CHECK_S


def _read_budgets(settings: Settings, *, follow_status: bool = False) -> BudgetFeed:
    """Read the compacted topics to their end; returns the feed (registry, statuses)."""
    from spendstream.streams.budget_feed import BudgetFeed

    feed = BudgetFeed(settings, follow_status=follow_status, fetch_wait_ms=20)
    feed.start()
    if not feed.caught_up.wait(30):
        raise CliError("could not read the budgets topics within 30 s: is Kafka running?")
    feed.stop()
    if feed.error:
        raise CliError(f"{feed.error}: run `spendstream topics create` or apply budgets first")
    return feed

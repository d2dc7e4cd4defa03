"""``spendstream kafka start|stop|status`` and ``spendstream topics create``."""

from __future__ import annotations

import typer

from spendstream.cli.base import _run, _settings, console

kafka_app = typer.Typer(help="The local Kafka broker (no Docker needed).", no_args_is_help=True)
topics_app = typer.Typer(help="Kafka topics.", no_args_is_help=True)


@kafka_app.command("start")
def kafka_start() -> None:
    """Resolve the Kafka jars via Maven (once), format KRaft storage, start one broker."""

    def body() -> None:
        from spendstream.localkafka import LocalKafka
        from spendstream.topics import ensure_topics

        settings = _settings()
        with console.status("starting local Kafka (first run downloads the jars)..."):
            message = LocalKafka(settings).start()
            created = ensure_topics(settings)
        console.print(message)
        if created:
            console.print(f"created topics: {', '.join(created)}")

    _run(body)


@kafka_app.command("stop")
def kafka_stop() -> None:
    """Stop the local broker."""

    def body() -> None:
        from spendstream.localkafka import LocalKafka

        console.print(LocalKafka(_settings()).stop())

    _run(body)


@kafka_app.command("status")
def kafka_status() -> None:
    """Show whether the local broker runs, where, and its version."""

    def body() -> None:
        from spendstream.localkafka import LocalKafka

        status = LocalKafka(_settings()).status()
        for key, value in status.items():
            console.print(f"{key:12} {value}")
        if not status.get("running"):
            raise typer.Exit(3)

    _run(body)


@topics_app.command("create")
def topics_create() -> None:
    """Create every topic (compacted where needed); existing ones are left alone."""

    def body() -> None:
        from spendstream.topics import ensure_topics, wait_for_broker

        settings = _settings()
        wait_for_broker(settings.bootstrap_servers, 60)
        created = ensure_topics(settings)
        console.print(f"created: {', '.join(created) or 'nothing (all exist)'}")

    _run(body)

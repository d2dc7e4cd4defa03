"""``spendstream demo``: the command; the demo itself is ``spendstream.demo``."""

from __future__ import annotations

from typing import Annotated

import typer

from spendstream.cli.base import _run, _settings, console

#: its commands join the root app unnamed (app.py)
app = typer.Typer()


@app.command()
def demo(
    events: Annotated[int, typer.Option(min=10, max=100_000, help="Events to publish.")] = 300,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for processing.")] = 180,
    keep_running: Annotated[
        bool,
        typer.Option(
            "--keep-running",
            help="After the checks, keep the stack up (the live dashboard) until Ctrl-C.",
        ),
    ] = False,
) -> None:
    """End to end on this machine: local Kafka, worker, sink, synthetic usage, results."""

    def body() -> None:
        from spendstream.demo import run_demo

        run_demo(_settings(), events=events, timeout=timeout, console=console,
                 keep_running=keep_running)  # fmt: skip

    _run(body)

"""One exception root: every error class spendstream defines derives from SpendstreamError,
so the CLI's one catch turns each into a one-line message (a RegistryError, PeriodError or
MoneyError once fell through to the "unexpected error" path)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest
import typer

from spendstream.cli.base import _run
from spendstream.errors import SpendstreamError, UserError
from spendstream.schemas.money import MoneyError
from spendstream.schemas.registry import RegistryError
from spendstream.streams.periods import PeriodError


def error_classes() -> list[type[BaseException]]:
    found = []
    # schemas/, streams/ and sinks/ are mapped into the package (pyproject package-dir)
    packages = ["spendstream", "spendstream.schemas", "spendstream.streams", "spendstream.sinks"]
    names = set(packages)
    for package in packages:
        path = importlib.import_module(package).__path__
        names.update(i.name for i in pkgutil.walk_packages(path, f"{package}."))
    for name in sorted(names):
        module = importlib.import_module(name)
        for attr, obj in vars(module).items():
            if (inspect.isclass(obj) and issubclass(obj, BaseException)
                    and obj.__module__ == module.__name__ and not attr.startswith("_")):  # fmt: skip
                found.append(obj)
    return found


def test_every_public_error_class_derives_from_the_root() -> None:
    classes = error_classes()
    assert len(classes) >= 20  # the walk really found the package's errors
    strays = [f"{c.__module__}.{c.__qualname__}" for c in classes
              if not issubclass(c, SpendstreamError)]  # fmt: skip
    assert strays == []


def test_builtin_bases_are_kept() -> None:
    assert issubclass(MoneyError, ValueError) and issubclass(PeriodError, ValueError)
    assert issubclass(MoneyError, UserError) and not issubclass(RegistryError, UserError)


@pytest.mark.parametrize("exc", [RegistryError("no schema 7"), PeriodError("bad period"),
                                 MoneyError("quote the amount")])  # fmt: skip
def test_cli_turns_any_of_them_into_one_line(
    exc: Exception, capsys: pytest.CaptureFixture[str]
) -> None:
    def body() -> None:
        raise exc

    with pytest.raises(typer.Exit) as caught:
        _run(body)
    assert caught.value.exit_code == 1
    out = capsys.readouterr()
    assert str(exc) in out.err and "unexpected" not in out.err and "Traceback" not in out.err

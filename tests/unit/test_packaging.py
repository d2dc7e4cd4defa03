"""Data files the code loads at run time must ship in the wheel (Docker installs it)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_runtime_data_file_is_declared_package_data():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    dirs = config["package-dir"]
    data = config["package-data"]
    missing = []
    for package, folder in dirs.items():
        base = ROOT / folder
        # setuptools expands package-data like glob: '*' does not cross '/'
        shipped = {p for pattern in data.get(package, []) for p in base.glob(pattern)}
        for path in base.rglob("*"):
            if path.is_dir() or path.suffix in (".py", ".pyc") or "__pycache__" in path.parts:
                continue
            if path.relative_to(base).parts[0] in {"spendstream", "schemas", "streams", "sinks"}:
                continue  # a mapped sub-package folder, checked on its own
            if path not in shipped:
                missing.append(f"{package}: {path.relative_to(base)}")
    assert missing == []

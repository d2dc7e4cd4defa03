"""The stage processes' collector settings."""

from __future__ import annotations

import gc

import pytest

from spendstream.config import Settings
from spendstream.streams.runtime import tune_gc


@pytest.fixture
def restore_gc():
    before = gc.get_threshold()
    yield
    gc.set_threshold(*before)
    gc.unfreeze()


def test_tune_gc_raises_the_young_threshold_and_freezes_startup(restore_gc):
    kept = [[i] for i in range(1000)]  # start-up objects: out of every later collection
    gen1, gen2 = gc.get_threshold()[1:]
    tune_gc(50_000)
    assert gc.get_threshold() == (50_000, gen1, gen2)
    assert gc.get_freeze_count() >= len(kept)


def test_zero_keeps_cpythons_thresholds(restore_gc):
    before = gc.get_threshold()
    tune_gc(0)
    assert gc.get_threshold() == before


def test_the_setting_defaults_to_the_measured_threshold(monkeypatch):
    assert Settings().worker_gc_threshold == 50_000
    monkeypatch.setenv("SPENDSTREAM_WORKER_GC_THRESHOLD", "0")
    assert Settings().worker_gc_threshold == 0

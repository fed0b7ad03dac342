"""The atheris corpora in fuzz/corpus, replayed through the same harness functions on every CI run: each
input a coverage-guided run found interesting (or that once broke something) stays a regression test."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parents[2] / "fuzz"


@pytest.mark.parametrize("name", ["session", "virtqueue", "virtio_scsi"])
def test_corpus_replays_clean(name: str) -> None:
    sys.path.insert(0, str(FUZZ))
    try:
        harness = importlib.import_module(f"fuzz_{name}")
        common = importlib.import_module("_common")
        count = common.replay(name, harness.make(harness.load()))
    finally:
        sys.path.remove(str(FUZZ))
    assert count > 0, f"fuzz/corpus/{name} is empty"

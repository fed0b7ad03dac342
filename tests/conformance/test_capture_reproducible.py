"""The stored capture is what LIO answers today: re-run the harness and compare.

Boots the real kernel LIO in a TCG guest (about 20 s). Skips, with the reason, where the
harness cannot run (no qemu-system-x86_64, no cloud kernel, no sg3_utils).
"""

from __future__ import annotations

import pytest

from conformance.capture_lio import CASES, parse_console, run_guest
from conformance.replay import DATA, load_capture
from vhostscsi.guestkit import GuestkitError

pytestmark = pytest.mark.guest


def test_fresh_capture_matches_stored() -> None:
    try:
        console = run_guest(timeout=600)
    except GuestkitError as exc:
        pytest.skip(f"LIO harness cannot run here: {exc}")
    fresh = parse_console(console, CASES)
    stored = load_capture(DATA)
    assert fresh["luns"] == stored["luns"]
    assert {k: v for k, v in fresh.items() if k not in ("cases", "luns")} == {
        k: v for k, v in stored.items() if k not in ("cases", "luns")
    }
    changed = [
        name
        for name, (a, b) in {c["name"]: (c, s) for c, s in zip(fresh["cases"], stored["cases"])}.items()
        if a != b
    ]
    assert len(fresh["cases"]) == len(stored["cases"])
    assert not changed, f"LIO now answers differently for {changed}: regenerate with capture_lio.py"

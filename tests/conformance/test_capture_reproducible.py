"""The stored capture is what LIO answers today: re-run the harness and compare.

Boots the real kernel LIO in a TCG guest (about 20 s per fabric; the vhost run needs Debian's
generic kernel for 9p, to run the host's Python in the guest). Skips, with the reason, where the
harness cannot run (no qemu-system-x86_64, no cloud kernel, no sg3_utils).
"""

from __future__ import annotations

import pytest

from support.hostparts import missing_host_part

from conformance.capture_lio import FILES, capture
from conformance.replay import DATA, load_capture
from vhostscsi.guestkit import MissingHostPart

pytestmark = pytest.mark.guest


@pytest.mark.parametrize("fabric", ["loop", "vhost"])
def test_fresh_capture_matches_stored(fabric: str) -> None:
    try:
        fresh = capture(fabric, timeout=600)
    except MissingHostPart as exc:
        missing_host_part(f"LIO harness cannot run here: {exc}")
    stored = load_capture(DATA.with_name(FILES[fabric]))
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

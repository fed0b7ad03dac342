"""`both_paths`: run a module's tests once with the C request-queue path and once with the pure-Python one.

Why: the pure path is the fallback (no compiler, VHOSTSCSI_NATIVE=0) and the reference; the C path is what runs by
default. Tests that drive request queues through `VirtioScsi.process` must hold on both. Use it with
`pytestmark = pytest.mark.usefixtures("both_paths")`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from vhostscsi.virtio import native


@pytest.fixture(params=["native", "pure"])
def both_paths(request: pytest.FixtureRequest) -> Iterator[str]:
    saved = native.AVAILABLE
    if request.param == "native":
        if native._native is None:
            if os.environ.get("VHOSTSCSI_NATIVE") == "0":
                pytest.skip("VHOSTSCSI_NATIVE=0: the C path is switched off for this run")
            pytest.fail("vhostscsi._native is not built: pip install -e . needs a C compiler (gcc, python3-dev)")
        native.AVAILABLE = True
    else:
        native.AVAILABLE = False
    try:
        yield request.param
    finally:
        native.AVAILABLE = saved

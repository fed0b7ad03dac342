"""`both_paths`: run a module's tests once with the C request-queue path and once with the pure-Python one.

Why: the pure path is the fallback (no compiler, VHOSTSCSI_NATIVE=0) and the reference; the C path is what runs by
default. Tests that drive request queues through `VirtioScsi.process` must hold on both. Use it with
`pytestmark = pytest.mark.usefixtures("both_paths")`. `native_required`: the tests of the C path itself.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from vhostscsi.virtio import native


def _require_native() -> None:
    """The extension must be there (CI installs a compiler): missing is a failure, not a skip, unless the run
    asked for the pure path (VHOSTSCSI_NATIVE=0)."""
    if native._native is None:
        if os.environ.get("VHOSTSCSI_NATIVE") == "0":
            pytest.skip("VHOSTSCSI_NATIVE=0: the C path is switched off for this run")
        pytest.fail("vhostscsi._native is not built: pip install -e . needs a C compiler (gcc, python3-dev)")


@pytest.fixture(scope="module")
def native_required() -> None:
    """For tests of the C path itself (module-scoped, so hypothesis tests may use it)."""
    _require_native()


@pytest.fixture(params=["native", "pure"])
def both_paths(request: pytest.FixtureRequest) -> Iterator[str]:
    saved = native.AVAILABLE
    if request.param == "native":
        _require_native()
        native.AVAILABLE = True
    else:
        native.AVAILABLE = False
    try:
        yield request.param
    finally:
        native.AVAILABLE = saved

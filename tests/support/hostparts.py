"""What a test does when this host lacks a part that scripts/setup installs (QEMU 10, busybox, a guest kernel...).

A developer's machine may lack one: the test skips and says what to install. CI never should (.ci/run runs
scripts/setup and exports VHOSTSCSI_CI=1), so there the same absence fails: a skip that fires in CI would turn a
broken set-up, or a regression in finding the part, into a green run.
"""

from __future__ import annotations

import os
from typing import NoReturn, TypeVar

import pytest

CI_ENV = "VHOSTSCSI_CI"

T = TypeVar("T")


def under_ci() -> bool:
    """True when .ci/run started the tests (every host part must then be there)."""
    return os.environ.get(CI_ENV, "") not in ("", "0")


def missing_host_part(reason: str) -> NoReturn:
    """Skip on a developer's machine, fail under CI; `reason` says what is missing and how to get it."""
    if under_ci():
        pytest.fail(f"{reason} [{CI_ENV} is set: scripts/setup should have installed it]", pytrace=False)
    pytest.skip(reason)


def require_host_part(found: T | str) -> T:
    """`found` from a finder that returns the part or, as a str, why there is none (restart.qemu10's
    find_reconnecting_qemu): the part, else missing_host_part(why)."""
    if isinstance(found, str):
        missing_host_part(found)
    return found

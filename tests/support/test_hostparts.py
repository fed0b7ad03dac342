"""The missing-host-part policy itself: a skip on a dev box, a failure under CI (VHOSTSCSI_CI, set by .ci/run)."""

from __future__ import annotations

import pytest

from support.hostparts import CI_ENV, missing_host_part, require_host_part


def test_a_missing_part_skips_off_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CI_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="install busybox-static"):
        missing_host_part("busybox not found: install busybox-static")
    monkeypatch.setenv(CI_ENV, "0")
    with pytest.raises(pytest.skip.Exception):
        require_host_part("no QEMU 10")


def test_a_missing_part_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CI_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match="no QEMU 10"):
        require_host_part("no QEMU 10")


def test_a_found_part_is_returned(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CI_ENV, "1")
    part = object()
    assert require_host_part(part) is part

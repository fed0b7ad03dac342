from __future__ import annotations

import pytest

from restart.qemu10 import Qemu, find_reconnecting_qemu


@pytest.fixture(scope="session")
def qemu10() -> Qemu:
    """A QEMU that reconnects vhost-user-scsi (QEMU 10 beside the system 7.2), or skip saying how to get one."""
    found = find_reconnecting_qemu()
    if isinstance(found, str):
        pytest.skip(found)
    return found

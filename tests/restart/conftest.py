from __future__ import annotations

import os

import pytest

from restart.qemu10 import Qemu, find_reconnecting_qemu

if os.environ.get("VHOSTSCSI_RESTART_MUTANT"):  # break the code on purpose (see mutant_serve.py)
    from restart.mutant_serve import apply

    apply(os.environ["VHOSTSCSI_RESTART_MUTANT"])


@pytest.fixture(scope="session")
def qemu10() -> Qemu:
    """A QEMU that reconnects vhost-user-scsi (QEMU 10 beside the system 7.2), or skip saying how to get one."""
    found = find_reconnecting_qemu()
    if isinstance(found, str):
        pytest.skip(found)
    return found

from __future__ import annotations

import os

import pytest

from restart.qemu10 import Qemu, find_reconnecting_qemu
from support.hostparts import require_host_part

if os.environ.get("VHOSTSCSI_RESTART_MUTANT"):  # break the code on purpose (see mutant_serve.py)
    from restart.mutant_serve import apply

    apply(os.environ["VHOSTSCSI_RESTART_MUTANT"])


@pytest.fixture(scope="session")
def qemu10() -> Qemu:
    """A QEMU that reconnects vhost-user-scsi (QEMU 10 beside the system 7.2); without one, skip saying how to get
    one (fail under CI: support.hostparts)."""
    return require_host_part(find_reconnecting_qemu())

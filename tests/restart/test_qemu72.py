"""A guest on Debian 12's QEMU 7.2 (which cannot reconnect): served as usual, and the daemon's log says at
connect time what a restart would mean for it (docs/restart.md)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from support.guest import build_image
from restart.harness import Serve, make_config

from vhostscsi.guestkit import GNU_DD, VIRTIO_SCSI_MODULES, shared_memory_args, start_guest
from vhostscsi.engines.user.restart import qemu_version_of

pytestmark = pytest.mark.guest

SCRIPT = f"""
i=0; while [ ! -b /dev/sda ]; do i=$((i+1)); [ $i -gt 300 ] && {{ echo NO-DISK; exit 1; }}; sleep 0.1; done
{GNU_DD} if=/dev/urandom of=/tmp/p bs=64k count=4 2>/dev/null
{GNU_DD} if=/tmp/p of=/dev/sda bs=64k oflag=direct 2>/dev/null && \
{GNU_DD} if=/dev/sda of=/tmp/b bs=64k count=4 iflag=direct 2>/dev/null && cmp /tmp/p /tmp/b && echo IO-OK
"""


def test_qemu72_guest_is_served_and_warned_about_restarts(tmp_path: Path) -> None:
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        pytest.skip("no qemu-system-x86_64")
    img = build_image(extra_binaries=[GNU_DD], modules=VIRTIO_SCSI_MODULES, init_script=SCRIPT)
    config, _disk = make_config(tmp_path)
    daemon = Serve(tmp_path, config, 0)
    try:
        daemon.wait_log("listening on", 30)
        args = shared_memory_args(512) + ["-chardev", f"socket,id=vus0,path={daemon.socket}",
                                          "-device", "vhost-user-scsi-pci,chardev=vus0"]
        with start_guest(img, args, workdir=tmp_path / "guest", qemu=qemu) as g:
            version = qemu_version_of(g.proc.pid)
            text = g.wait(120)
        assert "IO-OK" in text, text[-2000:]
        log = daemon.log()
    finally:
        daemon.kill()
    assert version is not None
    if version[:2] < (8, 2):
        assert "WARNING" in log and "cannot reconnect to a restarted back end" in log, log
    else:  # a newer system QEMU, started without reconnect-ms=
        assert "was started without reconnect-ms=" in log, log
    assert "docs/restart.md" in log

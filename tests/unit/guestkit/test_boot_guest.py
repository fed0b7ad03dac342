"""Real guest boots: modules load and see QEMU's own disk; the live Guest API works."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from support.hostparts import missing_host_part

from vhostscsi.guestkit import (
    VIRTIO_SCSI_MODULES,
    GuestError,
    GuestImage,
    MissingHostPart,
    boot_guest,
    qemu_binary,
    start_guest,
)

pytestmark = pytest.mark.guest


@pytest.fixture(scope="module")
def image() -> GuestImage:
    try:
        qemu_binary()
        return GuestImage.build(
            None,
            extra_binaries=["/usr/bin/lsscsi", "/usr/bin/sg_inq"],
            modules=VIRTIO_SCSI_MODULES,
            init_script=(
                "if grep -q live=1 /proc/cmdline; then\n"
                "  echo READY\n"
                "  while [ ! -e /sys/block/sda ]; do sleep 0.2; done\n"
                "  echo HOTPLUG-SEEN $(cat /sys/block/sda/device/model)\n"
                "  while :; do sleep 1; done\n"
                "fi\n"
                "/usr/bin/lsscsi -g\n"
                "sg_inq -p 0x80 /dev/sg0\n"
                "exit 7\n"
            ),
        )
    except MissingHostPart as exc:
        missing_host_part(str(exc))


def test_qemu_scsi_hd_shows_up_in_guest(image: GuestImage, tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"\0" * (8 << 20))
    out = boot_guest(
        image,
        [
            "-device", "virtio-scsi-pci,id=s0",
            "-drive", f"file={disk},format=raw,if=none,id=d0",
            "-device", "scsi-hd,drive=d0,bus=s0.0,serial=GKSERIAL1",
        ],
        timeout=120,
    )
    assert re.search(r"^\[\d+:0:0:0\]\s+disk\s+QEMU\s+QEMU HARDDISK .*/dev/sda\s+/dev/sg0", out, re.M), out
    assert "Unit serial number: GKSERIAL1" in out
    assert "GUESTKIT-EXIT 7" in out


def test_live_guest_hotplug_through_qmp_then_kill(image: GuestImage, tmp_path: Path) -> None:
    """Act on the host while the guest runs: hot-add QEMU's own disk, see the guest notice it."""
    disk = tmp_path / "hot.img"
    disk.write_bytes(b"\0" * (4 << 20))
    with start_guest(
        image,
        ["-device", "virtio-scsi-pci,id=s0"],
        append="console=ttyS0 quiet loglevel=0 panic=-1 live=1",
        workdir=tmp_path,
    ) as g:
        text = g.wait_for("READY", timeout=120)
        assert "HOTPLUG" not in text and g.proc.poll() is None
        with g.qmp() as qmp:
            qmp.execute(
                "blockdev-add", driver="raw", **{"node-name": "hot0"},
                file={"driver": "file", "filename": str(disk)},
            )
            qmp.execute("device_add", driver="scsi-hd", drive="hot0", bus="s0.0", id="hd1")
            with pytest.raises(GuestError, match="DeviceNotFound|not found|No bus"):
                qmp.execute("device_add", driver="scsi-hd", drive="hot0", bus="nosuchbus.0")
        text = g.wait_for(re.compile(r"HOTPLUG-SEEN QEMU HARDDISK"), timeout=60)
        with pytest.raises(GuestError, match="did not print 'NEVER'") as info:
            g.wait_for("NEVER", timeout=1)
        assert "HOTPLUG-SEEN" in info.value.console
        g.kill()
        assert g.proc.poll() is not None
    assert (tmp_path / "console.txt").read_text().count("READY") == 1


def test_kernel_panic_is_an_error_not_a_clean_exit(tmp_path: Path) -> None:
    try:
        qemu_binary()
        img = GuestImage.build(None, init_script="echo 1 > /proc/sys/kernel/sysrq\necho c > /proc/sysrq-trigger\n")
    except MissingHostPart as exc:
        missing_host_part(str(exc))
    with pytest.raises(GuestError, match="kernel panic or crash") as info:
        boot_guest(img, timeout=120, workdir=tmp_path)  # DEFAULT_APPEND: quiet, loglevel=0
    assert "GUESTKIT-EXIT" not in info.value.console

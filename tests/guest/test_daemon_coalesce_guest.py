"""A real Linux guest on `vhostscsi serve --coalesce-us 100`: fio writes with verification at QD16 and at QD1,
reads everything back and checks it. A lost interrupt (a held call never signalled) would leave fio waiting
forever: the boot would time out. One boot (~30 s under TCG). The daemon's log then says how many holds it made
and how many batched completions (at QD16 some must have: the coalescing path really ran).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from support.config import one_disk_config
from support.daemon import ServeProcess
from support.guest import build_image

from vhostscsi.guestkit import VIRTIO_SCSI_MODULES, GuestImage, boot_guest, shared_memory_args

pytestmark = pytest.mark.guest

WWN = "naa.5001405c0a1e5ce2"
DISK_SIZE = 64 << 20

FIO = ("/usr/bin/fio --name=v --filename=/dev/sda --direct=1 --bs=4k --norandommap --randrepeat=0 "
       "--verify=crc32c --do_verify=1 --verify_fatal=1 --verify_state_save=0")
SCRIPT = rf"""
set -u
i=0; while [ ! -e /dev/sda ]; do i=$((i+1)); [ $i -gt 300 ] && {{ echo NO-DISK; exit 1; }}; sleep 0.1; done
{FIO} --rw=randwrite --iodepth=16 --ioengine=libaio --size=16M --offset=0 && echo FIO-QD16-OK
{FIO} --rw=write --iodepth=1 --ioengine=psync --size=2M --offset=32M && echo FIO-QD1-OK
"""


@pytest.fixture(scope="session")
def fio_image() -> GuestImage:
    return build_image(extra_binaries=["/usr/bin/fio"], modules=VIRTIO_SCSI_MODULES, init_script=SCRIPT)


def test_guest_io_completes_and_verifies_with_interrupts_coalesced(tmp_path: Path, fio_image: GuestImage) -> None:
    config = one_disk_config(tmp_path / "saveconfig.json", tmp_path / "disk0.img", DISK_SIZE, wwn=WWN)
    daemon = ServeProcess(tmp_path, config, wwn=WWN, extra_args=("--coalesce-us", "100"))
    try:
        assert "interrupts held up to 100 us" in daemon.wait_log(r"serving ")
        daemon.wait_socket()
        args = shared_memory_args(512) + ["-chardev", f"socket,id=vus0,path={daemon.socket}",
                                          "-device", "vhost-user-scsi-pci,chardev=vus0"]
        text = boot_guest(fio_image, args, timeout=300, workdir=tmp_path / "qemu")
        assert "FIO-QD16-OK" in text and "FIO-QD1-OK" in text, text[-4000:]
        log = daemon.wait_log(r"interrupt coalescing: \d+ holds")
        holds, batched = map(int, re.search(r"interrupt coalescing: (\d+) holds, (\d+) of them", log).groups())  # type: ignore[union-attr]
        print(f"coalescing in the guest run: {holds} holds, {batched} batched")
        assert holds >= batched >= 1, log[-3000:]
        assert daemon.stop() == 0
    finally:
        daemon.kill()

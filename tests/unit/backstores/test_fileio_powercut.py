"""fileio durability under a power cut, with a layer that really loses unsynced writes.

The backstore runs inside a QEMU guest (the host's Python over 9p) on an ext4 file system whose
disk QEMU writes with O_DIRECT. Killing QEMU with SIGKILL is the power cut: whatever the guest
kernel still held in its page cache is gone, whatever our engine made durable is in the disk
image, which the host then reads with debugfs. Four writers: FUA write, write-through (O_DSYNC)
LUN, write then SYNCHRONIZE CACHE, and a write-back LUN never synced: the control that shows the
layer does drop unsynced data (if it survived, the test would prove nothing and fails).
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from support.hostparts import missing_host_part

from vhostscsi.guestkit import (
    HOST_ROOT,
    HOST_ROOT_MODULES,
    GuestImage,
    MissingHostPart,
    find_kernel,
    host_root_args,
    qemu_binary,
    start_guest,
)

pytestmark = pytest.mark.guest

SIZE = 1 << 20
MODES = ("fua", "dsync", "flush", "none")
OLD = b"\xee"

WRITER = r"""
import os
from vhostscsi.backstores import FileIOBackstore
if not os.path.ismount("/tmp/mnt"):
    raise SystemExit("WRITER: the ext4 disk is not mounted")
for mode in ("fua", "dsync", "flush", "none"):
    data = bytearray((b"DURABLE-" + mode.encode() + b";") * (65536 // (9 + len(mode)) + 1))[:65536]
    bs = FileIOBackstore(mode, f"/tmp/mnt/{mode}.img", size=%(size)d, write_back=(mode != "dsync"))
    bs.writev(4096, [memoryview(data)], fua=(mode == "fua"))
    if mode == "flush":
        bs.flush()
    bs.close()
print("ALL-WRITTEN", flush=True)
"""

INIT = r"""
echo 6000 > /proc/sys/vm/dirty_expire_centisecs
echo 6000 > /proc/sys/vm/dirty_writeback_centisecs
%(host_root)s
mkdir -p /host/tmp/mnt
n=0; while [ ! -e /dev/vda ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n+1)); done
mount -t ext4 -o commit=60 /dev/vda /host/tmp/mnt || echo "NO-EXT4"
cp /writer.py /host/tmp/
chroot /host %(python)s /tmp/writer.py
while :; do sleep 1; done
"""


def expected(mode: str) -> bytes:
    return bytes((b"DURABLE-" + mode.encode() + b";") * (65536 // (9 + len(mode)) + 1))[:65536]


def dump(image: Path, name: str, dest: Path) -> bytes:
    """A file's bytes as the next boot would see them (debugfs reads the image, no mount)."""
    subprocess.run(["debugfs", "-R", f"dump /{name} {dest}", str(image)], capture_output=True, check=True)
    return dest.read_bytes()


def test_synced_writes_survive_power_cut_unsynced_do_not(tmp_path: Path) -> None:
    if not shutil.which("mkfs.ext4") or not shutil.which("debugfs"):
        pytest.skip("needs e2fsprogs (mkfs.ext4, debugfs, e2fsck)")
    try:
        qemu_binary()
        kernel = find_kernel(needs=["9p", "ext4", "virtio_blk"])  # 9p: the host's Python in the guest
    except MissingHostPart as exc:
        missing_host_part(str(exc))
    files = tmp_path / "files"
    files.mkdir()
    for mode in MODES:
        (files / f"{mode}.img").write_bytes(OLD * SIZE)  # fully allocated: overwrites are pure data writes
    image = tmp_path / "disk.img"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(files), str(image), "32M"], check=True)
    img = GuestImage.build(
        None,
        # ext4's crc32c comes in as a soft dependency (modules.softdep), resolved by guestkit
        modules=[*HOST_ROOT_MODULES, "virtio_blk", "ext4"],
        init_script=INIT % {"python": sys.executable, "host_root": HOST_ROOT},
        extra_files={"/writer.py": (WRITER % {"size": SIZE}).encode()},
        kernel=kernel.vmlinuz,
    )
    with start_guest(
        img,
        [
            *host_root_args(),
            "-drive", f"file={image},format=raw,if=virtio,cache=none",
        ],
        workdir=tmp_path / "guest",
    ) as g:
        text = g.wait_for(re.compile(r"ALL-WRITTEN|WRITER:|Traceback"), timeout=120)
        g.proc.send_signal(signal.SIGKILL)  # the power cut
        assert "ALL-WRITTEN" in text, f"the writer failed in the guest:\n{text[-2000:]}"
        g.proc.wait(10)
    # what a reboot does first: replay the ext4 journal (exit 1 = "fixed", i.e. replayed)
    fsck = subprocess.run(["e2fsck", "-fy", str(image)], capture_output=True, text=True)
    assert fsck.returncode in (0, 1), fsck.stdout + fsck.stderr
    got = {mode: dump(image, f"{mode}.img", tmp_path / f"{mode}.out") for mode in MODES}
    survived = {mode: got[mode][4096 : 4096 + 65536] == expected(mode) for mode in MODES}
    assert survived["fua"] and survived["dsync"] and survived["flush"], f"synced writes lost: {survived}"
    # the control: an unsynced write-back write must be gone, or this layer proves nothing
    assert got["none"][4096 : 4096 + 65536] == OLD * 65536, "unsynced data survived: the power cut is not real"

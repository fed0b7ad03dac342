"""Fixtures: the same SCSI device on each of the three real backstores."""

from __future__ import annotations

import mmap
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from vhostscsi.backstores import BlockBackstore
from vhostscsi.scsi import Device
from tests.unit.scsi.helpers import SERIAL, fileio, ramdisk

SIZE = 1 << 20
# LIO-like attributes with thin provisioning and WRITE SAME switched on, for the round trips.
TP = dict(emulate_tpu=1, emulate_tpws=1, max_unmap_lba_count=8192, max_unmap_block_desc_count=4,
          max_write_same_len=4096)


@pytest.fixture(params=["ramdisk", "fileio", "block"])
def anydev(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Device]:
    """One device per backstore kind; block runs on a real loop device (skipped without one)."""
    if request.param == "ramdisk":
        yield ramdisk(size=SIZE, **TP)
        return
    if request.param == "fileio":
        yield fileio(str(tmp_path / "disk.img"), size=SIZE, **TP)
        return
    img = tmp_path / "backing.img"
    img.write_bytes(bytes(SIZE))
    res = subprocess.run(["losetup", "-f", "--show", str(img)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"no loop device: {res.stderr.strip()}")
    loop = res.stdout.strip()
    try:
        bs = BlockBackstore("disk0", loop)
        yield Device(bs, "disk0", SERIAL, dict(TP, max_write_same_len=0xFFFF), True, plugin="block")
        bs.close()
    finally:
        subprocess.run(["losetup", "-d", loop], check=False)


def aligned(n: int) -> memoryview:
    """Page-aligned memory, like mapped guest RAM (the block engine's O_DIRECT path)."""
    return memoryview(mmap.mmap(-1, n))

"""Byte-exact text: sizes as targetcli parses/prints them, LIO's info file."""

from __future__ import annotations

import pytest

from vhostscsi.config.errors import ConfigError
from vhostscsi.config.model import new_storage_object
from vhostscsi.shell.devices import BlockDevice
from vhostscsi.shell.lioinfo import info_text
from vhostscsi.shell.sizes import bytes_to_human, human_to_bytes


@pytest.mark.parametrize(
    ("text", "value"),
    [("4096", 4096), ("1k", 1024), ("1K", 1024), ("1KB", 1024), ("1KiB", 1024), ("64M", 64 << 20),
     ("1G", 1 << 30), ("2t", 2 << 40), ("512b", 512)],
)
def test_sizes_parse(text: str, value: int) -> None:
    assert human_to_bytes(text) == value


@pytest.mark.parametrize("text", ["1Q", "G", "", "-1G", "1.5G", "1 G", "1GG"])
def test_bad_sizes_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="invalid size"):
        human_to_bytes(text)


@pytest.mark.parametrize(
    ("value", "text"), [(512, "512 bytes"), (1024, "1.0KiB"), (1 << 30, "1.0GiB"), (1536 << 20, "1.5GiB")]
)
def test_sizes_print(value: int, text: str) -> None:
    assert bytes_to_human(value) == text


def test_fileio_info_matches_lio() -> None:
    so = new_storage_object("fileio", "disk0", dev="/var/lib/disk0.img", size=1 << 30)
    assert info_text(so, exported=True) == (
        "Status: ACTIVATED  Max Queue Depth: 0  SectorSize: 512  HwMaxSectors: 16384\n"
        "        TCM FILEIO ID: 0        File: /var/lib/disk0.img  Size: 1073741824  Mode: Buffered-WCE Async: 0"
    )
    so.write_back = False
    assert "Mode: O_DSYNC" in info_text(so, exported=False)
    assert info_text(so, exported=False).startswith("Status: DEACTIVATED  ")


def test_block_info_matches_the_seed_layout() -> None:
    path = "/dev/disk/by-id/dm-uuid-mpath-36005076306ffc7630000000000002000"
    so = new_storage_object("block", "disk1", dev=path, size=1, write_back=False,
                            block_limits={"hw_max_sectors": 4592})
    bdev = BlockDevice(path=path, name="dm-0", major=252, minor=0, size=15 << 30, readonly=False,
                       logical_block_size=512, max_hw_sectors=4592, queue_depth=128, nonrot=False,
                       discard_max_lba=0, discard_granularity=0, discard_alignment=0)
    # the seed's `cat .../lun_0/a08824829b/info`, line for line
    assert info_text(so, exported=True, bdev=bdev) == (
        "Status: ACTIVATED  Max Queue Depth: 0  SectorSize: 512  HwMaxSectors: 4592\n"
        "        iBlock device: dm-0  UDEV PATH: /dev/disk/by-id/dm-uuid-mpath-36005076306ffc7630000000000002000  readonly: 0\n"
        "        Major: 252 Minor: 0  CLAIMED: IBLOCK"
    )


def test_ramdisk_info_matches_lio() -> None:
    so = new_storage_object("ramdisk", "r0", size=64 << 20)
    assert info_text(so, exported=False) == (
        "Status: DEACTIVATED  Max Queue Depth: 0  SectorSize: 512  HwMaxSectors: 4294967288\n"
        "        TCM RamDisk ID: 0  RamDisk Makeup: rd_mcp\n"
        "        PAGES/PAGE_SIZE: 16384*4096  SG_table_count: 8  nullio: 0 dummy: 0"
    )

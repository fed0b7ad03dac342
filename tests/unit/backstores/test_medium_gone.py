"""Backstore.medium_gone(): the daemon's periodic check that the medium is still there."""

from __future__ import annotations

import os
from pathlib import Path

from vhostscsi.backstores import FileIOBackstore, RamdiskBackstore


def test_fileio_reports_a_deleted_backing_file(tmp_path: Path) -> None:
    path = tmp_path / "disk.img"
    bs = FileIOBackstore("disk0", str(path), size=1 << 20)
    try:
        assert bs.medium_gone() is None
        os.rename(path, tmp_path / "moved.img")  # renamed: still reachable, nothing lost
        assert bs.medium_gone() is None
        os.link(tmp_path / "moved.img", path)
        os.unlink(tmp_path / "moved.img")  # one name left
        assert bs.medium_gone() is None
        path.unlink()
        assert bs.medium_gone() == "the backing file was deleted"
    finally:
        bs.close()
    assert bs.medium_gone() is None  # closed: nothing to say


def test_ramdisk_is_never_gone() -> None:
    bs = RamdiskBackstore("rd", 1 << 20)
    assert bs.medium_gone() is None
    bs.close()

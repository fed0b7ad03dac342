"""The daemon's disk table: a backing file deleted under it takes the disk offline (NOT READY) on the next
tick with one log line; restored and reloaded, it comes back online."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from vhostscsi.config.model import new_storage_object
from vhostscsi.engines.user.devices import DeviceTable
from vhostscsi.scsi import TargetPort


def _tur(port: TargetPort) -> tuple[int, int]:
    r = port.execute("nexus", 0, bytes(6), [], [])
    return r.status, (r.sense[12] if r.sense else 0)


def test_deleted_backing_file_goes_offline_and_comes_back(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    disk = tmp_path / "disk0.img"
    so = new_storage_object("fileio", "disk0", dev=str(disk), size=1 << 20, write_back=True)
    table = DeviceTable()
    try:
        opened = table.open(so)
        assert opened is not None
        port = TargetPort("naa.5001405000000001", 1)
        port.add_lun(0, opened.device)
        _tur(port)  # power-on unit attention
        assert table.check_media() == 0 and _tur(port) == (0, 0)
        data = disk.read_bytes()
        disk.unlink()
        with caplog.at_level(logging.ERROR, logger="vhostscsi.serve"):
            assert table.check_media() == 1
            assert table.check_media() == 1  # one line per outage, not one per tick
        lines = [r.getMessage() for r in caplog.records if "offline" in r.getMessage()]
        assert len(lines) == 1 and "deleted" in lines[0], lines
        assert _tur(port) == (2, 0x3A)
        assert table.reopen_offline() == [] and not disk.exists()  # never re-created empty
        disk.write_bytes(data)  # the administrator restores it, then reloads
        assert table.reopen_offline() == ["/backstores/fileio/disk0"]
        assert _tur(port) == (0, 0)
        assert table.get("/backstores/fileio/disk0").backstore.medium_gone() is None
        assert table.check_media() == 0
    finally:
        table.close_all()

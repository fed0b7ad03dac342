"""A device whose medium is gone (Device.set_offline) answers NOT READY to everything that needs the medium,
still identifies itself, and comes back with set_online; ENXIO/ENODEV from the backstore take it offline."""

from __future__ import annotations

import errno
from pathlib import Path

from vhostscsi.backstores import BackstoreError
from vhostscsi.scsi.sense import Reason
from tests.unit.scsi.helpers import cdb10, fileio, port_with, ramdisk, run

TUR = [0, 0, 0, 0, 0, 0]
NOT_PRESENT = (2, 0x3A, 0)


def test_offline_device_answers_not_ready_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "disk.img"
    path.write_bytes(b"\x5a" * (1 << 20))
    dev = fileio(str(path))
    p = port_with(dev)
    run(p, TUR)  # power-on unit attention
    assert run(p, TUR).status == 0
    assert dev.set_offline("the backing file was deleted") is Reason.MEDIUM_NOT_PRESENT
    assert dev.offline_reason == "the backing file was deleted"
    assert run(p, TUR).key_asc == NOT_PRESENT
    assert run(p, cdb10(0x2A, 0, 1), dout=bytes(512)).key_asc == NOT_PRESENT
    assert run(p, cdb10(0x28, 0, 1), alloc=512).key_asc == NOT_PRESENT
    assert run(p, [0x25] + [0] * 9, alloc=8).key_asc == NOT_PRESENT  # READ CAPACITY
    assert path.read_bytes()[:512] == b"\x5a" * 512
    # still there to be seen: INQUIRY, REPORT LUNS, REQUEST SENSE
    assert run(p, [0x12, 0, 0, 0, 96, 0], alloc=96).status == 0
    assert run(p, [0xA0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], alloc=256).status == 0
    assert run(p, [0x03, 0, 0, 0, 18, 0], alloc=18).status == 0
    # the first reason stays; another answer can be chosen by whoever takes it offline first
    dev.set_offline("later reason")
    assert dev.offline_reason == "the backing file was deleted"
    assert dev.set_online() and not dev.set_online()
    assert run(p, TUR).status == 0
    dev2 = ramdisk()
    dev2.set_offline("x", Reason.LOGICAL_UNIT_NOT_READY)
    p2 = port_with(dev2)
    run(p2, TUR)
    assert run(p2, TUR).key_asc == (2, 0x04, 0)


class _Vanished:
    """A backstore whose device went away: every I/O fails with ENXIO."""

    block_size = 512
    size = 1 << 20
    readonly = False
    plugin = "block"

    def __init__(self, code: int) -> None:
        self.code = code

    def _fail(self, *a: object, **k: object) -> None:
        raise BackstoreError(self.code, "sdz: I/O")

    readv = writev = flush = unmap = write_zeroes = _fail

    def refresh_size(self) -> int:
        return self.size


def test_enxio_or_enodev_from_the_backstore_takes_the_device_offline() -> None:
    from vhostscsi.scsi import Device
    for code in (errno.ENXIO, errno.ENODEV):
        dev = Device(_Vanished(code), "gone", "serial", {}, True)
        p = port_with(dev)
        run(p, TUR)
        assert run(p, TUR).status == 0
        assert run(p, cdb10(0x2A, 0, 1), dout=bytes(512)).key_asc == NOT_PRESENT
        assert dev.offline is not None and "sdz" in dev.offline_reason
        assert run(p, TUR).key_asc == NOT_PRESENT


def test_eio_is_still_a_medium_error_and_leaves_the_device_online() -> None:
    from vhostscsi.scsi import Device
    dev = Device(_Vanished(errno.EIO), "flaky", "serial", {}, True)
    p = port_with(dev)
    run(p, TUR)
    assert run(p, cdb10(0x28, 0, 1), alloc=512).key_asc == (3, 0x11, 0)
    assert dev.offline is None

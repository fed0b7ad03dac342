"""Building real devices and ports for the SCSI core tests, and running CDBs against them."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from vhostscsi.backstores import FileIOBackstore, RamdiskBackstore
from vhostscsi.scsi import Device, ScsiResult, TargetPort

SERIAL = "5e0b6bfa-1f3d-4f5e-9e5a-0123456789ab"
WWN = "naa.500140568720f76f"
NEXUS = "naa.5001405aaaaaaaaa"
OTHER = "naa.5001405bbbbbbbbb"


@dataclass
class Answer:
    """A command's result plus the data-in bytes it produced."""

    result: ScsiResult
    data: bytes

    @property
    def status(self) -> int:
        return self.result.status

    @property
    def sense(self) -> bytes:
        return self.result.sense

    @property
    def key_asc(self) -> tuple[int, int, int]:
        s = self.result.sense
        if not s:
            return (0, 0, 0)
        if s[0] & 0x7F == 0x72:
            return (s[1] & 0xF, s[2], s[3])
        return (s[2] & 0xF, s[12], s[13])


def run(port: TargetPort, cdb: Sequence[int] | bytes, dout: bytes | None = None,
        alloc: int = 0, lun: int = 0, nexus: str = NEXUS) -> Answer:
    """Execute a CDB with optional data-out bytes and a data-in buffer of ``alloc`` bytes."""
    c = bytes(cdb)
    data_out = [memoryview(bytearray(dout))] if dout else []
    buf = bytearray(alloc)
    data_in = [memoryview(buf)] if alloc else []
    r = port.execute(nexus, lun, c, data_out, data_in)
    return Answer(r, bytes(buf[: r.data_in_len]))


def cdb10(opcode: int, lba: int, n: int, b1: int = 0) -> bytes:
    return struct.pack(">BBIBHB", opcode, b1, lba, 0, n, 0)


def cdb16(opcode: int, lba: int, n: int, b1: int = 0) -> bytes:
    return struct.pack(">BBQIBB", opcode, b1, lba, n, 0, 0)


def ramdisk(size: int = 1 << 20, name: str = "disk0", write_back: bool = True,
            **attrs: int) -> Device:
    return Device(RamdiskBackstore(name, size), name, SERIAL, attrs, write_back)


def fileio(path: str, size: int = 1 << 20, name: str = "disk0", write_back: bool = True,
           **attrs: int) -> Device:
    bs = FileIOBackstore(name, path, size=size, block_size=512, write_back=write_back)
    return Device(bs, name, SERIAL, attrs, write_back)


def port_with(dev: Device, lun: int = 0, write_protect: bool = False) -> TargetPort:
    p = TargetPort(WWN, 1)
    p.add_lun(lun, dev, write_protect)
    return p


@dataclass
class RecordingBackstore:
    """A bytearray disk that records every access, to prove nothing strays outside the LUN."""

    size: int
    block_size: int = 512
    readonly: bool = False
    plugin: str = "fileio"
    data: bytearray = field(init=False)
    log: list[tuple[str, int, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.data = bytearray(self.size)

    def _check(self, op: str, off: int, n: int) -> None:
        self.log.append((op, off, n))
        assert 0 <= off and off + n <= self.size, f"{op} outside the LUN: {off}+{n}"

    def readv(self, offset: int, bufs: Sequence[memoryview]) -> None:
        n = sum(b.nbytes for b in bufs)
        self._check("read", offset, n)
        pos = offset
        for b in bufs:
            b.cast("B")[:] = self.data[pos : pos + b.nbytes]
            pos += b.nbytes

    def writev(self, offset: int, bufs: Sequence[memoryview], fua: bool = False) -> None:
        n = sum(b.nbytes for b in bufs)
        self._check("write", offset, n)
        pos = offset
        for b in bufs:
            self.data[pos : pos + b.nbytes] = b.cast("B")
            pos += b.nbytes

    def flush(self) -> None:
        self.log.append(("flush", 0, 0))

    def unmap(self, offset: int, length: int) -> None:
        self._check("unmap", offset, length)
        self.data[offset : offset + length] = bytes(length)

    def write_zeroes(self, offset: int, length: int) -> None:
        self._check("zero", offset, length)
        self.data[offset : offset + length] = bytes(length)

    def refresh_size(self) -> int:
        return self.size

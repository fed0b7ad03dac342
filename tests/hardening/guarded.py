"""Guest memory with guard areas around every region, and a backstore that checks every range it is asked for.

GuardedMemory maps one memfd and declares three regions over parts of it; the bytes between and around the
regions are guard areas filled with a canary. The device side only ever gets the regions (a GuestMemory built
from views of them), so:
- `offset_of(view)` tells where in the memfd a view the device produced really points, to compare with where
  the descriptor said it should point (an exact oracle, not just "inside somewhere");
- `guards_intact()` tells whether anything wrote outside the regions.

RangeCheckedBackstore wraps a real backstore (fileio on a real file, or a ramdisk) and records every offset and
length the SCSI core passes to it; any range outside the LUN is recorded as a violation instead of executed.
"""

from __future__ import annotations

import ctypes
import mmap
import os
from collections.abc import Sequence

from vhostscsi.backstores.base import Backstore
from vhostscsi.virtio.memory import GuestMemory, MemoryRegion

PAGE = 4096
CANARY = 0xA5

# (memfd offset, size, gpa, uva): R0 and R1 are contiguous in GPA (a buffer may straddle them) but not in the
# memfd; R2 sits alone after a GPA hole. Guard pages separate all of them in the memfd.
LAYOUT = (
    (1 * PAGE, 8 * PAGE, 0x0000, 0x7F00_0000_0000),
    (10 * PAGE, 8 * PAGE, 8 * PAGE, 0x7F10_0000_1000),
    (20 * PAGE, 2 * PAGE, 0x20000, 0x7F20_0000_0000),
)
TOTAL = 23 * PAGE
GPA_END = 0x22000


class GuardedMemory:
    def __init__(self, name: str = "hardening-guarded") -> None:
        self.fd = os.memfd_create(name, os.MFD_CLOEXEC)
        os.ftruncate(self.fd, TOTAL)
        self.map = mmap.mmap(self.fd, TOTAL, mmap.MAP_SHARED)
        self.whole = memoryview(self.map)
        self.base = ctypes.addressof(ctypes.c_char.from_buffer(self.map))
        self.whole[:] = bytes([CANARY]) * TOTAL
        regions = [MemoryRegion(gpa, size, uva, self.whole[off : off + size]) for off, size, gpa, uva in LAYOUT]
        self.memory = GuestMemory(regions)
        self._guard_spans = []
        pos = 0
        for off, size, _g, _u in LAYOUT:
            self._guard_spans.append((pos, off))
            pos = off + size
        self._guard_spans.append((pos, TOTAL))

    # ---- guest-side access (the test plays the guest) --------------------------------------------------------
    @staticmethod
    def pieces(gpa: int, length: int) -> list[tuple[int, int]] | None:
        """memfd (offset, length) pieces of guest range [gpa, gpa+length), split at regions; None if any byte
        is outside every region."""
        out = []
        while length > 0:
            for off, size, rgpa, _u in LAYOUT:
                if rgpa <= gpa < rgpa + size:
                    n = min(length, rgpa + size - gpa)
                    out.append((off + gpa - rgpa, n))
                    gpa += n
                    length -= n
                    break
            else:
                return None
        return out

    def write_gpa(self, gpa: int, data: bytes) -> None:
        k = 0
        for off, n in self.pieces(gpa, len(data)) or ():
            self.whole[off : off + n] = data[k : k + n]
            k += n

    def read_gpa(self, gpa: int, n: int) -> bytes:
        return b"".join(bytes(self.whole[o : o + k]) for o, k in self.pieces(gpa, n) or ())

    def uva(self, gpa: int) -> int:
        for _off, size, rgpa, uva in LAYOUT:
            if rgpa <= gpa < rgpa + size:
                return uva + gpa - rgpa
        raise ValueError(gpa)

    def clear_regions(self) -> None:
        for off, size, _g, _u in LAYOUT:
            self.whole[off : off + size] = bytes(size)

    # ---- checks -----------------------------------------------------------------------------------------------
    def offset_of(self, view: memoryview) -> int:
        """Where in the memfd a non-empty view produced by the device starts."""
        obj = ctypes.c_char.from_buffer(view)
        try:
            return ctypes.addressof(obj) - self.base
        finally:
            del obj

    def guards_intact(self) -> bool:
        return all(self.whole[a:b] == bytes([CANARY]) * (b - a) for a, b in self._guard_spans)


class RangeCheckedBackstore(Backstore):
    """Delegates to `inner`, refusing (and recording) any access outside [0, size)."""

    def __init__(self, inner: Backstore) -> None:
        super().__init__(inner.name, inner.size, inner.block_size, inner.readonly)
        self.inner = inner
        self.plugin = inner.plugin
        self.violations: list[str] = []
        self.accesses = 0

    def _check(self, what: str, offset: int, length: int) -> bool:
        self.accesses += 1
        if offset < 0 or length < 0 or offset + length > self.size:
            self.violations.append(f"{what} [{offset}, +{length}) outside a LUN of {self.size} bytes")
            return False
        return True

    @staticmethod
    def _len(bufs: Sequence[memoryview]) -> int:
        return sum(len(b) for b in bufs)

    def readv(self, offset: int, bufs: Sequence[memoryview]) -> None:
        if self._check("read", offset, self._len(bufs)):
            self.inner.readv(offset, bufs)

    def writev(self, offset: int, bufs: Sequence[memoryview], fua: bool = False) -> None:
        if self._check("write", offset, self._len(bufs)):
            self.inner.writev(offset, bufs, fua)

    def flush(self) -> None:
        self.inner.flush()

    def unmap(self, offset: int, length: int) -> None:
        if self._check("unmap", offset, length):
            self.inner.unmap(offset, length)

    def write_zeroes(self, offset: int, length: int) -> None:
        if self._check("write zeroes", offset, length):
            self.inner.write_zeroes(offset, length)

    @property
    def unmap_zeroes_data(self) -> bool:
        return self.inner.unmap_zeroes_data

    def refresh_size(self) -> int:
        return self.inner.refresh_size()

    def close(self) -> None:
        self.inner.close()

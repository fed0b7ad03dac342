"""Guest memory as seen by a vhost-user back end: regions of shared RAM, addressed two ways.

Descriptors carry guest physical addresses (GPA); SET_VRING_ADDR carries the front end's own virtual addresses
(QEMU's "userspace_addr", UVA). Both must land on the same mapping, so each region knows both bases.
Every translation is bounds-checked against the regions: the guest is untrusted, and a memoryview that reached
outside a region would read or write our own heap. Failures return None/False instead of raising because the
ring walker turns them into a failed request, and exceptions on the hot path cost more than a branch.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import stat
from dataclasses import dataclass
from typing import Sequence

_U64_LIMIT = 1 << 64


class GuestMemoryError(ValueError):
    """A memory table that cannot be used (overlap, bad size, failed mmap)."""


def seal_and_check_size(fd: int, end: int, what: str) -> bool:
    """Make sure the file behind `fd` covers [0, end) and can no longer shrink under our mapping.

    A front end that truncated a mapped file would make our next access a SIGBUS, which kills the process (not
    just the connection). A memfd is sealed with F_SEAL_SHRINK (QEMU's memory-backend-memfd already seals its
    RAM with F_SEAL_SHRINK|F_SEAL_GROW|F_SEAL_SEAL; a memfd created with MFD_ALLOW_SEALING gets the seal here).
    Returns False if the file cannot be sealed (hugetlbfs or a plain file from memory-backend-file, a memfd
    without MFD_ALLOW_SEALING): it is accepted, and the caller should warn that its owner could still shrink it.
    The size is checked after sealing, so it cannot change between the check and the mmap. Raises
    GuestMemoryError if the file is too small (for a regular file or memfd; a device such as /dev/dax has none).
    """
    sealed = False
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        if seals & fcntl.F_SEAL_SHRINK:
            sealed = True
        else:
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)
            sealed = True
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.EINVAL, errno.EBADF, errno.EACCES):
            raise GuestMemoryError(f"{what}: cannot seal its file: {e.strerror}") from e
    try:
        st = os.fstat(fd)
    except OSError as e:
        raise GuestMemoryError(f"{what}: {e.strerror}") from e
    if (stat.S_ISREG(st.st_mode) or st.st_size) and end > st.st_size:
        raise GuestMemoryError(f"{what} ends at file offset {end:#x} beyond the {st.st_size:#x}-byte file")
    return sealed


@dataclass(slots=True)
class MemoryRegion:
    """One region: `buf` is exactly `size` bytes, the guest's bytes [gpa, gpa+size) and QEMU's [uva, uva+size)."""

    gpa: int
    size: int
    uva: int
    buf: memoryview
    mapping: mmap.mmap | None = None  # the mmap behind `buf`, when this process mapped it
    sealed: bool = True  # False: its file could not be sealed against shrinking (see seal_and_check_size)

    def unmap(self) -> None:
        """Drop our view and the mapping; if rings still hold views, the mapping goes with the last of them."""
        try:
            self.buf.release()
        except BufferError:
            pass
        if self.mapping is not None:
            try:
                self.mapping.close()
            except BufferError:
                pass
            self.mapping = None

    @property
    def gpa_end(self) -> int:
        return self.gpa + self.size

    @property
    def uva_end(self) -> int:
        return self.uva + self.size


class GuestMemory:
    """The set of regions from one SET_MEM_TABLE (or ADD/REM_MEM_REG); immutable once built."""

    __slots__ = ("regions", "_last", "last")

    def __init__(self, regions: Sequence[MemoryRegion]) -> None:
        regs = sorted(regions, key=lambda r: r.gpa)
        for r in regs:
            if r.size <= 0 or len(r.buf) != r.size or r.gpa + r.size > _U64_LIMIT or r.uva + r.size > _U64_LIMIT:
                raise GuestMemoryError(f"region at gpa {r.gpa:#x} has an unusable size {r.size:#x}")
        for a, b in zip(regs, regs[1:]):
            if a.gpa_end > b.gpa:
                raise GuestMemoryError(f"regions at gpa {a.gpa:#x} and {b.gpa:#x} overlap")
        by_uva = sorted(regs, key=lambda r: r.uva)
        for a, b in zip(by_uva, by_uva[1:]):
            if a.uva_end > b.uva:
                raise GuestMemoryError(f"regions at uva {a.uva:#x} and {b.uva:#x} overlap")
        self.regions: tuple[MemoryRegion, ...] = tuple(regs)
        self._last: MemoryRegion | None = None
        # (gpa, size, buf) of the region last translated into; the ring walker reads this tuple directly
        self.last: tuple[int, int, memoryview] = (0, -1, memoryview(b""))
        if regs:
            self._remember(regs[0])

    @staticmethod
    def map_region(gpa: int, size: int, uva: int, offset: int, fd: int) -> MemoryRegion:
        """mmap one region's fd shared read/write (the fd may be closed afterwards), after sealing it against
        shrinking and checking it covers the region (`seal_and_check_size`).

        The mapping starts at mmap_offset rounded down to the page, because mmap offsets must be page aligned
        and the front end's need not be.
        """
        if size <= 0 or offset < 0:
            raise GuestMemoryError(f"region at gpa {gpa:#x}: size {size:#x} offset {offset:#x}")
        sealed = seal_and_check_size(fd, offset + size, f"region at gpa {gpa:#x}")
        try:
            start = offset - offset % mmap.ALLOCATIONGRANULARITY
            m = mmap.mmap(fd, offset - start + size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE,
                          offset=start)
        except (OSError, OverflowError, ValueError) as e:
            raise GuestMemoryError(f"cannot map region at gpa {gpa:#x}: {e}") from e
        return MemoryRegion(gpa, size, uva, memoryview(m)[offset - start : offset - start + size], m, sealed)

    @classmethod
    def map_fds(cls, table: Sequence[tuple[int, int, int, int]], fds: Sequence[int]) -> "GuestMemory":
        """Map a whole table of (gpa, size, uva, mmap_offset) with one fd per region."""
        if len(table) != len(fds):
            raise GuestMemoryError(f"{len(table)} regions but {len(fds)} fds")
        regions: list[MemoryRegion] = []
        try:
            for (gpa, size, uva, offset), fd in zip(table, fds):
                regions.append(cls.map_region(gpa, size, uva, offset, fd))
            return cls(regions)
        except Exception:
            for r in regions:
                r.unmap()
            raise

    def with_region(self, region: MemoryRegion) -> "GuestMemory":
        """ADD_MEM_REG: these regions plus one (shared, not copied: the old object must not be closed)."""
        return GuestMemory([*self.regions, region])

    def without_region(self, gpa: int, size: int, uva: int) -> tuple["GuestMemory", MemoryRegion] | None:
        """REM_MEM_REG: these regions minus the one matching exactly, and that region (to unmap); None if no
        region matches."""
        for r in self.regions:
            if (r.gpa, r.size, r.uva) == (gpa, size, uva):
                return GuestMemory([x for x in self.regions if x is not r]), r
        return None

    def close(self) -> None:
        """Unmap if nothing else still holds a view; otherwise the mapping lives until the last view goes."""
        for r in self.regions:
            r.unmap()

    def _find_gpa(self, gpa: int) -> MemoryRegion | None:
        r = self._last
        if r is not None and r.gpa <= gpa < r.gpa + r.size:
            return r
        for r in self.regions:
            if r.gpa <= gpa < r.gpa + r.size:
                self._remember(r)
                return r
        return None

    def _remember(self, r: MemoryRegion) -> None:
        self._last = r
        self.last = (r.gpa, r.size, r.buf)

    def last_region(self) -> tuple[int, int, memoryview]:
        """(gpa, size, buf) of the region last translated into: the ring walker's fast path checks it first.
        An empty memory answers a region nothing fits in."""
        return self.last

    def view(self, gpa: int, length: int) -> memoryview | None:
        """A single contiguous view of [gpa, gpa+length), or None if outside memory or split across regions."""
        if length < 0 or gpa < 0:
            return None
        r = self._find_gpa(gpa)
        if r is None:
            return None
        off = gpa - r.gpa
        if off + length > r.size:
            return None
        return r.buf[off : off + length]

    def append_views(self, out: list[memoryview], gpa: int, length: int) -> bool:
        """Append views covering [gpa, gpa+length) to `out`, split where regions meet; False if any byte is
        outside every region (then `out` may hold a partial prefix: the caller discards the request)."""
        if length < 0 or gpa < 0 or gpa + length > _U64_LIMIT:
            return False
        while length:
            r = self._find_gpa(gpa)
            if r is None:
                return False
            off = gpa - r.gpa
            n = r.size - off
            if n >= length:
                out.append(r.buf[off : off + length])
                return True
            out.append(r.buf[off:])
            gpa += n
            length -= n
        return True

    def uva_view(self, uva: int, length: int) -> memoryview | None:
        """View of the front end's virtual range [uva, uva+length) (vring addresses); one region only."""
        if length < 0 or uva < 0:
            return None
        for r in self.regions:
            if r.uva <= uva and uva + length <= r.uva + r.size:
                off = uva - r.uva
                return r.buf[off : off + length]
        return None

    def uva_to_gpa(self, uva: int) -> int | None:
        for r in self.regions:
            if r.uva <= uva < r.uva + r.size:
                return r.gpa + (uva - r.uva)
        return None

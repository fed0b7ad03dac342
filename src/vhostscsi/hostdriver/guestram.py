"""Guest RAM for the QEMU stand-in: one memfd, exposed as one or more vhost-user memory regions.

Regions get contiguous guest physical addresses (a buffer may straddle two regions, as in a real guest whose
RAM is split around the PCI hole) but deliberately unrelated "QEMU virtual" addresses, so a back end that mixes
up GPAs and UVAs fails loudly instead of working by accident.
"""

from __future__ import annotations

import mmap
import os
import weakref

from vhostscsi.vhost_user.codec import RegionDesc
from vhostscsi.virtio.memory import GuestMemory

DEFAULT_UVA_BASE = 0x7F12_0000_0000
_UVA_STRIDE = 0x1_0000_0000  # 4 GiB between regions' UVAs: never adjacent, never equal to a GPA


class GuestRam:
    """Shared guest memory with a bump allocator. Addresses handed out are GPAs."""

    def __init__(self, size: int, *, regions: int = 1, gpa_base: int = 0, uva_base: int = DEFAULT_UVA_BASE,
                 allow_sealing: bool = True):
        page = mmap.PAGESIZE
        if size <= 0 or size % (page * regions):
            raise ValueError(f"guest RAM size {size} must be a positive multiple of {regions} pages")
        self.size = size
        self.gpa_base = gpa_base
        # as QEMU's memory-backend-memfd: sealable (QEMU also seals it itself; we leave that to the back end,
        # which adds F_SEAL_SHRINK; allow_sealing=False makes the unsealable kind, like a plain file)
        flags = os.MFD_CLOEXEC | (os.MFD_ALLOW_SEALING if allow_sealing else 0)
        self.fd = os.memfd_create("vhostscsi-guest-ram", flags)
        # The memfd is a bare fd number: without this, a GuestRam dropped unclosed (tests make thousands) would keep
        # it open for the life of the process, and enough of them exhaust select's FD_SETSIZE or the fd limit.
        self._close_fd = weakref.finalize(self, os.close, self.fd)
        os.ftruncate(self.fd, size)
        self._map = mmap.mmap(self.fd, size, mmap.MAP_SHARED)
        self.mem = memoryview(self._map)
        part = size // regions
        self.regions = [
            RegionDesc(gpa_base + i * part, part, uva_base + i * _UVA_STRIDE, i * part) for i in range(regions)
        ]
        self._next = gpa_base

    def close(self) -> None:
        self.mem.release()
        try:
            self._map.close()
        except BufferError:
            pass
        if self.fd >= 0:
            self._close_fd()  # os.close, once
            self.fd = -1

    def __enter__(self) -> "GuestRam":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- allocation and access --------------------------------------------------------------------------------

    def alloc(self, n: int, align: int = 16) -> int:
        """Reserve `n` bytes (zeroed) inside one region and return their GPA; RAM is only freed by rewinding
        (`mark`/`reset_allocator`), which suits tests and benchmark loops."""
        gpa = (self._next + align - 1) // align * align
        for r in self.regions:
            end = r.guest_phys_addr + r.memory_size
            if gpa < end < gpa + n and n <= r.memory_size:
                gpa = end  # would straddle: start at the next region (rings must sit in one region)
                break
        if gpa + n > self.gpa_base + self.size:
            raise MemoryError(f"guest RAM exhausted: {n} bytes requested, {self.gpa_base + self.size - gpa} left")
        self._next = gpa + n
        self.mem[gpa - self.gpa_base : gpa - self.gpa_base + n] = bytes(n)
        return gpa

    def alloc_straddling(self, n: int, before: int) -> int:
        """Reserve `n` bytes of which exactly `before` lie at the end of region 0 and the rest in region 1."""
        if len(self.regions) < 2 or not 0 < before < n:
            raise ValueError("straddling needs two regions and a split inside the buffer")
        gpa = self.regions[1].guest_phys_addr - before
        if gpa < self._next:
            raise MemoryError("region 0 is already used past the straddle point")
        self.mem[gpa - self.gpa_base : gpa - self.gpa_base + n] = bytes(n)
        return gpa

    def reset_allocator(self, gpa: int) -> None:
        """Rewind the allocator to `gpa` (from an earlier `mark()`), reusing buffers in long benchmarks."""
        self._next = gpa

    def mark(self) -> int:
        return self._next

    def view(self, gpa: int, n: int) -> memoryview:
        off = gpa - self.gpa_base
        if off < 0 or off + n > self.size:
            raise ValueError(f"[{gpa:#x}, +{n:#x}) is outside guest RAM")
        return self.mem[off : off + n]

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        self.view(gpa, len(data))[:] = data

    def read(self, gpa: int, n: int) -> bytes:
        return bytes(self.view(gpa, n))

    def gpa_to_uva(self, gpa: int) -> int:
        for r in self.regions:
            if r.guest_phys_addr <= gpa < r.guest_phys_addr + r.memory_size:
                return r.userspace_addr + (gpa - r.guest_phys_addr)
        raise ValueError(f"gpa {gpa:#x} is outside guest RAM")

    def backend_memory(self) -> GuestMemory:
        """Map this RAM the way a back end would after SET_MEM_TABLE (for tests without a socket)."""
        return GuestMemory.map_fds(self.regions, [self.fd] * len(self.regions))

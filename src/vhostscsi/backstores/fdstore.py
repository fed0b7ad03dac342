"""What the file and block engines share: one fd, flush by fdatasync, zero-writing fallback.

Zeroing by writing is the last resort when the medium has no hole punching or write-zeroes;
it reuses one zero block for every iovec, so even a large WRITE SAME costs no allocation per
block.
"""

from __future__ import annotations

import errno
import mmap
import os
import stat
from collections.abc import Sequence

from vhostscsi.backstores.base import Backstore
from vhostscsi.backstores.errors import BackstoreError
from vhostscsi.backstores.iov import IOV_MAX, pwritev_full

__all__ = ["FdBackstore", "zero_chunk"]

_ZERO_CHUNK = 1 << 20
_SYS_DEV_BLOCK = "/sys/dev/block"
_zero_page_run: memoryview | None = None


def zero_chunk() -> memoryview:
    """A page-aligned, read-only MiB of zeros (the kernel's zero page: costs no memory).

    Page alignment lets the block engine write it with O_DIRECT too.
    """
    global _zero_page_run
    if _zero_page_run is None:
        _zero_page_run = memoryview(mmap.mmap(-1, _ZERO_CHUNK, prot=mmap.PROT_READ))
    return _zero_page_run


class FdBackstore(Backstore):
    """A backstore over one open file descriptor."""

    def __init__(self, name: str, fd: int, size: int, block_size: int, readonly: bool) -> None:
        self.fd = fd
        try:
            super().__init__(name, size, block_size, readonly)
        except BackstoreError:
            os.close(fd)
            raise

    def _io(self, what: str) -> str:
        """Label for error messages: the object name and the operation."""
        return f"{self.name}: {what}"

    def medium_gone(self) -> str | None:
        """A file whose last name was removed (st_nlink 0: every write from now on is lost with the inode),
        or a block device that left the system (no /sys/dev/block/MAJ:MIN any more)."""
        if self.closed:
            return None
        try:
            st = os.fstat(self.fd)
        except OSError as exc:
            return f"cannot inspect its file descriptor: {os.strerror(exc.errno or errno.EIO)}"
        if stat.S_ISBLK(st.st_mode):
            if os.path.isdir(_SYS_DEV_BLOCK) and not os.path.exists(
                    f"{_SYS_DEV_BLOCK}/{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"):
                return "the block device was removed"
            return None
        if st.st_nlink == 0:
            return "the backing file was deleted"
        return None

    def flush(self) -> None:
        self._check_open()
        try:
            os.fdatasync(self.fd)
        except OSError as exc:
            raise BackstoreError.from_oserror(exc, self._io("flush")) from None

    def _write_zero_blocks(self, offset: int, length: int) -> None:
        """Write zeros with pwritev, repeating one aligned zero buffer across the iovec."""
        zero = zero_chunk()
        chunk = zero.nbytes
        end = offset + length
        while offset < end:
            n = min(end - offset, chunk * IOV_MAX)
            full, rest = divmod(n, chunk)
            iov: Sequence[memoryview] = [zero] * full + ([zero[:rest]] if rest else [])
            pwritev_full(self.fd, offset, iov, self._io("write zeroes"))
            offset += n

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            os.close(self.fd)
        except OSError as exc:  # pragma: no cover - close of an fd we own
            raise BackstoreError.from_oserror(exc, self._io("close")) from None

    @staticmethod
    def _open(path: str, flags: int, what: str) -> int:
        try:
            return os.open(path, flags | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            hint = ""
            if exc.errno == errno.ENOENT:
                hint = " (does the directory exist?)"
            raise BackstoreError(
                exc.errno or errno.EIO, f"{what}: cannot open {path}: {os.strerror(exc.errno or errno.EIO)}{hint}"
            ) from None

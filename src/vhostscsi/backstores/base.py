"""The interface every I/O engine offers the SCSI core.

Offsets and lengths are bytes and already range-checked by the core; the engines still refuse
writes on a read-only store themselves, because a read-only block device must stay untouched
even if a caller above forgets to check.
"""

from __future__ import annotations

import abc
import errno
from collections.abc import Sequence
from types import TracebackType

from vhostscsi.backstores.errors import BackstoreError

__all__ = ["Backstore"]


class Backstore(abc.ABC):
    """A disk the target core reads and writes through lists of guest buffers."""

    #: "fileio" | "block" | "ramdisk"
    plugin: str = ""

    def __init__(self, name: str, size: int, block_size: int, readonly: bool) -> None:
        if block_size <= 0 or block_size & (block_size - 1) or block_size < 512:
            raise BackstoreError(
                errno.EINVAL, f"{name}: invalid block_size {block_size}: use 512, 1024, 2048 or 4096"
            )
        self.name = name
        self.size = size
        self.block_size = block_size
        self.readonly = readonly
        self.closed = False

    # --- data path -------------------------------------------------------------------------
    @abc.abstractmethod
    def readv(self, offset: int, bufs: Sequence[memoryview]) -> None:
        """Fill ``bufs`` completely, in order, with the bytes starting at ``offset``."""

    @abc.abstractmethod
    def writev(self, offset: int, bufs: Sequence[memoryview], fua: bool = False) -> None:
        """Write all of ``bufs`` at ``offset``; with ``fua`` the data is durable on return."""

    @abc.abstractmethod
    def flush(self) -> None:
        """Make every completed write durable (SYNCHRONIZE CACHE)."""

    @abc.abstractmethod
    def unmap(self, offset: int, length: int) -> None:
        """Deallocate a range (UNMAP, WRITE SAME with UNMAP)."""

    @abc.abstractmethod
    def write_zeroes(self, offset: int, length: int) -> None:
        """Make a range read back as zeros, allocating if the medium needs it."""

    def native_io(self) -> tuple[object, ...] | None:
        """How the C fast path (vhostscsi._native) may move data for this store itself: ("mem", writable
        buffer) for memory, ("fd", fd, dsync_ok, align) for a file descriptor (pwritev2 with RWF_DSYNC for a
        FUA write only if dsync_ok; offset and length multiples of align), or None: always through `readv` /
        `writev`. Only plain full transfers are done natively; anything short or failed is redone through
        `readv`/`writev`, which give the verdict. Asked per wake-up, so a closed store is never used."""
        return None

    # --- management ------------------------------------------------------------------------
    @property
    def unmap_zeroes_data(self) -> bool:
        """Whether unmapped blocks read back as zeros (the SCSI core's LBPRZ bit)."""
        return True

    def refresh_size(self) -> int:
        """Re-read the size after a resize of the medium; returns the new size in bytes."""
        return self.size

    def medium_gone(self) -> str | None:
        """Why the medium is gone for good (its data would be lost or cannot be reached), or None while it
        is there. A few syscalls: for a periodic check (the daemon's once-a-second tick), never per I/O."""
        return None

    @abc.abstractmethod
    def close(self) -> None:
        """Release the file descriptor or memory; further I/O raises BackstoreError(EBADF)."""

    def _check_open(self) -> None:
        if self.closed:
            raise BackstoreError(errno.EBADF, f"{self.name}: backstore is closed")

    def _check_writable(self, what: str) -> None:
        self._check_open()
        if self.readonly:
            raise BackstoreError(errno.EROFS, f"{self.name}: {what} refused: backstore is read-only")

    def __enter__(self) -> "Backstore":
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.name!r} size={self.size} "
            f"block_size={self.block_size}{' ro' if self.readonly else ''}>"
        )

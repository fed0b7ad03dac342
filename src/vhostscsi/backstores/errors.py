"""The one exception the I/O engines raise.

It carries an errno because the SCSI core maps the *kind* of failure to LIO's sense data
(ENOSPC -> SPACE ALLOCATION FAILED, EROFS -> DATA PROTECT, anything else -> MEDIUM ERROR),
and a message because an admin reading the daemon log needs to know which file failed and how.
"""

from __future__ import annotations

import errno as _errno
import os

__all__ = ["BackstoreError"]


class BackstoreError(OSError):
    """An I/O engine failure: ``err.errno`` for the SCSI core, ``str(err)`` for humans."""

    def __init__(self, errno: int, message: str) -> None:
        super().__init__(errno, message)
        self.message = message

    def __str__(self) -> str:
        name = _errno.errorcode.get(self.errno, str(self.errno))
        return f"{self.message} ({name})"

    @classmethod
    def from_oserror(cls, exc: OSError, what: str) -> "BackstoreError":
        """Wrap an OSError from a syscall, keeping its errno and naming the operation."""
        code = exc.errno if exc.errno is not None else _errno.EIO
        return cls(code, f"{what}: {os.strerror(code)}")

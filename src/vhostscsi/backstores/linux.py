"""The few Linux calls the stdlib lacks: fallocate modes and block-device ioctls.

Kept in one place so the engines read as storage logic, and so a missing facility (no libc
fallocate, a filesystem without hole punching) surfaces as one OSError the engines can map.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import os
import stat
import struct

__all__ = [
    "FALLOC_FL_KEEP_SIZE",
    "FALLOC_FL_PUNCH_HOLE",
    "FALLOC_FL_ZERO_RANGE",
    "fallocate",
    "blk_size",
    "blk_logical_block_size",
    "blk_readonly",
    "blk_discard",
    "blk_zeroout",
    "is_block_device",
]

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10

# <linux/fs.h>: _IO(0x12, n) and _IOR(0x12, 114, size_t)
BLKROGET = 0x125E
BLKSSZGET = 0x1268
BLKDISCARD = 0x1277
BLKZEROOUT = 0x127F
BLKGETSIZE64 = 0x80081272

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_fallocate = _libc.fallocate
_fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_fallocate.restype = ctypes.c_int


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """fallocate(2) with a mode (os.posix_fallocate has none); raises OSError."""
    if _fallocate(fd, mode, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def is_block_device(fd: int) -> bool:
    """Whether fd is a block device (fileio accepts those too, like LIO)."""
    return stat.S_ISBLK(os.fstat(fd).st_mode)


def blk_size(fd: int) -> int:
    """Device size in bytes (BLKGETSIZE64)."""
    buf = fcntl.ioctl(fd, BLKGETSIZE64, b"\0" * 8)
    return int(struct.unpack("Q", buf)[0])


def blk_logical_block_size(fd: int) -> int:
    """Logical block size (BLKSSZGET): the O_DIRECT alignment unit."""
    buf = fcntl.ioctl(fd, BLKSSZGET, b"\0" * 4)
    return int(struct.unpack("i", buf)[0])


def blk_readonly(fd: int) -> bool:
    """Whether the kernel marks the device read-only (BLKROGET)."""
    buf = fcntl.ioctl(fd, BLKROGET, b"\0" * 4)
    return bool(struct.unpack("i", buf)[0])


def blk_discard(fd: int, offset: int, length: int) -> None:
    """BLKDISCARD over [offset, offset+length)."""
    fcntl.ioctl(fd, BLKDISCARD, struct.pack("QQ", offset, length))


def blk_zeroout(fd: int, offset: int, length: int) -> None:
    """BLKZEROOUT over [offset, offset+length): the device's write-zeroes, or the kernel writes them."""
    fcntl.ioctl(fd, BLKZEROOUT, struct.pack("QQ", offset, length))

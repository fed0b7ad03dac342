"""What the shell needs to know from the host: block device facts and backing-file creation.

The config model does no I/O, so every fact about the outside world (a device's size, its queue
limits, whether a directory exists) is read here by the command that needs it and handed to the
model as plain values.
"""

from __future__ import annotations

import fcntl
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

from vhostscsi.config.errors import ConfigError

BLKGETSIZE64 = 0x80081272
BLKROGET = 0x125E


@dataclass(frozen=True)
class BlockDevice:
    """The facts LIO's iblock backend reads from a device when it claims it."""

    path: str
    name: str  # kernel name, e.g. "loop0" (what LIO prints as "iBlock device")
    major: int
    minor: int
    size: int
    readonly: bool
    logical_block_size: int
    max_hw_sectors: int  # in logical blocks, aligned down to 4 KiB as LIO does
    queue_depth: int
    nonrot: bool
    discard_max_lba: int
    discard_granularity: int
    discard_alignment: int


def _read_int(path: Path, default: int) -> int:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return default


def probe_block_device(dev: str) -> BlockDevice:
    """Open a block device read-only and collect size, read-only flag and queue limits."""
    try:
        st = os.stat(dev)
    except FileNotFoundError:
        raise ConfigError(f"block device {dev} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot access {dev}: {exc.strerror}") from None
    if not stat.S_ISBLK(st.st_mode):
        raise ConfigError(f"{dev} is not a block device: use a fileio backstore for files")
    try:
        fd = os.open(dev, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"cannot open {dev}: {exc.strerror}") from None
    try:
        size = struct.unpack("Q", fcntl.ioctl(fd, BLKGETSIZE64, b"\0" * 8))[0]
        readonly = struct.unpack("i", fcntl.ioctl(fd, BLKROGET, b"\0" * 4))[0] != 0
    except OSError as exc:
        raise ConfigError(f"cannot query {dev}: {exc.strerror}") from None
    finally:
        os.close(fd)
    major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
    sys_dev = Path(f"/sys/dev/block/{major}:{minor}")
    try:
        name = sys_dev.resolve().name
    except OSError:
        name = Path(dev).name
    queue = sys_dev / "queue"
    if not queue.exists():  # a partition: limits live on the parent disk
        queue = sys_dev / ".." / "queue"
    lbs = _read_int(queue / "logical_block_size", 512)
    max_hw_kb = _read_int(queue / "max_hw_sectors_kb", 1280)
    # se_dev_align_max_sectors: whole 4 KiB pages, in logical blocks.
    max_sectors = (max_hw_kb * 1024 // 4096) * 4096 // lbs
    discard_bytes = _read_int(queue / "discard_max_hw_bytes", 0)
    return BlockDevice(
        path=dev,
        name=name,
        major=major,
        minor=minor,
        size=size,
        readonly=readonly,
        logical_block_size=lbs,
        max_hw_sectors=max_sectors,
        queue_depth=_read_int(queue / "nr_requests", 128),
        nonrot=_read_int(queue / "rotational", 1) == 0,
        discard_max_lba=discard_bytes // lbs,
        discard_granularity=_read_int(queue / "discard_granularity", 0) // lbs,
        discard_alignment=_read_int(sys_dev / "discard_alignment", 0) // lbs,
    )


def block_limits(bdev: BlockDevice) -> dict[str, int]:
    """The probe's values in the shape config.model.new_storage_object takes."""
    return {
        "block_size": bdev.logical_block_size,
        "hw_max_sectors": bdev.max_hw_sectors,
        "hw_queue_depth": bdev.queue_depth,
        "nonrot": int(bdev.nonrot),
        "unmap_max_lba": bdev.discard_max_lba,
        "unmap_granularity": bdev.discard_granularity,
        "unmap_alignment": bdev.discard_alignment,
    }


def check_new_file(path: str) -> None:
    """Refuse a backing file path before anything is created (missing directory, not a file)."""
    p = Path(path)
    if p.exists() and not p.is_file():
        raise ConfigError(f"{path} exists but is not a regular file")
    if not p.parent.is_dir():
        raise ConfigError(f"cannot create {path}: directory {p.parent} does not exist")


def create_backing_file(path: str, size: int, sparse: bool) -> None:
    """Create a fileio backing file of exactly size bytes (sparse, or fully allocated)."""
    check_new_file(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise ConfigError(f"cannot create {path}: {exc.strerror}") from None
    try:
        if sparse:
            os.ftruncate(fd, size)
        else:
            os.posix_fallocate(fd, 0, size)
        os.fsync(fd)
    except OSError as exc:
        os.close(fd)
        os.unlink(path)
        raise ConfigError(f"cannot make {path} {size} bytes long: {exc.strerror}") from None
    os.close(fd)


def block_size_or_zero(dev: str) -> int:
    """Current size of a block device, 0 if it cannot be read (for `ls` summaries)."""
    try:
        fd = os.open(dev, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return 0
    try:
        return struct.unpack("Q", fcntl.ioctl(fd, BLKGETSIZE64, b"\0" * 8))[0]
    except OSError:
        return 0
    finally:
        os.close(fd)

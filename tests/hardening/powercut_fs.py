"""A FUSE passthrough that forgets unsynced writes when it dies: a power cut for one directory.

    python powercut_fs.py BACKING_DIR MOUNTPOINT

Files under MOUNTPOINT are the files of BACKING_DIR, but a write only reaches BACKING_DIR (and its disk) when it
is made durable: by fsync/fdatasync, by a write through a file opened with O_DSYNC/O_SYNC, or by a pwritev2
with RWF_DSYNC (the kernel passes it as O_DSYNC in the write's flags). Until then it lives in this process's
memory, so SIGKILL of this process is a power cut: BACKING_DIR keeps exactly what was durable. Reads see the
unsynced data, as a page cache would. Mounted with direct_io so the kernel caches nothing of its own.

Single-threaded (-s): every request is handled in order, which is what makes the bookkeeping simple.
"""

from __future__ import annotations

import errno
import os
import sys

import mfusepy as fuse

PAGE = 4096
_SYNC_FLAGS = os.O_DSYNC | os.O_SYNC
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10


class _File:
    """One backing file and its unsynced pages (page index -> PAGE bytes) and logical size."""

    def __init__(self, real: str) -> None:
        self.real = real
        self.fd = os.open(real, os.O_RDWR)
        self.dirty: dict[int, bytearray] = {}
        self.size = os.fstat(self.fd).st_size
        self.opens = 0

    def _page(self, i: int) -> bytearray:
        p = self.dirty.get(i)
        if p is None:
            p = bytearray(os.pread(self.fd, PAGE, i * PAGE).ljust(PAGE, b"\0"))
            self.dirty[i] = p
        return p

    def read(self, size: int, offset: int) -> bytes:
        size = max(0, min(size, self.size - offset))
        out = bytearray()
        pos = offset
        while pos < offset + size:
            i, off = divmod(pos, PAGE)
            n = min(PAGE - off, offset + size - pos)
            p = self.dirty.get(i)
            if p is not None:
                out += p[off : off + n]
            else:
                out += os.pread(self.fd, n, pos).ljust(n, b"\0")
            pos += n
        return bytes(out)

    @staticmethod
    def _spans(offset: int, length: int):
        """(page index, offset in page, offset in the data, length) of each page-sized piece of a range."""
        k = 0
        while k < length:
            i, off = divmod(offset + k, PAGE)
            n = min(PAGE - off, length - k)
            yield i, off, k, n
            k += n

    def write(self, data: bytes, offset: int) -> None:
        for i, off, k, n in self._spans(offset, len(data)):
            self._page(i)[off : off + n] = data[k : k + n]
        self.size = max(self.size, offset + len(data))

    def write_durable(self, data: bytes, offset: int) -> None:
        """O_DSYNC/RWF_DSYNC: this write alone becomes durable; other unsynced pages stay unsynced."""
        for i, off, k, n in self._spans(offset, len(data)):
            p = self.dirty.get(i)
            if p is not None:
                p[off : off + n] = data[k : k + n]
        os.pwrite(self.fd, data, offset)
        os.fdatasync(self.fd)
        self.size = max(self.size, offset + len(data))

    def zero(self, offset: int, length: int) -> None:
        self.write(bytes(length), offset)

    def sync(self) -> None:
        """Make everything durable: unsynced pages to the backing file, then fdatasync it."""
        for i in sorted(self.dirty):
            p = self.dirty[i]
            n = min(PAGE, self.size - i * PAGE)
            if n > 0:
                os.pwrite(self.fd, bytes(p[:n]), i * PAGE)
        self.dirty.clear()
        if os.fstat(self.fd).st_size < self.size:
            os.ftruncate(self.fd, self.size)
        os.fdatasync(self.fd)


class PowerCutFS(fuse.Operations):
    use_ns = True

    def __init__(self, root: str) -> None:
        self.root = root
        self.files: dict[str, _File] = {}
        self.handles: dict[int, tuple[_File, int]] = {}
        self._next_fh = 1

    def _real(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/"))

    def _file(self, path: str) -> _File:
        f = self.files.get(path)
        if f is None:
            f = _File(self._real(path))
            self.files[path] = f
        return f

    def getattr(self, path, fh=None):
        try:
            st = os.lstat(self._real(path))
        except OSError as e:
            raise fuse.FuseOSError(e.errno) from None
        d = {k: getattr(st, k) for k in ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size",
                                            "st_atime_ns", "st_mtime_ns", "st_ctime_ns")}
        for k in ("atime", "mtime", "ctime"):
            d[f"st_{k}"] = d.pop(f"st_{k}_ns")
        f = self.files.get(path)
        if f is not None:
            d["st_size"] = f.size
        return d

    def readdir(self, path, fh):
        return [".", "..", *os.listdir(self._real(path))]

    def statfs(self, path):
        sv = os.statvfs(self._real(path))
        return {k: getattr(sv, k) for k in ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree",
                                            "f_files", "f_flag", "f_frsize", "f_namemax")}

    def open(self, path, fi):
        try:
            f = self._file(path)
        except OSError as e:
            raise fuse.FuseOSError(e.errno) from None
        fh = self._next_fh
        self._next_fh += 1
        self.handles[fh] = (f, fi.flags)
        f.opens += 1
        fi.fh = fh
        fi.direct_io = 1
        return 0

    def create(self, path, mode, fi=None):
        os.close(os.open(self._real(path), os.O_CREAT | os.O_WRONLY, mode))
        return self.open(path, fi)

    def release(self, path, fi):
        self.handles.pop(fi.fh, None)
        return 0

    def read(self, path, size, offset, fi):
        return self.handles[fi.fh][0].read(size, offset)

    def write(self, path, data, offset, fi):
        f, open_flags = self.handles[fi.fh]
        if (open_flags | fi.flags) & _SYNC_FLAGS:
            f.write_durable(data, offset)
        else:
            f.write(data, offset)
        return len(data)

    def fsync(self, path, datasync, fi):
        self.handles[fi.fh][0].sync()
        return 0

    def flush(self, path, fi):
        return 0  # close(): not a durability point

    def truncate(self, path, length, fh=None):
        f = self._file(path)
        f.sync()
        os.ftruncate(f.fd, length)
        f.size = length
        return 0

    def fallocate(self, path, mode, offset, length, fi):
        f = self.handles[fi.fh][0]
        if mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE):
            end = offset + length
            if mode & FALLOC_FL_KEEP_SIZE:
                end = min(end, f.size)
            if end > offset:
                f.zero(offset, end - offset)
            return 0
        if mode & ~FALLOC_FL_KEEP_SIZE:
            raise fuse.FuseOSError(errno.EOPNOTSUPP)
        if not mode & FALLOC_FL_KEEP_SIZE and offset + length > f.size:
            f.write(b"", offset + length)  # extend the logical size; the bytes read as zeros
            f.size = max(f.size, offset + length)
        return 0


def main(argv: list[str]) -> int:
    root, mountpoint = argv[1], argv[2]
    fuse.FUSE(PowerCutFS(os.path.abspath(root)), mountpoint, raw_fi=True, foreground=True, nothreads=True,
              allow_other=True, fsname="powercut")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

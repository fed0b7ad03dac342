"""The deliberately wrong target: `vhostscsi serve` whose fileio backstore never makes anything durable.

    python nosync_serve.py serve --config ... --socket-dir ...

Only the crash-consistency tests start it, to show that they catch a target that acknowledges FUA writes,
SYNCHRONIZE CACHE and write-through writes without syncing. It changes the backstore class in this process
only: the file is opened without O_DSYNC, FUA writes are plain writes, and flush does nothing. The C READ/WRITE
path (vhostscsi._native) writes through the fd `native_io()` names, so it is told the same lie: no RWF_DSYNC.
"""

from __future__ import annotations

import sys

from vhostscsi import cli
from vhostscsi.backstores import fileio
from vhostscsi.backstores.fdstore import FdBackstore

_orig_init = fileio.FileIOBackstore.__init__
_orig_native_io = fileio.FileIOBackstore.native_io


def _init_without_dsync(self, name, path, size=0, block_size=512, write_back=True, readonly=False):
    _orig_init(self, name, path, size, block_size, True, readonly)  # never O_DSYNC
    self.write_back = write_back


def _writev_without_fua(self, offset, bufs, fua=False):
    self._check_writable("write")
    fileio.pwritev_full(self.fd, offset, bufs, self._io("write"), 0)


def _native_io_without_dsync(self):
    io = _orig_native_io(self)
    return None if io is None else (io[0], io[1], False, *io[3:])


def _flush_nothing(self):
    self._check_open()


fileio.FileIOBackstore.__init__ = _init_without_dsync
fileio.FileIOBackstore.writev = _writev_without_fua
fileio.FileIOBackstore.native_io = _native_io_without_dsync
FdBackstore.flush = _flush_nothing

if __name__ == "__main__":
    sys.exit(cli.main(sys.argv[1:]))

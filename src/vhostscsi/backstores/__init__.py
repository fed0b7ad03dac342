"""I/O engines behind LUNs: fileio, block and ramdisk.

Every engine moves data between its medium and lists of guest-memory buffers with vectored
syscalls (or plain memory copies for the ramdisk), never through intermediate ``bytes``.
"""

from vhostscsi.backstores.base import Backstore
from vhostscsi.backstores.block import BlockBackstore
from vhostscsi.backstores.errors import BackstoreError
from vhostscsi.backstores.factory import open_backstore
from vhostscsi.backstores.fileio import FileIOBackstore
from vhostscsi.backstores.ramdisk import RamdiskBackstore

__all__ = [
    "Backstore",
    "BackstoreError",
    "BlockBackstore",
    "FileIOBackstore",
    "RamdiskBackstore",
    "open_backstore",
]

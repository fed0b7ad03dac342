#!/usr/bin/env python3
"""A minimal user-space driver for the kernel's vhost-scsi (/dev/vhost-scsi), stdlib only.

It plays the part QEMU plays for `-device vhost-scsi-pci`: hands the kernel a memory table and
one request virtqueue, binds to a vhost target WWN (VHOST_SCSI_SET_ENDPOINT), then submits
virtio-scsi requests and reads LIO's responses straight from the ring. The LIO capture runs it
inside a guest to record the answers of the real kernel target *through the vhost fabric*,
the very path our user engine replaces.

Run as a script (inside the guest): ``vhost_client.py WWN TPGT CASES.json [LUN,...]`` (LUNs to
drain of unit attentions first) prints one JSON
line per case prefixed with ``@@VHOST``.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import select
import struct
import sys
from typing import Any

_VHOST = 0xAF


def _io(nr: int) -> int:
    return (_VHOST << 8) | nr


def _iow(nr: int, size: int) -> int:
    return (1 << 30) | (size << 16) | (_VHOST << 8) | nr


def _ior(nr: int, size: int) -> int:
    return (2 << 30) | (size << 16) | (_VHOST << 8) | nr


VHOST_GET_FEATURES = _ior(0x00, 8)
VHOST_SET_FEATURES = _iow(0x00, 8)
VHOST_SET_OWNER = _io(0x01)
VHOST_SET_MEM_TABLE = _iow(0x03, 8)
VHOST_SET_VRING_NUM = _iow(0x10, 8)
VHOST_SET_VRING_ADDR = _iow(0x11, 40)
VHOST_SET_VRING_BASE = _iow(0x12, 8)
VHOST_SET_VRING_KICK = _iow(0x20, 8)
VHOST_SET_VRING_CALL = _iow(0x21, 8)
VHOST_SCSI_SET_ENDPOINT = _iow(0x40, 232)

VIRTIO_F_VERSION_1 = 1 << 32
VRING_DESC_F_NEXT, VRING_DESC_F_WRITE = 1, 2
QSIZE = 16
REQ_SIZE = 51  # lun[8] tag u64 task_attr prio crn cdb[32]
RESP_SIZE = 108  # sense_len u32 resid u32 status_qualifier u16 status u8 response u8 sense[96]
MEM = 8 << 20
DATA_MAX = 2 << 20


class VhostScsi:
    """One vhost-scsi device bound to a target; requests go on queue 2 (the first I/O queue)."""

    def __init__(self, wwn: str, tpgt: int) -> None:
        self.fd = os.open("/dev/vhost-scsi", os.O_RDWR)
        self.mem = mmap.mmap(-1, MEM)
        self.view = memoryview(self.mem)
        self.base = ctypes.addressof(ctypes.c_char.from_buffer(self.mem))
        self.tpgt = tpgt
        self._ioctl(VHOST_SET_OWNER, None)
        offered = struct.unpack("Q", self._ioctl(VHOST_GET_FEATURES, bytes(8)))[0]
        self._ioctl(VHOST_SET_FEATURES, struct.pack("Q", offered & VIRTIO_F_VERSION_1))
        # one region, guest-physical == our virtual address: descriptors carry plain pointers
        self._ioctl(VHOST_SET_MEM_TABLE, struct.pack("IIQQQQ", 1, 0, self.base, MEM, self.base, 0))
        self.kicks, self.calls = [], []
        for q in range(3):  # control, event, request: the kernel walks them all on endpoint set
            ring = q * 3 * 4096
            self._ioctl(VHOST_SET_VRING_NUM, struct.pack("II", q, QSIZE))
            self._ioctl(VHOST_SET_VRING_BASE, struct.pack("II", q, 0))
            self._ioctl(
                VHOST_SET_VRING_ADDR,
                struct.pack("IIQQQQ", q, 0, self.base + ring, self.base + ring + 8192, self.base + ring + 4096, 0),
            )
            kick, call = os.eventfd(0, os.EFD_NONBLOCK), os.eventfd(0, os.EFD_NONBLOCK)
            self._ioctl(VHOST_SET_VRING_KICK, struct.pack("Ii", q, kick))
            self._ioctl(VHOST_SET_VRING_CALL, struct.pack("Ii", q, call))
            self.kicks.append(kick)
            self.calls.append(call)
        target = struct.pack("i224sHH", 1, wwn.encode(), tpgt, 0)
        self._ioctl(VHOST_SCSI_SET_ENDPOINT, target)
        self.ring = 2 * 3 * 4096
        self.avail_idx = 0
        self.used_seen = 0
        self.tag = 0
        self.req, self.resp = 9 * 4096, 9 * 4096 + 128
        self.dout, self.din = 16 * 4096, 16 * 4096 + DATA_MAX

    def _ioctl(self, req: int, arg: bytes | None) -> bytes:
        import fcntl

        if arg is None:
            fcntl.ioctl(self.fd, req)
            return b""
        return fcntl.ioctl(self.fd, req, arg)

    def _desc(self, i: int, off: int, length: int, flags: int, nxt: int) -> None:
        struct.pack_into("<QIHH", self.view, self.ring + 16 * i, self.base + off, length, flags, nxt)

    def execute(self, lun: int, cdb: bytes, data_out: bytes, alloc: int, timeout: float = 30.0) -> dict[str, Any]:
        """One SCSI command; returns status, sense, virtio response code and data-in."""
        self.tag += 1
        lun_bytes = bytes([1, self.tpgt, 0x40 | (lun >> 8), lun & 0xFF, 0, 0, 0, 0])
        struct.pack_into("<8sQBBB32s", self.view, self.req, lun_bytes, self.tag, 0, 0, 0, cdb)
        self.view[self.resp : self.resp + RESP_SIZE] = bytes(RESP_SIZE)
        self.view[self.din : self.din + alloc] = b"\xa5" * alloc  # garbage the target must overwrite
        self.view[self.dout : self.dout + len(data_out)] = data_out
        chain = [(self.req, REQ_SIZE, 0)]
        if data_out:
            chain.append((self.dout, len(data_out), 0))
        chain.append((self.resp, RESP_SIZE, VRING_DESC_F_WRITE))
        if alloc:
            chain.append((self.din, alloc, VRING_DESC_F_WRITE))
        for i, (off, length, flags) in enumerate(chain):
            last = i == len(chain) - 1
            self._desc(i, off, length, flags | (0 if last else VRING_DESC_F_NEXT), 0 if last else i + 1)
        avail = self.ring + 4096
        struct.pack_into("<H", self.view, avail + 4 + 2 * (self.avail_idx % QSIZE), 0)
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        struct.pack_into("<H", self.view, avail + 2, self.avail_idx)
        os.eventfd_write(self.kicks[2], 1)
        used = self.ring + 8192
        while struct.unpack_from("<H", self.view, used + 2)[0] == self.used_seen:
            if not select.select([self.calls[2]], [], [], timeout)[0]:
                raise TimeoutError(f"vhost-scsi did not complete CDB {cdb.hex()} in {timeout}s")
            os.eventfd_read(self.calls[2])
        self.used_seen = (self.used_seen + 1) & 0xFFFF
        sense_len, resid, _qual, status, response = struct.unpack_from("<IIHBB", self.view, self.resp)
        sense = bytes(self.view[self.resp + 12 : self.resp + 12 + min(sense_len, 96)])
        got = alloc - resid if alloc else 0
        return {
            "response": response,
            "status": status,
            "sense": sense.hex(),
            "resid": resid,
            "data_in_len": got,
            "data_in": bytes(self.view[self.din : self.din + max(got, 0)]),
        }


def main(argv: list[str]) -> int:
    import hashlib

    wwn, tpgt, cases_path = argv[1], int(argv[2]), argv[3]
    dev = VhostScsi(wwn, tpgt)
    # drain unit attentions the setup may have raised, so the recorded run starts quiet
    for lun in (int(x) for x in (argv[4].split(",") if len(argv) > 4 else [])):
        for _ in range(3):
            r = dev.execute(lun, bytes(6), b"", 0)
            print(f"@@PRE lun={lun} status={r['status']} sense={r['sense'][:36]}", flush=True)
    for case in json.load(open(cases_path)):
        res = dev.execute(case["lun"], bytes.fromhex(case["cdb"]), bytes.fromhex(case["data_out"]), case["alloc"])
        data = res.pop("data_in")
        if len(data) > 4096:
            res["data_in_sha256"] = hashlib.sha256(data).hexdigest()
        else:
            res["data_in"] = data.hex()
        print("@@VHOST " + json.dumps({"name": case["name"], **res}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

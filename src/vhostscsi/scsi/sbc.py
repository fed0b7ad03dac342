"""Block commands (SBC-3) as target_core_sbc.c parses and executes them.

READ and WRITE are the data path: a handler decodes the CDB with precompiled structs, checks
range and transfer length in LIO's order, and hands the guest's memoryviews to the backstore.
No copies, no per-command objects beyond the (usually shared) result.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from vhostscsi.scsi import opcodes as op
from vhostscsi.scsi.buffers import clip, gather, total
from vhostscsi.scsi.common import admit, note_transfer, reply
from vhostscsi.scsi.result import GOOD, ScsiResult, good
from vhostscsi.scsi.sense import Reason, miscompare

if TYPE_CHECKING:
    from vhostscsi.scsi.device import Device
    from vhostscsi.scsi.port import LunEntry, TargetPort

__all__ = ["HANDLERS", "backstore_failure"]

_U16 = struct.Struct(">H").unpack_from
_U32 = struct.Struct(">I").unpack_from
_U64 = struct.Struct(">Q").unpack_from
_RW10 = RW10 = struct.Struct(">xxIxH").unpack_from  # lba, transfer length (RW10/RW16: port's fast path)
_RW12 = struct.Struct(">xxII").unpack_from
_RW16 = RW16 = struct.Struct(">xxQI").unpack_from
_WS_CHUNK = 1 << 20  # bytes of repeated pattern written per writev by WRITE SAME

Bufs = Sequence[memoryview]
Handler = Callable[["TargetPort", "LunEntry", str, "bytes | memoryview", Bufs, Bufs], ScsiResult]


def backstore_failure(exc: OSError, writing: bool, dev: Device | None = None) -> ScsiResult:
    """Map a BackstoreError's errno to sense (see backstores/errors.py). ENXIO/ENODEV mean the device under
    the backstore is gone (a hot-removed block device): `dev` goes offline, MEDIUM NOT PRESENT from now on."""
    code = exc.errno
    if (code == errno.ENODEV or code == errno.ENXIO) and dev is not None:
        return dev.set_offline(f"{exc}")
    if code == errno.ENOSPC or code == errno.EDQUOT:
        return Reason.SPACE_ALLOCATION_FAILED
    if code == errno.EROFS:
        return Reason.WRITE_PROTECTED
    if code == errno.EIO or code == errno.ENXIO:  # ENXIO: only without a Device to take offline
        return Reason.WRITE_ERROR if writing else Reason.READ_ERROR
    return Reason.LOGICAL_UNIT_COMMUNICATION_FAILURE


# --- READ ----------------------------------------------------------------------------------------

def _do_read(port: TargetPort, lun: LunEntry, nexus: str, cdb: bytes | memoryview,
             dout: Bufs, din: Bufs, lba: int, n: int) -> ScsiResult:
    dev = lun.dev
    if lba + n > dev.last_lba + 1:
        return Reason.ADDRESS_OUT_OF_RANGE
    if dout:
        return Reason.INVALID_FIELD_IN_COMMAND_IU  # a READ carrying data-out
    size = n * dev.block_size
    if not din:
        have = 0
    elif len(din) == 1:
        have = din[0].nbytes
    else:
        have = total(din)
    if have != size:
        port.resid_base = size - have if size > have else have - size
        if have < size:
            # overflow: LIO 6.1 refuses a READ whose buffers are shorter than the transfer
            return Reason.INVALID_CDB_FIELD
    if lun.ua or dev.pr.active:
        gate = port.gate(lun, nexus, cdb, dout, din)
        if gate is not None:
            return gate
    if not size:
        return GOOD
    if have == size:
        bufs = din
    elif dev.plugin == "fileio":
        # underflow: LIO's fileio reads into the whole scatterlist, gets more bytes than the
        # command's length and fails it (fd_do_rw -> -EINVAL); the other backends read the
        # command's length and leave the rest of the buffers alone.
        return Reason.LOGICAL_UNIT_COMMUNICATION_FAILURE
    else:
        bufs = clip(din, size)  # underflow: the residual is already noted
    try:
        dev.backstore.readv(lba * dev.block_size, bufs)
    except OSError as exc:
        return backstore_failure(exc, False, dev)
    return good(size)


def _read6(port: TargetPort, lun: LunEntry, nexus: str, cdb: bytes | memoryview,
           dout: Bufs, din: Bufs) -> ScsiResult:
    lba = ((cdb[1] & 0x1F) << 16) | (cdb[2] << 8) | cdb[3]
    return _do_read(port, lun, nexus, cdb, dout, din, lba, cdb[4] or 256)


def _reader(unpack: Callable[[bytes | memoryview], tuple[int, int]]) -> Handler:
    """READ (10)/(12)/(16): DPO/FUA need a write-back cache, PROTECT needs T10-PI (none)."""

    def read(port: TargetPort, lun: LunEntry, nexus: str, cdb: bytes | memoryview,
             dout: Bufs, din: Bufs) -> ScsiResult:
        if cdb[1] & 0x18 and not lun.dev.fua_ok:
            return Reason.INVALID_CDB_FIELD
        if cdb[1] & 0xE0:
            return Reason.INVALID_CDB_FIELD
        lba, n = unpack(cdb)
        return _do_read(port, lun, nexus, cdb, dout, din, lba, n)

    return read


# --- WRITE ---------------------------------------------------------------------------------------

def _do_write(port: TargetPort, lun: LunEntry, nexus: str, cdb: bytes | memoryview,
              dout: Bufs, din: Bufs, lba: int, n: int, fua: bool) -> ScsiResult:
    dev = lun.dev
    if lba + n > dev.last_lba + 1:
        return Reason.ADDRESS_OUT_OF_RANGE
    size = n * dev.block_size
    have = 0
    if dout:
        have = dout[0].nbytes if len(dout) == 1 else total(dout)
    if have != size:
        note_transfer(port, size, dout, din)
        if have:
            # target_cmd_size_check: over/underflow of a WRITE data CDB is refused
            return Reason.INVALID_FIELD_IN_COMMAND_IU
    if lun.ua or dev.pr.active:
        gate = port.gate(lun, nexus, cdb, dout, din)
        if gate is not None:
            return gate
    if not have or not size:
        return GOOD  # nothing to transfer (LIO: overflow with no data-out)
    try:
        dev.backstore.writev(lba * dev.block_size, dout, fua or dev.write_through)
    except OSError as exc:
        return backstore_failure(exc, True, dev)
    return GOOD


def _write6(port: TargetPort, lun: LunEntry, nexus: str, cdb: bytes | memoryview,
            dout: Bufs, din: Bufs) -> ScsiResult:
    lba = ((cdb[1] & 0x1F) << 16) | (cdb[2] << 8) | cdb[3]
    return _do_write(port, lun, nexus, cdb, dout, din, lba, cdb[4] or 256, False)


def _writer(unpack: Callable[[bytes | memoryview], tuple[int, int]]) -> Handler:
    """WRITE (10)/(12)/(16) and WRITE AND VERIFY: as reads, and FUA makes the write durable."""

    def write(port: TargetPort, lun: LunEntry, nexus: str, cdb: bytes | memoryview,
              dout: Bufs, din: Bufs) -> ScsiResult:
        b1 = cdb[1]
        if b1 & 0x18 and not lun.dev.fua_ok:
            return Reason.INVALID_CDB_FIELD
        if b1 & 0xE0:
            return Reason.INVALID_CDB_FIELD
        lba, n = unpack(cdb)
        return _do_write(port, lun, nexus, cdb, dout, din, lba, n, bool(b1 & 0x08))

    return write


_read10, _read12, _read16 = _reader(_RW10), _reader(_RW12), _reader(_RW16)
_write10, _write12, _write16 = _writer(_RW10), _writer(_RW12), _writer(_RW16)


# --- capacity, cache, verify, start/stop -----------------------------------------------------

def _read_capacity(port: TargetPort, lun: LunEntry, nexus: str, cdb: bytes | memoryview,
                   dout: Bufs, din: Bufs) -> ScsiResult:
    stop = admit(port, lun, nexus, cdb, dout, din, 8)
    if stop is not None:
        return stop
    if not (cdb[8] & 1) and (cdb[2] | cdb[3] | cdb[4] | cdb[5]):
        return Reason.INVALID_CDB_FIELD
    dev = lun.dev
    blocks = min(dev.last_lba, 0xFFFFFFFF)
    data = blocks.to_bytes(4, "big") + dev.block_size.to_bytes(4, "big")
    return reply(din, data, 8)


def _service_action_in16(port: TargetPort, lun: LunEntry, nexus: str, cdb: bytes | memoryview,
                         dout: Bufs, din: Bufs) -> ScsiResult:
    sa = cdb[1] & 0x1F
    if sa not in (op.SAI_READ_CAPACITY_16, op.SAI_REPORT_REFERRALS):
        return Reason.INVALID_CDB_FIELD
    alloc = _U32(cdb, 10)[0]
    stop = admit(port, lun, nexus, cdb, dout, din, alloc)
    if stop is not None:
        return stop
    dev = lun.dev
    if sa == op.SAI_REPORT_REFERRALS:
        if min(alloc, total(din)) < 4:
            return Reason.INVALID_CDB_FIELD
        return Reason.UNSUPPORTED_SCSI_OPCODE  # no LBA map configured, as LIO by default
    buf = bytearray(32)
    buf[0:8] = (dev.last_lba & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "big")
    buf[8:12] = dev.block_size.to_bytes(4, "big")
    a = dev.attrs
    if a.get("emulate_tpu") or a.get("emulate_tpws"):
        buf[14] |= 0x80  # LBPME
        if a.get("unmap_zeroes_data"):
            buf[14] |= 0x40  # LBPRZ
    return reply(din, buf, alloc)


def _sync_or_verify(port: TargetPort, lun: LunEntry, nexus: str, cdb: bytes | memoryview,
                    dout: Bufs, din: Bufs) -> ScsiResult:
    """SYNCHRONIZE CACHE and VERIFY (10)/(16): range-checked (except on a ramdisk, whose LIO
    backend has no sync_cache and completes it unchecked); VERIFY compares nothing, as LIO."""
    dev = lun.dev
    lba, n = _RW10(cdb) if cdb[0] < 0x80 else _RW16(cdb)
    sync = cdb[0] in (op.SYNCHRONIZE_CACHE, op.SYNCHRONIZE_CACHE_16)
    size = 0
    if not sync or dev.plugin not in ("ramdisk", "rd_mcp"):
        if lba + n > dev.last_lba + 1:
            return Reason.ADDRESS_OUT_OF_RANGE
        size = n * dev.block_size
    stop = admit(port, lun, nexus, cdb, dout, din, size)
    if stop is not None:
        return stop
    if sync:
        try:
            dev.backstore.flush()
        except OSError as exc:
            return backstore_failure(exc, True, dev)
    return GOOD


def _noop(port: TargetPort, lun: LunEntry, nexus: str, cdb: bytes | memoryview,
          dout: Bufs, din: Bufs) -> ScsiResult:
    """REZERO UNIT, SEEK(6), SEEK(10): LIO completes them GOOD for old guests."""
    stop = admit(port, lun, nexus, cdb, dout, din, 0)
    return stop if stop is not None else GOOD


def _start_stop(port: TargetPort, lun: LunEntry, nexus: str, cdb: bytes | memoryview,
                dout: Bufs, din: Bufs) -> ScsiResult:
    stop = admit(port, lun, nexus, cdb, dout, din, 0)
    if stop is not None:
        return stop
    # sbc_emulate_startstop: only IMMED=1, START=1, no power condition, no load/eject.
    if not (cdb[1] & 1) or cdb[2] or cdb[3]:
        return Reason.INVALID_CDB_FIELD
    if cdb[4] >> 4:
        return Reason.INVALID_CDB_FIELD
    if not (cdb[4] & 1) or cdb[4] & 0x06:
        return Reason.INVALID_CDB_FIELD
    return GOOD


# --- WRITE SAME, UNMAP ---------------------------------------------------------------------------

def _write_same(port: TargetPort, lun: LunEntry, nexus: str, cdb: bytes | memoryview,
                dout: Bufs, din: Bufs) -> ScsiResult:
    dev = lun.dev
    code = cdb[0]
    if code == op.WRITE_SAME:
        n = _U16(cdb, 7)[0]
        lba = _U32(cdb, 2)[0]
        flags = cdb[1]
    elif code == op.WRITE_SAME_16:
        n = _U32(cdb, 10)[0]
        lba = _U64(cdb, 2)[0]
        flags = cdb[1]
    else:  # WRITE SAME (32) inside VARIABLE LENGTH
        n = _U32(cdb, 28)[0]
        lba = _U64(cdb, 12)[0]
        flags = cdb[10]
    if not n:
        return Reason.INVALID_CDB_FIELD  # WSNZ=1
    if flags & 0x06:
        return Reason.UNSUPPORTED_SCSI_OPCODE  # PBDATA / LBDATA
    if n > dev.attrs.get("max_write_same_len", 0):
        return Reason.INVALID_CDB_FIELD
    if lba + n > dev.last_lba + 1:
        return Reason.ADDRESS_OUT_OF_RANGE
    if flags & 0x10:
        return Reason.INVALID_CDB_FIELD  # ANCHOR
    if flags & 0x01:
        return Reason.INVALID_CDB_FIELD  # NDOB: LIO always wants the data block
    unmap = bool(flags & 0x08)
    bs = dev.block_size
    # LIO refuses emulate_tpws/tpu on backends without discard (rd_mcp), so the attributes
    # alone say whether this device unmaps.
    if unmap:
        if not dev.attrs.get("emulate_tpws"):
            return Reason.UNSUPPORTED_SCSI_OPCODE
    elif cdb[1] & 0xE0:  # sbc_check_prot reads byte 1 whatever the CDB size
        return Reason.INVALID_CDB_FIELD
    stop = admit(port, lun, nexus, cdb, dout, din, bs)
    if stop is not None:
        return stop
    try:
        if unmap:
            dev.backstore.unmap(lba * bs, n * bs)
            return GOOD
        if not dout or total(dout) < bs:
            return Reason.INVALID_CDB_FIELD  # fd_execute_write_same wants exactly one block
        block = gather(dout, bs)
        if not any(block):
            dev.backstore.write_zeroes(lba * bs, n * bs)
            if dev.write_through:  # a write-through disk promises the zeros are on the medium
                dev.backstore.flush()
        else:
            per = max(1, min(n, _WS_CHUNK // bs))
            chunk = memoryview(block * per)
            off = lba * bs
            left = n
            wt = dev.write_through
            while left:
                k = min(left, per)
                dev.backstore.writev(off, [chunk[: k * bs]], wt)
                off += k * bs
                left -= k
    except OSError as exc:
        return backstore_failure(exc, True, dev)
    return GOOD


def _variable_length(port: TargetPort, lun: LunEntry, nexus: str, cdb: bytes | memoryview,
                     dout: Bufs, din: Bufs) -> ScsiResult:
    if _U16(cdb, 8)[0] == op.WRITE_SAME_32:
        return _write_same(port, lun, nexus, cdb, dout, din)
    return Reason.UNSUPPORTED_SCSI_OPCODE


def _unmap(port: TargetPort, lun: LunEntry, nexus: str, cdb: bytes | memoryview,
           dout: Bufs, din: Bufs) -> ScsiResult:
    dev = lun.dev
    if not dev.attrs.get("emulate_tpu"):
        return Reason.UNSUPPORTED_SCSI_OPCODE
    size = _U16(cdb, 7)[0]
    stop = admit(port, lun, nexus, cdb, dout, din, size)
    if stop is not None:
        return stop
    if cdb[1]:
        return Reason.INVALID_CDB_FIELD  # ANCHOR: ANC_SUP is 0
    dl = total(dout) if dout else 0
    if dl == 0:
        return GOOD
    if dl < 8:
        return Reason.PARAMETER_LIST_LENGTH_ERROR
    buf = gather(dout, dl)
    bd_dl = _U16(buf, 2)[0]
    avail = dl - 8
    if bd_dl <= avail:
        avail = bd_dl
    a = dev.attrs
    if avail // 16 > a.get("max_unmap_block_desc_count", 0):
        return Reason.INVALID_PARAMETER_LIST
    bs = dev.block_size
    off = 8
    try:
        while avail >= 16:
            lba = _U64(buf, off)[0]
            rng = _U32(buf, off + 8)[0]
            if rng > a.get("max_unmap_lba_count", 0):
                return Reason.INVALID_PARAMETER_LIST
            if lba + rng > dev.last_lba + 1:
                return Reason.ADDRESS_OUT_OF_RANGE
            if rng:
                dev.backstore.unmap(lba * bs, rng * bs)
            off += 16
            avail -= 16
    except OSError as exc:
        return backstore_failure(exc, True, dev)
    return GOOD


# --- COMPARE AND WRITE ---------------------------------------------------------------------------

def _compare_and_write(port: TargetPort, lun: LunEntry, nexus: str, cdb: bytes | memoryview,
                       dout: Bufs, din: Bufs) -> ScsiResult:
    dev = lun.dev
    if not dev.attrs.get("emulate_caw", 1):
        return Reason.UNSUPPORTED_SCSI_OPCODE
    n = cdb[13]
    if n > 1:
        return Reason.INVALID_CDB_FIELD
    if cdb[1] & 0x18 and not dev.fua_ok:
        return Reason.INVALID_CDB_FIELD
    lba = _U64(cdb, 2)[0]
    if lba + n > dev.last_lba + 1:
        return Reason.ADDRESS_OUT_OF_RANGE
    bs = dev.block_size
    size = 2 * n * bs
    have = total(dout) if dout else 0
    if have != size:
        note_transfer(port, size, dout, din)
        return Reason.INVALID_FIELD_IN_COMMAND_IU
    gate = port.gate(lun, nexus, cdb, dout, din)
    if gate is not None:
        return gate
    if not n:
        return GOOD
    data = gather(dout, size)
    cur = bytearray(n * bs)
    try:
        with dev.caw_lock:
            dev.backstore.readv(lba * bs, [memoryview(cur)])
            if cur != data[: n * bs]:
                for i in range(n * bs):
                    if cur[i] != data[i]:
                        return miscompare(i)
            dev.backstore.writev(lba * bs, [memoryview(data)[n * bs:]],
                                 bool(cdb[1] & 0x08) or dev.write_through)
    except OSError as exc:
        return backstore_failure(exc, True, dev)
    return GOOD


HANDLERS = {
    op.READ_6: _read6, op.READ_10: _read10, op.READ_12: _read12, op.READ_16: _read16,
    op.WRITE_6: _write6, op.WRITE_10: _write10, op.WRITE_12: _write12, op.WRITE_16: _write16,
    op.WRITE_VERIFY: _write10, op.WRITE_VERIFY_16: _write16,
    op.READ_CAPACITY: _read_capacity, op.SERVICE_ACTION_IN_16: _service_action_in16,
    op.SYNCHRONIZE_CACHE: _sync_or_verify, op.SYNCHRONIZE_CACHE_16: _sync_or_verify,
    op.VERIFY: _sync_or_verify, op.VERIFY_16: _sync_or_verify,
    op.REZERO_UNIT: _noop, op.SEEK_6: _noop, op.SEEK_10: _noop,
    op.START_STOP: _start_stop,
    op.WRITE_SAME: _write_same, op.WRITE_SAME_16: _write_same,
    op.VARIABLE_LENGTH_CMD: _variable_length,
    op.UNMAP: _unmap,
    op.COMPARE_AND_WRITE: _compare_and_write,
}

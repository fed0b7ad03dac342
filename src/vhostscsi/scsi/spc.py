"""Primary commands (SPC-4) as target_core_spc.c emulates them: INQUIRY, MODE SENSE/SELECT,
REQUEST SENSE, REPORT LUNS, TEST UNIT READY, and MAINTENANCE IN (target port groups,
supported operation codes)."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING

from vhostscsi.scsi import opcodes as op
from vhostscsi.scsi import rsoc
from vhostscsi.scsi import ua as ua_mod
from vhostscsi.scsi.buffers import gather, total
from vhostscsi.scsi.common import admit, reply
from vhostscsi.scsi.inquiry import standard_inquiry, vpd_page
from vhostscsi.scsi.mode import current_page, mode_sense
from vhostscsi.scsi.result import GOOD, ScsiResult
from vhostscsi.scsi.sense import NO_SENSE, UNIT_ATTENTION, Reason, descriptor_sense, fixed_sense

if TYPE_CHECKING:
    from vhostscsi.scsi.port import LunEntry, TargetPort

__all__ = ["HANDLERS", "lun_bytes", "report_luns_data"]

_U16 = struct.Struct(">H").unpack_from
_U32 = struct.Struct(">I").unpack_from
Bufs = Sequence[memoryview]


def _inquiry(port: TargetPort, lun: LunEntry, nexus: str, cdb: bytes | memoryview,
             dout: Bufs, din: Bufs) -> ScsiResult:
    alloc = _U16(cdb, 3)[0]
    stop = admit(port, lun, nexus, cdb, dout, din, alloc)
    if stop is not None:
        return stop
    dev = lun.dev
    if not (cdb[1] & 0x01):
        if cdb[2]:
            return Reason.INVALID_CDB_FIELD
        buf = standard_inquiry(dev, port)
        return reply(din, buf, alloc, buf[4] + 5)
    page = vpd_page(dev, port, lun.lun_id, cdb[2])
    if page is None:
        return Reason.INVALID_CDB_FIELD
    return reply(din, page, alloc, _U16(page, 2)[0] + 4)


def _test_unit_ready(port: TargetPort, lun: LunEntry, nexus: str, cdb: bytes | memoryview,
                     dout: Bufs, din: Bufs) -> ScsiResult:
    stop = admit(port, lun, nexus, cdb, dout, din, 0)
    return stop if stop is not None else GOOD


def sense_data(dev_desc: bool, key: int, asc: int, ascq: int) -> bytes:
    """REQUEST SENSE parameter data in the format the LUN uses (96-byte buffer as LIO)."""
    data = descriptor_sense(key, asc, ascq) if dev_desc else fixed_sense(key, asc, ascq)
    return data.ljust(96, b"\x00")


def _request_sense(port: TargetPort, lun: LunEntry, nexus: str, cdb: bytes | memoryview,
                   dout: Bufs, din: Bufs) -> ScsiResult:
    alloc = cdb[4]
    stop = admit(port, lun, nexus, cdb, dout, din, alloc)
    if stop is not None:
        return stop
    if cdb[1] & 0x01:
        return Reason.INVALID_CDB_FIELD  # DESC: LIO does not emulate it
    if not din or not min(alloc, total(din)):
        # LIO maps the data buffer before anything else; with none it fails the command
        return Reason.LOGICAL_UNIT_COMMUNICATION_FAILURE
    dev = lun.dev
    pending = ua_mod.take(lun, nexus, dev.attrs.get("emulate_ua_intlck_ctrl", 0)) if lun.ua else None
    if pending is not None:
        data = sense_data(dev.desc_sense, UNIT_ATTENTION, *pending)
    else:
        data = sense_data(dev.desc_sense, NO_SENSE, 0, 0)
    # LIO completes without a length: the whole (allocation-limited) buffer counts as sent.
    return reply(din, data, alloc, max(alloc, 96))


def lun_bytes(lun_id: int) -> bytes:
    """int_to_scsilun(): two bytes per level, most significant level first."""
    out = bytearray(8)
    for i in range(0, 8, 2):
        out[i] = (lun_id >> 8) & 0xFF
        out[i + 1] = lun_id & 0xFF
        lun_id >>= 16
    return bytes(out)


def report_luns_data(lun_ids: Sequence[int]) -> bytes:
    """REPORT LUNS parameter data, in the given order; with no LUNs, LIO reports LUN 0."""
    ids = list(lun_ids) or [0]
    return (len(ids) * 8).to_bytes(4, "big") + bytes(4) + b"".join(lun_bytes(i) for i in ids)


def _report_luns(port: TargetPort, lun: LunEntry, nexus: str, cdb: bytes | memoryview,
                 dout: Bufs, din: Bufs) -> ScsiResult:
    alloc = _U32(cdb, 6)[0]
    stop = admit(port, lun, nexus, cdb, dout, din, alloc)
    if stop is not None:
        return stop
    return reply(din, report_luns_data(port.report_luns_order(nexus)), alloc)


def _mode_sense(port: TargetPort, lun: LunEntry, nexus: str, cdb: bytes | memoryview,
                dout: Bufs, din: Bufs) -> ScsiResult:
    alloc = cdb[4] if cdb[0] == op.MODE_SENSE else _U16(cdb, 7)[0]
    stop = admit(port, lun, nexus, cdb, dout, din, alloc)
    if stop is not None:
        return stop
    data = mode_sense(lun.dev, cdb, lun.read_only)
    if data is None:
        return Reason.UNKNOWN_MODE_PAGE
    return reply(din, data, alloc)


def _mode_select(port: TargetPort, lun: LunEntry, nexus: str, cdb: bytes | memoryview,
                 dout: Bufs, din: Bufs) -> ScsiResult:
    ten = cdb[0] == op.MODE_SELECT_10
    size = _U16(cdb, 7)[0] if ten else cdb[4]
    stop = admit(port, lun, nexus, cdb, dout, din, size)
    if stop is not None:
        return stop
    dl = total(dout) if dout else 0
    if not dl:
        return GOOD
    off = 8 if ten else 4
    if dl < off + 2:
        return Reason.PARAMETER_LIST_LENGTH_ERROR
    if not (cdb[1] & 0x10):
        return Reason.INVALID_CDB_FIELD  # PF=0
    buf = gather(dout, dl)
    page = buf[off] & 0x3F
    subpage = buf[off + 1] if buf[off] & 0x40 else 0
    cur = current_page(lun.dev, page, subpage)
    if cur is None:
        return Reason.UNKNOWN_MODE_PAGE
    if dl < off + len(cur):
        return Reason.PARAMETER_LIST_LENGTH_ERROR
    if buf[off : off + len(cur)] != cur:
        return Reason.INVALID_PARAMETER_LIST
    return GOOD


def _maintenance_in(port: TargetPort, lun: LunEntry, nexus: str, cdb: bytes | memoryview,
                    dout: Bufs, din: Bufs) -> ScsiResult:
    sa = cdb[1] & 0x1F
    if sa != op.MI_REPORT_TARGET_PGS and not (
            sa == op.MI_REPORT_SUPPORTED_OPERATION_CODES and lun.dev.attrs.get("emulate_rsoc")):
        return Reason.UNSUPPORTED_SCSI_OPCODE
    alloc = _U32(cdb, 6)[0]
    stop = admit(port, lun, nexus, cdb, dout, din, alloc)
    if stop is not None:
        return stop
    dl = min(alloc, total(din)) if din else 0
    if sa == op.MI_REPORT_SUPPORTED_OPERATION_CODES:
        data = rsoc.report(lun.dev, cdb)
        if data is None:
            return Reason.INVALID_CDB_FIELD
        return reply(din, data, alloc)
    if dl < 4:
        return Reason.INVALID_CDB_FIELD
    data, length = _target_port_groups(port, lun, cdb, dl)
    return reply(din, data, alloc, length)


def _target_port_groups(port: TargetPort, lun: LunEntry, cdb: bytes | memoryview,
                        dl: int) -> tuple[bytes, int]:
    """REPORT TARGET PORT GROUPS for LIO's default group: Active/Optimized, id 0."""
    ext = bool(cdb[1] & 0x20)
    off = 8 if ext else 4
    members = lun.dev.export_rtpis()
    buf = bytearray(off)
    rd_len = 0
    need = 8 + 4 * len(members)
    if off + need > dl:
        rd_len += need
    else:
        buf += bytes([0x00, 0xCF]) + port.tg_pt_gp_id.to_bytes(2, "big")
        buf += bytes([0x00, 0x00, 0x00, len(members) & 0xFF])
        rd_len += 8
        for rtpi in members:
            buf += bytes(2) + rtpi.to_bytes(2, "big")
            rd_len += 4
    buf[0:4] = rd_len.to_bytes(4, "big")
    if ext:
        buf[4] = 0x10
    return bytes(buf), rd_len + 4


def _unsupported(port: TargetPort, lun: LunEntry, nexus: str, cdb: bytes | memoryview,
                 dout: Bufs, din: Bufs) -> ScsiResult:
    return Reason.UNSUPPORTED_SCSI_OPCODE


HANDLERS = {
    op.INQUIRY: _inquiry,
    op.TEST_UNIT_READY: _test_unit_ready,
    op.REQUEST_SENSE: _request_sense,
    op.REPORT_LUNS: _report_luns,
    op.MODE_SENSE: _mode_sense,
    op.MODE_SENSE_10: _mode_sense,
    op.MODE_SELECT: _mode_select,
    op.MODE_SELECT_10: _mode_select,
    op.MAINTENANCE_IN: _maintenance_in,
}
UNSUPPORTED = _unsupported

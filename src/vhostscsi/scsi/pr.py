"""Reservations: SPC-2 RESERVE/RELEASE and SPC-3 PERSISTENT RESERVE IN/OUT, after target_core_pr.c.

State belongs to the Device (the logical unit); an I_T nexus is identified by the target
port (WWN, TPG tag) and the initiator port name, as LIO keys registrations by node ACL, which
is per TPG. Persist-through-power-loss (APTPL) is accepted but not written anywhere: the core
is sans-I/O, so persisting it is the engine's business.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from vhostscsi.scsi import opcodes as op
from vhostscsi.scsi import ua as ua_mod
from vhostscsi.scsi.buffers import gather, total
from vhostscsi.scsi.common import DIR_IN, DIR_OUT, admit, direction, reply
from vhostscsi.scsi.result import GOOD, ScsiResult
from vhostscsi.scsi.sense import Reason

if TYPE_CHECKING:
    from vhostscsi.scsi.port import LunEntry, TargetPort

__all__ = ["PrState", "Registration", "check_reservation", "HANDLERS"]

WRITE_EXCLUSIVE = 0x1
EXCLUSIVE_ACCESS = 0x3
WRITE_EXCLUSIVE_REGONLY = 0x5
EXCLUSIVE_ACCESS_REGONLY = 0x6
WRITE_EXCLUSIVE_ALLREG = 0x7
EXCLUSIVE_ACCESS_ALLREG = 0x8
_TYPES = frozenset((1, 3, 5, 6, 7, 8))
_ALLREG = frozenset((WRITE_EXCLUSIVE_ALLREG, EXCLUSIVE_ACCESS_ALLREG))
_REGONLY = frozenset((WRITE_EXCLUSIVE_REGONLY, EXCLUSIVE_ACCESS_REGONLY))
LU_SCOPE = 0x00
_U64 = struct.Struct(">Q")


class Registration:
    """One registered I_T nexus (t10_pr_registration)."""

    __slots__ = ("port", "nexus", "lun", "key", "all_tg_pt", "aptpl")

    def __init__(self, port: TargetPort, nexus: str, lun: LunEntry, key: int, all_tg_pt: bool,
                 aptpl: bool) -> None:
        self.port = port
        self.nexus = nexus
        self.lun = lun  # where unit attentions for this registrant go
        self.key = key
        self.all_tg_pt = all_tg_pt
        self.aptpl = aptpl

    def is_nexus(self, port: TargetPort, nexus: str) -> bool:
        return self.port is port and self.nexus == nexus


class PrState:
    """Reservation state of one logical unit."""

    def __init__(self) -> None:
        # Ports sharing the device may run on different threads: PR commands and reservation
        # changes hold this (LIO's dev_reservation_lock); the data path only reads `active`.
        self.lock = threading.Lock()
        self.regs: list[Registration] = []
        self.holder: Registration | None = None
        self.type = 0
        self.scope = 0
        self.generation = 0
        self.aptpl_active = False
        # SPC-2 reservation holder: (port, nexus)
        self.spc2: tuple[TargetPort, str] | None = None
        self.active = False  # any reservation at all: the data path tests only this

    def refresh_active(self) -> None:
        self.active = self.holder is not None or self.spc2 is not None

    def find(self, port: TargetPort, nexus: str) -> Registration | None:
        for r in self.regs:
            if r.port is port and r.nexus == nexus:
                return r
        return None

    def is_holder(self, reg: Registration | None) -> bool:
        """is_reservation_holder(): every registrant holds an all-registrants reservation."""
        if reg is None or self.holder is None:
            return False
        return self.type in _ALLREG or self.holder is reg

    def bump(self) -> None:
        self.generation = (self.generation + 1) & 0xFFFFFFFF

    def release(self) -> None:
        self.holder = None
        self.type = 0
        self.scope = 0
        self.refresh_active()

    def reserve(self, reg: Registration, type_: int, scope: int) -> None:
        self.holder = reg
        self.type = type_
        self.scope = scope
        self.refresh_active()

    def remove(self, reg: Registration) -> None:
        """Free a registration; an all-registrants reservation moves to another registrant."""
        self.regs.remove(reg)
        if self.holder is reg:
            if self.type in _ALLREG and self.regs:
                self.holder = self.regs[0]
            else:
                self.release()


# --- the check before execution ----------------------------------------------------------------

def _spc2_conflict(pr: PrState, port: TargetPort, nexus: str, opcode: int) -> bool:
    if opcode in (op.INQUIRY, op.RELEASE, op.RELEASE_10):
        return False
    assert pr.spc2 is not None
    hp, hn = pr.spc2
    return not (hp is port and hn == nexus)


def _non_holder_conflict(pr: PrState, port: TargetPort, nexus: str, cdb: bytes | memoryview,
                         dirn: int) -> bool:
    """core_scsi3_pr_seq_non_holder: SPC-4 table 45 for an I_T nexus not holding the PR."""
    t = pr.type
    registered = pr.find(port, nexus) is not None
    we = t in (WRITE_EXCLUSIVE, WRITE_EXCLUSIVE_REGONLY, WRITE_EXCLUSIVE_ALLREG)
    reg_only = t in _REGONLY
    all_reg = t in _ALLREG
    code = cdb[0]
    other = False
    ret = False
    if code == op.SECURITY_PROTOCOL_IN:
        if registered:
            return False
        ret = not we
    elif code in (op.MODE_SENSE, op.MODE_SENSE_10, op.READ_ATTRIBUTE, op.READ_BUFFER,
                  op.RECEIVE_DIAGNOSTIC):
        if registered:
            return False
        ret = not we
    elif code == op.PERSISTENT_RESERVE_OUT:
        sa = cdb[1] & 0x1F
        if sa in (op.PRO_CLEAR, op.PRO_PREEMPT, op.PRO_PREEMPT_AND_ABORT, op.PRO_RELEASE):
            ret = not registered
        elif sa in (op.PRO_REGISTER, op.PRO_REGISTER_AND_IGNORE_EXISTING_KEY):
            ret = False
        elif sa in (op.PRO_REGISTER_AND_MOVE, op.PRO_RESERVE):
            ret = True
        else:
            return True
    elif code in (op.RELEASE, op.RELEASE_10, op.RESERVE, op.RESERVE_10, op.TEST_UNIT_READY):
        ret = False
    elif code == op.MAINTENANCE_IN:
        sa = cdb[1] & 0x1F
        if sa in (op.MI_MANAGEMENT_PROTOCOL_IN, op.MI_REPORT_SUPPORTED_OPERATION_CODES,
                  op.MI_REPORT_SUPPORTED_TASK_MANAGEMENT_FUNCTIONS):
            if registered:
                return False
            ret = not we
        elif sa in (op.MI_REPORT_ALIASES, op.MI_REPORT_IDENTIFYING_INFORMATION,
                    op.MI_REPORT_PRIORITY, op.MI_REPORT_TARGET_PGS, op.MI_REPORT_TIMESTAMP):
            ret = False
        else:
            return True
    elif code in (op.ACCESS_CONTROL_IN, op.ACCESS_CONTROL_OUT, op.INQUIRY, op.LOG_SENSE,
                  op.SERVICE_ACTION_IN_12, op.REPORT_LUNS, op.REQUEST_SENSE,
                  op.PERSISTENT_RESERVE_IN):
        ret = False
    else:
        other = True
    if not ret and not other:
        return False
    if we and not registered:
        return dirn == DIR_OUT
    if reg_only or all_reg:
        if registered:
            return False
    elif we and registered:
        if dirn == DIR_IN:
            return False
    return True


def check_reservation(pr: PrState, port: TargetPort, nexus: str, cdb: bytes | memoryview,
                      dout: Sequence[memoryview], din: Sequence[memoryview]) -> ScsiResult | None:
    """target_check_reservation: RESERVATION CONFLICT or None."""
    if pr.spc2 is not None:
        return Reason.RESERVATION_CONFLICT if _spc2_conflict(pr, port, nexus, cdb[0]) else None
    h = pr.holder
    if h is None:
        return None
    if h.port is port and h.nexus == nexus:
        return None
    if _non_holder_conflict(pr, port, nexus, cdb, direction(dout, din)):
        return Reason.RESERVATION_CONFLICT
    return None


# --- what every reservation command checks first -------------------------------------------------

def _admit(port: TargetPort, lun: LunEntry, nexus: str, cdb: bytes | memoryview,
           dout: Sequence[memoryview], din: Sequence[memoryview], size: int) -> ScsiResult | None:
    """common.admit behind LIO's emulate_pr switch: with it off, every reservation command is an
    unsupported opcode, whatever else is wrong with it."""
    if not lun.dev.attrs.get("emulate_pr", 1):
        return Reason.UNSUPPORTED_SCSI_OPCODE
    return admit(port, lun, nexus, cdb, dout, din, size)


def _admit_persistent(port: TargetPort, lun: LunEntry, nexus: str, cdb: bytes | memoryview,
                      dout: Sequence[memoryview], din: Sequence[memoryview], size: int) -> ScsiResult | None:
    """_admit for PERSISTENT RESERVE IN/OUT: while anyone holds a legacy SPC-2 reservation on the device,
    LIO answers every PR command RESERVATION CONFLICT (target_scsi3_emulate_pr_in/out)."""
    stop = _admit(port, lun, nexus, cdb, dout, din, size)
    if stop is None and lun.dev.pr.spc2 is not None:
        return Reason.RESERVATION_CONFLICT
    return stop


# --- SPC-2 RESERVE / RELEASE -----------------------------------------------------------------

def _scsi2_vs_pr(pr: PrState, port: TargetPort, nexus: str) -> int:
    """target_check_scsi2_reservation_conflict: 1 = complete GOOD doing nothing, -1 = conflict."""
    reg = pr.find(port, nexus)
    if reg is not None:
        if pr.holder is not None and pr.is_holder(reg):
            return 1
        if pr.holder is not None and pr.type in (_REGONLY | _ALLREG):
            return 1
        return -1
    return -1 if pr.regs else 0


def _reserve_release(port: TargetPort, lun: LunEntry, nexus: str, cdb: bytes | memoryview,
                     dout: Sequence[memoryview], din: Sequence[memoryview]) -> ScsiResult:
    """RESERVE/RELEASE (6)/(10): target_scsi2_reservation_reserve/release."""
    code = cdb[0]
    size = ((cdb[7] << 8) | cdb[8]) if code in (op.RESERVE_10, op.RELEASE_10) else 0
    stop = _admit(port, lun, nexus, cdb, dout, din, size)
    if stop is not None:
        return stop
    dev = lun.dev
    reserve = code in (op.RESERVE, op.RESERVE_10)
    if reserve and (cdb[1] & 0x01) and (cdb[1] & 0x02):
        return Reason.UNSUPPORTED_SCSI_OPCODE  # LongIO + obsolete bits
    with dev.pr.lock:
        return _spc2(dev.pr, port, nexus, reserve)


def _spc2(pr: PrState, port: TargetPort, nexus: str, reserve: bool) -> ScsiResult:
    rc = _scsi2_vs_pr(pr, port, nexus)
    if rc == 1:
        return GOOD
    if rc < 0:
        return Reason.RESERVATION_CONFLICT
    mine = pr.spc2 is not None and pr.spc2[0] is port and pr.spc2[1] == nexus
    if reserve:
        if pr.spc2 is not None and not mine:
            return Reason.RESERVATION_CONFLICT
        pr.spc2 = (port, nexus)
    elif mine:
        pr.spc2 = None
    pr.refresh_active()
    return GOOD


# --- PERSISTENT RESERVE IN -----------------------------------------------------------------------

def _read_keys(pr: PrState, dl: int) -> tuple[bytes, int]:
    body = b"".join(_U64.pack(r.key) for r in pr.regs)
    return pr.generation.to_bytes(4, "big") + len(body).to_bytes(4, "big") + body, 8 + len(body)


def _read_reservation(pr: PrState, dl: int) -> tuple[bytes, int | None]:
    buf = bytearray(24)
    buf[0:4] = pr.generation.to_bytes(4, "big")
    h = pr.holder
    if h is None:
        return bytes(buf[:8]), 8
    buf[4:8] = (16).to_bytes(4, "big")
    if dl < 22:
        return bytes(buf[:8]), None  # LIO completes without setting a length
    key = 0 if pr.type in _ALLREG else h.key
    buf[8:16] = _U64.pack(key)
    buf[21] = (pr.scope & 0xF0) | (pr.type & 0x0F)
    return bytes(buf), 24


def _report_capabilities(pr: PrState, dl: int) -> tuple[bytes, int]:
    buf = bytearray(8)
    buf[1] = 8
    buf[2] = 0x10 | 0x08 | 0x04 | 0x01  # CRH, SIP_C, ATP_C, PTPL_C
    buf[3] = 0x80 | 0x10  # TMV, ALLOW COMMANDS 001b
    if pr.aptpl_active:
        buf[3] |= 0x01
    buf[4] = 0x80 | 0x40 | 0x20 | 0x08 | 0x02
    buf[5] = 0x01
    return bytes(buf), 8


def _transport_id(port: TargetPort, nexus: str) -> bytes:
    """The initiator's TransportID for the port's protocol (SAS for vhost's naa. names)."""
    if port.proto_id == 0x6:
        tid = bytearray(24)
        tid[0] = 0x06
        hexpart = nexus[4:] if nexus.lower().startswith("naa.") else nexus
        try:
            tid[4:12] = bytes.fromhex(hexpart[:16].ljust(16, "0"))
        except ValueError:
            pass
        return bytes(tid)
    name = nexus.encode("utf-8") + b"\x00"
    name += b"\x00" * ((-len(name)) & 3)
    return bytes([0x05, 0x00]) + max(len(name), 20).to_bytes(2, "big") + name.ljust(20, b"\x00")


def _read_full_status(pr: PrState, dl: int) -> tuple[bytes, int]:
    body = bytearray()
    for r in pr.regs:
        tid = _transport_id(r.port, r.nexus)
        if len(tid) + len(body) > dl:
            break  # LIO stops (and leaves them out of the length) when the next will not fit
        d = bytearray(24)
        d[0:8] = _U64.pack(r.key)
        if r.all_tg_pt:
            d[12] |= 0x02
        if pr.is_holder(r):
            d[12] |= 0x01
            d[13] = (pr.scope & 0xF0) | (pr.type & 0x0F)
        if not r.all_tg_pt:
            d[18:20] = r.port.rtpi.to_bytes(2, "big")
        d[20:24] = len(tid).to_bytes(4, "big")
        body += d + tid
    head = pr.generation.to_bytes(4, "big") + len(body).to_bytes(4, "big")
    return head + bytes(body), 8 + len(body)


_PRI = {
    op.PRI_READ_KEYS: _read_keys,
    op.PRI_READ_RESERVATION: _read_reservation,
    op.PRI_REPORT_CAPABILITIES: _report_capabilities,
    op.PRI_READ_FULL_STATUS: _read_full_status,
}
_PRI_MIN = {op.PRI_READ_KEYS: 8, op.PRI_READ_RESERVATION: 8, op.PRI_REPORT_CAPABILITIES: 6,
            op.PRI_READ_FULL_STATUS: 8}


def _pr_in(port: TargetPort, lun: LunEntry, nexus: str, cdb: bytes | memoryview,
           dout: Sequence[memoryview], din: Sequence[memoryview]) -> ScsiResult:
    alloc = (cdb[7] << 8) | cdb[8]
    stop = _admit_persistent(port, lun, nexus, cdb, dout, din, alloc)
    if stop is not None:
        return stop
    pr = lun.dev.pr
    sa = cdb[1] & 0x1F
    fn = _PRI.get(sa)
    if fn is None:
        return Reason.INVALID_CDB_FIELD
    dl = min(alloc, total(din)) if din else 0
    if dl < _PRI_MIN[sa]:
        return Reason.INVALID_CDB_FIELD
    with pr.lock:
        data, length = fn(pr, dl)
    return reply(din, data, alloc, dl if length is None else length)


# --- PERSISTENT RESERVE OUT ----------------------------------------------------------------------

def _ua_all_but(pr: PrState, me: Registration | None, asc_ascq: tuple[int, int]) -> None:
    for r in pr.regs:
        if r is not me:
            ua_mod.allocate(r.lun, r.nexus, *asc_ascq)


def _register(pr: PrState, port: TargetPort, lun: LunEntry, nexus: str, res_key: int,
              sa_key: int, aptpl: bool, all_tg_pt: bool, spec_i_pt: bool,
              ignore: bool) -> ScsiResult:
    reg = pr.find(port, nexus)
    if reg is None:
        if res_key and not ignore:
            return Reason.RESERVATION_CONFLICT
        if not sa_key:
            return GOOD
        if spec_i_pt:
            # Registering other initiators by TransportID is not supported here.
            return Reason.INVALID_PARAMETER_LIST
        pr.regs.append(Registration(port, nexus, lun, sa_key, all_tg_pt, aptpl))
        pr.bump()
        pr.aptpl_active = aptpl
        return GOOD
    if not ignore and res_key != reg.key:
        return Reason.RESERVATION_CONFLICT
    if spec_i_pt:
        return Reason.INVALID_PARAMETER_LIST
    if reg.all_tg_pt and not all_tg_pt:
        return Reason.INVALID_CDB_FIELD
    if sa_key:
        pr.bump()
        reg.key = sa_key
    else:
        type_ = pr.type
        was_holder = pr.holder is not None and pr.is_holder(reg)
        last_allreg = was_holder and type_ in _ALLREG and len(pr.regs) == 1
        implicit_release = was_holder and (type_ not in _ALLREG or last_allreg)
        pr.remove(reg)
        if implicit_release and pr.holder is not None:
            pr.release()
        if implicit_release and type_ in _REGONLY:
            _ua_all_but(pr, None, ua_mod.RESERVATIONS_RELEASED)
    pr.aptpl_active = aptpl
    return GOOD


def _pro_reserve(pr: PrState, port: TargetPort, nexus: str, type_: int, scope: int,
                 res_key: int) -> ScsiResult:
    if type_ not in _TYPES:
        return Reason.INVALID_CDB_FIELD
    reg = pr.find(port, nexus)
    if reg is None:
        return Reason.LOGICAL_UNIT_COMMUNICATION_FAILURE  # as LIO: "Unable to locate pr_reg"
    if res_key != reg.key:
        return Reason.RESERVATION_CONFLICT
    if scope != LU_SCOPE:
        return Reason.INVALID_PARAMETER_LIST
    if pr.holder is not None:
        if not pr.is_holder(reg):
            return Reason.RESERVATION_CONFLICT
        if pr.type != type_ or pr.scope != scope:
            return Reason.RESERVATION_CONFLICT
        return GOOD
    pr.reserve(reg, type_, scope)
    return GOOD


def _pro_release(pr: PrState, port: TargetPort, nexus: str, type_: int, scope: int,
                 res_key: int) -> ScsiResult:
    reg = pr.find(port, nexus)
    if reg is None:
        return Reason.LOGICAL_UNIT_COMMUNICATION_FAILURE
    if pr.holder is None or not pr.is_holder(reg):
        return GOOD
    if res_key != reg.key:
        return Reason.RESERVATION_CONFLICT
    if pr.type != type_ or pr.scope != scope:
        return Reason.RESERVATION_CONFLICT
    old = pr.type
    pr.release()
    if old in _REGONLY or old in _ALLREG:
        _ua_all_but(pr, reg, ua_mod.RESERVATIONS_RELEASED)
    return GOOD


def _pro_clear(pr: PrState, port: TargetPort, nexus: str, res_key: int) -> ScsiResult:
    me = pr.find(port, nexus)
    if me is None:
        return Reason.LOGICAL_UNIT_COMMUNICATION_FAILURE
    if res_key != me.key:
        return Reason.RESERVATION_CONFLICT
    pr.release()
    regs, pr.regs = pr.regs, []
    for r in regs:
        if r is not me:
            ua_mod.allocate(r.lun, r.nexus, *ua_mod.RESERVATIONS_PREEMPTED)
    pr.aptpl_active = False
    pr.bump()
    return GOOD


def _pro_preempt(pr: PrState, port: TargetPort, nexus: str, type_: int, scope: int,
                 res_key: int, sa_key: int) -> ScsiResult:
    if type_ not in _TYPES:
        return Reason.INVALID_CDB_FIELD
    me = pr.find(port, nexus)
    if me is None or me.key != res_key:
        return Reason.RESERVATION_CONFLICT
    if scope != LU_SCOPE:
        return Reason.INVALID_PARAMETER_LIST
    h = pr.holder
    all_reg = h is not None and pr.type in _ALLREG
    if not all_reg and not sa_key:
        return Reason.INVALID_PARAMETER_LIST
    if h is None or h.key != sa_key:
        unmatched = sa_key != 0
        for r in list(pr.regs):
            if sa_key and r.key != sa_key:
                continue
            unmatched = False
            if all_reg and r is me:
                continue
            pr.remove(r)
            if r is not me:
                ua_mod.allocate(r.lun, r.nexus, *ua_mod.REGISTRATIONS_PREEMPTED)
        if unmatched:
            return Reason.RESERVATION_CONFLICT
        if h is not None and all_reg and not sa_key and me in pr.regs:
            pr.reserve(me, type_, scope)
        pr.bump()
        return GOOD
    old_type, old_scope = pr.type, pr.scope
    if h is not me:
        pr.release()
    for r in list(pr.regs):
        if r is me or r.key != sa_key:
            continue
        pr.remove(r)
        ua_mod.allocate(r.lun, r.nexus, *ua_mod.REGISTRATIONS_PREEMPTED)
    pr.reserve(me, type_, scope)
    if old_type != type_ or old_scope != scope:
        _ua_all_but(pr, me, ua_mod.RESERVATIONS_RELEASED)
    pr.bump()
    return GOOD


def _pr_out(port: TargetPort, lun: LunEntry, nexus: str, cdb: bytes | memoryview,
            dout: Sequence[memoryview], din: Sequence[memoryview]) -> ScsiResult:
    size = int.from_bytes(bytes(cdb[5:9]), "big")
    stop = _admit_persistent(port, lun, nexus, cdb, dout, din, size)
    if stop is not None:
        return stop
    dev = lun.dev
    pr = dev.pr
    dl = total(dout) if dout else 0
    if dl < 24:
        return Reason.PARAMETER_LIST_LENGTH_ERROR
    buf = gather(dout, min(dl, 24))
    sa = cdb[1] & 0x1F
    scope = cdb[2] & 0xF0
    type_ = cdb[2] & 0x0F
    res_key = _U64.unpack_from(buf, 0)[0]
    sa_key = _U64.unpack_from(buf, 8)[0]
    if sa != op.PRO_REGISTER_AND_MOVE:
        spec_i_pt = bool(buf[20] & 0x08)
        all_tg_pt = bool(buf[20] & 0x04)
        aptpl = bool(buf[20] & 0x01)
    else:
        spec_i_pt = all_tg_pt = False
        aptpl = bool(buf[17] & 0x01)
    if dev.attrs.get("force_pr_aptpl"):
        aptpl = True
    if spec_i_pt and sa != op.PRO_REGISTER:
        return Reason.INVALID_PARAMETER_LIST
    if not spec_i_pt and sa != op.PRO_REGISTER_AND_MOVE and dl != 24:
        return Reason.PARAMETER_LIST_LENGTH_ERROR
    with pr.lock:
        return _pr_out_action(pr, port, lun, nexus, sa, type_, scope, res_key, sa_key, aptpl,
                              all_tg_pt, spec_i_pt)


def _pr_out_action(pr: PrState, port: TargetPort, lun: LunEntry, nexus: str, sa: int,
                   type_: int, scope: int, res_key: int, sa_key: int, aptpl: bool,
                   all_tg_pt: bool, spec_i_pt: bool) -> ScsiResult:
    if sa == op.PRO_REGISTER:
        return _register(pr, port, lun, nexus, res_key, sa_key, aptpl, all_tg_pt, spec_i_pt, False)
    if sa == op.PRO_REGISTER_AND_IGNORE_EXISTING_KEY:
        return _register(pr, port, lun, nexus, 0, sa_key, aptpl, all_tg_pt, spec_i_pt, True)
    if sa == op.PRO_RESERVE:
        return _pro_reserve(pr, port, nexus, type_, scope, res_key)
    if sa == op.PRO_RELEASE:
        return _pro_release(pr, port, nexus, type_, scope, res_key)
    if sa == op.PRO_CLEAR:
        return _pro_clear(pr, port, nexus, res_key)
    if sa in (op.PRO_PREEMPT, op.PRO_PREEMPT_AND_ABORT):
        # Commands run to completion one at a time here, so there is nothing left to abort.
        return _pro_preempt(pr, port, nexus, type_, scope, res_key, sa_key)
    # REGISTER AND MOVE needs TransportID parsing of another I_T nexus: not offered.
    return Reason.INVALID_CDB_FIELD


HANDLERS = {
    op.RESERVE: _reserve_release,
    op.RESERVE_10: _reserve_release,
    op.RELEASE: _reserve_release,
    op.RELEASE_10: _reserve_release,
    op.PERSISTENT_RESERVE_IN: _pr_in,
    op.PERSISTENT_RESERVE_OUT: _pr_out,
}

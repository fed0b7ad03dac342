"""REPORT SUPPORTED OPERATION CODES, from a table shaped like LIO's tcm_supported_opcodes.

LIO has it from 6.3 on (attribute emulate_rsoc); the 6.1 reference answers INVALID COMMAND
OPERATION CODE, so a Device offers it only with the attribute emulate_rsoc=1.

Only commands this core implements are listed, and those a device's attributes switch off
(COMPARE AND WRITE, UNMAP, persistent reservations) are left out, as newer LIO does with its
per-descriptor `enabled` hooks: a guest that trusts the report never gets INVALID OPCODE.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from vhostscsi.scsi import opcodes as op

if TYPE_CHECKING:
    from vhostscsi.scsi.device import Device

__all__ = ["report", "DESCRIPTORS"]

C = 0x00  # SCSI_CONTROL_MASK: LIO supports no control-byte features
G = 0x00  # SCSI_GROUP_NUMBER_MASK
SUPPORT_NOT = 1
SUPPORT_FULL = 3


class Descriptor(NamedTuple):
    opcode: int
    sa: int
    sa_valid: bool
    usage: bytes
    needs: str = ""  # attribute that must be non-zero for the command to be offered


def _d(opcode: int, usage: list[int], sa: int | None = None, needs: str = "") -> Descriptor:
    return Descriptor(opcode, sa or 0, sa is not None, bytes(usage), needs)


_F = 0xFF
DESCRIPTORS: tuple[Descriptor, ...] = (
    _d(op.READ_6, [op.READ_6, 0x1F, _F, _F, _F, C]),
    _d(op.READ_10, [op.READ_10, 0xF8, _F, _F, _F, _F, G, _F, _F, C]),
    _d(op.READ_12, [op.READ_12, 0xF8, _F, _F, _F, _F, _F, _F, _F, _F, G, C]),
    _d(op.READ_16, [op.READ_16, 0xF8] + [_F] * 12 + [G, C]),
    _d(op.WRITE_6, [op.WRITE_6, 0x1F, _F, _F, _F, C]),
    _d(op.WRITE_10, [op.WRITE_10, 0xF8, _F, _F, _F, _F, G, _F, _F, C]),
    _d(op.WRITE_VERIFY, [op.WRITE_VERIFY, 0xF0, _F, _F, _F, _F, G, _F, _F, C]),
    _d(op.WRITE_12, [op.WRITE_12, 0xF8, _F, _F, _F, _F, _F, _F, _F, _F, G, C]),
    _d(op.WRITE_16, [op.WRITE_16, 0xF8] + [_F] * 12 + [G, C]),
    _d(op.WRITE_VERIFY_16, [op.WRITE_VERIFY_16, 0xF0] + [_F] * 12 + [G, C]),
    _d(op.VARIABLE_LENGTH_CMD,
       [op.VARIABLE_LENGTH_CMD, C, 0, 0, 0, 0, G, 0x18, 0x00, op.WRITE_SAME_32, 0xE8, 0x00]
       + [_F] * 8 + [0] * 8 + [_F] * 4, sa=op.WRITE_SAME_32, needs="max_write_same_len"),
    _d(op.COMPARE_AND_WRITE, [op.COMPARE_AND_WRITE, 0x18] + [_F] * 8 + [0, 0, 0, _F, G, C],
       needs="emulate_caw"),
    _d(op.READ_CAPACITY, [op.READ_CAPACITY, 0, _F, _F, _F, _F, 0, 0, 0x01, C]),
    _d(op.SERVICE_ACTION_IN_16, [op.SERVICE_ACTION_IN_16, op.SAI_READ_CAPACITY_16]
       + [0] * 8 + [_F] * 4 + [0, C], sa=op.SAI_READ_CAPACITY_16),
    _d(op.SYNCHRONIZE_CACHE, [op.SYNCHRONIZE_CACHE, 0x02, _F, _F, _F, _F, G, _F, _F, C]),
    _d(op.SYNCHRONIZE_CACHE_16, [op.SYNCHRONIZE_CACHE_16, 0x02] + [_F] * 12 + [G, C]),
    _d(op.UNMAP, [op.UNMAP, 0, 0, 0, 0, 0, G, _F, _F, C], needs="emulate_tpu"),
    _d(op.WRITE_SAME, [op.WRITE_SAME, 0xE8, _F, _F, _F, _F, G, _F, _F, C],
       needs="max_write_same_len"),
    _d(op.WRITE_SAME_16, [op.WRITE_SAME_16, 0xE8] + [_F] * 12 + [G, C],
       needs="max_write_same_len"),
    _d(op.VERIFY, [op.VERIFY, 0, _F, _F, _F, _F, G, _F, _F, C]),
    _d(op.VERIFY_16, [op.VERIFY_16, 0] + [_F] * 12 + [G, C]),
    _d(op.START_STOP, [op.START_STOP, 0x01, 0, 0, 0x01, C]),
    _d(op.MODE_SELECT, [op.MODE_SELECT, 0x10, 0, 0, _F, C]),
    _d(op.MODE_SELECT_10, [op.MODE_SELECT_10, 0x10, 0, 0, 0, 0, 0, _F, _F, C]),
    _d(op.MODE_SENSE, [op.MODE_SENSE, 0x08, _F, _F, _F, C]),
    _d(op.MODE_SENSE_10, [op.MODE_SENSE_10, 0x18, _F, _F, 0, 0, 0, _F, _F, C]),
    *(
        _d(op.PERSISTENT_RESERVE_IN, [op.PERSISTENT_RESERVE_IN, sa, 0, 0, 0, 0, 0, _F, _F, C],
           sa=sa, needs="emulate_pr")
        for sa in (op.PRI_READ_KEYS, op.PRI_READ_RESERVATION, op.PRI_REPORT_CAPABILITIES,
                   op.PRI_READ_FULL_STATUS)
    ),
    *(
        _d(op.PERSISTENT_RESERVE_OUT, [op.PERSISTENT_RESERVE_OUT, sa, _F, 0, 0, _F, _F, _F, _F, C],
           sa=sa, needs="emulate_pr")
        for sa in (op.PRO_REGISTER, op.PRO_RESERVE, op.PRO_RELEASE, op.PRO_CLEAR,
                   op.PRO_PREEMPT, op.PRO_PREEMPT_AND_ABORT,
                   op.PRO_REGISTER_AND_IGNORE_EXISTING_KEY)
    ),
    _d(op.RELEASE, [op.RELEASE, 0, 0, 0, 0, C], needs="emulate_pr"),
    _d(op.RELEASE_10, [op.RELEASE_10, 0, 0, 0, 0, 0, 0, _F, _F, C], needs="emulate_pr"),
    _d(op.RESERVE, [op.RESERVE, 0, 0, 0, 0, C], needs="emulate_pr"),
    _d(op.RESERVE_10, [op.RESERVE_10, 0, 0, 0, 0, 0, 0, _F, _F, C], needs="emulate_pr"),
    _d(op.REQUEST_SENSE, [op.REQUEST_SENSE, 0, 0, 0, _F, C]),
    _d(op.INQUIRY, [op.INQUIRY, 0x01, _F, _F, _F, C]),
    _d(op.REPORT_LUNS, [op.REPORT_LUNS, 0, _F, 0, 0, 0, _F, _F, _F, _F, 0, C]),
    _d(op.TEST_UNIT_READY, [op.TEST_UNIT_READY, 0, 0, 0, 0, C]),
    _d(op.MAINTENANCE_IN, [op.MAINTENANCE_IN, 0xE0 | op.MI_REPORT_TARGET_PGS, 0, 0, 0, 0,
                           _F, _F, _F, _F, 0, C], sa=op.MI_REPORT_TARGET_PGS),
    _d(op.MAINTENANCE_IN, [op.MAINTENANCE_IN, op.MI_REPORT_SUPPORTED_OPERATION_CODES, 0x87, _F,
                           _F, _F, _F, _F, _F, _F, 0, C], sa=op.MI_REPORT_SUPPORTED_OPERATION_CODES),
)


def _enabled(dev: Device) -> list[Descriptor]:
    return [d for d in DESCRIPTORS if not d.needs or dev.attrs.get(d.needs, 0)]


def _timeouts(rctd: int) -> bytes:
    return bytes([0x00, 0x0A]) + bytes(10) if rctd else b""


def report(dev: Device, cdb: bytes | memoryview) -> bytes | None:
    """The parameter data for this CDB, or None for INVALID FIELD IN CDB."""
    rctd = (cdb[2] >> 7) & 1
    opts = cdb[2] & 0x3
    descs = _enabled(dev)
    if opts == 0:
        body = b"".join(
            bytes([d.opcode, 0]) + d.sa.to_bytes(2, "big")
            + bytes([0, (rctd << 1) | int(d.sa_valid)]) + len(d.usage).to_bytes(2, "big")
            + _timeouts(rctd)
            for d in descs
        )
        # LIO stores the length minus 3 (not 4); kept so both engines answer alike.
        return (len(body) + 4 - 3).to_bytes(4, "big") + body
    want_op = cdb[3]
    want_sa = (cdb[4] << 8) | cdb[5]
    found: Descriptor | None = None
    for d in descs:
        if d.opcode != want_op:
            continue
        if opts == 1:
            if d.sa_valid:
                return None
            found = d
        elif opts == 2:
            if d.sa_valid and d.sa == want_sa:
                found = d
            elif not d.sa_valid:
                return None
        elif d.sa == want_sa:
            found = d
    if found is None:
        return bytes([0, (rctd << 7) | SUPPORT_NOT])
    return (bytes([0, (rctd << 7) | SUPPORT_FULL]) + len(found.usage).to_bytes(2, "big")
            + found.usage + _timeouts(rctd))

"""LIO's sense answers, built once as shared immutable results.

The key/ASC/ASCQ triples follow target_core_transport.c's sense_detail_table. LIO builds
fixed-format sense (70h, additional length 0Ah, 18 bytes) unless the LUN has more than 2^32
blocks, where it switches to descriptor format (72h) and says so with D_SENSE in the control
mode page; `to_descriptor` converts a fixed answer for those LUNs. LIO sets no
sense-key-specific field pointer, so neither do we: the guest sees the same bytes either way.
"""

from __future__ import annotations

from vhostscsi.scsi.result import ScsiResult, Status

__all__ = ["fixed_sense", "descriptor_sense", "check", "Reason"]

NO_SENSE = 0x0
NOT_READY = 0x2
MEDIUM_ERROR = 0x3
HARDWARE_ERROR = 0x4
ILLEGAL_REQUEST = 0x5
UNIT_ATTENTION = 0x6
DATA_PROTECT = 0x7
ABORTED_COMMAND = 0xB
MISCOMPARE = 0xE


def fixed_sense(key: int, asc: int, ascq: int, info: int | None = None) -> bytes:
    """18-byte fixed-format sense as scsi_build_sense_buffer (+ scsi_set_sense_information)."""
    buf = bytearray(18)
    buf[0] = 0x70
    buf[2] = key
    buf[7] = 0x0A
    buf[12] = asc
    buf[13] = ascq
    if info is not None:
        buf[0] |= 0x80
        buf[3:7] = (info & 0xFFFFFFFF).to_bytes(4, "big")
    return bytes(buf)


def descriptor_sense(key: int, asc: int, ascq: int, info: int | None = None) -> bytes:
    """Descriptor-format sense (72h) as scsi_build_sense_buffer: the 8-byte header, plus an INFORMATION
    descriptor (scsi_set_sense_information) when there is an `info`."""
    buf = bytearray((0x72, key, asc, ascq, 0, 0, 0, 0))
    if info is not None:
        buf += bytes((0x00, 0x0A, 0x80, 0x00)) + (info & (2**64 - 1)).to_bytes(8, "big")
        buf[7] = 12
    return bytes(buf)


def check(key: int, asc: int, ascq: int = 0, info: int | None = None) -> ScsiResult:
    """A CHECK CONDITION result carrying that sense."""
    return ScsiResult(Status.CHECK_CONDITION, fixed_sense(key, asc, ascq, info), 0)


class Reason:
    """LIO's TCM_* failure reasons, each a ready-made result."""

    NON_EXISTENT_LUN = check(ILLEGAL_REQUEST, 0x25, 0x00)
    UNSUPPORTED_SCSI_OPCODE = check(ILLEGAL_REQUEST, 0x20, 0x00)
    INVALID_CDB_FIELD = check(ILLEGAL_REQUEST, 0x24, 0x00)
    UNKNOWN_MODE_PAGE = INVALID_CDB_FIELD
    INVALID_PARAMETER_LIST = check(ILLEGAL_REQUEST, 0x26, 0x00)
    PARAMETER_LIST_LENGTH_ERROR = check(ILLEGAL_REQUEST, 0x1A, 0x00)
    WRITE_PROTECTED = check(DATA_PROTECT, 0x27, 0x00)
    ADDRESS_OUT_OF_RANGE = check(ILLEGAL_REQUEST, 0x21, 0x00)
    INVALID_FIELD_IN_COMMAND_IU = check(ILLEGAL_REQUEST, 0x0E, 0x03)
    LOGICAL_UNIT_COMMUNICATION_FAILURE = check(NOT_READY, 0x08, 0x00)
    # An offline device (Device.set_offline): its medium is gone (backing file deleted, block device
    # removed), as LIO answers for a missing medium; or not ready for a cause it cannot report.
    MEDIUM_NOT_PRESENT = check(NOT_READY, 0x3A, 0x00)
    LOGICAL_UNIT_NOT_READY = check(NOT_READY, 0x04, 0x00)
    INSUFFICIENT_REGISTRATION_RESOURCES = check(ILLEGAL_REQUEST, 0x55, 0x04)
    # Backstore failures (errno -> sense; see backstores/errors.py)
    SPACE_ALLOCATION_FAILED = check(DATA_PROTECT, 0x27, 0x07)
    READ_ERROR = check(MEDIUM_ERROR, 0x11, 0x00)
    WRITE_ERROR = check(MEDIUM_ERROR, 0x0C, 0x00)
    RESERVATION_CONFLICT = ScsiResult(Status.RESERVATION_CONFLICT, b"", 0)


def miscompare(offset: int) -> ScsiResult:
    """MISCOMPARE DURING VERIFY OPERATION with the offset of the first differing byte."""
    return check(MISCOMPARE, 0x1D, 0x00, info=offset)


_DESC: dict[bytes, ScsiResult] = {}


def to_descriptor(r: ScsiResult) -> ScsiResult:
    """The descriptor-format twin of a fixed-format CHECK CONDITION (LIO for > 2^32 blocks)."""
    d = _DESC.get(r.sense)
    if d is None:
        f = r.sense
        info = int.from_bytes(f[3:7], "big") if f[0] & 0x80 else None  # VALID: INFORMATION is set
        d = ScsiResult(r.status, descriptor_sense(f[2] & 0x0F, f[12], f[13], info), r.data_in_len)
        if len(_DESC) < 1024:
            _DESC[r.sense] = d
    return d


def unit_attention(asc: int, ascq: int) -> ScsiResult:
    """A pending unit attention, reported as CHECK CONDITION."""
    return check(UNIT_ATTENTION, asc, ascq)

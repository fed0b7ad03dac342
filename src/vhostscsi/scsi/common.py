"""Small helpers every command handler shares: replies, transfer-length checks, directions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from vhostscsi.scsi.buffers import scatter, total
from vhostscsi.scsi.result import ScsiResult, good
from vhostscsi.scsi.sense import Reason

if TYPE_CHECKING:
    from vhostscsi.scsi.port import LunEntry, TargetPort

__all__ = ["reply", "control_size_check", "admit", "note_transfer", "DIR_NONE", "DIR_IN", "DIR_OUT", "direction"]

DIR_NONE, DIR_IN, DIR_OUT = 0, 1, 2


def direction(dout: Sequence[memoryview], din: Sequence[memoryview]) -> int:
    """The transport's data direction, as vhost-scsi derives it from the descriptor chain."""
    if dout and total(dout):
        return DIR_OUT
    if din and total(din):
        return DIR_IN
    return DIR_NONE


def reply(din: Sequence[memoryview], data: bytes | bytearray, alloc: int,
          length: int | None = None) -> ScsiResult:
    """Return emulated parameter data as LIO does: copy min(length, alloc, buffers) bytes.

    ``length`` is what LIO completes the command with (target_complete_cmd_with_length);
    it defaults to len(data).
    """
    if length is None:
        length = len(data)
    dl = min(alloc, total(din)) if din else 0  # LIO's data_length after the size check
    n = min(length, dl)
    if n:
        if len(data) < n:
            data = bytes(data) + bytes(n - len(data))
        scatter(din, data, n)
    return good(n, dl - n)  # target_complete_cmd_with_length adds what was not produced


def note_transfer(port: TargetPort, size: int, dout: Sequence[memoryview],
                  din: Sequence[memoryview]) -> int:
    """target_cmd_size_check's residual: |CDB transfer length - buffers| (kept by the port for
    this command, added to whatever it answers); returns the buffers' length."""
    if dout:
        have = total(dout)
        if not have and din:
            have = total(din)
    else:
        have = total(din) if din else 0
    if have != size:
        port.resid_base = size - have if size > have else have - size
    return have


def control_size_check(size: int, dout: Sequence[memoryview]) -> ScsiResult | None:
    """target_cmd_size_check for a control CDB: a data-out shorter than the CDB says fails."""
    if dout:
        out = total(dout)
        if out and size > out:
            return Reason.INVALID_CDB_FIELD
    return None


def admit(port: TargetPort, lun: LunEntry, nexus: str, cdb: bytes | memoryview,
          dout: Sequence[memoryview], din: Sequence[memoryview], size: int) -> ScsiResult | None:
    """The checks between parsing and executing a control command, in LIO's order:
    transfer length against the data-out, then unit attention and reservations."""
    note_transfer(port, size, dout, din)
    bad = control_size_check(size, dout)
    if bad is not None:
        return bad
    return port.gate(lun, nexus, cdb, dout, din)

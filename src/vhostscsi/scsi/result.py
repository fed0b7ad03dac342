"""What `TargetPort.execute` hands back: status, sense bytes and how much data went in.

Results are immutable so the common ones (GOOD with no data, each fixed sense answer) are built
once and shared by every command: the data path allocates nothing it does not have to.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["ScsiResult", "Status", "good"]


class Status:
    """SAM status codes (plain ints: the virtio layer writes them straight into a response)."""

    GOOD = 0x00
    CHECK_CONDITION = 0x02
    CONDITION_MET = 0x04
    BUSY = 0x08
    RESERVATION_CONFLICT = 0x18
    TASK_SET_FULL = 0x28
    ACA_ACTIVE = 0x30
    TASK_ABORTED = 0x40


class ScsiResult(NamedTuple):
    """One command's outcome.

    ``data_in_len`` is the number of bytes placed at the start of the data-in buffers.
    ``residual`` is LIO's residual_count, which kernel vhost-scsi writes into the virtio
    response's resid as is: the gap between the transfer length the CDB asks for and the
    buffers the initiator gave (over- or underflow, both positive), plus data-in the command
    produced less of; 0 when the command failed before LIO compared the two.
    """

    status: int
    sense: bytes
    data_in_len: int
    residual: int = 0


_GOOD: dict[int, ScsiResult] = {}


def good(data_in_len: int = 0, residual: int = 0) -> ScsiResult:
    """The shared GOOD result for a given transfer length (one object per distinct length)."""
    if residual:
        return ScsiResult(Status.GOOD, b"", data_in_len, residual)
    r = _GOOD.get(data_in_len)
    if r is None:
        r = ScsiResult(Status.GOOD, b"", data_in_len)
        if len(_GOOD) < 4096:
            _GOOD[data_in_len] = r
    return r


GOOD = good(0)
GOOD_BY_LENGTH = _GOOD  # good(n) for the lengths seen so far: a dict lookup is cheaper than the call

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

    ``data_in_len`` is the number of bytes placed at the start of the data-in buffers; the
    transport reports ``expected - data_in_len`` as the residual, as LIO's underflow does.
    """

    status: int
    sense: bytes
    data_in_len: int


_GOOD: dict[int, ScsiResult] = {}


def good(data_in_len: int = 0) -> ScsiResult:
    """The shared GOOD result for a given transfer length (one object per distinct length)."""
    r = _GOOD.get(data_in_len)
    if r is None:
        r = ScsiResult(Status.GOOD, b"", data_in_len)
        if len(_GOOD) < 4096:
            _GOOD[data_in_len] = r
    return r


GOOD = good(0)

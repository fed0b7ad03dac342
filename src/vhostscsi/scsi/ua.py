"""Unit attention conditions, queued per (LUN, initiator) as target_core_ua.c does.

A LUN keeps ``ua: dict[nexus, list[(asc, ascq)]]`` and drops empty entries, so the data path
tests one dict for truthiness to know nothing is pending.
"""

from __future__ import annotations

import threading
from typing import Protocol

from vhostscsi.scsi import opcodes as op

__all__ = ["allocate", "take", "exempt"]

# Unit attentions for one port's LUN can be raised from another port's thread (a PR change
# on a shared device). Queue changes are rare, so one small lock covers them; the data path
# never takes it (it only tests `lun.ua` for emptiness).
LOCK = threading.Lock()

# SAM: INQUIRY, REPORT LUNS and REQUEST SENSE run despite a pending unit attention.
_EXEMPT = frozenset((op.INQUIRY, op.REPORT_LUNS, op.REQUEST_SENSE))

POWER_ON_RESET = (0x29, 0x00)
BUS_DEVICE_RESET = (0x29, 0x03)
I_T_NEXUS_LOSS = (0x29, 0x07)
MODE_PARAMETERS_CHANGED = (0x2A, 0x01)
RESERVATIONS_PREEMPTED = (0x2A, 0x03)
RESERVATIONS_RELEASED = (0x2A, 0x04)
REGISTRATIONS_PREEMPTED = (0x2A, 0x05)
CAPACITY_DATA_HAS_CHANGED = (0x2A, 0x09)
REPORTED_LUNS_DATA_HAS_CHANGED = (0x3F, 0x0E)


class HasUa(Protocol):
    ua: dict[str, list[tuple[int, int]]]


def exempt(opcode: int) -> bool:
    """Whether a command runs with a unit attention pending (target_scsi3_ua_check)."""
    return opcode in _EXEMPT


def allocate(lun: HasUa, nexus: str, asc: int, ascq: int) -> None:
    """Queue a unit attention with core_scsi3_ua_allocate's priority rules.

    Duplicates are dropped; 29h (reset family) conditions go to the head, higher ASCQ first;
    everything else to the tail. Like LIO, only the head entry is compared for priority.
    """
    with LOCK:
        _allocate(lun, nexus, asc, ascq)


def _allocate(lun: HasUa, nexus: str, asc: int, ascq: int) -> None:
    q = lun.ua.get(nexus)
    if q is None:
        lun.ua[nexus] = [(asc, ascq)]
        return
    if (asc, ascq) in q:
        return
    head_asc, head_ascq = q[0]
    if head_asc == 0x29:
        front = asc == 0x29 and ascq > head_ascq
    elif head_asc == 0x2A:
        front = asc == 0x29 or ascq > head_asc
    else:
        front = False
    if front:
        q.insert(0, (asc, ascq))
    else:
        q.append((asc, ascq))


def take(lun: HasUa, nexus: str, intlck_ctrl: int = 0) -> tuple[int, int] | None:
    """Report the highest-priority condition; with UA_INTLCK_CTRL 00b clear them all (LIO)."""
    with LOCK:
        q = lun.ua.get(nexus)
        if not q:
            return None
        head = q[0]
        if intlck_ctrl == 0:
            del lun.ua[nexus]
        return head


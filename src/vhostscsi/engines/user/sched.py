"""The daemon's CPU scheduling policy: SCHED_BATCH by default, so a kick never preempts the guest's vCPU.

Measured in a TCG guest on a 2-core host (bench/README.md, "In-guest gap"): the guest's kick wakes the daemon,
and under the normal policy the woken daemon preempts the thread that kicked (the vCPU, still busy submitting)
for its whole wake-up, some 25-40 us of CPU here. With other work on the host, at QD16 the vCPU was preempted
twice as often per request as with QEMU's built-in virtio-scsi and waited three times longer for a CPU: that
was most of the in-guest IOPS gap on a busy host (0.91 -> 1.28 of the built-in at QD16 in SCHED_BATCH). On a
quiet host the daemon wakes on an idle CPU either way and the policy changes nothing. SCHED_BATCH (what `chrt -b 0` does) keeps the daemon's fair share of CPU and its
nice level but marks it non-interactive: a wake-up does not preempt the task running on that CPU, so the
vCPU keeps submitting, the daemon runs on another CPU or when the vCPU blocks, and each wake-up finds more
requests. Any user may switch its own process from SCHED_OTHER to SCHED_BATCH (no privilege needed).

``VHOSTSCSI_SCHED=other`` (environment of `vhostscsi serve`) keeps the normal policy. A policy set from outside
(systemd's CPUSchedulingPolicy=, `chrt` on the daemon's launcher: anything but SCHED_OTHER) is left alone.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("vhostscsi.serve")

SCHED_ENV = "VHOSTSCSI_SCHED"
_CHOICES = ("batch", "other")


def apply_policy(env: dict[str, str] | None = None) -> str:
    """Set this process's policy as ``$VHOSTSCSI_SCHED`` says (default batch); returns what was done, for the log.

    Threads and processes started afterwards inherit the policy."""
    raw = (os.environ if env is None else env).get(SCHED_ENV, "").strip().lower() or "batch"
    if raw not in _CHOICES:
        log.warning("%s=%r is not one of %s; using batch", SCHED_ENV, raw, ", ".join(_CHOICES))
        raw = "batch"
    if raw == "other":
        return "normal (SCHED_OTHER, as asked)"
    if not hasattr(os, "SCHED_BATCH"):  # pragma: no cover - not Linux
        return "unchanged (no SCHED_BATCH here)"
    current = os.sched_getscheduler(0)
    if current != os.SCHED_OTHER:
        return f"unchanged (policy {current} set from outside)"
    try:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except OSError as e:  # a seccomp filter or an odd kernel: serving matters more than the policy
        log.warning("could not switch to SCHED_BATCH (%s); the guest's kicks may preempt its vCPU", e.strerror or e)
        return "normal (SCHED_BATCH refused)"
    return "SCHED_BATCH"

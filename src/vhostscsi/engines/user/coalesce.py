"""Interrupt coalescing for request queues: when to hold a ring's call (the guest's interrupt) and for how long.

Why: under TCG there is no irqfd. QEMU's main loop reads our call eventfd and raises the MSI-X interrupt while
holding its big lock, and the vCPU then waits for that lock: each call costs the guest a round trip through
QEMU's main loop (bench/README.md, "In-guest gap"). Signalling once for several completions raised in-guest
QD16 randread from 0.76 to 1.03 and randwrite from 0.74 to 1.22 of QEMU's built-in device (bench/README.md,
"Interrupt coalescing, shipped"). On KVM the call fd is an irqfd, an interrupt is cheap and a
hold only adds latency: so this is off unless the administrator asks for it (`vhostscsi serve --coalesce-us N`,
or VHOSTSCSI_COALESCE_US).

This module is the decision only: a pure class with an injected clock, no fds and no I/O, so every rule is
tested with a fake clock. The engine (rings.RingIO) asks it after each batch of completions, arms a timerfd for
`deadline` when a hold starts, and decides and signals (SplitVirtqueue.should_notify, then the call fd) when the
hold ends: by the timer, or by any path that stops the ring (connection.py flushes every hold first).

The rule (adaptive, so that QD1 pays almost nothing):
- A hold is worth it only when the guest has more requests in flight, which is exactly when another request is
  completed while a call is held. So a hold starts if the previous hold saw such a completion ("it batched"),
  or if it is the first hold after a batching one to catch nothing: one miss amid batching holds is forgiven
  (a QD16 guest sometimes submits a whole batch at once and waits; backing off after every such miss left
  0.68 interrupts per QD16 request instead of 0.43, bench/README.md). Two misses in a row leave holding mode.
- Otherwise the call is signalled at once, as without coalescing, and a hold is only tried as a probe: the first
  completion on a fresh ring, then after `interval` completions signalled at once. Each probe that batches
  nothing doubles the interval (PROBE_FIRST .. PROBE_MAX), and a hold that batches resets it: a QD1 guest pays
  one hold per PROBE_MAX requests at most once it settles (bound / 64 on average: ~1.6 us at 100 us), and a
  guest that goes from QD1 to QD16 is noticed within PROBE_MAX completions.
- A hold never outlasts `bound` seconds from the completion that started it; completions joining it wait with
  it and never extend it. A completion that finds the hold already past its deadline (the timer not yet run)
  ends it: the caller signals at once.

Why not SPDK's rule (vhost_controller_set_coalescing: a delay scaled by how far a queue's request rate is above
a threshold): a rate cannot tell QD1 from QD16 here. A TCG guest does ~5,000 requests a second at QD1 and
~8,000 at QD16; what differs is whether requests overlap, which the "completed during a hold" test sees directly.
"""

from __future__ import annotations

import enum
import logging
import os
import time
from typing import Callable, Mapping

log = logging.getLogger("vhostscsi.serve")

COALESCE_ENV = "VHOSTSCSI_COALESCE_US"
MAX_COALESCE_US = 10_000  # 10 ms: a longer hold is a stall, not coalescing
PROBE_FIRST = 8
PROBE_MAX = 64


class Verdict(enum.Enum):
    """What the engine does with the completions it just pushed."""

    NOTIFY = "notify"  # decide and signal now (should_notify, call fd), exactly as without coalescing
    HOLD = "hold"  # a hold starts: arm the timer for `deadline`; decide and signal when the hold ends
    JOINED = "joined"  # a hold is running: these completions wait for its end


class CoalescePolicy:
    """Per request ring: whether to hold its call after a batch of completions (see the module docstring).

    `bound`: the longest a completion may wait for its interrupt, in seconds (0: never hold: every verdict is
    NOTIFY, which is today's behaviour). `clock`: monotonic seconds (injected for tests).
    """

    __slots__ = ("bound", "holding", "deadline", "_clock", "_joined", "_batched", "_missed", "_interval",
                 "_countdown", "_probe_first", "_probe_max", "holds", "batched_holds")

    def __init__(self, bound: float, clock: Callable[[], float] = time.monotonic, *,
                 probe_first: int = PROBE_FIRST, probe_max: int = PROBE_MAX) -> None:
        if bound < 0 or probe_first < 1 or probe_max < probe_first:
            raise ValueError(f"bad coalescing parameters: bound {bound}, probes {probe_first}..{probe_max}")
        self.bound = bound
        self.holding = False
        self.deadline = 0.0  # while holding: when the hold must end (the timer is armed for it)
        self._clock = clock
        self._joined = False  # a completion joined the running hold
        self._batched = False  # holding mode: the last hold that batched was not followed by two that did not
        self._missed = False  # in holding mode, the last hold caught nothing (one more such hold ends the mode)
        self._probe_first = probe_first
        self._probe_max = probe_max
        self._interval = probe_first  # completions signalled at once after a fruitless hold, before the next probe
        self._countdown = 0  # completions still to signal at once before probing (0: the next one probes)
        self.holds = 0  # holds started (for logs and tests)
        self.batched_holds = 0  # holds that ended with a completion joined

    def will_hold(self) -> bool:
        """Whether the next completions may be held. False promises that `completions()` answers NOTIFY: the
        engine then lets the C wake-up decide and signal exactly as without coalescing (no Python on the QD1
        path between probes) and calls `completions()` afterwards, to count towards the next probe."""
        return self.bound > 0 and (self.holding or self._batched or self._countdown <= 0)

    def completions(self) -> Verdict:
        """The engine pushed one or more completions (one wake-up's batch) and has a call fd: what now?"""
        if self.bound <= 0:
            return Verdict.NOTIFY
        if self.holding:
            self._joined = True  # another request completed while the call was held: the guest had it in flight
            if self._clock() < self.deadline:
                return Verdict.JOINED
            self.end()  # the hold is due and its timer has not run yet: signal now, for these and the held ones
            return Verdict.NOTIFY
        if self._batched or self._countdown <= 0:
            self.holding = True
            self.deadline = self._clock() + self.bound
            self._joined = False
            self.holds += 1
            return Verdict.HOLD
        self._countdown -= 1
        return Verdict.NOTIFY

    def end(self) -> None:
        """The hold is over (its timer, or a flush on a stop path); the caller decides and signals now. Learns
        from it whether the next completions should be held. A no-op when not holding."""
        if not self.holding:
            return
        self.holding = False
        if self._joined:
            self._batched = True
            self._missed = False
            self.batched_holds += 1
            self._interval = self._probe_first
            self._countdown = 0
        elif self._batched and not self._missed:
            self._missed = True  # one hold that caught nothing amid batching ones: hold once more
        else:
            self._batched = False
            self._missed = False
            self._countdown = self._interval
            self._interval = min(2 * self._interval, self._probe_max)


def parse_coalesce_us(text: str) -> int:
    """A `--coalesce-us` / VHOSTSCSI_COALESCE_US value: whole microseconds, 0 (off) .. MAX_COALESCE_US.
    Raises ValueError with the one line to show."""
    raw = text.strip()
    try:
        us = int(raw, 10)
    except ValueError:
        raise ValueError(f"{text!r} is not a whole number of microseconds "
                         f"(0 = off, up to {MAX_COALESCE_US:,})") from None
    if not 0 <= us <= MAX_COALESCE_US:
        raise ValueError(f"{us} microseconds is out of range (0 = off, up to {MAX_COALESCE_US:,})")
    return us


def coalesce_us_from_env(environ: Mapping[str, str] | None = None) -> int:
    """$VHOSTSCSI_COALESCE_US in microseconds, 0 when unset; a bad value is logged once and means off (the
    daemon still starts: an environment variable has no command line to complain to)."""
    env = os.environ if environ is None else environ
    raw = env.get(COALESCE_ENV, "")
    if not raw.strip():
        return 0
    try:
        return parse_coalesce_us(raw)
    except ValueError as e:
        log.warning("%s: %s; interrupt coalescing stays off", COALESCE_ENV, e)
        return 0

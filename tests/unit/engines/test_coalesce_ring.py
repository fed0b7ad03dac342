"""A request ring with interrupt coalescing (rings.RingIO with a CoalescePolicy and a timerfd): what reaches the
call eventfd. Driver side: the host driver's DriverRing over memfd RAM; device side: the real SplitVirtqueue and
VirtioScsi, through the C wake-up or the pure path, whichever this process runs (VHOSTSCSI_NATIVE). The policy's
clock is fake; nothing is timed."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from unit.engines.test_polling import Clock, Rig

from vhostscsi.engines.user.coalesce import CoalescePolicy
from vhostscsi.engines.user.timerfd import Timerfd

BOUND = 100e-6


def calls(rig: Rig) -> int:
    """Signals on the call eventfd since the last look (the counter, consumed)."""
    try:
        return os.eventfd_read(rig.ring.call)  # type: ignore[arg-type]
    except BlockingIOError:
        return 0


def coalescing(rig: Rig, bound: float = BOUND) -> Clock:
    clock = Clock()
    rig.ring.hold = CoalescePolicy(bound, clock)
    rig.ring.timer = Timerfd()
    return clock


def batch(rig: Rig, n: int) -> int:
    """Post up to n requests, as many as the ring has room for (each takes two descriptors; a driver with a full
    ring waits for its interrupt), then serve them as a kick's wake-up would."""
    for _ in range(min(n, len(rig.driver.free) // 2)):
        rig.post()
    return rig.ring.serve(rig.device)


@pytest.fixture(params=[True, False], ids=["event_idx", "no_event_idx"])
def event_idx(request) -> bool:
    return request.param


def test_a_held_call_is_decided_once_over_everything_pushed_since_the_last_signal(event_idx: bool) -> None:
    rig = Rig(event_idx)
    try:
        clock = coalescing(rig)
        assert batch(rig, 2) == 2
        assert calls(rig) == 0 and rig.ring.hold.holding  # the probe: a fresh ring holds its first completions
        clock.now += BOUND / 2
        assert batch(rig, 3) == 3
        assert calls(rig) == 0  # joined the hold
        assert rig.ring.flush(rig.device) is True
        assert calls(rig) == 1
        assert rig.ring.flush(rig.device) is False and calls(rig) == 0  # nothing held: nothing more
        rig.reap()
        assert rig.completed == 5
        assert batch(rig, 1) == 1  # the last hold batched: the next completion is held again
        assert calls(rig) == 0 and rig.ring.hold.holding
        rig.ring.flush(rig.device)
        assert calls(rig) == 1
    finally:
        rig.close()


def test_a_completion_past_the_deadline_is_signalled_at_once(event_idx: bool) -> None:
    rig = Rig(event_idx)
    try:
        clock = coalescing(rig)
        batch(rig, 1)
        assert calls(rig) == 0
        clock.now += 2 * BOUND  # the timer is late
        batch(rig, 1)
        assert calls(rig) == 1 and not rig.ring.hold.holding
    finally:
        rig.close()


def test_a_broken_ring_ends_the_hold_and_is_signalled(event_idx: bool) -> None:
    rig = Rig(event_idx)
    try:
        coalescing(rig)
        batch(rig, 1)
        assert calls(rig) == 0
        rig.vq.broken = True
        rig.vq.broken_reason = "test"
        rig.ring.completed(rig.device, 1)
        assert calls(rig) == 1 and not rig.ring.hold.holding
    finally:
        rig.close()


# A driver's moves: post n requests and let the device serve them (a kick's wake-up), reap what is used (the
# guest's interrupt handler), the hold's timer, time passing.
moves = st.lists(st.one_of(st.tuples(st.just("batch"), st.integers(1, 6)), st.just(("reap", 0)),
                           st.just(("flush", 0)), st.tuples(st.just("wait"), st.integers(1, 300))), max_size=60)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(moves)
def test_holding_off_signals_exactly_as_today(event_idx: bool, seq: list[tuple[str, int]]) -> None:
    """A ring with a policy whose bound is 0 (call fd -1 to the C side, the decision in Python) signals exactly
    when a ring without one does (the C side's own decision), move for move."""
    today, off = Rig(event_idx), Rig(event_idx)
    try:
        coalescing(off, bound=0.0)
        for what, n in seq:
            for rig in (today, off):
                if what == "batch":
                    batch(rig, n)
                elif what == "reap":
                    rig.reap()
                elif what == "flush":
                    assert rig.ring.flush(rig.device) is False
            assert calls(today) == calls(off)
            assert today.driver.used_idx() == off.driver.used_idx()
        assert off.ring.hold.holds == 0
    finally:
        today.close()
        off.close()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(moves)
@example([("batch", 1), ("batch", 2)] + [("batch", 6)] * 5)  # more than the ring holds, never reaped (found by CI)
def test_no_interrupt_is_lost(event_idx: bool, seq: list[tuple[str, int]]) -> None:
    """Whatever the moves, once the hold ends (its timer), a driver that reaped everything it was told about
    has been told about every completion: used entries it has not seen always come with a call after them."""
    rig = Rig(event_idx)
    try:
        clock = coalescing(rig)
        told = True  # a call arrived since the driver last reaped (or nothing is pending)
        for what, n in seq:
            if what == "batch":
                batch(rig, n)
            elif what == "reap":
                rig.reap()
                told = False
            elif what == "flush":
                rig.ring.flush(rig.device)
            else:
                clock.now += n * 1e-6
                if rig.ring.hold.holding and clock.now >= rig.ring.hold.deadline:
                    rig.ring.flush(rig.device, disarm=False)  # what the timerfd's callback does
            told = told or calls(rig) > 0
        rig.ring.flush(rig.device)  # the timer, at the latest
        told = told or calls(rig) > 0
        assert told or rig.driver.used_idx() == rig.driver.last_used
    finally:
        rig.close()

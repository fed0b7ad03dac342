"""The interrupt-coalescing policy (engines/user/coalesce.py), with a fake clock in whole microseconds: nothing is
timed. The engine's side (timerfd, flush paths) is tested in test_coalesce_ring.py and test_coalesce_daemon.py."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vhostscsi.engines.user.coalesce import (
    MAX_COALESCE_US,
    PROBE_FIRST,
    PROBE_MAX,
    CoalescePolicy,
    Verdict,
    coalesce_us_from_env,
    parse_coalesce_us,
)

BOUND = 100


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000

    def __call__(self) -> int:
        return self.now


def policy(bound: int = BOUND) -> tuple[CoalescePolicy, Clock]:
    clock = Clock()
    return CoalescePolicy(bound, clock), clock  # type: ignore[arg-type]  # integer microseconds work as well


def qd1(p: CoalescePolicy, clock: Clock, n: int) -> list[Verdict]:
    """A guest with one request in flight: nothing completes while a call is held; the hold ends by its timer."""
    verdicts = []
    for _ in range(n):
        clock.now += 150
        v = p.completions()
        verdicts.append(v)
        assert v is not Verdict.JOINED
        if v is Verdict.HOLD:
            clock.now = p.deadline
            p.end()
    return verdicts


def qd16(p: CoalescePolicy, clock: Clock, n: int) -> list[Verdict]:
    """A guest with many requests in flight: a completion every 20 us, holds ended by their timer."""
    verdicts = []
    for _ in range(n):
        if p.holding and clock.now + 20 >= p.deadline:
            clock.now = p.deadline
            p.end()
        clock.now += 20
        verdicts.append(p.completions())
    return verdicts


# ---- the rule ---------------------------------------------------------------------------------------------------
def test_a_fresh_ring_probes_with_its_first_completion() -> None:
    p, clock = policy()
    assert p.completions() is Verdict.HOLD
    assert p.holding and p.deadline == clock.now + BOUND


def test_qd1_stops_holding_after_the_probe_and_probes_ever_more_rarely() -> None:
    p, clock = policy()
    verdicts = qd1(p, clock, 1000)
    holds = [i for i, v in enumerate(verdicts) if v is Verdict.HOLD]
    assert holds[0] == 0
    assert verdicts[1 : 1 + PROBE_FIRST] == [Verdict.NOTIFY] * PROBE_FIRST  # the probe caught nothing
    gaps = [b - a - 1 for a, b in zip(holds, holds[1:])]
    assert gaps[0] == PROBE_FIRST and all(g2 == min(2 * g1, PROBE_MAX) for g1, g2 in zip(gaps, gaps[1:]))
    assert len(holds) <= 1000 // PROBE_MAX + 5
    assert p.batched_holds == 0


def test_qd16_holds_every_completion_after_the_first_hold() -> None:
    p, clock = policy()
    verdicts = qd16(p, clock, 500)
    assert Verdict.NOTIFY not in verdicts
    assert p.holds == p.batched_holds + p.holding  # every hold that ended had completions join it


def test_a_guest_going_from_qd1_to_qd16_is_noticed_within_one_probe_interval() -> None:
    p, clock = policy()
    qd1(p, clock, 1000)
    verdicts = qd16(p, clock, PROBE_MAX + 200)
    first = verdicts.index(Verdict.HOLD)
    assert first <= PROBE_MAX
    assert Verdict.NOTIFY not in verdicts[first:]


def test_a_completion_after_the_deadline_ends_the_hold_and_is_signalled_at_once() -> None:
    p, clock = policy()
    assert p.completions() is Verdict.HOLD
    clock.now = p.deadline  # the timer has not run yet (a busy loop)
    assert p.completions() is Verdict.NOTIFY
    assert not p.holding
    assert p.completions() is Verdict.HOLD  # a completion joined that hold, so it batched: hold again


def test_one_miss_amid_batching_holds_is_forgiven_two_leave_holding_mode() -> None:
    p, clock = policy()
    assert p.completions() is Verdict.HOLD
    clock.now += 10
    assert p.completions() is Verdict.JOINED
    p.end()  # batched
    assert p.completions() is Verdict.HOLD
    p.end()  # caught nothing: forgiven once
    assert p.completions() is Verdict.HOLD
    clock.now += 10
    assert p.completions() is Verdict.JOINED
    p.end()  # batched again: the miss is forgotten
    assert p.completions() is Verdict.HOLD
    p.end()  # a miss
    assert p.completions() is Verdict.HOLD
    p.end()  # a second one in a row: signal at once, probe later
    assert [p.completions() for _ in range(PROBE_FIRST)] == [Verdict.NOTIFY] * PROBE_FIRST
    assert p.completions() is Verdict.HOLD


def test_end_without_a_hold_is_a_no_op() -> None:
    p, _ = policy()
    p.end()
    assert not p.holding and p.holds == 0


@pytest.mark.parametrize("kw", [{"bound": -1}, {"bound": 100, "probe_first": 0},
                                {"bound": 100, "probe_first": 8, "probe_max": 4}])
def test_bad_parameters_are_refused(kw: dict) -> None:
    with pytest.raises(ValueError):
        CoalescePolicy(**kw)


# ---- properties -------------------------------------------------------------------------------------------------
# A step: (microseconds that pass, what happens then): "c" completions pushed, "f" a flush (a stop path).
steps = st.lists(st.tuples(st.integers(0, 3 * BOUND), st.sampled_from("ccccf")), max_size=200)


@settings(max_examples=300, deadline=None)
@given(steps)
def test_holding_off_is_exactly_today(seq: list[tuple[int, str]]) -> None:
    p, clock = policy(bound=0)
    for dt, what in seq:
        clock.now += dt
        if what == "c":
            assert not p.will_hold()
            assert p.completions() is Verdict.NOTIFY
        else:
            p.end()
        assert not p.holding
    assert p.holds == 0


@settings(max_examples=300, deadline=None)
@given(steps, st.integers(1, 10_000))
def test_a_completion_is_never_held_past_the_bound(seq: list[tuple[int, str]], bound: int) -> None:
    """The loop's timer fires at the deadline; every held completion is released by it, by a flush, or by a
    late completion, never more than `bound` after it was pushed."""
    p, clock = policy(bound)
    waiting: list[int] = []  # push times of the completions held now

    def release(at: int) -> None:
        assert all(at - t <= bound for t in waiting), (at, waiting, bound)
        waiting.clear()

    for dt, what in seq:
        target = clock.now + dt
        if p.holding and target >= p.deadline:  # the timer fires first
            clock.now = p.deadline
            release(clock.now)
            p.end()
        clock.now = target
        if what == "f":
            release(clock.now)
            p.end()
            continue
        before = p.deadline if p.holding else None
        may_hold = p.will_hold()
        v = p.completions()
        assert may_hold or v is Verdict.NOTIFY  # the engine's C fast path relies on it
        if v is Verdict.NOTIFY:
            release(clock.now)
            assert not p.holding
        else:
            assert p.holding and clock.now < p.deadline <= clock.now + bound
            if v is Verdict.JOINED:
                assert p.deadline == before  # joining never extends a hold
            else:
                assert before is None and p.deadline == clock.now + bound
            waiting.append(clock.now)
    assert p.holding == bool(waiting)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 10 * BOUND), min_size=1, max_size=300))
def test_qd1_like_traffic_never_holds_more_than_the_probes(gaps: list[int]) -> None:
    """Whatever the spacing, if no completion ever joins a hold, holds are only the probes: the first one, then one
    after each interval of immediate signals (PROBE_FIRST doubling to PROBE_MAX)."""
    p, clock = policy()
    notified_since_hold = None
    for gap in gaps:
        clock.now += gap
        if p.holding:  # QD1: the guest waits for this hold's interrupt before its next request
            clock.now = max(clock.now, p.deadline)
            p.end()
        v = p.completions()
        assert v is not Verdict.JOINED
        if v is Verdict.HOLD:
            assert notified_since_hold is None or notified_since_hold >= PROBE_FIRST
            notified_since_hold = 0
        else:
            assert notified_since_hold is not None
            notified_since_hold += 1
    assert p.batched_holds == 0


# ---- the setting ------------------------------------------------------------------------------------------------
def test_parse_accepts_whole_microseconds_in_range() -> None:
    assert parse_coalesce_us("0") == 0
    assert parse_coalesce_us(" 100 ") == 100
    assert parse_coalesce_us(str(MAX_COALESCE_US)) == MAX_COALESCE_US
    for bad in ("", "abc", "1.5", "-1", str(MAX_COALESCE_US + 1), "1e3"):
        with pytest.raises(ValueError) as e:
            parse_coalesce_us(bad)
        assert "\n" not in str(e.value) and "microseconds" in str(e.value)


def test_env_unset_or_empty_is_off() -> None:
    assert coalesce_us_from_env({}) == 0
    assert coalesce_us_from_env({"VHOSTSCSI_COALESCE_US": " "}) == 0
    assert coalesce_us_from_env({"VHOSTSCSI_COALESCE_US": "250"}) == 250


def test_env_bad_value_is_a_warning_and_off(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="vhostscsi.serve"):
        assert coalesce_us_from_env({"VHOSTSCSI_COALESCE_US": "fast"}) == 0
        assert coalesce_us_from_env({"VHOSTSCSI_COALESCE_US": "99999"}) == 0
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 2 and all("VHOSTSCSI_COALESCE_US" in m and "off" in m for m in msgs)

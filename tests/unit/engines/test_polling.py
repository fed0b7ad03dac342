"""Adaptive ring polling (rings.RingPoller): requests that arrive while polling are served without a kick;
an idle window re-arms kicks with no lost wake-up. The driver side is the host driver's DriverRing over memfd
RAM, the device side the real SplitVirtqueue and VirtioScsi; time is a fake clock, never measured."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vhostscsi.engines.user.loop import EventLoop
from vhostscsi.engines.user.rings import POLL_GROW_START, RingIO, RingPoller, poll_window_from_env
from vhostscsi.hostdriver.guestram import GuestRam
from vhostscsi.hostdriver.initiator import build_request
from vhostscsi.hostdriver.vring import DriverRing
from vhostscsi.virtio import scsi as vs
from vhostscsi.virtio.scsi import FIRST_REQUEST_QUEUE, VirtioScsi
from vhostscsi.virtio.virtqueue import SplitVirtqueue

Q = FIRST_REQUEST_QUEUE
WINDOW = 50e-6
TEST_UNIT_READY = bytes(6)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Rig:
    """One request ring: driver side (DriverRing), device side (VirtioScsi, RingIO with a call eventfd)."""

    def __init__(self, event_idx: bool, vq_class: type[SplitVirtqueue] = SplitVirtqueue) -> None:
        self.ram = GuestRam(8 << 20)
        self.mem = self.ram.backend_memory()
        self.driver = DriverRing(self.ram, 64, event_idx=event_idx)
        d, u, a = self.driver.uvas()
        self.vq = vq_class.from_uva(self.mem, 64, d, a, u, event_idx=event_idx)
        self.device = VirtioScsi({})  # no ports: every command completes with BAD_TARGET, which is enough here
        self.device.set_queue(Q, self.vq)
        self.ring = RingIO(Q, "test")
        self.ring.started = True
        self.ring.set_call(os.eventfd(0, os.EFD_NONBLOCK))
        self.clock = Clock()
        self.errors: list[RingIO] = []
        self.poller = RingPoller(self.ring, self.device, WINDOW, self.errors.append, clock=self.clock)
        self.posted = 0
        self.completed = 0
        self.kicks = 0  # kicks the driver would have sent (need_kick after publishing)

    def post(self) -> None:
        """The driver adds one request and kicks if the device asked for it."""
        rq = self.ram.alloc(vs.REQ_SIZE)
        resp = self.ram.alloc(vs.RESP_SIZE)
        self.ram.write(rq, build_request(TEST_UNIT_READY, target=1, lun=0, tag=self.posted))
        self.driver.add([(rq, vs.REQ_SIZE)], [(resp, vs.RESP_SIZE)])
        self.posted += 1
        if self.driver.need_kick():
            self.kicks += 1

    def reap(self) -> None:
        self.completed += len(self.driver.get_used())

    def close(self) -> None:
        self.ring.close()
        self.driver.release()
        self.mem.close()
        self.ram.close()


@pytest.fixture(params=[True, False], ids=["event_idx", "no_event_idx"])
def rig(request):
    r = Rig(request.param)
    yield r
    r.close()


def kick_and_serve(rig: Rig) -> None:
    """What Connection._on_kick does: serve the ring, then poll it."""
    assert rig.ring.serve(rig.device) > 0
    rig.poller.start()


def test_a_request_arriving_while_polling_is_served_without_a_kick(rig):
    rig.post()
    assert rig.kicks == 1
    kick_and_serve(rig)
    rig.reap()
    assert rig.completed == 1
    for n in range(2, 6):
        rig.post()
        assert rig.kicks == 1  # suppressed: the guest saves its MMIO exit
        assert rig.poller.poll() is True
        rig.reap()
        assert rig.completed == n
    assert not rig.errors


def test_an_idle_window_re_arms_kicks_and_leaves_the_loop(rig):
    rig.post()
    kick_and_serve(rig)
    assert rig.poller.poll() is True  # within the window: keep polling, nothing to do
    rig.clock.now += 2 * WINDOW
    assert rig.poller.poll() is False
    assert not rig.poller.active
    rig.post()
    assert rig.kicks == 2  # re-armed: the next request kicks us awake


def test_work_extends_the_window(rig):
    rig.post()
    kick_and_serve(rig)
    rig.clock.now += 0.9 * WINDOW
    rig.post()
    assert rig.poller.poll() is True  # served; the window starts again from now
    rig.clock.now += 0.9 * WINDOW
    assert rig.poller.poll() is True
    rig.clock.now += 0.2 * WINDOW
    assert rig.poller.poll() is False


def sleep_then_kick(rig: Rig, slept: float) -> bool:
    """Let the window pass, sleep `slept` seconds, then a request kicks us awake; returns start()'s answer."""
    rig.clock.now += 2 * rig.poller.window
    while rig.poller.active:
        rig.poller.poll()
    rig.clock.now += slept
    rig.post()
    assert rig.ring.serve(rig.device) > 0
    return rig.poller.start()


def test_the_window_shrinks_to_zero_when_requests_come_slower_than_it(rig):
    rig.post()
    kick_and_serve(rig)
    windows = []
    for _ in range(6):
        sleep_then_kick(rig, 10 * WINDOW)  # a QD1 guest under TCG: polling cannot catch its next request
        windows.append(rig.poller.window)
    assert windows[0] == WINDOW / 2 and windows[-1] == 0
    assert not rig.poller.active
    kicks = rig.kicks
    rig.post()
    assert rig.kicks == kicks + 1  # not polling: kicks are armed
    rig.ring.serve(rig.device)
    rig.reap()
    assert rig.completed == rig.posted


def test_the_window_grows_back_when_a_longer_one_would_have_caught_the_request(rig):
    rig.post()
    kick_and_serve(rig)
    for _ in range(6):
        sleep_then_kick(rig, 10 * WINDOW)
    assert rig.poller.window == 0
    windows = []
    for _ in range(4):
        sleep_then_kick(rig, WINDOW / 2)
        windows.append(rig.poller.window)
    assert windows[0] == POLL_GROW_START and windows[-1] == WINDOW
    assert rig.poller.active


class RacingQueue(SplitVirtqueue):
    """Lets the test act as the driver at the worst moment: just before the device re-arms kicks."""

    __slots__ = ("before_enable",)

    def enable_notifications(self) -> bool:
        hook = getattr(self, "before_enable", None)
        if hook is not None:
            self.before_enable = None
            hook()
        return super().enable_notifications()


@pytest.mark.parametrize("event_idx", [True, False])
def test_a_request_added_while_re_arming_is_not_lost(event_idx):
    rig = Rig(event_idx, RacingQueue)
    try:
        rig.post()
        kick_and_serve(rig)
        rig.clock.now += 2 * WINDOW
        rig.vq.before_enable = rig.post  # the driver sees kicks suppressed and does not kick
        assert rig.poller.poll() is True  # enable_notifications' re-check finds it: served, still polling
        assert rig.kicks == 1
        rig.reap()
        assert rig.completed == 2
        rig.clock.now += 2 * WINDOW
        assert rig.poller.poll() is False
    finally:
        rig.close()


def test_a_stopped_or_disabled_ring_leaves_the_loop_without_touching_the_queue(rig):
    rig.post()
    kick_and_serve(rig)
    rig.ring.enabled = False
    assert rig.poller.poll() is False
    rig.ring.enabled = True
    assert rig.poller.start() is True
    rig.device.set_queue(Q, None)
    assert rig.poller.poll() is False


def test_an_exception_while_polling_is_reported_and_stops_the_poller(rig, monkeypatch):
    rig.post()
    kick_and_serve(rig)
    rig.post()

    def boom(_index: int) -> int:
        raise RuntimeError("bug")

    monkeypatch.setattr(rig.device, "process", boom)
    monkeypatch.setattr(rig.device, "wake", lambda *_args: boom(0))  # the whole wake-up in C, where built
    assert rig.poller.poll() is False
    assert rig.errors == [rig.ring]


def test_the_poller_runs_in_the_loop_until_the_ring_is_idle(rig):
    loop = EventLoop()
    try:
        rig.post()
        kick_and_serve(rig)
        loop.add_poller(rig.poller)
        rig.post()
        loop.run_once()  # never sleeps while polling (a hang, not a timing, would show a bug)
        rig.reap()
        assert rig.completed == 2
        rig.clock.now += 2 * WINDOW
        loop.run_once()
        assert not loop.polling
    finally:
        loop.close()


def test_disabling_notifications_with_event_idx_moves_avail_event_behind():
    rig = Rig(True)
    try:
        rig.post()
        rig.ring.serve(rig.device)
        assert rig.driver.avail_event() == 1  # process() re-armed: the next request would kick
        rig.vq.disable_notifications()
        assert rig.driver.avail_event() == 0
        assert rig.vq.enable_notifications() is False
        assert rig.driver.avail_event() == 1
    finally:
        rig.close()


# Random interleavings of the driver (post, reap) and the device (kick-driven serve, poll, time passing).
# Invariant: once the device is quiescent (not polling, no kick pending) every posted request is completed.
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(event_idx=st.booleans(),
       steps=st.lists(st.sampled_from(["post", "post", "race", "reap", "wake", "poll", "tick"]), max_size=60))
def test_no_lost_wake_up_in_any_interleaving(event_idx, steps):
    rig = Rig(event_idx, RacingQueue)
    pending_kick = False

    def post() -> None:
        nonlocal pending_kick
        if len(rig.driver.free) >= 2:
            before = rig.kicks
            rig.post()
            pending_kick |= rig.kicks > before

    try:
        for step in steps:
            if step == "post":
                post()
            elif step == "race":  # the driver posts just before the device's next re-arm
                rig.vq.before_enable = post
            elif step == "reap":
                rig.reap()
            elif step == "wake" and pending_kick:  # epoll reports the kick fd
                pending_kick = False
                if rig.ring.serve(rig.device):
                    rig.poller.start()
            elif step == "poll" and rig.poller.active:
                rig.poller.poll()
            elif step == "tick":
                rig.clock.now += WINDOW / 3
        # Let the device run to quiescence: kicks and polling only; time passes so polling ends.
        for _ in range(100):
            if pending_kick:
                pending_kick = False
                if rig.ring.serve(rig.device):
                    rig.poller.start()
            elif rig.poller.active:
                rig.clock.now += WINDOW
                rig.poller.poll()
            else:
                break
        rig.reap()
        assert rig.completed == rig.posted
    finally:
        rig.close()


def test_poll_window_from_env(monkeypatch):
    monkeypatch.setenv("VHOSTSCSI_POLL_US", "20")
    assert poll_window_from_env() == pytest.approx(20e-6)
    monkeypatch.setenv("VHOSTSCSI_POLL_US", "0")
    assert poll_window_from_env() == 0
    monkeypatch.setenv("VHOSTSCSI_POLL_US", "junk")
    assert poll_window_from_env(30) == pytest.approx(30e-6)
    monkeypatch.delenv("VHOSTSCSI_POLL_US")
    assert poll_window_from_env(40) == pytest.approx(40e-6)

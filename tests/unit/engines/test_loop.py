"""The daemon's event loop: priorities within a batch, fds removed mid-batch, timers, signals, pollers.

No timing is asserted: timeouts only bound a wait that must end anyway.
"""

from __future__ import annotations

import os
import signal
import socket

import pytest

from vhostscsi.engines.user.loop import PRIO_ACCEPT, PRIO_CONTROL, PRIO_DATA, EventLoop, drain_eventfd


@pytest.fixture
def loop():
    lp = EventLoop()
    yield lp
    lp.close()


def readable_pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    b.send(b"x")
    return a, b


def test_one_batch_runs_data_then_control_then_accept(loop):
    order: list[str] = []
    pairs = [readable_pair() for _ in range(3)]
    # registered in the opposite order of their priorities
    loop.add_reader(pairs[0][0].fileno(), lambda: order.append("accept"), PRIO_ACCEPT)
    loop.add_reader(pairs[1][0].fileno(), lambda: order.append("control"), PRIO_CONTROL)
    loop.add_reader(pairs[2][0].fileno(), lambda: order.append("data"), PRIO_DATA)
    loop.run_once(timeout=5)
    assert order == ["data", "control", "accept"]
    for a, b in pairs:
        a.close()
        b.close()


def test_a_callback_may_remove_and_close_an_fd_later_in_the_same_batch(loop):
    (a, a2), (b, b2) = readable_pair(), readable_pair()
    bnum = b.fileno()
    called: list[str] = []

    def on_a() -> None:
        called.append("a")
        loop.remove_reader(bnum)
        b.close()

    loop.add_reader(a.fileno(), on_a, PRIO_DATA)
    loop.add_reader(b.fileno(), lambda: called.append("b"), PRIO_CONTROL)
    loop.run_once(timeout=5)
    assert called == ["a"]
    assert not loop.has_reader(bnum)
    for s in (a, a2, b2):
        s.close()


def test_an_fd_number_reused_in_the_same_batch_does_not_get_the_old_event(loop):
    (a, a2), (b, b2) = readable_pair(), readable_pair()
    called: list[str] = []
    fresh: list[socket.socket] = []

    def on_a() -> None:
        called.append("a")
        num = b.fileno()
        loop.remove_reader(num)
        b.close()
        c, c2 = socket.socketpair()  # the lowest free number: the one b just gave up
        fresh.extend((c, c2))
        assert c.fileno() == num
        loop.add_reader(c.fileno(), lambda: called.append("new"), PRIO_CONTROL)

    loop.add_reader(a.fileno(), on_a, PRIO_DATA)
    loop.add_reader(b.fileno(), lambda: called.append("old"), PRIO_CONTROL)
    loop.run_once(timeout=5)
    assert called == ["a"]  # neither the old callback nor the new one for the old fd's event
    for s in (a, a2, b2, *fresh):
        s.close()


def test_remove_reader_is_idempotent_and_tolerates_a_closed_fd(loop):
    a, b = socket.socketpair()
    loop.add_reader(a.fileno(), lambda: None)
    fd = a.fileno()
    a.close()
    loop.remove_reader(fd)
    loop.remove_reader(fd)
    assert not loop.has_reader(fd)
    b.close()


def test_a_level_triggered_reader_is_called_again_until_drained(loop):
    a, b = readable_pair()
    seen: list[bytes] = []
    loop.add_reader(a.fileno(), lambda: seen.append(a.recv(1)))
    b.send(b"y")
    loop.run_once(timeout=5)
    loop.run_once(timeout=5)
    assert seen == [b"x", b"y"]
    a.close()
    b.close()


def test_timers_run_in_order_and_cancelled_ones_never(loop):
    ran: list[str] = []
    loop.call_later(0.0, lambda: ran.append("first"))
    t = loop.call_later(0.0, lambda: ran.append("cancelled"))
    loop.call_later(0.0, lambda: ran.append("second"))
    loop.call_later(3600, lambda: ran.append("later"))
    t.cancel()
    loop.run_once(timeout=5)
    assert ran == ["first", "second"]


def test_a_due_timer_ends_the_wait_without_any_fd(loop):
    ran: list[int] = []
    loop.call_later(0.001, lambda: ran.append(1))
    while not ran:  # each run_once waits at most until the timer is due
        loop.run_once()
    assert ran == [1]


def test_a_signal_becomes_a_callback_from_the_loop(loop):
    got: list[int] = []
    loop.add_signal_handler(signal.SIGUSR1, got.append)
    os.kill(os.getpid(), signal.SIGUSR1)
    while not got:
        loop.run_once(timeout=5)
    assert got == [signal.SIGUSR1]


def test_stop_from_a_callback_ends_run(loop):
    loop.call_later(0.0, loop.stop)
    loop.run()  # returns


class CountingPoller:
    def __init__(self, rounds: int, log: list[str], name: str) -> None:
        self.rounds = rounds
        self.log = log
        self.name = name

    def poll(self) -> bool:
        self.log.append(self.name)
        self.rounds -= 1
        return self.rounds > 0


def test_pollers_run_round_robin_without_sleeping_and_leave_when_done(loop):
    log: list[str] = []
    loop.add_poller(CountingPoller(2, log, "a"))
    loop.add_poller(CountingPoller(3, log, "b"))
    # No fd is readable and no timer is due: were the loop to sleep while a poller is active, this would
    # wait forever (the test would hang, not fail on a time).
    for _ in range(3):
        loop.run_once()
    assert log == ["a", "b", "a", "b", "b"]
    assert not loop.polling


def test_fd_callbacks_run_before_the_pollers_of_the_same_iteration(loop):
    log: list[str] = []
    a, b = readable_pair()
    loop.add_reader(a.fileno(), lambda: (log.append("fd"), a.recv(1)), PRIO_CONTROL)
    loop.add_poller(CountingPoller(1, log, "poller"))
    loop.run_once()
    assert log == ["fd", "poller"]
    a.close()
    b.close()


def test_drain_eventfd_reads_the_counter_once():
    fd = os.eventfd(0, os.EFD_NONBLOCK)
    try:
        assert drain_eventfd(fd) == 0
        os.eventfd_write(fd, 1)
        os.eventfd_write(fd, 2)
        assert drain_eventfd(fd) == 3
        assert drain_eventfd(fd) == 0
    finally:
        os.close(fd)
    r, w = os.pipe()
    os.close(w)
    assert drain_eventfd(r) == -1  # a pipe at EOF can never be read again
    os.close(r)

"""Interrupt coalescing in the real daemon: a held call is flushed (decided and signalled) on every path that stops
a ring, replaces what the notification decision reads, or could leave the guest waiting, before guest memory
can go away.

The daemon holds calls up to 100 s (long_hold_serve.py lifts the product's 10 ms limit), so a call the test sees
can only come from the flush path under test. Counters, not durations: the test reads the call eventfd's
counter right after the stop message's reply (REPLY_ACK: the daemon has handled it), and asserts that it was 0
before. A fresh ring probes with its first completion, so the test's first request is held for sure.
Both data paths: the C wake-up (call fd -1 while holding) and VHOSTSCSI_NATIVE=0.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.config import save_targets
from support.daemon import ServeProcess

from vhostscsi.config.model import new_storage_object
from vhostscsi.hostdriver.frontend import FrontEnd, wait_readable
from vhostscsi.hostdriver.guestram import GuestRam
from vhostscsi.hostdriver.initiator import ScsiInitiator
from vhostscsi.vhost_user import codec
from vhostscsi.vhost_user.protocol import Request

WWN = "naa.5001405c0a1e5ce1"
HERE = Path(__file__).resolve().parent
WRAPPER = HERE / "long_hold_serve.py"
BOUND_US = 100_000_000  # 100 s
Q = 2
READ10 = bytes([0x28, 0, 0, 0, 0, 0, 0, 0, 8, 0])


def counter(fd: int) -> int:
    """The eventfd's counter, consumed (0 when nothing was signalled)."""
    try:
        return os.eventfd_read(fd)
    except BlockingIOError:
        return 0


@pytest.fixture(params=["native", "pure"])
def daemon(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ServeProcess]:
    monkeypatch.setenv("VHOSTSCSI_NATIVE", "1" if request.param == "native" else "0")
    monkeypatch.delenv("VHOSTSCSI_COALESCE_US", raising=False)
    config = save_targets(tmp_path / "saveconfig.json",
                          {WWN: [(new_storage_object("ramdisk", "rd0", size=8 << 20), False)]})
    d = ServeProcess(tmp_path, config, wwn=WWN, wrapper=WRAPPER, extra_args=("--coalesce-us", str(BOUND_US)))
    try:
        d.wait_socket()
        yield d
    finally:
        d.terminate()


def held(init: ScsiInitiator, n: int = 1) -> None:
    """Complete `n` READs on queue Q (one kick each) with their call held: they are in the used ring, the call
    eventfd untouched. The wait is for the used entries (a failsafe timeout, nothing timed)."""
    ring = init.rings[Q]
    for _ in range(n):
        before = ring.used_idx()
        init.submit(READ10, queue=Q, data_in_len=4096)
        init.kick(Q, force=True)
        deadline = time.monotonic() + 20
        while ring.used_idx() == before:
            assert time.monotonic() < deadline, "the daemon never completed the request"
            time.sleep(0.001)
    assert counter(init.fe.rings[Q].call) == 0, "the call was signalled, not held"


@pytest.fixture
def connected(daemon: ServeProcess) -> Iterator[tuple[ServeProcess, FrontEnd, GuestRam, ScsiInitiator]]:
    fe, ram, init = daemon.connect(ram_size=16 << 20)
    try:
        yield daemon, fe, ram, init
    finally:
        fe.close()
        ram.close()


def flushed_by(connected, stop: Callable[[FrontEnd, GuestRam], None], n: int = 1) -> int:
    """Hold `n` completions, run `stop`, return the call counter the flush left."""
    _daemon, fe, ram, init = connected
    call = fe.rings[Q].call
    held(init, n)
    stop(fe, ram)
    return counter(call)


# ---- one test per path ------------------------------------------------------------------------------------------
def test_get_vring_base_flushes_one_call_for_every_held_completion(connected) -> None:
    assert flushed_by(connected, lambda fe, _ram: fe.get_vring_base(Q), n=4) == 1


def test_set_vring_enable_0_flushes(connected) -> None:
    assert flushed_by(connected, lambda fe, _ram: fe.request(Request.SET_VRING_ENABLE,
                                                              codec.pack_vring_state(Q, 0))) == 1


def test_set_vring_call_flushes_to_the_old_fd(connected) -> None:
    new = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    try:
        assert flushed_by(connected, lambda fe, _ram: fe.request(Request.SET_VRING_CALL,
                                                                  codec.pack_vring_file(Q, True), (new,))) == 1
    finally:
        os.close(new)


def test_set_mem_table_flushes(connected) -> None:
    assert flushed_by(connected, lambda fe, ram: fe.set_mem_table(ram)) == 1


def test_set_status_0_flushes(connected) -> None:
    assert flushed_by(connected, lambda fe, _ram: fe.request(Request.SET_STATUS, codec.pack_u64(0))) == 1


@pytest.mark.parametrize("request_type", [Request.RESET_OWNER, Request.RESET_DEVICE], ids=["RESET_OWNER", "RESET_DEVICE"])
def test_reset_flushes(connected, request_type: int) -> None:
    assert flushed_by(connected, lambda fe, _ram: fe.request(request_type)) == 1


def test_disconnect_flushes(connected) -> None:
    daemon = connected[0]

    def hang_up(fe: FrontEnd, _ram: GuestRam) -> None:
        fe.sock.close()  # the socket only: the test keeps the call eventfd
        daemon.wait_log(r"disconnected: ")

    assert flushed_by(connected, hang_up) == 1


def test_daemon_stop_flushes(connected) -> None:
    daemon = connected[0]

    def sigterm(_fe: FrontEnd, _ram: GuestRam) -> None:
        assert daemon.stop(signal.SIGTERM) == 0  # returns once the daemon has exited

    assert flushed_by(connected, sigterm) == 1


# ---- the timer, and the ring going on after a flush -------------------------------------------------------------
def test_the_hold_timer_signals_without_any_control_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A short bound through the environment (no flag): the held call comes from the timerfd alone."""
    monkeypatch.setenv("VHOSTSCSI_COALESCE_US", "1000")
    config = save_targets(tmp_path / "saveconfig.json",
                          {WWN: [(new_storage_object("ramdisk", "rd0", size=8 << 20), False)]})
    d = ServeProcess(tmp_path, config, wwn=WWN)
    try:
        d.wait_socket()
        assert "interrupts held up to 1000 us" in d.wait_log(r"serving ")
        with d.connected() as (fe, _ram, init):
            init.submit(READ10, queue=Q, data_in_len=4096)
            init.kick(Q, force=True)
            assert wait_readable(fe.rings[Q].call, 20), "the held call was never signalled"
            assert counter(fe.rings[Q].call) == 1
            for _ in range(50):  # and the ring goes on: QD1, every command answered
                assert init.command(READ10, queue=Q, data_in_len=4096).status in (0, 2)
        assert d.stop() == 0
    finally:
        d.terminate()


def test_a_ring_restarted_after_a_flush_serves_on(connected) -> None:
    """QEMU stops and restarts rings (GET_VRING_BASE, then the ring set up again at its used index): after the
    flushed hold, which batched nothing, the next completions are signalled at once (the policy's probe rule)."""
    daemon, fe, _ram, init = connected
    assert flushed_by(connected, lambda fe, _ram: fe.get_vring_base(Q)) == 1
    ring = init.rings[Q]
    ring.get_used()  # the driver took the flushed completion
    fe.setup_ring(Q, ring, base=ring.used_idx())
    init.submit(READ10, queue=Q, data_in_len=4096)
    init.kick(Q, force=True)
    assert wait_readable(fe.rings[Q].call, 20), "no call after the restart"
    assert len(ring.get_used()) == 1
    assert daemon.alive()


def test_a_bad_flag_value_is_one_line_and_exit_1(tmp_path: Path) -> None:
    config = save_targets(tmp_path / "saveconfig.json",
                          {WWN: [(new_storage_object("ramdisk", "rd0", size=8 << 20), False)]})
    d = ServeProcess(tmp_path, config, wwn=WWN, extra_args=("--coalesce-us", "fast"))
    assert d.proc.wait(30) == 1
    lines = d.log().strip().splitlines()
    assert lines == ["vhostscsi serve: --coalesce-us: 'fast' is not a whole number of microseconds "
                     "(0 = off, up to 10,000)"]


@pytest.mark.parametrize(("env", "flag", "expect"), [
    ("fast", None, "interrupt coalescing off"),  # a bad environment value: a warning, off, the daemon serves
    ("fast", "250", "interrupts held up to 250 us"),  # the flag wins (the bad variable is not even read)
    ("300", "0", "interrupt coalescing off"),
    ("", None, "interrupt coalescing off"),  # the default
])
def test_the_setting_comes_from_the_flag_else_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              env: str, flag: str | None, expect: str) -> None:
    monkeypatch.setenv("VHOSTSCSI_COALESCE_US", env)
    config = save_targets(tmp_path / "saveconfig.json",
                          {WWN: [(new_storage_object("ramdisk", "rd0", size=8 << 20), False)]})
    d = ServeProcess(tmp_path, config, wwn=WWN, extra_args=("--coalesce-us", flag) if flag is not None else ())
    try:
        log = d.wait_log(r"serving ")
        assert expect in log
        warned = "VHOSTSCSI_COALESCE_US: 'fast' is not a whole number of microseconds" in log
        assert warned == (env == "fast" and flag is None)
        assert d.stop() == 0
    finally:
        d.terminate()

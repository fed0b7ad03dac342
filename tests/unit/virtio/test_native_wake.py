"""The whole wake-up in C (`_native.serve`, via RingIO.serve_kick / RingIO.serve) against today's wake-up.

Why: `serve` moves the kick read, the disable / drain / enable-behind-a-fence / re-check loop, the
`should_notify` decision and the call-fd write out of Python. A slip there is a lost wake-up (a hung guest) or
a missed or spurious interrupt, so two identical worlds (test_native_equivalence's World: guest RAM, ring,
disks, in-flight on or off) run the same random wake-ups, one through the C wake-up and one through
`drain_eventfd` + `VirtioScsi.process` (with the C drain: the chains handed to Python are then the same ones)
+ `RingIO.completed`. The driver adds buffers before a wake-up and *during* it (from inside the Python handler
of a chain C handed back, so at the same point in both worlds), sets or clears its suppression (avail.flags
NO_INTERRUPT, used_event anywhere near used.idx), kicks or not. After every wake-up guest memory (rings with
avail_event and used.flags), the ring state including the notification state, the in-flight area, the disks,
how many times the call eventfd was signalled (its counter) and whether the kick eventfd was drained must be
equal.
"""

from __future__ import annotations

import os
import random
import struct
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from test_native_equivalence import PARAMS as EQ_PARAMS
from test_native_equivalence import AVAIL_GPA, DESC_GPA, USED_GPA, Layout, World, _DESC, add_chain, request_chain
from vhostscsi.engines.user.rings import RingIO
from vhostscsi.virtio import native

pytestmark = pytest.mark.usefixtures("native_required")

Q = 2


def _counter(fd: int) -> int:
    """An eventfd's counter (0 if nothing pending), read and so reset."""
    try:
        return int.from_bytes(os.read(fd, 8), "little")
    except BlockingIOError:
        return 0


class WakeWorld(World):
    """A World with the ring's eventfds (kick, call) in a RingIO, and a hook in the Python chain handler."""

    def __init__(self, p: dict[str, Any], tmp: str, name: str) -> None:
        super().__init__(p, tmp, name)
        self.io = RingIO(Q, name)
        self.io.started = True
        self.io.set_kick(os.eventfd(0, os.EFD_NONBLOCK))
        if p["call"]:
            self.io.set_call(os.eventfd(0, os.EFD_NONBLOCK))
        self.late: list[tuple[int, list[int]]] = []  # (nth Python-handled chain, heads to publish then)
        self.handled = 0
        real = self.vs._command

        self.seen: list[bytes] = []  # what the driver would see mid-wake-up: used.flags and avail_event

        def command(out, in_, error):  # the driver adds buffers while the device is in the middle of a wake-up
            self.handled += 1
            self.seen.append(self.ram.read(USED_GPA, 2) + self.ram.read(USED_GPA + 4 + 8 * self.size, 2))
            while self.late and self.late[0][0] <= self.handled:
                self.publish(self.late.pop(0)[1])
            return real(out, in_, error)

        self.vs._command = command  # type: ignore[method-assign]
        # Heads published at the first LUN lookup of a wake-up: the C drain has read avail.idx for its batch
        # then, so only the re-check after re-arming (or a later drain) finds them.
        self.at_resolve: list[int] = []
        resolve = self.vs._fast_lun

        def fast_lun(target, lun):
            if self.at_resolve:
                self.publish(self.at_resolve)
                self.at_resolve = []
            return resolve(target, lun)

        self.vs._fast_lun = fast_lun  # type: ignore[method-assign]

    def publish(self, heads: list[int]) -> None:
        """Driver side: heads into the avail ring after the last published one, then avail.idx."""
        size = self.size
        aidx = struct.unpack("<H", self.ram.read(AVAIL_GPA + 2, 2))[0]
        for h in heads:
            self.ram.write(AVAIL_GPA + 4 + 2 * (aidx % size), struct.pack("<H", h))
            aidx += 1
        self.ram.write(AVAIL_GPA + 2, struct.pack("<H", aidx & 0xFFFF))

    def wake(self, c_path: bool, kick: bool, via_kick: bool) -> int:
        if kick:
            os.eventfd_write(self.io.kick, 1)
        native.WAKE = c_path
        if via_kick:
            n = self.io.serve_kick(self.vs)
        else:
            n = self.io.serve(self.vs)
        assert n >= 0
        return n

    def wake_state(self) -> tuple:
        vq = self.vq
        calls = _counter(self.io.call) if self.io.call is not None else None
        seen, self.seen = self.seen, []
        return (self.state(), seen, vq._notifications_enabled, vq._signalled_used, vq._signalled_valid, calls,
                _counter(self.io.kick))

    def close(self) -> None:
        self.io.close()
        super().close()


NAMES = ("world", "suppression seen mid-wake-up", "notifications enabled", "signalled used", "signalled valid",
         "call eventfd count", "kick eventfd left")
WORLD = ("guest memory", "last_avail_idx", "used_idx", "broken", "broken_reason", "in-flight area",
         "in-flight counter", "ramdisk", "ramdisk 2", "fileio file", "wrapper's commands", "errors")


def run_case(p: dict[str, Any], seed: int) -> None:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        worlds = [WakeWorld(p, tmp, "c"), WakeWorld(p, tmp, "py")]
        saved = native.WAKE
        try:
            for rnd in range(p["rounds"]):
                size = p["size"]
                vq = worlds[0].vq
                outstanding = (struct.unpack("<H", worlds[0].ram.read(AVAIL_GPA + 2, 2))[0] - vq.last_avail_idx)
                desc: dict[int, tuple] = {}
                free = list(range(size))
                rng.shuffle(free)
                tables = [0x1000 + 0x200 * i for i in range(16)]
                ram_writes: list[tuple[int, bytes]] = []
                lay = Layout(rng)
                heads: list[int] = []
                room = max(0, size - (outstanding & 0xFFFF))  # a broken ring may hold more than it can
                for _ in range(rng.randrange(0, room + 1)):
                    head = add_chain(rng, p, request_chain(rng, lay, ram_writes, p["regions"] == 1), desc, free,
                                     tables, ram_writes)
                    if head is None:
                        break
                    heads.append(head)
                if rng.random() < 0.03:  # ring damage: a head beyond the table (Python breaks the ring)
                    heads.insert(rng.randrange(len(heads) + 1), size + rng.randrange(0xFFFF - size))
                cut = rng.randrange(len(heads) + 1)
                now, later = heads[:cut], heads[cut:]
                cut = rng.randrange(len(later) + 1)
                at_resolve, later = later[:cut], later[cut:]
                late = []
                while later:  # the rest published from inside the k-th Python-handled chain
                    k = rng.randrange(1, len(later) + 1)
                    late.append((rng.randrange(1, 4), later[:k]))
                    later = later[k:]
                late.sort(key=lambda t: t[0])
                # the driver's suppression, set before the wake-up (identically in both worlds)
                flags = rng.choice((0, 0, 1)) if not p["event_idx"] else rng.choice((0, 1))
                used_event = (vq.used_idx + rng.choice((-2, -1, 0, 0, 1, 2, 3, rng.randrange(1 << 16)))) & 0xFFFF
                set_event = rng.random() < 0.8
                kick = rng.random() < 0.85
                via_kick = rng.random() < 0.8
                results = []
                for which, w in enumerate(worlds):
                    for a, data in ram_writes:
                        if 0 <= a and a + len(data) <= w.ram.size:
                            w.ram.write(a, data)
                    for i, d in desc.items():
                        w.ram.write(DESC_GPA + 16 * i, _DESC.pack(*d))
                    w.ram.write(AVAIL_GPA, struct.pack("<H", flags))
                    if set_event:
                        w.ram.write(AVAIL_GPA + 4 + 2 * size, struct.pack("<H", used_event))
                    w.publish(now)
                    w.late = list(late)
                    w.at_resolve = list(at_resolve)
                    w.handled = 0
                    n = w.wake(which == 0, kick, via_kick)
                    if not w.vq.broken:  # no lost wake-up: everything published by the re-check was taken
                        assert struct.unpack("<H", w.ram.read(AVAIL_GPA + 2, 2))[0] == w.vq.last_avail_idx
                        assert w.vq._notifications_enabled
                    # not reached during the wake-up (no lookup, fewer Python-handled chains): published after it
                    if w.at_resolve:
                        w.publish(w.at_resolve)
                        w.at_resolve = []
                    for _k, hs in w.late:
                        w.publish(hs)
                    w.late = []
                    results.append((n, w.wake_state()))
                assert results[0][0] == results[1][0], f"completions differ after round {rnd} ({p}, seed {seed})"
                a, b = results[0][1], results[1][1]
                for i, name in enumerate(NAMES):
                    if i == 0:
                        for j, wname in enumerate(WORLD):
                            assert a[0][j] == b[0][j], f"{wname} differs after round {rnd} ({p}, seed {seed})"
                    assert a[i] == b[i], f"{name} differs {a[i]!r} {b[i]!r} after round {rnd} ({p}, seed {seed})"
                if worlds[0].vq.broken:
                    break
        finally:
            native.WAKE = saved
            for w in worlds:
                w.close()


# test_native_equivalence's worlds, with more wake-ups per case and a ring with or without a call fd
PARAMS = st.builds(lambda p, rounds, call: {**p, "rounds": rounds, "call": call},
                   EQ_PARAMS, st.integers(1, 8), st.sampled_from([True, True, True, False]))


@settings(max_examples=int(os.environ.get("VHOSTSCSI_NATIVE_CASES", "1500")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(PARAMS, st.integers(0, 2**32 - 1))
def test_c_wakeup_and_python_wakeup_leave_identical_worlds(p: dict[str, Any], seed: int) -> None:
    run_case(p, seed)


@contextmanager
def one_world() -> Iterator[WakeWorld]:
    """One world with a 16-entry ring, EVENT_IDX, a call fd; native.WAKE restored afterwards."""
    p = {"regions": 1, "size": 16, "event_idx": True, "indirect": True, "inflight": False, "nexus": True,
         "write_back": True, "file_len": 64 * 512, "rounds": 1, "call": True}
    with tempfile.TemporaryDirectory() as tmp:
        w = WakeWorld(p, tmp, "c")
        saved = native.WAKE
        try:
            yield w
        finally:
            native.WAKE = saved
            w.close()


def _quiet_read(w: WakeWorld, head: int, lba: int) -> None:
    """A 512-byte READ(10) on LUN 0 at descriptor `head` (direct chain: header, response, data)."""
    base = 0x3000 + 0x400 * head
    cdb = struct.pack(">BBIBHB", 0x28, 0, lba, 0, 1, 0).ljust(32, b"\0")
    w.ram.write(base, bytes((1, 1, 0x40, 0)) + bytes(15) + cdb)
    bufs = [(base, 51, 0), (base + 0x80, 108, 2), (base + 0x100, 512, 2)]
    idx = [head * 3 + j for j in range(3)]
    for j, (a, n, f) in enumerate(bufs):
        w.ram.write(DESC_GPA + 16 * idx[j], _DESC.pack(a, n, f | (1 if j < 2 else 0), idx[j + 1] if j < 2 else 0))


def test_the_c_wakeup_serves_reads_itself_and_signals_once() -> None:
    """The comparison means little if the C wake-up never ran a whole wake-up itself: QD1-like reads, each
    served in one C call (no Python handler), one interrupt each with EVENT_IDX, none while suppressed."""
    with one_world() as w:
        for k in range(4):
            _quiet_read(w, k, k)
            w.ram.write(AVAIL_GPA + 4 + 2 * 16, struct.pack("<H", w.vq.used_idx))  # used_event: next one
            w.publish([k * 3])
            assert w.wake(True, True, True) == 1
            assert w.handled == 0  # no chain went to Python
            assert _counter(w.io.call) == 1 and _counter(w.io.kick) == 0
            assert struct.unpack("<H", w.ram.read(USED_GPA + 4 + 8 * 16, 2))[0] == k + 1  # avail_event re-armed
        _quiet_read(w, 4, 4)
        w.ram.write(AVAIL_GPA + 4 + 2 * 16, struct.pack("<H", (w.vq.used_idx + 5) & 0xFFFF))  # suppressed
        w.publish([12])
        assert w.wake(True, True, True) == 1 and _counter(w.io.call) == 0


@pytest.mark.parametrize("c_path", [True, False])
def test_an_unreadable_kick_fd_serves_nothing_and_says_so(c_path: bool) -> None:
    """A kick fd at EOF (a pipe, not an eventfd): -1, the ring untouched, as drain_eventfd's contract says."""
    with one_world() as w:
        r, wr = os.pipe()
        os.close(wr)
        os.close(w.io.set_kick(r))
        _quiet_read(w, 0, 0)
        w.publish([0])
        native.WAKE = c_path
        assert w.io.serve_kick(w.vs) == -1
        assert w.vq.last_avail_idx == 0 and _counter(w.io.call) == 0

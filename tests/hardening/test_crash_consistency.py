"""Crash consistency: SIGKILL the real daemon mid-I/O, cut the power under it, and count acknowledged writes lost.

The backing file sits on `powercut_fs.py`, a FUSE layer that keeps unsynced writes in its own memory; after the
daemon is SIGKILLed the layer is SIGKILLed too, so the backing directory keeps exactly what the target made
durable (TESTING.md: killing the daemon alone loses nothing, since the page cache survives a process crash).

The host-side driver writes numbered 4 KiB blocks to random slots at random queue depths:
- "fua":          write_back on, WRITE(10) with FUA: every GOOD write is durable.
- "sync":         write_back on, plain writes then SYNCHRONIZE CACHE(10): writes acknowledged before a GOOD sync
                  are durable.
- "writethrough": write_back off, plain writes: every GOOD write is durable.
Each block carries its sequence number and slot and a pattern derived from them, so a torn, stale or misplaced
block is seen. After each cut the disk must hold, for every slot, the last durable write or a later one.
`nosync_serve.py` (the same daemon whose backstore never syncs) must fail the same check.
"""

from __future__ import annotations

import os
import random
import struct
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hardening.harness import HERE, Daemon, PowerCutMount, fuse_available, make_config
from vhostscsi.hostdriver.frontend import FrontEndError
from vhostscsi.hostdriver.initiator import parse_response
from vhostscsi.virtio import scsi as vs

pytestmark = pytest.mark.skipif(fuse_available() is not None, reason=str(fuse_available()))

SLOT = 4096
SLOTS = 512
DISK = SLOT * SLOTS
_HDR = struct.Struct("<8sQQ")
MAGIC = b"VHSCRASH"
SYNC10 = bytes([0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0])


def block(seq: int, slot: int) -> bytes:
    fill = ((seq * 0x9E3779B97F4A7C15 + slot) & (2**64 - 1)).to_bytes(8, "little")
    return (_HDR.pack(MAGIC, seq, slot) + fill * (SLOT // 8))[:SLOT]


def write10(lba: int, blocks: int, fua: bool) -> bytes:
    return struct.pack(">BBIBHB", 0x2A, 0x08 if fua else 0, lba, 0, blocks, 0)


@dataclass
class Ledger:
    """What the driver was told, kept across cycles: per slot, every seq issued and the last one durable."""

    issued: dict[int, set[int]] = field(default_factory=dict)
    durable: dict[int, int] = field(default_factory=dict)
    next_seq: int = 1
    acked_durable: int = 0
    cycles: int = 0
    lost: list[str] = field(default_factory=list)

    def verify(self, path: Path) -> int:
        """Check the disk against the ledger; returns the number of acknowledged durable writes lost."""
        data = path.read_bytes().ljust(DISK, b"\0")
        lost = 0
        for slot, seq in sorted(self.durable.items()):
            raw = data[slot * SLOT : (slot + 1) * SLOT]
            magic, on_disk, s = _HDR.unpack_from(raw)
            if magic != MAGIC or s != slot or raw != block(on_disk, slot):
                lost += 1
                self.lost.append(f"slot {slot}: durable seq {seq} acknowledged, disk holds no intact block")
            elif on_disk < seq or on_disk not in self.issued[slot]:
                lost += 1
                self.lost.append(f"slot {slot}: durable seq {seq} acknowledged, disk holds seq {on_disk}")
        return lost


def run_cycle(tmp: Path, ledger: Ledger, mode: str, rng: random.Random, *, wrapper: Path | None = None) -> int:
    """One power-cut cycle; returns the lost count after it."""
    backing, mnt = tmp / "backing", tmp / "mnt"
    mount = PowerCutMount(backing, mnt)
    daemon = None
    fe = ram = None
    try:
        config = make_config(tmp / "saveconfig.json", mnt / "disk0.img", DISK, write_back=(mode != "writethrough"),
                             create=False)
        daemon = Daemon(tmp, config, wrapper=wrapper)
        daemon.wait_log(r"listening on")
        fe, ram, init = daemon.connect(queue_size=64)
        killer = threading.Timer(rng.uniform(0.05, 0.6), daemon.proc.kill)
        killer.start()
        pending: list[tuple[int, int]] = []  # (slot, seq) acknowledged but not yet durable (sync mode)
        try:
            while daemon.alive():
                mark = ram.mark()
                depth = rng.randint(1, 16)
                slots = rng.sample(range(SLOTS), depth)
                heads: dict[int, tuple[int, int, int]] = {}
                for slot in slots:
                    seq = ledger.next_seq
                    ledger.next_seq += 1
                    ledger.issued.setdefault(slot, set()).add(seq)
                    head, resp, _ = init.submit(write10(slot * SLOT // 512, SLOT // 512, mode == "fua"),
                                                data_out=block(seq, slot))
                    heads[head] = (slot, seq, resp)
                init.kick(2, force=True)
                acked = _collect(init, heads, daemon)
                if mode == "sync":
                    pending += acked
                    if len(acked) == len(heads):
                        head, resp, _ = init.submit(SYNC10)
                        init.kick(2, force=True)
                        if _collect(init, {head: (-1, -1, resp)}, daemon):
                            for slot, seq in pending:
                                _mark_durable(ledger, slot, seq)
                            pending.clear()
                else:
                    for slot, seq in acked:
                        _mark_durable(ledger, slot, seq)
                ram.reset_allocator(mark)
        finally:
            killer.cancel()
            daemon.kill()
    finally:
        if fe is not None:
            fe.close()
        if ram is not None:
            ram.close()
        mount.cut()  # the power cut: whatever the FUSE layer held unsynced is gone
    ledger.cycles += 1
    return ledger.verify(backing / "disk0.img")


def _mark_durable(ledger: Ledger, slot: int, seq: int) -> None:
    ledger.acked_durable += 1
    if seq > ledger.durable.get(slot, 0):
        ledger.durable[slot] = seq


def _collect(init, heads: dict[int, tuple[int, int, int]], daemon: Daemon) -> list[tuple[int, int]]:
    """Wait for the completions of `heads` (until all arrive or the daemon is dead); the GOOD ones' (slot, seq).

    A completion in the used ring was pushed by the daemon before it died: it is an acknowledgement."""
    good: list[tuple[int, int]] = []
    waiting = dict(heads)
    while waiting:
        dead = not daemon.alive()
        try:
            used = init.wait_any(2, timeout=0.05)
        except (FrontEndError, OSError):
            used = []
        for u in used:
            if u.head not in waiting:
                continue
            slot, seq, resp = waiting.pop(u.head)
            r = parse_response(init.ram.read(resp, vs.RESP_SIZE), u.length)
            if r.response == vs.S_OK and r.status == 0:
                good.append((slot, seq))
        if dead and not used:
            break
    return good


def _prepare(tmp: Path) -> None:
    (tmp / "backing").mkdir()
    with open(tmp / "backing" / "disk0.img", "wb") as f:
        f.truncate(DISK)
        os.fsync(f.fileno())


def run(tmp: Path, mode: str, cycles: int, seed: int, wrapper: Path | None = None, stop_on_loss: bool = False) -> Ledger:
    _prepare(tmp)
    ledger = Ledger()
    rng = random.Random(seed)
    for _ in range(cycles):
        lost = run_cycle(tmp, ledger, mode, rng, wrapper=wrapper)
        if lost and stop_on_loss:
            break
    return ledger


def report(mode: str, ledger: Ledger) -> str:
    return (f"{mode}: {ledger.cycles} SIGKILL+power-cut cycles, {ledger.acked_durable} acknowledged durable "
            f"writes, acknowledged-lost {len(ledger.lost)}")


MODES = ["fua", "sync", "writethrough"]


@pytest.mark.parametrize("mode", MODES)
def test_acknowledged_durable_writes_survive_kill_and_power_cut(tmp_path: Path, mode: str) -> None:
    ledger = run(tmp_path, mode, cycles=3, seed=1234)
    print(report(mode, ledger))
    assert ledger.acked_durable > 0
    assert ledger.lost == [], ledger.lost[:10]


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_acknowledged_durable_writes_survive_100_cycles(tmp_path: Path, mode: str) -> None:
    seed = int(os.environ.get("VHOSTSCSI_CRASH_SEED", "20261125"))
    cycles = int(os.environ.get("VHOSTSCSI_CRASH_CYCLES", "100"))
    ledger = run(tmp_path, mode, cycles=cycles, seed=seed)
    print(report(mode, ledger))
    assert ledger.cycles >= cycles and ledger.acked_durable > 0
    assert ledger.lost == [], ledger.lost[:10]


@pytest.mark.parametrize("mode", MODES)
def test_a_target_that_never_syncs_is_caught(tmp_path: Path, mode: str) -> None:
    """The same check against the daemon with a backstore that acknowledges without syncing must see losses."""
    ledger = run(tmp_path, mode, cycles=5, seed=99, wrapper=HERE / "nosync_serve.py", stop_on_loss=True)
    print(report(mode + " (never syncs)", ledger))
    assert ledger.acked_durable > 0
    assert ledger.lost, "a target that never syncs lost nothing: the power cut does not work"

"""TargetPort.execute_fast (READ/WRITE (10)/(16) straight to the backstore) answers exactly as execute_general.

Two identical worlds run the same steps: in one every command first tries `execute_fast` (falling back to
`execute_general` when it declines), in the other every command goes through `execute_general`. After each step
the results (status, sense, data-in length, residual) and the data-in bytes must be equal, and at the end the disks' bytes
and the devices' offline state. The steps mix commands at the edges (LBA at and past the capacity, transfer
length 0, FUA/DPO with and without a write-back cache, PROTECT and other bits of byte 1, buffers too short, too
long, split, data-out on a read) with what changes a LUN's state (LUN reset and capacity change unit
attentions, an SPC-2 reservation by one nexus or the other, a write-protected LUN, the medium going offline,
backstore errors, a LUN of more than 2^32 blocks that answers in descriptor sense).
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vhostscsi.backstores import BackstoreError, RamdiskBackstore
from vhostscsi.scsi import Device, ScsiResult, TargetPort
from tests.unit.scsi.helpers import NEXUS, OTHER, SERIAL, WWN, cdb10, cdb16

BS = 512
RAM_BLOCKS = 256  # LUN 0 (and LUN 1, write-protected, on its own ramdisk)
BIG_BLOCKS = (1 << 32) + 8  # LUN 2: descriptor-format sense (more than 2^32 blocks), sparse
BAD_LBA = 100  # on LUN 2: reads and writes touching these blocks fail
BAD_ERRNO = {BAD_LBA: errno.EIO, BAD_LBA + 1: errno.ENOSPC, BAD_LBA + 2: errno.ENXIO}
CAPACITY = {0: RAM_BLOCKS, 1: RAM_BLOCKS, 2: BIG_BLOCKS, 5: RAM_BLOCKS}  # 5: no such LUN
READS = (0x28, 0x88)
WRITES = (0x2A, 0x8A)


class SparseBackstore:
    """A huge disk in a dict of 512-byte blocks, with some blocks that fail with a given errno."""

    plugin = "fileio"

    def __init__(self, blocks: int) -> None:
        self.size = blocks * BS
        self.block_size = BS
        self.readonly = False
        self.blocks: dict[int, bytes] = {}
        self.writes: list[tuple[int, int, bool]] = []  # (offset, length, fua): FUA must reach the backstore

    def _check(self, offset: int, n: int) -> None:
        for lba in range(offset // BS, (offset + n + BS - 1) // BS):
            if lba in BAD_ERRNO:
                raise BackstoreError(BAD_ERRNO[lba], f"block {lba} fails")

    def readv(self, offset: int, bufs: Sequence[memoryview]) -> None:
        n = sum(b.nbytes for b in bufs)
        self._check(offset, n)
        data = b"".join(self.blocks.get(lba, bytes(BS)) for lba in range(offset // BS, (offset + n) // BS))
        pos = 0
        for b in bufs:
            b[:] = data[pos : pos + b.nbytes]
            pos += b.nbytes

    def writev(self, offset: int, bufs: Sequence[memoryview], fua: bool = False) -> None:
        data = b"".join(bytes(b) for b in bufs)
        self._check(offset, len(data))
        self.writes.append((offset, len(data), fua))
        for k in range(0, len(data), BS):
            self.blocks[(offset + k) // BS] = data[k : k + BS]

    def flush(self) -> None:
        pass

    def unmap(self, offset: int, length: int) -> None:
        pass

    def write_zeroes(self, offset: int, length: int) -> None:
        pass

    def refresh_size(self) -> int:
        return self.size


class World:
    """A port with LUN 0 (ramdisk), LUN 1 (write-protected ramdisk), LUN 2 (huge, sparse, failing blocks)."""

    def __init__(self, fast: bool, write_back: bool) -> None:
        self.fast = fast
        self.taken = 0
        self.disks = [RamdiskBackstore("d0", RAM_BLOCKS * BS), RamdiskBackstore("d1", RAM_BLOCKS * BS)]
        self.sparse = SparseBackstore(BIG_BLOCKS)
        self.devs = [Device(b, f"d{k}", SERIAL, {}, write_back) for k, b in enumerate(self.disks)]
        self.devs.append(Device(self.sparse, "d2", SERIAL, {}, write_back))  # type: ignore[arg-type]
        for k, d in enumerate(self.disks):  # recognisable contents
            d.writev(0, [memoryview(bytes((k * 7 + i) & 0xFF for i in range(RAM_BLOCKS * BS)))])
        self.port = TargetPort(WWN, 1)
        for lun, dev in enumerate(self.devs):
            self.port.add_lun(lun, dev, write_protect=(lun == 1))

    def command(self, nexus: str, lun: int, cdb: bytes, dout: bytes | None,
                din: Sequence[int]) -> tuple[ScsiResult, list[bytes]]:
        data_out = [memoryview(bytearray(dout[: len(dout) // 2])), memoryview(bytearray(dout[len(dout) // 2 :]))] \
            if dout and len(dout) > BS else ([memoryview(bytearray(dout))] if dout else [])
        bufs = [bytearray(n) for n in din]
        data_in = [memoryview(b) for b in bufs]
        cdb = cdb.ljust(32, b"\0")
        r = self.port.execute_fast(nexus, lun, cdb, data_out, data_in) if self.fast else None
        if r is None:
            r = self.port.execute_general(nexus, lun, cdb, data_out, data_in)
        else:
            self.taken += 1
        return r, [bytes(b) for b in bufs]

    def state(self) -> tuple:
        return (bytes(self.disks[0]._mem), bytes(self.disks[1]._mem), sorted(self.sparse.blocks.items()), self.sparse.writes,
                [d.offline for d in self.devs])


NEXUSES = st.sampled_from([NEXUS, OTHER])


@st.composite
def rw_command(draw: st.DrawFn) -> tuple:
    opcode = draw(st.sampled_from(READS + WRITES))
    lun = draw(st.sampled_from([0, 0, 0, 1, 2, 2, 5]))
    cap = CAPACITY[lun]
    edge = draw(st.integers(0, 3)) == 0  # a quarter of the commands probe the edges, the rest are plausible
    if edge:
        lba = draw(st.one_of(st.integers(0, 300), st.sampled_from([cap - 1, cap, cap + 1, BAD_LBA - 1, 2**32 - 1,
                                                                     2**32, 2**63, 2**64 - 1])))
        n = draw(st.one_of(st.integers(0, 9), st.sampled_from([16, 255, 256, 0xFFFF, 0x10000, 2**32 - 1])))
        b1 = draw(st.one_of(st.sampled_from([0x08, 0x10, 0x18, 0x20, 0x40, 0x80, 0x02, 0x04, 0x01]),
                            st.integers(0, 255)))
    else:
        lba = draw(st.integers(0, min(cap, 300) - 9))
        n = draw(st.integers(1, 8))
        b1 = draw(st.sampled_from([0, 0, 0, 0x08, 0x10, 0x18]))
    if opcode < 0x80:
        cdb = cdb10(opcode, lba & 0xFFFFFFFF, n & 0xFFFF, b1)
        n &= 0xFFFF
    else:
        cdb = cdb16(opcode, lba & (2**64 - 1), n & 0xFFFFFFFF, b1)
    size = min(n, 64) * BS
    layout = draw(st.sampled_from(["exact", "exact", "split", "short", "long", "none", "both"]) if edge
                  else st.sampled_from(["exact", "exact", "exact", "split"]))
    dout: bytes | None = None
    din: list[int] = []
    fill = draw(st.integers(0, 255))
    sizes = {"exact": [size], "split": [size // 2, size - size // 2], "short": [max(0, size - BS)],
             "long": [size + BS], "none": [], "both": [size]}[layout]
    if opcode in WRITES:
        total = sum(sizes)
        dout = bytes((fill + i) & 0xFF for i in range(total)) if total else None
        if layout == "both":
            din = [BS]
    else:
        din = sizes
        if layout == "both":
            dout = bytes([fill]) * BS
    return ("cmd", draw(NEXUSES), lun, cdb, dout, din)


STEP = st.one_of(
    rw_command(), rw_command(), rw_command(), rw_command(), rw_command(), rw_command(), rw_command(),
    st.tuples(st.just("lun_reset"), NEXUSES, st.sampled_from([0, 1, 2])),
    st.tuples(st.just("capacity"), st.sampled_from([0, 2])),
    st.tuples(st.just("reserve"), NEXUSES, st.sampled_from([0, 2])),
    st.tuples(st.just("release"), NEXUSES, st.sampled_from([0, 2])),
    st.tuples(st.just("it_nexus_reset"), NEXUSES),
    st.tuples(st.just("end_nexus"), NEXUSES),
    st.tuples(st.just("offline"), st.sampled_from([0, 2])),
    st.tuples(st.just("online"), st.sampled_from([0, 2])),
    st.tuples(st.just("tur"), NEXUSES, st.sampled_from([0, 1, 2])),
)

STATS = {"fast": 0}


def apply(w: World, step: tuple) -> object:
    kind = step[0]
    if kind == "cmd":
        return w.command(*step[1:])
    if kind == "lun_reset":
        return w.port.lun_reset(step[1], step[2])
    if kind == "capacity":
        return w.port.notify_capacity_changed(step[1])
    if kind in ("reserve", "release"):  # SPC-2 RESERVE(6) / RELEASE(6)
        return w.command(step[1], step[2], bytes([0x16 if kind == "reserve" else 0x17, 0, 0, 0, 0, 0]), None, [])
    if kind == "it_nexus_reset":
        return w.port.it_nexus_reset(step[1])
    if kind == "end_nexus":
        return w.port.end_nexus(step[1])
    if kind == "offline":
        return w.devs[step[1]].set_offline("gone")
    if kind == "online":
        return w.devs[step[1]].set_online()
    return w.command(step[1], step[2], bytes(6), None, [])  # TEST UNIT READY: takes a pending UA


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.booleans(), st.lists(STEP, min_size=1, max_size=30))
def test_fast_path_answers_as_execute(write_back: bool, steps: list[tuple]) -> None:
    fast, general = World(True, write_back), World(False, write_back)
    for w in (fast, general):  # both nexuses established, no unit attention pending
        for nexus in (NEXUS, OTHER):
            for lun in range(3):
                w.command(nexus, lun, bytes(6), None, [])
    for step in steps:
        assert apply(fast, step) == apply(general, step), step
    assert fast.state() == general.state()
    STATS["fast"] += fast.taken


def test_the_comparison_took_the_fast_path() -> None:
    """Runs after the property test (file order): a fast path that always declined would prove nothing."""
    if not STATS["fast"]:
        pytest.skip("the property test did not run in this session")
    assert STATS["fast"] > 100, STATS


# --- what the fast path takes and what it leaves to execute, case by case ------------------------------------

def _fresh(write_back: bool = True) -> World:
    w = World(True, write_back)
    w.command(NEXUS, 0, bytes(6), None, [])  # the power-on unit attention, via execute
    for lun in (1, 2):
        w.command(NEXUS, lun, bytes(6), None, [])
    return w


def _fast(w: World, lun: int, cdb: bytes, dout: bytes | None, din: list[int], nexus: str = NEXUS) -> bool:
    before = w.taken
    w.command(nexus, lun, cdb, dout, din)
    return w.taken > before


def test_plain_reads_and_writes_take_the_fast_path() -> None:
    w = _fresh()
    assert _fast(w, 0, cdb10(0x28, 3, 8), None, [8 * BS])
    assert _fast(w, 0, cdb16(0x88, 3, 8), None, [4 * BS, 4 * BS])
    assert _fast(w, 0, cdb10(0x2A, 3, 1, 0x08), b"x" * BS, [])  # FUA with a write-back cache
    assert _fast(w, 0, cdb16(0x8A, 3, 1, 0x10), b"x" * BS, [])  # DPO
    assert _fast(w, 2, cdb16(0x88, BIG_BLOCKS - 1, 1), None, [BS])  # the last block of a huge LUN


@pytest.mark.parametrize("case", [
    "past_capacity", "length_0", "protect", "fua_without_cache", "short_buffer", "long_buffer", "read_with_dout",
    "write_protected", "ua_after_lun_reset", "ua_after_capacity_change", "reserved_by_other", "offline",
    "unknown_nexus", "unknown_lun", "write_10_verify",
])
def test_edge_cases_are_left_to_execute(case: str) -> None:
    w = _fresh(write_back=case != "fua_without_cache")
    lun, cdb, dout, din, nexus = 0, cdb10(0x28, 0, 1), None, [BS], NEXUS
    if case == "past_capacity":
        cdb = cdb10(0x28, RAM_BLOCKS, 1)
    elif case == "length_0":
        cdb, din = cdb10(0x28, 0, 0), []
    elif case == "protect":
        cdb = cdb10(0x28, 0, 1, 0x20)
    elif case == "fua_without_cache":
        cdb, dout, din = cdb10(0x2A, 0, 1, 0x08), b"y" * BS, []
    elif case == "short_buffer":
        din = [BS - 1]
    elif case == "long_buffer":
        din = [BS + 1]
    elif case == "read_with_dout":
        dout = b"z" * BS
    elif case == "write_protected":
        lun, cdb, dout, din = 1, cdb10(0x2A, 0, 1), b"w" * BS, []
    elif case == "ua_after_lun_reset":
        w.port.lun_reset(NEXUS, 0)
    elif case == "ua_after_capacity_change":
        w.port.notify_capacity_changed(0)
    elif case == "reserved_by_other":
        assert w.command(OTHER, 0, bytes([0x16, 0, 0, 0, 0, 0]), None, [])[0].status == 0
    elif case == "offline":
        w.devs[0].set_offline("gone")
    elif case == "unknown_nexus":
        nexus = "naa.5001405ccccccccc"
    elif case == "unknown_lun":
        lun = 5
    elif case == "write_10_verify":
        cdb, dout, din = cdb10(0x2E, 0, 1), b"v" * BS, []
    assert not _fast(w, lun, cdb, dout, din, nexus)
    g = _fresh(write_back=case != "fua_without_cache")
    if case == "ua_after_lun_reset":
        g.port.lun_reset(NEXUS, 0)
    elif case == "ua_after_capacity_change":
        g.port.notify_capacity_changed(0)
    elif case == "reserved_by_other":
        g.command(OTHER, 0, bytes([0x16, 0, 0, 0, 0, 0]), None, [])
    elif case == "offline":
        g.devs[0].set_offline("gone")
    g.fast = False
    w.fast = True
    assert w.command(nexus, lun, cdb, dout, din) == g.command(nexus, lun, cdb, dout, din) or case.startswith("ua")


@pytest.mark.parametrize("lba, code, sense_fmt", [(BAD_LBA, errno.EIO, 0x72), (BAD_LBA + 1, errno.ENOSPC, 0x72),
                                                  (BAD_LBA + 2, errno.ENXIO, 0x72)])
def test_backstore_failures_answer_as_execute(lba: int, code: int, sense_fmt: int) -> None:
    for cdb, dout, din in ((cdb16(0x88, lba, 1), None, [BS]), (cdb16(0x8A, lba, 1), b"f" * BS, [])):
        fast, general = _fresh(), _fresh()
        general.fast = False
        a, b = fast.command(NEXUS, 2, cdb, dout, din), general.command(NEXUS, 2, cdb, dout, din)
        assert fast.taken == 1 and a == b and a[0].status == 2 and a[0].sense[0] == sense_fmt
        assert (fast.devs[2].offline is not None) == (code == errno.ENXIO) == (general.devs[2].offline is not None)


def test_disk_bytes_move_exactly() -> None:
    w = _fresh()
    payload = bytes(range(256)) * 4
    assert _fast(w, 0, cdb10(0x2A, 10, 2), payload, [])
    r, data = w.command(NEXUS, 0, cdb16(0x88, 10, 2), None, [BS, BS])
    assert r == ScsiResult(0, b"", 2 * BS) and b"".join(data) == payload
    assert bytes(w.disks[0]._mem[10 * BS : 12 * BS]) == payload
    assert struct.unpack(">H", cdb10(0x28, 0, 7)[7:9]) == (7,)

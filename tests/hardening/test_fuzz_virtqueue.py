"""Fuzzing the split virtqueue walker with hostile ring layouts, against an independent reference walker.

Each case lays out a descriptor table, an avail ring and up to three indirect tables in guarded guest memory
(tests/hardening/guarded.py), with addresses outside every region, in the GPA hole, straddling two regions,
wrapping past 2**64, lengths up to 2**32-1, loops, chains longer than the ring, indirect tables inside indirect
tables, indirect with NEXT, readable-after-writable, heads beyond the table and avail indices that jump.

The reference below follows virtio 1.x 2.7.5 and checks: the device never raises; it marks the ring broken
exactly when the avail ring is unusable; a chain it accepts is exactly the reference's buffers (every view points
at the very bytes of guest memory the descriptor names: checked by address in the memfd); a chain the reference
rejects is rejected; and the guard areas around the regions are untouched.
"""

from __future__ import annotations

import os
import random
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hardening.guarded import GPA_END, LAYOUT, GuardedMemory
from vhostscsi.virtio.virtqueue import (
    VRING_DESC_F_INDIRECT,
    VRING_DESC_F_NEXT,
    VRING_DESC_F_WRITE,
    SplitVirtqueue,
)

CASES = int(os.environ.get("VHOSTSCSI_FUZZ_CASES", "10000"))
DESC_GPA = 0x0000
AVAIL_GPA = 0x2000
USED_GPA = 0x3000
TABLE_GPAS = (0x5000, 0x7FF0, 0x20100)  # in R0; straddling R0/R1 (not one contiguous mapping); in R2
_DESC = struct.Struct("<QIHH")

MEM = GuardedMemory("hardening-vq")
STATS = {"chains": 0, "good": 0, "malformed": 0}

INTERESTING_ADDRS = tuple(sorted({
    0, 1, 0x10, 0x4000, 0x7FF0, 0x7FFF, 0x8000, 0x8001, 0xFFF0, 0xFFFF, 0x10000, 0x1FFFF, 0x20000, 0x21FF0,
    0x21FFF, GPA_END, 2**32 - 1, 2**63, 2**64 - 16, 2**64 - 1, *TABLE_GPAS,
}))
INTERESTING_LENS = (0, 1, 15, 16, 32, 51, 108, 0x10, 0x100, 0x1000, 0x7FF0, 0x8000, 0x8010, 0x10000, 2**31,
                    2**32 - 1)


def _pick(rng: random.Random, interesting: tuple[int, ...] | list[int], small: int, full: int) -> int:
    k = rng.random()
    if k < 0.5:
        return rng.choice(interesting) + rng.choice((0, 0, 0, -1, 1, -16, 16))
    if k < 0.9:
        return rng.randrange(small)
    return rng.randrange(full)


def _desc(rng: random.Random, max_next: int) -> tuple[int, int, int, int]:
    if rng.random() < 0.5:  # a plausible buffer inside (or just across the end of) a region
        _off, rsize, rgpa, _uva = rng.choice(LAYOUT)
        length = rng.choice((0, 1, 16, 51, 108, rng.randrange(0x400)))
        addr = rgpa + rng.randrange(rsize) - (length if rng.random() < 0.3 else 0)
        addr = max(addr, 0)
    else:
        addr = _pick(rng, INTERESTING_ADDRS, GPA_END + 0x100, 2**64) % 2**64
        length = _pick(rng, INTERESTING_LENS, 0x200, 2**32) % 2**32
    flags = rng.choice((0, 1, 2, 3, 1, 3, 4, rng.randrange(8))) if rng.random() < 0.95 else rng.randrange(0x10000)
    nxt = rng.randrange(max_next + 1) if rng.random() < 0.9 else rng.randrange(0x10000)
    return addr, length, flags, nxt


@st.composite
def layouts(draw: st.DrawFn) -> dict:
    """Hypothesis picks the shape and a seed; the seed fills in the (many) descriptor fields quickly."""
    size = draw(st.sampled_from([1, 2, 4, 8, 16]))
    rng = random.Random(draw(st.integers(0, 2**64 - 1)))
    last = draw(st.one_of(st.just(0), st.integers(0, 0xFFFF)))
    step = draw(st.one_of(st.integers(0, size), st.integers(0, 0xFFFF)))
    return layout_from(rng, size, last, step, draw(st.booleans()))


def layout_from(rng: random.Random, size: int, last: int, step: int, feature_indirect: bool) -> dict:
    table = [_desc(rng, size + 1) for _ in range(size)]
    indirect = [[_desc(rng, 9) for _ in range(rng.randrange(9))] for _ in TABLE_GPAS]
    # point indirect descriptors at the tables often, and chain heads at real entries mostly
    for tab in [table, *indirect]:
        for k, (a, n, f, x) in enumerate(tab):
            if f & VRING_DESC_F_INDIRECT and rng.random() < 0.7:
                tab[k] = (rng.choice(TABLE_GPAS), 16 * rng.randrange(1, 9), f, x)
    heads = [rng.randrange(size) if rng.random() < 0.95 else rng.randrange(0x10000) for _ in range(size)]
    return dict(size=size, table=table, indirect=indirect, heads=heads, last=last, avail_idx=(last + step) & 0xFFFF,
                feature_indirect=feature_indirect)


# ---- the reference --------------------------------------------------------------------------------------------

AMBIGUOUS: list = []


def ref_walk(mem: GuardedMemory, size: int, head: int, indirect_ok: bool) -> list[tuple[str, int, int]] | None:
    """(direction, gpa, length) of every buffer of the chain, None if the chain is malformed, AMBIGUOUS if the
    spec leaves the device free to take or refuse it."""
    base, n = DESC_GPA, size
    i, count, nested, writing, empty_write = head, 0, False, False, False
    segs: list[tuple[str, int, int]] = []
    while True:
        if i >= n:
            return None
        count += 1
        if count > n:
            return None
        addr, length, flags, nxt = _DESC.unpack(mem.read_gpa(base + 16 * i, 16))
        if flags & VRING_DESC_F_INDIRECT:
            if not indirect_ok or nested or flags & VRING_DESC_F_NEXT or length == 0 or length % 16:
                return None
            pieces = mem.pieces(addr, length)
            if pieces is None or len(pieces) != 1:  # a table must be one contiguous mapping
                return None
            base, n, i, count, nested = addr, length // 16, 0, 0, True
            continue
        if flags & VRING_DESC_F_WRITE:
            writing = writing or bool(length)
            empty_write = empty_write or not length
        elif writing:
            return None
        elif empty_write:
            return AMBIGUOUS  # readable after only empty writable ones: Linux vhost accepts it too; either is fine
        if length and (addr + length > 2**64 or mem.pieces(addr, length) is None):
            return None
        segs.append(("in" if flags & VRING_DESC_F_WRITE else "out", addr, length))
        if not flags & VRING_DESC_F_NEXT:
            return segs
        i = nxt


def expected_pieces(segs: list[tuple[str, int, int]], direction: str) -> list[tuple[int, int]]:
    out = []
    for d, gpa, n in segs:
        if d == direction and n:
            out += MEM.pieces(gpa, n) or []
    return out


def actual_pieces(views: list[memoryview]) -> list[tuple[int, int]]:
    return [(MEM.offset_of(v), len(v)) for v in views if len(v)]


def merge(pieces: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Adjacent pieces joined: the device may split a buffer where the reference does not, or vice versa."""
    out: list[list[int]] = []
    for off, n in pieces:
        if out and out[-1][0] + out[-1][1] == off:
            out[-1][1] += n
        else:
            out.append([off, n])
    return [tuple(p) for p in out]  # type: ignore[misc]


@settings(max_examples=CASES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])
@given(layouts())
def test_hostile_rings_yield_exact_buffers_or_errors(lay: dict) -> None:
    check_layout(lay)


def check_layout(lay: dict) -> None:
    """Lay the rings out in guest memory, pop everything, compare with the reference (also used by atheris)."""
    MEM.clear_regions()
    size = lay["size"]
    for k, d in enumerate(lay["table"]):
        MEM.write_gpa(DESC_GPA + 16 * k, _DESC.pack(*d))
    for gpa, tab in zip(TABLE_GPAS, lay["indirect"]):
        MEM.write_gpa(gpa, b"".join(_DESC.pack(*d) for d in tab))
    MEM.write_gpa(AVAIL_GPA, struct.pack("<HH", 0, lay["avail_idx"]) + b"".join(
        struct.pack("<H", h) for h in lay["heads"]))
    vq = SplitVirtqueue.from_uva(MEM.memory, size, MEM.uva(DESC_GPA), MEM.uva(AVAIL_GPA), MEM.uva(USED_GPA),
                                 indirect=lay["feature_indirect"], last_avail_idx=lay["last"])
    last, avail = lay["last"], lay["avail_idx"]
    pending = (avail - last) & 0xFFFF
    chains = vq.pop_all()
    if pending > size:
        assert vq.broken and chains == [], "avail index jumping past the ring size must break the ring"
    else:
        expect_heads = [lay["heads"][(last + k) % size] for k in range(pending)]
        good = []
        for h in expect_heads:
            if h >= size:
                break
            good.append(h)
        assert [c.head for c in chains] == good
        assert vq.broken == (len(good) < len(expect_heads))
        refs = [ref_walk(MEM, size, c.head, lay["feature_indirect"]) for c in chains]  # before any write below
        for chain, segs in zip(chains, refs):
            STATS["chains"] += 1
            if segs is AMBIGUOUS:
                continue
            if segs is None:
                STATS["malformed"] += 1
                assert chain.error is not None, f"malformed chain accepted: {chain!r}"
                continue
            assert chain.error is None, f"good chain refused: {chain.error}"
            STATS["good"] += 1
            assert merge(actual_pieces(chain.out)) == merge(expected_pieces(segs, "out"))
            assert merge(actual_pieces(chain.in_)) == merge(expected_pieces(segs, "in"))
            for v in chain.in_:  # the device writes into what it was given: only the guest's buffers change
                v[:] = b"\x5a" * len(v)
            vq.push(chain.head, chain.in_len())
    assert MEM.guards_intact(), "a write reached a guard area outside every region"


def test_layout_guards_are_real() -> None:
    """The oracle itself: a view of a region's last byte sits right before a guard page."""
    off, size, gpa, _uva = LAYOUT[0]
    v = MEM.memory.view(gpa + size - 1, 1)
    assert v is not None and MEM.offset_of(v) == off + size - 1
    assert MEM.memory.view(gpa + size - 1, 2) is None  # would cross into R1 (not one mapping)
    assert MEM.guards_intact()


def test_the_fuzz_saw_both_kinds_of_chain() -> None:
    """Runs after the fuzz (file order): a generator that only made broken chains would prove little."""
    if STATS["chains"] == 0:
        import pytest
        pytest.skip("the fuzz test did not run in this session")
    print(f"fuzz figures: {STATS}")
    assert STATS["good"] > CASES // 20 and STATS["malformed"] > CASES // 20, STATS

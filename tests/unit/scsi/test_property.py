"""Property tests: random CDBs, parameter lists and buffer shapes against the core.

Every case checks that no internal error happened (the port logs one and answers LOGICAL UNIT
COMMUNICATION FAILURE), that the recording backstore saw no access outside the LUN, that
the reported data-in length fits the buffers, and that not one byte past it was touched.
The tests together run well over 10,000 cases.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vhostscsi.scsi import Device, TargetPort
from vhostscsi.scsi import port as port_mod
from tests.unit.scsi.helpers import NEXUS, OTHER, SERIAL, WWN, RecordingBackstore

BLOCKS = 128
OPCODES = [
    0x00, 0x01, 0x03, 0x08, 0x0A, 0x0B, 0x12, 0x15, 0x16, 0x17, 0x1A, 0x1B, 0x1E, 0x25, 0x28,
    0x2A, 0x2B, 0x2E, 0x2F, 0x35, 0x41, 0x42, 0x55, 0x56, 0x57, 0x5A, 0x5E, 0x5F, 0x7F, 0x83,
    0x88, 0x89, 0x8A, 0x8E, 0x8F, 0x91, 0x93, 0x9E, 0xA0, 0xA3, 0xA4, 0xA8, 0xAA,
]
SENTINEL = 0xA5
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                     HealthCheck.function_scoped_fixture])


class Errors:
    """Collects internal errors the port would otherwise turn into sense."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def exception(self, msg: str, *args: object) -> None:
        import traceback

        self.seen.append((msg % args) + "\n" + traceback.format_exc())


@pytest.fixture
def errors(monkeypatch: pytest.MonkeyPatch) -> Iterator[Errors]:
    e = Errors()
    monkeypatch.setattr(port_mod, "log", e)
    yield e


def make(attrs: dict[str, int] | None = None, write_back: bool = True) -> tuple[TargetPort, RecordingBackstore]:
    bs = RecordingBackstore(BLOCKS * 512)
    base = dict(emulate_tpu=1, emulate_tpws=1, max_unmap_lba_count=64,
                max_unmap_block_desc_count=4, max_write_same_len=64)
    base.update(attrs or {})
    dev = Device(bs, "disk0", SERIAL, base, write_back)
    p = TargetPort(WWN, 1)
    p.add_lun(0, dev)
    p.add_lun(1, dev, write_protect=True)
    return p, bs


def lba_bytes(n: int) -> st.SearchStrategy[int]:
    """LBAs clustered around the LUN's end, plus anything at all."""
    return st.one_of(st.integers(0, BLOCKS + 2), st.integers(BLOCKS - 4, BLOCKS + 4),
                     st.integers(0, 2 ** (8 * n) - 1))


@st.composite
def cdbs(draw: st.DrawFn) -> bytes:
    code = draw(st.one_of(st.sampled_from(OPCODES), st.integers(0, 255)))
    size = {0: 6, 1: 10, 2: 10, 4: 16, 5: 12}.get(code >> 5, 16)
    if code == 0x7F:
        size = 32
    raw = bytearray(draw(st.binary(min_size=size, max_size=size)))
    raw[0] = code
    if draw(st.booleans()):
        # realistic fields: LBA near the end, small lengths, few flag bits
        if size == 10:
            raw[2:6] = draw(lba_bytes(4)).to_bytes(4, "big")
            raw[7:9] = draw(st.integers(0, 70)).to_bytes(2, "big")
        elif size == 16:
            raw[2:10] = draw(lba_bytes(8)).to_bytes(8, "big")
            raw[10:14] = draw(st.integers(0, 70)).to_bytes(4, "big")
        elif size == 12:
            raw[2:6] = draw(lba_bytes(4)).to_bytes(4, "big")
            raw[6:10] = draw(st.integers(0, 70)).to_bytes(4, "big")
        raw[1] &= draw(st.sampled_from([0x00, 0x08, 0x10, 0x1F, 0xFF]))
    if draw(st.booleans()):
        raw = raw[: draw(st.integers(1, len(raw)))]  # a short CDB buffer
    return bytes(raw)


@st.composite
def buffers(draw: st.DrawFn, max_total: int = 40 * 512) -> list[bytearray]:
    """A data buffer list: none, one, or several pieces of odd sizes."""
    count = draw(st.integers(0, 4))
    sizes = draw(st.lists(st.one_of(st.integers(0, 600), st.sampled_from([512, 4096, 8192])),
                          min_size=count, max_size=count))
    return [bytearray(draw(st.binary(min_size=s, max_size=s))) if i == 0 and s < 64 else
            bytearray(b"\x5a" * s) for i, s in enumerate(sizes)]


def execute_checked(p: TargetPort, errors: Errors, cdb: bytes, dout: list[bytearray],
                    din_sizes: list[int], lun: int = 0, nexus: str = NEXUS) -> None:
    din = [bytearray([SENTINEL]) * n for n in din_sizes]
    r = p.execute(nexus, lun, cdb, [memoryview(b) for b in dout], [memoryview(b) for b in din])
    assert not errors.seen, errors.seen[0]
    assert r.status in (0x00, 0x02, 0x18)
    if r.status == 0x02:
        assert r.sense[0] in (0x70, 0xF0, 0x72) and len(r.sense) in (8, 18, 20)
    else:
        assert r.sense == b""
    total = sum(din_sizes)
    assert 0 <= r.data_in_len <= total and r.residual >= 0
    flat = b"".join(din)
    assert flat[r.data_in_len :] == bytes([SENTINEL]) * (total - r.data_in_len)


@settings(max_examples=4000, **SETTINGS)
@given(cdb=cdbs(), dout=buffers(), din=st.lists(st.integers(0, 9000), max_size=4),
       lun=st.sampled_from([0, 0, 0, 1, 2]), wb=st.booleans())
def test_random_cdbs_never_fail_internally(errors: Errors, cdb: bytes, dout: list[bytearray],
                                           din: list[int], lun: int, wb: bool) -> None:
    p, bs = make(write_back=wb)
    execute_checked(p, errors, cdb, dout, din, lun=lun)


@st.composite
def rw_cases(draw: st.DrawFn) -> tuple[bytes, int]:
    code = draw(st.sampled_from([0x08, 0x0A, 0x28, 0x2A, 0x2E, 0xA8, 0xAA, 0x88, 0x8A, 0x8E,
                                 0x89, 0x93, 0x41, 0x2F, 0x35]))
    lba = draw(lba_bytes(8))
    n = draw(st.integers(0, 300))
    b1 = draw(st.sampled_from([0, 0x08, 0x10, 0x18, 0x20]))
    if code in (0x08, 0x0A):
        c = bytes([code, (lba >> 16) & 0x1F, (lba >> 8) & 0xFF, lba & 0xFF, n & 0xFF, 0])
    elif code in (0x28, 0x2A, 0x2E, 0x2F, 0x35, 0x41):
        c = struct.pack(">BBIBHB", code, b1, lba & 0xFFFFFFFF, 0, n & 0xFFFF, 0)
    elif code in (0xA8, 0xAA):
        c = struct.pack(">BBIIBB", code, b1, lba & 0xFFFFFFFF, n, 0, 0)
    elif code == 0x89:
        c = struct.pack(">BBQ3xBBB", code, b1, lba, n & 0xFF, 0, 0)
    else:
        c = struct.pack(">BBQIBB", code, b1, lba, n, 0, 0)
    return c, n


@settings(max_examples=3000, **SETTINGS)
@given(case=rw_cases(), out_blocks=st.integers(0, 70), in_split=st.lists(st.integers(1, 6000),
       max_size=3), extra=st.integers(-3, 3))
def test_data_path_stays_inside_the_lun(errors: Errors, case: tuple[bytes, int], out_blocks: int,
                                        in_split: list[int], extra: int) -> None:
    p, bs = make()
    cdb, _ = case
    dout = [bytearray(b"\x11" * max(0, out_blocks * 512 + extra))] if out_blocks else []
    execute_checked(p, errors, cdb, dout, in_split)
    for op, off, n in bs.log:
        assert 0 <= off and off + n <= BLOCKS * 512


@st.composite
def param_lists(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """UNMAP, MODE SELECT and PERSISTENT RESERVE OUT with random parameter lists."""
    kind = draw(st.sampled_from(["unmap", "ms6", "ms10", "pro"]))
    if kind == "unmap":
        descs = draw(st.lists(st.tuples(lba_bytes(8), st.integers(0, 80)), max_size=6))
        body = b"".join(struct.pack(">QI4x", a, b) for a, b in descs)
        bd = draw(st.one_of(st.just(len(body)), st.integers(0, 0xFFFF)))
        param = struct.pack(">HH4x", len(body) + 6, bd) + body
        param = param[: draw(st.integers(0, len(param)))]
        plen = draw(st.one_of(st.just(len(param)), st.integers(0, 0xFFFF)))
        return struct.pack(">BBxxxxBHB", 0x42, draw(st.sampled_from([0, 1])), 0, plen, 0), param
    if kind in ("ms6", "ms10"):
        param = draw(st.binary(max_size=64))
        if kind == "ms6":
            return bytes([0x15, draw(st.sampled_from([0x10, 0x11, 0])), 0, 0, len(param) & 0xFF, 0]), param
        return struct.pack(">BBxxxxxHB", 0x55, 0x10, len(param), 0), param
    param = draw(st.binary(min_size=0, max_size=40))
    sa = draw(st.integers(0, 9))
    t = draw(st.integers(0, 0xFF))
    return struct.pack(">BBB2xIB", 0x5F, sa, t, len(param), 0), param


@settings(max_examples=2000, **SETTINGS)
@given(cases=st.lists(st.tuples(param_lists(), st.sampled_from([NEXUS, OTHER])), min_size=1,
                      max_size=6))
def test_parameter_lists_and_reservation_sequences(errors: Errors,
                                                   cases: list[tuple[tuple[bytes, bytes], str]]) -> None:
    p, bs = make()
    pr = p.device(0).pr  # type: ignore[union-attr]
    for (cdb, param), nexus in cases:
        execute_checked(p, errors, cdb, [bytearray(param)] if param else [], [], nexus=nexus)
        execute_checked(p, errors, bytes([0x5E, 0, 0, 0, 0, 0, 0, 1, 0, 0]), [], [256], nexus=nexus)
        execute_checked(p, errors, bytes([0x5E, 3, 0, 0, 0, 0, 0, 1, 0, 0]), [], [256], nexus=nexus)
        # the reservation state stays coherent whatever the initiators sent
        assert pr.holder is None or pr.holder in pr.regs
        assert (pr.holder is None) == (pr.type == 0)
        assert pr.active == (pr.holder is not None or pr.spc2 is not None)
        assert len({(id(r.port), r.nexus) for r in pr.regs}) == len(pr.regs)
        assert all(r.key for r in pr.regs)
    for op, off, n in bs.log:
        assert 0 <= off and off + n <= BLOCKS * 512


@settings(max_examples=1500, **SETTINGS)
@given(events=st.lists(st.sampled_from(["cap", "reset", "add", "remove", "nexus", "cmd", "end"]),
                       max_size=8),
       cdb=cdbs())
def test_unit_attention_events_interleaved(errors: Errors, events: list[str], cdb: bytes) -> None:
    p, bs = make()
    for e in events:
        if e == "cap":
            p.notify_capacity_changed(0)
        elif e == "reset":
            p.lun_reset(NEXUS, 0)
        elif e == "add":
            p.add_lun(2, p.device(0))  # type: ignore[arg-type]
        elif e == "remove":
            p.remove_lun(2)
        elif e == "nexus":
            p.it_nexus_reset(NEXUS)
        elif e == "end":
            p.end_nexus(NEXUS)
        execute_checked(p, errors, cdb, [], [255])
        execute_checked(p, errors, bytes([0x03, 0, 0, 0, 96, 0]), [], [96])

"""Byte-for-byte checks of the vhost-user codec."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vhostscsi.vhost_user import codec
from vhostscsi.vhost_user.codec import (
    Decoder,
    Inflight,
    Message,
    PayloadError,
    ProtocolError,
    RegionDesc,
    VringAddr,
    decode,
    encode,
)
from vhostscsi.vhost_user.protocol import FLAG_NEED_REPLY, FLAG_REPLY, MAX_PAYLOAD, Request


def test_encode_get_features_reply_bytes() -> None:
    msg = codec.reply_to(Message(Request.GET_FEATURES), codec.pack_u64(0x1_7000_0006))
    assert encode(msg) == bytes.fromhex("01000000" "05000000" "08000000") + bytes.fromhex("0600007001000000")


def test_decode_set_vring_num_bytes() -> None:
    raw = bytes.fromhex("08000000" "01000000" "08000000" "02000000" "80000000")
    (msg,) = decode(raw)
    assert (msg.request, msg.flags, msg.fds) == (Request.SET_VRING_NUM, 1, ())
    assert codec.unpack_vring_state(msg.payload) == (2, 128)
    assert encode(msg) == raw


def test_need_reply_and_reply_flags() -> None:
    (msg,) = decode(struct.pack("<III", 3, 1 | FLAG_NEED_REPLY, 0))
    assert msg.need_reply and not msg.is_reply
    r = codec.reply_to(msg, codec.pack_u64(0))
    assert r.flags == 1 | FLAG_REPLY and not r.need_reply


def test_incremental_feed_byte_by_byte_with_fds() -> None:
    first = encode(Message(Request.SET_VRING_KICK, payload=codec.pack_vring_file(1, True)))
    second = encode(Message(Request.SET_OWNER))
    dec = Decoder()
    out: list[Message] = []
    stream = first + second
    for i, b in enumerate(stream):
        out += dec.feed(bytes([b]), [42] if i == 0 else [])
    assert [m.request for m in out] == [Request.SET_VRING_KICK, Request.SET_OWNER]
    assert out[0].fds == (42,) and out[1].fds == ()
    assert codec.unpack_vring_file(out[0].payload) == (1, True)
    assert dec.buffered == 0


def test_fds_arriving_mid_message_belong_to_it() -> None:
    raw = encode(Message(Request.SET_VRING_CALL, payload=codec.pack_vring_file(0, True)))
    dec = Decoder()
    assert dec.feed(raw[:5]) == []
    (msg,) = dec.feed(raw[5:], [7])
    assert msg.fds == (7,)


def test_several_messages_in_one_chunk() -> None:
    raw = b"".join(encode(Message(r)) for r in (Request.SET_OWNER, Request.GET_FEATURES, Request.RESET_OWNER))
    assert [m.request for m in decode(raw)] == [3, 1, 4]


def test_truncated_input_is_buffered_then_rejected_by_decode() -> None:
    raw = encode(Message(Request.SET_FEATURES, payload=codec.pack_u64(5)))
    dec = Decoder()
    assert dec.feed(raw[:-1]) == []
    assert dec.buffered == len(raw) - 1
    with pytest.raises(ProtocolError, match="trailing"):
        decode(raw[:-1])


def test_oversize_payload_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="exceeds"):
        Decoder().feed(struct.pack("<III", 5, 1, MAX_PAYLOAD + 1))
    with pytest.raises(PayloadError):
        encode(Message(5, payload=bytes(MAX_PAYLOAD + 1)))


def test_bad_version_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="version"):
        Decoder().feed(struct.pack("<III", 1, 2, 0))


def test_too_many_fds_rejected_and_returned_for_closing() -> None:
    dec = Decoder()
    with pytest.raises(ProtocolError, match="fds"):
        dec.feed(encode(Message(Request.SET_MEM_TABLE)), list(range(100, 109)))
    assert sorted(dec.take_fds()) == list(range(100, 109))


def test_wrong_payload_sizes() -> None:
    with pytest.raises(PayloadError):
        codec.unpack_u64(b"\0" * 7)
    with pytest.raises(PayloadError):
        codec.unpack_vring_state(b"\0" * 12)
    with pytest.raises(PayloadError):
        codec.unpack_vring_addr(b"\0" * 39)
    with pytest.raises(PayloadError):
        codec.unpack_memory_table(struct.pack("<II", 2, 0) + bytes(32))
    with pytest.raises(PayloadError):
        codec.unpack_memory_table(struct.pack("<II", 9, 0) + bytes(9 * 32))
    with pytest.raises(PayloadError):
        codec.unpack_inflight(bytes(16))
    with pytest.raises(PayloadError):
        codec.unpack_config(struct.pack("<III", 0, 10, 0) + bytes(4))


def test_vring_addr_layout() -> None:
    a = VringAddr(1, 0, 0x1000, 0x3000, 0x2000, 0)
    raw = codec.pack_vring_addr(a)
    assert raw == struct.pack("<IIQQQQ", 1, 0, 0x1000, 0x3000, 0x2000, 0)
    assert codec.unpack_vring_addr(raw) == a


def test_memory_table_layout_both_sizes() -> None:
    regions = [RegionDesc(0, 0x100000, 0x7F0000000000, 0), RegionDesc(0x100000, 0x100000, 0x7F1000000000, 0x100000)]
    raw = codec.pack_memory_table(regions)
    assert raw[:8] == struct.pack("<II", 2, 0)
    assert raw[8:40] == struct.pack("<QQQQ", 0, 0x100000, 0x7F0000000000, 0)
    assert codec.unpack_memory_table(raw) == regions
    padded = raw + bytes(6 * 32)
    assert codec.unpack_memory_table(padded) == regions


def test_inflight_wire_size_and_round_trip() -> None:
    info = Inflight(8192, 0, 3, 128)
    raw = codec.pack_inflight(info)
    assert len(raw) == 24 and raw[:20] == struct.pack("<QQHH", 8192, 0, 3, 128)
    assert codec.unpack_inflight(raw) == info
    assert codec.unpack_inflight(raw[:20]) == info


def test_vring_file_nofd_flag() -> None:
    assert codec.pack_vring_file(3, False) == struct.pack("<Q", 3 | 0x100)
    assert codec.unpack_vring_file(struct.pack("<Q", 0x102)) == (2, False)


def test_unknown_request_names() -> None:
    assert Message(999).name() == "REQUEST_999"
    assert Message(Request.GET_VRING_BASE).name() == "GET_VRING_BASE"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.binary(max_size=64)), max_size=8), st.data())
def test_any_split_of_a_valid_stream_decodes_the_same(msgs: list[tuple[int, bytes]], data: st.DataObject) -> None:
    stream = b"".join(encode(Message(r, 1, p)) for r, p in msgs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    dec = Decoder()
    out: list[Message] = []
    prev = 0
    for c in cuts + [len(stream)]:
        out += dec.feed(stream[prev:c])
        prev = c
    assert [(m.request, m.payload) for m in out] == msgs


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_only_raise_protocol_error(raw: bytes) -> None:
    try:
        Decoder().feed(raw)
    except ProtocolError:
        pass


def test_fds_go_to_the_message_that_ends_the_chunk() -> None:
    """QEMU sends NUM, BASE, ADDR without waiting, then KICK with its eventfd: one read returns all four."""
    chunk = b"".join(encode(Message(r, payload=codec.pack_vring_state(0, 1)))
                     for r in (Request.SET_VRING_NUM, Request.SET_VRING_BASE))
    chunk += encode(Message(Request.SET_VRING_KICK, payload=codec.pack_vring_file(0, True)))
    msgs = Decoder().feed(chunk, [9])
    assert [m.fds for m in msgs] == [(), (), (9,)]


def test_fd_attribution_matches_the_kernel() -> None:
    """Through a real socketpair: the kernel's read boundaries and SCM_RIGHTS decide, not our assumptions."""
    import os
    import socket

    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    efd = os.eventfd(0)
    try:
        a.sendall(encode(Message(Request.SET_VRING_NUM, payload=codec.pack_vring_state(0, 8))))
        a.sendall(encode(Message(Request.SET_VRING_BASE, payload=codec.pack_vring_state(0, 0))))
        socket.send_fds(a, [encode(Message(Request.SET_VRING_KICK, payload=codec.pack_vring_file(0, True)))], [efd])
        a.sendall(encode(Message(Request.SET_VRING_ENABLE, payload=codec.pack_vring_state(0, 1))))
        dec = Decoder()
        got: list[Message] = []
        while len(got) < 4:
            data, fds, _f, _a = socket.recv_fds(b, 65536, 8)
            got += dec.feed(data, fds)
        assert [(m.request, len(m.fds)) for m in got] == [
            (Request.SET_VRING_NUM, 0), (Request.SET_VRING_BASE, 0), (Request.SET_VRING_KICK, 1),
            (Request.SET_VRING_ENABLE, 0)]
        os.close(got[2].fds[0])
    finally:
        os.close(efd)
        a.close()
        b.close()


@pytest.mark.parametrize(
    "request_, value, pack, unpack, size",
    [
        (Request.SET_FEATURES, 0x1_7000_0006, codec.pack_u64, codec.unpack_u64, 8),
        (Request.SET_VRING_NUM, codec.VringState(1, 256), lambda v: codec.pack_vring_state(*v),
         codec.unpack_vring_state, 8),
        (Request.SET_VRING_ADDR, VringAddr(2, 1, 0x10, 0x20, 0x30, 0x40), codec.pack_vring_addr,
         codec.unpack_vring_addr, 40),
        (Request.SET_VRING_KICK, codec.VringFile(3, True), lambda v: codec.pack_vring_file(*v),
         codec.unpack_vring_file, 8),
        (Request.SET_MEM_TABLE, [RegionDesc(0, 1 << 30, 0x7F00_0000_0000, 0)], codec.pack_memory_table,
         codec.unpack_memory_table, 40),
        (Request.ADD_MEM_REG, RegionDesc(1 << 32, 1 << 20, 0x7E00_0000_0000, 4096), codec.pack_single_region,
         codec.unpack_single_region, 40),
        (Request.GET_INFLIGHT_FD, Inflight(4096, 0, 3, 128), codec.pack_inflight, codec.unpack_inflight, 24),
        (Request.SET_CONFIG, codec.ConfigSpace(0, 4, 0, b"\1\2\3\4"), codec.pack_config, codec.unpack_config, 16),
    ],
    ids=lambda x: x.name if isinstance(x, Request) else None,
)
def test_every_payload_round_trips_through_the_wire(request_, value, pack, unpack, size) -> None:
    raw = encode(Message(request_, 1, pack(value), (5,)))
    assert len(raw) == 12 + size and raw[:12] == struct.pack("<III", request_, 1, size)
    (msg,) = Decoder().feed(raw, [5])
    assert msg.fds == (5,) and unpack(msg.payload) == value


def test_log_payload() -> None:
    assert codec.unpack_log(struct.pack("<QQ", 4096, 8)) == (4096, 8)
    with pytest.raises(PayloadError):
        codec.unpack_log(bytes(8))

"""fd ownership when the vhost-user stream turns out to be garbage (found by test_fuzz_session.py).

Contract (docs/CONTRACTS.md, codec): after ProtocolError from `Decoder.feed`, the caller closes `take_fds()`;
every fd fed in must therefore be on a message already returned or in `take_fds()`. A front end that sends a
message's fds with its first bytes and the rest of it together with garbage must not leave an fd open in the
daemon each time (repeat it over many connections and the daemon runs out of fds for every guest).
"""

from __future__ import annotations

import os
import struct

import pytest

from vhostscsi.vhost_user import codec
from vhostscsi.vhost_user.codec import Decoder, Message, ProtocolError
from vhostscsi.vhost_user.protocol import VERSION, Request


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


def test_fds_of_a_message_completed_in_the_failing_feed_are_handed_back() -> None:
    fd = os.eventfd(0, os.EFD_CLOEXEC)
    try:
        raw = codec.encode(Message(Request.SET_VRING_CALL, VERSION, codec.pack_u64(0)))
        dec = Decoder()
        assert dec.feed(raw[:-1], [fd]) == []  # fds arrive with the first bytes of the message
        garbage = struct.pack("<III", 1, 0x7, 0)  # version bits 3: not vhost-user
        with pytest.raises(ProtocolError):
            dec.feed(raw[-1:] + garbage)  # completes the message, then hits garbage in the same chunk
        assert fd in dec.take_fds(), "the fd of the completed message is neither returned nor handed back"
    finally:
        if _is_open(fd):
            os.close(fd)


def test_fds_held_for_an_incomplete_message_are_handed_back() -> None:
    fd = os.eventfd(0, os.EFD_CLOEXEC)
    try:
        header = struct.pack("<III", Request.SET_VRING_KICK, VERSION, 1 << 20)  # a payload no peer may send
        dec = Decoder()
        assert dec.feed(header[:5], [fd]) == []
        with pytest.raises(ProtocolError):
            dec.feed(header[5:])
        assert fd in dec.take_fds()
    finally:
        if _is_open(fd):
            os.close(fd)

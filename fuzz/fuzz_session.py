#!/usr/bin/env python3
"""atheris: raw bytes -> vhost-user stream (with real fds) -> Decoder -> Session, as the daemon's connection.

Input layout: byte 0 says which fds may ride (bit 0: memfds of guest RAM whose contents are the input's tail,
bits 1-4: up to 15 eventfds); the rest is split at 0xFE 0xFE markers into chunks. A chunk starting with a
request that takes fds gets one (SET_MEM_TABLE/SET_INFLIGHT_FD/ADD_MEM_REG: a memfd; SET_VRING_KICK/CALL/ERR:
an eventfd) while they last; bit 5 of byte 0 gives every other chunk a spare eventfd too (fds on wrong messages).
Checks as tests/hardening/test_fuzz_session.py: only ProtocolError escapes, no fd left open, no mapping left.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import hardening_module, run  # noqa: E402


MEMFD_REQUESTS = {5, 32, 37}
EVENTFD_REQUESTS = {12, 13, 14}


load = hardening_module("session")


def make(t):
    def one_input(data: bytes) -> None:
        if not data:
            return
        before = t.open_fds()
        mode, body = data[0], data[1:]
        events_left = (mode >> 1) & 15

        def fds_for(chunk: bytes) -> list[int]:
            nonlocal events_left
            req = int.from_bytes(chunk[:4], "little") if len(chunk) >= 4 else -1
            if req in MEMFD_REQUESTS and mode & 1:
                # sealable as QEMU's memfd RAM, unless mode bit 6 asks for one the session must refuse
                fd = os.memfd_create(t.MEM_NAME, os.MFD_CLOEXEC | (0 if mode & 64 else os.MFD_ALLOW_SEALING))
                os.ftruncate(fd, 65536)
                os.pwrite(fd, body[-65536:], 0)
                return [fd]
            if events_left and (req in EVENTFD_REQUESTS or mode & 32):
                events_left -= 1
                return [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)]
            return []

        engine = t.Engine()
        try:
            for chunk in body.split(b"\xfe\xfe"):
                if chunk:
                    engine.feed(chunk, fds_for(chunk))
        except t.ProtocolError:
            pass
        finally:
            engine.drop()
        del engine
        leaked = t.open_fds() - before
        assert not leaked, f"fds left open: {sorted(leaked)}"
        assert t.mapped_guest_memory() == 0, "guest memory still mapped"
        assert t.STATS["left_open"] == 0 and t.STATS["decoder_lost"] == 0, t.STATS

    return one_input


def seeds() -> list[bytes]:
    """QEMU 7.2's start-up as one message per chunk (and a variant with everything in one chunk)."""
    import random

    t = load()
    case = t.Case(random.Random(1))
    msgs = case.qemu_start()
    for m in msgs:
        for fd in m.fds:
            os.close(fd)
    raw = [t.codec.encode(t.Message(m.request, m.flags, m.payload)) for m in msgs]
    ram = bytes(65536)
    return [bytes([1 | (15 << 1)]) + b"\xfe\xfe".join(raw) + b"\xfe\xfe" + ram,
            bytes([0]) + b"".join(raw)]


if __name__ == "__main__":
    if sys.argv[1:2] == ["--seed"]:
        from _common import CORPUS

        (CORPUS / "session").mkdir(parents=True, exist_ok=True)
        for i, s in enumerate(seeds()):
            (CORPUS / "session" / f"seed-qemu-start-{i}").write_bytes(s)
    else:
        run("session", load, make)

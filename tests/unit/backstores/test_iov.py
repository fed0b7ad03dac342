"""Vectored I/O helpers: short transfers are resumed at the right byte, empty buffers skipped."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from vhostscsi.backstores import BackstoreError
from vhostscsi.backstores.iov import preadv_full, pwritev_full, zero_fill

from .conftest import pattern, split


def _clip(bufs: list[memoryview], limit: int) -> list[memoryview]:
    """The first `limit` bytes of an iovec, as the kernel would transfer on a short call."""
    out = []
    for b in bufs:
        if limit <= 0:
            break
        out.append(b[:limit])
        limit -= b.nbytes
    return out


def test_short_writes_resume_mid_buffer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.pwritev
    calls = []

    def short(fd: int, bufs: list[memoryview], offset: int, *flags: int) -> int:
        calls.append(offset)
        return real(fd, _clip(list(bufs), 700), offset, *flags)  # at most 700 bytes per call

    monkeypatch.setattr(os, "pwritev", short)
    data = pattern(5000, seed=4)
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        pwritev_full(fd, 100, split(data, [0, 333, 1, 2000, 0]), "t")
    finally:
        os.close(fd)
    assert (tmp_path / "f").read_bytes() == bytes(100) + data
    assert calls == [100 + 700 * i for i in range(8)]


def test_short_reads_resume_mid_buffer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.preadv
    monkeypatch.setattr(os, "preadv", lambda fd, bufs, off: real(fd, _clip(list(bufs), 300), off))
    data = pattern(4096, seed=8)
    (tmp_path / "f").write_bytes(data)
    out = bytearray(4000)
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        preadv_full(fd, 96, split(out, [7, 1000, 0, 2]), "t", eof_zero=False)
    finally:
        os.close(fd)
    assert out == data[96:]


def test_unexpected_eof_is_eio_unless_sparse(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x" * 100)
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        with pytest.raises(BackstoreError) as info:
            preadv_full(fd, 0, [memoryview(bytearray(200))], "dev", eof_zero=False)
        assert info.value.errno == errno.EIO and "end of device" in str(info.value)
    finally:
        os.close(fd)


def test_zero_fill_handles_large_and_shaped_views() -> None:
    big = bytearray(b"\x01" * 200_000)
    words = memoryview(bytearray(b"\x02" * 64)).cast("I")
    zero_fill([memoryview(big), words])
    assert big == bytes(200_000) and words.tobytes() == bytes(64)


def test_os_errors_carry_errno_and_context() -> None:
    r, w = os.pipe()
    try:
        with pytest.raises(BackstoreError) as info:
            pwritev_full(r, 0, [memoryview(b"abc")], "pipe-store")
        assert info.value.errno == errno.ESPIPE
        assert "pipe-store: write at byte 0" in str(info.value) and "ESPIPE" in str(info.value)
    finally:
        os.close(r)
        os.close(w)

"""Ramdisk engine: bytes land where they should and unmapped ranges read as zeros."""

from __future__ import annotations

import errno

import pytest

from vhostscsi.backstores import BackstoreError, RamdiskBackstore, open_backstore

from .conftest import SO, pattern, split


def test_open_from_storage_object_uses_size_and_block_size() -> None:
    bs = open_backstore(SO("rd_mcp", "rd0", size=1 << 20, attributes={"block_size": 4096}))
    assert isinstance(bs, RamdiskBackstore)
    assert (bs.size, bs.block_size, bs.readonly) == (1 << 20, 4096, False)
    bs.close()


def test_scattered_write_then_gathered_read_roundtrip() -> None:
    with RamdiskBackstore("rd", 1 << 20) as bs:
        data = pattern(10000)
        bs.writev(3 * 512, split(data, [1, 511, 4096, 0, 3]))
        out = bytearray(10000 + 1024)
        bs.readv(2 * 512, split(out, [700, 5000]))
        assert out[:512] == bytes(512)
        assert out[512 : 512 + 10000] == data
        assert out[512 + 10000 :] == bytes(512)


def test_unmap_zeroes_partial_and_whole_pages_only_in_range() -> None:
    with RamdiskBackstore("rd", 64 * 1024) as bs:
        full = pattern(64 * 1024, seed=9)
        bs.writev(0, [memoryview(full)])
        bs.unmap(1000, 20000)
        out = bytearray(64 * 1024)
        bs.readv(0, [memoryview(out)])
        expect = bytearray(full)
        expect[1000:21000] = bytes(20000)
        assert out == expect


def test_out_of_range_and_closed_raise_backstore_error() -> None:
    bs = RamdiskBackstore("rd", 4096)
    with pytest.raises(BackstoreError) as info:
        bs.readv(4000, [memoryview(bytearray(512))])
    assert info.value.errno == errno.EINVAL
    bs.close()
    with pytest.raises(BackstoreError) as info:
        bs.readv(0, [memoryview(bytearray(512))])
    assert info.value.errno == errno.EBADF


def test_zero_size_is_refused() -> None:
    with pytest.raises(BackstoreError) as info:
        RamdiskBackstore("rd", 0)
    assert info.value.errno == errno.EINVAL and "rd" in str(info.value)

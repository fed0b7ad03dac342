"""block engine on a real loop device: O_DIRECT fast path, bounce path, discard, read-only."""

from __future__ import annotations

import errno
import mmap
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from vhostscsi.backstores import BackstoreError, BlockBackstore, FileIOBackstore, open_backstore

from .conftest import SO, pattern, split

MiB = 1 << 20
SIZE = 8 * MiB


def _losetup(img: Path, *opts: str) -> str:
    res = subprocess.run(["losetup", "-f", "--show", *opts, str(img)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"no loop device here: losetup says {res.stderr.strip() or res.returncode}")
    return res.stdout.strip()


@pytest.fixture
def loopdev(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    img = tmp_path / "backing.img"
    img.write_bytes(pattern(SIZE, seed=5))
    dev = _losetup(img)
    try:
        yield dev, img
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


def aligned(n: int) -> mmap.mmap:
    """Page-aligned memory, like mapped guest RAM."""
    return mmap.mmap(-1, n)


def test_size_and_block_size_come_from_the_device(loopdev: tuple[str, Path]) -> None:
    dev, _ = loopdev
    with open_backstore(SO("block", "b0", dev=dev, size=0)) as bs:
        assert isinstance(bs, BlockBackstore)
        assert (bs.size, bs.block_size, bs.readonly) == (SIZE, 512, False)


def test_aligned_roundtrip_reaches_the_backing_file(loopdev: tuple[str, Path]) -> None:
    dev, img = loopdev
    data = pattern(64 * 1024, seed=11)
    src, dst = aligned(64 * 1024), aligned(64 * 1024)
    src[:] = data
    with BlockBackstore("b", dev) as bs:
        bs.writev(MiB, split(memoryview(src), [4096] * 16), fua=True)  # type: ignore[arg-type]
        bs.readv(MiB, [memoryview(dst)])
    assert dst[:] == data
    with open(img, "rb") as f:
        f.seek(MiB)
        assert f.read(64 * 1024) == data


def test_unaligned_buffers_go_through_bounce(loopdev: tuple[str, Path]) -> None:
    dev, _ = loopdev
    raw = bytearray(8193)
    view = memoryview(raw)[1:]  # odd address: O_DIRECT refuses it
    view[:] = pattern(8192, seed=2)
    with BlockBackstore("b", dev) as bs:
        bs.writev(4096, [view[:100], view[100:]])
        out = bytearray(8193)
        bs.readv(4096, [memoryview(out)[1:]])
    assert out[1:] == pattern(8192, seed=2)


def test_unaligned_range_read_modify_write_keeps_neighbours(loopdev: tuple[str, Path]) -> None:
    dev, _ = loopdev
    with BlockBackstore("b", dev) as bs:
        bs.writev(1000, [memoryview(bytearray(b"\xab" * 300))])
        bs.writev(5000, [memoryview(bytearray(b"\xcd" * 10))])  # head and tail in one block
        out = aligned(8192)
        bs.readv(0, [memoryview(out)])
        part = bytearray(7)
        bs.readv(1297, [memoryview(part)])
    expect = pattern(SIZE, seed=5)[:8192]
    expect[1000:1300] = b"\xab" * 300
    expect[5000:5010] = b"\xcd" * 10
    assert out[:] == expect
    assert part == expect[1297:1304]


def test_discard_and_write_zeroes_read_back_zero_on_loop(loopdev: tuple[str, Path]) -> None:
    dev, _ = loopdev
    with BlockBackstore("b", dev) as bs:
        bs.unmap(MiB, MiB)
        bs.write_zeroes(4 * MiB, 4096)
        out = aligned(SIZE)
        bs.readv(0, [memoryview(out)])
    expect = pattern(SIZE, seed=5)
    expect[MiB : 2 * MiB] = bytes(MiB)
    expect[4 * MiB : 4 * MiB + 4096] = bytes(4096)
    assert out[:] == expect


def test_readonly_device_refuses_writes(tmp_path: Path) -> None:
    img = tmp_path / "ro.img"
    img.write_bytes(pattern(MiB))
    dev = _losetup(img, "-r")
    try:
        with BlockBackstore("ro", dev) as bs:  # not asked read-only: the device is
            assert bs.readonly
            with pytest.raises(BackstoreError) as info:
                bs.writev(0, [memoryview(aligned(4096))])
            assert info.value.errno == errno.EROFS
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)
    assert img.read_bytes() == pattern(MiB)


def test_fileio_accepts_a_block_device_path(loopdev: tuple[str, Path]) -> None:
    dev, _ = loopdev
    with FileIOBackstore("fb", dev, size=123) as bs:
        assert bs.size == SIZE  # the device's size, as LIO's fileio does
        out = bytearray(512)
        bs.readv(SIZE - 512, [memoryview(out)])
    assert out == pattern(SIZE, seed=5)[-512:]


def test_regular_file_is_refused_with_a_hint(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(bytes(4096))
    with pytest.raises(BackstoreError) as info:
        BlockBackstore("nb", str(tmp_path / "f"))
    assert info.value.errno == errno.ENOTBLK and "fileio" in str(info.value)


def test_write_cache_is_read_from_the_device_queue(loopdev: tuple[str, Path]) -> None:
    dev, _ = loopdev
    queue = Path("/sys/block") / Path(dev).name / "queue" / "write_cache"
    with BlockBackstore("b", dev) as bs:
        assert bs.write_cache == (queue.read_text().strip() == "write back")
        queue.write_text("write through")
        assert bs.write_cache is False
        queue.write_text("write back")
        assert bs.write_cache is True


def test_4k_sector_device_alignment_and_rmw(tmp_path: Path) -> None:
    """A 4096-byte-sector device: 512-byte LUN blocks are refused, sub-sector I/O is bounced."""
    img = tmp_path / "4k.img"
    img.write_bytes(pattern(MiB, seed=6))
    dev = _losetup(img, "-b", "4096")
    try:
        with pytest.raises(BackstoreError) as info:
            BlockBackstore("small", dev, block_size=512)
        assert info.value.errno == errno.EINVAL and "4096" in str(info.value)
        with BlockBackstore("b4k", dev) as bs:
            assert (bs.block_size, bs.align) == (4096, 4096)
            raw = bytearray(1000)
            raw[:] = b"\x5a" * 1000
            bs.writev(4096 + 512, [memoryview(raw)])  # inside one sector: read-modify-write
            out = aligned(3 * 4096)
            bs.readv(0, [memoryview(out)])
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)
    expect = pattern(MiB, seed=6)[: 3 * 4096]
    expect[4096 + 512 : 4096 + 1512] = b"\x5a" * 1000
    assert out[:] == expect
    assert img.read_bytes()[: 3 * 4096] == expect

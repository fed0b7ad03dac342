"""fileio engine on real files: placement, sparse reads, O_DSYNC/FUA, holes, errors."""

from __future__ import annotations

import errno
import fcntl
import os
import subprocess
from pathlib import Path

import pytest

from vhostscsi.backstores import BackstoreError, FileIOBackstore, open_backstore
from vhostscsi.backstores.iov import IOV_MAX

from .conftest import SO, pattern, split

MiB = 1 << 20


def test_creates_sparse_file_and_reads_zeros(tmp_path: Path) -> None:
    path = tmp_path / "disk.img"
    with open_backstore(SO("fileio", "disk0", dev=str(path), size=4 * MiB)) as bs:
        assert isinstance(bs, FileIOBackstore)
        assert (bs.size, bs.block_size) == (4 * MiB, 512)
        out = bytearray(b"\xff" * 8192)
        bs.readv(MiB, [memoryview(out)])
        assert out == bytes(8192)
    assert path.exists() and path.stat().st_blocks == 0


def test_read_past_short_file_end_is_zero_filled_across_buffers(tmp_path: Path) -> None:
    path = tmp_path / "short.img"
    data = pattern(1000)
    path.write_bytes(data)
    with FileIOBackstore("short", str(path), size=MiB) as bs:
        out = bytearray(b"\xee" * 1536)
        bs.readv(0, split(out, [512, 512]))  # 1000 bytes then EOF inside the second view
        assert out[:1000] == data and out[1000:] == bytes(536)


def test_more_buffers_than_iov_max_roundtrip(tmp_path: Path) -> None:
    n = IOV_MAX + 300
    data = pattern(n * 512, seed=3)
    with FileIOBackstore("big", str(tmp_path / "big.img"), size=2 * n * 512) as bs:
        bs.writev(512, split(data, [512] * n))
        out = bytearray(n * 512 + 1024)
        bs.readv(0, split(out, [100] * (n + 200)))
        assert out[512 : 512 + n * 512] == data
        assert out[:512] == bytes(512) and out[-512:] == bytes(512)
    assert (tmp_path / "big.img").read_bytes()[512 : 512 + n * 512] == data


def test_write_through_opens_with_o_dsync(tmp_path: Path) -> None:
    with FileIOBackstore("wt", str(tmp_path / "wt.img"), size=MiB, write_back=False) as bs:
        assert fcntl.fcntl(bs.fd, fcntl.F_GETFL) & os.O_DSYNC
    with FileIOBackstore("wb", str(tmp_path / "wb.img"), size=MiB, write_back=True) as bs:
        assert not fcntl.fcntl(bs.fd, fcntl.F_GETFL) & os.O_DSYNC


def test_fua_write_asks_the_kernel_for_dsync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[int, ...]] = []
    real = os.pwritev

    def spy(fd: int, bufs: list[memoryview], offset: int, *flags: int) -> int:
        seen.append(tuple(flags))
        return real(fd, bufs, offset, *flags)

    monkeypatch.setattr(os, "pwritev", spy)
    with FileIOBackstore("f", str(tmp_path / "f.img"), size=MiB) as bs:
        bs.writev(0, [memoryview(pattern(512))], fua=True)
        bs.writev(512, [memoryview(pattern(512))], fua=False)
    assert seen == [(os.RWF_DSYNC,), ()]
    assert (tmp_path / "f.img").read_bytes()[:1024] == pattern(512) * 2


def test_unmap_punches_hole_and_keeps_size(tmp_path: Path) -> None:
    path = tmp_path / "u.img"
    with FileIOBackstore("u", str(path), size=4 * MiB) as bs:
        bs.writev(0, [memoryview(pattern(4 * MiB))])
        bs.flush()
        before = path.stat().st_blocks
        bs.unmap(MiB, 2 * MiB)
        out = bytearray(4 * MiB)
        bs.readv(0, [memoryview(out)])
    expect = pattern(4 * MiB)
    expect[MiB : 3 * MiB] = bytes(2 * MiB)
    assert out == expect
    st = path.stat()
    assert st.st_size == 4 * MiB
    assert st.st_blocks <= before - (2 * MiB // 512)  # the range is deallocated


def test_write_zeroes_zeroes_without_freeing(tmp_path: Path) -> None:
    path = tmp_path / "z.img"
    with FileIOBackstore("z", str(path), size=MiB) as bs:
        bs.writev(0, [memoryview(pattern(MiB))])
        bs.flush()
        before = path.stat().st_blocks
        bs.write_zeroes(4096, 8192)
        out = bytearray(MiB)
        bs.readv(0, [memoryview(out)])
    expect = pattern(MiB)
    expect[4096 : 4096 + 8192] = bytes(8192)
    assert out == expect
    assert path.stat().st_blocks == before


def test_readonly_refuses_writes_and_leaves_file_alone(tmp_path: Path) -> None:
    path = tmp_path / "ro.img"
    path.write_bytes(pattern(4096))
    with FileIOBackstore("ro", str(path), size=4096, readonly=True) as bs:
        for call in (
            lambda: bs.writev(0, [memoryview(bytearray(512))]),
            lambda: bs.unmap(0, 512),
            lambda: bs.write_zeroes(0, 512),
        ):
            with pytest.raises(BackstoreError) as info:
                call()
            assert info.value.errno == errno.EROFS
    assert path.read_bytes() == pattern(4096)


def test_missing_directory_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BackstoreError) as info:
        FileIOBackstore("gone", str(tmp_path / "no" / "such.img"), size=MiB)
    assert info.value.errno == errno.ENOENT
    assert "gone" in str(info.value) and "such.img" in str(info.value)


def test_empty_file_without_size_is_refused(tmp_path: Path) -> None:
    (tmp_path / "e.img").touch()
    with pytest.raises(BackstoreError) as info:
        FileIOBackstore("e", str(tmp_path / "e.img"))
    assert info.value.errno == errno.EINVAL


def test_full_filesystem_reports_enospc(tmp_path: Path) -> None:
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        with FileIOBackstore("full", str(mnt / "f.img"), size=4 * MiB) as bs:
            with pytest.raises(BackstoreError) as info:
                bs.writev(0, [memoryview(bytearray(MiB))])
            assert info.value.errno == errno.ENOSPC
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_refresh_size_follows_an_unsized_file_only(tmp_path: Path) -> None:
    grown, fixed = tmp_path / "grown.img", tmp_path / "fixed.img"
    grown.write_bytes(bytes(4096))
    fixed.write_bytes(bytes(4096))
    with FileIOBackstore("g", str(grown)) as g, FileIOBackstore("f", str(fixed), size=8192) as f:
        os.truncate(grown, 3 * MiB)
        os.truncate(fixed, 3 * MiB)
        assert (g.size, f.size) == (4096, 8192)
        assert (g.refresh_size(), f.refresh_size()) == (3 * MiB, 8192)
        assert g.size == 3 * MiB


def test_without_fallocate_support_zeros_are_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file system without hole punching or ZERO_RANGE (EOPNOTSUPP): the range still reads as zeros."""
    from vhostscsi.backstores import linux

    def unsupported(fd: int, mode: int, offset: int, length: int) -> None:
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(linux, "fallocate", unsupported)
    path = tmp_path / "nf.img"
    with FileIOBackstore("nf", str(path), size=4 * MiB, write_back=False) as bs:
        bs.writev(0, [memoryview(pattern(4 * MiB, seed=12))])
        bs.unmap(1000, 3 * MiB)  # more than one zero chunk, unaligned ends
        bs.write_zeroes(3 * MiB + 5000, 7)
    expect = pattern(4 * MiB, seed=12)
    expect[1000 : 1000 + 3 * MiB] = bytes(3 * MiB)
    expect[3 * MiB + 5000 : 3 * MiB + 5007] = bytes(7)
    assert path.read_bytes() == expect


def test_other_fallocate_errors_are_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vhostscsi.backstores import linux

    def no_space(fd: int, mode: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(linux, "fallocate", no_space)
    with FileIOBackstore("ns", str(tmp_path / "ns.img"), size=MiB) as bs:
        with pytest.raises(BackstoreError) as info:
            bs.write_zeroes(0, 4096)
    assert info.value.errno == errno.ENOSPC and "write zeroes 0+4096" in str(info.value)

"""The newc writer, checked byte for byte and by GNU cpio reading it back."""

from __future__ import annotations

import io
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from vhostscsi.guestkit.cpio import Entry, write_cpio


def test_header_bytes_of_one_file() -> None:
    buf = io.BytesIO()
    write_cpio(buf, [Entry("init", stat.S_IFREG | 0o755, b"#!/bin/sh\n")])
    raw = buf.getvalue()
    expect_head = (
        b"070701"
        + b"00000001"  # ino
        + b"000081ED"  # S_IFREG|0755
        + b"00000000" * 2  # uid gid
        + b"00000001"  # nlink
        + b"00000000"  # mtime
        + b"0000000A"  # size 10
        + b"00000000" * 4  # dev/rdev
        + b"00000005"  # "init\0"
        + b"00000000"  # check
    )
    assert raw.startswith(expect_head + b"init\0")
    # 110 + 5 = 115 -> padded to 116; data 10 -> padded to 12
    assert raw[116:128] == b"#!/bin/sh\n\0\0"
    assert raw[128:134] == b"070701"
    assert raw.endswith(b"TRAILER!!!\0" + b"\0" * (-(110 + 11) % 4))
    assert len(raw) % 4 == 0


def test_deterministic() -> None:
    entries = [Entry("a", stat.S_IFDIR | 0o755), Entry("a/b", stat.S_IFREG | 0o644, b"x" * 7)]
    one, two = io.BytesIO(), io.BytesIO()
    write_cpio(one, entries)
    write_cpio(two, entries)
    assert one.getvalue() == two.getvalue()


@pytest.mark.skipif(shutil.which("cpio") is None, reason="GNU cpio not installed")
def test_gnu_cpio_extracts_what_we_wrote(tmp_path: Path) -> None:
    archive = tmp_path / "a.cpio"
    with open(archive, "wb") as f:
        write_cpio(
            f,
            [
                Entry("d", stat.S_IFDIR | 0o755),
                Entry("d/file", stat.S_IFREG | 0o640, b"hello world"),
                Entry("d/link", stat.S_IFLNK | 0o777, b"file"),
                Entry("d/console", stat.S_IFCHR | 0o600, rdev=(5, 1)),
            ],
        )
    listing = subprocess.run(
        ["cpio", "-itv", "-F", str(archive)], capture_output=True, text=True, check=True
    ).stdout
    assert "crw-------" in listing and "5,   1" in listing.replace("5, 1", "5,   1")
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(
        ["cpio", "-id", "--quiet", "--no-absolute-filenames", "-F", str(archive), "d/file", "d/link"],
        cwd=out,
        check=True,
    )
    assert (out / "d/file").read_bytes() == b"hello world"
    assert stat.S_IMODE((out / "d/file").stat().st_mode) == 0o640
    assert (out / "d/link").is_symlink() and (out / "d/link").readlink() == Path("file")

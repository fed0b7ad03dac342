"""Image building: what lands in the initramfs, and the content-addressed cache."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from support.hostparts import missing_host_part

from vhostscsi.guestkit import GuestImage, GuestkitError, MissingHostPart, find_kernel

pytestmark = pytest.mark.skipif(
    shutil.which("cpio") is None or not Path("/usr/bin/busybox").exists(),
    reason="needs GNU cpio (to read images back) and busybox-static",
)


def listing(img: GuestImage) -> dict[str, str]:
    """path -> `cpio -tv` line, for every member of the image."""
    out = subprocess.run(
        ["cpio", "-itv", "-F", str(img.initrd)], capture_output=True, text=True, check=True
    ).stdout
    return {line.split()[-1] if "->" not in line else line.split()[-3]: line for line in out.splitlines()}


@pytest.fixture(scope="module")
def kernel_ok() -> None:
    try:
        find_kernel()
    except MissingHostPart as exc:
        missing_host_part(str(exc))


def test_image_contents(tmp_path: Path, kernel_ok: None) -> None:
    img = GuestImage.build(
        tmp_path,
        extra_binaries=["/usr/bin/sg_raw"],
        modules=["virtio_scsi"],
        init_script="echo hi\n",
        extra_files={"/etc/cdbs.txt": b"12 00 00 00 24 00\n"},
    )
    members = listing(img)
    assert members["init"].startswith("-rwxr-xr-x")
    assert members["guest.sh"].startswith("-rwxr-xr-x")
    assert members["bin/sh"].startswith("lrwxrwxrwx") and "-> /bin/busybox" in members["bin/sh"]
    assert members["dev/console"].startswith("crw-------")
    assert "usr/bin/sg_raw" in members
    assert any(m.endswith("libsgutils2-1.46.so.2") or "libsgutils2" in m for m in members)
    assert "lib64/ld-linux-x86-64.so.2" in members
    ver = img.kernel_version
    for mod in ("virtio_ring", "virtio", "scsi_common", "scsi_mod", "virtio_scsi"):
        assert any(m.startswith(f"lib/modules/{ver}/") and m.endswith(f"/{mod}.ko") for m in members), mod
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(
        ["cpio", "-id", "--quiet", "-F", str(img.initrd), "etc/guestkit/modules", "etc/cdbs.txt", "guest.sh"],
        cwd=out,
        check=True,
    )
    order = [Path(p).stem for p in (out / "etc/guestkit/modules").read_text().split()]
    assert sorted(order) == ["scsi_common", "scsi_mod", "virtio", "virtio_ring", "virtio_scsi"]
    assert order.index("virtio_ring") < order.index("virtio") and order.index("scsi_common") < order.index(
        "scsi_mod"
    )
    assert order[-1] == "virtio_scsi"
    assert (out / "etc/cdbs.txt").read_bytes() == b"12 00 00 00 24 00\n"
    assert (out / "guest.sh").read_text() == "echo hi\n"


def test_cache_hit_and_miss(tmp_path: Path, kernel_ok: None) -> None:
    one = GuestImage.build(tmp_path, init_script="echo one\n")
    inode = one.initrd.stat().st_ino
    again = GuestImage.build(tmp_path, init_script="echo one\n")
    other = GuestImage.build(tmp_path, init_script="echo two\n")
    assert again.initrd == one.initrd and one.initrd.stat().st_ino == inode  # reused, not rewritten
    assert other.initrd != one.initrd
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([one.initrd.name, other.initrd.name])


def test_compressed_image_is_gzip(tmp_path: Path, kernel_ok: None) -> None:
    img = GuestImage.build(tmp_path, init_script="true\n", compress=True)
    assert img.initrd.name.endswith(".cpio.gz") and img.initrd.read_bytes()[:2] == b"\x1f\x8b"


def test_missing_program_is_one_clear_error(tmp_path: Path, kernel_ok: None) -> None:
    with pytest.raises(GuestkitError, match="'no-such-tool' not found"):
        GuestImage.build(tmp_path, extra_binaries=["no-such-tool"])


def test_prune_removes_least_recently_used_first(tmp_path: Path) -> None:
    from vhostscsi.guestkit.image import prune_cache

    paths = []
    for i in range(4):
        p = tmp_path / f"initrd-{i}.cpio"
        p.write_bytes(b"x" * 1000)
        os.utime(p, (1000 + i, 1000 + i))
        paths.append(p)
    os.utime(paths[0], (2000, 2000))  # used recently: survives
    (tmp_path / "other.txt").write_bytes(b"y" * 5000)  # not an image: never touched
    removed = prune_cache(tmp_path, limit_bytes=2500, keep=paths[1])  # paths[1] is the oldest, but kept
    assert removed == [paths[2], paths[3]]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["initrd-0.cpio", "initrd-1.cpio", "other.txt"]

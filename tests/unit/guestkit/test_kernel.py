"""Module resolution against modules.dep: dependency order, built-ins, compressed modules."""

from __future__ import annotations

import lzma
from pathlib import Path

import pytest

from support.hostparts import missing_host_part

from vhostscsi.guestkit.kernel import GuestkitError, MissingHostPart, Kernel, find_kernel, module_bytes, resolve_modules
from vhostscsi.guestkit.snippets import VIRTIO_SCSI_MODULES


def fake_kernel(tmp_path: Path) -> Kernel:
    """A tiny modules tree: c needs b needs a; d is built in; e is xz-compressed."""
    root = tmp_path / "modules"
    mdir = root / "9.9.9-test"
    (mdir / "kernel").mkdir(parents=True)
    (mdir / "modules.dep").write_text(
        "kernel/a.ko:\n"
        "kernel/b-x.ko: kernel/a.ko\n"
        "kernel/c.ko: kernel/b-x.ko kernel/a.ko\n"
        "kernel/e.ko.xz: kernel/a.ko\n"
        "kernel/f_fast.ko:\n"
        "kernel/f_generic.ko:\n"
    )
    (mdir / "modules.builtin").write_text("kernel/d.ko\n")
    (mdir / "modules.softdep").write_text("# soft dependencies\nsoftdep c pre: crypto-f post: a\n")
    (mdir / "modules.alias").write_text("alias crypto-f f_fast\nalias crypto-f f_generic\nalias pci:v*d* c\n")
    for name in ("a", "b-x", "c"):
        (mdir / "kernel" / f"{name}.ko").write_bytes(name.encode())
    (mdir / "kernel" / "e.ko.xz").write_bytes(lzma.compress(b"ELF-e"))
    vmlinuz = tmp_path / "vmlinuz-9.9.9-test"
    vmlinuz.write_bytes(b"k")
    return Kernel(vmlinuz, "9.9.9-test", root)


def test_dependencies_first_each_once(tmp_path: Path) -> None:
    k = fake_kernel(tmp_path)
    assert resolve_modules(k, ["c", "b_x", "d", "e"]) == [
        "?kernel/f_fast.ko",
        "?kernel/f_generic.ko",
        "kernel/a.ko",
        "kernel/b-x.ko",
        "kernel/c.ko",
        "kernel/e.ko.xz",
    ]


def test_soft_dependencies_come_first_marked_optional(tmp_path: Path) -> None:
    k = fake_kernel(tmp_path)
    assert resolve_modules(k, ["c"]) == [
        "?kernel/f_fast.ko",
        "?kernel/f_generic.ko",
        "kernel/a.ko",
        "kernel/b-x.ko",
        "kernel/c.ko",
    ]


def test_unknown_module_names_the_kernel(tmp_path: Path) -> None:
    with pytest.raises(GuestkitError, match="9.9.9-test has no module 'nope'"):
        resolve_modules(fake_kernel(tmp_path), ["nope"])


def test_xz_module_is_unpacked_for_insmod(tmp_path: Path) -> None:
    dest, data = module_bytes(fake_kernel(tmp_path), "kernel/e.ko.xz")
    assert (dest, data) == ("lib/modules/9.9.9-test/kernel/e.ko", b"ELF-e")


def test_explicit_vmlinuz_missing_is_clear(tmp_path: Path) -> None:
    with pytest.raises(GuestkitError, match="does not exist"):
        find_kernel(vmlinuz=tmp_path / "vmlinuz-nope")


def test_installed_cloud_kernel_virtio_scsi_order() -> None:
    try:
        k = find_kernel()
    except MissingHostPart as exc:
        missing_host_part(str(exc))
    if "cloud" not in k.version:
        pytest.skip(f"the order below is the cloud kernel's; found {k.version}")
    names = [Path(p).name.removesuffix(".ko") for p in resolve_modules(k, VIRTIO_SCSI_MODULES)]
    # TESTING.md's order for the cloud kernel
    assert names == [
        "virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_pci",
        "scsi_common", "scsi_mod", "virtio_scsi", "sd_mod", "sg",
    ]

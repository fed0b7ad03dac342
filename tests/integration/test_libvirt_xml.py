"""The printed libvirt XML, judged by libvirt itself.

``virt-xml-validate`` checks a complete domain embedding our fragment against libvirt's schema.
``virsh domxml-to-native`` needs a QEMU driver; libvirt's embedded driver (``qemu:///embed``) runs
inside virsh without libvirtd, but as root it wants the ``libvirt-qemu`` user that only a full
libvirtd install creates, so it is run as an unprivileged user (nobody) here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from vhostscsi.integrations.cli import run

WWN = "naa.500140568720f76f"
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
VIRSH = shutil.which("virsh")
QEMU_DRIVER = Path("/usr/lib/x86_64-linux-gnu/libvirt/connection-driver/libvirt_driver_qemu.so")


def domain(devices: str, *, arch: str = "x86_64", machine: str = "pc", head: str = "",
           tail: str = "") -> str:
    ns = f" xmlns:qemu='{QEMU_NS}'" if "qemu:" in tail else ""
    return (
        f"<domain type='qemu'{ns}>\n  <name>vhostscsi-test</name>\n"
        "  <memory unit='KiB'>131072</memory>\n"
        f"{head}"
        f"  <os><type arch='{arch}' machine='{machine}'>hvm</type></os>\n"
        f"  <devices>\n{devices}  </devices>\n{tail}</domain>\n"
    )


def user_engine_domain(socket_dir: str) -> str:
    out = run(["libvirt-xml", WWN, "--no-check", "--engine", "user", "--socket-dir", socket_dir,
               "--bus", "pci.0", "--addr", "0x6"])
    comment, rest = out.split("\n", 1)
    backing, commandline = rest.split("</memoryBacking>\n")
    return domain("", head=comment + "\n" + backing + "</memoryBacking>\n", tail=commandline)


def validate(tmp_path: Path, xml: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "domain.xml"
    path.write_text(xml)
    return subprocess.run(["virt-xml-validate", str(path), "domain"], capture_output=True, text=True,
                          timeout=60)


needs_validator = pytest.mark.skipif(
    shutil.which("virt-xml-validate") is None or shutil.which("xmllint") is None,
    reason="virt-xml-validate (libvirt-clients) and xmllint (libxml2-utils) needed",
)


@needs_validator
@pytest.mark.parametrize("options", [[], ["--bus", "pci.0", "--addr", "0x5"]])
def test_hostdev_validates_in_a_pc_domain(tmp_path: Path, options: list[str]) -> None:
    xml = domain(run(["libvirt-xml", WWN, "--no-check", *options]))
    proc = validate(tmp_path, xml)
    assert proc.returncode == 0, proc.stderr


@needs_validator
def test_ccw_hostdev_validates_in_an_s390x_domain(tmp_path: Path) -> None:
    xml = domain(run(["libvirt-xml", WWN, "--no-check", "--ccw", "--devno", "fe.0.1000"]),
                 arch="s390x", machine="s390-ccw-virtio")
    proc = validate(tmp_path, xml)
    assert proc.returncode == 0, proc.stderr


@needs_validator
def test_user_engine_pieces_validate(tmp_path: Path) -> None:
    proc = validate(tmp_path, user_engine_domain(str(tmp_path)))
    assert proc.returncode == 0, proc.stderr


@needs_validator
def test_validator_rejects_a_broken_hostdev(tmp_path: Path) -> None:
    """Control: the schema check is not a rubber stamp."""
    xml = domain(run(["libvirt-xml", WWN, "--no-check"]).replace("protocol='vhost'", "protocol='vhost-user'"))
    assert validate(tmp_path, xml).returncode != 0


@pytest.fixture
def embed_root() -> Iterator[Path]:
    """A directory the unprivileged virsh can use as the embedded driver's whole state."""
    if VIRSH is None or not QEMU_DRIVER.exists():
        pytest.skip("virsh and libvirt-daemon-driver-qemu needed for domxml-to-native")
    with tempfile.TemporaryDirectory(prefix="vhostscsi-libvirt-", dir="/tmp") as name:
        os.chmod(name, 0o777)
        yield Path(name)


def domxml_to_native(root: Path, xml: str) -> subprocess.CompletedProcess[str]:
    path = root / "domain.xml"
    path.write_text(xml)
    os.chmod(path, 0o644)
    prefix: list[str] = []
    if os.geteuid() == 0:
        prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(root),
           "XDG_RUNTIME_DIR": str(root), "LC_ALL": "C"}
    return subprocess.run(
        prefix + ["virsh", "-c", f"qemu:///embed?root={root}", "domxml-to-native", "qemu-argv", str(path)],
        capture_output=True, text=True, timeout=300, env=env,
    )


def test_user_engine_domain_becomes_our_qemu_arguments(embed_root: Path) -> None:
    proc = domxml_to_native(embed_root, user_engine_domain("/run/vhostscsi"))
    assert proc.returncode == 0, proc.stderr
    argv = proc.stdout
    expected = run(["qemu-args", WWN, "--no-check", "--engine", "user", "--socket-dir", "/run/vhostscsi",
                    "--bus", "pci.0", "--addr", "0x6"]).splitlines()[2:]
    assert " ".join(expected) in argv  # our -chardev and -device, verbatim and in order
    assert '"qom-type":"memory-backend-memfd"' in argv and '"share":true' in argv


@pytest.mark.skipif(os.path.exists("/dev/vhost-scsi"), reason="host has /dev/vhost-scsi")
def test_kernel_hostdev_is_accepted_up_to_opening_vhost_scsi(embed_root: Path) -> None:
    xml = domain(run(["libvirt-xml", WWN, "--no-check", "--bus", "pci.0", "--addr", "0x5"]))
    proc = domxml_to_native(embed_root, xml)
    assert proc.returncode != 0
    assert proc.stderr.strip() == (
        "error: unsupported configuration: vhost-scsi device file '/dev/vhost-scsi' cannot be found"
    )

"""The printed libvirt XML, judged by libvirt itself.

``virt-xml-validate`` checks a complete domain embedding our fragment against libvirt's schema.
``virsh domxml-to-native`` needs a QEMU driver; libvirt's embedded driver (``qemu:///embed``) runs
inside virsh without libvirtd, but as root it wants the ``libvirt-qemu`` user that only a full
libvirtd install creates, so it is run as an unprivileged user (nobody) here.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.config import one_disk_config
from support.daemon import ServeProcess
from support.guest import build_image

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
    chardev = run(["qemu-args", WWN, "--no-check", "--engine", "user", "--socket-dir", "/run/vhostscsi",
                   "--bus", "pci.0", "--addr", "0x6"]).splitlines()[2]
    device = ('{"driver":"vhost-user-scsi-pci","chardev":"vhostscsi-naa.500140568720f76f",'
              '"bus":"pci.0","addr":"0x6"}')
    assert f"{chardev} -device '{device}'" in argv  # our -chardev and -device, verbatim and in order
    assert '"qom-type":"memory-backend-memfd"' in argv and '"share":true' in argv


@pytest.mark.skipif(os.path.exists("/dev/vhost-scsi"), reason="host has /dev/vhost-scsi")
def test_kernel_hostdev_is_accepted_up_to_opening_vhost_scsi(embed_root: Path) -> None:
    xml = domain(run(["libvirt-xml", WWN, "--no-check", "--bus", "pci.0", "--addr", "0x5"]))
    proc = domxml_to_native(embed_root, xml)
    assert proc.returncode != 0
    assert proc.stderr.strip() == (
        "error: unsupported configuration: vhost-scsi device file '/dev/vhost-scsi' cannot be found"
    )


GUEST_SCRIPT = r"""
for i in 1 2 3 4 5 6 7 8 9 10; do [ -e /sys/class/scsi_device/0:0:1:0 ] && break; sleep 1; done
for d in /sys/class/scsi_device/*; do
  echo "DEV $(basename $d) $(cat $d/device/vendor)|$(cat $d/device/model)|$(cat $d/device/rev)"
done
"""


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.mark.guest
def test_libvirt_runs_the_user_engine_domain_against_the_daemon(embed_root: Path) -> None:
    """libvirt itself starts QEMU from our XML; the guest finds its disk on `vhostscsi serve`.

    (This caught a real bug: as key=value, the -device in <qemu:commandline> was created before
    libvirt's own JSON devices and took the balloon's PCI slot, so QEMU refused to start.)
    """
    import time

    from vhostscsi.guestkit import VIRTIO_SCSI_MODULES

    img = build_image(embed_root / "img", modules=VIRTIO_SCSI_MODULES, init_script=GUEST_SCRIPT)
    for path in (embed_root / "img", img.initrd):
        os.chmod(path, 0o755)
    (embed_root / "etc").mkdir(mode=0o777)
    os.chmod(embed_root / "etc", 0o777)  # libvirt (unprivileged) makes etc/qemu in it
    (embed_root / "etc" / "qemu.conf").write_text('stdio_handler = "file"\n')  # no virtlogd here
    config = one_disk_config(embed_root / "saveconfig.json", embed_root / "disk0.img", 64 << 20, wwn=WWN)
    sockets = embed_root / "sockets"
    fragment = run(["libvirt-xml", WWN, "--engine", "user", "--config", str(config), "--socket-dir", str(sockets)])
    _, rest = fragment.split("\n", 1)
    backing, commandline = rest.split("</memoryBacking>\n")
    console = embed_root / "console.txt"
    xml = (f"<domain type='qemu' xmlns:qemu='{QEMU_NS}'>\n  <name>vhostscsi-test</name>\n"
           "  <memory unit='KiB'>262144</memory>\n" + backing + "</memoryBacking>\n"
           f"  <os><type arch='x86_64' machine='pc'>hvm</type><kernel>{img.kernel}</kernel>"
           f"<initrd>{img.initrd}</initrd><cmdline>console=ttyS0 quiet loglevel=0 panic=-1</cmdline></os>\n"
           "  <on_poweroff>destroy</on_poweroff>\n"
           f"  <devices><serial type='file'><source path='{console}'/></serial></devices>\n"
           + commandline + "</domain>\n")
    domain_file = embed_root / "domain.xml"
    domain_file.write_text(xml)
    os.chmod(domain_file, 0o644)

    daemon = ServeProcess(embed_root, config, wwn=WWN, sockdir=sockets)
    virsh = None
    try:
        daemon.wait_socket(30)
        os.chmod(sockets, 0o755)
        os.chmod(sockets / f"{WWN}.sock", 0o666)  # QEMU runs as the unprivileged user
        prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if os.geteuid() == 0 else []
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(embed_root),
               "XDG_RUNTIME_DIR": str(embed_root), "LC_ALL": "C"}
        virsh = subprocess.Popen(prefix + ["virsh", "-q", "-c", f"qemu:///embed?root={embed_root}"],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        assert virsh.stdin is not None
        virsh.stdin.write(f"define {domain_file}\nstart vhostscsi-test\n".encode())
        virsh.stdin.flush()
        deadline = time.monotonic() + 120
        while "GUESTKIT-EXIT" not in (console.read_text(errors="replace") if console.exists() else ""):
            if virsh.poll() is not None or time.monotonic() > deadline:
                out, _ = virsh.communicate(b"quit\n", timeout=60)
                pytest.fail(f"the guest did not finish; virsh said: {out.decode(errors='replace')[-2000:]}")
            time.sleep(0.5)
        virsh.stdin.write(b"destroy vhostscsi-test\nquit\n")
        virsh.stdin.flush()
        virsh.wait(timeout=60)
    finally:
        if virsh is not None and virsh.poll() is None:
            _stop(virsh)
        pid_file = embed_root / "run" / "qemu" / "vhostscsi-test.pid"
        if pid_file.exists():  # the QEMU libvirt started, if it outlived virsh
            try:
                os.kill(int(pid_file.read_text().strip()), 9)
            except (ProcessLookupError, ValueError):
                pass
        daemon.terminate(30)
    text = console.read_text(errors="replace").replace("\r\n", "\n")
    assert re.findall(r"^DEV (.*)$", text, re.M) == ["0:0:1:0 LIO-ORG |disk0           |4.0 "], text[-2000:]

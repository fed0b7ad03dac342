"""Option handling beyond the seed's examples: placements, the user engine, and bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from vhostscsi.integrations import libvirt, qemu
from vhostscsi.integrations.cli import UsageError, run

WWN = "naa.500140568720f76f"
WWN2 = "naa.5001405aaaaaaaaa"


def test_pci_without_placement() -> None:
    assert run(["qemu-args", WWN, "--no-check"]) == f"-device vhost-scsi-pci,wwpn={WWN}\n"


def test_ccw_without_devno() -> None:
    assert run(["qemu-args", WWN, "--no-check", "--ccw"]) == f"-device vhost-scsi-ccw,wwpn={WWN}\n"


def test_two_targets_one_line_each() -> None:
    out = run(["qemu-args", WWN, WWN2, "--no-check", "--bus", "pci.0"])
    assert out == (f"-device vhost-scsi-pci,wwpn={WWN},bus=pci.0\n"
                   f"-device vhost-scsi-pci,wwpn={WWN2},bus=pci.0\n")


def test_user_engine_args(tmp_path: Path) -> None:
    out = run(["qemu-args", WWN, "--no-check", "--engine", "user", "--socket-dir", str(tmp_path),
               "--memory", "1G", "--bus", "pci.0", "--addr", "0x7"])
    assert out == (
        "-object memory-backend-memfd,id=mem,size=1G,share=on\n"
        "-machine memory-backend=mem\n"
        f"-chardev socket,id=vhostscsi-{WWN},path={tmp_path}/{WWN}.sock\n"
        f"-device vhost-user-scsi-pci,chardev=vhostscsi-{WWN},bus=pci.0,addr=0x7\n"
    )


def test_user_engine_two_targets_share_one_memory_backend(tmp_path: Path) -> None:
    out = run(["qemu-args", WWN, WWN2, "--no-check", "--engine", "user", "--socket-dir", str(tmp_path)])
    lines = out.splitlines()
    assert sum(line.startswith("-object memory-backend-memfd") for line in lines) == 1
    assert f"-chardev socket,id=vhostscsi-{WWN2},path={tmp_path}/{WWN2}.sock" in lines


def test_user_engine_default_socket_dir_is_the_daemons() -> None:
    from vhostscsi.engines.user.paths import default_socket_dir

    out = run(["qemu-args", WWN, "--no-check", "--engine", "user"])
    assert f"path={default_socket_dir()}/{WWN}.sock\n" in out


def test_comma_in_socket_path_is_doubled_for_qemu(tmp_path: Path) -> None:
    odd = tmp_path / "a,b"
    out = run(["qemu-args", WWN, "--no-check", "--engine", "user", "--socket-dir", str(odd)])
    assert f"path={tmp_path}/a,,b/{WWN}.sock\n" in out


def test_user_engine_libvirt_xml(tmp_path: Path) -> None:
    out = run(["libvirt-xml", WWN, "--no-check", "--engine", "user", "--socket-dir", str(tmp_path)])
    body = out.split("\n", 1)[1]
    assert out.startswith("<!-- vhostscsi user engine, target naa.500140568720f76f:")
    assert "xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'" in out.splitlines()[0]
    assert body == (
        "<memoryBacking>\n"
        "  <source type='memfd'/>\n"
        "  <access mode='shared'/>\n"
        "</memoryBacking>\n"
        "<qemu:commandline>\n"
        "  <qemu:arg value='-chardev'/>\n"
        f"  <qemu:arg value='socket,id=vhostscsi-{WWN},path={tmp_path}/{WWN}.sock'/>\n"
        "  <qemu:arg value='-device'/>\n"
        f"  <qemu:arg value='{{\"driver\":\"vhost-user-scsi-pci\",\"chardev\":\"vhostscsi-{WWN}\"}}'/>\n"
        "</qemu:commandline>\n"
    )


def test_xml_attribute_escaping() -> None:
    assert libvirt.qemu_commandline_xml(["a'<&>\""]) == (
        "<qemu:commandline>\n  <qemu:arg value='a&apos;&lt;&amp;&gt;\"'/>\n</qemu:commandline>\n"
    )


@pytest.mark.parametrize(
    ("bus", "addr", "expected"),
    [
        ("pci.0", "0x5", "<address type='pci' domain='0x0000' bus='0x00' slot='0x05' function='0x0'/>"),
        ("pci.1", "0x1f.0x7", "<address type='pci' domain='0x0000' bus='0x01' slot='0x1f' function='0x7'/>"),
        (None, "3", "<address type='pci' domain='0x0000' bus='0x00' slot='0x03' function='0x0'/>"),
        ("pcie.12", "0x0", "<address type='pci' domain='0x0000' bus='0x0c' slot='0x00' function='0x0'/>"),
    ],
)
def test_pci_address_conversion(bus: str | None, addr: str, expected: str) -> None:
    assert libvirt.pci_address(qemu.parse_pci(bus, addr)) == expected


@pytest.mark.parametrize(
    ("devno", "expected"),
    [
        ("fe.0.1000", "<address type='ccw' cssid='0xfe' ssid='0x0' devno='0x1000'/>"),
        ("0.3.1", "<address type='ccw' cssid='0x0' ssid='0x3' devno='0x0001'/>"),
    ],
)
def test_ccw_address_conversion(devno: str, expected: str) -> None:
    assert libvirt.ccw_address(qemu.parse_devno(devno)) == expected


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["qemu-args", "naa.123", "--no-check"], "invalid WWN 'naa.123'"),
        (["qemu-args", "iqn.2003-01.org.x", "--no-check"], "invalid WWN"),
        (["qemu-args", WWN, "--no-check", "--addr", "0x20"], "a PCI slot is 0x0..0x1f"),
        (["qemu-args", WWN, "--no-check", "--addr", "0x5.0x8"], "is not a PCI slot[.function]"),
        (["qemu-args", WWN, "--no-check", "--bus", "pci 0"], "is not a QEMU bus id"),
        (["qemu-args", WWN, "--no-check", "--ccw", "--devno", "ff.0.1000"], "cssid is 0x0..0xfe"),
        (["qemu-args", WWN, "--no-check", "--ccw", "--devno", "fe.4.1000"], "is not cssid.ssid.devno"),
        (["qemu-args", WWN, "--no-check", "--ccw", "--addr", "0x5"], "with --ccw use --devno"),
        (["qemu-args", WWN, "--no-check", "--devno", "fe.0.1000"], "add --ccw"),
        (["qemu-args", WWN, "--no-check", "--ccw", "--engine", "user"], "no vhost-user-scsi-ccw"),
        (["qemu-args", WWN, "--no-check", "--engine", "user", "--memory", "lots"], "memory size 'lots'"),
        (["qemu-args", WWN, WWN, "--no-check"], "the same WWN is given twice"),
        (["qemu-args", WWN, WWN2, "--no-check", "--addr", "0x5"], "one WWN at a time"),
        (["qemu-args", WWN, "--no-check", "--engine", "vfio"], "invalid choice: 'vfio'"),
        (["libvirt-xml", WWN, "--no-check", "--bus", "pci.0"], "needs a slot: add --addr"),
        (["libvirt-xml", WWN, "--no-check", "--bus", "bridge1", "--addr", "0x1"], "numbered PCI bus"),
        (["qemu-args"], "the following arguments are required: WWN"),
    ],
)
def test_bad_input_is_one_clear_error(argv: list[str], message: str) -> None:
    with pytest.raises(UsageError) as info:
        run(argv)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("version", "ms", "option"), [
    ("10.0", 1000, "reconnect-ms=1000"),
    ("9.2", 250, "reconnect-ms=250"),
    ("9.1", 1500, "reconnect=2"),   # whole seconds, rounded up
    ("8.2", 200, "reconnect=1"),    # never 0, which would mean "do not reconnect"
])
def test_reconnect_in_the_syntax_of_the_named_qemu(tmp_path: Path, version: str, ms: int, option: str) -> None:
    common = [WWN, "--no-check", "--engine", "user", "--socket-dir", str(tmp_path), "--reconnect-ms", str(ms),
              "--qemu-version", version]
    args = run(["qemu-args", *common])
    assert f"-chardev socket,id=vhostscsi-{WWN},path={tmp_path}/{WWN}.sock,{option}\n" in args
    assert f"<qemu:arg value='socket,id=vhostscsi-{WWN},path={tmp_path}/{WWN}.sock,{option}'/>" in run(
        ["libvirt-xml", *common])


def test_no_reconnect_option_unless_asked(tmp_path: Path) -> None:
    out = run(["qemu-args", WWN, "--no-check", "--engine", "user", "--socket-dir", str(tmp_path)])
    assert ",reconnect" not in out


@pytest.mark.parametrize(("extra", "message"), [
    (["--engine", "user", "--reconnect-ms", "1000", "--qemu-version", "8.1"], "QEMU 8.1's vhost-user-scsi cannot reconnect"),
    (["--engine", "user", "--reconnect-ms", "1000", "--qemu-version", "7.2"], "leave out --reconnect-ms"),
    (["--engine", "user", "--reconnect-ms", "0", "--qemu-version", "10.0"], "positive number of milliseconds"),
    (["--engine", "user", "--reconnect-ms", "1000", "--qemu-version", "ten"], "use MAJOR.MINOR"),
    (["--reconnect-ms", "1000"], "is for the user engine"),
])
def test_bad_reconnect_requests_are_one_line_errors(extra: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        run(["qemu-args", WWN, "--no-check", *extra])

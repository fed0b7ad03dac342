"""Libvirt domain XML that attaches a guest to one of our vhost targets.

The kernel engine maps onto libvirt's own ``<hostdev mode='subsystem' type='scsi_host'>`` with
``protocol='vhost'`` (libvirt then runs QEMU's vhost-scsi-pci). Libvirt has no element for
vhost-user-scsi, so the user engine needs two pieces instead: shared memfd RAM (``<memoryBacking>``)
and the QEMU arguments passed through ``<qemu:commandline>``, which requires the qemu XML namespace
on the ``<domain>`` element. Output is text, formatted exactly like the seed (single quotes, two-space
indent), so it can be compared byte for byte and pasted into ``virsh edit``.
"""

from __future__ import annotations

from xml.sax.saxutils import escape

from vhostscsi.integrations.qemu import CcwDevno, PciSlot

QEMU_NAMESPACE = "http://libvirt.org/schemas/domain/qemu/1.0"


def attr(value: str) -> str:
    """A value safe inside single quotes (double quotes, as in JSON, stay readable)."""
    return escape(value, {"'": "&apos;"})


def pci_address(pci: PciSlot) -> str:
    """Libvirt's PCI address element for the slot QEMU's ``bus=pci.N,addr=S.F`` names."""
    return (
        f"<address type='pci' domain='0x0000' bus='0x{pci.bus_number():02x}' "
        f"slot='0x{pci.slot or 0:02x}' function='0x{pci.function:x}'/>"
    )


def ccw_address(devno: CcwDevno) -> str:
    """Libvirt's CCW address element for QEMU's ``devno=cssid.ssid.devno``."""
    return f"<address type='ccw' cssid='0x{devno.cssid:x}' ssid='0x{devno.ssid:x}' devno='0x{devno.devno:04x}'/>"


def hostdev_xml(wwn: str, address: str | None = None) -> str:
    """The seed's ``<hostdev>`` for a kernel vhost target, with an optional ``<address>`` line."""
    lines = [
        "<hostdev mode='subsystem' type='scsi_host'>",
        f"  <source protocol='vhost' wwpn='{attr(wwn)}'/>",
    ]
    if address is not None:
        lines.append(f"  {address}")
    lines.append("</hostdev>")
    return "\n".join(lines) + "\n"


def memory_backing_xml() -> str:
    """Shared memfd guest RAM, which every vhost-user back end needs to map the guest's buffers."""
    return (
        "<memoryBacking>\n"
        "  <source type='memfd'/>\n"
        "  <access mode='shared'/>\n"
        "</memoryBacking>\n"
    )


def qemu_commandline_xml(args: list[str]) -> str:
    """QEMU arguments that libvirt passes through untouched (needs xmlns:qemu on ``<domain>``)."""
    body = "".join(f"  <qemu:arg value='{attr(arg)}'/>\n" for arg in args)
    return f"<qemu:commandline>\n{body}</qemu:commandline>\n"


def user_engine_xml(wwn: str, device_args: list[str]) -> str:
    """The two pieces a domain needs for a user-engine target, with a note on where each goes."""
    return (
        f"<!-- vhostscsi user engine, target {attr(wwn)}: put <memoryBacking> in <domain>, "
        f"<qemu:commandline> at the end of <domain>, and declare "
        f"xmlns:qemu='{QEMU_NAMESPACE}' on <domain> -->\n"
        + memory_backing_xml()
        + qemu_commandline_xml(device_args)
    )

"""QEMU command-line arguments that attach a guest to one of our vhost targets.

Two engines serve the same target, and QEMU reaches them differently: the kernel engine through
``vhost-scsi-pci``/``vhost-scsi-ccw`` naming the WWN (QEMU opens /dev/vhost-scsi and the kernel's
vhost_scsi finds the target by WWN), the user engine through ``vhost-user-scsi-pci`` and a unix socket,
which also needs guest RAM in a shared memfd so our daemon can map it. Everything here is pure string
building so the output can be compared byte for byte with the seed document.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

# The id of the shared guest-RAM backend; one per VM however many user-engine targets it has.
MEMORY_BACKEND_ID = "mem"

_PCI_BUS_RE = re.compile(r"pcie?\.(\d+)$")
_PCI_ADDR_RE = re.compile(r"(0x[0-9a-fA-F]+|\d+)(?:\.(0x[0-7]|[0-7]))?$")
_CCW_DEVNO_RE = re.compile(r"([0-9a-fA-F]{1,2})\.([0-3])\.([0-9a-fA-F]{1,4})$")
_MEMORY_RE = re.compile(r"[1-9]\d*[KMGT]?$")


class ArgumentError(ValueError):
    """An option value QEMU (or libvirt) would reject; the message is one line for the user."""


@dataclass(frozen=True)
class PciSlot:
    """A PCI placement: QEMU's ``bus=pci.N,addr=S[.F]`` and libvirt's ``<address type='pci'>``."""

    bus: str | None  # QEMU bus id, e.g. "pci.0"
    slot: int | None
    function: int = 0
    addr_text: str | None = None  # as the user typed it, echoed verbatim to QEMU

    def qemu_suffix(self) -> str:
        """``,bus=pci.0,addr=0x5`` (only the parts given), appended to a ``-device`` value."""
        text = ""
        if self.bus is not None:
            text += f",bus={self.bus}"
        if self.addr_text is not None:
            text += f",addr={self.addr_text}"
        return text

    def bus_number(self) -> int:
        """The PCI bus number libvirt wants; QEMU's root bus ``pci.0`` is bus 0."""
        if self.bus is None:
            return 0
        match = _PCI_BUS_RE.match(self.bus)
        if not match:
            raise ArgumentError(
                f"bus {self.bus!r}: libvirt needs a numbered PCI bus such as pci.0 or pci.1"
            )
        return int(match.group(1))


@dataclass(frozen=True)
class CcwDevno:
    """A channel-subsystem device number: QEMU's ``devno=fe.0.1000``, libvirt's cssid/ssid/devno."""

    cssid: int
    ssid: int
    devno: int

    def qemu_text(self) -> str:
        return f"{self.cssid:x}.{self.ssid:x}.{self.devno:04x}"


def parse_pci(bus: str | None, addr: str | None) -> PciSlot:
    """Check ``--bus``/``--addr`` the way QEMU reads them (slot 0..31, function 0..7)."""
    if bus is not None and not re.match(r"[A-Za-z][A-Za-z0-9._-]*$", bus):
        raise ArgumentError(f"bus {bus!r} is not a QEMU bus id (e.g. pci.0)")
    if addr is None:
        return PciSlot(bus=bus, slot=None)
    match = _PCI_ADDR_RE.match(addr)
    if not match:
        raise ArgumentError(f"addr {addr!r} is not a PCI slot[.function] (e.g. 0x5 or 0x5.0x1)")
    slot = int(match.group(1), 0)
    function = int(match.group(2), 0) if match.group(2) else 0
    if slot > 0x1F:
        raise ArgumentError(f"addr {addr!r}: a PCI slot is 0x0..0x1f")
    return PciSlot(bus=bus, slot=slot, function=function, addr_text=addr)


def parse_devno(devno: str) -> CcwDevno:
    """Check a ``cssid.ssid.devno`` triple (hex) as QEMU's ccw bus does."""
    match = _CCW_DEVNO_RE.match(devno)
    if not match:
        raise ArgumentError(
            f"devno {devno!r} is not cssid.ssid.devno in hex (e.g. fe.0.1000)"
        )
    cssid, ssid, number = (int(part, 16) for part in match.groups())
    if cssid > 0xFE:
        raise ArgumentError(f"devno {devno!r}: cssid is 0x0..0xfe")
    return CcwDevno(cssid=cssid, ssid=ssid, devno=number)


def check_memory(size: str) -> str:
    """QEMU size syntax (``512M``, ``2G``, bytes); returned unchanged so the user sees their own text."""
    if not _MEMORY_RE.match(size):
        raise ArgumentError(f"memory size {size!r}: use a number with an optional K, M, G or T (e.g. 512M)")
    return size


def qemu_option_value(text: str) -> str:
    """Escape a value inside QEMU's comma-separated option syntax (a comma is written twice)."""
    return text.replace(",", ",,")


def chardev_id(wwn: str) -> str:
    """A QEMU id unique per target, so several user-engine targets can share one VM."""
    return f"vhostscsi-{wwn}"


def kernel_pci_args(wwn: str, pci: PciSlot) -> list[str]:
    """The seed's ``-device vhost-scsi-pci,wwpn=...`` for the kernel engine."""
    return ["-device", f"vhost-scsi-pci,wwpn={wwn}{pci.qemu_suffix()}"]


def kernel_ccw_args(wwn: str, devno: CcwDevno | None) -> list[str]:
    """The seed's ``-device vhost-scsi-ccw,wwpn=...,devno=...`` (s390x guests)."""
    suffix = f",devno={devno.qemu_text()}" if devno is not None else ""
    return ["-device", f"vhost-scsi-ccw,wwpn={wwn}{suffix}"]


def memory_backend_args(memory: str) -> list[str]:
    """Guest RAM in a shared memfd: vhost-user back ends map it, so it must not be private.

    QEMU takes the RAM size from the backend when ``-m`` is absent; a different ``-m`` is an error
    ("Machine memory size does not match the size of the memory backend").
    """
    return [
        "-object",
        f"memory-backend-memfd,id={MEMORY_BACKEND_ID},size={check_memory(memory)},share=on",
        "-machine",
        f"memory-backend={MEMORY_BACKEND_ID}",
    ]


# vhost-user-scsi survives a restarted back end since QEMU 8.2 (`reconnect=` seconds on -chardev socket);
# 9.2 added `reconnect-ms=` and deprecated `reconnect=`.
RECONNECT_SINCE = (8, 2)
RECONNECT_MS_SINCE = (9, 2)
_VERSION_RE = re.compile(r"^(\d+)\.(\d+)(?:\.\d+)?$")


def parse_qemu_version(text: str) -> tuple[int, int]:
    match = _VERSION_RE.match(text)
    if not match:
        raise ArgumentError(f"QEMU version {text!r}: use MAJOR.MINOR as 'qemu-system-x86_64 --version' prints it "
                            f"(e.g. 9.2)")
    return int(match[1]), int(match[2])


def reconnect_option(reconnect_ms: int, version: tuple[int, int]) -> str:
    """The -chardev socket option that makes QEMU reconnect to a restarted daemon, in ``version``'s syntax.

    Without it QEMU gives up on the socket when the daemon restarts (an upgrade), and the guest's disk hangs.
    """
    if reconnect_ms <= 0:
        raise ArgumentError(f"--reconnect-ms {reconnect_ms}: give a positive number of milliseconds (e.g. 1000)")
    if version < RECONNECT_SINCE:
        raise ArgumentError(f"QEMU {version[0]}.{version[1]}'s vhost-user-scsi cannot reconnect to a restarted "
                            f"daemon (QEMU 8.2 and later can): leave out --reconnect-ms")
    if version >= RECONNECT_MS_SINCE:
        return f",reconnect-ms={reconnect_ms}"
    return f",reconnect={-(-reconnect_ms // 1000)}"  # whole seconds, rounded up: never 0 (= off)


def user_device_args(wwn: str, socket: Path, pci: PciSlot, *, json_device: bool = False,
                     reconnect: str = "") -> list[str]:
    """The chardev and vhost-user-scsi-pci device for one target served by our daemon.

    ``reconnect`` is a `reconnect_option` suffix for the chardev (empty: QEMU does not reconnect).
    ``json_device`` writes the device in QEMU's JSON syntax, for libvirt: libvirt passes its own
    devices as JSON with fixed PCI slots, and QEMU 7.2 creates key=value devices before JSON ones,
    so a key=value device without an address takes a slot libvirt has already handed out (the
    balloon's slot 2: "PCI: slot 2 function 0 not available"). As JSON it comes last, in order.
    """
    cid = chardev_id(wwn)
    chardev = ["-chardev", f"socket,id={cid},path={qemu_option_value(str(socket))}{reconnect}"]
    if not json_device:
        return chardev + ["-device", f"vhost-user-scsi-pci,chardev={cid}{pci.qemu_suffix()}"]
    device: dict[str, str] = {"driver": "vhost-user-scsi-pci", "chardev": cid}
    if pci.bus is not None:
        device["bus"] = pci.bus
    if pci.addr_text is not None:
        device["addr"] = pci.addr_text
    return chardev + ["-device", json.dumps(device, separators=(",", ":"))]

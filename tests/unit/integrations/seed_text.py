"""The seed's QEMU arguments and libvirt XML, verbatim: the outputs our commands must reproduce."""

from __future__ import annotations

from pathlib import Path

SEED_WWN = "naa.500140568720f76f"

SEED_PCI_ARGS = "-device vhost-scsi-pci,wwpn=naa.500140568720f76f,bus=pci.0,addr=0x5\n"
SEED_CCW_ARGS = "-device vhost-scsi-ccw,wwpn=naa.500140568720f76f,devno=fe.0.1000\n"

SEED_HOSTDEV = """<hostdev mode='subsystem' type='scsi_host'>
  <source protocol='vhost' wwpn='naa.500140568720f76f'/>
</hostdev>
"""
SEED_HOSTDEV_PCI = """<hostdev mode='subsystem' type='scsi_host'>
  <source protocol='vhost' wwpn='naa.500140568720f76f'/>
  <address type='pci' domain='0x0000' bus='0x00' slot='0x05' function='0x0'/>
</hostdev>
"""
SEED_HOSTDEV_CCW = """<hostdev mode='subsystem' type='scsi_host'>
  <source protocol='vhost' wwpn='naa.500140568720f76f'/>
  <address type='ccw' cssid='0xfe' ssid='0x0' devno='0x1000'/>
</hostdev>
"""


def seed_document() -> str | None:
    """The seed document from the shared folder beside the repository, if it is there."""
    repo = Path(__file__).resolve().parents[3]
    for candidate in (repo.parent / "shared" / "seed" / "vhost-scsi-target.txt",
                      Path("/work/shared/seed/vhost-scsi-target.txt")):
        if candidate.is_file():
            return candidate.read_text()
    return None

"""The one fixed setup both sides of the LIO conformance check use.

Everything a SCSI answer can depend on is pinned here: backstore names (the product id, with
emulate_model_alias=1), unit serials (VPD 0x80/0x83), sizes, initial content, the target port
WWN and TPG tag (VPD 0x83 SCSI name string, REPORT TARGET PORT GROUPS) and the initiator port
name (PERSISTENT RESERVE IN full status). The capture writes these values into the JSON it
produces; the replay reads them back from the JSON, so the two never drift apart silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field

BLOCK = 512
TARGET_WWN = "naa.5001405ab7c3d9e1"  # tcm_loop HBA WWN = the target port's name
INITIATOR_WWN = "naa.5001405f00dfeed1"  # the tcm_loop nexus = the initiator port's name
TPG_TAG = 1


@dataclass(frozen=True)
class LunSetup:
    """One exported fileio backstore."""

    lun: int
    name: str
    serial: str
    size: int
    write_protect: bool = False
    plugin: str = "fileio"  # "block": LIO iblock on a loop device inside the guest
    # set in configfs after enable, before export (emulate_model_alias is targetcli's default;
    # thin provisioning on so UNMAP and WRITE SAME with UNMAP are exercised)
    attributes: dict[str, int] = field(
        default_factory=lambda: {"emulate_model_alias": 1, "emulate_tpu": 1, "emulate_tpws": 1}
    )


LUNS = (
    LunSetup(0, "disk0", "6a3b0c1e-8f2d-4c5b-9e7a-1d2c3b4a5f60", 1 << 20),
    # Write-protected the way LIO does it: the initiator's ACL maps the LUN with write_protect=1
    # (our TargetPort.add_lun(..., write_protect=True)).
    LunSetup(1, "wpdisk", "0d9c8b7a-6f5e-4d3c-8b2a-19f8e7d6c5b4", 256 << 10, write_protect=True),
    # A block backstore, as in the seed document (targetcli's most common kind): its limits and
    # caching come from the device's queue, so VPD 0xb0/0xb2 and the caching page differ.
    LunSetup(2, "blk0", "3c2b1a09-8e7d-4c6b-a5f4-e3d2c1b0a998", 512 << 10, plugin="block"),
)


def initial_content(name: str, size: int) -> bytes:
    """Every block names its backstore and LBA, so a misplaced read shows where it came from."""
    return b"".join(block_of(name, lba) for lba in range(size // BLOCK))


def block_of(name: str, lba: int) -> bytes:
    """The initial content of one block (COMPARE AND WRITE compares against it)."""
    unit = b"%s:lba=%06d;" % (name.encode(), lba)
    return (unit * (BLOCK // len(unit) + 1))[:BLOCK]


def fill(tag: str, nblocks: int) -> bytes:
    """Data-out for writes: distinct from any initial content, different per case."""
    unit = b"WRITE<%s>" % tag.encode()
    n = nblocks * BLOCK
    return (unit * (n // len(unit) + 1))[:n]

"""A logical unit's lasting state: identity, capacity, caching mode and reservations.

One Device per storage object. Several TargetPorts may export the same Device, so everything
that SCSI says belongs to the logical unit (persistent reservations, the SPC-2 reservation,
the COMPARE AND WRITE serialisation) lives here, not in the port.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Protocol
from collections.abc import Mapping, Sequence

from vhostscsi.scsi.result import ScsiResult
from vhostscsi.scsi.sense import Reason

if TYPE_CHECKING:
    from vhostscsi.scsi.pr import PrState

__all__ = ["Device", "BackstoreLike"]

VENDOR = "LIO-ORG"
REVISION = "4.0"
COMPANY_ID = 0x001405  # LIO's IEEE OUI, used in the NAA designator
# LIO's product id per backend when emulate_model_alias=0 (transport->inquiry_prod).
DEFAULT_MODEL = {"fileio": "FILEIO", "block": "IBLOCK", "iblock": "IBLOCK", "ramdisk": "RAMDISK-MCP",
                 "rd_mcp": "RAMDISK-MCP"}
# Fabric limit: vhost-scsi's max_data_sg_nents (VHOST_SCSI_PREALLOC_SGLS) pages of 4 KiB.
VHOST_MAX_DATA_BYTES = 2048 * 4096

# What LIO gives a device before the backend and targetcli adjust it (target_core_device.c).
_DEFAULTS: dict[str, int] = {
    "emulate_3pc": 1, "emulate_caw": 1, "emulate_dpo": 1, "emulate_fua_read": 1,
    "emulate_fua_write": 1, "emulate_model_alias": 1, "emulate_pr": 1, "emulate_rest_reord": 0,
    "emulate_tas": 1, "emulate_tpu": 0, "emulate_tpws": 0, "emulate_ua_intlck_ctrl": 0,
    "is_nonrot": 0, "max_unmap_block_desc_count": 0, "max_unmap_lba_count": 0,
    "max_write_same_len": 0, "pi_prot_type": 0, "unmap_granularity": 0,
    "unmap_granularity_alignment": 0, "unmap_zeroes_data": 0, "optimal_sectors": 16384,
    "hw_max_sectors": 16384, "force_pr_aptpl": 0,
    # REPORT SUPPORTED OPERATION CODES came with LIO 6.3 (attribute emulate_rsoc, default 1
    # there); the 6.1 reference answers INVALID COMMAND OPERATION CODE, so 0 here.
    "emulate_rsoc": 0,
}


class BackstoreLike(Protocol):
    """The part of vhostscsi.backstores.Backstore the core uses."""

    block_size: int
    size: int
    readonly: bool

    def readv(self, offset: int, bufs: Sequence[memoryview]) -> None: ...
    def writev(self, offset: int, bufs: Sequence[memoryview], fua: bool = False) -> None: ...
    def flush(self) -> None: ...
    def unmap(self, offset: int, length: int) -> None: ...
    def write_zeroes(self, offset: int, length: int) -> None: ...
    def refresh_size(self) -> int: ...


class Device:
    """A SCSI logical unit backed by one backstore, answering as LIO's se_device would."""

    def __init__(
        self,
        backstore: BackstoreLike,
        name: str,
        unit_serial: str,
        attributes: Mapping[str, Any] | None = None,
        write_back: bool = False,
        *,
        plugin: str | None = None,
        vendor: str = VENDOR,
        revision: str = REVISION,
    ) -> None:
        from vhostscsi.scsi.pr import PrState

        self.backstore = backstore
        self.name = name
        self.unit_serial = unit_serial or ""
        attrs = dict(_DEFAULTS)
        for k, v in (attributes or {}).items():
            try:
                attrs[k] = int(v)
            except (TypeError, ValueError):
                continue
        self.attrs = attrs
        self.plugin = plugin or getattr(backstore, "plugin", "") or "fileio"
        self.vendor = vendor[:8]
        self.revision = revision[:4]
        if attrs.get("emulate_model_alias", 1):
            # LIO truncates the alias one byte short of the 16-byte field (strscpy(.., 16)).
            self.model = name[:15]
        else:
            self.model = DEFAULT_MODEL.get(self.plugin, "FILEIO")
        self.block_size = int(backstore.block_size)
        # What the guest is told (WCE, DPOFUA, V_SUP) is LIO's target_check_wce(): iblock
        # reports the device queue's write cache, the others emulate_write_cache; without
        # either we go by the caching mode. Writes are made durable unless both say
        # write-back.
        given = (attributes or {}).get("emulate_write_cache")
        queue_wc = getattr(backstore, "write_cache", None)
        if self.plugin in ("block", "iblock") and isinstance(queue_wc, bool):
            self.write_cache = queue_wc
        elif self.plugin in ("block", "iblock") or given is None:
            self.write_cache = bool(write_back)
        else:
            self.write_cache = bool(int(given))
        self.write_through = not (write_back and self.write_cache)
        # target_check_fua(): DPO/FUA are offered only with a write-back cache.
        self.fua_ok = self.write_cache and attrs.get("emulate_fua_write", 1) > 0
        self.caw_lock = threading.Lock()
        # None while the medium is usable; otherwise the answer to every command that needs it
        # (set_offline / set_online; `TargetPort.execute` tests this one attribute per command)
        self.offline: ScsiResult | None = None
        self.offline_reason = ""
        self._exports: list[int] = []  # relative port ids of the (port, LUN) exports
        self.pr: PrState = PrState()
        self._set_capacity(int(backstore.size))

    # --- capacity -------------------------------------------------------------------------
    def _set_capacity(self, size: int) -> None:
        self.nblocks = size // self.block_size
        # LIO's get_blocks() is the last LBA; the range check allows lba + n <= last + 1.
        self.last_lba = self.nblocks - 1 if self.nblocks else 0xFFFFFFFFFFFFFFFF
        # target_sense_desc_format(): descriptor sense for more than 2^32 blocks.
        self.desc_sense = self.last_lba > 0xFFFFFFFF

    def refresh_capacity(self) -> bool:
        """Re-read the backstore's size after a resize; True if the block count changed."""
        old = self.nblocks
        self._set_capacity(int(self.backstore.refresh_size()))
        return self.nblocks != old

    # --- availability ------------------------------------------------------------------------
    def set_offline(self, reason: str, answer: ScsiResult | None = None) -> ScsiResult:
        """The medium is gone (backing file deleted, block device removed, ...): from now on every command
        but INQUIRY, REPORT LUNS and REQUEST SENSE is answered with `answer` (default NOT READY / MEDIUM NOT
        PRESENT, 02/3A/00), so nothing is written into the void. Returns that answer. The first reason stays."""
        if self.offline is None:
            self.offline = answer if answer is not None else Reason.MEDIUM_NOT_PRESENT
            self.offline_reason = reason
        return self.offline

    def set_online(self) -> bool:
        """The medium is usable again (e.g. the backstore was reopened); True if it was offline."""
        was = self.offline is not None
        self.offline = None
        self.offline_reason = ""
        return was

    # --- exports (INQUIRY MULTIP, REPORT TARGET PORT GROUPS) ------------------------------
    def add_export(self, rtpi: int) -> None:
        self._exports.append(rtpi)

    def remove_export(self, rtpi: int) -> None:
        if rtpi in self._exports:
            self._exports.remove(rtpi)

    @property
    def exports(self) -> int:
        """How many (port, LUN) pairs export this device."""
        return len(self._exports)

    def export_rtpis(self) -> list[int]:
        """Relative port ids of the exports, in export order (the default group's members)."""
        return list(self._exports)

    @property
    def readonly(self) -> bool:
        """A read-only medium (e.g. a block device opened read-only) write-protects every LUN."""
        return bool(getattr(self.backstore, "readonly", False))

    def __repr__(self) -> str:
        return f"<Device {self.name!r} {self.nblocks}x{self.block_size}>"

"""LIO's storage-object attributes and their defaults, per backend.

The values are what a fresh LIO device shows under configfs `attrib/` after targetcli creates it
(target_alloc_device + the backend's configure_device + targetcli's emulate_model_alias=1), so that
a disk served by our user engine answers exactly like the same disk under the kernel.

The `hw_*` attributes are read-only in LIO: rtslib never saves them, so neither do we (a file we
write must restore in targetcli without errors). They are rebuilt on load from the values LIO
copies them into (block_size, queue_depth, optimal_sectors), which keeps loading free of I/O.
"""

from __future__ import annotations

# Read-only in configfs; kept in memory for the SCSI core, never written to the JSON.
READ_ONLY = ("hw_block_size", "hw_max_sectors", "hw_queue_depth", "hw_pi_prot_type")

# LIO's fixed limits per backend (target_core_file.c, target_core_rd.c).
FD_MAX_SECTORS = 16384  # FD_MAX_BYTES 8 MiB / 512
FD_QUEUE_DEPTH = 128  # FD_MAX_DEVICE_QUEUE_DEPTH
RD_MAX_SECTORS = 4294967288  # UINT_MAX aligned down to a 4 KiB transfer
RD_QUEUE_DEPTH = 128  # RD_MAX_DEVICE_QUEUE_DEPTH
IBLOCK_MAX_WRITE_SAME = 0xFFFF

_COMMON: dict[str, int] = {
    "emulate_3pc": 1,
    "emulate_caw": 1,
    "emulate_dpo": 1,
    "emulate_fua_read": 1,
    "emulate_fua_write": 1,
    "emulate_model_alias": 1,
    "emulate_pr": 1,
    "emulate_rest_reord": 0,
    "emulate_tas": 1,
    "emulate_tpu": 0,
    "emulate_tpws": 0,
    "emulate_ua_intlck_ctrl": 0,
    "emulate_write_cache": 0,
    "enforce_pr_isids": 1,
    "force_pr_aptpl": 0,
    "is_nonrot": 0,
    "max_unmap_block_desc_count": 0,
    "max_unmap_lba_count": 0,
    "max_write_same_len": 0,
    "pi_prot_format": 0,
    "pi_prot_type": 0,
    "pi_prot_verify": 0,
    "unmap_granularity": 0,
    "unmap_granularity_alignment": 0,
    "unmap_zeroes_data": 0,
}

# Attribute names an admin may `set attribute` (LIO's writable set).
WRITABLE = frozenset(_COMMON) | {"block_size", "optimal_sectors", "queue_depth"}


def default_attributes(
    plugin: str,
    *,
    write_back: bool,
    block_size: int = 512,
    hw_max_sectors: int | None = None,
    hw_queue_depth: int | None = None,
    nonrot: bool = False,
    unmap_max_lba: int = 0,
    unmap_granularity: int = 0,
    unmap_alignment: int = 0,
) -> dict[str, int]:
    """LIO's attribute set for a new storage object of this plugin.

    The block backend's limits come from the device (the caller reads sysfs and passes them in),
    the file and ramdisk backends use LIO's constants.
    """
    attrs = dict(_COMMON)
    attrs["emulate_write_cache"] = int(write_back)
    if plugin == "fileio":
        max_sectors, depth = FD_MAX_SECTORS, FD_QUEUE_DEPTH
        # fd_configure_unmap: 8k LBAs, one descriptor, granularity 1.
        attrs.update(max_unmap_lba_count=8192, max_unmap_block_desc_count=1, unmap_granularity=1)
        attrs["max_write_same_len"] = 4096
        block_size = 512
    elif plugin == "ramdisk":
        max_sectors, depth = RD_MAX_SECTORS, RD_QUEUE_DEPTH
        block_size = 512
    elif plugin == "block":
        max_sectors = hw_max_sectors if hw_max_sectors else 2560
        depth = hw_queue_depth if hw_queue_depth else 128
        attrs["max_write_same_len"] = IBLOCK_MAX_WRITE_SAME
        attrs["is_nonrot"] = int(nonrot)
        if unmap_max_lba:
            attrs.update(
                max_unmap_lba_count=unmap_max_lba,
                max_unmap_block_desc_count=1,
                unmap_granularity=unmap_granularity,
                unmap_granularity_alignment=unmap_alignment,
            )
    else:
        raise ValueError(f"unknown backstore plugin {plugin!r}")
    attrs["block_size"] = block_size
    attrs["optimal_sectors"] = max_sectors
    attrs["queue_depth"] = depth
    attrs.update(hardware_attributes(attrs))
    return dict(sorted(attrs.items()))


def hardware_attributes(attrs: dict[str, int]) -> dict[str, int]:
    """Rebuild LIO's read-only hw_* values from the saved ones LIO derives from them.

    LIO sets block_size = hw_block_size, queue_depth = hw_queue_depth and
    optimal_sectors = hw_max_sectors when it configures a device, so a saved file carries them.
    """
    return {
        "hw_block_size": int(attrs.get("block_size", 512)),
        "hw_max_sectors": int(attrs.get("optimal_sectors", FD_MAX_SECTORS)),
        "hw_queue_depth": int(attrs.get("queue_depth", 128)),
        "hw_pi_prot_type": 0,
    }

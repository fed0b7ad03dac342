"""The text of LIO's configfs `info` file for a storage object, reproduced for our shell.

Admins compare `cat /sys/kernel/config/target/core/<hba>/<dev>/info` across hosts; our `info`
prints the same lines (transport_dump_dev_state + the backend's show_configfs_dev_params), so the
same eyes and scripts work on both engines.
"""

from __future__ import annotations

from vhostscsi.config.model import StorageObject
from vhostscsi.shell.devices import BlockDevice

PAGE_SIZE = 4096
RD_SG_PER_TABLE = 65536 // 32  # RD_MAX_ALLOCATION_SIZE / sizeof(struct scatterlist)
INDENT = "        "


def status_line(so: StorageObject, exported: bool) -> str:
    """LIO's first line. Max Queue Depth is dev->queue_depth, which current kernels leave at 0."""
    return (
        f"Status: {'ACTIVATED' if exported else 'DEACTIVATED'}  Max Queue Depth: 0"
        f"  SectorSize: {so.attributes.get('block_size', 512)}"
        f"  HwMaxSectors: {so.attributes.get('hw_max_sectors', 0)}"
    )


def backend_lines(so: StorageObject, bdev: BlockDevice | None = None) -> list[str]:
    """The backend's own lines (each device sits alone in its HBA, so its ID is 0)."""
    if so.plugin == "fileio":
        mode = "Buffered-WCE" if so.write_back else "O_DSYNC"
        return [f"TCM FILEIO ID: 0{INDENT}File: {so.dev}  Size: {so.size}  Mode: {mode} Async: 0"]
    if so.plugin == "block":
        name = bdev.name if bdev else "?"
        first = f"iBlock device: {name}  UDEV PATH: {so.dev}  readonly: {int(so.readonly)}"
        if bdev is None:
            return [first, f"{INDENT}Major: 0 Minor: 0"]
        return [first, f"{INDENT}Major: {bdev.major} Minor: {bdev.minor}  CLAIMED: IBLOCK"]
    if so.plugin == "ramdisk":
        pages = so.size // PAGE_SIZE
        tables = -(-pages // RD_SG_PER_TABLE)
        nullio = int(bool(so.extra.get("nullio", False)))
        return [
            "TCM RamDisk ID: 0  RamDisk Makeup: rd_mcp",
            f"{INDENT}PAGES/PAGE_SIZE: {pages}*{PAGE_SIZE}  SG_table_count: {tables}"
            f"  nullio: {nullio} dummy: 0",
        ]
    return [f"{so.plugin} storage object (not served by vhostscsi)"]


def info_text(so: StorageObject, exported: bool, bdev: BlockDevice | None = None) -> str:
    """The whole `info` file: status line, then the backend lines, the first one indented."""
    lines = backend_lines(so, bdev)
    return "\n".join([status_line(so, exported), INDENT + lines[0], *lines[1:]])

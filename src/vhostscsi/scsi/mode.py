"""MODE SENSE (6)/(10) and MODE SELECT (6)/(10), as spc_emulate_modesense/modeselect.

LIO offers four pages (read-write error recovery 01h, caching 08h, control 0Ah,
informational exceptions 1Ch), reports no changeable fields, and accepts a MODE SELECT only
when it asks for exactly the current values: the guest can neither flip the write cache nor
anything else, so both engines present the same disk.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vhostscsi.scsi.device import Device

__all__ = ["mode_sense", "current_page", "MODE_PAGES"]

_BUF = 512  # SE_MODE_PAGE_BUF


def _rwrecovery(dev: Device, pc: int, p: bytearray, o: int) -> int:
    p[o] = 0x01
    p[o + 1] = 0x0A
    return 12


def _caching(dev: Device, pc: int, p: bytearray, o: int) -> int:
    p[o] = 0x08
    p[o + 1] = 0x12
    if pc != 1:
        if dev.write_cache:
            p[o + 2] = 0x04  # WCE
        p[o + 12] = 0x20  # DRA: read-ahead disabled
    return 20


def _control(dev: Device, pc: int, p: bytearray, o: int) -> int:
    a = dev.attrs
    p[o] = 0x0A
    p[o + 1] = 0x0A
    if pc != 1:
        p[o + 2] = 0x02  # GLTSD
        if dev.desc_sense:
            p[o + 2] |= 0x04  # D_SENSE
        p[o + 3] = 0x00 if a.get("emulate_rest_reord") == 1 else 0x10
        p[o + 4] = {2: 0x30, 1: 0x20}.get(int(a.get("emulate_ua_intlck_ctrl", 0)), 0x00)
        p[o + 5] = 0x40 if a.get("emulate_tas", 1) else 0x00
        p[o + 8] = 0xFF
        p[o + 9] = 0xFF
        p[o + 11] = 30
    return 12


def _iec(dev: Device, pc: int, p: bytearray, o: int) -> int:
    p[o] = 0x1C
    p[o + 1] = 0x0A
    return 12


Emulator = Callable[["Device", int, bytearray, int], int]
# (page, subpage, emulator), in LIO's order
MODE_PAGES: tuple[tuple[int, int, Emulator], ...] = (
    (0x01, 0x00, _rwrecovery),
    (0x08, 0x00, _caching),
    (0x0A, 0x00, _control),
    (0x1C, 0x00, _iec),
)


def _blockdesc(buf: bytearray, o: int, blocks: int, block_size: int) -> int:
    buf[o] = 8
    buf[o + 1 : o + 5] = min(blocks, 0xFFFFFFFF).to_bytes(4, "big")
    buf[o + 5 : o + 9] = (block_size & 0xFFFFFFFF).to_bytes(4, "big")
    return 9


def _long_blockdesc(buf: bytearray, o: int, blocks: int, block_size: int) -> int:
    if blocks <= 0xFFFFFFFF:
        return _blockdesc(buf, o + 3, blocks, block_size) + 3
    # LIO's arithmetic, kept as is: it returns 17 although the descriptor ends 20 bytes on,
    # so the first mode page overwrites the block length. Guests see LIO's bytes either way.
    buf[o] = 1  # LONGLBA
    buf[o + 3] = 16
    buf[o + 4 : o + 12] = blocks.to_bytes(8, "big")
    buf[o + 16 : o + 20] = (block_size & 0xFFFFFFFF).to_bytes(4, "big")
    return 17


def mode_sense(dev: Device, cdb: bytes | memoryview, write_protect: bool) -> bytearray | None:
    """The mode parameter data for this CDB (length = what LIO completes with), or None for
    an unsupported page/subpage (INVALID FIELD IN CDB)."""
    ten = cdb[0] == 0x5A
    dbd = bool(cdb[1] & 0x08)
    llba = ten and bool(cdb[1] & 0x10)
    pc = cdb[2] >> 6
    page = cdb[2] & 0x3F
    subpage = cdb[3]
    buf = bytearray(_BUF)
    length = 3 if ten else 2
    if write_protect:
        buf[length] |= 0x80  # WP
    if dev.fua_ok:
        buf[length] |= 0x10  # DPOFUA
    length += 1
    if not dbd:
        blocks = dev.last_lba
        if ten:
            if llba:
                length += _long_blockdesc(buf, length, blocks, dev.block_size)
            else:
                length += 3
                length += _blockdesc(buf, length, blocks, dev.block_size)
        else:
            length += _blockdesc(buf, length, blocks, dev.block_size)
    else:
        length += 4 if ten else 1
    if page == 0x3F:
        if subpage not in (0x00, 0xFF):
            return None
        for _pg, sub, fn in MODE_PAGES:
            if sub & ~subpage & 0xFF == 0:
                n = fn(dev, pc, buf, length)
                if not ten and length + n >= 255:
                    break
                length += n
    else:
        for pg, sub, fn in MODE_PAGES:
            if pg == page and sub == subpage:
                length += fn(dev, pc, buf, length)
                break
        else:
            return None
    if ten:
        buf[0:2] = (length - 2).to_bytes(2, "big")
    else:
        buf[0] = (length - 1) & 0xFF
    return buf[:length]


def current_page(dev: Device, page: int, subpage: int) -> bytes | None:
    """The current values of one page as MODE SELECT compares them, or None if unknown."""
    for pg, sub, fn in MODE_PAGES:
        if pg == page and sub == subpage:
            tbuf = bytearray(_BUF)
            n = fn(dev, 0, tbuf, 0)
            return bytes(tbuf[:n])
    return None

"""The CDBs sent to LIO and to our core, in order (later cases see earlier cases' effects).

Each case is a CDB, the LUN, the data-in length the initiator offers (sg_raw -r) and the
data-out it sends (sg_raw -i/-s). The list covers every command the target emulates plus the
error paths, including the ones where the exact sense (key, ASC/ASCQ, field pointer) matters.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from conformance.lio_setup import BLOCK, block_of, fill

__all__ = ["Case", "CASES", "VHOST_CASES"]


@dataclass(frozen=True)
class Case:
    """One command; ``alloc`` is the data-in buffer length, ``data_out`` the data sent."""

    name: str
    cdb: bytes
    alloc: int = 0
    data_out: bytes = b""
    lun: int = 0


def h(text: str) -> bytes:
    return bytes.fromhex(text)


def cdb10(op: int, flags: int, lba: int, n: int) -> bytes:
    return struct.pack(">BBIBHB", op, flags, lba, 0, n, 0)


def cdb12(op: int, flags: int, lba: int, n: int) -> bytes:
    return struct.pack(">BBIIBB", op, flags, lba, n, 0, 0)


def cdb16(op: int, flags: int, lba: int, n: int) -> bytes:
    return struct.pack(">BBQIBB", op, flags, lba, n, 0, 0)


def cdb6(op: int, lba: int, n: int) -> bytes:
    return struct.pack(">BBHBB", op, (lba >> 16) & 0x1F, lba & 0xFFFF, n, 0)


def ms6(page: int, pc: int, dbd: bool, alloc: int = 255, subpage: int = 0) -> bytes:
    return bytes([0x1A, 0x08 if dbd else 0, (pc << 6) | page, subpage, alloc, 0])


def ms10(page: int, pc: int, dbd: bool, llbaa: bool = False, alloc: int = 512) -> bytes:
    flags = (0x08 if dbd else 0) | (0x10 if llbaa else 0)
    return bytes([0x5A, flags, (pc << 6) | page, 0, 0, 0, 0]) + struct.pack(">HB", alloc, 0)


def caching_page(wce: bool) -> bytes:
    """The caching mode page as LIO reports it (WCE, DRA-disabled bit 0x20 in byte 12)."""
    page = bytearray(20)
    page[0], page[1] = 0x08, 0x12
    page[2] = 0x04 if wce else 0
    page[12] = 0x20
    return bytes(page)


def pr_out_params(key: int, sa_key: int, flags: int = 0) -> bytes:
    """PERSISTENT RESERVE OUT basic parameter list (24 bytes)."""
    return struct.pack(">QQIBBH", key, sa_key, 0, flags, 0, 0)


def pr_out(sa: int, scope_type: int = 0, length: int = 24) -> bytes:
    return bytes([0x5F, sa, scope_type, 0, 0]) + struct.pack(">IB", length, 0)


def pr_in(sa: int, alloc: int = 256) -> bytes:
    return bytes([0x5E, sa, 0, 0, 0, 0, 0]) + struct.pack(">HB", alloc, 0)


def unmap_params(*ranges: tuple[int, int]) -> bytes:
    descs = b"".join(struct.pack(">QII", lba, n, 0) for lba, n in ranges)
    return struct.pack(">HH4x", 6 + len(descs), len(descs)) + descs


def unmap_cdb(length: int, anchor: bool = False) -> bytes:
    return bytes([0x42, 0x01 if anchor else 0, 0, 0, 0, 0, 0]) + struct.pack(">HB", length, 0)


def rso(options: int, opcode: int = 0, sa: int = 0, alloc: int = 4096) -> bytes:
    """REPORT SUPPORTED OPERATION CODES; options = RCTD(0x80) | reporting options."""
    return bytes([0xA3, 0x0C, options, opcode]) + struct.pack(">HIBB", sa, alloc, 0, 0)


def caw(lba: int, nlb: int) -> bytes:
    return struct.pack(">BBQ3xBBB", 0x89, 0, lba, nlb, 0, 0)


MAX_LBA = (1 << 20) // BLOCK - 1  # disk0: 2048 blocks
PR_KEY = 0x1122334455667788
TUR = h("000000000000")

_miscompare = bytearray(block_of("disk0", 6))
_miscompare[100] ^= 0xFF

CASES: list[Case] = [
    # --- basics -----------------------------------------------------------------------------
    Case("tur", TUR),
    Case("request_sense_18", h("030000001200"), 18),
    Case("request_sense_252_desc", h("030100 00fc00"), 252),
    Case("request_sense_alloc_0", h("030000000000"), 0),
    Case("inquiry_std_36", h("120000002400"), 36),
    Case("inquiry_std_96", h("120000006000"), 96),
    Case("inquiry_std_255", h("12000000ff00"), 255),
    Case("inquiry_alloc_0", h("120000000000"), 0),
    Case("inquiry_page_without_evpd", h("12008000ff00"), 255),
    Case("inquiry_cmddt", h("12020000ff00"), 255),
    Case("vpd_00", h("12010000ff00"), 255),
    Case("vpd_80", h("12018000ff00"), 255),
    Case("vpd_83", h("120183020000"), 512),
    Case("vpd_83_alloc_8", h("120183000800"), 8),
    Case("vpd_86", h("12018600ff00"), 255),
    Case("vpd_b0", h("1201b000ff00"), 255),
    Case("vpd_b1", h("1201b100ff00"), 255),
    Case("vpd_b2", h("1201b200ff00"), 255),
    Case("vpd_b3", h("1201b300ff00"), 255),
    Case("vpd_b0_alloc_16", h("1201b0001000"), 16),
    Case("vpd_unsupported_99", h("12019900ff00"), 255),
    # --- capacity ---------------------------------------------------------------------------
    Case("readcap10", h("25000000000000000000"), 8),
    Case("readcap16", h("9e100000000000000000000000200000"), 32),
    Case("readcap16_alloc_12", h("9e1000000000000000000000000c0000"), 12),
    Case("service_action_in_unknown_sa", h("9e1f0000000000000000000000200000"), 32),
    # --- mode sense -------------------------------------------------------------------------
    *[
        Case(f"modesense6_{page:02x}_{pcn}{'_dbd' if dbd else ''}", ms6(page, pc, dbd), 255)
        for page in (0x3F, 0x01, 0x08, 0x0A, 0x1C)
        for pc, pcn in ((0, "cur"), (1, "chg"), (2, "def"))
        for dbd in (False, True)
    ],
    Case("modesense6_3f_saved", ms6(0x3F, 3, False), 255),
    Case("modesense6_unsupported_05", ms6(0x05, 0, False), 255),
    Case("modesense6_3f_all_subpages", ms6(0x3F, 0, False, subpage=0xFF), 255),
    Case("modesense6_08_subpage_01", ms6(0x08, 0, False, subpage=0x01), 255),
    Case("modesense6_alloc_4", ms6(0x3F, 0, False, alloc=4), 4),
    Case("modesense6_alloc_0", ms6(0x3F, 0, False, alloc=0), 0),
    *[
        Case(f"modesense10_{page:02x}_{pcn}{'_dbd' if dbd else ''}", ms10(page, pc, dbd), 512)
        for page in (0x3F, 0x08)
        for pc, pcn in ((0, "cur"), (1, "chg"), (2, "def"))
        for dbd in (False, True)
    ],
    Case("modesense10_08_cur_llbaa", ms10(0x08, 0, False, llbaa=True), 512),
    # --- mode select ------------------------------------------------------------------------
    Case("modeselect6_caching_same", h("151000001800"), data_out=bytes(4) + caching_page(True)),
    Case("modeselect6_caching_wce0", h("151000001800"), data_out=bytes(4) + caching_page(False)),
    Case("modeselect6_sp_bit", h("151100001800"), data_out=bytes(4) + caching_page(True)),
    Case("modeselect6_no_pf", h("150000001800"), data_out=bytes(4) + caching_page(True)),
    Case(
        "modeselect10_caching_same",
        h("55100000000000001c00"),
        data_out=bytes(8) + caching_page(True),
    ),
    Case("modesense6_08_after_select", ms6(0x08, 0, True), 255),
    # --- reads ------------------------------------------------------------------------------
    Case("read6", cdb6(0x08, 16, 2), 2 * BLOCK),
    Case("read6_len0_is_256", cdb6(0x08, 0, 0), 256 * BLOCK),
    Case("read10", cdb10(0x28, 0, 32, 4), 4 * BLOCK),
    Case("read10_dpo_fua", cdb10(0x28, 0x18, 33, 2), 2 * BLOCK),
    Case("read12_fua", cdb12(0xA8, 0x08, 64, 2), 2 * BLOCK),
    Case("read16_dpo_last_lba", cdb16(0x88, 0x10, MAX_LBA, 1), BLOCK),
    Case("read10_len0", cdb10(0x28, 0, 16, 0), 0),
    Case("read10_lba_out_of_range", cdb10(0x28, 0, MAX_LBA + 1, 1), BLOCK),
    Case("read10_crosses_end", cdb10(0x28, 0, MAX_LBA, 2), 2 * BLOCK),
    Case("read16_huge_lba", cdb16(0x88, 0, 0xFFFFFFFFFFFFFFFF, 1), BLOCK),
    Case("read6_lba_out_of_range", cdb6(0x08, MAX_LBA, 2), 2 * BLOCK),
    Case("read10_rdprotect", cdb10(0x28, 0x20, 0, 1), BLOCK),
    Case("read10_buffer_larger_than_transfer", cdb10(0x28, 0, 40, 1), 2 * BLOCK),
    Case("read10_buffer_smaller_than_transfer", cdb10(0x28, 0, 40, 2), BLOCK),
    # --- writes -----------------------------------------------------------------------------
    Case("write6", cdb6(0x0A, 0x100, 2), data_out=fill("w6", 2)),
    Case("write10_fua", cdb10(0x2A, 0x08, 0x110, 2), data_out=fill("w10", 2)),
    Case("write12_dpo", cdb12(0xAA, 0x10, 0x120, 1), data_out=fill("w12", 1)),
    Case("write16_dpo_fua", cdb16(0x8A, 0x18, 0x130, 1), data_out=fill("w16", 1)),
    Case("write10_len0", cdb10(0x2A, 0, 0x140, 0)),
    Case("write10_lba_out_of_range", cdb10(0x2A, 0, MAX_LBA + 1, 1), data_out=fill("oor", 1)),
    Case("write10_wrprotect", cdb10(0x2A, 0x20, 0x140, 1), data_out=fill("wrp", 1)),
    Case("write_verify10", cdb10(0x2E, 0, 0x140, 1), data_out=fill("wv10", 1)),
    Case("write_verify16_bytchk", cdb16(0x8E, 0x02, 0x150, 1), data_out=fill("wv16", 1)),
    Case("read_back_writes", cdb10(0x28, 0, 0x100, 0x58), 0x58 * BLOCK),
    Case("verify10", cdb10(0x2F, 0, 0, 8)),
    Case("verify16", cdb16(0x8F, 0, 8, 8)),
    Case("verify10_lba_out_of_range", cdb10(0x2F, 0, MAX_LBA + 1, 1)),
    Case("verify10_bytchk", cdb10(0x2F, 0x02, 0, 1), data_out=block_of("disk0", 0)),
    # --- cache ------------------------------------------------------------------------------
    Case("sync_cache10", cdb10(0x35, 0, 0, 0)),
    Case("sync_cache10_immed", cdb10(0x35, 0x02, 0, 0)),
    Case("sync_cache16_range", cdb16(0x91, 0, 0x100, 16)),
    Case("sync_cache10_lba_out_of_range", cdb10(0x35, 0, MAX_LBA + 1, 1)),
    Case("sync_cache16_lba_out_of_range", cdb16(0x91, 0, MAX_LBA, 2)),
    # --- write same / unmap -----------------------------------------------------------------
    Case("write_same10", cdb10(0x41, 0, 0x200, 4), data_out=fill("ws10", 1)),
    Case("write_same16", cdb16(0x93, 0, 0x210, 4), data_out=fill("ws16", 1)),
    Case("write_same10_unmap", cdb10(0x41, 0x08, 0x220, 8), data_out=bytes(BLOCK)),
    Case("write_same16_unmap", cdb16(0x93, 0x08, 0x230, 8), data_out=bytes(BLOCK)),
    Case("write_same16_ndob", cdb16(0x93, 0x01, 0x238, 8)),
    Case("write_same10_anchor", cdb10(0x41, 0x10, 0x240, 1), data_out=bytes(BLOCK)),
    Case("write_same10_len0", cdb10(0x41, 0, 0x240, 0), data_out=fill("ws0", 1)),
    Case("write_same10_too_long", cdb10(0x41, 0, 0, 4097), data_out=fill("wsl", 1)),
    Case("write_same16_lba_out_of_range", cdb16(0x93, 0, MAX_LBA, 2), data_out=fill("wso", 1)),
    Case("read_after_write_same", cdb10(0x28, 0, 0x200, 0x40), 0x40 * BLOCK),
    Case("unmap_one_range", unmap_cdb(24), data_out=unmap_params((0x300, 16))),
    Case("unmap_two_ranges", unmap_cdb(40), data_out=unmap_params((0x320, 1), (0x330, 1))),
    Case("unmap_lba_out_of_range", unmap_cdb(24), data_out=unmap_params((MAX_LBA - 3, 16))),
    Case("unmap_too_many_blocks", unmap_cdb(24), data_out=unmap_params((0, 8193))),
    Case("unmap_anchor", unmap_cdb(24, anchor=True), data_out=unmap_params((0x340, 1))),
    Case("unmap_param_len_0", unmap_cdb(0)),
    Case("read_after_unmap", cdb10(0x28, 0, 0x2FF, 18), 18 * BLOCK),
    # --- compare and write ------------------------------------------------------------------
    Case("caw_match", caw(5, 1), data_out=block_of("disk0", 5) + fill("caw", 1)),
    Case("caw_miscompare", caw(6, 1), data_out=bytes(_miscompare) + fill("cawx", 1)),
    Case("read_after_caw", cdb10(0x28, 0, 5, 2), 2 * BLOCK),
    Case("caw_nlb_0", caw(7, 0)),
    Case("caw_lba_out_of_range", caw(MAX_LBA + 1, 1), data_out=bytes(2 * BLOCK)),
    # --- luns, start/stop, prevent ----------------------------------------------------------
    Case("report_luns", h("a000000000000000010000 00"), 256),
    Case("report_luns_alloc_4", h("a0000000000000000004 0000"), 4),
    Case("report_luns_select_2", h("a0000200000000000100 0000"), 256),
    Case("start_stop_start", h("1b0000000100")),
    Case("start_stop_stop", h("1b0000000000")),
    Case("start_stop_loej", h("1b0000000200")),
    Case("start_stop_immed_start", h("1b0100000100")),
    Case("prevent_allow_prevent", h("1e0000000100")),
    Case("prevent_allow_allow", h("1e0000000000")),
    # --- report supported opcodes / target port groups --------------------------------------
    Case("rso_all", rso(0x00), 4096),
    Case("rso_all_rctd", rso(0x80), 4096),
    Case("rso_one_read10", rso(0x01, 0x28, alloc=64), 64),
    Case("rso_one_rctd_write16", rso(0x81, 0x8A, alloc=64), 64),
    Case("rso_one_unsupported_op", rso(0x01, 0xFF, alloc=64), 64),
    Case("rso_sa_readcap16", rso(0x02, 0x9E, 0x10, alloc=64), 64),
    Case("rso_one_for_sa_opcode", rso(0x01, 0x9E, alloc=64), 64),
    Case("rtpg", h("a30a00000000000001000000"), 256),
    Case("rtpg_extended", h("a32a00000000000001000000"), 256),
    # --- SPC-2 reservations -----------------------------------------------------------------
    Case("reserve6", h("160000000000")),
    Case("tur_while_reserved", TUR),
    Case("pr_out_register_while_reserved", pr_out(0x00), data_out=pr_out_params(0, PR_KEY)),
    Case("release6", h("170000000000")),
    Case("reserve10", h("56000000000000000000")),
    Case("release10", h("57000000000000000000")),
    Case("reserve10_third_party", h("56100000000000000000")),
    Case("release10_after_third_party", h("57000000000000000000")),
    # --- persistent reservations ------------------------------------------------------------
    Case("pr_in_read_keys_empty", pr_in(0x00), 256),
    Case("pr_in_report_capabilities", pr_in(0x02), 256),
    Case("pr_out_register", pr_out(0x00), data_out=pr_out_params(0, PR_KEY)),
    Case("pr_in_read_keys", pr_in(0x00), 256),
    Case("pr_out_reserve_wrong_key", pr_out(0x01, 0x01), data_out=pr_out_params(0xDEAD, 0)),
    Case("pr_out_reserve_we", pr_out(0x01, 0x01), data_out=pr_out_params(PR_KEY, 0)),
    Case("pr_in_read_reservation", pr_in(0x01), 256),
    Case("pr_in_read_full_status", pr_in(0x03), 256),
    Case("pr_out_register_again_wrong_key", pr_out(0x00), data_out=pr_out_params(0x99, 0x77)),
    Case("read10_as_pr_holder", cdb10(0x28, 0, 0x400, 1), BLOCK),
    Case("reserve6_while_pr_reserved", h("160000000000")),
    Case("write10_as_pr_holder", cdb10(0x2A, 0, 0x400, 1), data_out=fill("prh", 1)),
    Case("pr_out_release", pr_out(0x02, 0x01), data_out=pr_out_params(PR_KEY, 0)),
    Case("pr_out_reserve_ea", pr_out(0x01, 0x03), data_out=pr_out_params(PR_KEY, 0)),
    Case("pr_in_read_reservation_ea", pr_in(0x01), 256),
    Case("pr_out_release_wrong_type", pr_out(0x02, 0x01), data_out=pr_out_params(PR_KEY, 0)),
    Case("pr_out_release_ea", pr_out(0x02, 0x03), data_out=pr_out_params(PR_KEY, 0)),
    Case("pr_out_register_and_ignore", pr_out(0x06), data_out=pr_out_params(0, 0xAABBCCDD)),
    Case("pr_in_read_keys_after_ignore", pr_in(0x00), 256),
    Case("pr_out_clear", pr_out(0x03), data_out=pr_out_params(0xAABBCCDD, 0)),
    Case("pr_in_read_keys_after_clear", pr_in(0x00), 256),
    Case("pr_in_unknown_sa", pr_in(0x1F), 256),
    Case("pr_out_param_len_16", pr_out(0x00, length=16), data_out=bytes(16)),
    # --- unknown opcodes, CDB errors --------------------------------------------------------
    Case("unknown_opcode_ff", h("ff0000000000")),
    Case("unknown_opcode_c0", h("c0000000000000000000")),
    Case("unknown_opcode_02", h("020000000000")),
    Case("tur_naca_control", h("000000000004")),
    # --- the write-protected LUN ------------------------------------------------------------
    Case("wp_inquiry_std", h("12000000ff00"), 255, lun=1),
    Case("wp_vpd_80", h("12018000ff00"), 255, lun=1),
    Case("wp_vpd_83", h("120183020000"), 512, lun=1),
    Case("wp_readcap16", h("9e100000000000000000000000200000"), 32, lun=1),
    Case("wp_modesense6", ms6(0x3F, 0, False), 255, lun=1),
    Case("wp_modesense10_dbd", ms10(0x3F, 0, True), 512, lun=1),
    Case("wp_read10", cdb10(0x28, 0, 3, 1), BLOCK, lun=1),
    Case("wp_write10", cdb10(0x2A, 0, 3, 1), data_out=fill("wp", 1), lun=1),
    Case("wp_write_same16_unmap", cdb16(0x93, 0x08, 0, 8), data_out=bytes(BLOCK), lun=1),
    Case("wp_unmap", unmap_cdb(24), data_out=unmap_params((0, 8)), lun=1),
    Case("wp_caw", caw(3, 1), data_out=block_of("wpdisk", 3) + fill("wpc", 1), lun=1),
    Case("wp_sync_cache10", cdb10(0x35, 0, 0, 0), lun=1),
    Case("wp_tur", TUR, lun=1),
    Case("wp_report_luns", h("a00000000000000001000000"), 256, lun=1),
    Case("wp_read_back", cdb10(0x28, 0, 3, 1), BLOCK, lun=1),
    # --- the block (iblock) LUN -------------------------------------------------------------
    Case("blk_inquiry_std", h("12000000ff00"), 255, lun=2),
    *[Case(f"blk_vpd_{p:02x}", bytes([0x12, 1, p, 0, 0xFF, 0]), 255, lun=2) for p in (0x00, 0x80, 0xB0, 0xB1, 0xB2, 0xB3)],
    Case("blk_vpd_83", h("120183020000"), 512, lun=2),
    Case("blk_readcap16", h("9e100000000000000000000000200000"), 32, lun=2),
    Case("blk_modesense6_3f", ms6(0x3F, 0, False), 255, lun=2),
    Case("blk_modesense10_08_chg", ms10(0x08, 1, True), 512, lun=2),
    Case("blk_read10", cdb10(0x28, 0, 8, 2), 2 * BLOCK, lun=2),
    Case("blk_write10_fua", cdb10(0x2A, 0x08, 8, 2), data_out=fill("blk", 2), lun=2),
    Case("blk_write_same16", cdb16(0x93, 0, 16, 4), data_out=fill("blkws", 1), lun=2),
    Case("blk_write_same16_unmap", cdb16(0x93, 0x08, 24, 8), data_out=bytes(BLOCK), lun=2),
    Case("blk_unmap", unmap_cdb(24), data_out=unmap_params((40, 16)), lun=2),
    Case("blk_unmap_two_ranges", unmap_cdb(40), data_out=unmap_params((64, 8), (80, 8)), lun=2),
    Case("blk_sync_cache10", cdb10(0x35, 0, 0, 0), lun=2),
    Case("blk_caw_match", caw(100, 1), data_out=block_of("blk0", 100) + fill("blkcaw", 1), lun=2),
    Case("blk_read_back", cdb10(0x28, 0, 0, 104), 104 * BLOCK, lun=2),
    Case("blk_read10_lba_out_of_range", cdb10(0x28, 0, 1024, 1), BLOCK, lun=2),
    # --- afterwards -------------------------------------------------------------------------
    Case("final_tur", TUR),
    Case("final_request_sense", h("030000001200"), 18),
]

assert len({c.name for c in CASES}) == len(CASES), "case names must be unique"


# Only the vhost fabric can address a LUN that does not exist (the guest's SCSI stack never
# creates a device for one): LIO's answers for an unknown LUN.
VHOST_CASES: list[Case] = [
    Case("nolun_inquiry", h("120000006000"), 96, lun=7),
    Case("nolun_tur", TUR, lun=7),
    Case("nolun_request_sense", h("030000001200"), 18, lun=7),
    Case("nolun_report_luns", h("a00000000000000001000000"), 256, lun=7),
    Case("nolun_read10", cdb10(0x28, 0, 0, 1), BLOCK, lun=7),
    Case("nolun_inquiry_vpd80", h("12018000ff00"), 255, lun=7),
]

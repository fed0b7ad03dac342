"""INQUIRY: standard data and the VPD pages, byte for byte as LIO's target_core_spc.c builds them.

Identity is what keeps a disk the same disk when a VM moves between our user engine and the
kernel: vendor, product (the backstore name), revision, unit serial and the NAA designator
derived from it must match LIO exactly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vhostscsi.scsi.device import COMPANY_ID

if TYPE_CHECKING:
    from vhostscsi.scsi.device import Device
    from vhostscsi.scsi.port import TargetPort

__all__ = ["standard_inquiry", "vpd_page", "VPD_PAGES", "naa_designator"]

TYPE_DISK = 0x00
# Version descriptors (SPC-4 annex): SAM-5, transports, SPC-4, SBC-3.
VD_SAM5 = 0x00A0
VD_SPC4 = 0x0460
VD_SBC3 = 0x04C0
# SCSI protocol identifiers and their version descriptors (spc_find_scsi_transport_vd).
PROTO_FCP, PROTO_SRP, PROTO_ISCSI, PROTO_SBP, PROTO_SAS = 0x0, 0x4, 0x5, 0x3, 0x6
_TRANSPORT_VD = {PROTO_FCP: 0x0900, PROTO_ISCSI: 0x0960, PROTO_SAS: 0x0C60, PROTO_SBP: 0x04EA,
                 PROTO_SRP: 0x0940}
# LIO's default target port group: explicit + implicit ALUA (TPGS = 11b).
TPGS_IMPLICIT_ALUA = 0x10
TPGS_EXPLICIT_ALUA = 0x20
DEFAULT_ALUA_ACCESS_TYPE = TPGS_EXPLICIT_ALUA | TPGS_IMPLICIT_ALUA

VPD_PAGES = (0x00, 0x80, 0x83, 0x86, 0xB0, 0xB1, 0xB2, 0xB3)


def transport_version_descriptor(proto_id: int) -> int:
    """spc_find_scsi_transport_vd(): 0 for a protocol without one."""
    return _TRANSPORT_VD.get(proto_id, 0)


def _pad(text: str, n: int) -> bytes:
    return text.encode("ascii", "replace")[:n].ljust(n, b" ")


def standard_inquiry(dev: Device, port: TargetPort) -> bytearray:
    """The 96-byte standard INQUIRY data (additional length 91)."""
    buf = bytearray(96)
    buf[0] = TYPE_DISK
    buf[2] = 0x06  # SPC-4
    buf[3] = 2  # RESPONSE DATA FORMAT
    buf[4] = 91
    buf[5] = 0x80 | DEFAULT_ALUA_ACCESS_TYPE  # SCCS + TPGS
    if dev.attrs.get("emulate_3pc", 1):
        buf[5] |= 0x08
    if dev.exports > 1:
        buf[6] |= 0x10  # MULTIP
    buf[7] = 0x02  # CmdQue
    buf[8:16] = _pad(dev.vendor, 8)
    buf[16:32] = _pad(dev.model, 16)
    buf[32:36] = _pad(dev.revision, 4)
    buf[58:60] = VD_SAM5.to_bytes(2, "big")
    buf[60:62] = transport_version_descriptor(port.proto_id).to_bytes(2, "big")
    buf[62:64] = VD_SPC4.to_bytes(2, "big")
    buf[64:66] = VD_SBC3.to_bytes(2, "big")
    return buf


def naa_designator(unit_serial: str, company_id: int = COMPANY_ID) -> bytes:
    """NAA IEEE Registered Extended (6h) designator as spc_gen_naa_6h_vendor_specific.

    The OUI fills the first 24 bits after the NAA nibble; then the hex digits of the unit
    serial (non-hex characters skipped) fill the remaining 100 bits, one nibble each.
    """
    buf = bytearray(16)
    buf[0] = 0x60 | ((company_id >> 20) & 0xF)
    buf[1] = (company_id >> 12) & 0xFF
    buf[2] = (company_id >> 4) & 0xFF
    buf[3] = (company_id & 0xF) << 4
    off = 3
    high = False  # the next digit goes into the low nibble of buf[off]
    for ch in unit_serial:
        if off >= 16:
            break
        try:
            val = int(ch, 16)
        except ValueError:
            continue
        if not high:
            buf[off] |= val
            off += 1
            high = True
        else:
            buf[off] = val << 4
            high = False
    return bytes(buf)


def _scsi_name(text: str) -> bytes:
    """A null-terminated, null-padded SCSI name string, length a multiple of 4, at most 256."""
    raw = text.encode("utf-8") + b"\x00"
    raw += b"\x00" * ((-len(raw)) & 3)
    return raw[:256]


def _evpd_00(dev: Device, port: TargetPort, lun_id: int) -> bytearray:
    buf = bytearray(4)
    if dev.unit_serial:
        buf[3] = len(VPD_PAGES)
        buf += bytes(VPD_PAGES)
    return buf


def _evpd_80(dev: Device, port: TargetPort, lun_id: int) -> bytearray:
    buf = bytearray(4)
    if dev.unit_serial:
        serial = dev.unit_serial.encode("ascii", "replace")
        buf += serial + b"\x00"
        buf[3] = (len(serial) + 1) & 0xFF
    return buf


def _evpd_83(dev: Device, port: TargetPort, lun_id: int) -> bytearray:
    proto = port.proto_id << 4
    out = bytearray(4)
    if dev.unit_serial:
        out += bytes([0x01, 0x03, 0x00, 0x10]) + naa_designator(dev.unit_serial)
    # T10 vendor identification: vendor (8, space padded) + "product:serial" + NUL
    ident = _pad(dev.vendor, 8)
    if dev.unit_serial:
        ident += f"{dev.model}:{dev.unit_serial}".encode("ascii", "replace")
    ident += b"\x00"
    out += bytes([0x02, 0x01, 0x00, len(ident) & 0xFF]) + ident
    # Relative target port identifier (association: target port, PIV=1)
    out += bytes([proto | 0x1, 0x80 | 0x10 | 0x4, 0x00, 4, 0, 0]) + port.rtpi.to_bytes(2, "big")
    # Target port group identifier (LIO's default_tg_pt_gp, id 0)
    out += bytes([proto | 0x1, 0x80 | 0x10 | 0x5, 0x00, 4, 0, 0]) + port.tg_pt_gp_id.to_bytes(2, "big")
    # Logical unit group (default_lu_gp, id 0): LIO writes it without protocol id or PIV
    out += bytes([0x01, 0x06, 0x00, 4, 0, 0]) + (0).to_bytes(2, "big")
    # SCSI name string of the target port: "<wwn>,t,0x<tag>"
    name = _scsi_name(f"{port.wwn},t,0x{port.tpg_tag:04x}")
    out += bytes([proto | 0x3, 0x80 | 0x10 | 0x8, 0x00, len(name) & 0xFF]) + name
    # SCSI name string of the target device: "<wwn>"
    name = _scsi_name(port.wwn)
    out += bytes([proto | 0x3, 0x80 | 0x20 | 0x8, 0x00, len(name) & 0xFF]) + name
    out[2:4] = (len(out) - 4).to_bytes(2, "big")
    return out


def _evpd_86(dev: Device, port: TargetPort, lun_id: int) -> bytearray:
    buf = bytearray(64)
    buf[3] = 0x3C
    buf[5] = 0x07  # HEADSUP, ORDSUP, SIMPSUP
    if dev.write_cache:
        buf[6] = 0x01  # V_SUP
    return buf


def _evpd_b0(dev: Device, port: TargetPort, lun_id: int) -> bytearray:
    a = dev.attrs
    have_tp = bool(a.get("emulate_tpu") or a.get("emulate_tpws"))
    buf = bytearray(64 if have_tp else 20)
    buf[0] = TYPE_DISK
    buf[3] = 0x3C if have_tp else 0x10
    buf[4] = 0x01  # WSNZ
    if a.get("emulate_caw", 1):
        buf[5] = 0x01  # MAXIMUM COMPARE AND WRITE LENGTH
    buf[6:8] = (1).to_bytes(2, "big")  # OPTIMAL TRANSFER LENGTH GRANULARITY (no io_min hint)
    # MAXIMUM TRANSFER LENGTH: min_not_zero(fabric limit, hw_max_sectors)
    mtl = (2048 * 4096) // dev.block_size
    hw = int(a.get("hw_max_sectors", 0) or 0)
    buf[8:12] = (min(mtl, hw) if hw else mtl).to_bytes(4, "big")
    buf[12:16] = (int(a.get("optimal_sectors", 0)) & 0xFFFFFFFF).to_bytes(4, "big")
    if have_tp:
        buf[20:24] = (int(a.get("max_unmap_lba_count", 0)) & 0xFFFFFFFF).to_bytes(4, "big")
        buf[24:28] = (int(a.get("max_unmap_block_desc_count", 0)) & 0xFFFFFFFF).to_bytes(4, "big")
        buf[28:32] = (int(a.get("unmap_granularity", 0)) & 0xFFFFFFFF).to_bytes(4, "big")
        align = int(a.get("unmap_granularity_alignment", 0)) & 0xFFFFFFFF
        buf[32:36] = align.to_bytes(4, "big")
        if align:
            buf[32] |= 0x80  # UGAVALID
        # MAXIMUM WRITE SAME LENGTH: LIO also writes it into the short page, past the 20
        # bytes it returns, so only the long page shows it.
        buf[36:44] = (int(a.get("max_write_same_len", 0)) & (2**64 - 1)).to_bytes(8, "big")
    return buf


def _evpd_b1(dev: Device, port: TargetPort, lun_id: int) -> bytearray:
    buf = bytearray(64)
    buf[0] = TYPE_DISK
    buf[3] = 0x3C
    buf[5] = 1 if dev.attrs.get("is_nonrot") else 0
    return buf


def _evpd_b2(dev: Device, port: TargetPort, lun_id: int) -> bytearray:
    a = dev.attrs
    buf = bytearray(8)
    buf[0] = TYPE_DISK
    buf[2:4] = (4).to_bytes(2, "big")
    if a.get("emulate_tpu"):
        buf[5] = 0x80  # LBPU
    if a.get("emulate_tpws"):
        buf[5] |= 0x40 | 0x20  # LBPWS, LBPWS10
    if (a.get("emulate_tpu") or a.get("emulate_tpws")) and a.get("unmap_zeroes_data"):
        buf[5] |= 0x04  # LBPRZ
    return buf


def _evpd_b3(dev: Device, port: TargetPort, lun_id: int) -> bytearray:
    buf = bytearray(16)
    buf[0] = TYPE_DISK
    buf[3] = 0x0C
    return buf


_EVPD = {0x00: _evpd_00, 0x80: _evpd_80, 0x83: _evpd_83, 0x86: _evpd_86,
         0xB0: _evpd_b0, 0xB1: _evpd_b1, 0xB2: _evpd_b2, 0xB3: _evpd_b3}


def vpd_page(dev: Device, port: TargetPort, lun_id: int, page: int) -> bytearray | None:
    """The full VPD page (header included), or None for a page LIO does not know."""
    fn = _EVPD.get(page)
    if fn is None:
        return None
    buf = fn(dev, port, lun_id)
    buf[1] = page
    return buf

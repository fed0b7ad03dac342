"""A target port (one vhost TPG): its LUN map, unit attentions, and command dispatch.

`execute` is the one entry point for every CDB. It looks the LUN up, applies LIO's
write-protect rule, and jumps through a 256-entry table straight to the handler; handlers
parse and validate, then call `gate` (unit attention, reservations) right before executing,
which is the order target_core_transport.c uses.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from vhostscsi.scsi import opcodes as op
from vhostscsi.scsi import pr as pr_mod
from vhostscsi.scsi import sbc, spc
from vhostscsi.scsi import ua as ua_mod
from vhostscsi.scsi.buffers import total
from vhostscsi.scsi.common import reply
from vhostscsi.scsi.device import Device
from vhostscsi.scsi.result import GOOD, GOOD_BY_LENGTH, ScsiResult, Status, good
from vhostscsi.scsi.sense import Reason, to_descriptor, unit_attention

__all__ = ["TargetPort", "LunEntry"]

log = logging.getLogger(__name__)

Bufs = Sequence[memoryview]
Handler = Callable[["TargetPort", "LunEntry", str, "bytes | memoryview", Bufs, Bufs], ScsiResult]

_TABLE: list[Handler] = [spc.UNSUPPORTED] * 256
for _table in (sbc.HANDLERS, spc.HANDLERS, pr_mod.HANDLERS):
    for _code, _fn in _table.items():
        _TABLE[_code] = _fn

# What an offline device (medium gone) still answers: the commands that identify it and its LUNs.
_OFFLINE_OK = bytes(1 if c in (op.INQUIRY, op.REPORT_LUNS, op.REQUEST_SENSE) else 0 for c in range(256))

# The fast path's commands (see TargetPort.execute_fast): opcode -> (CDB decoder giving (lba, blocks), writes?)
_FAST_RW: dict[int, tuple[Callable[[bytes | memoryview], tuple[int, int]], bool]] = {
    op.READ_10: (sbc.RW10, False), op.READ_16: (sbc.RW16, False),
    op.WRITE_10: (sbc.RW10, True), op.WRITE_16: (sbc.RW16, True),
}

# vhost-scsi's target port protocol follows the WWN's prefix (tport_proto_id).
_PROTO = {"naa.": 0x6, "fc.": 0x0, "iqn.": 0x5}


class LunEntry:
    """One LUN of a port: the device, its write protection and its pending unit attentions."""

    __slots__ = ("lun_id", "dev", "write_protect", "read_only", "ua")

    def __init__(self, lun_id: int, dev: Device, write_protect: bool) -> None:
        self.lun_id = lun_id
        self.dev = dev
        self.write_protect = write_protect
        self.read_only = write_protect or dev.readonly
        self.ua: dict[str, list[tuple[int, int]]] = {}


class TargetPort:
    """The SCSI target port behind one vhost TPG: `execute` answers every CDB as LIO would."""

    def __init__(self, wwn: str, tpg_tag: int, relative_port_id: int = 1) -> None:
        self.wwn = wwn
        self.tpg_tag = tpg_tag
        self.rtpi = relative_port_id
        self.tg_pt_gp_id = 0  # LIO's default_tg_pt_gp
        self.proto_id = next((v for k, v in _PROTO.items() if wwn.lower().startswith(k)), 0x6)
        self._luns: dict[int, LunEntry] = {}
        # Initiators seen, each with its LUN list in LIO's order: a session maps the LUNs that
        # exist in creation order, and a LUN added later goes to the front (hlist_add_head in
        # core_enable_device_list_for_node). REPORT LUNS answers in this order.
        self._nexuses: dict[str, list[int]] = {}
        self._created: list[int] = []
        # Per-command scratch (one thread per port): the residual LIO's size check noted.
        self.resid_base = 0

    def transport_vd(self) -> int:
        """The version descriptor of this port's SCSI transport (INQUIRY bytes 60-61)."""
        from vhostscsi.scsi.inquiry import transport_version_descriptor

        return transport_version_descriptor(self.proto_id)

    # --- configuration -------------------------------------------------------------------
    def add_lun(self, lun_id: int, dev: Device, write_protect: bool = False) -> None:
        """Export ``dev`` as ``lun_id``; initiators already seen get REPORTED LUNS DATA HAS
        CHANGED on their other LUNs, as LIO does when a LUN is mapped into a live session."""
        if lun_id in self._luns:
            self.remove_lun(lun_id)
        self._luns[lun_id] = LunEntry(lun_id, dev, write_protect)
        self._created.append(lun_id)
        for order in self._nexuses.values():
            order.insert(0, lun_id)
        dev.add_export(self.rtpi)
        self._luns_changed(skip=lun_id)

    def remove_lun(self, lun_id: int) -> None:
        """Stop exporting a LUN (a no-op for an unknown one)."""
        entry = self._luns.pop(lun_id, None)
        if entry is None:
            return
        self._created.remove(lun_id)
        for order in self._nexuses.values():
            order.remove(lun_id)
        entry.dev.remove_export(self.rtpi)
        pr = entry.dev.pr
        with pr.lock:
            # core_disable_device_list_for_node: the initiators' registrations made through
            # this LUN go with it (and an SPC-2 reservation held through it)
            for reg in [r for r in pr.regs if r.lun is entry]:
                pr.remove(reg)
            if pr.spc2 is not None and pr.spc2[0] is self and not any(
                    e.dev is entry.dev for e in self._luns.values()):
                pr.spc2 = None
            pr.refresh_active()
        self._luns_changed(skip=None)

    def _luns_changed(self, skip: int | None) -> None:
        for lun_id, entry in self._luns.items():
            if lun_id == skip:
                continue
            for nexus in self._nexuses:
                ua_mod.allocate(entry, nexus, *ua_mod.REPORTED_LUNS_DATA_HAS_CHANGED)

    def luns(self) -> list[int]:
        """The LUN ids this port exports, ascending."""
        return sorted(self._luns)

    def add_nexus(self, nexus: str) -> None:
        """An I_T nexus (session) is established: it sees the current LUNs in creation order.
        Called implicitly by the first command from an initiator."""
        if nexus not in self._nexuses:
            self._nexuses[nexus] = list(self._created)

    def end_nexus(self, nexus: str) -> None:
        """The I_T nexus is gone (vhost: the guest driver stopped). As LIO frees a demo-mode
        session's node ACL: its pending unit attentions, LUN map and persistent reservation
        registrations go (a reservation it held is released), and so does its SPC-2
        reservation. A later command starts a fresh nexus."""
        if self._nexuses.pop(nexus, None) is None:
            return
        for entry in self._luns.values():
            with ua_mod.LOCK:
                entry.ua.pop(nexus, None)
            pr = entry.dev.pr
            with pr.lock:
                for reg in [r for r in pr.regs if r.port is self and r.nexus == nexus]:
                    pr.remove(reg)
                if pr.spc2 is not None and pr.spc2[0] is self and pr.spc2[1] == nexus:
                    pr.spc2 = None
                pr.refresh_active()

    def report_luns_order(self, nexus: str) -> list[int]:
        """The LUNs as LIO's REPORT LUNS lists them for this initiator."""
        order = self._nexuses.get(nexus)
        return list(order) if order is not None else list(self._created)

    def device(self, lun_id: int) -> Device | None:
        """The device behind a LUN, if any."""
        entry = self._luns.get(lun_id)
        return entry.dev if entry is not None else None

    # --- task management and events ------------------------------------------------------
    def abort_task_set(self, nexus: str, lun_id: int) -> None:
        """Commands run to completion inside `execute`, so nothing is ever left to abort."""

    def lun_reset(self, nexus: str, lun_id: int) -> None:
        """LOGICAL UNIT RESET: drop an SPC-2 reservation, BUS DEVICE RESET FUNCTION OCCURRED
        for the initiator that asked (target_tmr_work + core_tmr_lun_reset)."""
        entry = self._luns.get(lun_id)
        if entry is None:
            return
        pr = entry.dev.pr
        with pr.lock:
            pr.spc2 = None
            pr.refresh_active()
        self.add_nexus(nexus)
        ua_mod.allocate(entry, nexus, *ua_mod.BUS_DEVICE_RESET)

    def it_nexus_reset(self, nexus: str) -> None:
        """I_T NEXUS RESET / loss: release the nexus's SPC-2 reservations, I_T NEXUS LOSS
        OCCURRED on every LUN for it."""
        for entry in self._luns.values():
            pr = entry.dev.pr
            with pr.lock:
                if pr.spc2 is not None and pr.spc2[0] is self and pr.spc2[1] == nexus:
                    pr.spc2 = None
                    pr.refresh_active()
            ua_mod.allocate(entry, nexus, *ua_mod.I_T_NEXUS_LOSS)

    def notify_capacity_changed(self, lun_id: int) -> None:
        """Re-read the LUN's size; every initiator gets CAPACITY DATA HAS CHANGED."""
        entry = self._luns.get(lun_id)
        if entry is None:
            return
        entry.dev.refresh_capacity()
        for nexus in self._nexuses:
            ua_mod.allocate(entry, nexus, *ua_mod.CAPACITY_DATA_HAS_CHANGED)

    # --- the command path ----------------------------------------------------------------
    def execute_fast(self, nexus: str, lun_id: int, cdb: bytes | memoryview,
                     data_out: Bufs, data_in: Bufs) -> ScsiResult | None:
        """READ/WRITE (10)/(16) straight to the backstore, or None: then nothing was done and `execute` runs
        `execute_general`, which answers everything. Why: those four are nearly every command a guest sends, and
        `execute` spends more than the 4 KiB copy itself on dispatch and on checks that pass.

        Taken only where `execute` would run the same transfer and answer plain GOOD: a quiet LUN (below), a
        32-byte CDB (what virtio-scsi passes), no PROTECT bits, DPO/FUA only where the device offers them, a
        transfer length above 0 that fits the capacity, buffers in the data direction holding exactly the
        transfer length (no residual), none the other way for a read (a write ignores data-in, as `execute`
        does), and a LUN that is not write-protected for a write. A backstore failure is answered as
        `execute` answers it (same sense, descriptor format on a large LUN, offline on ENXIO/ENODEV).
        tests/unit/scsi/test_fast_path.py runs both paths on the same commands and compares every byte.
        """
        rw = _FAST_RW.get(cdb[0]) if len(cdb) == 32 else None
        if rw is None:
            return None
        # A quiet LUN: it exists, the nexus is established, no unit attention is queued on it (for any nexus: the
        # test the READ/WRITE handlers make before `gate`), no reservation (SPC-2 or persistent) is held on its
        # device, the medium is present. Read live, from the attributes the general path reads, not from a flag
        # kept beside them: a unit attention raised by another port's PR change, a device the engine took
        # offline, a backstore swapped under the Device can then never be missed by a stale copy.
        lun = self._luns.get(lun_id)
        if lun is None or lun.ua or nexus not in self._nexuses:
            return None
        dev = lun.dev
        if dev.offline is not None or dev.pr.active:
            return None
        b1 = cdb[1]
        if b1 & 0xE0 or (b1 & 0x18 and not dev.fua_ok):
            return None
        decode, writing = rw
        lba, n = decode(cdb)
        if not n or lba + n > dev.last_lba + 1:
            return None
        size = n * dev.block_size
        try:
            if writing:
                if lun.read_only or (data_out[0].nbytes if len(data_out) == 1 else total(data_out)) != size:
                    return None
                dev.backstore.writev(lba * dev.block_size, data_out, bool(b1 & 0x08) or dev.write_through)
                return GOOD
            if data_out or (data_in[0].nbytes if len(data_in) == 1 else total(data_in)) != size:
                return None
            dev.backstore.readv(lba * dev.block_size, data_in)
            return GOOD_BY_LENGTH.get(size) or good(size)
        except OSError as exc:
            return self._sense_format(lun, sbc.backstore_failure(exc, writing, dev))
        except Exception:  # as execute: a bug must cost one command, not the daemon
            log.exception("SCSI core failed on CDB %s", bytes(cdb[:16]).hex())
            return Reason.LOGICAL_UNIT_COMMUNICATION_FAILURE

    def fast_lun(self, nexus: str, lun_id: int) -> tuple[object, ...] | None:
        """What the C path (vhostscsi._native through virtio.native) needs to run `execute_fast` itself for one
        wake-up: (block_size, nblocks, read_only, fua_ok, write_through, io), io being the backstore's
        `native_io()`; or None, and then every command to this LUN goes through `execute`.

        None unless the LUN is quiet exactly as `execute_fast` judges it (asked again for every batch, never kept
        across wake-ups), the backstore offers native I/O, and this port's class runs `execute` and
        `execute_fast` unchanged: a subclass that overrides either must see every command.
        """
        cls = type(self)
        if cls.execute is not TargetPort.execute or cls.execute_fast is not TargetPort.execute_fast:
            return None
        lun = self._luns.get(lun_id)
        if lun is None or lun.ua or nexus not in self._nexuses:
            return None
        dev = lun.dev
        if dev.offline is not None or dev.pr.active or not dev.nblocks:
            return None
        native_io = getattr(dev.backstore, "native_io", None)
        io = native_io() if native_io is not None else None
        if io is None:
            return None
        return (dev.block_size, dev.nblocks, lun.read_only or dev.readonly, dev.fua_ok, dev.write_through, io)

    @staticmethod
    def _sense_format(lun: LunEntry, r: ScsiResult) -> ScsiResult:
        """A CHECK CONDITION in descriptor format on a LUN of more than 2^32 blocks, as LIO."""
        if r.status == Status.CHECK_CONDITION and lun.dev.desc_sense:
            return to_descriptor(r)._replace(residual=r.residual)
        return r

    def execute(self, nexus: str, lun_id: int, cdb: bytes | memoryview,
                data_out: Bufs, data_in: Bufs) -> ScsiResult:
        """Run one command; never raises for anything an initiator can send. READ/WRITE on a quiet LUN take
        `execute_fast`; everything else, and whatever it declines, `execute_general`."""
        r = self.execute_fast(nexus, lun_id, cdb, data_out, data_in)
        return r if r is not None else self.execute_general(nexus, lun_id, cdb, data_out, data_in)

    def execute_general(self, nexus: str, lun_id: int, cdb: bytes | memoryview,
                        data_out: Bufs, data_in: Bufs) -> ScsiResult:
        """The general path, for every command: the reference `execute_fast` is compared against."""
        try:
            if len(cdb) < 32:  # the virtio layer passes the full 32-byte CDB field
                if not len(cdb):
                    return Reason.INVALID_CDB_FIELD
                cdb = bytes(cdb).ljust(32, b"\x00")
            lun = self._luns.get(lun_id)
            if lun is None:
                return self._no_lun(nexus, lun_id, cdb, data_out, data_in)
            if nexus not in self._nexuses:
                self.add_nexus(nexus)
            if lun.dev.offline is not None and not _OFFLINE_OK[cdb[0]]:
                r = lun.dev.offline  # medium gone (Device.set_offline): NOT READY
                return to_descriptor(r) if lun.dev.desc_sense else r
            if lun.read_only and (op.changes_medium(cdb) or (data_out and total(data_out))):
                # LIO refuses any data-out on a write-protected LUN (its check is by data
                # direction); a command that changes the medium is refused by its opcode too,
                # data-out or not (WRITE SAME with UNMAP, a zero-length WRITE, ...)
                return Reason.WRITE_PROTECTED
            self.resid_base = 0
            r = _TABLE[cdb[0]](self, lun, nexus, cdb, data_out, data_in)
            if self.resid_base:
                r = r._replace(residual=r.residual + self.resid_base)
            return self._sense_format(lun, r)
        except Exception:  # a bug must cost one command, not the daemon
            log.exception("SCSI core failed on CDB %s", bytes(cdb[:16]).hex())
            return Reason.LOGICAL_UNIT_COMMUNICATION_FAILURE

    def gate(self, lun: LunEntry, nexus: str, cdb: bytes | memoryview, dout: Bufs,
             din: Bufs) -> ScsiResult | None:
        """What LIO checks right before execution: a pending unit attention, then
        reservations. None lets the command run."""
        if lun.ua and not ua_mod.exempt(cdb[0]):
            pending = ua_mod.take(lun, nexus, lun.dev.attrs.get("emulate_ua_intlck_ctrl", 0))
            if pending is not None:
                return unit_attention(*pending)
        pr = lun.dev.pr
        if pr.active:
            return pr_mod.check_reservation(pr, self, nexus, cdb, dout, din)
        return None

    def _no_lun(self, nexus: str, lun_id: int, cdb: bytes | memoryview, dout: Bufs,
                din: Bufs) -> ScsiResult:
        """No LUN here. LUN 0 is LIO's virtual LUN 0 (a read-only dummy rd_mcp device):
        standard INQUIRY answers "not connected" (0x3f), REPORT LUNS lists the real LUNs,
        writes are refused; anything else, and any other LUN, is LOGICAL UNIT NOT SUPPORTED."""
        if lun_id != 0:
            return Reason.NON_EXISTENT_LUN
        if dout and total(dout):
            return Reason.WRITE_PROTECTED
        code = cdb[0]
        if code == op.REPORT_LUNS:
            alloc = int.from_bytes(bytes(cdb[6:10]), "big")
            return reply(din, spc.report_luns_data(self.report_luns_order(nexus)), alloc)
        if code == op.INQUIRY and not (cdb[1] & 1) and not cdb[2]:
            return reply(din, virtual_lun0_inquiry(self), (cdb[3] << 8) | cdb[4])
        return Reason.NON_EXISTENT_LUN


def virtual_lun0_inquiry(port: TargetPort) -> bytes:
    """Standard INQUIRY of LIO's virtual LUN 0: the dummy rd_mcp device (type 0x3f)."""
    buf = bytearray(96)
    buf[0] = 0x3F  # peripheral qualifier 1, no device type: nothing connected here
    buf[2] = 0x06
    buf[3] = 0x02
    buf[4] = 91
    buf[5] = 0xB8  # SCCS, TPGS 11b, 3PC: the dummy device's defaults
    buf[7] = 0x02
    buf[8:36] = b"LIO-ORG RAMDISK-MCP     4.0 "
    buf[58:64] = bytes.fromhex("00a0") + port.transport_vd().to_bytes(2, "big") + bytes.fromhex("0460")
    return bytes(buf)

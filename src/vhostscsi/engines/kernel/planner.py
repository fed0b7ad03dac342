"""Reconciliation: the configfs operations that turn what LIO holds into what the config says.

The planner reads (through ``Configfs``) and decides; it never writes. Its rules:

* create what is configured and missing; fix attributes, serials and nexus names that differ;
* remove only what the ledger says we created and the configuration no longer has (a directory
  we created takes everything inside it along); anything else is reported and left alone;
* a device whose backing (file, size, caching mode, pages, read-only) differs is rebuilt if it
  is ours, together with the LUN links that point at it; LIO cannot change it in place;
* order: removals (mapped LUNs, LUNs, ACLs, TPGs, targets, devices, HBAs), then devices with
  their attributes, then targets, TPGs, LUN links, ACLs and finally the nexus, so a guest never
  sees a LUN whose device is half configured; an ACL's LUNs are mapped highest index first, so
  LIO's REPORT LUNS lists them ascending (see ``Planner.ensure_acl``).

Clearing is applying an empty configuration. The same pass yields the ``status`` report.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vhostscsi.engines.kernel.configfs import Configfs, Op
from vhostscsi.engines.kernel.current import Current, CurrentTpg, backing, scan, unit_serial
from vhostscsi.engines.kernel.desired import Desired, DesiredLun, DesiredStorage, DesiredTpg
from vhostscsi.engines.kernel.ledger import Ledger


@dataclass
class Plan:
    """The operations to run, and the per-object findings behind them."""

    ops: list[Op] = field(default_factory=list)
    status: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def in_sync(self) -> bool:
        return not self.ops

    def note(self, state: str, what: str) -> None:
        self.status.append(f"{state:<9} {what}")


class Planner:
    """One planning pass over a scanned configfs tree."""

    def __init__(self, fs: Configfs, ledger: Ledger) -> None:
        self.fs = fs
        self.ledger = ledger
        self.cur: Current = scan(fs)
        self.plan = Plan()
        self.removed: set[str] = set()  # directories this plan removes
        self.device_path: dict[str, str] = {}  # storage key -> device directory after the plan
        self.rebuild: set[str] = set()  # storage keys whose device is removed and made again
        self.nexus_dropped: set[str] = set()  # TPG paths whose nexus this plan drops

    # -- helpers -------------------------------------------------------------------------------
    def ours(self, rel: str) -> bool:
        """Created by us, directly or inside a target, TPG, LUN or ACL we created.

        Shared containers do not pass ownership down: the fabric directory ``vhost`` and an HBA
        directory ``core/<plugin>_N`` may hold other tools' objects even when we made them.
        """
        parts = rel.split("/")
        first = 3 if parts[0] == "core" else 2
        return self.ledger.owns(rel) or any(
            self.ledger.owns("/".join(parts[:i])) for i in range(first, len(parts)))

    def op(self, kind: str, path: str, value: str = "") -> None:
        self.plan.ops.append(Op(kind, path, value))
        if kind == "rmdir":
            self.removed.add(path)

    def remove_lun_dir(self, path: str) -> None:
        """A LUN or mapped-LUN directory: its links first (configfs refuses rmdir otherwise)."""
        for link in self.fs.links_in(path):
            self.op("unlink", f"{path}/{link}")
        self.op("rmdir", path)

    def mapped_luns(self, acl: str) -> list[str]:
        return [f"{acl}/{d}" for d in self.fs.listdir(acl)
                if d.startswith("lun_") and d[4:].isdigit() and self.fs.is_dir(f"{acl}/{d}")]

    def remove_acl(self, acl: str) -> None:
        for mapped in self.mapped_luns(acl):
            self.remove_lun_dir(mapped)
        self.op("rmdir", acl)

    def drop_nexus(self, tpg_path: str) -> None:
        """End the TPG's I_T nexus: needed before removing the ACL its session uses.

        vhost_scsi cannot close a session, so LIO's removal of that ACL would wait forever for the
        session to let go of it. The kernel only drops a nexus once the TPG has no LUNs (else
        EBUSY), and refuses while a guest uses the target, which fails cleanly instead of hanging.
        """
        if tpg_path not in self.nexus_dropped and self.fs.read(f"{tpg_path}/nexus"):
            self.op("write", f"{tpg_path}/nexus", "NULL")
            self.nexus_dropped.add(tpg_path)

    def remove_all_luns(self, tpg: CurrentTpg) -> None:
        """Every LUN of a TPG (mapped LUNs first); foreign ones too, as their TPG is going or renamed."""
        for acl in tpg.acls:
            for mapped in self.mapped_luns(f"{tpg.path}/acls/{acl}"):
                self.remove_lun_dir(mapped)
        for lun in tpg.luns.values():
            self.remove_lun_dir(lun.path)

    def remove_tpg(self, tpg: CurrentTpg) -> None:
        self.remove_all_luns(tpg)
        nexus = self.fs.read(f"{tpg.path}/nexus")
        if nexus and nexus in tpg.acls:
            self.drop_nexus(tpg.path)
        for acl in tpg.acls:
            self.op("rmdir", f"{tpg.path}/acls/{acl}")
        self.op("rmdir", tpg.path)

    def acl_name(self, want: DesiredTpg, existing: CurrentTpg | None) -> str | None:
        """The nexus ACL to maintain: needed for write protection, and kept once it exists.

        Removing the ACL of a live nexus means taking every LUN offline first (see drop_nexus), so
        an ACL stays when write protection is switched off; its mapped LUNs then say 0.
        """
        if want.nexus is None:
            return None
        if want.needs_acl or (existing is not None and want.nexus in existing.acls
                              and f"{existing.path}/acls/{want.nexus}" not in self.removed):
            return want.nexus
        return None

    # -- the pass ------------------------------------------------------------------------------
    def run(self, desired: Desired) -> Plan:
        wanted_storage = {so.key: so for so in desired.storage}
        self.check_devices(wanted_storage)
        self.remove_targets(desired)
        self.remove_devices(wanted_storage)
        for so in desired.storage:
            self.ensure_device(so)
        tpgs_made: set[str] = set()
        for tpg in desired.tpgs:
            self.ensure_tpg(tpg, tpgs_made)
        return self.plan

    def check_devices(self, wanted: dict[str, DesiredStorage]) -> None:
        """Find configured devices LIO holds with other backing; ours are rebuilt."""
        for key, so in wanted.items():
            device = self.cur.storage.get(key)
            if device is None:
                continue
            facts = backing(self.fs, device)
            diffs = [f"{k} {facts[k]}, want {v}" for k, v in so.expect.items()
                     if k in facts and facts[k] != v]
            serial = unit_serial(self.fs, device)
            if serial is not None and serial != so.unit_serial and device in self.cur.exported:
                diffs.append(f"unit serial {serial or '(none)'} while exported, want {so.unit_serial}")
            if not diffs:
                continue
            if self.ours(device):
                self.rebuild.add(key)
                self.plan.note("rebuild", f"storage object {key} ({device}): {'; '.join(diffs)}")
            else:
                self.plan.warnings.append(
                    f"{device} was not created by vhostscsi and differs from the configuration "
                    f"({'; '.join(diffs)}): left alone; remove it (targetcli) to let apply create it")

    def remove_targets(self, desired: Desired) -> None:
        """Unconfigured TPGs/targets/LUNs/ACLs that are ours go; the rest is reported."""
        wanted = {(tpg.wwn, tpg.tag): tpg for tpg in desired.tpgs}
        wanted_wwns = {tpg.wwn for tpg in desired.tpgs}
        for wwn, tpgs in self.cur.targets.items():
            target = f"vhost/{wwn}"
            for tag, tpg in tpgs.items():
                want = wanted.get((wwn, tag))
                if want is not None:
                    self.trim_tpg(tpg, want)
                elif self.ours(tpg.path):
                    self.plan.note("remove", f"{tpg.path} (no longer configured)")
                    self.remove_tpg(tpg)
                else:
                    self.plan.note("foreign", f"{tpg.path} (not created by vhostscsi; left alone)")
                    for lun in tpg.luns.values():
                        if self.ours(lun.path):
                            self.remove_lun_dir(lun.path)
            if wwn not in wanted_wwns and self.ours(target):
                if all(t.path in self.removed for t in tpgs.values()):
                    self.op("rmdir", target)

    def trim_tpg(self, tpg: CurrentTpg, want: DesiredTpg) -> None:
        """Inside a configured TPG: drop our LUNs and ACLs that are gone or must be rebuilt.

        A new nexus name needs the old nexus dropped, which needs a TPG without LUNs: the LUNs go
        and ensure_tpg makes them again around the new nexus.
        """
        luns = {lun.index: lun for lun in want.luns}
        nexus_now = self.fs.read(f"{tpg.path}/nexus")
        if want.nexus and nexus_now and nexus_now != want.nexus:
            if not self.ours(tpg.path) and any(not self.ours(lun.path) for lun in tpg.luns.values()):
                self.plan.warnings.append(f"{tpg.path} has nexus {nexus_now}, configured {want.nexus}: "
                                          "changing it needs its LUNs removed, and some are not ours")
                return
            self.plan.note("renexus", f"{tpg.path}: nexus {nexus_now} -> {want.nexus} (LUNs re-added)")
            self.remove_all_luns(tpg)
            self.drop_nexus(tpg.path)
            for acl in tpg.acls:
                if acl != want.nexus and self.ours(f"{tpg.path}/acls/{acl}"):
                    self.op("rmdir", f"{tpg.path}/acls/{acl}")
            return
        keep = self.acl_name(want, tpg)
        for acl in tpg.acls:
            acl_path = f"{tpg.path}/acls/{acl}"
            if acl != keep:
                if self.ours(acl_path) and acl != nexus_now:  # no session holds it
                    self.plan.note("remove", f"{acl_path} (not the nexus)")
                    self.remove_acl(acl_path)
                continue
            for mapped in self.mapped_luns(acl_path):
                index = int(mapped.rsplit("_", 1)[1])
                if (index not in luns or self.lun_conflict(tpg, luns[index])) and self.ours(mapped):
                    self.remove_lun_dir(mapped)
        for index, lun in tpg.luns.items():
            want_lun = luns.get(index)
            if want_lun is None:
                if self.ours(lun.path):
                    self.plan.note("remove", f"{lun.path} (no longer configured)")
                    self.remove_lun_dir(lun.path)
                else:
                    self.plan.note("foreign", f"{lun.path} (not created by vhostscsi; left alone)")
            elif self.lun_conflict(tpg, want_lun):
                if self.ours(lun.path):
                    self.remove_lun_dir(lun.path)
                else:
                    self.plan.warnings.append(
                        f"{lun.path} points to {lun.storage_path} and was not created by vhostscsi: "
                        f"left alone; remove it to let apply export {want_lun.storage}")

    def lun_conflict(self, tpg: CurrentTpg, want: DesiredLun) -> bool:
        """An existing LUN that must be remade: it points elsewhere, or at a device being rebuilt."""
        lun = tpg.luns.get(want.index)
        if lun is None:
            return False
        return self.cur.storage.get(want.storage) != lun.storage_path or want.storage in self.rebuild

    def remove_devices(self, wanted: dict[str, DesiredStorage]) -> None:
        for key, device in self.cur.storage.items():
            if key in wanted and key not in self.rebuild:
                continue
            if not self.ours(device):
                if key not in wanted:
                    self.plan.note("foreign", f"{device} (not created by vhostscsi; left alone)")
                continue
            users = [u for u in self.cur.exported.get(device, []) if u not in self.removed]
            if users:
                self.plan.warnings.append(f"{device} is still exported by {', '.join(users)}: left in place")
                continue
            if key not in wanted:
                self.plan.note("remove", f"{device} (no longer configured)")
            self.op("rmdir", device)
            hba = device.rsplit("/", 1)[0]
            if self.ledger.owns(hba) and all(f"{hba}/{n}" in self.removed for n in self.cur.hbas.get(hba, [])):
                self.op("rmdir", hba)

    def free_hba(self, prefix: str) -> str:
        taken = {h for h in self.cur.hbas if h not in self.removed}
        taken |= {op.path for op in self.plan.ops if op.kind == "mkdir" and op.path.count("/") == 1}
        index = 0
        while f"core/{prefix}_{index}" in taken:
            index += 1
        return f"core/{prefix}_{index}"

    def ensure_device(self, so: DesiredStorage) -> None:
        device = self.cur.storage.get(so.key)
        if device is None or so.key in self.rebuild:
            if device is not None and device not in self.removed:
                return  # could not be removed (still exported elsewhere): warned already
            hba = self.free_hba(so.hba_prefix)
            device = f"{hba}/{so.name}"
            if so.key not in self.rebuild:
                self.plan.note("create", f"storage object {so.key} ({device})")
            self.op("mkdir", hba)
            self.op("mkdir", device)
            self.op("write", f"{device}/control", so.control)
            if so.udev_path:
                self.op("write", f"{device}/udev_path", so.udev_path)
            self.op("write", f"{device}/enable", "1")
            self.op("write", f"{device}/wwn/vpd_unit_serial", so.unit_serial)
            for name, value in so.attributes.items():
                if so.lio_defaults.get(name) != value:
                    self.op("write", f"{device}/attrib/{name}", str(value))
            self.device_path[so.key] = device
            return
        self.device_path[so.key] = device
        before = len(self.plan.ops)
        facts = backing(self.fs, device)
        if facts.get("enable") == "0":
            if not self.ours(device):
                self.plan.warnings.append(f"{device} is not enabled and not ours: left alone")
                return
            self.op("write", f"{device}/control", so.control)
            if so.udev_path:
                self.op("write", f"{device}/udev_path", so.udev_path)
            self.op("write", f"{device}/enable", "1")
        if unit_serial(self.fs, device) != so.unit_serial:
            self.op("write", f"{device}/wwn/vpd_unit_serial", so.unit_serial)
        changed = []
        for name, value in so.attributes.items():
            path = f"{device}/attrib/{name}"
            now = self.fs.read(path)
            if now is None:
                self.plan.warnings.append(f"{path} is not offered by this kernel: {name}={value} not set")
            elif now.strip() != str(value):
                if self.fs.writable(path):
                    self.op("write", path, str(value))
                    changed.append(f"{name} {now.strip()}, want {value}")
                else:
                    self.plan.warnings.append(f"{path} is read-only here: {now.strip()}, configured {value}")
        if len(self.plan.ops) == before:
            self.plan.note("ok", f"storage object {so.key} ({device})")
        else:
            detail = f": {'; '.join(changed)}" if changed else ""
            self.plan.note("update", f"storage object {so.key} ({device}){detail}")

    def ensure_tpg(self, want: DesiredTpg, made: set[str]) -> None:
        before = len(self.plan.ops)
        target = f"vhost/{want.wwn}"
        existing = self.cur.targets.get(want.wwn, {}).get(want.tag)
        if not self.cur.vhost_fabric and "vhost" not in made:
            self.op("mkdir", "vhost")
            made.add("vhost")
        if want.wwn not in self.cur.targets and target not in made:
            self.op("mkdir", target)
            made.add(target)
        if existing is None:
            self.op("mkdir", want.path)
        for name, value in want.attributes.items():
            now = self.fs.read(f"{want.path}/attrib/{name}") if existing else "0"
            if now is not None and now.strip() != str(value):
                self.op("write", f"{want.path}/attrib/{name}", str(value))
        for lun in want.luns:
            lun_dir = f"{want.path}/lun/lun_{lun.index}"
            if existing is not None and lun.index in existing.luns and lun_dir not in self.removed:
                continue  # in place, or someone else's LUN in the way (warned in trim_tpg)
            device = self.device_path.get(lun.storage)
            if device is None:
                continue  # its device could not be made: warned already
            self.op("mkdir", lun_dir)
            self.op("symlink", f"{lun_dir}/{lun.alias}", device)
        acl = self.acl_name(want, existing)
        if acl is not None:
            self.ensure_acl(want, existing, acl)
        now_nexus = None
        if existing is not None and want.path not in self.nexus_dropped:
            now_nexus = self.fs.read(f"{want.path}/nexus")
        if want.nexus is None:
            self.plan.warnings.append(f"{want.path} has no nexus configured: a guest cannot log in")
        elif now_nexus != want.nexus:
            if now_nexus:
                self.op("write", f"{want.path}/nexus", "NULL")
            self.op("write", f"{want.path}/nexus", want.nexus)
        state = "ok" if len(self.plan.ops) == before else ("create" if existing is None else "update")
        luns = ", ".join(f"lun_{lun.index}->{lun.storage}" for lun in want.luns) or "no LUNs"
        self.plan.note(state, f"{want.path} nexus {want.nexus} ({luns})")

    def ensure_acl(self, want: DesiredTpg, existing: CurrentTpg | None, name: str) -> None:
        """The nexus ACL and its mapped LUNs, new ones mapped in descending index order.

        LIO lists an initiator's LUNs in REPORT LUNS newest mapping first (each mapping goes to
        the head of the ACL's list), so mapping 2, 1, 0 makes the guest see 0, 1, 2: what plain
        targetcli (a demo-mode ACL, built from the TPG's LUNs at login) and our user engine
        report. Mapping ascending would list 2, 1, 0.

        A LUN added later to an existing ACL is listed first (3, 0, 1, 2): LIO cannot reorder
        the list, and keeping it ascending would mean unmapping and remapping every LUN mapped
        before it. That is not done: on a live nexus each remapped LUN vanishes from the guest's
        session for a moment (commands in flight on it fail, the guest gets REPORTED LUNS DATA
        HAS CHANGED and may rescan), all for an order SPC does not require (initiators, Linux
        included, probe every listed LUN whatever the order). The next time the ACL is built
        from scratch (a new nexus, ``clear`` then ``apply``, a reboot) the order is ascending.
        Likewise LUNs remapped together (a rebuilt device) are listed ascending, ahead of the
        ones left in place.
        """
        acl = f"{want.path}/acls/{name}"
        if existing is None or name not in existing.acls or acl in self.removed:
            self.op("mkdir", acl)
        for lun in sorted(want.luns, key=lambda lun: lun.index, reverse=True):
            mapped = f"{acl}/lun_{lun.index}"
            if mapped in self.removed or not self.fs.is_dir(mapped):
                self.op("mkdir", mapped)
                self.op("symlink", f"{mapped}/{lun.alias}", f"{want.path}/lun/lun_{lun.index}")
                self.op("write", f"{mapped}/write_protect", str(int(lun.write_protect)))
            elif (self.fs.read(f"{mapped}/write_protect") or "").strip() != str(int(lun.write_protect)):
                self.op("write", f"{mapped}/write_protect", str(int(lun.write_protect)))


def plan_apply(desired: Desired, fs: Configfs, ledger: Ledger) -> Plan:
    """Operations that make configfs match ``desired``."""
    return Planner(fs, ledger).run(desired)


def plan_clear(fs: Configfs, ledger: Ledger) -> Plan:
    """Operations that remove everything we created: applying an empty configuration."""
    return Planner(fs, ledger).run(Desired((), ()))

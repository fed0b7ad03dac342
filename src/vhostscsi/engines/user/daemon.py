"""`vhostscsi serve`: every vhost target of the saved configuration, served to QEMU over vhost-user.

The daemon is a reconciler: it derives the desired state from the configuration file, diffs it against what
it serves, and applies the difference live (new LUNs are hot-plugged into running guests, removed ones
unplugged). It re-reads the file when it changes on disk (the shell saves atomically) and on SIGHUP. SIGTERM
and SIGINT drain the rings, flush every disk and exit 0.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path

from vhostscsi.config.model import Config
from vhostscsi.config.store import ConfigError, load_config
from vhostscsi.engines.user import desired as d
from vhostscsi.engines.user.devices import DeviceTable
from vhostscsi.engines.user.listener import ListenerError, prepare_socket_dir
from vhostscsi.engines.user.loop import EventLoop
from vhostscsi.engines.user.paths import socket_path
from vhostscsi.engines.user.target import TargetService
from vhostscsi.engines.user.watch import ConfigWatch

log = logging.getLogger("vhostscsi.serve")

WATCH_INTERVAL = 1.0


class Daemon:
    def __init__(self, config_path: Path, socket_dir: Path, *, watch_interval: float = WATCH_INTERVAL,
                 allow_unsealed_memory: bool = False, coalesce_us: int = 0) -> None:
        """`coalesce_us`: hold a request queue's interrupt up to that long to signal several completions at once
        (coalesce.py; 0: off, the default)."""
        self.config_path = Path(config_path)
        self.allow_unsealed_memory = allow_unsealed_memory
        self.coalesce_us = coalesce_us
        self.socket_dir = Path(socket_dir)
        self.watch_interval = watch_interval
        self.loop = EventLoop()
        self.devices = DeviceTable()
        self.targets: dict[str, TargetService] = {}
        self.applied: d.DesiredState = d.EMPTY
        self.watch = ConfigWatch(self.config_path)
        self.exit_code = 0
        self.started = False

    # ---- lifecycle --------------------------------------------------------------------------------------------
    def start(self, *, signals: bool = True) -> None:
        """Apply the configuration once (raises ConfigError/ListenerError when it cannot even start)."""
        if signals:  # first, so that a stop requested while starting is a clean stop, not a kill
            self.loop.add_signal_handler(signal.SIGHUP, lambda _s: self.reload("SIGHUP"))
            self.loop.add_signal_handler(signal.SIGTERM, lambda s: self._request_stop(s))
            self.loop.add_signal_handler(signal.SIGINT, lambda s: self._request_stop(s))
        prepare_socket_dir(self.socket_dir)
        _, stamp = self.watch.changed()
        cfg = load_config(self.config_path)
        self.watch.mark_applied(stamp)
        self.apply(cfg)
        if not self.targets:
            log.warning("no vhost targets in %s yet; waiting for one to be created", self.config_path)
        self.loop.call_later(self.watch_interval, self._poll_config)
        self.started = True

    def run(self) -> int:
        try:
            self.loop.run()
        finally:
            self.shutdown()
        return self.exit_code

    def _request_stop(self, signum: int) -> None:
        log.info("%s: draining and stopping", signal.Signals(signum).name)
        self.loop.stop()

    def shutdown(self) -> None:
        """Serve what the guests already queued, flush every disk, release sockets and files."""
        drained = sum(t.drain() for t in self.targets.values())
        if drained:
            log.info("completed %d queued request(s) before stopping", drained)
        self.devices.flush_all()
        for t in self.targets.values():
            t.stop("disconnected: daemon stopping")
        self.targets.clear()
        self.devices.close_all()
        self.applied = d.EMPTY
        self.loop.close()
        if self.started:
            log.info("stopped")

    # ---- configuration ----------------------------------------------------------------------------------------
    def _poll_config(self) -> None:
        changed, _ = self.watch.changed()
        if changed:
            self.reload(f"{self.config_path} changed")
        try:
            self.devices.check_media()  # a deleted backing file / removed device -> its LUNs NOT READY
        except Exception:  # a bug here must not stop the tick (nor the config watch)
            log.exception("checking the disks failed")
        self.loop.call_later(self.watch_interval, self._poll_config)

    def reload(self, reason: str) -> None:
        _, stamp = self.watch.changed()
        try:
            cfg = load_config(self.config_path)
        except ConfigError as e:
            log.error("configuration not applied (%s): %s", reason, e)
            self.watch.mark_applied(stamp)  # do not retry the same broken file every second
            return
        self.watch.mark_applied(stamp)
        log.info("re-reading configuration: %s", reason)
        try:
            self.apply(cfg)
        except Exception:  # a bug must not take down the guests already served
            log.exception("configuration only partly applied (%s)", reason)

    def apply(self, cfg: Config) -> None:
        """Move from what is served to what ``cfg`` says; whatever fails is logged and left out."""
        new = d.desired_state(cfg)
        steps = d.plan(self.applied, new)
        failed_devices: set[str] = set()
        failed_targets: set[str] = set()
        for step in steps:
            self._step(step, new, failed_devices, failed_targets)
        self.applied = _without(new, failed_devices, failed_targets)
        self.devices.reopen_offline()  # a restored backing file comes back on reload
        resized = self.refresh_capacities()
        if not steps and not resized:
            log.info("configuration unchanged")

    def refresh_capacities(self) -> int:
        """Re-read every open disk's size (a grown block device); tell the guests whose LUNs changed."""
        changed = 0
        for path in list(self.applied.devices):
            if not self.devices.refresh(path):
                continue
            changed += 1
            log.info("%s: capacity changed to %d bytes", path, self.devices.get(path).backstore.size)  # type: ignore[union-attr]
            for wwn, tspec in self.applied.targets.items():
                for tag, tpg in tspec.tpgs.items():
                    for idx, lun in tpg.luns.items():
                        if lun.so_path == path and wwn in self.targets:
                            self.targets[wwn].capacity_changed(tag, idx)
        return changed

    def _step(self, step: d.Step, new: d.DesiredState, failed_devices: set[str], failed_targets: set[str]) -> None:
        match step:
            case d.RemoveLun(wwn, tag, lun):
                t = self.targets.get(wwn)
                if t is not None:
                    t.remove_lun(tag, lun)
                    log.info("%s: tpg%d lun%d removed", wwn, tag, lun)
            case d.RemoveTpg(wwn, tag):
                if (t := self.targets.get(wwn)) is not None:
                    t.remove_tpg(tag)
            case d.RemoveTarget(wwn):
                if (t := self.targets.pop(wwn, None)) is not None:
                    t.stop("disconnected: target deleted")
                    log.info("%s: target removed", wwn)
            case d.CloseDevice(path):
                self.devices.close(path)
            case d.OpenDevice(path):
                if self.devices.open(new.devices[path].so) is None:
                    failed_devices.add(path)
            case d.AddTarget(wwn):
                svc = TargetService(self.loop, wwn, socket_path(self.socket_dir, wwn),
                                    allow_unsealed_memory=self.allow_unsealed_memory,
                                    coalesce=self.coalesce_us / 1e6)
                try:
                    svc.start()
                except ListenerError as e:
                    log.error("%s: not served: %s", wwn, e)
                    failed_targets.add(wwn)
                    return
                self.targets[wwn] = svc
            case d.AddTpg(wwn, tag):
                if (t := self.targets.get(wwn)) is not None:
                    t.add_tpg(tag, new.targets[wwn].tpgs[tag].nexus)
            case d.AddLun(wwn, tag, idx):
                t = self.targets.get(wwn)
                lun = new.targets[wwn].tpgs[tag].luns[idx]
                disk = self.devices.get(lun.so_path)
                if t is None or disk is None:
                    return
                t.add_lun(tag, idx, disk.device, lun.write_protect)
                ro = " (write-protected)" if lun.write_protect else ""
                log.info("%s: tpg%d lun%d -> %s%s", wwn, tag, idx, lun.so_path, ro)


def _without(state: d.DesiredState, devices: set[str], targets: set[str]) -> d.DesiredState:
    """The state actually reached: drop what failed, so the next reload tries it again."""
    if not devices and not targets:
        return state
    kept_targets = {}
    for wwn, t in state.targets.items():
        if wwn in targets:
            continue
        tpgs = {
            tag: d.TpgSpec(tag, tpg.nexus, {i: l for i, l in tpg.luns.items() if l.so_path not in devices})
            for tag, tpg in t.tpgs.items()
        }
        kept_targets[wwn] = d.TargetSpec(wwn, tpgs)
    kept_devices = {p: s for p, s in state.devices.items() if p not in devices}
    return d.DesiredState(kept_devices, kept_targets)

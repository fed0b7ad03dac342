"""LUNs added or removed while no daemon ran reach a guest whose QEMU reconnects, without a manual rescan.

The configuration is edited between a stop and the next start; the new daemon serves the new LUN set, and since
no daemon saw the change, no hotplug event was ever sent. On a reconnect (QEMU hands back the in-flight area of
the earlier daemon: SET_INFLIGHT_FD without GET_INFLIGHT_FD) the new daemon posts one "no event, events missed"
event on the event queue, which Linux's virtio_scsi answers with a full rescan of the host. A new guest (a
fresh connection) never gets it, nor a guest that did not negotiate hotplug.

Two levels: the real daemon driven by the host-side driver (the event bytes, the fresh-connection and no-hotplug
cases), and a Linux guest under QEMU 10 that sees LUN 1 appear while it keeps writing and reading LUN 0.

A LUN removed while no daemon ran stays in a Linux guest after the rescan (docs/restart.md): Linux drops a
device on that rescan only if its INQUIRY answers GOOD with a non-zero peripheral qualifier (or BAD TARGET),
and this target answers a missing LUN as LIO does, CHECK CONDITION / LOGICAL UNIT NOT SUPPORTED.
"""

from __future__ import annotations

import re
import signal
import struct
import time
from pathlib import Path

import pytest
from support.guest import build_image
from restart.harness import DISK_SIZE, DMESG_BAD, STOP_OFFSET, WWN, Serve, ask_guest_to_stop, make_config
from restart.qemu10 import Qemu

from vhostscsi.config.model import new_storage_object
from vhostscsi.config.store import load_config, save_config
from vhostscsi.guestkit import GNU_DD, VIRTIO_SCSI_MODULES, shared_memory_args, start_guest
from vhostscsi.hostdriver.frontend import FrontEnd
from vhostscsi.hostdriver.guestram import GuestRam
from vhostscsi.hostdriver.initiator import ScsiInitiator
from vhostscsi.vhost_user.protocol import DEFAULT_FEATURES, VIRTIO_SCSI_F_HOTPLUG, bit
from vhostscsi.virtio import scsi as vs

RECONNECT_MS = 200
RESCAN_SECONDS = 40  # reconnect to "the guest lists the new LUN set": a rescan under TCG takes a few seconds
EVENTS_MISSED = struct.pack("<I8sI", vs.T_NO_EVENT | vs.T_EVENTS_MISSED, bytes(8), 0)
RESCAN_LOG = "asking it to rescan its LUNs"


def edit_luns(config: Path, workdir: Path, *, add: tuple[int, ...] = (), remove: tuple[int, ...] = ()) -> None:
    """Edit the saved configuration as an admin would with the daemon stopped: remove LUNs `remove` of the
    target's TPG, add new fileio disks as LUNs `add` (backing file diskN.img, created sparse)."""
    cfg = load_config(config)
    target = cfg.find_target(WWN)
    assert target is not None
    tpg = target.tpgs[0]
    for index in remove:
        tpg.remove_lun(index)
    for index in add:
        disk = workdir / f"disk{index}.img"
        with open(disk, "wb") as f:
            f.truncate(DISK_SIZE)
        so = new_storage_object("fileio", f"disk{index}", dev=str(disk), size=DISK_SIZE, write_back=False)
        cfg.add_storage_object(so)
        tpg.add_lun(so, index=index)
    save_config(cfg, config)


# ---- the real daemon, driven by the host-side driver ---------------------------------------------------------


def report_luns(init: ScsiInitiator) -> list[int]:
    r = init.command(bytes([0xA0, 0, 0, 0, 0, 0]) + struct.pack(">I", 512) + bytes(2), data_in_len=512)
    assert r.status == 0, r
    n = struct.unpack(">I", r.data[:4])[0] // 8
    return sorted(((r.data[8 + 8 * i] << 8) | r.data[9 + 8 * i]) & 0x3FFF for i in range(n))


def reconnect(init: ScsiInitiator, fe: FrontEnd, features: int | None) -> None:
    """ScsiInitiator.reconnect with the guest's feature set `features` (None: all the daemon offers)."""
    area = init.fe.take_inflight()
    init.fe = fe
    fe.negotiate(features)
    if area is not None:
        fe.set_inflight(*area)
    fe.set_mem_table(init.ram)
    for q, ring in init.rings.items():
        fe.setup_ring(q, ring, base=ring.used_idx())


def restart_with_new_luns(tmp_path: Path, features: int | None) -> tuple[list[bytes], list[int], list[str]]:
    """Daemon 0 serves LUN 0 to a new guest (event buffers posted); stopped; LUN 1 added to the saved config;
    daemon 1 started and the guest reconnected. Returns (event buffers used after the reconnect, the LUNs the new
    daemon reports, the daemons' logs)."""
    config, _disk = make_config(tmp_path)
    daemons = [Serve(tmp_path, config, 0)]
    fe = None
    ram = GuestRam(16 << 20, regions=2)
    try:
        daemons[0].wait_socket()
        fe = FrontEnd.connect(str(daemons[0].socket), timeout=10)
        init = ScsiInitiator(fe, ram, queue_size=64)
        init.start(features=features, inflight=True)
        gpas = init.post_event_buffers(4)
        assert report_luns(init) == [0]
        assert init.wait_any(1, timeout=1.0) == [], "a new guest was sent an event"
        assert daemons[0].stop(signal.SIGTERM, timeout=30) == 0
        edit_luns(config, tmp_path, add=(1,))
        daemons.append(Serve(tmp_path, config, 1))
        daemons[1].wait_socket()
        reconnect(init, FrontEnd.connect(str(daemons[1].socket), timeout=10), features)
        fe.close()
        fe = init.fe
        used = init.wait_any(1, timeout=3.0)
        luns = report_luns(init)
        init.kick(1, force=True)  # another kick of the event queue brings nothing more
        used += init.wait_any(1, timeout=1.0)
        assert all(u.length == vs.EVENT_SIZE for u in used), used
        events = [e for e in (init.ram.read(g, vs.EVENT_SIZE) for g in gpas) if any(e)]
        assert len(events) == len(used)
    finally:
        if fe is not None:
            fe.close()
        ram.close()
        for d in daemons:
            d.kill()
    return events, luns, [d.log() for d in daemons]


def test_reconnect_after_a_config_change_posts_events_missed(tmp_path: Path) -> None:
    events, luns, logs = restart_with_new_luns(tmp_path, None)
    assert luns == [0, 1]
    assert events == [EVENTS_MISSED], "the reconnected guest was not told to rescan (exactly once)"
    assert RESCAN_LOG not in logs[0] and RESCAN_LOG in logs[1], logs[1][-3000:]


def test_no_event_without_hotplug(tmp_path: Path) -> None:
    """A guest that did not negotiate VIRTIO_SCSI_F_HOTPLUG reads no events: none is posted."""
    events, luns, logs = restart_with_new_luns(tmp_path, DEFAULT_FEATURES & ~bit(VIRTIO_SCSI_F_HOTPLUG))
    assert luns == [0, 1]
    assert events == []
    assert RESCAN_LOG not in logs[1]


def test_a_new_guest_on_a_restarted_daemon_gets_no_event(tmp_path: Path) -> None:
    """A fresh connection (GET_INFLIGHT_FD: a new in-flight area) to a daemon that was restarted: no event."""
    config, _disk = make_config(tmp_path)
    first = Serve(tmp_path, config, 0)
    first.wait_socket()
    assert first.stop(signal.SIGTERM, timeout=30) == 0
    edit_luns(config, tmp_path, add=(1,))
    second = Serve(tmp_path, config, 1)
    ram = GuestRam(16 << 20, regions=2)
    fe = None
    try:
        second.wait_socket()
        fe = FrontEnd.connect(str(second.socket), timeout=10)
        init = ScsiInitiator(fe, ram, queue_size=64)
        init.start(inflight=True)
        init.post_event_buffers(4)
        assert report_luns(init) == [0, 1]
        assert init.wait_any(1, timeout=1.0) == []
    finally:
        if fe is not None:
            fe.close()
        ram.close()
        second.kill()
    assert RESCAN_LOG not in second.log()


# ---- a Linux guest under QEMU 10 -----------------------------------------------------------------------------

# The guest lists its SCSI devices' LUNs (target 1 is TPG 1) whenever they change, while it keeps writing and
# reading LUN 0 (through its own block device, found in sysfs), until the host raises the stop flag on LUN 0's
# disk. It never asks for a rescan itself.
GUEST_SCRIPT = r"""
set -u
luns() { for d in /sys/class/scsi_device/*:0:1:*; do [ -e "$d" ] && echo "${d##*:}"; done | sort -n | tr '\n' ' '; }
i=0; while [ ! -e /sys/class/scsi_device/*:0:1:0/device/block ]; do i=$((i+1)); [ $i -gt 600 ] && { echo NO-DISK; exit 1; }; sleep 0.1; done
blk=$(ls /sys/class/scsi_device/*:0:1:0/device/block/)
i=0; while [ ! -b /dev/$blk ]; do i=$((i+1)); [ $i -gt 300 ] && { echo NO-DEV; exit 1; }; sleep 0.1; done
echo "LUN0-IS $blk"
last=""
r=0
while :; do
  r=$((r+1))
  cur=$(luns)
  [ "$cur" != "$last" ] && { echo "LUNS [$cur]"; last=$cur; }
  __DD__ if=/dev/urandom of=/tmp/blk bs=4096 count=1 2>/dev/null
  __DD__ if=/tmp/blk of=/dev/$blk bs=4096 count=1 seek=$((r % 256)) oflag=direct conv=notrunc 2>/dev/null || echo "IO-ERROR write $r"
  __DD__ if=/dev/$blk of=/tmp/back bs=4096 count=1 skip=$((r % 256)) iflag=direct 2>/dev/null || echo "IO-ERROR read $r"
  cmp -s /tmp/blk /tmp/back || echo "IO-ERROR mismatch $r"
  flag=$(__DD__ if=/dev/$blk bs=4096 skip=__STOPBLK__ count=1 iflag=direct 2>/dev/null | head -c 8)
  [ "$flag" = "STOPNOW!" ] && break
  [ $r -ge 5000 ] && { echo TOO-MANY-ROUNDS; break; }
  sleep 0.1
done
echo "LUNS-FINAL [$(luns)]"
echo DMESG-BEGIN; dmesg; echo DMESG-END
echo WORKLOAD-DONE
"""


def guest_script() -> str:
    return GUEST_SCRIPT.replace("__DD__", GNU_DD).replace("__STOPBLK__", str(STOP_OFFSET // 4096))


@pytest.mark.guest
def test_guest_sees_a_lun_added_while_no_daemon_ran(qemu10: Qemu, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    img = build_image(extra_binaries=[GNU_DD], modules=VIRTIO_SCSI_MODULES, init_script=guest_script())
    config, disk = make_config(tmp_path)
    daemons = [Serve(tmp_path, config, 0)]
    daemons[0].wait_log("listening on", 30)
    args = shared_memory_args(512) + qemu10.vhost_user_scsi(daemons[0].socket, RECONNECT_MS)
    try:
        with start_guest(img, args, workdir=tmp_path / "guest", qemu=qemu10.binary) as g:
            g.wait_for("LUNS [0 ]", timeout=300)
            daemons[0].wait_log("guest driver started", 60)
            time.sleep(1.0)  # some I/O on LUN 0
            assert daemons[0].stop(signal.SIGTERM, timeout=60) == 0, daemons[0].log()[-2000:]
            edit_luns(config, tmp_path, add=(1,))
            started = time.monotonic()
            daemons.append(Serve(tmp_path, config, 1))
            daemons[1].wait_log("guest driver started", 60)
            try:
                g.wait_for(re.compile(r"^LUNS \[0 1 \]$", re.M), timeout=RESCAN_SECONDS)
            except Exception as e:
                raise AssertionError(f"the guest never saw LUN 1 within {RESCAN_SECONDS} s "
                                     f"of the reconnect:\n{g.console()[-3000:]}\n{daemons[1].log()[-3000:]}") from e
            seen_after = time.monotonic() - started
            time.sleep(1.0)  # more I/O on LUN 0 after the rescan
            ask_guest_to_stop(disk)
            g.wait_for("WORKLOAD-DONE", timeout=120)
            text = g.wait(60)
    finally:
        for d in daemons:
            d.kill()
    with capsys.disabled():
        print(f"\nthe guest listed LUNs [0 1] {seen_after:.1f} s after the new daemon was started")
    lun0 = re.search(r"LUN0-IS (\w+)", text)
    assert lun0, text[-3000:]
    assert "IO-ERROR" not in text and "TOO-MANY-ROUNDS" not in text, text[-3000:]
    assert "LUNS-FINAL [0 1 ]" in text, text[-3000:]
    dmesg = text.split("DMESG-BEGIN", 1)[-1].split("DMESG-END", 1)[0]
    assert [line for line in dmesg.splitlines() if DMESG_BAD.search(line)] == [], dmesg
    assert RESCAN_LOG not in daemons[0].log(), "a new guest was told to rescan"
    assert RESCAN_LOG in daemons[1].log(), daemons[1].log()[-3000:]
    for d in daemons:
        assert "Traceback" not in d.log() and "internal error" not in d.log(), d.log()[-3000:]

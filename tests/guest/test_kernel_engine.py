"""`vhostscsi kernel apply` against the real LIO, in a guest running Debian's generic kernel.

The guest mounts the host's root read-only over 9p and chroots into it, so it runs the host's
Python and this very checkout; the kernel engine then loads LIO's modules, mounts configfs and
writes it for real. (The cloud kernel has no 9p; packing Python into an initramfs would be a
second, divergent install.) The checks are the seed's configfs screens, idempotence, removal of a
LUN and of a storage object, write protection through the nexus ACL, that objects made by
someone else survive `clear`, and LIO's PR metadata directory (<db_root>/pr): a clear error where
apply cannot make it (the default db_root on the read-only 9p root), made mode 0700 once db_root
points at a writable directory. With the real /dev/vhost-scsi present, it also checks that QEMU takes
`qemu-args` output and that libvirt (`virsh domxml-to-native` on the embedded QEMU driver, run as
nobody) turns `libvirt-xml` output into QEMU's vhost-scsi-pci device.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest
from support.guest import boot_host_root, generic_kernel, host_root_image

from vhostscsi.config.model import Config, new_storage_object, new_vhost_target
from vhostscsi.config.store import save_config

pytestmark = pytest.mark.guest

WWN = "naa.500140568720f76f"
NEXUS = "naa.5001405aaaaaaaaa"
SERIAL = "4a3a2d4b-1234-4c56-9d8e-0123456789ab"
T = "/sys/kernel/config/target"
QEMU_DRIVER = "/usr/lib/x86_64-linux-gnu/libvirt/connection-driver/libvirt_driver_qemu.so"
TPG = f"{T}/vhost/{WWN}/tpgt_1"


def write_configs(directory: Path) -> None:
    cfg = Config()
    disk = cfg.add_storage_object(new_storage_object(
        "fileio", "disk0", dev="/run/disk0.img", size=64 << 20, write_back=True, wwn=SERIAL))
    ram = cfg.add_storage_object(new_storage_object("ramdisk", "rd0", size=16 << 20))
    blk = cfg.add_storage_object(new_storage_object("block", "blk0", dev="/dev/loop0"))
    target = cfg.add_target(new_vhost_target(WWN))
    tpg = target.tpgs[0]
    tpg.nexus_wwn = NEXUS
    tpg.add_lun(disk).alias = "a08824829b"
    tpg.add_lun(ram, write_protect=True)
    tpg.add_lun(blk)
    save_config(cfg, directory / "three-luns.json")
    tpg.remove_lun(1)
    tpg.remove_lun(2)
    cfg.remove_storage_object(ram.path)
    cfg.remove_storage_object(blk.path)
    save_config(cfg, directory / "one-lun.json")


# Runs in the chroot of the host's root (support.guest.chroot_script).
GUEST_STEPS = r"""V="@PYTHON@ -m vhostscsi kernel"
D=@DIR@
step() { echo "=== $1"; }
step modules-before; ls /sys/module | grep -E '^(target_core_mod|target_core_file|target_core_iblock|vhost_scsi)$' || true
step dbroot-default
modprobe target_core_mod; mount -t configfs configfs /sys/kernel/config
cat @T@/dbroot
$V apply --dry-run --config $D/one-lun.json | grep '^mkdir -p'
$V apply --config $D/one-lun.json; echo "rc=$?"; ls @T@/core/
step dbroot
mkdir -p /run/target && echo /run/target > @T@/dbroot && cat @T@/dbroot
step foreign
mkdir -p @T@/core/rd_mcp_7/foreign && printf rd_pages=16 > @T@/core/rd_mcp_7/foreign/control && printf 1 > @T@/core/rd_mcp_7/foreign/enable && echo made
step loop; modprobe loop; truncate -s 32M /run/blk.img && losetup /dev/loop0 /run/blk.img && echo ready
step apply1; timeout 300 $V apply --config $D/three-luns.json; echo "rc=$?"
step pr; stat -c %A /run/target/pr
step modules-after; ls /sys/module | grep -E '^(target_core_mod|target_core_file|target_core_iblock|vhost_scsi)$'
step luns1; ls @TPG@/lun/
step iblock; cat @T@/core/iblock_0/blk0/info
step ls-vhost; ls -C -T0 @T@/vhost/
step ls-lun0; ls -l @TPG@/lun/lun_0/ | sed 1d | awk '{print $1, $9, $10, $11}'
step info; cat @TPG@/lun/lun_0/a08824829b/info
step serial; cat @T@/core/fileio_0/disk0/wwn/vpd_unit_serial
step model-alias; cat @T@/core/fileio_0/disk0/attrib/emulate_model_alias
step write-cache; cat @T@/core/fileio_0/disk0/attrib/emulate_write_cache
step nexus; cat @TPG@/nexus
step wp; cat @TPG@/acls/@NEXUS@/lun_0/write_protect @TPG@/acls/@NEXUS@/lun_1/write_protect @TPG@/acls/@NEXUS@/lun_2/write_protect
step qemu; A=$(@PYTHON@ -m vhostscsi qemu-args @WWN@ --config $D/three-luns.json --bus pci.0 --addr 0x5)
printf 'info pci\nquit\n' | timeout 120 qemu-system-x86_64 -accel tcg -nodefaults -display none -S -m 64 $A -monitor stdio 2>&1 | grep -E -A1 'device +5,|qemu-system' | grep -v '^--'
step libvirt
if [ -e @QEMU_DRIVER@ ]; then
  { echo "<domain type='qemu'><name>t</name><memory unit='KiB'>131072</memory>"
    echo "<os><type arch='x86_64' machine='pc'>hvm</type></os><devices>"
    @PYTHON@ -m vhostscsi libvirt-xml @WWN@ --config $D/three-luns.json --bus pci.0 --addr 0x5
    echo "</devices></domain>"; } > /run/domain.xml
  chmod 666 /dev/vhost-scsi; mkdir -m 777 /run/libvirt-embed
  timeout 300 setpriv --reuid=65534 --regid=65534 --clear-groups env HOME=/run/libvirt-embed \
    XDG_RUNTIME_DIR=/run/libvirt-embed LC_ALL=C virsh -c 'qemu:///embed?root=/run/libvirt-embed' \
    domxml-to-native qemu-argv /run/domain.xml | grep -o "\-device '{\"driver\":\"vhost-scsi-pci\"[^']*'"
else
  echo "no libvirt qemu driver"
fi
step apply2; $V apply --config $D/three-luns.json; echo "rc=$?"
step dry2; $V apply --dry-run --config $D/three-luns.json; echo "rc=$?"
step status2; $V status --config $D/three-luns.json; echo "rc=$?"
step apply3; $V apply --config $D/one-lun.json; echo "rc=$?"
step luns3; ls @TPG@/lun/
step core3; ls @T@/core/
step apply4; $V apply --config $D/one-lun.json; echo "rc=$?"
step clear; $V clear; echo "rc=$?"
step ls-vhost-after-clear; ls -C -T0 @T@/vhost/
step core-after-clear; ls @T@/core/
step end
"""


def sections(console: str) -> dict[str, str]:
    """Split the console at the "=== name" markers the guest printed."""
    found: dict[str, str] = {}
    parts = re.split(r"^=== (\S+)\r?$", console.replace("\r\n", "\n"), flags=re.M)
    for name, body in zip(parts[1::2], parts[2::2]):
        found[name] = body.strip("\n")
    return found


def test_kernel_apply_in_a_real_lio(tmp_path: Path) -> None:
    kernel = generic_kernel()
    write_configs(tmp_path)
    steps = (GUEST_STEPS.replace("@PYTHON@", sys.executable).replace("@DIR@", str(tmp_path))
              .replace("@TPG@", TPG).replace("@T@", T).replace("@NEXUS@", NEXUS).replace("@WWN@", WWN)
              .replace("@QEMU_DRIVER@", QEMU_DRIVER))
    console = boot_host_root(host_root_image(steps, kernel), timeout=420)
    s = sections(console)
    assert "end" in s, console[-3000:]

    assert s["modules-before"] == ""  # the engine itself loads LIO
    # LIO's PR metadata directory, <db_root>/pr: with the default db_root (/var/target: the host
    # has no /etc/target) on the read-only 9p root, apply cannot make it and stops before any change
    default = "/etc/target" if os.path.isdir("/etc/target") else "/var/target"
    if not os.path.isdir(f"{default}/pr"):
        assert s["dbroot-default"].splitlines() == [
            default,
            f"mkdir -p -m 0700 {default}/pr",
            f"vhostscsi kernel: error: cannot create {default}/pr (Read-only file system), where LIO keeps "
            "persistent-reservation metadata (without it every PERSISTENT RESERVE OUT fails): make it "
            "writable, or, while LIO has no storage object yet, point it at a writable directory: "
            f"mkdir -p /var/lib/target && echo /var/lib/target > {T}/dbroot",
            "rc=1",
            "alua",
        ], s["dbroot-default"]
    assert s["dbroot"] == "/run/target"  # a writable db_root, taken while LIO has no device
    assert s["foreign"].endswith("made")
    assert s["apply1"].endswith("rc=0"), s["apply1"]
    assert "create    /run/target/pr (LIO's persistent-reservation metadata)" in s["apply1"]
    assert s["pr"] == "drwx------"  # made by apply
    assert s["modules-after"].split() == ["target_core_file", "target_core_iblock", "target_core_mod",
                                          "vhost_scsi"]
    assert s["loop"] == "ready"
    assert s["luns1"].split() == ["lun_0", "lun_1", "lun_2"]
    assert s["iblock"].startswith("Status: ACTIVATED"), s["iblock"]
    assert "UDEV PATH: /dev/loop0  readonly: 0" in s["iblock"]
    assert s["ls-vhost"] == f"discovery_auth  {WWN}  version"
    assert s["ls-lun0"].splitlines() == [
        "lrwxrwxrwx a08824829b -> ../../../../../../target/core/fileio_0/disk0",
        "-rw-r--r-- alua_tg_pt_gp  ",
        "-rw-r--r-- alua_tg_pt_offline  ",
        "-rw-r--r-- alua_tg_pt_status  ",
        "-rw-r--r-- alua_tg_pt_write_md  ",
        "drwxr-xr-x statistics  ",
    ]
    assert s["info"].startswith("Status: ACTIVATED  Max Queue Depth: 0  SectorSize: 512"), s["info"]
    assert "File: /run/disk0.img  Size: 67108864  Mode: Buffered-WCE" in s["info"]
    assert s["serial"] == f"T10 VPD Unit Serial Number: {SERIAL}"
    assert s["model-alias"] == "1" and s["write-cache"] == "1"
    assert s["nexus"] == NEXUS
    assert s["wp"].split() == ["0", "1", "0"]

    # QEMU takes the printed arguments with the real /dev/vhost-scsi: the device sits in slot 5
    assert s["qemu"].splitlines() == ["  Bus  0, device   5, function 0:",
                                      "    SCSI controller: PCI device 1af4:1004"], s["qemu"]

    # libvirt turns the printed <hostdev> into QEMU's vhost-scsi-pci, opening the real /dev/vhost-scsi
    if s["libvirt"] != "no libvirt qemu driver":
        assert re.fullmatch(r"-device '\{\"driver\":\"vhost-scsi-pci\",\"wwpn\":\"naa\.500140568720f76f\","
                            r"\"vhostfd\":\"\d+\",\"id\":\"hostdev0\",\"bus\":\"pci\.0\",\"addr\":\"0x5\"\}'",
                            s["libvirt"]), s["libvirt"]

    assert s["apply2"] == "nothing to do: LIO matches the configuration\nrc=0"
    assert s["dry2"] == "rc=0"  # an empty plan
    assert s["status2"].endswith("in sync\nrc=0"), s["status2"]

    assert s["apply3"].endswith("rc=0"), s["apply3"]
    assert "remove    vhost/naa.500140568720f76f/tpgt_1/lun/lun_1 (no longer configured)" in s["apply3"]
    assert "remove    core/rd_mcp_0/rd0 (no longer configured)" in s["apply3"]
    assert "remove    core/iblock_0/blk0 (no longer configured)" in s["apply3"]
    assert s["luns3"].split() == ["lun_0"]
    assert s["core3"].split() == ["alua", "fileio_0", "rd_mcp_7"]
    assert s["apply4"] == "nothing to do: LIO matches the configuration\nrc=0"

    assert s["clear"].endswith("rc=0"), s["clear"]
    assert s["ls-vhost-after-clear"] == "discovery_auth  version"
    assert s["core-after-clear"].split() == ["alua", "rd_mcp_7"]  # someone else's device stays

"""The seed's host-setup session through one-shot commands, and every refusal it must give.

Runs the real `vhostscsi` command in a subprocess, on real files and (where the machine allows) a
real loop device, and checks what an admin would see: the messages, the `ls` tree, the saved file.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.loop import loop_device as attached_loop

DATA = Path(__file__).parents[1] / "unit" / "config" / "data" / "targetcli_vhost.json"
WIDTH = 132  # configshell's width when stdout is not a terminal
ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")


def run(config: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    """One `vhostscsi --config CONFIG ARGS...` invocation."""
    env = dict(os.environ, HOME=str(config.parent))
    env.pop("VHOSTSCSI_CONFIG", None)
    proc = subprocess.run(
        [sys.executable, "-m", "vhostscsi", "--config", str(config), *args],
        capture_output=True, text=True, env=env, timeout=60,
    )
    if ok:
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr == "", proc.stderr
    return proc


def tree(text: str) -> list[str]:
    """`ls` output with the dot padding folded, after checking every line is drawn full width."""
    lines = text.rstrip("\n").split("\n")
    for line in lines:
        assert len(line) == WIDTH or " [" not in line, line
    return [re.sub(r" \.* \[", " [", line) for line in lines]


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[str]:
    """A 64 MiB loop device over a file, or a skip saying why the machine does not allow one."""
    with attached_loop(tmp_path / "loop.img", 64 << 20) as dev:
        yield dev


def setup_session(cfg: Path, disk0: Path, loop: str | None) -> str:
    """The seed's session (plus a fileio disk); returns the generated target WWN."""
    out = run(cfg, "/backstores/fileio", "create", "name=disk0", f"file_or_dev={disk0}", "size=1G").stdout
    assert out == "Created fileio disk0 with size 1073741824\n"
    assert disk0.stat().st_size == 1 << 30
    assert disk0.stat().st_blocks == 0  # sparse by default
    if loop:
        out = run(cfg, "/backstores/block", "create", "name=disk1", "write_back=false", f"dev={loop}").stdout
        assert out == f"Created block storage object disk1 using {loop}.\n"
    out = run(cfg, "/vhost/", "create").stdout
    match = re.fullmatch(r"Created target (naa\.5001405[0-9a-f]{9})\.\nCreated TPG 1\.\n", out)
    assert match, out
    wwn = match.group(1)
    luns = f"/vhost/{wwn}/tpg1/luns"
    if loop:
        assert run(cfg, luns, "create", "/backstores/block/disk1").stdout == "Created LUN 0.\n"
    expected = 1 if loop else 0
    assert run(cfg, luns, "create", "/backstores/fileio/disk0").stdout == f"Created LUN {expected}.\n"
    return wwn


def expected_tree(wwn: str, nexus: str, disk0: Path, loop: str | None) -> list[str]:
    block = ["  | o- block [Storage Objects: 0]"]
    if loop:
        block = [
            "  | o- block [Storage Objects: 1]",
            f"  | | o- disk1 [{loop} (64.0MiB) write-thru activated]",
            "  | |   o- alua [ALUA Groups: 1]",
            "  | |     o- default_tg_pt_gp [ALUA state: Active/optimized]",
        ]
    luns = [f"          o- lun0 [fileio/disk0 ({disk0}) (default_tg_pt_gp)]"]
    if loop:
        luns = [
            f"          o- lun0 [block/disk1 ({loop}) (default_tg_pt_gp)]",
            f"          o- lun1 [fileio/disk0 ({disk0}) (default_tg_pt_gp)]",
        ]
    return [
        "o- / [...]",
        "  o- backstores [...]",
        *block,
        "  | o- fileio [Storage Objects: 1]",
        f"  | | o- disk0 [{disk0} (1.0GiB) write-back activated]",
        "  | |   o- alua [ALUA Groups: 1]",
        "  | |     o- default_tg_pt_gp [ALUA state: Active/optimized]",
        "  | o- ramdisk [Storage Objects: 0]",
        "  o- vhost [Targets: 1]",
        f"    o- {wwn} [TPGs: 1]",
        f"      o- tpg1 [{nexus}]",
        f"        o- luns [LUNs: {len(luns)}]",
        *luns,
    ]


def check_seed_session(tmp_path: Path, loop: str | None) -> None:
    cfg = tmp_path / "etc" / "saveconfig.json"
    disk0 = tmp_path / "disk0.img"
    wwn = setup_session(cfg, disk0, loop)
    saved = json.loads(cfg.read_text())
    (target,) = saved["targets"]
    assert (target["fabric"], target["wwn"]) == ("vhost", wwn)
    nexus = target["tpgs"][0]["nexus"]
    assert re.fullmatch(r"naa\.5001405[0-9a-f]{9}", nexus)

    listing = run(cfg, "ls").stdout
    assert tree(listing) == expected_tree(wwn, nexus, disk0, loop)

    lun = "lun1" if loop else "lun0"
    info = run(cfg, f"/vhost/{wwn}/tpg1/luns/{lun}", "info").stdout.split("\n")
    assert info[:2] == [
        "Status: ACTIVATED  Max Queue Depth: 0  SectorSize: 512  HwMaxSectors: 16384",
        f"        TCM FILEIO ID: 0        File: {disk0}  Size: 1073741824  Mode: Buffered-WCE Async: 0",
    ]
    if loop:
        info = run(cfg, f"/vhost/{wwn}/tpg1/luns/lun0", "info").stdout.split("\n")
        name = Path(loop).name
        rdev = os.stat(loop).st_rdev
        assert re.fullmatch(r"Status: ACTIVATED  Max Queue Depth: 0  SectorSize: 512  HwMaxSectors: \d+", info[0])
        assert info[1] == f"        iBlock device: {name}  UDEV PATH: {loop}  readonly: 0"
        assert info[2] == f"        Major: {os.major(rdev)} Minor: {os.minor(rdev)}  CLAIMED: IBLOCK"

    # save to a second file, restore it into an empty configuration: the same tree
    copy = tmp_path / "copy.json"
    assert run(cfg, "saveconfig", str(copy)).stdout == f"Configuration saved to {copy}\n"
    other = tmp_path / "other" / "saveconfig.json"
    assert run(other, "restoreconfig", str(copy)).stdout == f"Configuration restored from {copy}\n"
    assert run(other, "ls").stdout == listing
    assert json.loads(other.read_text()) == saved

    # delete works at every level, in the order the model allows
    luns = f"/vhost/{wwn}/tpg1/luns"
    assert run(cfg, luns, "delete", lun).stdout == f"Deleted LUN {lun[3:]}.\n"
    assert run(cfg, "/backstores/fileio", "delete", "disk0").stdout == "Deleted storage object disk0.\n"
    assert disk0.exists()  # the admin's data is never removed
    assert run(cfg, f"/vhost/{wwn}", "delete", "1").stdout == "Deleted TPGT 1.\n"
    assert run(cfg, "/vhost", "delete", wwn).stdout == f"Deleted Target {wwn}.\n"
    assert json.loads(cfg.read_text())["targets"] == []


def test_seed_session_with_fileio(tmp_path: Path) -> None:
    check_seed_session(tmp_path, None)


def test_seed_session_with_block_on_loop_device(tmp_path: Path, loop_device: str) -> None:
    check_seed_session(tmp_path, loop_device)


def test_targetcli_saveconfig_restores(tmp_path: Path) -> None:
    cfg = tmp_path / "saveconfig.json"
    assert run(cfg, "restoreconfig", str(DATA)).stdout == f"Configuration restored from {DATA}\n"
    lines = tree(run(cfg, "ls", "/vhost").stdout)
    nexus = json.loads(cfg.read_text())["targets"][1]["tpgs"][0]["nexus"]
    assert lines == [
        "o- vhost [Targets: 1]",
        "  o- naa.500140568720f76f [TPGs: 1]",
        f"    o- tpg1 [{nexus}]",
        "      o- luns [LUNs: 2]",
        "        o- lun0 [block/disk1 (/dev/disk/by-id/dm-uuid-mpath-36005076306ffc7630000000000002000) (default_tg_pt_gp)]",
        "        o- lun1 [fileio/disk0 (/var/lib/disk0.img) (default_tg_pt_gp)]",
    ]
    # the iSCSI target and its ACLs/portals are not ours, but they are kept
    saved = json.loads(cfg.read_text())
    original = json.loads(DATA.read_text())
    assert saved["targets"][0] == original["targets"][0]
    assert saved["fabric_modules"] == original["fabric_modules"]
    # the nexus is kept from now on: a second restore of our file gives the same one
    again = tmp_path / "again.json"
    run(again, "restoreconfig", str(cfg))
    assert json.loads(again.read_text())["targets"][1]["tpgs"][0]["nexus"] == nexus
    assert run(cfg, "restoreconfig", str(DATA), ok=False).stderr == (
        "storageobject 'block:disk1' exist not restoring\n"
    )
    assert run(cfg, "restoreconfig", str(DATA), "clear_existing=true").returncode == 0

    # another fabric's target is shown and can be deleted (to free a backstore), not extended
    iqn = "iqn.2003-01.org.linux-iscsi.host1.x8664:sn.4b2a9c8d7e6f"
    assert tree(run(cfg, "ls", "/iscsi").stdout) == [
        "o- iscsi [Targets: 1]",
        f"  o- {iqn} [TPGs: 1]",
        "    o- tpg1 [...]",
        "      o- luns [LUNs: 1]",
        "        o- lun0 [ramdisk/scratch (default_tg_pt_gp)]",
    ]
    proc = run(cfg, f"/iscsi/{iqn}/tpg1/luns", "create", "/backstores/fileio/disk0", ok=False)
    assert proc.stderr == "/iscsi is kept for targetcli; vhostscsi creates objects under /vhost only\n"
    proc = run(cfg, "/backstores/ramdisk", "delete", "scratch", ok=False)
    assert proc.stderr == (
        f"/backstores/ramdisk/scratch is in use by /iscsi/{iqn}/tpg1/luns/lun0: delete the LUN(s) first\n"
    )
    assert run(cfg, "/iscsi", "delete", iqn).stdout == f"Deleted Target {iqn}.\n"
    assert run(cfg, "/backstores/ramdisk", "delete", "scratch").stdout == "Deleted storage object scratch.\n"
    assert [t["fabric"] for t in json.loads(cfg.read_text())["targets"]] == ["vhost"]


def test_clearconfig_needs_confirm(tmp_path: Path) -> None:
    cfg = tmp_path / "saveconfig.json"
    run(cfg, "/backstores/ramdisk", "create", "r0", "1M")
    proc = run(cfg, "clearconfig", ok=False)
    assert (proc.returncode, proc.stderr) == (1, "As a precaution, confirm=True needs to be set\n")
    assert run(cfg, "clearconfig", "confirm=True").stdout == "All configuration cleared\n"
    assert json.loads(cfg.read_text())["storage_objects"] == []


def test_write_protected_lun_and_attributes(tmp_path: Path) -> None:
    cfg = tmp_path / "saveconfig.json"
    run(cfg, "/backstores/ramdisk", "create", "name=r0", "size=1M")
    wwn = "naa.5001405aabbccdde"
    run(cfg, "/vhost", "create", wwn)
    assert run(cfg, f"/vhost/{wwn}/tpg1/luns", "create", "/backstores/ramdisk/r0", "lun=lun3",
               "write_protect=true").stdout == "Created LUN 3.\n"
    lun = json.loads(cfg.read_text())["targets"][0]["tpgs"][0]["luns"][0]
    assert (lun["index"], lun["write_protect"]) == (3, True)
    assert run(cfg, f"/vhost/{wwn}/tpg1/luns/lun3", "set", "attribute", "write_protect=0").stdout == (
        "Parameter write_protect is now '0'.\n"
    )
    assert "write_protect" not in json.loads(cfg.read_text())["targets"][0]["tpgs"][0]["luns"][0]
    out = run(cfg, "/backstores/ramdisk/r0", "get", "attribute", "block_size", "hw_max_sectors").stdout
    assert out == "block_size=512 \nhw_max_sectors=4294967288 [ro]\n"
    run(cfg, "/backstores/ramdisk/r0", "set", "attribute", "emulate_tpu=1")
    assert json.loads(cfg.read_text())["storage_objects"][0]["attributes"]["emulate_tpu"] == 1


# ---------------------------------------------------------------------------------- refusals


@pytest.fixture(scope="module")
def populated_once(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    base = tmp_path_factory.mktemp("populated")
    cfg = base / "etc" / "saveconfig.json"
    return cfg, setup_session(cfg, base / "disk0.img", None)


@pytest.fixture
def populated(populated_once: tuple[Path, str], tmp_path: Path) -> tuple[Path, str]:
    """A copy of the seed session's saved configuration (with its backups) for one test."""
    cfg, wwn = populated_once
    shutil.copytree(cfg.parent, tmp_path / "etc")
    (tmp_path / "plain.img").write_bytes(b"")
    return tmp_path / "etc" / "saveconfig.json", wwn


REFUSALS = [
    (["/vhost", "create", "naa.123"], r"invalid WWN 'naa\.123': a vhost WWN is 'naa\.' followed by 16 hex digits.*"),
    (["/backstores/fileio", "create", "name=disk0", "file_or_dev={tmp}/new.img", "size=1M"],
     r"a fileio storage object named 'disk0' already exists"),
    (["/backstores/fileio", "create", "name=x", "file_or_dev={tmp}/new.img", "size=1Q"],
     r"invalid size '1Q': use a number of bytes or a number with a K, M, G or T suffix \(e\.g\. 1G\)"),
    (["/backstores/fileio", "create", "name=x", "file_or_dev={tmp}/missing/dir/new.img", "size=1M"],
     r"cannot create .*/missing/dir/new\.img: directory .*/missing/dir does not exist"),
    (["/backstores/fileio", "create", "name=x", "file_or_dev={tmp}/new.img"],
     r"Attempting to create file for new fileio backstore, need a size"),
    (["/backstores/block", "create", "name=b", "dev=/dev/vhostscsi-no-such-disk"],
     r"block device /dev/vhostscsi-no-such-disk does not exist"),
    (["/backstores/block", "create", "name=b", "dev={tmp}/plain.img"],
     r".*/plain\.img is not a block device: use a fileio backstore for files"),
    (["/backstores/fileio", "delete", "disk0"],
     r"/backstores/fileio/disk0 is in use by /vhost/{wwn}/tpg1/luns/lun0: delete the LUN\(s\) first"),
    (["/vhost/naa.5001405000000000", "ls"], r"No such path /vhost/naa\.5001405000000000"),
    (["/backstores/fileio", "create", "name=x", "file_or_dev={tmp}/new.img", "size=1M", "bogus=1"],
     r"Unexpected keyword parameter 'bogus'\."),
    (["/backstores/fileio/disk0", "set", "attribute", "bogus=1"], r"Unknown parameter bogus in group 'attribute'\."),
    (["/backstores/fileio/disk0", "set", "attribute", "block_size=999"],
     r"invalid block_size 999: use 512, 1024, 2048 or 4096"),
    (["/vhost/{wwn}/tpg1/luns", "create", "/backstores/fileio/nope"],
     r"storage object /backstores/fileio/nope not found: create it under /backstores first"),
    (["/vhost/{wwn}/tpg1/luns", "create", "/backstores/fileio/disk0"],
     r"/backstores/fileio/disk0 is already exported by LUN 0 of TPG 1"),
    (["/vhost/{wwn}/tpg1/luns", "delete", "lun7"], r"no LUN 7 in TPG 1"),
    (["/vhost", "create", "{wwn}"], r"target {wwn} already exists"),
    (["/backstores/ramdisk", "create", "name=r"], r"Missing required parameter size"),
    (["/", "frobnicate"], r"Command not found frobnicate"),
    (["/vhost", "create", '"naa.5001405aaaaaaaaa'],
     r"cannot understand '\"naa\.5001405aaaaaaaaa' \(column 15\): use PATH COMMAND \[VALUE\.\.\.\] \[NAME=VALUE\.\.\.\]"),
]


@pytest.mark.parametrize(("args", "pattern"), REFUSALS, ids=[" ".join(a[:3]) for a, _ in REFUSALS])
def test_refusal_is_one_line_and_changes_nothing(populated: tuple[Path, str], args: list[str], pattern: str) -> None:
    cfg, wwn = populated
    tmp = str(cfg.parent.parent)
    before = cfg.read_bytes()
    backups = sorted((cfg.parent / "backup").iterdir())
    args = [a.format(tmp=tmp, wwn=wwn) for a in args]
    proc = run(cfg, *args, ok=False)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert re.fullmatch(pattern.format(wwn=re.escape(wwn)) + "\n", proc.stderr), proc.stderr
    assert cfg.read_bytes() == before
    assert sorted((cfg.parent / "backup").iterdir()) == backups
    assert not (Path(tmp) / "new.img").exists()


@pytest.mark.parametrize("damage", ["corrupt", "truncated", "empty"])
def test_unreadable_saved_file_is_refused_and_kept(populated: tuple[Path, str], damage: str) -> None:
    cfg, _ = populated
    text = cfg.read_bytes()
    bad = {"corrupt": text.replace(b'"targets"', b'"targets" "'), "truncated": text[: len(text) // 2],
           "empty": b""}[damage]
    cfg.write_bytes(bad)
    for args in (["ls"], ["/backstores/ramdisk", "create", "r1", "1M"]):
        proc = run(cfg, *args, ok=False)
        assert proc.returncode == 1 and proc.stdout == ""
        assert proc.stderr.count("\n") == 1 and str(cfg) in proc.stderr
        assert ("is empty (truncated?)" if damage == "empty" else "is not valid JSON") in proc.stderr
        assert cfg.read_bytes() == bad
    # restoring a good copy is the way out
    good = cfg.parent / "good.json"
    good.write_bytes(text)
    assert run(cfg, "restoreconfig", str(good), "clear_existing=true").returncode == 0
    assert cfg.read_bytes() == text


def test_global_config_option_and_env(tmp_path: Path) -> None:
    env = dict(os.environ, VHOSTSCSI_CONFIG=str(tmp_path / "env.json"), HOME=str(tmp_path))
    subprocess.run([sys.executable, "-m", "vhostscsi", "/backstores/ramdisk", "create", "r0", "1M"],
                   check=True, env=env, capture_output=True)
    assert json.loads((tmp_path / "env.json").read_text())["storage_objects"][0]["name"] == "r0"
    proc = subprocess.run([sys.executable, "-m", "vhostscsi", "--bogus", "ls"], env=env,
                          capture_output=True, text=True)
    assert (proc.returncode, proc.stderr) == (2, "vhostscsi: unknown option --bogus (try --help)\n")


def test_concurrent_sessions_wait_for_each_other(tmp_path: Path) -> None:
    import fcntl

    cfg = tmp_path / "saveconfig.json"
    run(cfg, "/backstores/ramdisk", "create", "r0", "1M")
    with open(tmp_path / ".saveconfig.json.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another session is open
        proc = subprocess.Popen(
            [sys.executable, "-m", "vhostscsi", "--config", str(cfg), "/backstores/ramdisk", "create", "r1", "1M"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        time.sleep(1.5)
        assert proc.poll() is None  # it waits instead of racing the other session
    out, err = proc.communicate(timeout=30)
    assert err == f"vhostscsi: waiting for another vhostscsi session using {cfg} to end\n"
    assert out == "Created ramdisk r1 with size 1M.\n"
    assert [so["name"] for so in json.loads(cfg.read_text())["storage_objects"]] == ["r0", "r1"]

"""`vhostscsi demo`: the whole user engine in one command, on a real Linux guest.

What an admin would do by hand, in order, each step printed as the command it stands for: create a fileio
backstore and a vhost target exporting it (only if the configuration does not have them yet), start
`vhostscsi serve`, boot a small Linux guest under QEMU against the target's socket, show what the guest sees
(its dmesg lines and `lsscsi -g`), then power the guest off and stop the daemon cleanly (SIGTERM, exit 0).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from vhostscsi.config.model import Config
from vhostscsi.config.store import ConfigError, load_config
from vhostscsi.engines.user.paths import socket_path

DISK = "/backstores/fileio/disk0"
MARK = "DEMO-GUEST"
# Runs inside the guest after its modules are loaded; prints the two screens of the seed.
GUEST_SCRIPT = f"""
i=0; while [ ! -b /dev/sda ] && [ $i -lt 300 ]; do i=$((i+1)); sleep 0.1; done
echo "{MARK}-BEGIN"
echo '# lsscsi -g'
/usr/bin/lsscsi -g
echo "# dmesg | grep -E 'scsi host|0:0:'"
dmesg | grep -E 'scsi host|0:0:'
echo "{MARK}-END"
"""


class DemoError(Exception):
    """A step failed; the message says which and why, in one line."""


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="vhostscsi demo", description=__doc__.splitlines()[0])
    p.add_argument("--workdir", type=Path, default=None,
                   help="where the demo keeps its disk image, sockets and logs (default: ~/.cache/vhostscsi/demo)")
    p.add_argument("--config", type=Path, default=None,
                   help="configuration to use (default: <workdir>/saveconfig.json, not your real one)")
    p.add_argument("--size", default="64M", help="size of the disk image created for disk0 (default 64M)")
    p.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for the guest (default 180)")
    return p.parse_args(argv)


def default_workdir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vhostscsi" / "demo"


def say(line: str = "") -> None:
    print(line, flush=True)


def vhostscsi(config: Path, *args: str) -> str:
    """Run one shell command exactly as the admin would type it, and echo it with its output."""
    shown = ["vhostscsi", "--config", str(config), *args]
    say("$ " + shlex.join(shown))
    proc = subprocess.run([sys.executable, "-m", "vhostscsi", "--config", str(config), *args],
                          capture_output=True, text=True, timeout=120)
    out = (proc.stdout + proc.stderr).rstrip()
    if out:
        say(out)
    if proc.returncode != 0:
        raise DemoError(f"`{shlex.join(shown)}` failed: {out.splitlines()[-1] if out else proc.returncode}")
    return out


def target_exporting(cfg: Config, so_path: str) -> str | None:
    for target in cfg.vhost_targets():
        for tpg in target.tpgs:
            if any(lun.storage_object == so_path for lun in tpg.luns):
                return target.wwn
    return None


def ensure_config(config: Path, workdir: Path, size: str) -> str:
    """disk0 and a vhost target with it as a LUN, created only if missing; returns the target's WWN."""
    try:
        cfg = load_config(config)
    except ConfigError as e:
        raise DemoError(str(e)) from None
    if cfg.find_storage_object(DISK) is None:
        vhostscsi(config, "/backstores/fileio", "create", "name=disk0",
                  f"file_or_dev={workdir / 'disk0.img'}", f"size={size}")
        cfg = load_config(config)
    wwn = target_exporting(cfg, DISK)
    if wwn is None:
        target = next(iter(cfg.vhost_targets()), None)
        if target is None:
            out = vhostscsi(config, "/vhost", "create")
            m = re.search(r"Created target (naa\.[0-9a-fA-F]+)", out)
            if m is None:
                raise DemoError(f"could not tell which target `/vhost create` made: {out!r}")
            wwn = m.group(1)
        else:
            wwn = target.wwn
        vhostscsi(config, f"/vhost/{wwn}/tpg1/luns", "create", DISK)
    else:
        say(f"(using {DISK} and target {wwn} from {config})")
    return wwn


def start_daemon(config: Path, sockdir: Path, log_path: Path, sock: Path) -> subprocess.Popen[bytes]:
    """`vhostscsi serve` in the background, logging to `log_path`, once its socket `sock` is there (a guest
    started earlier would find nothing to connect to); DemoError with the log's tail if it never comes up."""
    cmd = ["vhostscsi", "serve", "--config", str(config), "--socket-dir", str(sockdir)]
    say("$ " + shlex.join(cmd) + " &")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "vhostscsi", *cmd[1:]], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while not sock.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_daemon(proc)
            raise DemoError(f"vhostscsi serve did not come up: {log_path.read_text().strip()[-500:]}")
        time.sleep(0.05)
    return proc


def stop_daemon(proc: subprocess.Popen[bytes]) -> int:
    """Stop it as an admin would (SIGTERM: drain, flush, exit 0), killing it after 30 s; its exit status
    (-9 when killed). Safe to call again."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return -9
    return proc.returncode


def qemu_args(wwn: str, sock: Path) -> list[str]:
    """What a guest of the user engine adds to QEMU's command line: shared guest RAM (the daemon maps it) and a
    vhost-user-scsi-pci on the target's socket, as `vhostscsi qemu-args --engine user` prints them."""
    from vhostscsi.integrations.qemu import memory_backend_args, parse_pci, user_device_args

    return memory_backend_args("512M") + user_device_args(wwn, sock, parse_pci(None, None))


def run_guest(wwn: str, sock: Path, workdir: Path, timeout: float) -> str:
    from vhostscsi.guestkit import VIRTIO_SCSI_MODULES, GuestError, GuestImage, GuestkitError, boot_guest

    try:
        img = GuestImage.build(extra_binaries=["/usr/bin/lsscsi"], modules=VIRTIO_SCSI_MODULES,
                               init_script=GUEST_SCRIPT)
    except GuestkitError as e:
        raise DemoError(f"cannot build the guest: {e}") from None
    args = qemu_args(wwn, sock)
    say("$ qemu-system-x86_64 -accel tcg -smp 1 -m 512 -kernel ... -initrd ... " + shlex.join(args))
    try:
        return boot_guest(img, args, timeout=timeout, workdir=workdir / "guest")
    except GuestError as e:
        raise DemoError(f"the guest failed: {e}") from None
    except GuestkitError as e:
        raise DemoError(f"cannot start QEMU: {e}") from None


def main(argv: list[str]) -> int:
    args = parse_args(argv[1:] if argv and argv[0] == "demo" else argv)
    workdir = (args.workdir or default_workdir()).absolute()
    config = (args.config or workdir / "saveconfig.json").absolute()
    sockdir = workdir / "run"
    log_path = workdir / "serve.log"
    daemon = None
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        wwn = ensure_config(config, workdir, args.size)
        sock = socket_path(sockdir, wwn)
        daemon = start_daemon(config, sockdir, log_path, sock)
        console = run_guest(wwn, sock, workdir, args.timeout)
        seen = console.split(f"{MARK}-BEGIN\n", 1)[-1].split(f"{MARK}-END", 1)[0]
        say()
        say("--- what the guest sees ---")
        say(seen.rstrip())
        rc = stop_daemon(daemon)
        say()
        say(f"--- vhostscsi serve log ({log_path}) ---")
        say(log_path.read_text().rstrip())
        if "LIO-ORG" not in seen:
            raise DemoError(f"the guest did not see the disk; its console is in {workdir / 'guest' / 'console.txt'}")
        if rc != 0:
            raise DemoError(f"vhostscsi serve exited with status {rc}")
        say()
        say(f"demo done: the guest saw target {wwn}; files are in {workdir}")
        return 0
    except DemoError as e:
        print(f"vhostscsi demo: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"vhostscsi demo: {e.strerror or e}{f': {e.filename}' if e.filename else ''}", file=sys.stderr)
        return 1
    finally:
        if daemon is not None:
            stop_daemon(daemon)

"""Real parts for the restart tests: `vhostscsi serve` processes restarted under a QEMU 10 guest running fio.

Nothing is mocked: every daemon is `python -m vhostscsi serve` (or, to prove a test can fail, the same daemon
started through `mutant_serve.py` with one piece of the restart machinery switched off), the guest is a real
Linux under QEMU 10 (TCG), and the workload is fio with crc32c verification of every block it writes.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from support.config import one_disk_config
from support.daemon import ServeProcess


HERE = Path(__file__).resolve().parent
WWN = "naa.5001405c0ffee0a9"
DISK_SIZE = 64 << 20
FIO_SIZE = 48 << 20  # fio's area; the stop flag lives past it
STOP_OFFSET = 63 << 20
STOP_FLAG = b"STOPNOW!"
FIO = "/usr/bin/fio"

# The guest runs fio in short time-based rounds (random 4-64 KiB writes, 16 in flight, each batch of 16 read back and checked
# with crc32c), printing each round's JSON, until the host raises the stop flag on the disk itself.
GUEST_SCRIPT = r"""
set -u
i=0; while [ ! -b /dev/sda ]; do i=$((i+1)); [ $i -gt 300 ] && { echo NO-DISK; exit 1; }; sleep 0.1; done
echo WORKLOAD-START
r=0
while :; do
  r=$((r+1))
  __FIO__ --name=verify$r --filename=/dev/sda --size=__SIZE__ --direct=1 --ioengine=libaio --iodepth=16 --rw=randwrite \
      --bsrange=4k-64k --verify=crc32c --verify_backlog=16 --verify_fatal=1 --randseed=$r \
      --time_based --runtime=__RUNTIME__ --eta=never --output-format=json --output=/tmp/fio.json
  rc=$?
  echo "FIO-ROUND $r rc=$rc"
  echo FIO-JSON-BEGIN; cat /tmp/fio.json; echo; echo FIO-JSON-END
  [ $rc -ne 0 ] && break
  flag=$(__DD__ if=/dev/sda bs=4096 skip=__STOPBLK__ count=1 iflag=direct 2>/dev/null | head -c 8)
  [ "$flag" = "STOPNOW!" ] && break
  [ $r -ge __MAXROUNDS__ ] && { echo TOO-MANY-ROUNDS; break; }
done
echo DMESG-BEGIN; dmesg; echo DMESG-END
echo WORKLOAD-DONE
"""

# What must never appear in the guest's kernel log during the workload.
DMESG_BAD = re.compile(r"I/O error|abort|reset|timed out|timing out|offline|Buffer I/O|blk_update_request|"
                       r"critical|DID_|hostbyte", re.I)


def guest_script(runtime: int = 4, max_rounds: int = 200) -> str:
    from vhostscsi.guestkit import GNU_DD

    return (GUEST_SCRIPT.replace("__FIO__", FIO).replace("__DD__", GNU_DD).replace("__SIZE__", str(FIO_SIZE))
            .replace("__RUNTIME__", str(runtime)).replace("__STOPBLK__", str(STOP_OFFSET // 4096))
            .replace("__MAXROUNDS__", str(max_rounds)))


def ask_guest_to_stop(disk: Path) -> None:
    """Write the flag the guest workload polls for at STOP_OFFSET of the disk: it finishes its round and stops."""
    fd = os.open(disk, os.O_WRONLY)
    try:
        os.pwrite(fd, STOP_FLAG, STOP_OFFSET)
    finally:
        os.close(fd)


def make_config(workdir: Path) -> tuple[Path, Path]:
    disk = workdir / "disk0.img"
    # write_back=False: every WRITE is synced (FUA) before it completes, so requests stay in flight long enough for
    # SIGKILLs to catch some mid-way, and what the guest was told is written is on disk.
    return one_disk_config(workdir / "saveconfig.json", disk, DISK_SIZE, wwn=WWN, write_back=False), disk


def hold_socket(workdir: Path) -> socket.socket:
    """What a systemd .socket unit does: bind and listen on the target's socket path, for every daemon to come."""
    sockdir = workdir / "run"
    sockdir.mkdir(mode=0o700, exist_ok=True)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(sockdir / f"{WWN}.sock"))
    s.listen(16)
    return s


class Serve(ServeProcess):
    """One `vhostscsi serve` process (the n-th) with its own log file serve-NNN.log; `listen`: started with that
    socket (LISTEN_FDS); VHOSTSCSI_RESTART_MUTANT set: through mutant_serve.py."""

    def __init__(self, workdir: Path, config: Path, n: int, *, listen: socket.socket | None = None) -> None:
        mutant = os.environ.get("VHOSTSCSI_RESTART_MUTANT")
        super().__init__(workdir, config, wwn=WWN, log_path=workdir / f"serve-{n:03d}.log",
                         wrapper=HERE / "mutant_serve.py" if mutant else None, listen=listen)

    def stop_as(self, how: str) -> int:
        """"term": SIGTERM; "kill": SIGKILL now; "busy-kill": SIGKILL the moment it is seen running (state R or D:
        most likely in the middle of a batch, with requests taken from the ring and not completed)."""
        if how == "busy-kill":  # "handshake-kill" is a kill at a random moment here
            deadline = time.monotonic() + 3.0
            while time.monotonic() < deadline and self.state() not in ("R", "D"):
                time.sleep(0)
        return self.stop(signal.SIGTERM if how == "term" else signal.SIGKILL, timeout=60)


def inflight_in_qemu(qemu_pid: int) -> int | None:
    """Requests marked in flight in the in-flight area QEMU holds for its back end (None: QEMU holds none).

    Read through QEMU's own fd (/proc/PID/fd), with the spec's layout: per queue a 16-byte header (desc_num at
    offset 10), then 16 bytes per descriptor (inflight flag first), each queue's share rounded up to 64 bytes.
    """
    for fd in Path(f"/proc/{qemu_pid}/fd").iterdir():
        try:
            if not os.readlink(fd).startswith("/memfd:vhostscsi-inflight"):
                continue
            data = fd.read_bytes()
        except OSError:
            continue
        count = off = 0
        while off + 16 <= len(data):
            desc_num = int.from_bytes(data[off + 10 : off + 12], "little")
            if not desc_num:
                break
            count += sum(1 for k in range(desc_num) if data[off + 16 + 16 * k])
            off += (16 + 16 * desc_num + 63) // 64 * 64
        return count
    return None


@dataclass
class FioRound:
    number: int
    rc: int
    error: int
    reads: int
    writes: int
    max_lat_ms: float


@dataclass
class Report:
    seed: int
    mode: str
    restarts: dict[str, int] = field(default_factory=lambda: {"term": 0, "kill": 0, "busy-kill": 0,
                                                              "handshake-kill": 0})
    resubmitted: int = 0  # requests the new daemons found in flight and ran again
    inflight_at_kill: list[int] = field(default_factory=list)  # per SIGKILL, read from QEMU's in-flight area
    longest_gap_s: float = 0.0  # host side: signal to the new daemon's first connection from QEMU
    rounds: list[FioRound] = field(default_factory=list)
    verify_errors: int = 0
    dmesg_bad: list[str] = field(default_factory=list)
    console_tail: str = ""

    @property
    def longest_stall_ms(self) -> float:
        return max((r.max_lat_ms for r in self.rounds), default=0.0)

    def summary(self) -> str:
        ios = sum(r.reads + r.writes for r in self.rounds)
        return (f"[{self.mode}] restarts: {self.restarts['term']} graceful (SIGTERM) + {self.restarts['kill']} SIGKILL at random "
                f"+ {self.restarts['busy-kill']} SIGKILL while busy + {self.restarts['handshake-kill']} SIGKILL "
                f"followed by a SIGKILL of the new daemon as QEMU connects "
                f"(seed {self.seed}); requests in flight at the SIGKILLs: {sum(self.inflight_at_kill)} "
                f"({sum(1 for n in self.inflight_at_kill if n)} of {len(self.inflight_at_kill)} kills caught some), "
                f"resubmitted by the new daemons: {self.resubmitted}; "
                f"fio rounds: {len(self.rounds)}, I/Os: {ios}, verify errors: {self.verify_errors}; "
                f"guest dmesg I/O errors/aborts/resets: {len(self.dmesg_bad)}; "
                f"longest I/O stall (fio max latency): {self.longest_stall_ms:.0f} ms; "
                f"longest restart gap (signal -> QEMU reconnected): {self.longest_gap_s * 1000:.0f} ms")


def parse_console(text: str, report: Report) -> None:
    for m in re.finditer(r"FIO-ROUND (\d+) rc=(\d+)\nFIO-JSON-BEGIN\n(.*?)^FIO-JSON-END$", text, re.M | re.S):
        body = m.group(3)
        try:
            job = json.loads(body[body.index("{"):])["jobs"][0]
        except (ValueError, KeyError, IndexError):
            report.rounds.append(FioRound(int(m.group(1)), int(m.group(2)), -1, 0, 0, 0.0))
            continue
        lat = max(job["read"]["lat_ns"]["max"], job["write"]["lat_ns"]["max"]) / 1e6
        report.rounds.append(FioRound(int(m.group(1)), int(m.group(2)), int(job["error"]),
                                      int(job["read"]["total_ios"]), int(job["write"]["total_ios"]), lat))
    report.verify_errors = sum(1 for r in report.rounds if r.rc or r.error) + len(
        re.findall(r"verify failed|bad (magic|header|checksum)|verify: ", text, re.I))
    dmesg = text.split("DMESG-BEGIN", 1)[-1].split("DMESG-END", 1)[0] if "DMESG-BEGIN" in text else ""
    report.dmesg_bad = [line for line in dmesg.splitlines() if DMESG_BAD.search(line)]
    report.console_tail = text[-3000:]


def restart_plan(graceful: int, kills: int, seed: int) -> list[str]:
    """Shuffled: `graceful` SIGTERMs and `kills` SIGKILLs: half while the daemon runs, a quarter followed by a kill of
    the new daemon as QEMU connects to it, the rest at a random moment."""
    plan = ["term"] * graceful + ["busy-kill"] * (kills // 2) + ["handshake-kill"] * (kills // 4)
    plan += ["kill"] * (kills - kills // 2 - kills // 4)
    random.Random(seed).shuffle(plan)
    return plan

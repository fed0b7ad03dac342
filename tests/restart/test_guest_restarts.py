"""Restarting and crashing `vhostscsi serve` under a running guest: nothing lost, nothing failed, short stalls.

A Linux guest under QEMU 10 (which reconnects: -chardev socket,...,reconnect-ms=) runs fio with crc32c
verification of everything it writes, while the host stops the daemon gracefully (SIGTERM) and kills it
(SIGKILL) at random moments, each time starting a new one on the same socket path. The workload must end with
no verify error, the guest's kernel log with no I/O error, abort or reset. The longest I/O stall (fio's maximum
latency) is printed. VHOSTSCSI_RESTART_SEED replays a run; VHOSTSCSI_RESTART_MUTANT breaks it (mutant_serve.py).
"""

from __future__ import annotations

import os
import random
import re
import time
from pathlib import Path

import pytest
from support.guest import build_image
from restart.harness import (
    FIO,
    Report,
    Serve,
    ask_guest_to_stop,
    guest_script,
    hold_socket,
    inflight_in_qemu,
    make_config,
    parse_console,
    restart_plan,
)
from restart.qemu10 import Qemu

from vhostscsi.guestkit import GNU_DD, VIRTIO_SCSI_MODULES, shared_memory_args, start_guest

pytestmark = pytest.mark.guest

RECONNECT_MS = 200


MODES = {
    "bind": "each daemon binds the socket itself (plain `vhostscsi serve` restarts)",
    "activation": "the socket is held across restarts (socket activation, LISTEN_FDS); for a graceful restart the "
                  "new daemon is started first and the old one stopped once the new one listens",
}


def run_restarts(qemu10: Qemu, workdir: Path, graceful: int, kills: int, mode: str = "bind",
                 outage: float = 0.0) -> Report:
    """The workload under restarts; `outage`: seconds without any daemon after each SIGKILL."""
    seed = int(os.environ.get("VHOSTSCSI_RESTART_SEED", time.time_ns() % 1_000_000))
    report = Report(seed, mode)
    rng = random.Random(seed)
    img = build_image(extra_binaries=[FIO, GNU_DD], modules=VIRTIO_SCSI_MODULES, init_script=guest_script())
    config, disk = make_config(workdir)
    held = hold_socket(workdir) if mode == "activation" else None
    daemons = [Serve(workdir, config, 0, listen=held)]
    daemons[0].wait_log("listening on", 30)
    args = shared_memory_args(512) + qemu10.vhost_user_scsi(daemons[0].socket, RECONNECT_MS)
    try:
        with start_guest(img, args, workdir=workdir / "guest", qemu=qemu10.binary) as g:
            g.wait_for("WORKLOAD-START", timeout=300)
            daemons[-1].wait_log("guest driver started", 60)
            for how in restart_plan(graceful, kills, seed):
                time.sleep(rng.uniform(0.2, 2.0))  # a random moment of the workload
                old = daemons[-1]
                if held is not None and how == "term":  # hand-over: the new daemon is ready before the old stops
                    new = Serve(workdir, config, len(daemons), listen=held)
                    new.wait_log("listening on", 60)
                signalled = time.monotonic()
                rc = old.stop_as(how)
                if how == "term":
                    assert rc == 0, f"SIGTERM: exit {rc}\n{old.log()[-2000:]}"
                else:
                    n = inflight_in_qemu(g.proc.pid)
                    assert n is not None, "QEMU holds no in-flight area from the daemon (INFLIGHT_SHMFD not used)"
                    report.inflight_at_kill.append(n)
                    time.sleep(outage)
                if held is None or how != "term":
                    new = Serve(workdir, config, len(daemons), listen=held)
                daemons.append(new)
                if how == "handshake-kill":  # and the new one dies too, as QEMU connects (mid-handshake/resubmit)
                    new.wait_log(r"connected: ", 60)
                    new.stop_as("kill")
                    new = Serve(workdir, config, len(daemons), listen=held)
                    daemons.append(new)
                new.wait_log(r"connected: ", 60)
                reconnected = time.monotonic()
                report.longest_gap_s = max(report.longest_gap_s, reconnected - signalled)
                new.wait_log("guest driver started", 60)
                report.restarts[how] += 1
            time.sleep(1.0)  # some I/O on the last daemon, then ask the guest to finish its round and stop
            ask_guest_to_stop(disk)
            g.wait_for("WORKLOAD-DONE", timeout=180)
            text = g.wait(60)
            assert g.exit_code == 0, text[-2000:]
    finally:
        for d in daemons:
            d.kill()
        if held is not None:
            held.close()
    logs = [d.log() for d in daemons]
    report.resubmitted = sum(int(n) for log in logs for n in re.findall(r"resubmitting (\d+) in-flight", log))
    parse_console(text, report)
    (workdir / "report.txt").write_text(report.summary() + "\n")
    assert "reconnects: the daemon can be restarted or upgraded under this guest" in logs[0], logs[0][-2000:]
    for log in logs:
        assert "Traceback" not in log and "internal error" not in log, log[-3000:]
        if held is not None:
            assert re.search(r"listening on \S+ \(inherited\)", log), log[-2000:]
    return report


def check(report: Report, graceful: int, kills: int) -> None:
    assert report.restarts == {"term": graceful, "kill": kills - kills // 2 - kills // 4, "busy-kill": kills // 2,
                               "handshake-kill": kills // 4}
    assert report.rounds and all(r.reads and r.writes for r in report.rounds), report.console_tail
    assert report.verify_errors == 0, report.console_tail
    assert report.dmesg_bad == [], report.dmesg_bad
    if sum(report.inflight_at_kill):  # the kills that caught requests mid-way: the new daemons ran them
        assert report.resubmitted > 0
    if kills >= 10:  # ten kills while busy never all land between requests: the area must have recorded some
        assert sum(report.inflight_at_kill) > 0, report.inflight_at_kill


def restarts_verified(qemu10: Qemu, workdir: Path, mode: str, capsys: pytest.CaptureFixture[str], n: int) -> None:
    """n graceful restarts and n SIGKILLs under the fio workload; prints the figures, checks the outcome."""
    report = run_restarts(qemu10, workdir, graceful=n, kills=n, mode=mode)
    with capsys.disabled():
        print(f"\n{report.summary()}")
    check(report, n, n)


@pytest.mark.parametrize("mode", MODES)
def test_guest_io_verifies_across_a_few_restarts_and_crashes(qemu10: Qemu, tmp_path: Path, mode: str,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    restarts_verified(qemu10, tmp_path, mode, capsys, 2)


@pytest.mark.slow
def test_guest_waits_out_a_40_second_outage(qemu10: Qemu, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """No daemon for 40 s, longer than Linux's 30 s SCSI command timeout: the guest's I/O stalls and resumes, with
    no abort, reset or I/O error (virtio_scsi re-arms the timer of a command that takes too long)."""
    report = run_restarts(qemu10, tmp_path, graceful=0, kills=1, mode="activation", outage=40.0)
    with capsys.disabled():
        print(f"\n{report.summary()}")
    check(report, 0, 1)
    assert report.longest_stall_ms >= 40_000  # the guest did have I/O waiting through the whole outage


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_guest_io_verifies_across_20_restarts_and_20_crashes(qemu10: Qemu, tmp_path: Path, mode: str,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    restarts_verified(qemu10, tmp_path, mode, capsys, 20)

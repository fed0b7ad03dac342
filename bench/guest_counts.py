"""Counts, not timings: where a TCG guest's time goes with our daemon and with QEMU's built-in virtio-scsi.

    cd bench && python3 guest_counts.py                      # builtin, ours, ours, builtin (A B B A), 8 s per job
    python3 bench/guest_counts.py --sides builtin ours --rounds 1 --seconds 5 --json /tmp/c.json

Each boot runs the same fio jobs as bench/guest.py (4 KiB randread QD1 psync, randread QD16 and randwrite QD16
libaio, --direct=1; no ramp, so fio's I/O count and the counters cover the same window) and records:

- in the guest, once: every virtio device's negotiated feature bits, the SCSI host's can_queue (the request
  virtqueue's size: virtio_scsi sets it from the vring), cmd_per_lun, sg_tablesize, the disk's queue limits
  (nr_requests, scheduler, max_sectors_kb, ...), its queue_depth, and the device's MSI-X vectors;
- in the guest, around each job: /proc/interrupts (the device's vectors), /proc/stat (the vCPU's busy / idle /
  iowait split), /proc/softirqs, the disk's /sys/block/sdX/stat, and fio's own slat/clat/lat means and CPU;
- on the host, around each job (the console markers are polled every 10 ms): per thread of QEMU and of the
  daemon, CPU time and run-queue wait (schedstat), voluntary and involuntary context switches, and read/write
  system calls (/proc/<pid>/task/<tid>/io syscr/syscw). The daemon's reads are its kick-eventfd reads plus its
  preadv calls, its writes its call-eventfd writes plus its pwritev calls; QEMU's vCPU thread's writes are the
  guest's kicks turned into ioeventfd writes (TCG has no in-kernel ioeventfd: QEMU's memory core writes it).

Everything is printed per request (divided by fio's I/O count). `--sides` picks set-ups from SIDES: the
builtin device as bench/guest.py boots it ("builtin"), our daemon as shipped with the device `vhostscsi
qemu-args` prints ("ours"), and variants used to test a hypothesis (see bench/README.md, "In-guest gap"):
"ours-other" (VHOSTSCSI_SCHED=other, the daemon's scheduling before SCHED_BATCH), "ours-poll50"
(VHOSTSCSI_POLL_US=50), "ours-slice100" (normal policy, 100 us EEVDF slice), "ours-vq256" (virtqueue_size=256).
`--side-env NAME VAR=VALUE ...` defines a further side (our daemon with those environment variables, e.g.
PYTHONPATH=<a patched copy>/src for an experiment). `--pyspy JOB DIR` samples the daemon during a job; `--perf-switches JOB DIR` records why QEMU's vCPU thread
leaves the CPU during a job (sched_switch with stacks; summarise with `perf script` as bench/README.md shows);
`--perf-record JOB DIR OPTIONS` runs perf with any options on QEMU's and/or the daemon's threads (`--perf-procs`)
during a job. `--jobs` runs only some of the fio jobs; `--nice N` renices QEMU and the daemon (on a shared machine,
-10 keeps the quiet-machine regime at moderate load). `--qtrace DIR` is for the event-logging QEMU build of
bench/QEMU-TCG.md (put first on PATH): each boot's log goes to DIR, and the report at the end gives, per interrupt
QEMU's main loop raises, the race between the main loop releasing the big QEMU lock and the vCPU asking for it,
and at QD1 each request's timeline; `--qtrace-report DIR SIDE...` prints it again. Runs from a checkout with the package installed
(`pip install -e .`), needs qemu-system-x86_64 and fio; backing file and daemon in a fresh /dev/shm directory,
every process stopped by pid.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

import backends as b  # noqa: E402
import guest as g  # noqa: E402

from vhostscsi.guestkit import DEFAULT_APPEND, VIRTIO_SCSI_MODULES, GuestImage, start_guest  # noqa: E402

MARK = "VHOSTSCSI-COUNTS"
JOBS = ["randread 4k 1 psync", "randread 4k 16 libaio", "randwrite 4k 16 libaio"]

GUEST_SCRIPT = g.FIND_DISK + r"""
HOST=$(ls -d /sys/block/$DEV/device/../../../host* 2>/dev/null | head -1)
HOST=${HOST##*/}
echo 1 > /proc/sys/kernel/sched_schedstats 2>/dev/null  # sched_goidle (idle entries) is counted only with it
echo "%(mark)s-SETTINGS-BEGIN"
echo "disk $DEV $HOST"
for v in /sys/bus/virtio/devices/*; do
  echo "virtio ${v##*/} device=$(cat $v/device) features=$(cat $v/features)"
done
for a in can_queue cmd_per_lun sg_tablesize host_busy; do
  echo "scsi_host $a $(cat /sys/class/scsi_host/$HOST/$a 2>/dev/null)"
done
for a in nr_requests scheduler max_sectors_kb max_hw_sectors_kb max_segments max_segment_size rotational \
         nomerges rq_affinity add_random read_ahead_kb logical_block_size optimal_io_size write_cache io_poll; do
  echo "queue $a $(cat /sys/block/$DEV/queue/$a 2>/dev/null)"
done
for a in queue_depth queue_type; do echo "device $a $(cat /sys/block/$DEV/device/$a 2>/dev/null)"; done
echo "mq $(ls /sys/block/$DEV/mq | wc -l)"
grep -E 'virtio|CPU' /proc/interrupts
echo "%(mark)s-SETTINGS-END"
snap() {
  echo "--interrupts"; cat /proc/interrupts
  echo "--stat"; head -1 /proc/stat; grep -E '^(intr|ctxt)' /proc/stat | cut -c1-40
  echo "--softirqs"; cat /proc/softirqs
  echo "--disk"; cat /sys/block/$DEV/stat
  echo "--schedstat"; grep '^cpu0 ' /proc/schedstat
  echo "--end"
}
JOBSEL=$(sed -n 's/.*benchjobs=\([^ ]*\).*/\1/p' /proc/cmdline | tr , ' ')
for spec in ${JOBSEL:-%(jobs)s}; do
  set -- $(echo $spec | tr _ ' ')
  echo "%(mark)s-BEGIN $1-$2-qd$3"
  snap
  /usr/bin/fio --name=g --filename=/dev/$DEV --direct=1 --rw=$1 --bs=$2 --iodepth=$3 --ioengine=$4 \
      --time_based --runtime=${SECS}s --norandommap --randrepeat=0 --output-format=json > /tmp/fio.json
  echo "%(mark)s-AFTER"
  snap
  cat /tmp/fio.json
  echo "%(mark)s-END"
done
""" % {"mark": MARK, "jobs": " ".join(j.replace(" ", "_") for j in JOBS)}


def image() -> GuestImage:
    return GuestImage.build(extra_binaries=["/usr/bin/fio"], modules=VIRTIO_SCSI_MODULES, init_script=GUEST_SCRIPT)


# ---- host side: per-thread counters -------------------------------------------------------------------------
def threads(pid: int) -> dict[str, dict[str, int]]:
    """Per thread of `pid`, keyed 'comm/tid': run ns, run-queue wait ns, voluntary/involuntary switches, syscr/syscw."""
    out: dict[str, dict[str, int]] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        base = f"/proc/{pid}/task/{tid}"
        try:
            comm = Path(f"{base}/comm").read_text().strip()
            run, wait, _ = (int(x) for x in Path(f"{base}/schedstat").read_text().split())
            st = dict(line.split(":", 1) for line in Path(f"{base}/status").read_text().splitlines() if ":" in line)
            io = dict(line.split(": ", 1) for line in Path(f"{base}/io").read_text().splitlines())
            stat = Path(f"{base}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, ValueError):
            continue
        out[f"{comm}/{tid}"] = {"run_ns": run, "wait_ns": wait,
                                "vcsw": int(st["voluntary_ctxt_switches"]), "ivcsw": int(st["nonvoluntary_ctxt_switches"]),
                                "syscr": int(io["syscr"]), "syscw": int(io["syscw"]),
                                "utime_ticks": int(stat[11]), "stime_ticks": int(stat[12])}
    return out


_JIT_KEYS = ("TB count", "TB flush count", "TB invalidate count", "TLB full flushes", "TLB partial flushes",
             "TLB elided flushes")


def jit(qmp: Any) -> dict[str, int]:
    """TCG's own counters (HMP `info jit`): translated blocks, TB flushes and invalidations, TLB flushes."""
    if qmp is None:
        return {}
    try:
        text = qmp.hmp("info jit")
    except Exception:  # noqa: BLE001 - a counter we cannot read is left out, never fatal
        return {}
    out = {}
    for key in _JIT_KEYS:
        m = re.search(rf"^{re.escape(key)}\s+(\d+)", text, re.M)
        if m:
            out[key] = int(m.group(1))
    return out


def host_cpu() -> list[int]:
    return [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]


def thread_role(name: str) -> str:
    comm = name.split("/")[0]
    if "TCG" in comm or comm.startswith("CPU "):
        return "vcpu"
    if comm.startswith("qemu-system") or comm.startswith("qemu"):
        return "main"
    if comm == "worker":
        return "workers"
    return comm.replace(" ", "_")


def host_delta(before: dict[str, dict[str, dict[str, int]]], after: dict[str, dict[str, dict[str, int]]]) -> dict[str, dict[str, int]]:
    """Per process and role (QEMU: vcpu, main, workers, ...; daemon: daemon), the sum over its threads of after - before."""
    out: dict[str, dict[str, int]] = {}
    for proc, ts in after.items():
        for name, a in ts.items():
            bb = before.get(proc, {}).get(name, {k: 0 for k in a})
            role = proc if proc in ("daemon", "self") else f"qemu.{thread_role(name)}"
            acc = out.setdefault(role, {k: 0 for k in a})
            for k in a:
                acc[k] += a[k] - bb.get(k, 0)
    return out


# ---- guest side: parse the snapshots --------------------------------------------------------------------------
def _snap(text: str) -> dict[str, Any]:
    parts = dict(re.findall(r"--(\w+)\n(.*?)(?=\n--\w+\n|\Z)", text, re.S))
    irq: dict[str, int] = {}
    for line in parts.get("interrupts", "").splitlines()[1:]:
        f = line.split()
        if len(f) >= 2 and f[1].isdigit():
            label = f[0].rstrip(":") + (" " + f[-1] if not f[0].rstrip(":").isalpha() else "")
            irq[label] = int(f[1])
    stat = parts.get("stat", "").splitlines()
    cpu = [int(x) for x in stat[0].split()[1:]] if stat else []
    misc = {ln.split()[0]: int(ln.split()[1]) for ln in stat[1:] if len(ln.split()) > 1}
    soft = {}
    for line in parts.get("softirqs", "").splitlines()[1:]:
        f = line.split()
        if len(f) >= 2:
            soft[f[0].rstrip(":")] = int(f[1])
    disk = [int(x) for x in parts.get("disk", "").split()]
    # /proc/schedstat cpu line: yld_count, 0, sched_count, sched_goidle (times the CPU went idle), ttwu_count, ...
    ss = parts.get("schedstat", "").split()
    sched = {"goidle": int(ss[4]), "sched_count": int(ss[3])} if len(ss) > 4 else {}
    return {"irq": irq, "cpu": cpu, "misc": misc, "softirqs": soft, "disk": disk, "sched": sched}


def _guest_delta(a: dict[str, Any], b_: dict[str, Any]) -> dict[str, Any]:
    irq = {k: b_["irq"][k] - a["irq"].get(k, 0) for k in b_["irq"] if b_["irq"][k] - a["irq"].get(k, 0)}
    names = ["user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"]
    cpu = dict(zip(names, (y - x for x, y in zip(a["cpu"], b_["cpu"]))))
    total = sum(cpu.values()) or 1
    soft = {k: b_["softirqs"][k] - a["softirqs"].get(k, 0) for k in b_["softirqs"]
            if b_["softirqs"][k] - a["softirqs"].get(k, 0)}
    # /sys/block/X/stat: reads, read merges, sectors, ticks, writes, write merges, sectors, ticks, in_flight, io_ticks, time_in_queue
    d = [y - x for x, y in zip(a["disk"], b_["disk"])]
    return {"irq": irq, "cpu_pct": {k: round(100 * v / total, 1) for k, v in cpu.items()},
            "guest_ctxt": b_["misc"].get("ctxt", 0) - a["misc"].get("ctxt", 0),
            "guest_intr": b_["misc"].get("intr", 0) - a["misc"].get("intr", 0),
            "softirqs": soft, "disk_ios": (d[0] + d[4]) if len(d) > 4 else 0,
            "goidle": b_["sched"].get("goidle", 0) - a["sched"].get("goidle", 0),
            "disk_merges": (d[1] + d[5]) if len(d) > 5 else 0}


def _fio(text: str) -> dict[str, Any]:
    job = json.loads(text[text.find("{"):text.rfind("}") + 1])["jobs"][0]
    side = job["write"] if job["write"]["total_ios"] else job["read"]
    mean = lambda k: round(side.get(k, {}).get("mean", 0) / 1000, 1)  # noqa: E731
    return {"ios": side["total_ios"], "iops": round(side["iops"], 1), "slat_us": mean("slat_ns"),
            "clat_us": mean("clat_ns"), "lat_us": mean("lat_ns"), "usr_cpu": round(job["usr_cpu"], 1),
            "sys_cpu": round(job["sys_cpu"], 1), "fio_ctx": job["ctx"]}


# ---- the set-ups compared ---------------------------------------------------------------------------------------
def set_slice(pid: int, us: int) -> None:
    """Ask the scheduler (EEVDF, Linux 6.12+) for a ``us``-microsecond slice for every thread of ``pid``
    (sched_setattr, SCHED_OTHER, sched_runtime; the kernel clamps it to 100 us .. 100 ms)."""
    import ctypes
    import struct

    libc = ctypes.CDLL(None, use_errno=True)
    attr = struct.pack("=IIQiIQQQII", 56, 0, 0, 0, 0, us * 1000, 0, 0, 0, 0)
    buf = ctypes.create_string_buffer(attr, len(attr))
    for tid in os.listdir(f"/proc/{pid}/task"):
        if libc.syscall(314, int(tid), buf, 0) != 0:  # SYS_sched_setattr on x86_64
            raise OSError(ctypes.get_errno(), f"sched_setattr({tid})")


def _ours(extra_device: str = "", poll_us: float | None = None, slice_us: int | None = None,
          sched: str | None = None, env: dict[str, str] | None = None) -> dict[str, Any]:
    return {"kind": "ours", "extra_device": extra_device, "poll_us": poll_us, "slice_us": slice_us, "sched": sched,
            "env": dict(env or {})}


SIDES: dict[str, dict[str, Any]] = {
    "builtin": {"kind": "builtin"},
    "ours": _ours(),  # `vhostscsi serve` as shipped (SCHED_BATCH since the in-guest gap was found)
    "ours-other": _ours(sched="other"),  # VHOSTSCSI_SCHED=other: the normal policy, the daemon before that fix
    "ours-poll50": _ours(poll_us=50),
    "ours-slice100": _ours(sched="other", slice_us=100),  # normal policy, a 100 us EEVDF slice (set from outside)
    "ours-vq256": _ours(extra_device=",virtqueue_size=256"),
}


QTRACE: Path | None = None  # --qtrace: QEMU built with bench/QEMU-TCG.md's event log records into this directory
PERF_PROCS = ("qemu", "daemon")  # --perf-procs: whose threads --perf-record traces
NICE: int | None = None  # --nice: every thread of QEMU and of the daemon gets this nice value once both are up
JOB_SELECTION = ""  # --jobs: the guest runs only these (benchjobs= on its command line), in JOBS' spelling


def boot(side: str, img: GuestImage, image_file: Path, work: Path, seconds: int, sockdir: Path, size: int,
         say: Callable[[str], None], pyspy: tuple[str, int, Path] | None = None,
         perf_sw: tuple[str, int, Path] | None = None,
         perf_rec: tuple[str, int, Path, list[str]] | None = None) -> dict[str, Any]:
    """One boot of ``side``; ``pyspy``: (job name part, seconds, directory) to sample the daemon during that job;
    ``perf_sw``: the same to record the vCPU thread's context switches with their stacks; ``perf_rec``: the same
    plus perf record options, recorded on every thread of QEMU and of the daemon."""
    spec = SIDES[side]
    spy = None
    tracers: list[subprocess.Popen[bytes]] = []
    daemon = None
    procs: dict[str, int] = {}
    try:
        if spec["kind"] == "ours":
            env = {**({"VHOSTSCSI_SCHED": spec["sched"]} if spec["sched"] else {}), **spec["env"]}
            saved = {k: os.environ.get(k) for k in env}
            os.environ.update(env)  # the daemon inherits our environment
            try:
                daemon = b.OurDaemon(work, image_file, size, sockdir, poll_us=spec["poll_us"])
            finally:
                for k, v in saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
            args = g.ours_args(b.WWN, daemon.socket, spec["extra_device"])
            lun = b.FILEIO_LUN
            procs["daemon"] = daemon.pid
            if spec["slice_us"]:
                set_slice(daemon.pid, spec["slice_us"])
            out_policy = os.sched_getscheduler(daemon.pid)
        else:
            args = g.builtin_args(image_file)
            lun = 0
        wd = work / f"counts-{side}"
        args = [*args, "-name", f"counts-{side},debug-threads=on"]  # thread names: CPU 0/TCG, worker, ...
        qtrace_file = None
        if QTRACE is not None:  # the instrumented QEMU's log (QTRACE_FILE, written when QEMU exits) and our markers
            n = len(list(QTRACE.glob(f"{side}-*.qtrace")))
            qtrace_file = QTRACE / f"{side}-{n + 1}.qtrace"
            os.environ["QTRACE_FILE"] = str(qtrace_file)
        try:
            gst = start_guest(img, args, workdir=wd, append=f"{DEFAULT_APPEND} benchlun={lun} benchsecs={seconds}"
                                                                 + (f" benchjobs={JOB_SELECTION}" if JOB_SELECTION else ""))
        finally:
            os.environ.pop("QTRACE_FILE", None)
        procs["qemu"] = gst.proc.pid
        if NICE is not None:  # threads started later (QEMU's workers) inherit it from the thread that starts them
            for pid in procs.values():
                for tid in os.listdir(f"/proc/{pid}/task"):
                    os.setpriority(os.PRIO_PROCESS, int(tid), NICE)
        snaps: dict[str, tuple[Any, ...]] = {}
        deadline = time.monotonic() + 120 + 6 * seconds * len(JOBS)
        seen = 0
        qmp = None
        with gst:
            while True:
                if qmp is None and gst.qmp_path.exists():
                    try:
                        qmp = gst.qmp()
                    except OSError:
                        qmp = None
                text = gst.console()
                marks = re.findall(rf"{MARK}-(BEGIN \S+|AFTER)\n", text)
                while seen < len(marks):  # a marker just appeared: snapshot the host now
                    if perf_sw and marks[seen].startswith("BEGIN") and perf_sw[0] in marks[seen]:
                        for tid in os.listdir(f"/proc/{procs['qemu']}/task"):
                            if thread_role(Path(f"/proc/{procs['qemu']}/task/{tid}/comm").read_text().strip()) != "vcpu":
                                continue
                            # why the vCPU thread leaves the CPU: its switch-outs with kernel + user stacks
                            out_file = perf_sw[2] / f"{side}-{marks[seen].split()[1]}-vcpu.perf.data"
                            tracers.append(subprocess.Popen(
                                ["perf", "record", "-q", "-e", "sched:sched_switch", "--call-graph", "dwarf,16384",
                                 "-t", tid, "-o", str(out_file), "--", "sleep", str(perf_sw[1])],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
                    if perf_rec and marks[seen].startswith("BEGIN") and perf_rec[0] in marks[seen]:
                        pids = ",".join(str(procs[p]) for p in PERF_PROCS if p in procs)
                        out_file = perf_rec[2] / f"{side}-{marks[seen].split()[1]}.perf.data"
                        tracers.append(subprocess.Popen(
                            ["perf", "record", "-q", *perf_rec[3], "-p", pids, "-o", str(out_file),
                             "--", "sleep", str(perf_rec[1])], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
                    if pyspy and "daemon" in procs and marks[seen].startswith("BEGIN") and pyspy[0] in marks[seen]:
                        spy = subprocess.Popen(["py-spy", "record", "-p", str(procs["daemon"]), "-d", str(pyspy[1]),
                                                "-r", "1000", "--nonblocking", "-f", "raw",
                                                "-o", str(pyspy[2] / f"{side}-{marks[seen].split()[1]}.pyspy.txt")],
                                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    if qtrace_file is not None:
                        with open(f"{qtrace_file}.marks", "a") as mf:
                            mf.write(f"{time.monotonic_ns()} {marks[seen]}\n")
                    snaps[f"{seen}"] = ({**{p: threads(pid) for p, pid in procs.items()}, "self": threads(os.getpid())},
                                        host_cpu(), time.monotonic(), jit(qmp))
                    seen += 1
                if gst.proc.poll() is not None or time.monotonic() > deadline:
                    break
                time.sleep(0.01)
            if qmp is not None:
                qmp.close()
            text = gst.wait(10)
        if gst.proc.returncode not in (0, None) or f"{MARK}-SETTINGS-END" not in text:
            raise RuntimeError(f"{side}: guest failed:\n{text[-3000:]}")
        settings = text.split(f"{MARK}-SETTINGS-BEGIN\n", 1)[1].split(f"{MARK}-SETTINGS-END", 1)[0]
        out: dict[str, Any] = {"settings": settings.strip().splitlines(), "jobs": {}}
        if daemon is not None:
            out["daemon_policy"] = out_policy
        for i, (name, body) in enumerate(re.findall(rf"{MARK}-BEGIN (\S+)\n(.*?){MARK}-END", text, re.S)):
            pre, post = body.split(f"{MARK}-AFTER\n", 1)
            post_snap, fio_text = post.split("--end\n", 1)
            fio = _fio(fio_text)
            gd = _guest_delta(_snap(pre), _snap(post_snap + "--end\n"))
            h0, c0, t0, j0 = snaps[str(2 * i)]
            h1, c1, t1, j1 = snaps[str(2 * i + 1)]
            hd = host_delta(h0, h1)
            hc = [y - x for x, y in zip(c0, c1)]
            tot = sum(hc) or 1
            out["jobs"][name] = {"fio": fio, "guest": gd, "host": hd, "host_wall_s": round(t1 - t0, 3),
                                 "jit": {k: j1[k] - j0.get(k, 0) for k in j1},
                                 "host_idle_pct": round(100 * (hc[3] + hc[4]) / tot, 1),
                                 "host_steal_pct": round(100 * hc[7] / tot, 1) if len(hc) > 7 else 0.0,
                                 "host_busy_cores": round((tot - hc[3] - hc[4] - (hc[7] if len(hc) > 7 else 0))
                                                          / tot * (os.cpu_count() or 1), 2)}
            say(f"  {side} {name}: {fio['iops']:,.0f} IOPS")
            if qtrace_file is not None:
                with open(f"{qtrace_file}.marks", "a") as mf:
                    mf.write(f"0 IOS {name} {fio['ios']}\n")
        return out
    finally:
        if spy is not None:
            spy.wait(60)
        for t in tracers:
            t.wait(60)
        if daemon is not None:
            daemon.stop()


# ---- the instrumented QEMU's event log (--qtrace; bench/QEMU-TCG.md) ----------------------------------------
# Records of 24 bytes: CLOCK_MONOTONIC ns, thread id, event, argument. Event numbers as the patch defines them.
QT_MAIN_UNLOCK, QT_MAIN_POLLED, QT_MAIN_LOCKED, QT_MSIX, QT_GUEST_NOTIFIER, QT_HOST_NOTIFIER, QT_TP_BH = range(1, 8)
QT_IRQ_LOCK, QT_IRQ_LOCKED, QT_MMIO_LOCK, QT_MMIO_LOCKED, QT_DELIVER, QT_IOEVENTFD, QT_HALT_WAIT, QT_HALT_WOKE = range(8, 16)
QT_CPU_INTERRUPT = 18
QT_DISPATCHED, QT_FILL, QT_TIMERS_DONE = 20, 21, 22  # glib dispatch done, glib_pollfds_fill starts, timers run


def qtrace_events(path: Path, job: str) -> tuple[dict[tuple[int, int], list[int]], int, int, float, int]:
    """The log's events during ``job``, per (thread role, event): sorted times in ns; roles 0 main loop,
    1 vCPU. Returns (times, kick register offset, fio I/Os, seconds, events)."""
    import struct

    marks = [line.split() for line in Path(f"{path}.marks").read_text().splitlines()]
    t0 = t1 = 0
    ios = 0
    for i, m in enumerate(marks):
        if m[1] == "BEGIN" and m[2] == job:
            t0, t1 = int(m[0]), int(marks[i + 1][0])
        if m[1] == "IOS" and m[2] == job:
            ios = int(m[3])
    if not t1:
        raise LookupError(f"{path}: no job {job}")
    raw = [r for r in struct.iter_unpack("<QIHHII", Path(path).read_bytes()) if t0 <= r[0] <= t1]
    main = max(set(r[1] for r in raw if r[2] == QT_MAIN_UNLOCK), key=lambda t: sum(1 for r in raw if r[1] == t and r[2] == QT_MAIN_UNLOCK))
    vcpu = max(set(r[1] for r in raw if r[2] == QT_IRQ_LOCK), key=lambda t: sum(1 for r in raw if r[1] == t and r[2] == QT_IRQ_LOCK))
    kick_counts: dict[int, int] = {}
    for r in raw:
        if r[2] == QT_IOEVENTFD and r[1] == vcpu:
            kick_counts[r[4]] = kick_counts.get(r[4], 0) + 1
    kick = max(kick_counts, key=kick_counts.__getitem__) if kick_counts else -1
    out: dict[tuple[int, int], list[int]] = {}
    for t, tid, ev, _, arg, _ in raw:
        role = 0 if tid == main else 1 if tid == vcpu else 2
        if ev == QT_IOEVENTFD and arg != kick:
            continue
        out.setdefault((role, ev), []).append(t)
    for v in out.values():
        v.sort()
    return out, kick, ios, (t1 - t0) / 1e9, len(raw)


def qtrace_report(path: Path, job: str) -> dict[str, float]:
    """Per fio request: the vCPU's waits for the big QEMU lock and, per MSI-X interrupt the main loop raises, the
    race between the main loop letting go of the lock and the vCPU asking for it; at QD1 the request's timeline."""
    from bisect import bisect_left, bisect_right

    ev, kick, ios, secs, n = qtrace_events(path, job)
    n_io = ios or 1

    def get(role: int, e: int) -> list[int]:
        return ev.get((role, e), [])

    def after(arr: list[int], t: int) -> int | None:
        j = bisect_right(arr, t)
        return arr[j] if j < len(arr) else None

    def before(arr: list[int], t: int) -> int | None:
        j = bisect_left(arr, t) - 1
        return arr[j] if j >= 0 else None

    def med(xs: list[float]) -> float:
        xs = sorted(xs)
        return round(xs[len(xs) // 2] / 1e3, 2) if xs else 0.0

    out: dict[str, float] = {"fio I/Os": ios, "events": n}
    for ask, got, name in ((QT_IRQ_LOCK, QT_IRQ_LOCKED, "interrupt check"), (QT_MMIO_LOCK, QT_MMIO_LOCKED, "MMIO"),
                           (QT_HALT_WAIT, QT_HALT_WOKE, "halted (idle, wake-up, BQL)")):
        a, g = get(1, ask), get(1, got)
        waits = [y - x for x, y in zip(a, g)]
        out[f"vCPU BQL takes: {name} /IO"] = round(len(a) / n_io, 3)
        out[f"vCPU waits: {name} us/IO"] = round(sum(waits) / 1e3 / n_io, 2)
        out[f"vCPU waits > 3 us: {name} /IO"] = round(sum(1 for w in waits if w > 3000) / n_io, 3)
    unlock, polled, ci = get(0, QT_MAIN_UNLOCK), get(0, QT_MAIN_POLLED), get(0, QT_CPU_INTERRUPT)
    ilock, ilocked, deliver = get(1, QT_IRQ_LOCK), get(1, QT_IRQ_LOCKED), get(1, QT_DELIVER)
    msix = get(0, QT_MSIX)
    slept, post, react, lost, slept_lost, lost_wait = [], [], [], 0, 0, []
    for t in msix:
        u, p, c = after(unlock, t), before(polled, t), after(ci, t)
        pu = before(unlock, p) if p is not None else None
        lk = after(ilock, c) if c is not None else None
        if None in (u, p, pu, c, lk):
            continue
        slept.append(p - pu)
        post.append(u - c)
        react.append(lk - c)
        if lk < u:
            lost += 1
            w = (after(ilocked, lk) or lk) - lk
            if w > 3000:
                slept_lost += 1
                lost_wait.append(w)
    m = len(post) or 1
    # the path from cpu_interrupt to the unlock, in pieces, by whether the main loop had slept >= 20 us before
    disp, timers, fill = get(0, QT_DISPATCHED), get(0, QT_TIMERS_DONE), get(0, QT_FILL)
    pieces: dict[str, list[int]] = {}
    for c in ci if disp else []:
        d = after(disp, c)
        tt = after(timers, d) if d is not None else None
        f = after(fill, tt) if tt is not None else None
        u, p = after(unlock, c), before(polled, c)
        pu = before(unlock, p) if p is not None else None
        if None in (d, tt, f, u, p, pu) or not c < d < tt < f < u:
            continue
        how = "slept" if p - pu >= 20000 else "back-to-back"
        for name, v in (("1 cpu_interrupt -> glib dispatch done", d - c), ("2 -> timers run", tt - d),
                        ("3 -> glib_pollfds_fill starts", f - tt), ("4 -> unlock (prepare, query)", u - f),
                        ("5 cpu_interrupt -> unlock", u - c)):
            pieces.setdefault(f"main loop {how}: {name} us p50", []).append(v)
        pieces.setdefault(f"main loop {how}: iterations", []).append(1)
    for key, v in sorted(pieces.items()):
        out[key] = len(v) if key.endswith("iterations") else med(v)
    out.update({
        "MSI-X raised /IO": round(len(msix) / n_io, 3),
        "main loop slept before the interrupt's iteration us p50": med(slept),
        "cpu_interrupt -> main loop unlocks us p50": med(post),
        "cpu_interrupt -> vCPU asks for the BQL us p50": med(react),
        "vCPU asked first %": round(100 * lost / m, 1),
        "vCPU slept for the BQL %": round(100 * slept_lost / m, 1),
        "those sleeps us p50": med(lost_wait),
    })
    kicks = get(1, QT_IOEVENTFD)
    halts = get(1, QT_HALT_WAIT)
    seg: dict[str, list[int]] = {}
    halted = 0
    for k, k2 in zip(kicks, kicks[1:]):
        mm = after(msix, k)
        if mm is None or mm > k2:
            continue
        p = before(polled, mm)
        d = after(deliver, mm)
        if p is None or d is None or d > k2:
            continue
        h = after(halts, k)
        if h is not None and h < mm:
            halted += 1
        for key, v in (("kick -> main loop back from ppoll with the completion", p - k),
                       ("ppoll return -> msix_notify", mm - p),
                       ("msix_notify -> main loop unlocks", (after(unlock, mm) or mm) - mm),
                       ("msix_notify -> interrupt enters the guest", d - mm),
                       ("interrupt -> next kick (guest)", k2 - d), ("kick -> next kick", k2 - k)):
            seg.setdefault(key, []).append(v)
    nseg = len(seg.get("kick -> next kick", [])) or 1
    if job.endswith("qd1"):
        out["QD1 requests with one interrupt"] = nseg
        out["QD1 vCPU halted before the completion %"] = round(100 * halted / nseg, 1)
        for key, v in seg.items():
            out[f"QD1 {key} us mean"] = round(sum(v) / len(v) / 1e3, 1)
    return out


def per_request(job: dict[str, Any]) -> dict[str, float]:
    """The counters of one job divided by fio's I/O count (and a few shares)."""
    n = job["fio"]["ios"] or 1
    gd, hd = job["guest"], job["host"]
    req_irq = sum(v for k, v in gd["irq"].items() if "virtio" in k and ("request" in k or "req" in k))
    out: dict[str, float] = {
        "iops": job["fio"]["iops"],
        "guest busy %": round(100 - gd["cpu_pct"]["idle"] - gd["cpu_pct"]["iowait"], 1),
        "guest idle+iowait %": round(gd["cpu_pct"]["idle"] + gd["cpu_pct"]["iowait"], 1),
        "guest irq+softirq %": round(gd["cpu_pct"]["irq"] + gd["cpu_pct"]["softirq"], 1),
        "req-queue irqs/IO": round(req_irq / n, 3),
        "all guest irqs/IO": round(gd["guest_intr"] / n, 3),
        "guest ctxt/IO": round(gd["guest_ctxt"] / n, 3),
        "guest idle entries/IO": round(gd.get("goidle", 0) / n, 3),
        "disk ios/fio IO": round(gd["disk_ios"] / n, 3),
        "slat us": job["fio"]["slat_us"], "clat us": job["fio"]["clat_us"], "lat us": job["fio"]["lat_us"],
        "host idle %": job["host_idle_pct"],
        "host steal %": job.get("host_steal_pct", 0.0),
        "host busy cores": job.get("host_busy_cores", 0.0),
    }
    for k, v in job.get("jit", {}).items():
        out[f"tcg {k}/IO"] = round(v / n, 4)
    for role, c in sorted(hd.items()):
        if not any(c.values()):
            continue
        out[f"{role} cpu us/IO"] = round(c["run_ns"] / 1000 / n, 1)
        out[f"{role} rq-wait us/IO"] = round(c["wait_ns"] / 1000 / n, 1)
        out[f"{role} vcsw/IO"] = round(c["vcsw"] / n, 3)
        out[f"{role} ivcsw/IO"] = round(c["ivcsw"] / n, 3)
        out[f"{role} reads/IO"] = round(c["syscr"] / n, 3)
        out[f"{role} writes/IO"] = round(c["syscw"] / n, 3)
        ticks = c.get("utime_ticks", 0) + c.get("stime_ticks", 0)
        out[f"{role} sys %"] = round(100 * c.get("stime_ticks", 0) / ticks, 1) if ticks else 0.0
    return out


KEY_ROWS = ["iops", "guest busy %", "guest idle entries/IO", "req-queue irqs/IO", "slat us", "clat us", "host busy cores",
            "qemu.vcpu cpu us/IO", "qemu.vcpu rq-wait us/IO", "qemu.vcpu vcsw/IO", "qemu.vcpu ivcsw/IO",
            "qemu.vcpu writes/IO", "qemu.main cpu us/IO",
            "qemu.workers cpu us/IO", "daemon cpu us/IO", "daemon rq-wait us/IO", "daemon vcsw/IO",
            "daemon reads/IO", "daemon writes/IO", "daemon sys %", "qemu.vcpu sys %", "tcg TB count/IO"]


def print_qtrace(directory: Path, sides: list[str], jobs: list[str], say: Callable[[str], None]) -> None:
    """One column per boot: qtrace_report of every DIR/<side>-<n>.qtrace, job by job."""
    for job in jobs:
        cols = {}
        for p in (p for s in sides for p in sorted(directory.glob(f"{s}-*.qtrace"))):
            try:
                cols[p.stem] = qtrace_report(p, job)
            except LookupError:
                continue
        if not cols:
            continue
        say(f"\n== event log, {job} (per fio I/O unless said; one column per boot)")
        say(f"  {'':<72}" + "".join(f"{c:>12}" for c in cols))
        for k in dict.fromkeys(k for r in cols.values() for k in r):
            say(f"  {k:<72}" + "".join(f"{r.get(k, ''):>12}" for r in cols.values()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sides", nargs="+", default=["builtin", "ours"],
                    help=f"set-ups to compare: {', '.join(sorted(SIDES))}, or one defined by --side-env")
    ap.add_argument("--side-env", nargs="+", action="append", default=[], metavar=("NAME", "VAR=VALUE"),
                    help="define side NAME: our daemon with these environment variables (e.g. PYTHONPATH=<a patched "
                         "tree>/src to measure an experiment against the checkout)")
    ap.add_argument("--rounds", type=int, default=2, help="boots per side, alternated A B B A")
    ap.add_argument("--seconds", type=int, default=8, help="seconds per fio job")
    ap.add_argument("--size", type=int, default=256 << 20)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--pyspy", nargs=2, metavar=("JOB", "DIR"), default=None,
                    help="py-spy (raw stacks, 1000 Hz, non-blocking) the daemon for the job whose name contains JOB "
                         "(e.g. qd16) into DIR/<side>-<job>.pyspy.txt")
    ap.add_argument("--perf-switches", nargs=2, metavar=("JOB", "DIR"), default=None,
                    help="perf record the context switches of QEMU's vCPU thread (sched:sched_switch, DWARF stacks) for the job "
                         "whose name contains JOB into DIR/<side>-<job>-vcpu.perf.data (then: perf report -i ... --stdio)")
    ap.add_argument("--perf-record", nargs=3, metavar=("JOB", "DIR", "OPTIONS"), default=None,
                    help="perf record every thread of QEMU and of the daemon during the job whose name contains JOB, with "
                         "OPTIONS (one shell-quoted string, e.g. '-e sched:sched_switch,sched:sched_wakeup -k mono'), "
                         "into DIR/<side>-<job>.perf.data; bench/QEMU-TCG.md shows the uses")
    ap.add_argument("--jobs", nargs="+", default=None, metavar="JOB",
                    help="run only the fio jobs whose name (e.g. randread-4k-qd16) contains one of these (default: all)")
    ap.add_argument("--nice", type=int, default=None,
                    help="renice QEMU and the daemon (every thread) to this value, e.g. -10: on a machine where other "
                         "work runs, the guest and its back end then get the cores as on a quiet one (both sides alike)")
    ap.add_argument("--perf-procs", choices=["both", "qemu", "daemon"], default="both",
                    help="whose threads --perf-record traces (tracing the daemon's or QEMU's system calls delays "
                         "completions enough to change how the guest's requests batch at QD16: trace one side at a time)")
    ap.add_argument("--qtrace", type=Path, default=None, metavar="DIR",
                    help="QEMU is the event-logging build of bench/QEMU-TCG.md: its log of each boot goes to "
                         "DIR/<side>-<n>.qtrace, the job markers' CLOCK_MONOTONIC times to DIR/<side>-<n>.qtrace.marks")
    ap.add_argument("--qtrace-report", nargs="+", metavar=("DIR", "SIDE"), default=None,
                    help="only print the event-log report of an earlier --qtrace DIR (sides: the log files' prefixes)")
    args = ap.parse_args(argv)
    if args.qtrace_report:
        directory, *sides = args.qtrace_report
        print_qtrace(Path(directory), sides or ["builtin", "ours"],
                     [f"{j.split()[0]}-{j.split()[1]}-qd{j.split()[2]}" for j in JOBS], lambda x: print(x, flush=True))
        return 0
    global NICE, JOB_SELECTION, PERF_PROCS, QTRACE
    QTRACE = args.qtrace
    NICE = args.nice
    PERF_PROCS = ("qemu", "daemon") if args.perf_procs == "both" else (args.perf_procs,)
    if args.jobs:
        chosen = [j for j in JOBS if any(x in "{0}-{1}-qd{2}".format(*j.split()) for x in args.jobs)]
        if not chosen:
            ap.error(f"--jobs {args.jobs} matches none of {JOBS}")
        JOB_SELECTION = ",".join(j.replace(" ", "_") for j in chosen)
    for name, *assignments in args.side_env:
        SIDES[name] = _ours(env=dict(a.split("=", 1) for a in assignments))
    unknown = [s for s in args.sides if s not in SIDES]
    if unknown:
        ap.error(f"unknown side(s) {unknown}: one of {sorted(SIDES)}")

    def say(s: str) -> None:
        print(s, flush=True)

    work = Path(tempfile.mkdtemp(prefix="vhostscsi-counts-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    sockdir = Path(tempfile.mkdtemp(prefix="vsc-"))
    image_file = work / "disk0.img"
    b.make_backing_file(image_file, args.size)
    img = image()
    say(f"guest counts: sides {args.sides}, {args.rounds} rounds, {args.seconds} s per job, load {os.getloadavg()}")
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in args.sides}
    try:
        for r in range(args.rounds):
            for side in (args.sides if r % 2 == 0 else args.sides[::-1]):
                spy = (args.pyspy[0], max(1, args.seconds - 1), Path(args.pyspy[1])) if args.pyspy else None
                st = (args.perf_switches[0], max(1, args.seconds - 2), Path(args.perf_switches[1])) if args.perf_switches else None
                pr = ((args.perf_record[0], max(1, args.seconds - 2), Path(args.perf_record[1]),
                       shlex.split(args.perf_record[2])) if args.perf_record else None)
                runs[side].append(boot(side, img, image_file, work, args.seconds, sockdir, args.size, say, spy, st, pr))
    finally:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(sockdir, ignore_errors=True)
    for side in args.sides:
        say(f"\n== {side}: settings (first boot)")
        for line in runs[side][0]["settings"]:
            say(f"  {line}")
    jobs = list(runs[args.sides[0]][0]["jobs"])
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for job in jobs:
        rows = {s: [per_request(run["jobs"][job]) for run in runs[s]] for s in args.sides}
        keys = list(dict.fromkeys(k for s in args.sides for row in rows[s] for k in row))
        say(f"\n== {job} (per fio I/O; one column per boot)")
        say(f"  {'':<28}" + "".join(f"{s + ' #' + str(i + 1):>16}" for s in args.sides for i in range(len(rows[s]))))
        for k in keys:
            say(f"  {k:<28}" + "".join(f"{row.get(k, ''):>16}" for s in args.sides for row in rows[s]))
        summary[job] = {s: {k: round(sum(r.get(k, 0) for r in rows[s]) / len(rows[s]), 3) for k in keys}
                        for s in args.sides}
    say("\n== summary: mean per side (key rows; IOPS ratio to the first side)")
    for job in jobs:
        first = summary[job][args.sides[0]]["iops"] or 1
        say(f"  {job:<28}" + "".join(f"{s:>16}" for s in args.sides))
        for k in KEY_ROWS:
            if any(k in summary[job][s] for s in args.sides):
                say(f"    {k:<26}" + "".join(f"{summary[job][s].get(k, ''):>16}" for s in args.sides))
        say(f"    {'IOPS / ' + args.sides[0]:<26}" + "".join(f"{summary[job][s]['iops'] / first:>16.3f}" for s in args.sides))
    if QTRACE is not None:
        print_qtrace(QTRACE, args.sides, jobs, say)
    say(f"\nload {os.getloadavg()}")
    if args.json:
        args.json.write_text(json.dumps({"argv": sys.argv, "summary": summary, "runs": runs}, indent=1))
        say(f"written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""vhostscsi benchmark (issue 6): one command, prints a table and writes JSON.

    python3 bench/run.py                  # full run: host-side matrix + peers + in-guest fio (~6 minutes)
    python3 bench/run.py --quick          # CI: every part runs briefly (no guest), numbers meaningless
    python3 bench/run.py --profile 10     # also py-spy the daemon for 10 s under 4 KiB QD32 ramdisk reads

Host side: `vhostscsi serve` (one process) is driven through its real socket by the project's QEMU stand-in
(vhostscsi.hostdriver, one driver process per request queue) for each access pattern, on a ramdisk LUN and
a fileio LUN on tmpfs, with 1 and 2 request queues. In the same run and on the same file: the host's own
preadv/pwritev (fio pvsync), memcpy bandwidth, and qemu-storage-daemon's vhost-user-blk export driven by the
same stand-in. In a guest: fio in one TCG guest against us and against QEMU's built-in virtio-scsi.
See bench/README.md for how to read the table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import backends as b  # noqa: E402
import driver as d  # noqa: E402
from driver import Case  # noqa: E402

_MB = 1 << 20

CASES = [
    Case("randread", 4096, 1), Case("randread", 4096, 32), Case("randwrite", 4096, 1), Case("randwrite", 4096, 32),
    Case("randread", 65536, 32), Case("read", _MB, 8), Case("write", _MB, 8),
]
QUICK_CASES = [Case("randread", 4096, 32), Case("randwrite", 4096, 1), Case("read", _MB, 8)]

BARS = {
    "rd_qd32_per_cpu_s": 350_000,   # 4 KiB QD32 random read, ramdisk: requests per daemon CPU-second
    "seq_read_vs_direct": 0.90,     # 1 MiB sequential read, fileio: our MB/s / host preadv MB/s
    "guest_vs_builtin": 1.0,        # in-guest fio IOPS, ours / QEMU's virtio-scsi
    "two_queues_vs_one": 1.8,       # 2 request queues / 1, same pattern, one daemon
}


def _default_poll_us() -> str:
    from vhostscsi.engines.user.rings import POLL_WINDOW_US

    return f"{POLL_WINDOW_US:g}"


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def say(*a: object) -> None:
    print(*a, flush=True)


def ours_name(daemon: b.OurDaemon) -> str:
    """"ours" for the daemon with its defaults, "ours/p<us>" for a --poll-us comparison one, "ours/c<us>" for a
    --guest-coalesce-us one."""
    if daemon.coalesce_us is not None:
        return f"ours/c{daemon.coalesce_us}"
    return "ours" if daemon.poll_us is None else f"ours/p{daemon.poll_us:g}"


def host_matrix(args: argparse.Namespace, work: Path, image: Path, daemons: list[b.OurDaemon],
                qsd: b.StorageDaemon | None) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    cases = QUICK_CASES if args.quick else CASES
    for queues in args.queues:
        for base in cases:
            if args.quick and queues > 1 and base is not cases[0]:
                continue
            case = Case(base.rw, base.bs, base.depth, queues)
            common = {"case": case.label(), "rw": case.rw, "bs": case.bs, "depth": case.depth, "queues": queues}
            runs: list[tuple[str, dict[str, object]]] = []
            for name, lun in (("ramdisk", b.RAMDISK_LUN), ("fileio", b.FILEIO_LUN)):
                for daemon in daemons:
                    r = d.run(daemon.socket, case, lun=lun, span=args.size, seconds=args.seconds,
                              backend_pid=daemon.pid)
                    runs.append((f"{ours_name(daemon)} {name}", r.summary()))
            if qsd is not None:
                r = d.run(qsd.socket, case, device="blk", span=args.size, seconds=args.seconds, backend_pid=qsd.pid)
                runs.append(("qsd fileio", r.summary()))
            direct = b.fio_direct(image, case, args.seconds, work) or b.preadv_direct(image, case, args.seconds)
            runs.append(("host direct", direct))
            if queues == 1 and case.bs >= 65536:
                runs.append(("memcpy", b.memory_bandwidth(case.bs, min(args.seconds, 1.0))))
            ld = load()
            for name, fig in runs:
                row = {**common, "backend": name, **fig, "load": ld}
                if fig.get("backend_cpu_s"):
                    row["backend_cpu_pct"] = round(100 * fig["backend_cpu_s"] / fig.get("seconds", args.seconds), 1)
                if fig.get("backend_sys_s") is not None and fig.get("backend_cpu_s"):
                    row["backend_sys_pct"] = round(100 * fig["backend_sys_s"] / fig["backend_cpu_s"], 1)
                rows.append(row)
                say(format_row(row))
    return rows


HEADER = (f"{'case':<18} {'q':>1} {'backend':<16} {'IOPS':>9} {'MB/s':>8} {'p50us':>7} {'p99us':>7} "
          f"{'bkCPU%':>6} {'sys%':>4} {'IO/bkCPUs':>9} {'IO/call':>7} {'drvCPUs':>7} {'err':>3}")


def format_row(r: dict[str, object]) -> str:
    def num(key: str, fmt: str) -> str:
        v = r.get(key)
        return format(v, fmt) if isinstance(v, (int, float)) and v else "-"

    return (f"{r['case']:<18} {r['queues']:>1} {r['backend']:<16} {num('iops', ',.0f'):>9} {num('mb_s', ',.0f'):>8} "
            f"{num('lat_p50_us', '.0f'):>7} {num('lat_p99_us', '.0f'):>7} {num('backend_cpu_pct', '.0f'):>6} {num('backend_sys_pct', '.0f'):>4} "
            f"{num('ios_per_backend_cpu_s', ',.0f'):>9} {num('ios_per_call', '.1f'):>7} {num('driver_cpu_s', '.2f'):>7} {r.get('errors', '-')!s:>3}")


def find(rows: list[dict[str, object]], case: str, backend: str, queues: int = 1) -> dict[str, object] | None:
    for r in rows:
        if r["case"] == case and r["backend"] == backend and r["queues"] == queues:
            return r
    return None


def bars(rows: list[dict[str, object]], guest: dict[str, object] | None) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []

    def bar(name: str, value: float | None, target: float, how: str) -> None:
        ok = None if value is None else value >= target
        out.append({"bar": name, "value": None if value is None else round(value, 3), "target": target,
                    "met": ok, "how": how})

    r = find(rows, "4k randread qd32", "ours ramdisk")
    bar("rd_qd32_per_cpu_s", float(r["ios_per_backend_cpu_s"]) if r else None, BARS["rd_qd32_per_cpu_s"],  # type: ignore[arg-type]
        "4k randread qd32, ramdisk, 1 queue: requests per daemon CPU-second")
    ours, direct = find(rows, "1M read qd8", "ours fileio"), find(rows, "1M read qd8", "host direct")
    bar("seq_read_vs_direct", float(ours["mb_s"]) / float(direct["mb_s"]) if ours and direct else None,  # type: ignore[arg-type]
        BARS["seq_read_vs_direct"], "1M read, fileio on tmpfs: our MB/s / host preadv MB/s (fio pvsync, 1 job)")
    if ours and direct and ours.get("backend_cpu_s") and direct.get("backend_cpu_s"):
        eff = (float(ours["mb_s"]) / float(ours["backend_cpu_s"])) / (float(direct["mb_s"]) / float(direct["backend_cpu_s"]))  # type: ignore[arg-type]
        out.append({"bar": "seq_read_per_cpu_vs_direct", "value": round(eff, 3), "target": None, "met": None,
                    "how": "cross-check, not a bar: the same ratio per CPU-second (MB per daemon CPU-s / MB per fio CPU-s)"})
    ratios = (guest or {}).get("ratio") or {}
    bar("guest_vs_builtin", min(ratios.values()) if ratios else None, BARS["guest_vs_builtin"],  # type: ignore[type-var, arg-type]
        "in-guest fio IOPS ours / QEMU virtio-scsi+scsi-hd, worst of the jobs")
    one, two = find(rows, "4k randread qd32", "ours ramdisk", 1), find(rows, "4k randread qd32", "ours ramdisk", 2)
    bar("two_queues_vs_one", float(two["iops"]) / float(one["iops"]) if one and two else None,  # type: ignore[arg-type]
        BARS["two_queues_vs_one"], "4k randread qd32 per queue, ramdisk: IOPS with 2 request queues / 1")
    return out


def ceilings(args: argparse.Namespace) -> list[dict[str, object]]:
    """CPU cost of the layers below the event loop, in this process (CPU time, so other load does not count):
    the SCSI core alone (bench/scsi_core.py) and rings + virtio-scsi + SCSI core + ramdisk without sockets or
    eventfds (hostdriver.bench's in-process mode, one descriptor per request: --indirect)."""
    import scsi_core

    from vhostscsi.hostdriver import bench as hb

    n = 20_000 if args.quick else 200_000
    out: list[dict[str, object]] = [
        {"layer": "scsi core: READ(10) 4k, ramdisk", "per_cpu_s": round(scsi_core.rate(0x28, n))},
        {"layer": "scsi core: WRITE(10) 4k, ramdisk", "per_cpu_s": round(scsi_core.rate(0x2A, n))},
    ]
    # batch 1 = one wake-up per request (QD1): the difference to batch 32 is process()'s fixed cost per wake-up
    for rw, batch in (("read", 32), ("write", 32), ("read", 1)):
        ns = argparse.Namespace(rw=rw, bs=4096, queue_size=batch, seconds=min(args.seconds, 2.0), span=16 * _MB,
                                indirect=True, target=1, lun=0, device="scsi", depth=batch)
        text = hb.run_inproc(ns)
        m = re.search(r"([\d,]+) requests per CPU-second", text)
        out.append({"layer": f"device side (rings+virtio-scsi+core) 4k {rw}, batch {batch}",
                    "per_cpu_s": int(m[1].replace(",", "")) if m else None, "text": text})
    for c in out:
        v = c["per_cpu_s"]
        say(f"  {c['layer']:<54} {v:>10,} requests per CPU-second" if v else f"  {c['layer']}: {c.get('text')}")
    return out


def guest_part(args: argparse.Namespace, work: Path, image: Path, daemons: list[b.OurDaemon]) -> dict[str, object]:
    """fio in one TCG guest, QEMU's built-in virtio-scsi and ours alternated A B B A ... (`--guest-rounds` boots
    each), so a load change on the shared machine during the part hits both sides alike. With --poll-us or
    --guest-coalesce-us, the comparison daemons are further sides ("ours_p0", "ours_c100", ...) in the same
    alternation."""
    import guest as g

    img = g.image()
    by_side = {ours_name(dm).replace("ours/", "ours_"): dm for dm in daemons}
    sides = ["qemu_builtin", *by_side]
    runs: dict[str, list[dict[str, dict[str, float]]]] = {side: [] for side in sides}
    for r in range(args.guest_rounds):
        for side in (sides if r % 2 == 0 else sides[::-1]):
            if side in by_side:
                fig = g.run_ours(img, b.WWN, by_side[side].socket, b.FILEIO_LUN, args.guest_seconds, work)
            else:
                fig = g.run_builtin(img, image, args.guest_seconds, work)
            runs[side].append(fig)
            say(f"guest fio round {r + 1}, {side}: " + ", ".join(f"{k} {v['iops']:,.0f} IOPS" for k, v in fig.items())
                + f"   (load {load()})")
    jobs = [k for k in runs["ours"][0] if all(k in f for side in sides for f in runs[side])]

    def mean(side: str, job: str) -> dict[str, float]:
        figs = [f[job] for f in runs[side]]
        return {k: round(sum(f[k] for f in figs) / len(figs), 1) for k in figs[0]}

    builtin = {j: mean("qemu_builtin", j) for j in jobs}
    ours = {j: mean("ours", j) for j in jobs}
    ratio = {j: round(ours[j]["iops"] / builtin[j]["iops"], 3) for j in jobs if builtin[j]["iops"]}
    spread = {j: [round(o[j]["iops"] / q[j]["iops"], 3) for o, q in zip(runs["ours"], runs["qemu_builtin"])]
              for j in jobs}
    out = {"qemu_builtin": builtin, "ours": ours, "ratio": ratio, "ratio_per_round": spread,
           "rounds": args.guest_rounds, "seconds_per_job": args.guest_seconds, "raw": runs}
    for side in sides[2:]:  # --poll-us / --guest-coalesce-us comparison daemons: not a bar, shown beside
        other = {j: mean(side, j) for j in jobs}
        out[side] = other
        out[f"ratio_{side}"] = {j: round(other[j]["iops"] / builtin[j]["iops"], 3) for j in jobs if builtin[j]["iops"]}
    return out


def profile(args: argparse.Namespace, daemon: b.OurDaemon, work: Path) -> dict[str, object]:
    """py-spy the daemon while the stand-in runs 4 KiB QD32 ramdisk reads, twice: `--gil` (only samples where
    the daemon holds the GIL: Python running, the CPU profile) and without (every non-idle sample, including
    time inside system calls and time spent preempted there: the wall-clock profile)."""
    import profile_stacks

    spy = shutil.which("py-spy")
    if spy is None:
        return {"error": "py-spy not installed (pip install py-spy)"}
    out: dict[str, object] = {}
    for mode, extra in (("cpu", ["--gil"]), ("wall", [])):
        raw = work / f"daemon.{mode}.pyspy.txt"
        seconds = max(1, int(args.profile))
        p = subprocess.Popen([spy, "record", "--nonblocking", "--format", "raw", "--rate", "200", *extra,
                              "--duration", str(seconds), "--pid", str(daemon.pid), "--output", str(raw)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            time.sleep(0.5)
            r = d.run(daemon.socket, Case("randread", 4096, 32), lun=b.RAMDISK_LUN, span=args.size,
                      seconds=seconds + 1, backend_pid=daemon.pid)
            _, err = p.communicate(timeout=seconds + 30)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        if not raw.exists():
            return {"error": f"py-spy wrote nothing: {err.decode(errors='replace')[-500:]}"}
        summary = profile_stacks.summarize(raw.read_text(), top=args.profile_top if mode == "cpu" else 10)
        summary["text"] = f"[{mode}: py-spy {' '.join(extra) or '(no --gil)'}] " + str(summary["text"])
        summary["under_load"] = r.summary()
        keep = Path(args.json).with_suffix(f".{mode}.pyspy.txt")
        shutil.copyfile(raw, keep)
        summary["raw"] = str(keep)
        if mode == "cpu":
            out.update(summary)
        else:
            out["wall"] = summary
    out["device_side"] = device_profile(args)
    out["load"] = load()
    return out


def device_profile(args: argparse.Namespace) -> dict[str, object]:
    """cProfile of the in-process device side (4 KiB reads, batches of 32): Python calls and time per request,
    by function. Deterministic profiling inflates call-heavy code, so read it for shape and call counts."""
    import cProfile
    import pstats

    from vhostscsi.hostdriver import bench as hb

    ns = argparse.Namespace(rw="read", bs=4096, queue_size=32, seconds=min(args.profile, 2.0), span=16 * _MB,
                            indirect=True, target=1, lun=0, device="scsi", depth=32)
    prof = cProfile.Profile()
    text = prof.runcall(hb.run_inproc, ns)
    m = re.search(r": (\d+) requests", text)
    requests = int(m[1]) + 32 if m else 0  # + the untimed first batch
    st = pstats.Stats(prof)
    rows = []
    calls = 0
    for (file, line, func), (cc, nc, tt, ct, _callers) in st.stats.items():  # type: ignore[attr-defined]
        calls += nc
        if "/vhostscsi/" in file and "/hostdriver/" not in file:
            rows.append((tt, ct, nc, f"{func} ({re.sub(r'^(.*/)?vhostscsi/', '', file)}:{line})"))
    rows.sort(reverse=True)
    lines = [f"device side under cProfile (in-process, 4k read, batches of 32; {requests} requests, "
             f"{calls / max(requests, 1):.0f} Python calls per request incl. the driver):",
             f"{'us/req self':>11} {'us/req tot':>10} {'calls/req':>9}  function"]
    for tt, ct, nc, name in rows[:15]:
        lines.append(f"{tt / requests * 1e6:11.2f} {ct / requests * 1e6:10.2f} {nc / requests:9.1f}  {name}")
    return {"requests": requests, "calls_per_request": round(calls / max(requests, 1), 1),
            "text": "\n".join(lines)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="CI smoke run: short cases, small disks, no guest")
    ap.add_argument("--seconds", type=float, help="seconds per host-side case (default 3; quick 0.3)")
    ap.add_argument("--size", type=int, help="bytes per disk (default 256 MiB; quick 16 MiB)")
    ap.add_argument("--queues", type=int, nargs="+", default=[1, 2], help="request queue counts to measure")
    ap.add_argument("--guest", choices=("auto", "yes", "no"), default="auto",
                    help="in-guest fio comparison (auto: yes unless --quick)")
    ap.add_argument("--guest-seconds", type=int, default=8, help="seconds per in-guest fio job")
    ap.add_argument("--guest-rounds", type=int, default=2, help="boots per side, alternated A B B A")
    ap.add_argument("--no-qsd", action="store_true", help="skip qemu-storage-daemon")
    ap.add_argument("--no-host", action="store_true", help="skip the host-side matrix and ceilings (guest only)")
    ap.add_argument("--poll-us", type=float, nargs="*", default=[], metavar="US",
                    help="also run a daemon with this ring polling window (VHOSTSCSI_POLL_US; 0 = no polling) "
                         "beside the default one: rows 'ours/p<US> ...', guest side 'ours_p<US>'")
    ap.add_argument("--guest-coalesce-us", type=int, nargs="*", default=[], metavar="US",
                    help="also run a daemon with interrupt coalescing up to US microseconds (`serve --coalesce-us`) "
                         "beside the default one (off): guest side 'ours_c<US>', its ratio printed beside")
    ap.add_argument("--profile", type=float, default=0, metavar="S", help="py-spy the daemon for S seconds")
    ap.add_argument("--profile-top", type=int, default=25)
    ap.add_argument("--json", default="vhostscsi-bench.json", help="where to write the results")
    ap.add_argument("--workdir", type=Path, default=None, help="backing files here (default: a dir on /dev/shm)")
    args = ap.parse_args(argv)
    args.seconds = args.seconds or (0.3 if args.quick else 3.0)
    args.size = args.size or ((16 if args.quick else 256) * _MB)
    run_guest = args.guest == "yes" or (args.guest == "auto" and not args.quick)

    base = args.workdir or (Path("/dev/shm") if Path("/dev/shm").is_dir() else None)
    work = Path(tempfile.mkdtemp(prefix="vhostscsi-bench-", dir=base))
    sockdir = Path(tempfile.mkdtemp(prefix="vsb-"))  # sockets: short paths whatever --workdir is
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
        "quick": args.quick, "seconds_per_case": args.seconds, "disk_bytes": args.size, "workdir": str(work),
        "load_start": load(), "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
        "poll_us_default": os.environ.get("VHOSTSCSI_POLL_US") or _default_poll_us(), "poll_us_compared": args.poll_us,
        "coalesce_us_compared": args.guest_coalesce_us,
    }
    say(f"vhostscsi bench {meta['date']} on {meta['host']}: {meta['cpus']} CPUs, load {meta['load_start']}, "
        f"{args.seconds:g} s per case, disks {args.size // _MB} MiB in {work}")
    result: dict[str, object] = {"meta": meta}
    daemon = qsd = None
    daemons: list[b.OurDaemon] = []
    rc = 0
    try:
        image = work / "disk0.img"
        b.make_backing_file(image, args.size)
        daemon = b.OurDaemon(work, image, args.size, sockdir)
        daemons.append(daemon)
        for us in args.poll_us:
            daemons.append(b.OurDaemon(work, image, args.size, sockdir, poll_us=us))
        for us in args.guest_coalesce_us:
            daemons.append(b.OurDaemon(work, image, args.size, sockdir, coalesce_us=us))
        if not args.no_qsd and b.qsd_binary():
            qsd = b.StorageDaemon(work, image, max(args.queues), sockdir)
        # fill the ramdisk so reads copy real data, not the zero page
        for dm in daemons:
            d.run(dm.socket, Case("write", _MB, 8), lun=b.RAMDISK_LUN, span=args.size,
                  seconds=min(args.seconds, 1.0), backend_pid=None)
        rows: list[dict[str, object]] = []
        if not args.no_host:
            say(HEADER)
            rows = host_matrix(args, work, image, daemons, qsd)
            result["host"] = rows
            say("\nceilings below the event loop (this process, CPU time):")
            result["ceilings"] = ceilings(args)
        guest = None
        if qsd is not None:
            qsd.stop()  # it holds QEMU's image lock: the built-in virtio-scsi guest needs the same file
        if run_guest:
            try:
                guest = guest_part(args, work, image, daemons)
            except Exception as e:  # noqa: BLE001 - a guest that cannot boot must not lose the host figures
                guest = {"error": f"{type(e).__name__}: {e}"[:2000]}
                say(f"guest part failed: {guest['error']}")
                rc = 1
            result["guest"] = guest
        result["bars"] = bars(rows, guest)
        if args.profile:
            result["profile"] = profile(args, daemon, work)
    finally:
        for p in (qsd, *daemons):
            if p is not None:
                p.stop()
        meta["load_end"] = load()
        if daemon is not None:
            meta["daemon_log_tail"] = daemon.log()[-1500:]
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(sockdir, ignore_errors=True)
    print_summary(result)
    say(f"results written to {args.json}")
    if any(r.get("errors") for r in result.get("host", [])):  # type: ignore[union-attr]
        say("ERRORS: some requests failed (see the err column)")
        rc = 1
    return rc


def print_summary(result: dict[str, object]) -> None:
    guest = result.get("guest")
    if isinstance(guest, dict) and "ratio" in guest:
        say(f"\nin-guest fio (one TCG guest, same image and jobs, same backing file; mean of {guest.get('rounds')} "
            f"boots per side, alternated):")
        say(f"{'job':<20} {'QEMU virtio-scsi IOPS':>22} {'vhostscsi IOPS':>15} {'ratio':>6}  per round")
        for k, ratio in guest["ratio"].items():
            per = " ".join(f"{x:.2f}" for x in guest.get("ratio_per_round", {}).get(k, []))
            say(f"{k:<20} {guest['qemu_builtin'][k]['iops']:>22,.0f} {guest['ours'][k]['iops']:>15,.0f} {ratio:>6.2f}  {per}")
        for key in [k for k in guest if k.startswith("ratio_ours_")]:
            side = key[len("ratio_"):]
            say(f"  {side} (not a bar): " + ", ".join(
                f"{k} {guest[side][k]['iops']:,.0f} IOPS = {r:.2f}" for k, r in guest[key].items()))
    say("\nbars (host side, one daemon process):")
    for bar in result.get("bars", []):  # type: ignore[union-attr]
        v = bar["value"]
        status = "n/a" if v is None else "info" if bar["met"] is None else ("MET" if bar["met"] else "not met")
        vs = "-" if v is None else f"{v:,.3f}" if v < 100 else f"{v:,.0f}"
        say(f"  {bar['bar']:<20} {vs:>10} (bar {'-' if bar['target'] is None else format(bar['target'], ',')}) {status:<7}  {bar['how']}")
    prof = result.get("profile")
    if isinstance(prof, dict):
        say("\n" + prof.get("text", prof.get("error", "")))
        if isinstance(prof.get("wall"), dict):
            say("\n" + prof["wall"]["text"])
        if isinstance(prof.get("device_side"), dict):
            say("\n" + prof["device_side"]["text"])
    meta = result["meta"]
    say(f"\nload average: start {meta['load_start']}, end {meta.get('load_end')}")  # type: ignore[index]


if __name__ == "__main__":
    sys.exit(main())

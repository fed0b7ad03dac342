"""Multi-queue load generator over a real vhost-user socket, built on vhostscsi.hostdriver.

`hostdriver.bench` drives one request queue with sequential offsets. The benchmark also needs random offsets
and 1..n request queues, each driven by its own process (one Python driver process per queue, as a guest has
one submitting vCPU per queue), so a single-threaded driver is not what limits the multi-queue figure.

The parent process connects, negotiates and sets up guest RAM and every ring (as QEMU does); then it forks one
child per request queue. Guest RAM is a MAP_SHARED memfd and the kick/call eventfds are inherited, so each child
drives its ring exactly as the parent would. Children report completions, errors, latencies and their own CPU
time through a pipe. The back end's CPU time (all threads, from /proc/<pid>/task/*/schedstat) is sampled
around the timed window, so requests per back-end CPU-second is known even when the driver is the bottleneck.
"""

from __future__ import annotations

import argparse
import os
import pickle
import random
import resource
import select
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path

from vhostscsi.hostdriver.bench import Slot, _fill_header, _make_slots, _ok
from vhostscsi.hostdriver.frontend import FrontEnd, FrontEndError, wait_readable
from vhostscsi.hostdriver.guestram import GuestRam
from vhostscsi.hostdriver.initiator import ScsiInitiator
from vhostscsi.hostdriver.vring import DriverRing
from vhostscsi.vhost_user.protocol import VIRTIO_RING_F_EVENT_IDX, bit
from vhostscsi.virtio.barrier import full_fence

_MB = 1 << 20
QUEUE_SIZE = 128
TUR = bytes(6)


def cpu_seconds(pid: int) -> float:
    """CPU time of every thread of `pid` so far (schedstat: nanoseconds on a CPU; /proc/pid/stat as fallback)."""
    total = 0
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                total += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                pass
        if total:
            return total / 1e9
    except OSError:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sys_seconds(pid: int) -> float:
    """Kernel-mode CPU time of `pid` (all threads; /proc/pid/stat stime, clock ticks)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return int(fields[12]) / os.sysconf("SC_CLK_TCK")


@dataclass
class Case:
    """One access pattern: what fio would call rw/bs/iodepth/numjobs."""

    rw: str  # "randread" | "randwrite" | "read" | "write"
    bs: int
    depth: int  # requests in flight per queue
    queues: int = 1

    @property
    def write(self) -> bool:
        return self.rw in ("write", "randwrite")

    @property
    def random(self) -> bool:
        return self.rw.startswith("rand")

    def label(self) -> str:
        size = f"{self.bs // _MB}M" if self.bs >= _MB else f"{self.bs // 1024}k"
        return f"{size} {self.rw} qd{self.depth}"


@dataclass
class Result:
    ios: int = 0
    errors: int = 0
    seconds: float = 0.0
    bytes_per_io: int = 0
    backend_cpu: float = 0.0  # seconds of back-end CPU during the timed window
    backend_sys: float = 0.0  # of which in the kernel (syscalls: eventfds, epoll, preadv/pwritev)
    driver_cpu: float = 0.0  # seconds of CPU all driver processes used
    kicks: int = 0  # kick eventfd writes by the driver (the back end asked for them: EVENT_IDX)
    calls: int = 0  # call eventfd signals from the back end (one interrupt each in a real guest)
    latencies_us: list[float] = field(default_factory=list, repr=False)

    @property
    def iops(self) -> float:
        return self.ios / self.seconds if self.seconds else 0.0

    @property
    def mbps(self) -> float:
        return self.iops * self.bytes_per_io / 1e6

    def pct(self, p: float) -> float:
        if not self.latencies_us:
            return 0.0
        s = sorted(self.latencies_us)
        return s[min(len(s) - 1, int(p / 100 * len(s)))]

    @property
    def per_cpu_second(self) -> float:
        return self.ios / self.backend_cpu if self.backend_cpu > 0 else 0.0

    def summary(self) -> dict[str, float]:
        return {
            "iops": round(self.iops, 1), "mb_s": round(self.mbps, 2), "ios": self.ios, "errors": self.errors,
            "seconds": round(self.seconds, 3), "lat_p50_us": round(self.pct(50), 1),
            "lat_p99_us": round(self.pct(99), 1), "lat_p999_us": round(self.pct(99.9), 1),
            "lat_max_us": round(max(self.latencies_us, default=0.0), 1),
            "backend_cpu_s": round(self.backend_cpu, 3), "backend_sys_s": round(self.backend_sys, 3),
            "driver_cpu_s": round(self.driver_cpu, 3),
            "ios_per_backend_cpu_s": round(self.per_cpu_second, 1), "kicks": self.kicks, "calls": self.calls,
            "ios_per_kick": round(self.ios / self.kicks, 2) if self.kicks else None,
            "ios_per_call": round(self.ios / self.calls, 2) if self.calls else None,
        }


def _offsets(case: Case, span: int, seed: int) -> list[int]:
    blocks = max(1, span // case.bs)
    if case.random:
        rng = random.Random(seed)
        return [rng.randrange(blocks) * case.bs for _ in range(8192)]
    return [(k % blocks) * case.bs for k in range(min(blocks, 8192) or 1)]


def _drive(fe: FrontEnd, ram: GuestRam, ring: DriverRing, q: int, slots: list[Slot], ns: argparse.Namespace,
           case: Case, offsets: list[int], go_fd: int, seconds: float) -> dict[str, object]:
    """One queue's loop (runs in a child): keep every slot in flight until the deadline."""
    by_head: dict[int, Slot] = {}
    lat = array("d")
    errors = ios = tag = nxt = 0
    n_off = len(offsets)
    write = case.write
    fence = full_fence
    perf = time.perf_counter_ns

    def issue(slot: Slot) -> None:
        nonlocal nxt, tag
        tag += 1
        _fill_header(ram, slot, ns, write, offsets[nxt % n_off], tag)
        nxt += 1
        slot.started = perf()
        by_head[ring.add(slot.out, slot.ins)] = slot

    call_fd = fe.rings[q].call
    kicks = calls = 0

    def wait_call(timeout: float) -> bool:
        """As FrontEnd.wait_call, but the eventfd counter is kept: it is how many times the back end signalled."""
        nonlocal calls
        if not wait_readable(call_fd, timeout):
            return False
        try:
            calls += os.eventfd_read(call_fd)
        except BlockingIOError:
            return False
        return True

    os.read(go_fd, 1)  # the parent samples the back end's CPU, then lets every queue go at once
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    for s in slots:
        issue(s)
    fence()
    fe.kick(q)
    kicks += 1
    t0 = time.perf_counter()
    deadline = t0 + seconds
    stall = None
    while time.perf_counter() < deadline:
        done = ring.get_used()
        if not done:
            fence()  # used_event (stored by get_used) before re-reading used.idx
            if ring.used_idx() == ring.last_used and not wait_call(1.0):
                if ring.used_idx() == ring.last_used:
                    stall = f"queue {q}: no completion for a second (the back end stalled)"
                    break
            continue
        now = perf()
        for u in done:
            slot = by_head.pop(u.head)
            lat.append((now - slot.started) / 1000)
            ios += 1
            if not _ok(ram, slot, ns.device):
                errors += 1
            issue(slot)
        fence()  # avail.idx (stored) before reading the device's avail_event
        if ring.need_kick():
            fe.kick(q)
            kicks += 1
    elapsed = time.perf_counter() - t0
    try:
        calls += os.eventfd_read(call_fd)  # signals that arrived since the last wait
    except BlockingIOError:
        pass
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    # let in-flight requests finish so the back end is idle before the next case is set up
    end = time.monotonic() + 5
    while by_head and time.monotonic() < end and stall is None:
        for u in ring.get_used():
            by_head.pop(u.head, None)
        if by_head:
            wait_call(0.1)
    return {"ios": ios, "errors": errors, "seconds": elapsed, "cpu": cpu, "lat": lat.tobytes(), "stall": stall,
            "kicks": kicks, "calls": calls}


def run(socket_path: str | Path, case: Case, *, device: str = "scsi", lun: int = 0, target: int = 1,
        span: int, seconds: float, backend_pid: int | None, seed: int = 1) -> Result:
    """Drive `case` against the back end at `socket_path` for `seconds`; one forked driver per queue."""
    ns = argparse.Namespace(device=device, bs=case.bs, depth=case.depth, target=target, lun=lun)
    per_queue = case.depth * (case.bs + 4096) + 64 * 1024
    ram = GuestRam(((case.queues * per_queue + 8 * _MB) // _MB + 1) * _MB)
    fe = FrontEnd.connect(str(socket_path), timeout=10)
    pids: list[tuple[int, int]] = []
    go_r, go_w = os.pipe()
    try:
        if device == "scsi":
            init = ScsiInitiator(fe, ram, request_queues=case.queues, queue_size=QUEUE_SIZE)
            init.start()
            init.command(TUR, target=target, lun=lun)  # consume the unit attention a new nexus may report
            rings = {2 + k: init.rings[2 + k] for k in range(case.queues)}
        else:
            fe.negotiate()
            fe.set_mem_table(ram)
            ev = bool(fe.features & bit(VIRTIO_RING_F_EVENT_IDX))
            rings = {}
            for k in range(case.queues):
                rings[k] = DriverRing(ram, QUEUE_SIZE, event_idx=ev)
                fe.setup_ring(k, rings[k])
        plan = [(q, ring, _make_slots(ram, ns, case.write), _offsets(case, span, seed + q))
                for q, ring in rings.items()]
        for q, ring, slots, offs in plan:
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:  # the child: drive one queue, report, leave without running the parent's cleanup
                code = 0
                try:
                    os.close(r)
                    out = _drive(fe, ram, ring, q, slots, ns, case, offs, go_r, seconds)
                    with os.fdopen(w, "wb") as f:
                        pickle.dump(out, f)
                except BaseException:  # noqa: BLE001 - report anything, never return into the parent's code
                    import traceback
                    traceback.print_exc()
                    code = 1
                os._exit(code)
            os.close(w)
            pids.append((pid, r))
        cpu0 = cpu_seconds(backend_pid) if backend_pid else 0.0
        sys0 = sys_seconds(backend_pid) if backend_pid else 0.0
        os.write(go_w, b"g" * len(pids))
        outs = []
        for pid, r in pids:
            with os.fdopen(r, "rb") as f:
                data = f.read()
            os.waitpid(pid, 0)
            if not data:
                raise FrontEndError(f"driver process for queue {len(outs) + 1} failed (traceback above)")
            outs.append(pickle.loads(data))
        pids.clear()
        cpu1 = cpu_seconds(backend_pid) if backend_pid else 0.0
        sys1 = sys_seconds(backend_pid) if backend_pid else 0.0
        res = Result(bytes_per_io=case.bs, backend_cpu=cpu1 - cpu0, backend_sys=sys1 - sys0)
        for o in outs:
            if o["stall"]:
                raise FrontEndError(str(o["stall"]))
            res.ios += int(o["ios"])  # type: ignore[call-overload]
            res.errors += int(o["errors"])  # type: ignore[call-overload]
            res.driver_cpu += float(o["cpu"])  # type: ignore[arg-type]
            res.kicks += int(o["kicks"])  # type: ignore[call-overload]
            res.calls += int(o["calls"])  # type: ignore[call-overload]
            res.seconds = max(res.seconds, float(o["seconds"]))  # type: ignore[arg-type]
            lat = array("d")
            lat.frombytes(o["lat"])  # type: ignore[arg-type]
            res.latencies_us.extend(lat)
        return res
    finally:
        for pid, r in pids:
            try:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
            except OSError:
                pass
            os.close(r)
        os.close(go_r)
        os.close(go_w)
        fe.close()
        ram.close()


def wait_for_socket(path: Path, proc: "object", timeout: float = 30.0) -> None:
    """Wait until a back end's listening socket accepts connections (or its process died)."""
    import socket as _socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if getattr(proc, "poll")() is not None:
            raise RuntimeError(f"back end exited with status {getattr(proc, 'returncode')} before listening")
        if path.exists():
            s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
            try:
                s.connect(str(path))
                return
            except OSError:
                pass
            finally:
                s.close()
        select.select([], [], [], 0.05)
    raise RuntimeError(f"{path} did not appear within {timeout:g} s")


__all__ = ["Case", "Result", "cpu_seconds", "run", "wait_for_socket"]

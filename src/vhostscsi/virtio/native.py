"""The seam to `vhostscsi._native`, the C version of the request queues' quiet-LUN READ/WRITE path.

Why a C piece at all: in CPython the pure-Python fast path costs ~3 us per request (memoryview slices, tuples,
struct calls), about twice what the 350k requests per CPU-second bar allows (bench/FASTPATH.md). The C function
does, for one wake-up, exactly what `pop_batch` + `VirtioScsi._command` + `TargetPort.execute_fast` + the
backstore do for a READ/WRITE (10)/(16) on a quiet LUN, and stops at the first chain it is not sure about;
Python pops and answers that chain with its own code, then hands the ring back. Every verdict other than
"GOOD, all data moved" is Python's.

`AVAILABLE` is False when the module is not built, or when the environment says `VHOSTSCSI_NATIVE=0` (read at
import: the pure path for comparisons, benchmarks and the mutation harness). The pure-Python path is the
reference the C path is tested against byte for byte.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from vhostscsi.virtio.inflight import InflightQueue
from vhostscsi.virtio.virtqueue import SplitVirtqueue

try:
    if os.environ.get("VHOSTSCSI_NATIVE", "1") == "0":
        raise ImportError("VHOSTSCSI_NATIVE=0")
    from vhostscsi import _native  # type: ignore[attr-defined]  # C extension, no stub
except ImportError:
    _native = None

AVAILABLE = _native is not None
# The whole wake-up in C (`serve`): on unless VHOSTSCSI_NATIVE_WAKE=0 (read at import; the comparison switch of
# bench/FASTPATH.md). Off, the request queues still drain through `drain`, with the wake-up loop in Python.
WAKE = AVAILABLE and hasattr(_native, "serve") and os.environ.get("VHOSTSCSI_NATIVE_WAKE", "1") != "0"

# native `serve` statuses (see _native.c)
SERVE_DONE = 0
SERVE_PYTHON = 1
SERVE_BAD_KICK = -1

# resolve(target, lun) -> None or (block_size, nblocks, read_only, fua_ok, write_through, io); see TargetPort.fast_lun
Resolver = Callable[[int, int], "tuple[Any, ...] | None"]
# VirtioScsi._command: (out, in_, error) -> used length
Handler = Callable[[list[memoryview], list[memoryview], "str | None"], int]


# The in-flight bookkeeping the C side reproduces byte for byte; if these are replaced (a subclass, a test or a
# mutant that patches them), it no longer would, and that ring stays on the Python path.
_INFLIGHT_METHODS = (InflightQueue.record_pop, InflightQueue.before_push, InflightQueue.after_push)


def _inflight_reproducible(inflight: InflightQueue | None) -> bool:
    if inflight is None:
        return True
    cls = type(inflight)
    return (cls.record_pop, cls.before_push, cls.after_push) == _INFLIGHT_METHODS


def usable(vq: SplitVirtqueue) -> bool:
    """Whether the C path may serve this ring now (module built and wanted, in-flight bookkeeping unchanged)."""
    return AVAILABLE and _inflight_reproducible(vq.inflight)


def wake_usable(vq: SplitVirtqueue) -> bool:
    """Whether a whole wake-up of this request ring may run in C (`serve`): the C path is usable and wanted."""
    return WAKE and usable(vq)


def _context(vq: SplitVirtqueue) -> tuple[Any, ...]:
    """What the C side needs of a ring, built once per ring (and again if in-flight tracking is attached).

    The region views are slices of the regions' own views: they keep the mappings alive as long as the ring
    object lives, as the ring's own views already do (memory.py's unmap copes: the mapping goes with the last
    view). The C side holds buffer exports only for the duration of one call.
    """
    ctx = vq.native
    inflight = vq.inflight
    if ctx is not None and ctx[0] is inflight:
        return ctx[1]
    regions = tuple((r.gpa, r.buf[:]) for r in vq.memory.regions)
    args = (vq.ring_bytes("desc"), vq.ring_bytes("avail"), vq.ring_bytes("used"), regions,
            inflight.buf if inflight is not None else None, vq.size, vq.indirect)
    vq.native = (inflight, args)
    return args


def drain(vq: SplitVirtqueue, resolve: Resolver, command: Handler) -> int:
    """Everything available on request queue `vq` now, in ring order: C for what it takes, `command` (through the
    general walker) for each chain it hands back. Returns completions pushed. Notifications are the caller's.
    """
    ctx = _context(vq)
    native = _native.drain  # type: ignore[union-attr]
    inflight = vq.inflight
    done = 0
    while not vq.broken:
        counter = inflight.counter if inflight is not None else 0
        last, used, counter, n, stopped = native(ctx, vq.last_avail_idx, vq.used_idx, counter, resolve)
        vq.last_avail_idx = last
        vq.used_idx = used
        if inflight is not None:
            inflight.counter = counter
        done += n
        if not stopped:
            break
        chain = vq.pop()  # the chain C left (or the ring damage it saw: pop breaks the ring with its reason)
        if chain is None:
            break
        vq.push(chain.head, command(chain.out, chain.in_, chain.error))
        done += 1
    return done


def serve(vq: SplitVirtqueue, kick_fd: int, call_fd: int, resolve: Resolver, command: Handler) -> tuple[int, bool]:
    """One wake-up of request queue `vq`, in C as far as it goes: read `kick_fd` (-1: none), drain with
    notifications disabled, re-enable behind a full fence and re-check, then `should_notify`'s decision and the
    write to `call_fd` (-1: none). It replaces `drain_eventfd` + `VirtioScsi.process` + `RingIO.completed`'s
    notification for the rings `wake_usable` accepts, with the Python glue between them gone.

    Returns (done, settled). done is -1 when the kick fd cannot be read (nothing else done: the caller stops
    watching it). settled False means the ring broke: the notification decision is the caller's, as today
    (`RingIO.completed`).

    State: the ring's own attributes (last_avail_idx, used_idx, the notification flags, the in-flight counter)
    are the one copy. They go into every C call and come back out of it, before anything else runs, so Python
    code between calls (the chains C hands back, through `pop`/`push`) sees and updates the same values.
    """
    ctx = _context(vq)
    wake = _native.serve  # type: ignore[union-attr]
    inflight = vq.inflight
    event_idx = vq.event_idx
    done = 0
    resume = False
    while True:
        state = (vq.last_avail_idx, vq.used_idx, inflight.counter if inflight is not None else 0,
                 vq._notifications_enabled, vq._signalled_used, vq._signalled_valid, event_idx)
        state, done, status = wake(ctx, kick_fd, call_fd, state, done, resume, resolve)
        (vq.last_avail_idx, vq.used_idx, counter, vq._notifications_enabled, vq._signalled_used,
         vq._signalled_valid, _) = state
        if inflight is not None:
            inflight.counter = counter
        if status == SERVE_DONE:
            return done, True
        if status == SERVE_BAD_KICK:
            return -1, True
        kick_fd = -1  # read once per wake-up
        resume = True  # the pass over the ring goes on after this chain, kicks still disabled
        # The chain C left, by the Python path (or the ring damage it saw: pop breaks the ring with its reason).
        # Notifications are disabled here, so pop leaves avail_event alone, as it does inside `process`.
        chain = vq.pop()
        if chain is None:
            if vq.broken:
                return done, False
            continue  # the driver moved avail.idx back: C finds nothing, re-arms and re-checks as `process` would
        vq.push(chain.head, command(chain.out, chain.in_, chain.error))
        done += 1

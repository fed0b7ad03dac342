/*
 * vhostscsi._native: the quiet-LUN READ/WRITE(10)/(16) path of one virtio-scsi request queue, in C.
 *
 * Why: the pure-Python fast path (virtqueue._simple, VirtioScsi._command, TargetPort.execute_fast, the
 * backstore's readv/writev) costs ~3 us per request in CPython, most of it building memoryviews, tuples and
 * lists. This file does the same work for one wake-up batch with no Python objects per request.
 *
 * What: drain(ctx, last_avail_idx, used_idx, counter, resolve) takes chains from the avail ring, in ring
 * order, as long as each one is a plain READ/WRITE on a quiet LUN that it can finish with exactly the bytes the
 * Python path would produce. At the first chain it cannot (another opcode, an unusual chain shape, a failed
 * check, short or failed I/O, an unknown or busy LUN) it stops *before* touching anything for that chain and
 * returns; Python then pops that chain with its general walker, answers it, and calls drain again. So every
 * verdict other than "GOOD, all data moved" is still given by the Python code, which is the reference the
 * tests compare this file against byte for byte (tests/unit/virtio/test_native_equivalence.py).
 *
 * The guest is untrusted and runs concurrently: every descriptor, the request header and the avail entries
 * are copied into locals once (followed by a compiler barrier, so the compiler cannot re-load them from guest
 * memory later), and every buffer is bounds-checked against one region with overflow-safe arithmetic.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#ifndef RWF_DSYNC
#define RWF_DSYNC 0x00000002
#endif

#define DESC_F_NEXT 1u
#define DESC_F_WRITE 2u
#define DESC_F_INDIRECT 4u
#define FAST_MAX 16            /* longest direct chain / indirect table taken here (as virtqueue._FAST_MAX) */
#define MAX_SEGS (FAST_MAX + 1) /* data segments: the rest of the first buffer plus the others */
#define REQ_SIZE 51            /* virtio_scsi_cmd_req with a 32-byte CDB */
#define RESP_SIZE 108          /* virtio_scsi_cmd_resp with 96 bytes of sense */
#define MAX_REGIONS 256
#define MAX_LUNS 8             /* distinct (target, lun) resolved per call; more: resolved again */
#define INFLIGHT_HDR 16
#define INFLIGHT_DESC 16

/* Forbid the compiler to keep or re-load guest memory across this point: values copied into locals before it
 * are the only ones used after it (no double fetch even if the guest rewrites the bytes meanwhile). */
#define COMPILER_BARRIER() __asm__ __volatile__("" ::: "memory")

typedef struct {
    uint64_t gpa;
    uint64_t size;
    uint8_t *base;
} region_t;

typedef struct {
    uint8_t *p;
    uint64_t len;
} seg_t;

typedef struct {
    long target, lun;
    int usable;             /* 0: not quiet (or not a plain TargetPort): every command to it goes to Python */
    uint64_t block_size, nblocks;
    int read_only, fua_ok, write_through;
    int is_fd;
    int fd, dsync_ok;
    uint64_t align;
    Py_buffer mem;          /* ramdisk memory, held for the call */
    int have_mem;
} lun_t;

typedef struct {
    Py_buffer desc, avail, used, inflight;
    int have_inflight;
    Py_buffer rbufs[MAX_REGIONS];
    region_t regions[MAX_REGIONS];
    int nregions;
    int last_region;
    uint32_t size;
    int indirect;
    lun_t luns[MAX_LUNS];
    int nluns;
    PyObject *resolve;
} call_t;

/* A call_t with everything zeroed but the two region arrays (about 26 KiB of the 27): only their first nregions
 * entries are ever read, each written first, and zeroing them on every wake-up cost about a microsecond. */
static call_t *call_new(void) {
    call_t *c = PyMem_Malloc(sizeof(call_t));
    if (c == NULL)
        return NULL;
    memset(c, 0, offsetof(call_t, rbufs));
    memset(&c->nregions, 0, sizeof(call_t) - offsetof(call_t, nregions));
    return c;
}

static inline uint16_t le16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline uint32_t be32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static inline uint64_t be64(const uint8_t *p) { return ((uint64_t)be32(p) << 32) | be32(p + 4); }

/* The one region holding [addr, addr+len) entirely, as a pointer; NULL if none does (or len is 0: the Python
 * walker's answer for an empty buffer depends on which region it last used, so such chains stay with it). */
static uint8_t *guest_ptr(call_t *c, uint64_t addr, uint64_t len) {
    if (len == 0)
        return NULL;
    for (int k = 0; k < c->nregions; k++) {
        int i = (c->last_region + k) % c->nregions;
        region_t *r = &c->regions[i];
        if (addr >= r->gpa && addr - r->gpa < r->size && len <= r->size - (addr - r->gpa)) {
            c->last_region = i;
            return r->base + (addr - r->gpa);
        }
    }
    return NULL;
}

typedef struct {
    uint64_t addr;
    uint32_t len;
    uint16_t flags, next;
} desc_t;

static inline void load_desc(desc_t *d, const uint8_t *p) {
    memcpy(&d->addr, p, 8);
    memcpy(&d->len, p + 8, 4);
    memcpy(&d->flags, p + 12, 2);
    memcpy(&d->next, p + 14, 2);
}

/* Read the chain at `head` into readable (out) and writable (in) buffers, only in the shapes
 * virtqueue._simple accepts; 0 means "not here: let the Python walker judge it" (never a verdict). */
static int read_chain(call_t *c, uint32_t head, seg_t *out, int *nout, seg_t *in, int *nin) {
    desc_t d[FAST_MAX];
    int k;
    const uint8_t *table = (const uint8_t *)c->desc.buf;
    desc_t h;
    load_desc(&h, table + (size_t)head * 16);
    COMPILER_BARRIER();
    if (h.flags == DESC_F_INDIRECT) {
        if (!c->indirect || h.len == 0 || h.len % 16 || h.len / 16 > FAST_MAX)
            return 0;
        const uint8_t *t = guest_ptr(c, h.addr, h.len);
        if (t == NULL)
            return 0;
        k = (int)(h.len / 16);
        for (int j = 0; j < k; j++)
            load_desc(&d[j], t + 16 * j);
        COMPILER_BARRIER();
        for (int j = 0; j < k; j++) {
            if (j == k - 1) {
                if (d[j].flags & ~DESC_F_WRITE)
                    return 0; /* the table goes on past its end, or odd bits */
            } else if ((d[j].flags & ~DESC_F_WRITE) != DESC_F_NEXT || d[j].next != j + 1) {
                return 0;     /* an early end, a NEXT that skips or loops back */
            }
        }
    } else {
        /* a direct chain through the ring's table: at most FAST_MAX and at most the ring's size */
        if (h.flags & ~(DESC_F_NEXT | DESC_F_WRITE))
            return 0;
        d[0] = h;
        k = 1;
        while (d[k - 1].flags & DESC_F_NEXT) {
            uint16_t nx = d[k - 1].next;
            if (nx >= c->size || (uint32_t)k >= c->size || k >= FAST_MAX)
                return 0;
            load_desc(&d[k], table + (size_t)nx * 16);
            COMPILER_BARRIER();
            if (d[k].flags & ~(DESC_F_NEXT | DESC_F_WRITE))
                return 0;
            k++;
        }
    }
    *nout = *nin = 0;
    for (int j = 0; j < k; j++) {
        uint8_t *p = guest_ptr(c, d[j].addr, d[j].len);
        if (p == NULL)
            return 0;
        if (d[j].flags & DESC_F_WRITE) {
            in[(*nin)++] = (seg_t){p, d[j].len};
        } else {
            if (*nin)
                return 0; /* readable after writable: the walker's error */
            out[(*nout)++] = (seg_t){p, d[j].len};
        }
    }
    return 1;
}

/* The LUN's state for this call, asked of Python once per distinct (target, lun): resolve(target, lun) ->
 * None or (block_size, nblocks, read_only, fua_ok, write_through, ("mem", buffer) | ("fd", fd, dsync_ok,
 * align)). Anything unexpected (an exception included) counts as "not quiet": Python answers those. */
static lun_t *lookup_lun(call_t *c, long target, long lun) {
    for (int i = 0; i < c->nluns; i++)
        if (c->luns[i].target == target && c->luns[i].lun == lun)
            return &c->luns[i];
    lun_t *e;
    if (c->nluns < MAX_LUNS) {
        e = &c->luns[c->nluns++];
    } else {
        e = &c->luns[(target + lun) % MAX_LUNS]; /* rare: many LUNs in one batch; forget one */
        if (e->have_mem)
            PyBuffer_Release(&e->mem);
    }
    memset(e, 0, sizeof(*e));
    e->target = target;
    e->lun = lun;
    PyObject *r = PyObject_CallFunction(c->resolve, "ll", target, lun);
    if (r == NULL) {
        PyErr_Clear();
        return e;
    }
    unsigned long long bs, nb;
    int ro, fua, wt;
    PyObject *io;
    if (r == Py_None || !PyTuple_Check(r) ||
        !PyArg_ParseTuple(r, "KKpppO!", &bs, &nb, &ro, &fua, &wt, &PyTuple_Type, &io)) {
        PyErr_Clear();
        Py_DECREF(r);
        return e;
    }
    if (bs == 0 || bs > (1u << 20) || nb == 0 || nb > UINT64_MAX / bs) { /* byte offsets must not wrap */
        Py_DECREF(r);
        return e;
    }
    const char *kind;
    PyObject *obj;
    int ok = 0;
    if (PyTuple_GET_SIZE(io) >= 2 && (kind = PyUnicode_AsUTF8(PyTuple_GET_ITEM(io, 0))) != NULL) {
        obj = PyTuple_GET_ITEM(io, 1);
        if (strcmp(kind, "mem") == 0 && PyTuple_GET_SIZE(io) == 2) {
            if (PyObject_GetBuffer(obj, &e->mem, PyBUF_WRITABLE) == 0) {
                e->have_mem = 1;
                ok = 1;
            }
        } else if (strcmp(kind, "fd") == 0 && PyTuple_GET_SIZE(io) == 4) {
            unsigned long long al;
            int dsync;
            if (PyArg_ParseTuple(io, "sipK", &kind, &e->fd, &dsync, &al) && e->fd >= 0 && al >= 1) {
                e->is_fd = 1;
                e->dsync_ok = dsync;
                e->align = al;
                ok = 1;
            }
        }
    }
    PyErr_Clear();
    Py_DECREF(r);
    if (!ok)
        return e;
    e->block_size = bs;
    e->nblocks = nb;
    e->read_only = ro;
    e->fua_ok = fua;
    e->write_through = wt;
    e->usable = 1;
    return e;
}

static uint64_t seg_total(const seg_t *s, int n) {
    uint64_t t = 0;
    for (int i = 0; i < n; i++)
        t += s[i].len; /* at most MAX_SEGS lengths below 2^32: no overflow */
    return t;
}

/* Move the data of one checked command; 1 if every byte moved, 0 if Python must redo it (it then gives the
 * verdict: the zeros past a sparse file's end, the bounce buffer of O_DIRECT, the sense of an error). */
static int do_io(lun_t *e, int writing, int fua, uint64_t off, uint64_t size, seg_t *segs, int nsegs) {
    if (!e->is_fd) {
        uint64_t len = (uint64_t)e->mem.len;
        if (size > len || off > len - size)
            return 0;
        uint8_t *disk = (uint8_t *)e->mem.buf + off;
        for (int i = 0; i < nsegs; i++) {
            if (writing)
                memmove(disk, segs[i].p, segs[i].len);
            else
                memmove(segs[i].p, disk, segs[i].len);
            disk += segs[i].len;
        }
        return 1;
    }
    if (off % e->align || size % e->align || off > (uint64_t)INT64_MAX - size)
        return 0;
    struct iovec iov[MAX_SEGS];
    for (int i = 0; i < nsegs; i++) {
        iov[i].iov_base = segs[i].p;
        iov[i].iov_len = segs[i].len;
    }
    ssize_t n;
    int fd = e->fd, dsync = fua && e->dsync_ok;
    Py_BEGIN_ALLOW_THREADS
    if (!writing)
        n = preadv(fd, iov, nsegs, (off_t)off);
    else if (dsync)
        n = pwritev2(fd, iov, nsegs, (off_t)off, RWF_DSYNC);
    else
        n = pwritev(fd, iov, nsegs, (off_t)off);
    Py_END_ALLOW_THREADS
    return n >= 0 && (uint64_t)n == size;
}

/* In-flight area (virtio/inflight.py): the descriptor state of `head` */
static inline uint8_t *inflight_desc(call_t *c, uint32_t head) {
    return (uint8_t *)c->inflight.buf + INFLIGHT_HDR + (size_t)INFLIGHT_DESC * head;
}

static void release_all(call_t *c) {
    for (int i = 0; i < c->nluns; i++)
        if (c->luns[i].have_mem)
            PyBuffer_Release(&c->luns[i].mem);
    for (int i = 0; i < c->nregions; i++)
        PyBuffer_Release(&c->rbufs[i]);
    if (c->have_inflight)
        PyBuffer_Release(&c->inflight);
    if (c->used.obj)
        PyBuffer_Release(&c->used);
    if (c->avail.obj)
        PyBuffer_Release(&c->avail);
    if (c->desc.obj)
        PyBuffer_Release(&c->desc);
}

/* One command chain, checked and executed; 1 done (used length in *used_len), 0 leave it to Python. */
static int run_one(call_t *c, uint32_t head, uint32_t *used_len, unsigned long long *counter) {
    seg_t out[FAST_MAX], in[FAST_MAX], data[MAX_SEGS];
    int nout, nin, ndata = 0;
    if (!read_chain(c, head, out, &nout, in, &nin))
        return 0;
    /* the response area and the request header, as VirtioScsi._command takes them in its common case */
    if (nin == 0 || in[0].len < RESP_SIZE || nout == 0 || out[0].len < REQ_SIZE)
        return 0;
    uint8_t req[REQ_SIZE];
    memcpy(req, out[0].p, REQ_SIZE); /* the header (and the CDB) is copied once: the guest may rewrite it */
    COMPILER_BARRIER();
    if (req[0] != 1)
        return 0;
    const uint8_t *cdb = req + 19;
    uint8_t opcode = cdb[0], b1 = cdb[1];
    int writing;
    uint64_t lba, n;
    switch (opcode) {
    case 0x28: case 0x2a: /* READ(10), WRITE(10) */
        lba = be32(cdb + 2);
        n = ((uint32_t)cdb[7] << 8) | cdb[8];
        writing = opcode == 0x2a;
        break;
    case 0x88: case 0x8a: /* READ(16), WRITE(16) */
        lba = be64(cdb + 2);
        n = be32(cdb + 10);
        writing = opcode == 0x8a;
        break;
    default:
        return 0;
    }
    /* TargetPort.execute_fast's conditions, in its terms */
    if (b1 & 0xE0 || n == 0)
        return 0; /* PROTECT bits; a zero transfer length */
    lun_t *e = lookup_lun(c, req[1], (((long)req[2] << 8) | req[3]) & 0x3FFF);
    if (!e->usable)
        return 0;
    if ((b1 & 0x18) && !e->fua_ok)
        return 0; /* DPO/FUA where the device does not offer them */
    if (n > e->nblocks || lba > e->nblocks - n)
        return 0; /* the range does not fit the capacity (overflow-safe form of lba + n > nblocks) */
    uint64_t size = n * e->block_size; /* n < 2^32, block_size <= 2^20: fits */
    /* data-out: the header buffer's tail when it is longer than the header, then the other readable buffers;
     * data-in likewise after the response area. Python's data-out list is non-empty (a read then declines)
     * whenever the header buffer is longer than 51 bytes or more readable buffers follow. */
    int dout_present = out[0].len != REQ_SIZE || nout > 1;
    if (writing) {
        if (e->read_only)
            return 0;
        if (out[0].len > REQ_SIZE)
            data[ndata++] = (seg_t){out[0].p + REQ_SIZE, out[0].len - REQ_SIZE};
        for (int i = 1; i < nout; i++)
            data[ndata++] = out[i];
    } else {
        if (dout_present)
            return 0; /* a read with data-out */
        if (in[0].len > RESP_SIZE)
            data[ndata++] = (seg_t){in[0].p + RESP_SIZE, in[0].len - RESP_SIZE};
        for (int i = 1; i < nin; i++)
            data[ndata++] = in[i];
    }
    if (seg_total(data, ndata) != size)
        return 0; /* not exactly the transfer length in the data direction */
    if (!writing && size > UINT32_MAX - RESP_SIZE)
        return 0; /* the used length would not fit its 32 bits: Python's push decides what that means */
    /* Taken: mark it in flight before any I/O (a crash from here on resubmits it). Keep the old state so
     * that handing it back to Python after failed I/O leaves the area as if we had never looked. */
    uint8_t saved[INFLIGHT_DESC] = {0};
    if (c->have_inflight) {
        uint8_t *s = inflight_desc(c, head);
        memcpy(saved, s, INFLIGHT_DESC);
        uint64_t v = *counter;
        memcpy(s + 8, &v, 8);
        s[0] = 1;
    }
    int fua = (b1 & 0x08) || e->write_through;
    if (!do_io(e, writing, fua, lba * e->block_size, size, data, ndata)) {
        if (c->have_inflight)
            memcpy(inflight_desc(c, head), saved, INFLIGHT_DESC);
        return 0;
    }
    if (c->have_inflight)
        (*counter)++;
    /* GOOD: sense_len 0, resid 0, status_qualifier 0, status 0, response 0; the sense bytes stay untouched.
     * Written after the data, as the Python path does (it matters only if the guest overlapped them). */
    memset(in[0].p, 0, 12);
    *used_len = RESP_SIZE + (writing ? 0 : (uint32_t)size);
    return 1;
}

static inline void store_used_idx(uint8_t *used, uint16_t idx) {
    /* release: the used elements written before are visible before the index (on x86 a plain store after a
     * compiler barrier; the builtin says so portably) */
    if (((uintptr_t)(used + 2) & 1) == 0) {
        __atomic_store_n((uint16_t *)(used + 2), idx, __ATOMIC_RELEASE);
    } else {
        __atomic_thread_fence(__ATOMIC_RELEASE);
        memcpy(used + 2, &idx, 2);
    }
}

static int get_buf(PyObject *o, Py_buffer *b, int writable) {
    return PyObject_GetBuffer(o, b, writable ? PyBUF_WRITABLE : PyBUF_SIMPLE);
}

/* Take the ring buffers, the regions and the in-flight area of `ctx` into `c` for one call (released by
 * release_all whatever happens). 0 ok, -1 with a Python exception set. */
static int call_open(call_t *c, PyObject *ctx, PyObject *resolve) {
    PyObject *regions, *desc, *avail, *used, *inflight;
    unsigned int size;
    int indirect;
    if (!PyArg_ParseTuple(ctx, "OOOO!OIp", &desc, &avail, &used, &PyTuple_Type, &regions, &inflight, &size,
                          &indirect))
        return -1;
    if (size == 0 || size > 32768 || (size & (size - 1))) {
        PyErr_SetString(PyExc_ValueError, "queue size is not a power of two up to 32768");
        return -1;
    }
    if (PyTuple_GET_SIZE(regions) > MAX_REGIONS) {
        PyErr_SetString(PyExc_ValueError, "too many memory regions");
        return -1;
    }
    c->size = size;
    c->indirect = indirect;
    c->resolve = resolve;
    if (get_buf(desc, &c->desc, 0) || get_buf(avail, &c->avail, 0) || get_buf(used, &c->used, 1))
        return -1;
    if ((size_t)c->desc.len < 16u * size || (size_t)c->avail.len < 6u + 2u * size ||
        (size_t)c->used.len < 6u + 8u * size) {
        /* 6: the event words (used_event after the avail entries, avail_event after the used elements) are
         * read/written by serve(); drain alone never touches them, but every ring has them */
        PyErr_SetString(PyExc_ValueError, "ring buffers are smaller than the queue size requires");
        return -1;
    }
    if (inflight != Py_None) {
        if (get_buf(inflight, &c->inflight, 1))
            return -1;
        c->have_inflight = 1;
        if ((size_t)c->inflight.len < INFLIGHT_HDR + (size_t)INFLIGHT_DESC * size) {
            PyErr_SetString(PyExc_ValueError, "in-flight area too small for the queue");
            return -1;
        }
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(regions); i++) {
        unsigned long long gpa;
        PyObject *buf;
        if (!PyArg_ParseTuple(PyTuple_GET_ITEM(regions, i), "KO", &gpa, &buf))
            return -1;
        if (get_buf(buf, &c->rbufs[c->nregions], 1))
            return -1;
        region_t *r = &c->regions[c->nregions++];
        r->gpa = gpa;
        r->size = (uint64_t)c->rbufs[c->nregions - 1].len;
        r->base = c->rbufs[c->nregions - 1].buf;
        if (r->size > UINT64_MAX - gpa) {
            PyErr_SetString(PyExc_ValueError, "region wraps the address space");
            return -1;
        }
    }
    return 0;
}

static inline uint16_t load_avail_idx(const uint8_t *av) {
    /* acquire: the ring entries and descriptors it covers are read after it */
    uint16_t v = ((uintptr_t)(av + 2) & 1) == 0 ? __atomic_load_n((const uint16_t *)(av + 2), __ATOMIC_ACQUIRE)
                                                : le16(av + 2);
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    return v;
}

/* drain()'s work on an open call: what is available now, in ring order, until the ring is empty (0) or a
 * chain must go to Python (1; *last names it, nothing was done for it). *done counts completions pushed. */
static int drain_ring(call_t *c, uint16_t *last, uint16_t *used_idx, unsigned long long *counter,
                      uint32_t *done) {
    const uint8_t *av = c->avail.buf;
    uint8_t *us = c->used.buf;
    uint32_t size = c->size;
    uint16_t last16 = *last, uidx = *used_idx, start_uidx = *used_idx;
    uint16_t n = (uint16_t)(load_avail_idx(av) - last16); /* avail.idx once for the batch */
    int stopped = 0;
    if (n > size) {
        stopped = 1; /* Python breaks the ring with its message */
        n = 0;
    }
    for (uint16_t k = 0; k < n; k++) {
        uint16_t head;
        memcpy(&head, av + 4 + 2u * ((uint16_t)(last16 & (size - 1))), 2);
        COMPILER_BARRIER();
        uint32_t len;
        if (head >= size || !run_one(c, head, &len, counter)) {
            stopped = 1;
            break;
        }
        /* the used element now (the driver does not look past used.idx); with in-flight tracking the element,
         * the index and the area are kept per element, as SplitVirtqueue.push does: the area's recovery
         * repairs at most one interrupted push */
        uint8_t *elem = us + 4 + 8u * (uint16_t)(uidx & (size - 1));
        if (c->have_inflight) {
            memcpy((uint8_t *)c->inflight.buf + 12, &head, 2); /* last_batch_head */
        }
        uint32_t h32 = head;
        memcpy(elem, &h32, 4);
        memcpy(elem + 4, &len, 4);
        uidx++;
        if (c->have_inflight) {
            store_used_idx(us, uidx);
            inflight_desc(c, head)[0] = 0;
            memcpy((uint8_t *)c->inflight.buf + 14, &uidx, 2);
        }
        last16++;
        (*done)++;
    }
    if (!c->have_inflight && uidx != start_uidx)
        store_used_idx(us, uidx); /* one index store per batch */
    *last = last16;
    *used_idx = uidx;
    return stopped;
}

PyDoc_STRVAR(drain_doc,
"drain(ctx, last_avail_idx, used_idx, counter, resolve) -> (last_avail_idx, used_idx, counter, done, stopped)\n\n"
"Run the quiet-LUN READ/WRITE chains of a request queue in ring order until the ring is empty (stopped False)\n"
"or a chain must be handled by Python (stopped True: last_avail_idx names it, nothing was done for it).\n"
"ctx = (desc, avail, used, ((gpa, buffer), ...), inflight buffer or None, queue size, indirect).");

static PyObject *drain(PyObject *self, PyObject *args) {
    PyObject *ctx, *resolve;
    unsigned int last, used_idx;
    unsigned long long counter;
    if (!PyArg_ParseTuple(args, "O!IIKO", &PyTuple_Type, &ctx, &last, &used_idx, &counter, &resolve))
        return NULL;
    call_t *c = call_new();
    if (c == NULL)
        return PyErr_NoMemory();
    PyObject *result = NULL;
    if (call_open(c, ctx, resolve) == 0) {
        uint16_t last16 = (uint16_t)last, uidx = (uint16_t)used_idx;
        uint32_t done = 0;
        int stopped = drain_ring(c, &last16, &uidx, &counter, &done);
        result = Py_BuildValue("IIKIO", (unsigned)last16, (unsigned)uidx, counter, (unsigned)done,
                               stopped ? Py_True : Py_False);
    }
    release_all(c);
    PyMem_Free(c);
    return result;
}

/* ---- one wake-up: kick, drain, re-arm, notify (serve) ----------------------------------------------------- */

#define USED_F_NO_NOTIFY 1u
#define AVAIL_F_NO_INTERRUPT 1u

/* The ring's notification state, as SplitVirtqueue keeps it (its attributes are the one copy: serve() takes
 * them in and gives them back every call). */
typedef struct {
    uint16_t last, used_idx;
    unsigned long long counter;
    int enabled;            /* _notifications_enabled */
    uint16_t signalled_used; /* _signalled_used */
    int signalled_valid;    /* _signalled_valid */
    int event_idx;
} wake_t;

static inline uint16_t *avail_event(call_t *c) { /* after the used elements */
    return (uint16_t *)((uint8_t *)c->used.buf + 4 + 8u * c->size);
}

static inline uint16_t load16(const uint8_t *p) { /* a single 16-bit load of a word the driver may write */
    return ((uintptr_t)p & 1) == 0 ? __atomic_load_n((const uint16_t *)p, __ATOMIC_RELAXED) : le16(p);
}

static inline void store16(uint8_t *p, uint16_t v) {
    if (((uintptr_t)p & 1) == 0)
        __atomic_store_n((uint16_t *)p, v, __ATOMIC_RELAXED);
    else
        memcpy(p, &v, 2);
}

/* SplitVirtqueue.disable_notifications: avail_event one behind last_avail_idx (EVENT_IDX: no kick for 65,535
 * buffers), else NO_NOTIFY in used.flags. No fence: a kick that still comes only costs a spare wake-up. */
static void disable_notify(call_t *c, wake_t *w) {
    w->enabled = 0;
    if (w->event_idx)
        store16((uint8_t *)avail_event(c), (uint16_t)(w->last - 1));
    else
        store16(c->used.buf, load16(c->used.buf) | USED_F_NO_NOTIFY);
}

/* SplitVirtqueue.enable_notifications: re-arm, then a full fence, then re-read avail.idx. 1: buffers arrived
 * meanwhile (drain again). The fence orders the re-arming store before the avail.idx load: without it x86 may
 * satisfy the load first, the driver's next buffer is then seen by neither side (it read the old avail_event
 * / flags and did not kick, we read the old avail.idx and sleep): a lost wake-up. */
static int enable_notify(call_t *c, wake_t *w) {
    w->enabled = 1;
    if (w->event_idx)
        store16((uint8_t *)avail_event(c), w->last);
    else
        store16(c->used.buf, (uint16_t)(load16(c->used.buf) & ~USED_F_NO_NOTIFY));
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    return load_avail_idx(c->avail.buf) != w->last;
}

/* SplitVirtqueue.should_notify, decision for decision. The fence orders the used.idx store (drain_ring's)
 * before the load of used_event / avail.flags: otherwise we might read the driver's old suppression state
 * while it reads our old used.idx, and neither side acts (the guest waits for an interrupt that never comes). */
static int should_notify(call_t *c, wake_t *w) {
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    const uint8_t *av = c->avail.buf;
    uint16_t new = w->used_idx, old = w->signalled_used;
    int valid = w->signalled_valid;
    w->signalled_used = new;
    w->signalled_valid = 1;
    if (!w->event_idx) {
        if (new == old && valid)
            return 0;
        return !(load16(av) & AVAIL_F_NO_INTERRUPT);
    }
    if (!valid)
        return 1;
    uint16_t used_event = load16(av + 4 + 2u * c->size);
    /* vring_need_event: has used.idx crossed used_event moving from old to new (mod 2**16)? */
    return (uint16_t)(new - used_event - 1) < (uint16_t)(new - old);
}

/* Write 1 to an eventfd; a full counter (EAGAIN) already means signalled, any other error is the front end's
 * (RingIO._signal ignores them too). */
static void signal_fd(int fd) {
    uint64_t one = 1;
    ssize_t r;
    do {
        r = write(fd, &one, sizeof one);
    } while (r < 0 && errno == EINTR);
}

/* Read (and so reset) the kick eventfd, non-blocking. 0 read or nothing pending, -1 it can never be read (not
 * an eventfd, EOF, error): the caller stops watching it, as engines/user/loop.drain_eventfd says. */
static int drain_kick(int fd) {
    uint64_t v;
    ssize_t r;
    do {
        r = read(fd, &v, sizeof v);
    } while (r < 0 && errno == EINTR);
    if (r < 0)
        return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -1;
    return r == 0 ? -1 : 0;
}

/* serve()'s statuses */
#define SERVE_DONE 0       /* re-armed, nothing left, notification decided (and sent) */
#define SERVE_PYTHON 1     /* a chain for Python at last_avail_idx; notifications disabled */
#define SERVE_BAD_KICK -1  /* the kick fd cannot be read: nothing else was done */

static int serve_ring(call_t *c, wake_t *w, int call_fd, int resume, uint32_t *done) {
    for (;;) {
        /* not again when resuming after Python's chain: VirtioScsi.process disables once per pass over the
         * ring, and its drain goes on with the same avail_event / flags after a chain Python handled */
        if (!resume)
            disable_notify(c, w);
        resume = 0;
        if (drain_ring(c, &w->last, &w->used_idx, &w->counter, done))
            return SERVE_PYTHON;
        if (!enable_notify(c, w))
            break;
    }
    /* as RingIO.completed: asked only when something was pushed this wake-up and there is a call fd */
    if (*done && call_fd >= 0 && should_notify(c, w))
        signal_fd(call_fd);
    return SERVE_DONE;
}

PyDoc_STRVAR(serve_doc,
"serve(ctx, kick_fd, call_fd, state, done, resume, resolve) -> (state, done, status)\n\n"
"One wake-up of a request queue: read kick_fd (-1: none), then disable notifications / drain / re-enable\n"
"behind a full fence / re-check until the ring is empty, then SplitVirtqueue.should_notify's decision and a\n"
"write to call_fd (-1: none, no decision). state = (last_avail_idx, used_idx, counter, notifications_enabled,\n"
"signalled_used, signalled_valid, event_idx), returned updated (event_idx unchanged). done: completions\n"
"already pushed in this wake-up (by an earlier call and Python), returned with this call's added. resume:\n"
"this call continues a pass after a chain Python handled (notifications are left disabled as they are).\n"
"status 0: finished; 1: the chain at last_avail_idx is Python's (notifications left disabled); -1: the kick\n"
"fd cannot be read, nothing done.");

static PyObject *serve(PyObject *self, PyObject *args) {
    PyObject *ctx, *resolve;
    int kick_fd, call_fd;
    unsigned int last, used_idx, signalled_used, done;
    unsigned long long counter;
    int enabled, signalled_valid, event_idx, resume;
    if (!PyArg_ParseTuple(args, "O!ii(IIKpIpp)IpO", &PyTuple_Type, &ctx, &kick_fd, &call_fd, &last, &used_idx,
                          &counter, &enabled, &signalled_used, &signalled_valid, &event_idx, &done, &resume,
                          &resolve))
        return NULL;
    wake_t w = {(uint16_t)last, (uint16_t)used_idx, counter, enabled, (uint16_t)signalled_used,
                signalled_valid, event_idx};
    uint32_t n = done;
    int status = SERVE_BAD_KICK;
    if (kick_fd < 0 || drain_kick(kick_fd) == 0) {
        call_t *c = call_new();
        if (c == NULL)
            return PyErr_NoMemory();
        int ok = call_open(c, ctx, resolve) == 0;
        if (ok)
            status = serve_ring(c, &w, call_fd, resume, &n);
        release_all(c);
        PyMem_Free(c);
        if (!ok)
            return NULL;
    }
    return Py_BuildValue("(IIKOIOO)Ii", (unsigned)w.last, (unsigned)w.used_idx, w.counter,
                         w.enabled ? Py_True : Py_False, (unsigned)w.signalled_used,
                         w.signalled_valid ? Py_True : Py_False, w.event_idx ? Py_True : Py_False, (unsigned)n,
                         status);
}

static PyMethodDef methods[] = {
    {"drain", drain, METH_VARARGS, drain_doc},
    {"serve", serve, METH_VARARGS, serve_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "vhostscsi._native",
    "The quiet-LUN READ/WRITE path of virtio-scsi request queues in C (see vhostscsi.virtio.native).",
    -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&module); }

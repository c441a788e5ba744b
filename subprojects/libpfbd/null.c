/*
 * libpfbd: the null engine, which completes every request at once
 *
 * Copyright (c) 2026 pfbd-qemu developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * No data moves (reads leave the buffers as they are): this measures the
 * overhead of everything above the engine.  A request is queued on submit,
 * becomes complete at the next flush, and its callback runs at reap.
 *
 * With "flush_eagain=N" the first N flushes that have requests to send
 * fail with -EAGAIN and keep them queued, as io_uring_submit() may; with
 * "complete_errno=N" every request completes with -N: fault injection
 * for tests of the callers' retry and error handling.
 *
 * With "completion_nsec=N" (like Linux null_blk's parameter) a request
 * completes N nanoseconds after the flush that sent it: a device with a
 * fixed latency, for benchmarks, and requests that stay in flight long
 * enough for tests to act on them.  With "write_nsec=N" writes take N
 * nanoseconds instead, and complete out of order with the rest: a disk
 * whose writes are slow (a blkio throttle).  The completion fd is a
 * timerfd armed for the request due first: readable once it is due,
 * cleared by reap.
 *
 * With "mem_align=N" the volume asks for buffers aligned to N bytes, as
 * O_DIRECT does, and bounces the others as the file engine does (with
 * the same helpers and limit): a write's data is copied into the bounce
 * buffer, a read's bounce buffer is zeroed.
 */

#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <time.h>
#include <sys/timerfd.h>
#include "pfbd-int.h"

#define NULL_BLOCK_SIZE 512
#define NULL_NSEC_PER_SEC 1000000000ull
/* The longest completion_nsec: one minute */
#define NULL_MAX_COMPLETION_NSEC (60 * NULL_NSEC_PER_SEC)

/* The options after the size: KEY=N[:KEY=N]... */
typedef struct NullOptions {
    uint64_t completion_nsec;
    uint64_t flush_eagain;
    uint64_t complete_errno;
    uint64_t write_nsec;
    uint64_t mem_align;
} NullOptions;

typedef struct NullVolume {
    PfbdVolume base;
    NullOptions opts;   /* each queue starts with them */
} NullVolume;

typedef struct NullReq {
    PfbdCompletionFunc *cb;
    void *opaque;
    uint64_t due_ns;    /* CLOCK_MONOTONIC time it completes */
    PfbdBounce bounce;  /* mem_align: the bounce buffer, or its mapping */
    struct NullReq *next_free;
} NullReq;

/* Requests that complete in the order they were submitted */
typedef struct NullFifo {
    NullReq **reqs;     /* a ring of base.depth requests */
    unsigned head;      /* the oldest request */
    unsigned count;     /* requests in the ring */
    unsigned sent;      /* the first @sent requests were flushed */
    uint64_t nsec;      /* how long they take, from the flush */
} NullFifo;

/* Everything; writes when they take write_nsec */
#define NULL_FIFOS 2

typedef struct NullQueue {
    PfbdQueue base;
    int tfd;            /* timerfd: the request due first is due */
    uint64_t flush_eagain;  /* flushes left to fail */
    int complete_errno;     /* every request fails with it, or 0 */
    uint32_t mem_align;
    uint64_t armed_ns;  /* what the timerfd is armed for, or 0 */
    /*
     * base.depth requests; the free ones in a list, last freed first, as
     * the file engine has them (a request keeps its bounce mapping)
     */
    NullReq *reqs;
    NullReq *free_reqs;
    NullFifo fifo[NULL_FIFOS];
    unsigned nfifos;
} NullQueue;

static uint64_t pfbd_null_now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * NULL_NSEC_PER_SEC + ts.tv_nsec;
}

/* Parse SIZE with an optional K/M/G/T suffix (powers of 1024) */
static int pfbd_null_parse_size(const char *arg, uint64_t *sizep)
{
    uint64_t size = 0;
    unsigned shift = 0;
    const char *p;

    if (!(*arg >= '0' && *arg <= '9')) {
        return -EINVAL;
    }
    for (p = arg; *p >= '0' && *p <= '9'; p++) {
        if (size > (UINT64_MAX - (*p - '0')) / 10) {
            return -ERANGE;
        }
        size = size * 10 + (*p - '0');
    }
    switch (*p) {
    case '\0':
        break;
    case 'k':
    case 'K':
        shift = 10;
        break;
    case 'm':
    case 'M':
        shift = 20;
        break;
    case 'g':
    case 'G':
        shift = 30;
        break;
    case 't':
    case 'T':
        shift = 40;
        break;
    default:
        return -EINVAL;
    }
    if (shift && p[1]) {
        return -EINVAL;
    }
    if (size > (UINT64_MAX >> shift)) {
        return -ERANGE;
    }
    *sizep = size << shift;
    return 0;
}

static const struct {
    const char *key;
    size_t offset;
    uint64_t max;
} null_options[] = {
    { "completion_nsec", offsetof(NullOptions, completion_nsec),
      NULL_MAX_COMPLETION_NSEC },
    { "flush_eagain", offsetof(NullOptions, flush_eagain), 1000000 },
    { "complete_errno", offsetof(NullOptions, complete_errno), 4095 },
    { "write_nsec", offsetof(NullOptions, write_nsec),
      NULL_MAX_COMPLETION_NSEC },
    { "mem_align", offsetof(NullOptions, mem_align), 65536 },
};

static int pfbd_null_parse_options(const char *spec, const char *opts,
                                   NullOptions *no, char **errmsg)
{
    const char *p = opts;
    uint64_t n;
    size_t i, len;

    for (;;) {
        for (i = 0; i < sizeof(null_options) / sizeof(null_options[0]); i++) {
            len = strlen(null_options[i].key);
            if (!strncmp(p, null_options[i].key, len) && p[len] == '=') {
                break;
            }
        }
        if (i == sizeof(null_options) / sizeof(null_options[0])) {
            pfbd_set_error(errmsg, "volume spec '%s': unknown option '%s' "
                           "(known: completion_nsec=N, flush_eagain=N, "
                           "complete_errno=N, write_nsec=N, mem_align=N)",
                           spec, p);
            return -EINVAL;
        }
        p += len + 1;
        n = 0;
        if (!(*p >= '0' && *p <= '9')) {
            goto bad;
        }
        for (; *p >= '0' && *p <= '9'; p++) {
            n = n * 10 + (*p - '0');
            if (n > null_options[i].max) {
                goto bad;
            }
        }
        *(uint64_t *)((char *)no + null_options[i].offset) = n;
        if (!*p) {
            return 0;
        }
        if (*p != ':') {
            goto bad;
        }
        p++;
    }

bad:
    pfbd_set_error(errmsg, "volume spec '%s': %s must be a number from 0 to "
                   "%llu", spec, null_options[i].key,
                   (unsigned long long)null_options[i].max);
    return -EINVAL;
}

static int pfbd_null_volume_open(const char *spec, const char *arg,
                                 const PfbdOpenOptions *opts, PfbdVolume **volp,
                                 char **errmsg)
{
    NullVolume *nv;
    PfbdVolume *vol;
    NullOptions no = { 0 };
    uint64_t size;
    const char *colon = strchr(arg, ':');
    char *size_arg;
    int ret;

    if (colon) {
        ret = pfbd_null_parse_options(spec, colon + 1, &no, errmsg);
        if (ret < 0) {
            return ret;
        }
    }
    size_arg = strndup(arg, colon ? (size_t)(colon - arg) : strlen(arg));
    if (!size_arg) {
        pfbd_set_error(errmsg, "volume spec '%s': out of memory", spec);
        return -ENOMEM;
    }
    ret = pfbd_null_parse_size(size_arg, &size);
    if (ret < 0) {
        arg = size_arg;
        pfbd_set_error(errmsg, "volume spec '%s': '%s' is not a valid size "
                       "(a number with an optional K, M, G or T suffix)",
                       spec, arg);
        free(size_arg);
        return -EINVAL;
    }
    free(size_arg);
    if (no.mem_align & (no.mem_align - 1)) {
        pfbd_set_error(errmsg, "volume spec '%s': mem_align must be a power "
                       "of 2", spec);
        return -EINVAL;
    }
    if (size == 0 || size % NULL_BLOCK_SIZE) {
        pfbd_set_error(errmsg, "volume spec '%s': the size must be a "
                       "non-zero multiple of %d bytes", spec, NULL_BLOCK_SIZE);
        return -EINVAL;
    }

    nv = calloc(1, sizeof(*nv));
    if (!nv) {
        pfbd_set_error(errmsg, "volume spec '%s': out of memory", spec);
        return -ENOMEM;
    }
    nv->opts = no;
    vol = &nv->base;
    vol->info.size = size;
    vol->info.block_size = NULL_BLOCK_SIZE;
    vol->info.mem_align = no.mem_align ? no.mem_align : 1;
    vol->info.caps = PFBD_CAP_FLUSH | PFBD_CAP_DISCARD |
                     PFBD_CAP_WRITE_ZEROES;
    *volp = vol;
    return 0;
}

static void pfbd_null_volume_close(PfbdVolume *vol)
{
    free((NullVolume *)vol);
}

static int pfbd_null_queue_new(PfbdVolume *vol, unsigned depth, PfbdQueue **qp)
{
    NullOptions *no = &((NullVolume *)vol)->opts;
    NullQueue *nq;
    unsigned i;
    int ret = -ENOMEM;

    nq = calloc(1, sizeof(*nq));
    if (!nq) {
        return -ENOMEM;
    }
    nq->reqs = calloc(depth, sizeof(nq->reqs[0]));
    if (!nq->reqs) {
        goto fail;
    }
    for (i = 0; i < depth; i++) {
        nq->reqs[i].next_free = nq->free_reqs;
        nq->free_reqs = &nq->reqs[i];
    }
    nq->nfifos = no->write_nsec ? 2 : 1;
    for (i = 0; i < nq->nfifos; i++) {
        nq->fifo[i].reqs = calloc(depth, sizeof(nq->fifo[i].reqs[0]));
        if (!nq->fifo[i].reqs) {
            goto fail;
        }
    }
    nq->fifo[0].nsec = no->completion_nsec;
    nq->fifo[1].nsec = no->write_nsec;
    nq->flush_eagain = no->flush_eagain;
    nq->complete_errno = no->complete_errno;
    nq->mem_align = vol->info.mem_align;
    nq->tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (nq->tfd < 0) {
        ret = -errno;
        goto fail;
    }
    *qp = &nq->base;
    return 0;

fail:
    for (i = 0; i < NULL_FIFOS; i++) {
        free(nq->fifo[i].reqs);
    }
    free(nq->reqs);
    free(nq);
    return ret;
}

static void pfbd_null_queue_free(PfbdQueue *q)
{
    NullQueue *nq = (NullQueue *)q;
    unsigned i;

    close(nq->tfd);
    for (i = 0; i < q->depth; i++) {
        pfbd_bounce_free(&nq->reqs[i].bounce);
    }
    for (i = 0; i < nq->nfifos; i++) {
        free(nq->fifo[i].reqs);
    }
    free(nq->reqs);
    free(nq);
}

static int pfbd_null_queue_get_fd(PfbdQueue *q)
{
    return ((NullQueue *)q)->tfd;
}

/* Bounce @iov as an engine that needs aligned buffers would */
static int pfbd_null_bounce(NullQueue *nq, NullReq *req, PfbdOp op,
                            const struct iovec *iov, int iovcnt,
                            uint64_t len)
{
    int ret;

    ret = pfbd_bounce_map(&nq->base, &req->bounce, len, nq->mem_align);
    if (ret < 0) {
        return ret;
    }
    if (op == PFBD_OP_READ) {
        /* What a read into it does: the pages are the process's now */
        memset(req->bounce.buf, 0, len);
        return 0;
    }
    pfbd_iov_to_buf(iov, iovcnt, req->bounce.buf);
    return 0;
}

/* Queue the first free request of @nq for @op */
static inline void pfbd_null_enqueue(NullQueue *nq, PfbdOp op,
                                     PfbdCompletionFunc *cb, void *opaque)
{
    NullFifo *f = &nq->fifo[op == PFBD_OP_WRITE && nq->nfifos > 1];
    NullReq *req = nq->free_reqs;

    nq->free_reqs = req->next_free;
    req->cb = cb;
    req->opaque = opaque;
    f->reqs[(f->head + f->count) % nq->base.depth] = req;
    f->count++;
}

/*
 * mem_align: bounce what an O_DIRECT engine would bounce, then queue.  Out
 * of line, so that the common path stays short.
 */
static __attribute__((noinline)) int
pfbd_null_submit_aligned(NullQueue *nq, PfbdOp op, const struct iovec *iov,
                         int iovcnt, uint64_t len, unsigned flags,
                         PfbdCompletionFunc *cb, void *opaque)
{
    int ret;

    if ((op == PFBD_OP_READ || op == PFBD_OP_WRITE) &&
        !(flags & PFBD_REQ_ALIGNED)) {
        ret = pfbd_null_bounce(nq, nq->free_reqs, op, iov, iovcnt, len);
        if (ret < 0) {
            return ret;
        }
    }
    pfbd_null_enqueue(nq, op, cb, opaque);
    return 0;
}

static int pfbd_null_submit(PfbdQueue *q, PfbdOp op, uint64_t offset,
                            const struct iovec *iov, int iovcnt, uint64_t len,
                            unsigned flags, PfbdCompletionFunc *cb,
                            void *opaque)
{
    NullQueue *nq = (NullQueue *)q;

    if (__builtin_expect(nq->mem_align > 1, 0)) {
        return pfbd_null_submit_aligned(nq, op, iov, iovcnt, len, flags,
                                        cb, opaque);
    }
    pfbd_null_enqueue(nq, op, cb, opaque);
    return 0;
}

/* The oldest request sent of @f is complete at @now */
static bool pfbd_null_head_done(NullFifo *f, uint64_t now)
{
    return f->sent > 0 && (!f->nsec || f->reqs[f->head]->due_ns <= now);
}

/* The FIFO whose oldest request sent is due first, or NULL */
static NullFifo *pfbd_null_first_due(NullQueue *nq)
{
    NullFifo *first = NULL;
    unsigned i;

    for (i = 0; i < nq->nfifos; i++) {
        NullFifo *f = &nq->fifo[i];

        if (f->sent && (!first || !f->nsec ||
                        (first->nsec &&
                         f->reqs[f->head]->due_ns <
                         first->reqs[first->head]->due_ns))) {
            first = f;
        }
    }
    return first;
}

/* Arm the timerfd for the request sent that is due first, or disarm it */
static void pfbd_null_arm(NullQueue *nq)
{
    struct itimerspec its = { 0 };
    NullFifo *f = pfbd_null_first_due(nq);
    uint64_t due = f && f->nsec ? f->reqs[f->head]->due_ns : 0;

    its.it_value.tv_sec = due / NULL_NSEC_PER_SEC;
    its.it_value.tv_nsec = due % NULL_NSEC_PER_SEC;
    timerfd_settime(nq->tfd, TFD_TIMER_ABSTIME, &its, NULL);
    nq->armed_ns = due;
}

static int pfbd_null_flush(PfbdQueue *q)
{
    NullQueue *nq = (NullQueue *)q;
    unsigned sent = 0, i, j;
    uint64_t now = 0;

    for (i = 0; i < nq->nfifos; i++) {
        sent += nq->fifo[i].count - nq->fifo[i].sent;
    }
    if (!sent) {
        return 0;
    }
    if (nq->flush_eagain) {
        /* Fault injection: as io_uring_submit() may fail, keep them */
        nq->flush_eagain--;
        return -EAGAIN;
    }
    for (i = 0; i < nq->nfifos; i++) {
        NullFifo *f = &nq->fifo[i];

        if (f->nsec) {
            now = now ? now : pfbd_null_now_ns();
            for (j = f->sent; j < f->count; j++) {
                f->reqs[(f->head + j) % q->depth]->due_ns = now + f->nsec;
            }
        }
        f->sent = f->count;
    }
    /*
     * Without a delay everything completes here, and the caller checks for
     * completions after a flush (pfbd_queue_get_fd()): no fd to arm.  The
     * timerfd changes only when what is due first changed.
     */
    if (now) {
        NullFifo *f = pfbd_null_first_due(nq);

        if (f->nsec && f->reqs[f->head]->due_ns != nq->armed_ns) {
            pfbd_null_arm(nq);
        }
    }
    return sent;
}

static bool pfbd_null_completions_ready(PfbdQueue *q)
{
    NullQueue *nq = (NullQueue *)q;
    NullFifo *f = pfbd_null_first_due(nq);

    return f && pfbd_null_head_done(f, f->nsec ? pfbd_null_now_ns() : 0);
}

static int pfbd_null_reap(PfbdQueue *q, unsigned max)
{
    NullQueue *nq = (NullQueue *)q;
    uint64_t now, expirations;
    bool timed = nq->fifo[0].nsec || nq->nfifos > 1;
    bool single = nq->nfifos == 1;
    NullFifo *f;
    int n = 0;

    if (timed) {
        /* Clear the fd before looking, so that no due request is missed */
        if (read(nq->tfd, &expirations, sizeof(expirations)) < 0) {
            /* EAGAIN: not due yet */
        }
    }
    now = timed ? pfbd_null_now_ns() : 0;
    while (max == 0 || n < max) {
        NullReq *req;
        PfbdCompletionFunc *cb;
        void *opaque;

        f = single ? &nq->fifo[0] : pfbd_null_first_due(nq);
        if (!f || !pfbd_null_head_done(f, now)) {
            break;
        }
        req = f->reqs[f->head];
        cb = req->cb;
        opaque = req->opaque;
        if (req->bounce.buf) {
            pfbd_bounce_release(q, &req->bounce);
        }
        req->next_free = nq->free_reqs;
        nq->free_reqs = req;
        f->head = (f->head + 1) % q->depth;
        f->count--;
        f->sent--;
        n++;
        pfbd_complete(q, cb, opaque, -nq->complete_errno);
    }
    if (timed) {
        /* For what is left: due later, or due now and over @max */
        pfbd_null_arm(nq);
    }
    return n;
}

static void pfbd_null_wait(PfbdQueue *q)
{
    NullQueue *nq = (NullQueue *)q;
    NullFifo *f;
    struct timespec ts;
    uint64_t due;

    pfbd_null_flush(q);
    f = pfbd_null_first_due(nq);
    if (f && f->nsec) {
        due = f->reqs[f->head]->due_ns;
        ts.tv_sec = due / NULL_NSEC_PER_SEC;
        ts.tv_nsec = due % NULL_NSEC_PER_SEC;
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts,
                               NULL) == EINTR) {
            /* sleep on */
        }
    }
}

const PfbdEngine pfbd_engine_null = {
    .name = "null",
    .volume_open = pfbd_null_volume_open,
    .volume_close = pfbd_null_volume_close,
    .queue_new = pfbd_null_queue_new,
    .queue_free = pfbd_null_queue_free,
    .queue_get_fd = pfbd_null_queue_get_fd,
    .submit = pfbd_null_submit,
    .flush = pfbd_null_flush,
    .completions_ready = pfbd_null_completions_ready,
    .reap = pfbd_null_reap,
    .wait = pfbd_null_wait,
};

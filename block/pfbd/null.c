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
 */

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/eventfd.h>
#include "pfbd-int.h"

#define NULL_BLOCK_SIZE 512

typedef struct NullReq {
    PfbdCompletionFunc *cb;
    void *opaque;
} NullReq;

typedef struct NullQueue {
    PfbdQueue base;
    int efd;
    NullReq *reqs;      /* a ring of base.depth requests */
    unsigned head;      /* the oldest request */
    unsigned count;     /* requests in the ring */
    unsigned done;      /* the first @done requests are complete */
} NullQueue;

/* Parse SIZE with an optional K/M/G/T suffix (powers of 1024) */
static int null_parse_size(const char *arg, uint64_t *sizep)
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

static int null_volume_open(const char *spec, const char *arg,
                            const PfbdOpenOptions *opts, PfbdVolume **volp,
                            char **errmsg)
{
    PfbdVolume *vol;
    uint64_t size;
    int ret;

    ret = null_parse_size(arg, &size);
    if (ret < 0) {
        pfbd_set_error(errmsg, "volume spec '%s': '%s' is not a valid size "
                       "(a number with an optional K, M, G or T suffix)",
                       spec, arg);
        return -EINVAL;
    }
    if (size == 0 || size % NULL_BLOCK_SIZE) {
        pfbd_set_error(errmsg, "volume spec '%s': the size must be a "
                       "non-zero multiple of %d bytes", spec, NULL_BLOCK_SIZE);
        return -EINVAL;
    }

    vol = calloc(1, sizeof(*vol));
    if (!vol) {
        pfbd_set_error(errmsg, "volume spec '%s': out of memory", spec);
        return -ENOMEM;
    }
    vol->info.size = size;
    vol->info.block_size = NULL_BLOCK_SIZE;
    vol->info.mem_align = 1;
    vol->info.caps = PFBD_CAP_FLUSH | PFBD_CAP_DISCARD |
                     PFBD_CAP_WRITE_ZEROES;
    *volp = vol;
    return 0;
}

static void null_volume_close(PfbdVolume *vol)
{
    free(vol);
}

static int null_queue_new(PfbdVolume *vol, unsigned depth, PfbdQueue **qp)
{
    NullQueue *nq;

    nq = calloc(1, sizeof(*nq));
    if (!nq) {
        return -ENOMEM;
    }
    nq->reqs = calloc(depth, sizeof(nq->reqs[0]));
    if (!nq->reqs) {
        free(nq);
        return -ENOMEM;
    }
    nq->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (nq->efd < 0) {
        int ret = -errno;

        free(nq->reqs);
        free(nq);
        return ret;
    }
    *qp = &nq->base;
    return 0;
}

static void null_queue_free(PfbdQueue *q)
{
    NullQueue *nq = (NullQueue *)q;

    close(nq->efd);
    free(nq->reqs);
    free(nq);
}

static int null_queue_get_fd(PfbdQueue *q)
{
    return ((NullQueue *)q)->efd;
}

static int null_submit(PfbdQueue *q, PfbdOp op, uint64_t offset,
                       const struct iovec *iov, int iovcnt, uint64_t len,
                       unsigned flags, PfbdCompletionFunc *cb, void *opaque)
{
    NullQueue *nq = (NullQueue *)q;
    NullReq *req = &nq->reqs[(nq->head + nq->count) % q->depth];

    req->cb = cb;
    req->opaque = opaque;
    nq->count++;
    return 0;
}

static int null_flush(PfbdQueue *q)
{
    NullQueue *nq = (NullQueue *)q;
    unsigned sent = nq->count - nq->done;

    /*
     * Everything completes here, and the caller checks for completions
     * after a flush (pfbd_queue_get_fd()): the eventfd is never signalled.
     */
    nq->done = nq->count;
    return sent;
}

static bool null_completions_ready(PfbdQueue *q)
{
    return ((NullQueue *)q)->done > 0;
}

static int null_reap(PfbdQueue *q, unsigned max)
{
    NullQueue *nq = (NullQueue *)q;
    int n = 0;

    while (nq->done > 0 && (max == 0 || n < max)) {
        NullReq req = nq->reqs[nq->head];

        nq->head = (nq->head + 1) % q->depth;
        nq->count--;
        nq->done--;
        n++;
        pfbd_complete(q, req.cb, req.opaque, 0);
    }
    return n;
}

static void null_wait(PfbdQueue *q)
{
    null_flush(q);
}

const PfbdEngine pfbd_engine_null = {
    .name = "null",
    .volume_open = null_volume_open,
    .volume_close = null_volume_close,
    .queue_new = null_queue_new,
    .queue_free = null_queue_free,
    .queue_get_fd = null_queue_get_fd,
    .submit = null_submit,
    .flush = null_flush,
    .completions_ready = null_completions_ready,
    .reap = null_reap,
    .wait = null_wait,
};

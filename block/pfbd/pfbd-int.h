/*
 * libpfbd: internal interface between the front end and the engines
 *
 * Copyright (c) 2026 pfbd-qemu developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * pfbd.c parses the volume spec, validates every request and keeps the
 * in-flight count; an engine only moves data.  Each engine is one file
 * that defines one PfbdEngine and embeds PfbdVolume and PfbdQueue as the
 * first member of its own volume and queue structs.
 */

#ifndef BLOCK_PFBD_INT_H
#define BLOCK_PFBD_INT_H

#include <errno.h>
#include <stdarg.h>
#include "block/pfbd.h"

typedef struct PfbdEngine PfbdEngine;

struct PfbdVolume {
    const PfbdEngine *engine;
    PfbdVolumeInfo info;    /* info.engine is engine->name */
    unsigned nqueues;       /* queues not yet freed */
};

struct PfbdQueue {
    PfbdVolume *vol;
    unsigned depth;
    unsigned inflight;      /* submitted, callback not run yet */
    uint64_t bounce_limit;  /* pfbd_queue_set_bounce_limit(), 0: none */
    uint64_t bounce_bytes;  /* bounce buffers of the requests in flight */
};

/*
 * pfbd_bounce_get: account for a bounce buffer of @len bytes for a request
 * of @q.  Returns 0, or -EAGAIN if it would go over the queue's limit
 * while other requests hold bounce buffers.  pfbd_bounce_put() gives it
 * back.
 */
static inline int pfbd_bounce_get(PfbdQueue *q, uint64_t len)
{
    if (q->bounce_limit && q->bounce_bytes &&
        (q->bounce_bytes >= q->bounce_limit ||
         len > q->bounce_limit - q->bounce_bytes)) {
        return -EAGAIN;
    }
    q->bounce_bytes += len;
    return 0;
}

static inline void pfbd_bounce_put(PfbdQueue *q, uint64_t len)
{
    q->bounce_bytes -= len;
}

/*
 * The operations of one engine.  pfbd.c has already validated every
 * argument when it calls them.
 */
struct PfbdEngine {
    const char *name;       /* the spec prefix, "file" for "file:PATH" */

    /*
     * Open the volume named by @arg (the spec after "NAME:").  Allocate the
     * engine's volume struct, fill in base.info except engine and
     * read_only, and store it in @volp.  On failure return a negative
     * errno and set *@errmsg with pfbd_set_error().
     */
    int (*volume_open)(const char *spec, const char *arg,
                       const PfbdOpenOptions *opts, PfbdVolume **volp,
                       char **errmsg);
    void (*volume_close)(PfbdVolume *vol);
    /*
     * Store the current size of the backing store, in bytes, in *@sizep,
     * or return a negative errno.  May be NULL (the size never changes).
     */
    int (*volume_get_size)(PfbdVolume *vol, uint64_t *sizep);

    /* Allocate the engine's queue struct and store it in @qp. */
    int (*queue_new)(PfbdVolume *vol, unsigned depth, PfbdQueue **qp);
    void (*queue_free)(PfbdQueue *q);
    int (*queue_get_fd)(PfbdQueue *q);
    /* May be NULL: no memory registration (-ENOTSUP) */
    int (*queue_register_memory)(PfbdQueue *q, const struct iovec *iov,
                                 unsigned n);

    /*
     * Queue one validated request; never block.  On success the engine
     * must later complete it with pfbd_complete().
     */
    int (*submit)(PfbdQueue *q, PfbdOp op, uint64_t offset,
                  const struct iovec *iov, int iovcnt, uint64_t len,
                  unsigned flags, PfbdCompletionFunc *cb, void *opaque);
    int (*flush)(PfbdQueue *q);
    bool (*completions_ready)(PfbdQueue *q);
    int (*reap)(PfbdQueue *q, unsigned max);
    /* Send what is queued and block until at least one completion. */
    void (*wait)(PfbdQueue *q);
};

extern const PfbdEngine pfbd_engine_null;
#ifdef PFBD_HAVE_IO_URING
extern const PfbdEngine pfbd_engine_file;
#endif
#ifdef PFBD_HAVE_RBD
extern const PfbdEngine pfbd_engine_rbd;
#endif

/*
 * pfbd_complete: end a request of @q.  Engines call it from their reap and
 * wait operations; it runs @cb, which may submit new requests on @q.
 */
static inline void pfbd_complete(PfbdQueue *q, PfbdCompletionFunc *cb,
                                 void *opaque, int ret)
{
    q->inflight--;
    cb(opaque, ret);
}

/*
 * pfbd_set_error: if @errmsg is not NULL, store in it a malloc'ed message
 * formatted from @fmt (left NULL if out of memory).
 */
void pfbd_set_error(char **errmsg, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/*
 * pfbd_iov_is_aligned: true if every base and length in @iov is a multiple
 * of @align (a power of two).
 */
bool pfbd_iov_is_aligned(const struct iovec *iov, int iovcnt, uint32_t align);

/*
 * pfbd_iov_seek: where the byte @skip bytes into @iov lies.  Returns the
 * index of its element and sets *@off to its offset in that element;
 * returns @iovcnt (and *@off 0) if @skip is at or past the end.
 */
int pfbd_iov_seek(const struct iovec *iov, int iovcnt, uint64_t skip,
                  size_t *off);

#endif /* BLOCK_PFBD_INT_H */

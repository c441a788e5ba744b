/*
 * libpfbd: internal interface between the front end and the engines
 *
 * Copyright (c) 2026 pfbd-qemu developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * pfbd.c parses the volume spec, validates every request, keeps the
 * in-flight count and the requests that wait for room, and runs the
 * submit/reap loop; an engine only moves data.  Each engine is one file
 * that defines one PfbdEngine and embeds PfbdVolume and PfbdQueue as the
 * first member of its own volume and queue structs.
 */

#ifndef BLOCK_PFBD_INT_H
#define BLOCK_PFBD_INT_H

#include <errno.h>
#include <stdarg.h>
#include "pfbd.h"

typedef struct PfbdEngine PfbdEngine;

struct PfbdVolume {
    const PfbdEngine *engine;
    PfbdVolumeInfo info;    /* info.engine is engine->name */
    /* What offsets and lengths align to: set_block_size(), or block_size */
    uint32_t align;
    unsigned nqueues;       /* queues not yet freed */
    bool any_thread;        /* PfbdOpenOptions.any_thread */
    const PfbdTraceOps *trace;  /* PfbdOpenOptions.trace */
    void *trace_opaque;
};

/* Report @event of PfbdTraceOps for queue @q, if the caller asked for it */
#define pfbd_trace(q, event, ...)                                       \
    do {                                                                \
        const PfbdVolume *vol_ = (q)->vol;                              \
        if (vol_->trace && vol_->trace->event) {                        \
            vol_->trace->event(vol_->trace_opaque, (q), ##__VA_ARGS__); \
        }                                                               \
    } while (0)

/*
 * pfbd_submit() sets it for READ and WRITE whose buffers are all aligned
 * to the volume's mem_align, and whose lengths to its block size (when
 * mem_align > 1): what O_DIRECT takes as it is, as the kernel's block
 * layer checks it (Linux 6.1 wants every segment a multiple of the logical
 * block size) and as QEMU's file-posix decides what to bounce.  Engines
 * test it instead of walking the iovec again.
 */
#define PFBD_REQ_ALIGNED    (1u << 31)

typedef struct PfbdWaiting PfbdWaiting;

/*
 * A request that pfbd_submit() took and the engine did not, for
 * pfbd_queue_do_io(): to send when there is room (@ret PFBD_WAITING_SEND),
 * to complete with success (PFBD_WAITING_DONE: it moves no byte), or to
 * complete with the engine's refusal (@ret < 0)
 */
#define PFBD_WAITING_SEND   1
#define PFBD_WAITING_DONE   2

struct PfbdWaiting {
    PfbdWaiting *next;
    PfbdOp op;
    int ret;
    uint64_t offset;
    const struct iovec *iov;
    int iovcnt;
    unsigned flags;
    uint64_t len;
    PfbdCompletionFunc *cb;
    void *opaque;
};

struct PfbdQueue {
    PfbdVolume *vol;
    unsigned depth;
    unsigned inflight;      /* in the engine, callback not run yet */
    unsigned nwaiting;      /* in @waiting */
    /* pfbd_submit()'s requests that the engine did not take yet */
    PfbdWaiting *waiting;
    PfbdWaiting **waiting_tail;
    PfbdWaiting *waiting_free;  /* entries for reuse */
    /* A memory registration that waits for @inflight to reach 0 */
    bool reg_waits;
    struct iovec *reg_iov;
    unsigned reg_n;
    uint64_t bounce_limit;  /* pfbd_queue_set_bounce_limit(), 0: none */
    uint64_t bounce_bytes;  /* bounce mappings of the requests in flight */
    uint64_t bounce_kept;   /* bounce mappings that free requests keep */
};

/*
 * A request's bounce buffer, for buffers that the engine cannot take as
 * they are (O_DIRECT's alignment).  An engine embeds one in each of its
 * request slots; the slot keeps the mapping while it is free, for reuse.
 */
typedef struct PfbdBounce {
    void *buf;              /* aligned, in @map; NULL while not in use */
    void *map;              /* the mapping, or NULL */
    size_t map_len;
} PfbdBounce;

/*
 * pfbd_bounce_map: give @b a buffer of @len bytes aligned to @align (a
 * power of 2) for a request of @q: the mapping @b kept if it fits, else a
 * new one.  Returns 0, -EAGAIN if the queue's bounce limit has no room
 * for it while other requests hold bounce buffers (the request must wait
 * for completions), or -ENOMEM.
 *
 * What counts against the limit is the mapping, not @len, and a kept
 * mapping is reused only while it is at most twice the size needed, so
 * that a small request cannot hold a large mapping the limit does not
 * see.  With what free requests keep (pfbd_bounce_release()), a queue
 * holds at most its limit in flight (or one larger request alone) plus
 * its limit kept.
 */
int pfbd_bounce_map(PfbdQueue *q, PfbdBounce *b, uint64_t len,
                    uint32_t align);

/*
 * pfbd_bounce_release: the request of @b completed (or failed to start):
 * give back what its buffer counted, and keep the mapping for the slot's
 * next use while the queue keeps no more than its limit.  Does nothing if
 * @b has no buffer in use.
 */
void pfbd_bounce_release(PfbdQueue *q, PfbdBounce *b);

/* pfbd_iov_to_buf: copy the data of @iov into @buf, one after another */
void pfbd_iov_to_buf(const struct iovec *iov, int iovcnt, void *buf);

/* pfbd_buf_to_iov: copy @buf into the buffers of @iov, filling each */
void pfbd_buf_to_iov(const void *buf, const struct iovec *iov, int iovcnt);

/* pfbd_bounce_free: unmap what @b kept (the queue goes away) */
void pfbd_bounce_free(PfbdBounce *b);

/*
 * The operations of one engine.  pfbd.c has already validated every
 * argument when it calls them, and calls the queue operations from the
 * queue's thread.
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
    /* The fd of the volume's local file; NULL: no such file (-ENOTSUP) */
    int (*volume_get_file_fd)(PfbdVolume *vol);

    /* Allocate the engine's queue struct and store it in @qp. */
    int (*queue_new)(PfbdVolume *vol, unsigned depth, PfbdQueue **qp);
    void (*queue_free)(PfbdQueue *q);
    int (*queue_get_fd)(PfbdQueue *q);
    /*
     * May be NULL: no memory registration (-ENOTSUP).  With @n > 0 it is
     * called only while nothing is in flight.
     */
    int (*queue_register_memory)(PfbdQueue *q, const struct iovec *iov,
                                 unsigned n);

    /*
     * Queue one validated request (@flags may have PFBD_REQ_ALIGNED); never
     * block.  On success the engine must later complete it with
     * pfbd_complete().  -EAGAIN: no room now (a bounce limit, a full
     * engine queue); the request waits in pfbd.c for a completion.
     */
    int (*submit)(PfbdQueue *q, PfbdOp op, uint64_t offset,
                  const struct iovec *iov, int iovcnt, uint64_t len,
                  unsigned flags, PfbdCompletionFunc *cb, void *opaque);
    /* Send what is queued: the number sent, 0 if none, or -errno */
    int (*flush)(PfbdQueue *q);
    bool (*completions_ready)(PfbdQueue *q);
    /* Complete up to @max (0: all) ready requests; return how many */
    int (*reap)(PfbdQueue *q, unsigned max);
    /* Send what is queued and block until at least one completion. */
    void (*wait)(PfbdQueue *q);
};

extern const PfbdEngine pfbd_engine_null;
extern const PfbdEngine pfbd_engine_pureflash;
#ifdef PFBD_HAVE_IO_URING
extern const PfbdEngine pfbd_engine_file;

struct io_uring;

/*
 * For tests: the file engine's queue @q sends its SQEs with @fn instead of
 * io_uring_submit(), which @fn stands for (NULL: io_uring_submit() again).
 * A test makes the kernel take fewer SQEs than it was given this way.
 */
void pfbd_file_queue_set_submit_fn(PfbdQueue *q,
                                   int (*fn)(struct io_uring *ring));
#endif
#ifdef PFBD_HAVE_RBD
extern const PfbdEngine pfbd_engine_rbd;
#endif

#ifdef PFBD_HAVE_ZOOKEEPER
/*
 * The pureflash engine's discovery: store in *@addr (malloc'ed) the
 * address the leading conductor of PureFlash cluster @cluster registered
 * in the ZooKeeper ensemble @hosts ("HOST:PORT[,HOST:PORT]..."), waiting
 * at most about @timeout_ms.  Returns 0, or a negative errno with
 * *@errmsg saying why.
 */
int pfbd_pureflash_zk_conductor(const char *hosts, const char *cluster,
                                int timeout_ms, char **addr, char **errmsg);
#endif

/*
 * pfbd_complete: end a request of @q.  Engines call it from their reap
 * operation; it runs @cb, which may submit new requests on @q.
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
 * pfbd_next_token: split off the next token of *@p at the first unescaped
 * @delim (any character of @delims; '\\' escapes the next character),
 * unescaping it.  Returns a malloc'ed token (NULL if out of memory) and
 * advances *@p past the delimiter, or to NULL at the end.  Stores the
 * delimiter found (or '\0') in *@found.  For specs like rbd's
 * "POOL/IMAGE@SNAP:KEY=VALUE".
 */
char *pfbd_next_token(const char **p, const char *delims, char *found);

/*
 * pfbd_iov_seek: where the byte @skip bytes into @iov lies.  Returns the
 * index of its element and sets *@off to its offset in that element;
 * returns @iovcnt (and *@off 0) if @skip is at or past the end.
 */
int pfbd_iov_seek(const struct iovec *iov, int iovcnt, uint64_t skip,
                  size_t *off);

#endif /* BLOCK_PFBD_INT_H */

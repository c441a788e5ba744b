/*
 * libpfbd: a per-queue storage client for virtio-blk-pfbd
 *
 * Copyright (c) 2026 pfbd-qemu developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * A volume is opened once per device; each virtqueue gets its own PfbdQueue,
 * owned by the one thread that serves that virtqueue.  The library has no
 * global state and includes no QEMU header: it is a storage client that
 * other programs can link (its unit tests do), and must stay one.
 *
 * Threading: pfbd_volume_*() may be called from any thread, but not
 * concurrently with each other or while queues of the volume exist (except
 * pfbd_volume_get_info() and pfbd_volume_refresh_size(), which may run
 * while the queues work).  A PfbdQueue and everything submitted on it
 * belongs to one thread at a time: pfbd_submit(), pfbd_queue_do_io() and
 * pfbd_queue_drain() must be called from that thread, and completion
 * callbacks run only inside pfbd_queue_do_io() or pfbd_queue_drain(), in
 * that thread.  A queue may move to another thread while no request is in
 * flight, or at any time on a volume opened with
 * PfbdOpenOptions.any_thread.
 *
 * The work of a queue's thread is two calls: pfbd_submit() for each new
 * request, then pfbd_queue_do_io() once, and pfbd_queue_do_io() again
 * whenever the queue's fd (pfbd_queue_get_fd()) is readable.  The library
 * keeps what has to wait (for room in the engine, for bounce memory, for a
 * memory registration) and sends it when it can; it validates every
 * request, so that engines and callers need not.
 *
 * Errors are negative errno values, like liburing.
 */

#ifndef BLOCK_PFBD_H
#define BLOCK_PFBD_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

typedef struct PfbdVolume PfbdVolume;
typedef struct PfbdQueue PfbdQueue;

typedef enum PfbdOp {
    PFBD_OP_READ,
    PFBD_OP_WRITE,
    PFBD_OP_FLUSH,
    PFBD_OP_DISCARD,
    PFBD_OP_WRITE_ZEROES,
} PfbdOp;

/* pfbd_submit() flags */
#define PFBD_REQ_FUA    (1u << 0)   /* WRITE: data is durable on completion */
#define PFBD_REQ_UNMAP  (1u << 1)   /* WRITE_ZEROES: range may be deallocated */

/* PfbdVolumeInfo.caps: operations the engine implements natively */
#define PFBD_CAP_FLUSH          (1u << 0)
#define PFBD_CAP_DISCARD        (1u << 1)
#define PFBD_CAP_WRITE_ZEROES   (1u << 2)

/*
 * Events of the engines that a caller does not see in its submits and
 * completions, for its tracing (QEMU connects them to its trace events,
 * "pfbd_*" in hw/block/trace-events).  Every callback may be NULL and gets
 * PfbdOpenOptions.trace_opaque first.  Those that name a queue run in the
 * thread that calls into the queue at that moment.
 */
typedef struct PfbdTraceOps {
    /*
     * file: @q got a new io_uring for the calling thread (it was idle and
     * its ring was bound to another thread); @ret is 0 or a negative errno
     */
    void (*ring_moved)(void *opaque, PfbdQueue *q, int ret);
    /*
     * file: a thread that does not own @q's ring wanted to submit or wait
     * on it while @inflight requests were in flight (-EEXIST)
     */
    void (*ring_busy)(void *opaque, PfbdQueue *q, unsigned inflight);
    /*
     * A request of @len bytes of @q goes through a bounce buffer, in a
     * new mapping if @fresh (else in one its request slot kept)
     */
    void (*bounce)(void *opaque, PfbdQueue *q, uint64_t len, bool fresh);
    /*
     * An engine sends what is left of a request again without the caller:
     * the @len bytes at @offset, because of @why (a static string)
     */
    void (*resend)(void *opaque, PfbdQueue *q, uint64_t offset,
                   uint64_t len, const char *why);
    /* pureflash: @q connects to the store at @addr ("IP:PORT") */
    void (*connect)(void *opaque, PfbdQueue *q, const char *addr);
    /* pureflash: @q asks the conductor for the volume again */
    void (*reopen)(void *opaque, PfbdQueue *q);
    /*
     * A request of @q waits in the queue, behind @nwaiting - 1 others, for
     * room in the engine (its depth, the bounce limit, a registration)
     */
    void (*waits)(void *opaque, PfbdQueue *q, unsigned nwaiting);
    /*
     * A registration of @n memory ranges that waited (for @q's requests
     * in flight, pfbd_queue_register_memory()'s -EINPROGRESS, or for its
     * next request, pfbd_queue_register_memory_later()) was made: @ret is
     * its result, as pfbd_queue_register_memory() would return it
     */
    void (*memory_registered)(void *opaque, PfbdQueue *q, unsigned n,
                              int ret);
} PfbdTraceOps;

typedef struct PfbdOpenOptions {
    bool read_only;         /* open without write access */
    const char *pool_dir;   /* directory for bare volume names, or NULL */
    /*
     * Each queue may move between threads, with requests in flight: the
     * caller still serializes the calls on a queue, but not from one
     * thread (a QEMU main loop, which any thread holding the BQL may
     * run).  Without it a queue may only move while idle, and engines
     * may bind it to its thread (file: a single-issuer io_uring whose
     * completions wait for that thread).
     */
    bool any_thread;
    /*
     * file: the CPUs the io_uring workers (io-wq) of every queue may run
     * on, a list like "0,2-3" (IORING_REGISTER_IOWQ_AFF); NULL: those of
     * the thread that submits.  A CPU that is not online is refused at
     * open, as is the option with other engines.
     */
    const char *iowq_cpus;
    /*
     * Resolves a secret that the spec names instead of giving its value
     * (rbd: "key-secret=ID"): store a malloc'ed copy of the value of
     * secret @id in *@valuep and return 0, or return a negative errno and
     * store a malloc'ed message in *@errmsg.  Called during
     * pfbd_volume_open() only, with @secret_opaque.  NULL: specs that name
     * a secret are refused.
     */
    int (*secret_lookup)(void *opaque, const char *id, char **valuep,
                         char **errmsg);
    void *secret_opaque;
    /* Tracing of the volume's queues (see PfbdTraceOps), or NULL */
    const PfbdTraceOps *trace;
    void *trace_opaque;
} PfbdOpenOptions;

typedef struct PfbdVolumeInfo {
    const char *engine;     /* "file", "null", ... (static string) */
    uint64_t size;          /* bytes, a multiple of block_size */
    /*
     * The volume's own block: offsets and lengths are multiples of it (or
     * of the larger one of pfbd_volume_set_block_size())
     */
    uint32_t block_size;
    uint32_t mem_align;     /* buffer alignment served without bouncing */
    uint32_t caps;          /* PFBD_CAP_* */
    bool read_only;
} PfbdVolumeInfo;

/*
 * Completion callback: @ret is 0 on success or a negative errno: the
 * engine's error, or the host's (-ENOMEM for a bounce buffer), never one
 * of the request's own faults (pfbd_submit() refuses those).  Runs in the
 * thread that owns the queue, from pfbd_queue_do_io() or
 * pfbd_queue_drain().  It may call pfbd_submit() on the same queue.
 */
typedef void PfbdCompletionFunc(void *opaque, int ret);

/**
 * pfbd_volume_open: open the volume named by @spec
 *
 * @spec is one of:
 *   "file:PATH"  a regular file or block device, served with io_uring and
 *                O_DIRECT (buffered I/O where the filesystem refuses
 *                O_DIRECT);
 *   "rbd:POOL/[NS/]IMAGE[@SNAP][:conf=PATH][:id=USER][:KEY=VALUE]..."
 *                a Ceph RBD image through librbd (when built with it);
 *                a snapshot opens read-only; KEY=VALUE are Ceph options;
 *   "null:SIZE[:completion_nsec=N][:flush_eagain=N][:complete_errno=N]"
 *                a volume that completes every request without moving data
 *                (reads are not zeroed), at once or N nanoseconds after
 *                the flush that sent it; SIZE takes K/M/G/T suffixes
 *                (powers of 1024), e.g. "null:1G";
 *   "NAME"       a bare name (letters, digits, '.', '_', '-'; not starting
 *                with '.') resolved as the file @opts->pool_dir/NAME, or
 *                $PFBD_POOL_DIR/NAME, or /var/lib/pfbd/NAME.
 *
 * @opts may be NULL (read-write, default pool).  On success stores the
 * volume in @volp and returns 0.  On failure returns a negative errno and,
 * if @errmsg is not NULL, stores a malloc'ed message naming the culprit
 * (free it with free()).
 */
int pfbd_volume_open(const char *spec, const PfbdOpenOptions *opts,
                     PfbdVolume **volp, char **errmsg);

/**
 * pfbd_volume_adopt: give @vol, opened by another party (in a worker
 * thread, ahead of its user), the options of @opts that concern the user
 * of its queues: any_thread, trace and trace_opaque (the others are those
 * of the open, and stay).  @opts may be NULL (none of them).  Only while
 * @vol has no queue: returns 0, or -EBUSY.
 */
int pfbd_volume_adopt(PfbdVolume *vol, const PfbdOpenOptions *opts);

/**
 * pfbd_volume_close: close @vol; every queue must have been freed.
 * @vol may be NULL.
 */
void pfbd_volume_close(PfbdVolume *vol);

/*
 * pfbd_spec_redact: @spec as it may be shown (in messages, logs, over
 * QMP): the value of every "key=" option, a secret, replaced by "***".
 * Returns a malloc'ed string, or NULL when out of memory.  Every message
 * of pfbd_volume_open() shows the spec this way.
 */
char *pfbd_spec_redact(const char *spec);

/**
 * pfbd_volume_get_info: fill @info with the volume's geometry and caps.
 */
void pfbd_volume_get_info(PfbdVolume *vol, PfbdVolumeInfo *info);

/*
 * pfbd_volume_get_file_fd: the file descriptor of the local file or block
 * device that holds the volume's data (the file engine), for the caller to
 * take locks on the image file with it (QEMU's image locks).  Returns the
 * fd, or -ENOTSUP where the volume is not a local file.  The fd belongs to
 * the volume and lives as long as it: do not close it, and do no I/O on it.
 */
int pfbd_volume_get_file_fd(PfbdVolume *vol);

/**
 * pfbd_volume_set_block_size: make @block_size, a multiple of the
 * volume's own block size (a user's larger logical block), the unit of
 * the volume: pfbd_submit() refuses offsets and lengths that are not
 * multiples of it, and the size is rounded down to it (now and by
 * pfbd_volume_refresh_size()).  PfbdVolumeInfo.block_size stays the
 * volume's own.  Only while @vol has no queue.  Returns 0, -EINVAL when
 * @block_size is not a power of two multiple of the volume's block size or
 * the volume is smaller than one such block (nothing changes then), or
 * -EBUSY.
 */
int pfbd_volume_set_block_size(PfbdVolume *vol, uint32_t block_size);

/**
 * pfbd_volume_refresh_size: re-read the size of the backing store, rounded
 * down to the volume's block size (pfbd_volume_set_block_size())
 *
 * Returns 0 and updates what pfbd_volume_get_info() reports and what
 * pfbd_submit() checks ranges against, or a negative errno with nothing
 * changed: -EINVAL when the store is now smaller than one block.  Safe
 * while queues of the volume have requests in flight; a request checked
 * against the old size may still complete, or fail in the engine.
 */
int pfbd_volume_refresh_size(PfbdVolume *vol);

/**
 * pfbd_queue_new: create a submission/completion context on @vol
 *
 * @depth is the most requests the engine has in flight at once (at least
 * 1); more wait in the queue.
 * Returns 0 and stores the queue in @qp, or a negative errno.
 */
int pfbd_queue_new(PfbdVolume *vol, unsigned depth, PfbdQueue **qp);

/**
 * pfbd_queue_free: free @q.  No request may be in flight (drain first).
 * @q may be NULL.
 */
void pfbd_queue_free(PfbdQueue *q);

/**
 * pfbd_queue_get_fd: the queue's completion notifier
 *
 * Returns a file descriptor to poll for POLLIN, the same one for the
 * queue's life.  It is level-triggered: readable while completions may be
 * ready, and pfbd_queue_do_io() clears it (do not read it: it need not be
 * an eventfd).  A wakeup need not find anything ready.  It says nothing of
 * requests that pfbd_submit() took: call pfbd_queue_do_io() after
 * submitting, which also takes what completed during its own submit.  The
 * fd belongs to the queue: do not close it.
 */
int pfbd_queue_get_fd(PfbdQueue *q);

/**
 * pfbd_queue_register_memory: the memory @q's buffers will mostly lie in
 *
 * @iov, @n: ranges of the caller's address space (@n 0: none).  An engine
 * that can (file: io_uring fixed buffers) pins them and sends READ and
 * WRITE requests whose one buffer lies inside a range without mapping it
 * per request; other buffers work as before.  This replaces the previous
 * ranges.  While registered, a range must stay mapped to the same memory:
 * memory that is unmapped, remapped or discarded (MADV_DONTNEED) under a
 * registration is not what requests read into or write from.  Unregister
 * (@n 0) first; that always stops the use of the ranges, even when it
 * fails, and may be done with requests in flight.  Call it from the
 * queue's thread, or before the queue's first request.
 *
 * With requests in flight the engine cannot register (io_uring): @n > 0
 * then copies @iov and returns -EINPROGRESS, and the queue sends no new
 * request until those in flight have completed; pfbd_queue_do_io() then
 * registers the ranges, reports the result to PfbdTraceOps.memory_registered
 * and sends what waited.  A later call replaces a registration that waits.
 *
 * Returns 0, or a negative errno, after which no range is registered
 * (except with -EINPROGRESS):
 *   -ENOTSUP  the engine has no such registration (null, rbd)
 *   -EINPROGRESS  @n > 0 and requests are in flight: see above
 *   -ENOMEM   the memory cannot be pinned (RLIMIT_MEMLOCK)
 *   -EFAULT   a range is not plain memory (e.g. read-only, or a file
 *             mapping the kernel cannot pin)
 */
int pfbd_queue_register_memory(PfbdQueue *q, const struct iovec *iov,
                               unsigned n);

/**
 * pfbd_queue_register_memory_later: as pfbd_queue_register_memory(), but
 * the registration (and its pinning) is made by pfbd_queue_do_io(),
 * before the queue sends its next request (once those in flight have
 * completed): for a caller that cannot wait for it now.  @n 0 unregisters
 * at once.  The result goes to PfbdTraceOps.memory_registered.  Returns
 * 0, -ENOTSUP, or -ENOMEM with no range registered.
 */
int pfbd_queue_register_memory_later(PfbdQueue *q, const struct iovec *iov,
                                     unsigned n);

/**
 * pfbd_queue_set_bounce_limit: bound the bounce buffers of @q
 *
 * An engine that copies buffers it cannot use in place (file: misaligned
 * for O_DIRECT) holds at most @bytes of such copies for the requests of
 * @q in flight at once: a request that would need more waits in the
 * queue, and the requests after it too, until requests holding copies
 * complete.  A request is always sent while no copy is held, so one
 * larger than @bytes still goes through.  0, the default, means no
 * limit.  Call it from the queue's thread, or before the queue's first
 * request.
 */
void pfbd_queue_set_bounce_limit(PfbdQueue *q, uint64_t bytes);

/**
 * pfbd_submit: queue one request on @q
 *
 * @op:     the operation
 * @offset: byte offset, a multiple of the volume's block size
 * @iov, @iovcnt: the data buffers for READ and WRITE (NULL/0 otherwise);
 *          they are used in place (zero-copy) when their addresses and
 *          lengths are multiples of mem_align, else bounced.  @iov and the
 *          buffers must stay valid until the callback runs.
 * @len:    the byte count: the total of @iov for READ/WRITE, the range
 *          for DISCARD/WRITE_ZEROES, 0 for FLUSH; a multiple of the
 *          volume's block size.  0 for the others moves nothing: the
 *          request is checked, and completes with success (a virtio-blk
 *          request without data buffers).
 * @flags:  PFBD_REQ_* flags
 * @cb, @opaque: completion callback, called exactly once if this returns 0
 *
 * The request reaches the engine at the next pfbd_queue_do_io(), or waits
 * there, oldest first, while the queue has no room for it: @depth
 * requests in flight, its bounce limit, a memory registration waiting.
 * Returns 0 when the request was taken, or a negative errno when it is
 * refused, and never calls @cb then:
 *   -EINVAL   misaligned offset or length, length not matching @iov, or
 *             unknown op or flags
 *   -ERANGE   the range goes beyond the end of the volume
 *   -EROFS    write, discard or write-zeroes on a read-only volume
 *   -ENOTSUP  the volume does not implement @op
 *   -ENOMEM   out of memory (for a request that has to wait)
 * Errors of the engine and of the host come to @cb.
 */
int pfbd_submit(PfbdQueue *q, PfbdOp op, uint64_t offset,
                const struct iovec *iov, int iovcnt, uint64_t len,
                unsigned flags, PfbdCompletionFunc *cb, void *opaque);

/* What one pfbd_queue_do_io() call did, for the caller's statistics */
typedef struct PfbdIoCounts {
    /* Engine submissions that sent requests (a system call for io_uring) */
    unsigned sent;
    unsigned completed;     /* callbacks run */
} PfbdIoCounts;

/**
 * pfbd_queue_do_io: the work of @q's thread for one wake-up
 *
 * Sends what is queued (new requests, and those that waited for room) to
 * the engine, runs the callbacks of what has completed, sends what their
 * room lets through and what the callbacks submitted, and goes on while
 * completions are ready.  Runs at most @max_completions callbacks (0: no
 * limit); blocks until at least @min_completions have run, or nothing is
 * in flight.  Stores what it did in *@counts (may be NULL).
 *
 * Returns 0, or a negative errno when the engine could not send what is
 * queued (io_uring_submit()'s -EAGAIN or -EBUSY): the requests stay queued
 * and the queue's fd need not say when to try again: call it again
 * shortly.
 */
int pfbd_queue_do_io(PfbdQueue *q, unsigned min_completions,
                     unsigned max_completions, PfbdIoCounts *counts);

/**
 * pfbd_queue_completions_ready: true if pfbd_queue_do_io() would complete
 * at least one request now.  Cheap (no system call): for polling.
 */
bool pfbd_queue_completions_ready(PfbdQueue *q);

/**
 * pfbd_queue_inflight: the number of requests submitted whose callback has
 * not run yet (in the engine, or waiting for room).
 */
unsigned pfbd_queue_inflight(PfbdQueue *q);

/**
 * pfbd_queue_drain: block until every request submitted has completed,
 * running their callbacks (including requests submitted by those
 * callbacks).
 */
void pfbd_queue_drain(PfbdQueue *q);

#endif /* BLOCK_PFBD_H */

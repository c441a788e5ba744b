/*
 * virtio-blk-pfbd: virtio-blk with a per-virtqueue native data plane
 *
 * Copyright (c) 2026 pfbd-qemu developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Parts keep the logic of upstream code, and its notices:
 * - starting and stopping the ioeventfds, the IOThread mapping
 *   (iothread-vq-mapping), the config space, the request checks and the
 *   rerror/werror policy follow hw/block/virtio-blk.c:
 *     Copyright IBM, Corp. 2007
 *     Authors: Anthony Liguori <aliguori@us.ibm.com>
 *     This work is licensed under the terms of the GNU GPL, version 2.
 *     See the COPYING file in the top-level directory.
 * The error action and the BLOCK_IO_ERROR event are those of
 * block/block-backend.c, through block_error_action_of() and
 * block_error_action_report(), which blk_error_action() uses too.
 *
 * The guest sees an ordinary virtio-blk disk.  Each virtqueue is served in
 * its own AioContext (an IOThread, or the main loop): the ioeventfd handler
 * pops a batch of requests, submits them to the virtqueue's libpfbd queue
 * with one engine submit, and the engine's completion fd, registered in
 * the same AioContext, completes them to the guest with one notification
 * per batch.  There is no BlockBackend, no coroutine and no bottom half on
 * the data path, and per-queue state is touched by one thread only.
 *
 * This file is the data path and the device's lifecycle; the statistics
 * are reported by virtio-blk-pfbd-stats.c, and the guest RAM is registered
 * with the engine (fixed-buffers=on) by virtio-blk-pfbd-ram.c.
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qemu/iov.h"
#include "qemu/units.h"
#include "qemu/error-report.h"
#include "qemu/main-loop.h"
#include "qemu/module.h"
#include "qemu/rcu.h"
#include "qemu/timer.h"
#include "qapi/visitor.h"
#include "block/aio-wait.h"
#include "hw/qdev-properties.h"
#include "hw/qdev-properties-system.h"
#include "hw/virtio/virtio-blk-pfbd.h"
#include "hw/virtio/virtio-blk-common.h"
#include "hw/virtio/virtio-bus.h"
#include "hw/virtio/virtio-access.h"
#include "hw/virtio/iothread-vq-mapping.h"
#include "exec/memory.h"
#include "exec/address-spaces.h"
#include "system/system.h"
#include "system/runstate.h"
#include "system/block-backend-io.h"
#include "block/raw-aio.h"
#include "crypto/secret_common.h"
#include "migration/misc.h"
#include "migration/qemu-file-types.h"
#include "trace.h"

/* Largest request, in sectors, whose byte count fits an int */
#define VIRTIO_BLK_PFBD_MAX_SECTORS (INT32_MAX >> BDRV_SECTOR_BITS)

/*
 * The largest segment the driver may use (VIRTIO_BLK_F_SIZE_MAX): with
 * seg_max it bounds the data of one request, and so what one request may
 * make the engine bounce (docs/user-guide.rst, "What a guest can make
 * QEMU allocate").  Linux's own default segment size.
 */
#define VIRTIO_BLK_PFBD_SIZE_MAX (64 * KiB)

/* Only the thread that serves the queue writes its statistics */
static inline void virtio_blk_pfbd_stat_add(aligned_uint64_t *stat,
                                            uint64_t n)
{
    qatomic_set_u64(stat, *stat + n);
}

static VirtIOBlockPfbdReqClass virtio_blk_pfbd_req_class(uint32_t type)
{
    switch (type & ~(VIRTIO_BLK_T_OUT | VIRTIO_BLK_T_BARRIER)) {
    case VIRTIO_BLK_T_IN:
        return type & VIRTIO_BLK_T_OUT ? VIRTIO_BLK_PFBD_REQ_WRITE :
                                         VIRTIO_BLK_PFBD_REQ_READ;
    case VIRTIO_BLK_T_FLUSH:
        return VIRTIO_BLK_PFBD_REQ_FLUSH;
    case VIRTIO_BLK_T_GET_ID:
        return VIRTIO_BLK_PFBD_REQ_GET_ID;
    case VIRTIO_BLK_T_DISCARD & ~VIRTIO_BLK_T_OUT:
        return VIRTIO_BLK_PFBD_REQ_DISCARD;
    case VIRTIO_BLK_T_WRITE_ZEROES & ~VIRTIO_BLK_T_OUT:
        return VIRTIO_BLK_PFBD_REQ_WRITE_ZEROES;
    default:
        return VIRTIO_BLK_PFBD_REQ_UNSUPPORTED;
    }
}

static void virtio_blk_pfbd_account(VirtIOBlockPfbdReq *req, uint8_t status)
{
    VirtIOBlockPfbdQueueStats *st = &req->q->stats;
    VirtIOBlockPfbdReqClass cls = virtio_blk_pfbd_req_class(req->type);
    uint64_t us = (req->q->now_ns - req->start_ns) / SCALE_US;
    unsigned int bucket = us < 2 ? 0 : 63 - clz64(us);

    virtio_blk_pfbd_stat_add(&st->requests[cls], 1);
    if (status == VIRTIO_BLK_S_OK) {
        if (cls == VIRTIO_BLK_PFBD_REQ_READ) {
            virtio_blk_pfbd_stat_add(&st->bytes_read, req->bytes);
        } else if (cls == VIRTIO_BLK_PFBD_REQ_WRITE) {
            virtio_blk_pfbd_stat_add(&st->bytes_written, req->bytes);
        }
    } else if (status == VIRTIO_BLK_S_IOERR) {
        virtio_blk_pfbd_stat_add(&st->errors, 1);
    }
    bucket = MIN(bucket, VIRTIO_BLK_PFBD_LAT_BUCKETS - 1);
    virtio_blk_pfbd_stat_add(&st->latency[bucket], 1);
    qatomic_set_u64(&st->in_flight, st->in_flight - 1);
}

/*
 * Latency statistics read the clock once per handler run, not twice per
 * request: a request's latency is counted from the run that popped it to
 * the run that completed it.
 */
static void virtio_blk_pfbd_clock(VirtIOBlockPfbdQueue *q)
{
    q->now_ns = get_clock();
}

/*
 * The capacity the guest sees, in sectors: the size of the volume, which
 * libpfbd keeps in the device's logical blocks (and checks requests
 * against); 0 without a volume
 */
static uint64_t virtio_blk_pfbd_capacity(VirtIOBlockPfbd *s)
{
    PfbdVolumeInfo info;

    if (!s->volume) {
        return 0;
    }
    pfbd_volume_get_info(s->volume, &info);
    return info.size >> BDRV_SECTOR_BITS;
}

/*
 * Fill @req's used ring entry.  The used index moves, and the guest is
 * notified, once at the end of the batch: virtio_blk_pfbd_notify().
 */
static void virtio_blk_pfbd_req_complete(VirtIOBlockPfbdReq *req,
                                         uint8_t status)
{
    VirtIOBlockPfbdQueue *q = req->q;

    trace_virtio_blk_pfbd_req_complete(q->s, q->index, req, status);
    virtio_blk_pfbd_account(req, status);

    stb_p(req->status, status);
    RCU_READ_LOCK_GUARD();
    virtqueue_fill(q->vq, &req->elem, req->in_len, q->used_pending++);
    g_free(req->iov_copy);
    g_free(req);
}

/*
 * Publish the used ring entries of the batch and notify the guest.  Every
 * path that completes requests ends with this, before it returns to the
 * event loop.
 */
static void virtio_blk_pfbd_notify(VirtIOBlockPfbdQueue *q)
{
    VirtIODevice *vdev = VIRTIO_DEVICE(q->s);
    bool sent;

    if (!q->used_pending) {
        return;
    }
    RCU_READ_LOCK_GUARD();
    virtqueue_flush(q->vq, q->used_pending);
    q->used_pending = 0;
    trace_virtio_blk_pfbd_notify(q->s, q->index);
    if (qemu_in_iothread()) {
        sent = virtio_notify_irqfd(vdev, q->vq);
    } else {
        sent = virtio_notify(vdev, q->vq);
    }
    virtio_blk_pfbd_stat_add(sent ? &q->stats.notifies :
                             &q->stats.notifies_suppressed, 1);
}

/* What rerror/werror says to do about @error (positive errno) */
static BlockErrorAction virtio_blk_pfbd_error_action(VirtIOBlockPfbd *s,
                                                     bool is_read, int error)
{
    return block_error_action_of(is_read ? s->conf.rerror : s->conf.werror,
                                 error);
}

/*
 * Tell management (BLOCK_IO_ERROR, with the device's QOM path and no
 * drive) and, for a stop, pause the VM with the io-error run state, as
 * blk_error_action() does for stock devices.
 *
 * Context: any thread
 */
static void virtio_blk_pfbd_error_event(VirtIOBlockPfbd *s,
                                        BlockErrorAction action,
                                        bool is_read, int error)
{
    g_autofree char *path = object_get_canonical_path(OBJECT(s));

    block_error_action_report(path, "", NULL, true, action, is_read, error);
}

/*
 * The one mapping of libpfbd's errors to the guest's status: @req failed
 * with @ret, a negative errno.  What pfbd_submit() refused (@refused) is
 * the request's own fault: an I/O error for the guest, an unsupported
 * operation, or (-ENOMEM) the host's.  Errors of the engine and of the
 * host are for rerror/werror (a failed disk, a full file system, a lost
 * cluster).
 */
static void virtio_blk_pfbd_req_failed(VirtIOBlockPfbdReq *req, int ret,
                                       bool refused)
{
    VirtIOBlockPfbdQueue *q = req->q;
    uint8_t status = VIRTIO_BLK_S_IOERR;
    BlockErrorAction action;
    bool is_read;

    trace_virtio_blk_pfbd_io_error(q->s, q->index, req, req->type,
                                   req->sector, ret);
    if (ret == -ENOTSUP) {
        status = VIRTIO_BLK_S_UNSUPP;
    } else if (!refused || ret == -ENOMEM) {
        /* Flush, discard and write-zeroes count as writes */
        is_read = req->op == PFBD_OP_READ;
        action = virtio_blk_pfbd_error_action(q->s, is_read, -ret);
        trace_virtio_blk_pfbd_error_action(q->s, q->index, req, -ret,
                                           action);
        virtio_blk_pfbd_error_event(q->s, action, is_read, -ret);
        if (action == BLOCK_ERROR_ACTION_STOP) {
            req->next_parked = q->parked;
            q->parked = req;
            return;
        }
        if (action == BLOCK_ERROR_ACTION_IGNORE) {
            status = VIRTIO_BLK_S_OK;
        }
    }
    virtio_blk_pfbd_req_complete(req, status);
}

/* The engine's answer to @req: 0, or a negative errno */
static void virtio_blk_pfbd_engine_cb(void *opaque, int ret)
{
    VirtIOBlockPfbdReq *req = opaque;

    if (ret < 0) {
        virtio_blk_pfbd_req_failed(req, ret, false);
        return;
    }
    virtio_blk_pfbd_req_complete(req, VIRTIO_BLK_S_OK);
}

/*
 * Hand @req to libpfbd, which checks it against the volume (range,
 * alignment to the logical block size, read-only) and sends it with the
 * batch at virtio_blk_pfbd_do_io(), or keeps it until the engine has room
 * (the driver may size its ring above the engine queue's depth, and
 * bounce buffers are bounded): back-pressure, not an error.
 */
static void virtio_blk_pfbd_submit(VirtIOBlockPfbdReq *req, PfbdOp op,
                                   const struct iovec *iov, int iovcnt,
                                   uint64_t bytes, unsigned flags)
{
    VirtIOBlockPfbdQueue *q = req->q;
    int ret;

    req->op = op;
    req->iov = iov;
    req->iovcnt = iovcnt;
    req->len = bytes;
    req->flags = flags;
    trace_virtio_blk_pfbd_req(q->s, q->index, req, req->type, req->sector,
                              bytes);
    /* The one check libpfbd cannot make: the sector's byte offset */
    if (req->sector > UINT64_MAX >> BDRV_SECTOR_BITS) {
        ret = -ERANGE;
    } else {
        ret = pfbd_submit(q->pq, op, req->sector << BDRV_SECTOR_BITS, iov,
                          iovcnt, bytes, flags, virtio_blk_pfbd_engine_cb,
                          req);
    }
    if (ret < 0) {
        virtio_blk_pfbd_req_failed(req, ret, true);
    }
}

/*
 * The data buffers of a request are @iov minus @front bytes at the start
 * and @back bytes at the end.  When the cuts fall on element boundaries, as
 * they do for every driver that puts the header and the status byte in
 * descriptors of their own, the guest's iovec is used as it is; otherwise a
 * trimmed copy is made.
 */
static void virtio_blk_pfbd_data_iov(VirtIOBlockPfbdReq *req,
                                     struct iovec *iov, unsigned int num,
                                     size_t front, size_t back,
                                     struct iovec **data, unsigned int *cnt)
{
    if (front && num && iov[0].iov_len == front) {
        iov++;
        num--;
        front = 0;
    }
    if (back && num && iov[num - 1].iov_len == back) {
        num--;
        back = 0;
    }
    if (front || back) {
        struct iovec *copy = g_memdup2(iov, num * sizeof(*iov));

        req->iov_copy = copy;
        iov_discard_front(&copy, &num, front);
        iov_discard_back(copy, &num, back);
        iov = copy;
    }
    *data = iov;
    *cnt = num;
}

static void virtio_blk_pfbd_handle_rw(VirtIOBlockPfbdReq *req, bool is_write)
{
    VirtIOBlockPfbd *s = req->q->s;
    struct iovec *iov;
    unsigned int cnt;
    uint64_t bytes;

    if (is_write) {
        virtio_blk_pfbd_data_iov(req, req->elem.out_sg, req->elem.out_num,
                                 sizeof(struct virtio_blk_outhdr), 0,
                                 &iov, &cnt);
    } else {
        virtio_blk_pfbd_data_iov(req, req->elem.in_sg, req->elem.in_num,
                                 0, 1, &iov, &cnt);
    }
    bytes = iov_size(iov, cnt);
    req->bytes = bytes;

    /* What the device told the guest (seg_max, size_max) */
    if (bytes > s->max_request_bytes) {
        virtio_blk_pfbd_req_complete(req, VIRTIO_BLK_S_IOERR);
        return;
    }
    virtio_blk_pfbd_submit(req, is_write ? PFBD_OP_WRITE : PFBD_OP_READ,
                           iov, cnt, bytes,
                           is_write && !qatomic_read(&s->writeback) ?
                           PFBD_REQ_FUA : 0);
}

static void virtio_blk_pfbd_handle_get_id(VirtIOBlockPfbdReq *req)
{
    VirtIOBlockPfbd *s = req->q->s;
    const char *serial = s->conf.serial ? s->conf.serial : "";
    size_t avail = iov_size(req->elem.in_sg, req->elem.in_num) - 1;
    size_t size;

    /* NUL-terminated only when shorter than the 20-byte field */
    size = MIN(strlen(serial) + 1, MIN(avail, VIRTIO_BLK_ID_BYTES));
    iov_from_buf(req->elem.in_sg, req->elem.in_num, 0, serial, size);
    virtio_blk_pfbd_req_complete(req, VIRTIO_BLK_S_OK);
}

/* Returns false on a malformed request (virtio_error() was called) */
static bool virtio_blk_pfbd_handle_discard_write_zeroes(
    VirtIOBlockPfbdReq *req, bool is_write_zeroes)
{
    VirtIOBlockPfbd *s = req->q->s;
    VirtIODevice *vdev = VIRTIO_DEVICE(s);
    struct virtio_blk_discard_write_zeroes dwz;
    size_t out_len = iov_size(req->elem.out_sg, req->elem.out_num) -
                     sizeof(struct virtio_blk_outhdr);
    uint32_t num_sectors, flags, max_sectors;
    uint64_t feature = is_write_zeroes ? VIRTIO_BLK_F_WRITE_ZEROES :
                                         VIRTIO_BLK_F_DISCARD;

    /* One segment only (max_discard_seg = max_write_zeroes_seg = 1) */
    if (!virtio_has_feature(s->host_features, feature) ||
        !(req->type & VIRTIO_BLK_T_OUT) || out_len > sizeof(dwz)) {
        virtio_blk_pfbd_req_complete(req, VIRTIO_BLK_S_UNSUPP);
        return true;
    }
    if (iov_to_buf(req->elem.out_sg, req->elem.out_num,
                   sizeof(struct virtio_blk_outhdr),
                   &dwz, sizeof(dwz)) != sizeof(dwz)) {
        virtio_error(vdev, "virtio-blk-pfbd discard/write_zeroes header"
                     " too short");
        return false;
    }

    req->sector = virtio_ldq_p(vdev, &dwz.sector);
    num_sectors = virtio_ldl_p(vdev, &dwz.num_sectors);
    flags = virtio_ldl_p(vdev, &dwz.flags);
    max_sectors = is_write_zeroes ? s->conf.max_write_zeroes_sectors :
                                    s->conf.max_discard_sectors;

    /* Unknown flags, and UNMAP on a discard, are unsupported */
    if ((flags & ~VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP) ||
        (!is_write_zeroes && (flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP))) {
        virtio_blk_pfbd_req_complete(req, VIRTIO_BLK_S_UNSUPP);
        return true;
    }
    /* What the device told the guest; libpfbd checks the rest */
    if (num_sectors > max_sectors) {
        virtio_blk_pfbd_req_complete(req, VIRTIO_BLK_S_IOERR);
        return true;
    }
    virtio_blk_pfbd_submit(req, is_write_zeroes ? PFBD_OP_WRITE_ZEROES :
                                                  PFBD_OP_DISCARD,
                           NULL, 0, (uint64_t)num_sectors << BDRV_SECTOR_BITS,
                           flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP ?
                           PFBD_REQ_UNMAP : 0);
    return true;
}

/*
 * Parse and start one request.  Returns false when the request is
 * malformed; virtio_error() has then been called and @req still belongs to
 * the caller.
 */
static bool virtio_blk_pfbd_handle_request(VirtIOBlockPfbdReq *req)
{
    VirtIOBlockPfbd *s = req->q->s;
    VirtIODevice *vdev = VIRTIO_DEVICE(s);
    VirtQueueElement *elem = &req->elem;
    struct virtio_blk_outhdr hdr;
    size_t in_len;

    if (elem->out_num < 1 || elem->in_num < 1) {
        virtio_error(vdev, "virtio-blk-pfbd missing headers");
        return false;
    }
    /*
     * Like stock virtio-blk, the used length is all the driver gave us to
     * write: virtqueue_fill() marks that much dirty for migration, and the
     * status byte is its last byte.  It is 32 bits wide.
     */
    in_len = iov_size(elem->in_sg, elem->in_num);
    if (in_len > UINT32_MAX) {
        virtio_error(vdev, "virtio-blk-pfbd request has more than 4 GiB of "
                     "buffers to write");
        return false;
    }
    if (iov_to_buf(elem->out_sg, elem->out_num, 0, &hdr, sizeof(hdr)) !=
        sizeof(hdr)) {
        virtio_error(vdev, "virtio-blk-pfbd request outhdr too short");
        return false;
    }
    if (elem->in_sg[elem->in_num - 1].iov_len < 1) {
        virtio_error(vdev, "virtio-blk-pfbd request inhdr too short");
        return false;
    }

    /* The status byte is the last byte the driver gave us */
    req->status = (uint8_t *)elem->in_sg[elem->in_num - 1].iov_base +
                  elem->in_sg[elem->in_num - 1].iov_len - 1;
    req->in_len = in_len;
    req->type = virtio_ldl_p(vdev, &hdr.type);
    req->sector = virtio_ldq_p(vdev, &hdr.sector);

    /*
     * VIRTIO_BLK_T_OUT gives the direction; VIRTIO_BLK_T_BARRIER has never
     * been offered, but like stock virtio-blk we ignore it.
     */
    switch (req->type & ~(VIRTIO_BLK_T_OUT | VIRTIO_BLK_T_BARRIER)) {
    case VIRTIO_BLK_T_IN:
        virtio_blk_pfbd_handle_rw(req, req->type & VIRTIO_BLK_T_OUT);
        break;
    case VIRTIO_BLK_T_FLUSH:
        virtio_blk_pfbd_submit(req, PFBD_OP_FLUSH, NULL, 0, 0, 0);
        break;
    case VIRTIO_BLK_T_GET_ID:
        virtio_blk_pfbd_handle_get_id(req);
        break;
    case VIRTIO_BLK_T_DISCARD & ~VIRTIO_BLK_T_OUT:
        return virtio_blk_pfbd_handle_discard_write_zeroes(req, false);
    case VIRTIO_BLK_T_WRITE_ZEROES & ~VIRTIO_BLK_T_OUT:
        return virtio_blk_pfbd_handle_discard_write_zeroes(req, true);
    default:
        virtio_blk_pfbd_req_complete(req, VIRTIO_BLK_S_UNSUPP);
        break;
    }
    return true;
}

/*
 * The one libpfbd call of a wake-up: send what was submitted, complete
 * what the engine completed (libpfbd sends what waited for the room that
 * made), then tell the guest.  Every path that submits or reaps ends here.
 *
 * Context: the virtqueue's AioContext, RCU read lock held (see
 * virtio_blk_pfbd_handle_vq()), q->now_ns current
 */
static void virtio_blk_pfbd_do_io(VirtIOBlockPfbdQueue *q)
{
    PfbdIoCounts counts;
    int ret;

    ret = pfbd_queue_do_io(q->pq, 0, 0, &counts);
    trace_virtio_blk_pfbd_do_io(q->s, q->index, counts.sent,
                                counts.completed, ret);
    if (counts.sent) {
        virtio_blk_pfbd_stat_add(&q->stats.submits, counts.sent);
    }
    if (ret < 0) {
        /*
         * The engine could not send (io_uring_submit(): -EAGAIN, -EBUSY);
         * the requests stay queued.  The guest may not kick again before
         * they complete: try again shortly.
         */
        timer_mod(q->retry_timer, qemu_clock_get_ms(QEMU_CLOCK_REALTIME) + 1);
    }
    virtio_blk_pfbd_notify(q);
}

/*
 * The queue's completion fd, its poll handler, and the retry timer
 *
 * Context: the virtqueue's AioContext
 */
static void virtio_blk_pfbd_wake(VirtIOBlockPfbdQueue *q)
{
    RCU_READ_LOCK_GUARD();
    virtio_blk_pfbd_clock(q);
    virtio_blk_pfbd_do_io(q);
}

static void virtio_blk_pfbd_retry(void *opaque)
{
    virtio_blk_pfbd_wake(opaque);
}

static void virtio_blk_pfbd_completion_read(EventNotifier *e)
{
    /* Level-triggered (pfbd_queue_get_fd()): the reap clears it */
    virtio_blk_pfbd_wake(container_of(e, VirtIOBlockPfbdQueue, completion));
}

/*
 * Give @req back to its virtqueue unanswered (a malformed request, or a
 * parked one that a reset or unplug drops) and free it
 */
static void virtio_blk_pfbd_req_detach(VirtIOBlockPfbdReq *req)
{
    VirtIOBlockPfbdQueue *q = req->q;

    qatomic_set_u64(&q->stats.in_flight, q->stats.in_flight - 1);
    virtqueue_detach_element(q->vq, &req->elem, 0);
    g_free(req->iov_copy);
    g_free(req);
}

static void virtio_blk_pfbd_handle_vq(VirtIOBlockPfbdQueue *q)
{
    VirtIOBlockPfbdQueueStats *st = &q->stats;
    /*
     * In the AioContext's polling mode notifications are off already, and
     * must stay off when we return: only toggle them when they are on.
     */
    bool suppress = virtio_queue_get_notification(q->vq);
    VirtIOBlockPfbdReq *req;
    unsigned int n = 0;

    if (unlikely(!st->thread_id)) {
        qatomic_set_i64(&st->thread_id, qemu_get_thread_id());
    }

    /*
     * virtqueue_pop(), address_space_map()/unmap() and virtqueue_push() each
     * take the RCU read lock; entered from depth 0 every call pays two full
     * memory barriers (smp_mb_placeholder() without membarrier), which was
     * a third of this thread's time.  Hold it across the batch so they nest.
     */
    RCU_READ_LOCK_GUARD();
    virtio_blk_pfbd_clock(q);

    do {
        if (suppress) {
            virtio_queue_set_notification(q->vq, 0);
        }
        while ((req = virtqueue_pop(q->vq, sizeof(VirtIOBlockPfbdReq)))) {
            req->q = q;
            req->iov_copy = NULL;
            req->bytes = 0;
            req->start_ns = q->now_ns;
            n++;
            qatomic_set_u64(&st->in_flight, st->in_flight + 1);
            if (st->in_flight > st->max_in_flight) {
                qatomic_set_u64(&st->max_in_flight, st->in_flight);
            }
            if (!virtio_blk_pfbd_handle_request(req)) {
                virtio_blk_pfbd_req_detach(req);
                break;
            }
        }
        if (suppress) {
            virtio_queue_set_notification(q->vq, 1);
        }
    } while (!virtio_queue_empty(q->vq) && !VIRTIO_DEVICE(q->s)->broken);

    trace_virtio_blk_pfbd_handle_vq(q->s, q->index, n);
    if (n) {
        virtio_blk_pfbd_stat_add(&st->batches, 1);
    }

    /* One engine submit for the whole batch */
    virtio_blk_pfbd_do_io(q);
}

static void virtio_blk_pfbd_handle_output(VirtIODevice *vdev, VirtQueue *vq)
{
    VirtIOBlockPfbd *s = VIRTIO_BLK_PFBD(vdev);

    if (!s->ioeventfd_started) {
        /*
         * Some guests kick before setting DRIVER_OK: start ioeventfd now;
         * attaching the host notifiers processes what is already queued.
         */
        if (!s->ioeventfd_disabled) {
            virtio_device_start_ioeventfd(vdev);
        }
        if (!s->ioeventfd_started) {
            virtio_error(vdev, "virtio-blk-pfbd cannot serve requests "
                         "without ioeventfd");
        }
        return;
    }

    if (s->ioeventfd_stopping) {
        /*
         * virtio_bus_cleanup_host_notifier() runs us, in the main loop, for
         * a kick that came after the queue was drained: a vCPU kicks
         * through KVM's ioeventfd without the BQL, at any moment of the
         * stop.  Requests taken now would be in flight when the stop
         * returns, in a thread that does not own the queue.  Leave them in
         * the ring: a reset drops them, a restart kicks the queue.
         */
        return;
    }
    virtio_blk_pfbd_handle_vq(&s->queues[virtio_get_queue_index(vq)]);
}

static bool virtio_blk_pfbd_completion_poll(void *opaque)
{
    VirtIOBlockPfbdQueue *q = container_of(opaque, VirtIOBlockPfbdQueue,
                                           completion);

    return pfbd_queue_completions_ready(q->pq);
}

static void virtio_blk_pfbd_completion_poll_ready(EventNotifier *e)
{
    virtio_blk_pfbd_wake(container_of(e, VirtIOBlockPfbdQueue, completion));
}

/*
 * Send the requests parked by an error stop again, oldest first.
 *
 * Context: BH in the virtqueue's AioContext
 */
static void virtio_blk_pfbd_resubmit_bh(void *opaque)
{
    VirtIOBlockPfbdQueue *q = opaque;
    VirtIOBlockPfbdReq *list = NULL, *req;
    unsigned int n = 0;

    while (q->parked) {
        req = q->parked;
        q->parked = req->next_parked;
        req->next_parked = list;
        list = req;
        n++;
    }
    trace_virtio_blk_pfbd_resubmit(q->s, q->index, n);
    RCU_READ_LOCK_GUARD();
    virtio_blk_pfbd_clock(q);
    while (list) {
        req = list;
        list = req->next_parked;
        if (req->migrated) {
            /* Parked on the source of a migration: start it anew */
            req->migrated = false;
            req->start_ns = q->now_ns;
            if (!virtio_blk_pfbd_handle_request(req)) {
                virtio_blk_pfbd_req_detach(req);
            }
            continue;
        }
        virtio_blk_pfbd_submit(req, req->op, req->iov, req->iovcnt, req->len,
                               req->flags);
    }
    virtio_blk_pfbd_do_io(q);
}

/*
 * Image locks (file volumes): the locks of QEMU's file driver, with the
 * permissions stock virtio-blk asks for, so that other QEMUs and qemu-img
 * see this device as a user of the image.  As stock QEMU's images, they
 * pass from the source to the destination of a migration: the source
 * drops them when it sends the device state, the destination takes them
 * when its VM first runs (a failed migration takes them back).
 */
static bool virtio_blk_pfbd_take_locks(VirtIOBlockPfbd *s, Error **errp)
{
    uint64_t perm = BLK_PERM_CONSISTENT_READ;
    uint64_t shared = BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE_UNCHANGED |
                      BLK_PERM_RESIZE;

    if (!s->info.read_only) {
        perm |= BLK_PERM_WRITE;
    }
    if (s->conf.share_rw) {
        shared |= BLK_PERM_WRITE;
    }
    if (raw_lock_image_fd(pfbd_volume_get_file_fd(s->volume), perm, shared,
                          errp) < 0) {
        error_prepend(errp, "volume '%s': ", s->volume_shown);
        error_append_hint(errp, "Is another process using the image [%s]?\n",
                          s->volume_shown);
        return false;
    }
    s->locked = true;
    return true;
}

/*
 * The engine's io_uring instances hold the file as well, and a ring lets
 * go of it only after its fd is closed, in a kernel worker: the device
 * drops the locks itself, so that the image is free once it is gone.
 */
static void virtio_blk_pfbd_drop_locks(VirtIOBlockPfbd *s)
{
    if (s->locked) {
        raw_unlock_image_fd(pfbd_volume_get_file_fd(s->volume));
        s->locked = false;
    }
}

/* Take the locks that a migration or an incoming migration left off */
static void virtio_blk_pfbd_retake_locks(VirtIOBlockPfbd *s)
{
    Error *local_err = NULL;

    if (s->lock_exit.notify && !s->locked &&
        !virtio_blk_pfbd_take_locks(s, &local_err)) {
        /* The VM runs all the same, as with locking=off */
        error_append_hint(&local_err, "The image is not locked.\n");
        error_report_err(local_err);
    }
}

/* Context: exit(), from atexit() */
static void virtio_blk_pfbd_unlock_at_exit(Notifier *n, void *data)
{
    VirtIOBlockPfbd *s = container_of(n, VirtIOBlockPfbd, lock_exit);

    virtio_blk_pfbd_drop_locks(s);
}

/* Context: BQL held */
static int virtio_blk_pfbd_migration_notify(NotifierWithReturn *n,
                                            MigrationEvent *e, Error **errp)
{
    VirtIOBlockPfbd *s = container_of(n, VirtIOBlockPfbd, lock_migration);

    switch (e->type) {
    case MIG_EVENT_PRECOPY_SETUP:
        s->migrating = true;
        break;
    case MIG_EVENT_PRECOPY_DONE:
        /* The destination has the image now */
        s->migrating = false;
        break;
    case MIG_EVENT_PRECOPY_FAILED:
        s->migrating = false;
        virtio_blk_pfbd_retake_locks(s);
        break;
    default:
        break;
    }
    return 0;
}

/* Lock a volume in a local file as locking= says */
static bool virtio_blk_pfbd_lock_volume(VirtIOBlockPfbd *s, Error **errp)
{
    VirtIOBlockPfbdConf *conf = &s->conf;

    if (conf->locking == ON_OFF_AUTO_OFF) {
        return true;
    }
    if (pfbd_volume_get_file_fd(s->volume) < 0) {
        if (conf->locking == ON_OFF_AUTO_ON) {
            error_setg(errp, "locking=on: volume '%s' is on the %s engine, "
                       "which has no image file to lock", s->volume_shown,
                       s->info.engine);
            return false;
        }
        return true;
    }
    if (conf->locking == ON_OFF_AUTO_AUTO && !qemu_has_ofd_lock()) {
        return true;
    }
    /* The destination of a migration: the source holds them still */
    if (!runstate_check(RUN_STATE_INMIGRATE) &&
        !virtio_blk_pfbd_take_locks(s, errp)) {
        return false;
    }
    s->lock_exit.notify = virtio_blk_pfbd_unlock_at_exit;
    qemu_add_exit_notifier(&s->lock_exit);
    migration_add_notifier(&s->lock_migration,
                           virtio_blk_pfbd_migration_notify);
    return true;
}

/*
 * Drop the image locks and close the volume; if @give_back, a volume of
 * pfbd-volume-open goes back under its name instead (a failed realize)
 */
static void virtio_blk_pfbd_close_volume(VirtIOBlockPfbd *s, bool give_back)
{
    if (s->lock_exit.notify) {
        virtio_blk_pfbd_drop_locks(s);
        qemu_remove_exit_notifier(&s->lock_exit);
        s->lock_exit.notify = NULL;
        migration_remove_notifier(&s->lock_migration);
    }
    if (s->named && give_back) {
        virtio_blk_pfbd_give_back_volume(s->conf.volume + 1, s->named);
    } else {
        pfbd_volume_close(s->volume);
        if (s->named) {
            free(s->named->shown);
            g_free(s->named);
        }
    }
    s->named = NULL;
    s->volume = NULL;
    free(s->volume_shown);
    s->volume_shown = NULL;
}

/* Context: BQL held, after the virtio core's own handler */
static void virtio_blk_pfbd_vm_state_change(void *opaque, bool running,
                                            RunState state)
{
    VirtIOBlockPfbd *s = opaque;
    unsigned int i;

    if (!running) {
        return;
    }
    /* The destination of a migration, or a source that runs again */
    virtio_blk_pfbd_retake_locks(s);
    if (!s->ioeventfd_started) {
        return;
    }
    for (i = 0; i < s->conf.num_queues; i++) {
        if (s->queues[i].parked) {
            aio_wait_bh_oneshot(s->queues[i].ctx, virtio_blk_pfbd_resubmit_bh,
                                &s->queues[i]);
        }
    }
}

/*
 * Give the parked requests of @q back to its virtqueue unanswered (reset,
 * unplug).
 *
 * Context: BQL held, the queue stopped
 */
static void virtio_blk_pfbd_drop_queue_parked(VirtIOBlockPfbdQueue *q)
{
    VirtIOBlockPfbdReq *req;

    while ((req = q->parked)) {
        q->parked = req->next_parked;
        virtio_blk_pfbd_req_detach(req);
    }
}

/* Context: BQL held, the queues stopped */
static void virtio_blk_pfbd_drop_parked(VirtIOBlockPfbd *s)
{
    unsigned int i;

    for (i = 0; s->queues && i < s->conf.num_queues; i++) {
        virtio_blk_pfbd_drop_queue_parked(&s->queues[i]);
    }
}

/*
 * The device state goes to the destination of a migration: from now on
 * the image is the destination's (not so for savevm, whose VM goes on)
 *
 * Context: BQL held, the VM stopped
 */
static int virtio_blk_pfbd_pre_save(void *opaque)
{
    VirtIOBlockPfbd *s = opaque;

    if (s->migrating) {
        virtio_blk_pfbd_drop_locks(s);
    }
    return 0;
}

/*
 * Requests parked by rerror/werror=stop travel with the device state, as
 * stock virtio-blk's do: their virtqueue elements, oldest first, each
 * after a 1 and its queue's index, then a 0.  The destination parses and
 * sends them when its VM runs.
 */
static int virtio_blk_pfbd_put_parked(QEMUFile *f, void *pv, size_t size,
                                      const VMStateField *field,
                                      JSONWriter *vmdesc)
{
    VirtIOBlockPfbd *s = pv;
    VirtIODevice *vdev = VIRTIO_DEVICE(s);
    g_autoptr(GPtrArray) oldest_first = g_ptr_array_new();
    VirtIOBlockPfbdReq *req;
    unsigned int i, j;

    for (i = 0; i < s->conf.num_queues; i++) {
        g_ptr_array_set_size(oldest_first, 0);
        for (req = s->queues[i].parked; req; req = req->next_parked) {
            g_ptr_array_insert(oldest_first, 0, req);
        }
        for (j = 0; j < oldest_first->len; j++) {
            req = g_ptr_array_index(oldest_first, j);
            qemu_put_byte(f, 1);
            qemu_put_be32(f, i);
            qemu_put_virtqueue_element(vdev, f, &req->elem);
        }
    }
    qemu_put_byte(f, 0);
    return 0;
}

static int virtio_blk_pfbd_get_parked(QEMUFile *f, void *pv, size_t size,
                                      const VMStateField *field)
{
    VirtIOBlockPfbd *s = pv;
    VirtIODevice *vdev = VIRTIO_DEVICE(s);
    VirtIOBlockPfbdQueue *q;
    VirtIOBlockPfbdReq *req;
    uint32_t i;

    while (qemu_get_byte(f)) {
        i = qemu_get_be32(f);
        if (i >= s->conf.num_queues) {
            error_report("virtio-blk-pfbd: a parked request of queue %" PRIu32
                         " in the migration stream, but the device has %u "
                         "queues", i, s->conf.num_queues);
            return -EINVAL;
        }
        q = &s->queues[i];
        req = qemu_get_virtqueue_element(vdev, f, sizeof(*req));
        req->q = q;
        req->iov_copy = NULL;
        req->bytes = 0;
        req->migrated = true;
        /* Oldest first in the stream, newest first in the list */
        req->next_parked = q->parked;
        q->parked = req;
        qatomic_set_u64(&q->stats.in_flight, q->stats.in_flight + 1);
    }
    return 0;
}

static const VMStateInfo virtio_blk_pfbd_parked_info = {
    .name = "virtio-blk-pfbd parked requests",
    .get = virtio_blk_pfbd_get_parked,
    .put = virtio_blk_pfbd_put_parked,
};

static bool virtio_blk_pfbd_parked_needed(void *opaque)
{
    VirtIOBlockPfbd *s = opaque;
    unsigned int i;

    for (i = 0; i < s->conf.num_queues; i++) {
        if (s->queues[i].parked) {
            return true;
        }
    }
    return false;
}

static const VMStateDescription vmstate_virtio_blk_pfbd_parked = {
    .name = "virtio-blk-pfbd-device/parked",
    .version_id = 1,
    .minimum_version_id = 1,
    .needed = virtio_blk_pfbd_parked_needed,
    .fields = (const VMStateField[]) {
        {
            .name = "parked",
            .info = &virtio_blk_pfbd_parked_info,
            .flags = VMS_SINGLE,
        },
        VMSTATE_END_OF_LIST()
    },
};

static void virtio_blk_pfbd_reset(VirtIODevice *vdev)
{
    VirtIOBlockPfbd *s = VIRTIO_BLK_PFBD(vdev);

    /* ->stop_ioeventfd() has drained every queue */
    assert(!s->ioeventfd_started);
    virtio_blk_pfbd_drop_parked(s);
    s->writeback = true;
}

static void virtio_blk_pfbd_update_config(VirtIODevice *vdev, uint8_t *config)
{
    VirtIOBlockPfbd *s = VIRTIO_BLK_PFBD(vdev);
    VirtIOBlockPfbdConf *conf = &s->conf;
    struct virtio_blk_config blkcfg;
    uint32_t blk_size = conf->logical_block_size;

    memset(&blkcfg, 0, sizeof(blkcfg));
    virtio_stq_p(vdev, &blkcfg.capacity, virtio_blk_pfbd_capacity(s));
    virtio_stl_p(vdev, &blkcfg.seg_max, s->seg_max);
    virtio_stl_p(vdev, &blkcfg.size_max, VIRTIO_BLK_PFBD_SIZE_MAX);
    virtio_stl_p(vdev, &blkcfg.blk_size, blk_size);
    blkcfg.physical_block_exp = ctz32(conf->physical_block_size / blk_size);
    blkcfg.wce = s->writeback;
    virtio_stw_p(vdev, &blkcfg.num_queues, conf->num_queues);
    if (virtio_has_feature(s->host_features, VIRTIO_BLK_F_DISCARD)) {
        virtio_stl_p(vdev, &blkcfg.max_discard_sectors,
                     conf->max_discard_sectors);
        virtio_stl_p(vdev, &blkcfg.discard_sector_alignment,
                     blk_size >> BDRV_SECTOR_BITS);
        virtio_stl_p(vdev, &blkcfg.max_discard_seg, 1);
    }
    if (virtio_has_feature(s->host_features, VIRTIO_BLK_F_WRITE_ZEROES)) {
        virtio_stl_p(vdev, &blkcfg.max_write_zeroes_sectors,
                     conf->max_write_zeroes_sectors);
        blkcfg.write_zeroes_may_unmap = 1;
        virtio_stl_p(vdev, &blkcfg.max_write_zeroes_seg, 1);
    }
    memcpy(config, &blkcfg, s->config_size);
}

static void virtio_blk_pfbd_set_config(VirtIODevice *vdev,
                                       const uint8_t *config)
{
    VirtIOBlockPfbd *s = VIRTIO_BLK_PFBD(vdev);
    struct virtio_blk_config blkcfg;

    memcpy(&blkcfg, config, s->config_size);
    qatomic_set(&s->writeback, blkcfg.wce != 0);
}

static uint64_t virtio_blk_pfbd_get_features(VirtIODevice *vdev,
                                             uint64_t features, Error **errp)
{
    VirtIOBlockPfbd *s = VIRTIO_BLK_PFBD(vdev);

    features |= s->host_features;
    virtio_add_feature(&features, VIRTIO_BLK_F_SEG_MAX);
    virtio_add_feature(&features, VIRTIO_BLK_F_SIZE_MAX);
    virtio_add_feature(&features, VIRTIO_BLK_F_TOPOLOGY);
    virtio_add_feature(&features, VIRTIO_BLK_F_BLK_SIZE);
    virtio_add_feature(&features, VIRTIO_BLK_F_FLUSH);
    if (s->info.read_only) {
        virtio_add_feature(&features, VIRTIO_BLK_F_RO);
    }
    if (s->conf.num_queues > 1) {
        virtio_add_feature(&features, VIRTIO_BLK_F_MQ);
    }
    return features;
}

static void virtio_blk_pfbd_set_status(VirtIODevice *vdev, uint8_t status)
{
    VirtIOBlockPfbd *s = VIRTIO_BLK_PFBD(vdev);

    if (!(status & VIRTIO_CONFIG_S_DRIVER_OK)) {
        return;
    }
    /*
     * A driver without CONFIG_WCE gets a write cache only if it can flush
     * it; one with CONFIG_WCE chooses through the config space.
     */
    if (!virtio_vdev_has_feature(vdev, VIRTIO_BLK_F_CONFIG_WCE)) {
        qatomic_set(&s->writeback,
                    virtio_vdev_has_feature(vdev, VIRTIO_BLK_F_FLUSH));
    }
}

static void virtio_blk_pfbd_attach_queue(VirtIOBlockPfbdQueue *q)
{
    aio_set_event_notifier(q->ctx, &q->completion,
                           virtio_blk_pfbd_completion_read,
                           virtio_blk_pfbd_completion_poll,
                           virtio_blk_pfbd_completion_poll_ready);
    /* This also kicks the virtqueue, processing what it already holds */
    virtio_queue_aio_attach_host_notifier(q->vq, q->ctx);
}

/* Context: BQL held */
static int virtio_blk_pfbd_start_ioeventfd(VirtIODevice *vdev)
{
    VirtIOBlockPfbd *s = VIRTIO_BLK_PFBD(vdev);
    BusState *qbus = BUS(qdev_get_parent_bus(DEVICE(s)));
    VirtioBusClass *k = VIRTIO_BUS_GET_CLASS(qbus);
    unsigned int nvqs = s->conf.num_queues;
    unsigned int i;
    int r;

    if (s->ioeventfd_started || s->ioeventfd_starting) {
        return 0;
    }
    s->ioeventfd_starting = true;

    r = k->set_guest_notifiers(qbus->parent, nvqs, true);
    if (r != 0) {
        error_report("virtio-blk-pfbd: failed to set guest notifiers: %s",
                     strerror(-r));
        goto fail_guest_notifiers;
    }

    /* One transaction: address_space_update_ioeventfds() is quadratic */
    memory_region_transaction_begin();
    for (i = 0; i < nvqs; i++) {
        r = virtio_bus_set_host_notifier(VIRTIO_BUS(qbus), i, true);
        if (r != 0) {
            unsigned int j = i;

            error_report("virtio-blk-pfbd: failed to set host notifier: %s",
                         strerror(-r));
            while (i--) {
                virtio_bus_set_host_notifier(VIRTIO_BUS(qbus), i, false);
            }
            memory_region_transaction_commit();
            while (j--) {
                virtio_bus_cleanup_host_notifier(VIRTIO_BUS(qbus), j);
            }
            goto fail_host_notifiers;
        }
    }
    memory_region_transaction_commit();

    trace_virtio_blk_pfbd_start(s, nvqs);

    /* Visible to the IOThreads before their handlers run */
    s->ioeventfd_starting = false;
    s->ioeventfd_started = true;
    smp_wmb(); /* paired with aio_notify_accept() on the read side */

    for (i = 0; i < nvqs; i++) {
        virtio_blk_pfbd_attach_queue(&s->queues[i]);
    }
    return 0;

fail_host_notifiers:
    k->set_guest_notifiers(qbus->parent, nvqs, false);
fail_guest_notifiers:
    s->ioeventfd_disabled = true;
    s->ioeventfd_starting = false;
    return -ENOSYS;
}

/*
 * Stop taking requests from the guest and wait for those in flight.
 *
 * Context: BH in the virtqueue's AioContext
 */
static void virtio_blk_pfbd_stop_vq_bh(void *opaque)
{
    VirtIOBlockPfbdQueue *q = opaque;
    EventNotifier *host_notifier = virtio_queue_get_host_notifier(q->vq);

    virtio_queue_aio_detach_host_notifier(q->vq, q->ctx);

    /* Serve a kick that arrived before the detach */
    virtio_queue_host_notifier_read(host_notifier);

    trace_virtio_blk_pfbd_drain(q->s, q->index, pfbd_queue_inflight(q->pq));
    virtio_blk_pfbd_clock(q);
    pfbd_queue_drain(q->pq);
    virtio_blk_pfbd_notify(q);
    timer_del(q->retry_timer);

    aio_set_event_notifier(q->ctx, &q->completion, NULL, NULL, NULL);
}

/*
 * Release the queue's map cache entries of an older memory map.
 *
 * Context: BH in the virtqueue's AioContext
 */
static void virtio_blk_pfbd_map_flush_bh(void *opaque)
{
    VirtIOBlockPfbdQueue *q = opaque;

    virtqueue_map_cache_flush(q->vq);
    qatomic_dec(&q->s->map_flushes);
    aio_wait_kick();
}

/*
 * The memory map changed.  A queue's map cache holds the memory map it
 * translated with, and its RAM, until the queue pops again: on an idle
 * queue, RAM that left the map (an unplugged DIMM, a device's BAR) would
 * stay allocated.  Have the thread that owns each queue's cache drop what
 * is stale.
 *
 * Context: BQL held, at the end of a memory transaction
 */
static void virtio_blk_pfbd_map_commit(MemoryListener *listener)
{
    VirtIOBlockPfbd *s = container_of(listener, VirtIOBlockPfbd,
                                      map_listener);
    unsigned int i;

    if (s->ioeventfd_stopping) {
        return;     /* the queues go idle; reset or restart follows */
    }
    for (i = 0; i < s->conf.num_queues; i++) {
        VirtIOBlockPfbdQueue *q = &s->queues[i];

        if (s->ioeventfd_started) {
            qatomic_inc(&s->map_flushes);
            aio_bh_schedule_oneshot(q->ctx, virtio_blk_pfbd_map_flush_bh, q);
        } else {
            /* Stopped: the BQL owns the queues */
            virtqueue_map_cache_flush(q->vq);
        }
    }
}

/*
 * Wait for the map cache flushes under way: after this, the BQL may touch
 * the queues' caches (a reset empties them).
 *
 * Context: BQL held
 */
static void virtio_blk_pfbd_wait_map_flushes(VirtIOBlockPfbd *s)
{
    AIO_WAIT_WHILE_UNLOCKED(NULL, qatomic_read(&s->map_flushes) > 0);
}

/*
 * The driver resets one virtqueue (virtio-pci's queue_reset), from a vCPU
 * while the queue's IOThread may be serving it: stop serving it and wait
 * for its requests before the virtio core empties it (and its map cache).
 *
 * Context: BQL held
 */
static void virtio_blk_pfbd_queue_reset(VirtIODevice *vdev, uint32_t index)
{
    VirtIOBlockPfbd *s = VIRTIO_BLK_PFBD(vdev);
    VirtIOBlockPfbdQueue *q;

    /* virtio-pci passes on any queue_select below VIRTIO_QUEUE_MAX */
    if (!s->ioeventfd_started || index >= s->conf.num_queues) {
        return;
    }
    q = &s->queues[index];
    trace_virtio_blk_pfbd_queue_reset(s, index);
    aio_wait_bh_oneshot(q->ctx, virtio_blk_pfbd_stop_vq_bh, q);
    virtio_blk_pfbd_wait_map_flushes(s);
    virtio_blk_pfbd_drop_queue_parked(q);
}

/* The driver enables a virtqueue again after its reset.  Context: BQL held */
static void virtio_blk_pfbd_queue_enable(VirtIODevice *vdev, uint32_t index)
{
    VirtIOBlockPfbd *s = VIRTIO_BLK_PFBD(vdev);

    if (s->ioeventfd_started && !s->ioeventfd_stopping &&
        index < s->conf.num_queues) {
        virtio_blk_pfbd_attach_queue(&s->queues[index]);
    }
}

/* Context: BQL held */
static void virtio_blk_pfbd_stop_ioeventfd(VirtIODevice *vdev)
{
    VirtIOBlockPfbd *s = VIRTIO_BLK_PFBD(vdev);
    BusState *qbus = qdev_get_parent_bus(DEVICE(s));
    VirtioBusClass *k = VIRTIO_BUS_GET_CLASS(qbus);
    unsigned int nvqs = s->conf.num_queues;
    unsigned int i;

    if (!s->ioeventfd_started || s->ioeventfd_stopping) {
        return;
    }
    s->ioeventfd_stopping = true;

    trace_virtio_blk_pfbd_stop(s);
    for (i = 0; i < nvqs; i++) {
        aio_wait_bh_oneshot(s->queues[i].ctx, virtio_blk_pfbd_stop_vq_bh,
                            &s->queues[i]);
    }

    memory_region_transaction_begin();
    for (i = 0; i < nvqs; i++) {
        virtio_bus_set_host_notifier(VIRTIO_BUS(qbus), i, false);
    }
    memory_region_transaction_commit();
    for (i = 0; i < nvqs; i++) {
        virtio_bus_cleanup_host_notifier(VIRTIO_BUS(qbus), i);
    }

    s->ioeventfd_started = false;

    k->set_guest_notifiers(qbus->parent, nvqs, false);
    virtio_blk_pfbd_wait_map_flushes(s);
    s->ioeventfd_stopping = false;
}

/* Context: BQL held */
static bool virtio_blk_pfbd_vq_aio_context_init(VirtIOBlockPfbd *s,
                                                Error **errp)
{
    VirtIOBlockPfbdConf *conf = &s->conf;
    AioContext *ctx;
    unsigned int i;

    if (conf->iothread && conf->iothread_vq_mapping_list) {
        error_setg(errp, "iothread and iothread-vq-mapping properties cannot "
                   "be set at the same time");
        return false;
    }

    s->vq_aio_context = g_new(AioContext *, conf->num_queues);
    if (conf->iothread_vq_mapping_list) {
        if (!iothread_vq_mapping_apply(conf->iothread_vq_mapping_list,
                                       s->vq_aio_context, conf->num_queues,
                                       errp)) {
            g_free(s->vq_aio_context);
            s->vq_aio_context = NULL;
            return false;
        }
        return true;
    }

    if (conf->iothread) {
        ctx = iothread_get_aio_context(conf->iothread);
        /* Released in virtio_blk_pfbd_vq_aio_context_cleanup() */
        object_ref(OBJECT(conf->iothread));
    } else {
        ctx = qemu_get_aio_context();
    }
    for (i = 0; i < conf->num_queues; i++) {
        s->vq_aio_context[i] = ctx;
    }
    return true;
}

/* Context: BQL held */
static void virtio_blk_pfbd_vq_aio_context_cleanup(VirtIOBlockPfbd *s)
{
    if (!s->vq_aio_context) {
        return;
    }
    if (s->conf.iothread_vq_mapping_list) {
        iothread_vq_mapping_cleanup(s->conf.iothread_vq_mapping_list);
    }
    if (s->conf.iothread) {
        object_unref(OBJECT(s->conf.iothread));
    }
    g_free(s->vq_aio_context);
    s->vq_aio_context = NULL;
}

static bool virtio_blk_pfbd_check_conf(VirtIOBlockPfbd *s, Error **errp)
{
    VirtIOBlockPfbdConf *conf = &s->conf;

    if (!conf->volume || !conf->volume[0]) {
        error_setg(errp, "property 'volume' is required "
                   "(e.g. volume=file:/path/to/image or volume=null:1G)");
        return false;
    }
    s->volume_shown = pfbd_spec_redact(conf->volume);
    if (!s->volume_shown) {
        error_setg(errp, "out of memory");
        return false;
    }
    if (conf->rerror == BLOCKDEV_ON_ERROR_ENOSPC) {
        error_setg(errp, "rerror=enospc is not supported (reads do not run "
                   "out of space): use report, ignore or stop");
        return false;
    }
    if (conf->rerror == BLOCKDEV_ON_ERROR_AUTO) {
        conf->rerror = BLOCKDEV_ON_ERROR_REPORT;
    }
    if (conf->werror == BLOCKDEV_ON_ERROR_AUTO) {
        conf->werror = BLOCKDEV_ON_ERROR_ENOSPC;
    }
    if (conf->num_queues == VIRTIO_BLK_PFBD_AUTO_NUM_QUEUES) {
        conf->num_queues = 1;
    }
    if (conf->num_queues == 0) {
        error_setg(errp, "num-queues property must be larger than 0");
        return false;
    }
    if (conf->num_queues > VIRTIO_QUEUE_MAX) {
        error_setg(errp, "num-queues property (%" PRIu16 ") must be at most "
                   "%d", conf->num_queues, VIRTIO_QUEUE_MAX);
        return false;
    }
    if (conf->queue_size <= 2) {
        error_setg(errp, "invalid queue-size property (%" PRIu16 "), "
                   "must be > 2", conf->queue_size);
        return false;
    }
    if (!is_power_of_2(conf->queue_size) ||
        conf->queue_size > VIRTQUEUE_MAX_SIZE) {
        error_setg(errp, "invalid queue-size property (%" PRIu16 "), "
                   "must be a power of 2 (max %d)",
                   conf->queue_size, VIRTQUEUE_MAX_SIZE);
        return false;
    }
    if (virtio_has_feature(s->host_features, VIRTIO_BLK_F_DISCARD) &&
        (!conf->max_discard_sectors ||
         conf->max_discard_sectors > VIRTIO_BLK_PFBD_MAX_SECTORS)) {
        error_setg(errp, "invalid max-discard-sectors property (%" PRIu32
                   "), must be between 1 and %d",
                   conf->max_discard_sectors, VIRTIO_BLK_PFBD_MAX_SECTORS);
        return false;
    }
    if (virtio_has_feature(s->host_features, VIRTIO_BLK_F_WRITE_ZEROES) &&
        (!conf->max_write_zeroes_sectors ||
         conf->max_write_zeroes_sectors > VIRTIO_BLK_PFBD_MAX_SECTORS)) {
        error_setg(errp, "invalid max-write-zeroes-sectors property (%" PRIu32
                   "), must be between 1 and %d",
                   conf->max_write_zeroes_sectors,
                   VIRTIO_BLK_PFBD_MAX_SECTORS);
        return false;
    }
    return true;
}

/*
 * libpfbd's secret lookup (PfbdOpenOptions.secret_lookup): the value of
 * QEMU's secret object @id, as block/rbd.c takes its key-secret.
 *
 * Context: any thread; takes the BQL if the caller does not hold it (a
 * worker thread of pfbd-volume-open)
 */
int virtio_blk_pfbd_secret_lookup(void *opaque, const char *id,
                                  char **valuep, char **errmsg)
{
    BQL_LOCK_GUARD();
    Error *local_err = NULL;
    g_autofree char *value = qcrypto_secret_lookup_as_base64(id, &local_err);

    if (!value) {
        *errmsg = strdup(error_get_pretty(local_err));
        error_free(local_err);
        return -EINVAL;
    }
    *valuep = strdup(value);
    return *valuep ? 0 : -ENOMEM;
}

/*
 * libpfbd's engine events, as trace events "pfbd_*".  @opaque is the
 * device.
 */
static void virtio_blk_pfbd_trace_ring_moved(void *opaque, PfbdQueue *q,
                                             int ret)
{
    trace_pfbd_ring_moved(opaque, q, ret);
}

static void virtio_blk_pfbd_trace_ring_busy(void *opaque, PfbdQueue *q,
                                            unsigned inflight)
{
    trace_pfbd_ring_busy(opaque, q, inflight);
}

static void virtio_blk_pfbd_trace_bounce(void *opaque, PfbdQueue *q,
                                         uint64_t len, bool fresh)
{
    trace_pfbd_bounce(opaque, q, len, fresh);
}

static void virtio_blk_pfbd_trace_resend(void *opaque, PfbdQueue *q,
                                         uint64_t offset, uint64_t len,
                                         const char *why)
{
    trace_pfbd_resend(opaque, q, offset, len, why);
}

static void virtio_blk_pfbd_trace_connect(void *opaque, PfbdQueue *q,
                                          const char *addr)
{
    trace_pfbd_connect(opaque, q, addr);
}

static void virtio_blk_pfbd_trace_reopen(void *opaque, PfbdQueue *q)
{
    trace_pfbd_reopen(opaque, q);
}

static void virtio_blk_pfbd_trace_waits(void *opaque, PfbdQueue *q,
                                        unsigned nwaiting)
{
    trace_pfbd_waits(opaque, q, nwaiting);
}

static void virtio_blk_pfbd_trace_memory_registered(void *opaque,
                                                    PfbdQueue *q,
                                                    unsigned n, int ret)
{
    trace_pfbd_memory_registered(opaque, q, n, ret);
}

static const PfbdTraceOps virtio_blk_pfbd_trace_ops = {
    .ring_moved = virtio_blk_pfbd_trace_ring_moved,
    .ring_busy = virtio_blk_pfbd_trace_ring_busy,
    .bounce = virtio_blk_pfbd_trace_bounce,
    .resend = virtio_blk_pfbd_trace_resend,
    .connect = virtio_blk_pfbd_trace_connect,
    .reopen = virtio_blk_pfbd_trace_reopen,
    .waits = virtio_blk_pfbd_trace_waits,
    .memory_registered = virtio_blk_pfbd_trace_memory_registered,
};

/*
 * "volume": "@NAME": take the volume that pfbd-volume-open keeps under
 * NAME, and make it the device's, with @opts' any_thread and tracing
 */
static bool virtio_blk_pfbd_take_named(VirtIOBlockPfbd *s,
                                       const PfbdOpenOptions *opts,
                                       Error **errp)
{
    ERRP_GUARD();
    VirtIOBlockPfbdConf *conf = &s->conf;
    const char *name = conf->volume + 1;
    VirtIOBlockPfbdNamedVolume *nv = virtio_blk_pfbd_take_volume(name, errp);

    if (!nv) {
        return false;
    }
    if (nv->read_only && !conf->read_only) {
        error_setg(errp, "volume '@%s' was opened read-only: set "
                   "read-only=on on the device", name);
    } else if (conf->iowq_cpus) {
        error_setg(errp, "iowq-cpus applies when volume '@%s' is opened: "
                   "give it to pfbd-volume-open", name);
    } else {
        free(s->volume_shown);
        s->volume_shown = strdup(nv->shown);
        if (!s->volume_shown) {
            error_setg(errp, "out of memory");
        }
    }
    if (!s->volume_shown || *errp) {
        virtio_blk_pfbd_give_back_volume(name, nv);
        return false;
    }
    pfbd_volume_adopt(nv->vol, opts);
    s->named = nv;
    s->volume = nv->vol;
    return true;
}

/* Open the volume and derive the geometry the guest sees */
static bool virtio_blk_pfbd_open_volume(VirtIOBlockPfbd *s, Error **errp)
{
    VirtIOBlockPfbdConf *conf = &s->conf;
    PfbdOpenOptions opts = {
        .read_only = conf->read_only,
        /*
         * Without IOThreads the queues are served by the main loop, which
         * any thread holding the BQL runs (a vCPU resetting the device,
         * the RCU thread in a RAM block notifier, aio_wait): their engine
         * queues change threads with requests in flight.
         */
        .any_thread = !conf->iothread && !conf->iothread_vq_mapping_list,
        .iowq_cpus = conf->iowq_cpus,
        .secret_lookup = virtio_blk_pfbd_secret_lookup,
        .trace = &virtio_blk_pfbd_trace_ops,
        .trace_opaque = s,
    };
    char *msg = NULL;
    int ret = 0;

    if (conf->volume[0] == '@') {
        if (!virtio_blk_pfbd_take_named(s, &opts, errp)) {
            return false;
        }
    } else {
        ret = pfbd_volume_open(conf->volume, &opts, &s->volume, &msg);
    }
    if (!s->volume) {
        if (msg) {
            /* libpfbd's message names the volume and the culprit */
            error_setg(errp, "%s", msg);
        } else {
            error_setg_errno(errp, -ret, "cannot open volume '%s'",
                             s->volume_shown);
        }
        free(msg);
        return false;
    }
    pfbd_volume_get_info(s->volume, &s->info);
    if (!virtio_blk_pfbd_lock_volume(s, errp)) {
        return false;
    }

    if (!conf->logical_block_size) {
        conf->logical_block_size = MAX(BDRV_SECTOR_SIZE, s->info.block_size);
    }
    if (!conf->physical_block_size) {
        conf->physical_block_size = conf->logical_block_size;
    }
    if (conf->logical_block_size < s->info.block_size) {
        error_setg(errp, "logical_block_size %" PRIu32 " is smaller than "
                   "the block size %" PRIu32 " of volume '%s'",
                   conf->logical_block_size, s->info.block_size,
                   s->volume_shown);
        return false;
    }
    if (conf->logical_block_size > conf->physical_block_size) {
        error_setg(errp, "logical_block_size > physical_block_size "
                   "not supported");
        return false;
    }
    /* libpfbd checks requests against it, and rounds the size down */
    if (pfbd_volume_set_block_size(s->volume, conf->logical_block_size)) {
        error_setg(errp, "volume '%s' is smaller than one block (%" PRIu32
                   " bytes)", s->volume_shown, conf->logical_block_size);
        return false;
    }

    if (!(s->info.caps & PFBD_CAP_DISCARD)) {
        virtio_clear_feature(&s->host_features, VIRTIO_BLK_F_DISCARD);
    }
    if (!(s->info.caps & PFBD_CAP_WRITE_ZEROES)) {
        virtio_clear_feature(&s->host_features, VIRTIO_BLK_F_WRITE_ZEROES);
    }
    return true;
}

/* The id of the IOThread that serves @ctx, for the statistics */
static char *virtio_blk_pfbd_iothread_name(VirtIOBlockPfbd *s,
                                           AioContext *ctx)
{
    IOThreadVirtQueueMappingList *node;

    if (s->conf.iothread) {
        return g_strdup(object_get_canonical_path_component(
            OBJECT(s->conf.iothread)));
    }
    for (node = s->conf.iothread_vq_mapping_list; node; node = node->next) {
        IOThread *iothread = iothread_by_id(node->value->iothread);

        if (iothread && iothread_get_aio_context(iothread) == ctx) {
            return g_strdup(node->value->iothread);
        }
    }
    return g_strdup("main-loop");
}

static bool virtio_blk_pfbd_queues_init(VirtIOBlockPfbd *s, Error **errp)
{
    VirtIODevice *vdev = VIRTIO_DEVICE(s);
    unsigned int i;
    int ret;

    s->queues = g_new0(VirtIOBlockPfbdQueue, s->conf.num_queues);
    for (i = 0; i < s->conf.num_queues; i++) {
        VirtIOBlockPfbdQueue *q = &s->queues[i];

        q->s = s;
        q->index = i;
        q->vq = virtio_get_queue(vdev, i);
        q->ctx = s->vq_aio_context[i];
        q->iothread_name = virtio_blk_pfbd_iothread_name(s, q->ctx);
        q->retry_timer = aio_timer_new(q->ctx, QEMU_CLOCK_REALTIME, SCALE_MS,
                                       virtio_blk_pfbd_retry, q);
        ret = pfbd_queue_new(s->volume, s->conf.queue_size, &q->pq);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "cannot create engine queue %u "
                             "of volume '%s'", i, s->volume_shown);
            return false;
        }
        /* One request's worth of bounce buffers per queue, at most */
        pfbd_queue_set_bounce_limit(q->pq, s->max_request_bytes);
        event_notifier_init_fd(&q->completion, pfbd_queue_get_fd(q->pq));
    }
    return true;
}

static void virtio_blk_pfbd_queues_cleanup(VirtIOBlockPfbd *s)
{
    unsigned int i;

    if (!s->queues) {
        return;
    }
    for (i = 0; i < s->conf.num_queues; i++) {
        pfbd_queue_free(s->queues[i].pq);
        if (s->queues[i].retry_timer) {
            timer_free(s->queues[i].retry_timer);
        }
        g_free(s->queues[i].iothread_name);
    }
    g_free(s->queues);
    s->queues = NULL;
}

static void virtio_blk_pfbd_teardown(DeviceState *dev, bool give_back);

static void virtio_blk_pfbd_device_realize(DeviceState *dev, Error **errp)
{
    VirtIODevice *vdev = VIRTIO_DEVICE(dev);
    VirtIOBlockPfbd *s = VIRTIO_BLK_PFBD(dev);
    BusState *qbus = BUS(qdev_get_parent_bus(dev));
    VirtioBusClass *k = VIRTIO_BUS_GET_CLASS(qbus);
    unsigned int i;

    if (!virtio_blk_pfbd_check_conf(s, errp) ||
        !virtio_blk_pfbd_open_volume(s, errp)) {
        goto fail_volume;
    }

    s->writeback = true;
    s->seg_max = s->conf.seg_max_adjust ? s->conf.queue_size - 2 : 128 - 2;
    s->max_request_bytes = (uint64_t)s->seg_max * VIRTIO_BLK_PFBD_SIZE_MAX;
    if (s->conf.logical_block_size > s->max_request_bytes) {
        /* Not one read or write could carry a whole block */
        error_setg(errp, "logical_block_size %" PRIu32 " is larger than the "
                   "largest request the device takes (%" PRIu32 " segments "
                   "of %d KiB): raise queue-size, or set seg-max-adjust=on",
                   s->conf.logical_block_size, s->seg_max,
                   (int)(VIRTIO_BLK_PFBD_SIZE_MAX / KiB));
        goto fail_volume;
    }
    s->config_size = virtio_get_config_size(&virtio_blk_cfg_size_params,
                                            s->host_features);
    virtio_init(vdev, VIRTIO_ID_BLOCK, s->config_size);
    /* No address_space_map() and region reference per buffer */
    virtio_device_use_map_cache(vdev);
    for (i = 0; i < s->conf.num_queues; i++) {
        virtio_add_queue(vdev, s->conf.queue_size,
                         virtio_blk_pfbd_handle_output);
    }

    /* The data path runs from ioeventfd handlers only */
    if (!k->set_guest_notifiers || !k->ioeventfd_assign ||
        !virtio_device_ioeventfd_enabled(vdev)) {
        error_setg(errp, "virtio-blk-pfbd needs ioeventfd "
                   "(do not set ioeventfd=off)");
        goto fail;
    }
    if (!virtio_blk_pfbd_vq_aio_context_init(s, errp) ||
        !virtio_blk_pfbd_queues_init(s, errp)) {
        goto fail;
    }
    if (s->conf.fixed_buffers && !virtio_blk_pfbd_register_ram(s, errp)) {
        goto fail;
    }
    /* After virtio_init(): runs after the core has restarted the queues */
    s->change = qdev_add_vm_change_state_handler(
        dev, virtio_blk_pfbd_vm_state_change, s);
    /* The map cache works on address_space_memory only */
    s->map_listener = (MemoryListener) {
        .name = "virtio-blk-pfbd",
        .commit = virtio_blk_pfbd_map_commit,
    };
    memory_listener_register(&s->map_listener, &address_space_memory);
    return;

fail:
    virtio_blk_pfbd_teardown(dev, true);
    return;
fail_volume:
    virtio_blk_pfbd_close_volume(s, true);
}

/*
 * Undo realize; @give_back: a volume of pfbd-volume-open goes back under
 * its name (realize failed) rather than being closed
 */
static void virtio_blk_pfbd_teardown(DeviceState *dev, bool give_back)
{
    VirtIODevice *vdev = VIRTIO_DEVICE(dev);
    VirtIOBlockPfbd *s = VIRTIO_BLK_PFBD(dev);
    unsigned int i;

    assert(!s->ioeventfd_started);
    if (s->map_listener.commit) {
        memory_listener_unregister(&s->map_listener);
        s->map_listener.commit = NULL;
    }
    if (s->change) {
        qemu_del_vm_change_state_handler(s->change);
        s->change = NULL;
    }
    virtio_blk_pfbd_drop_parked(s);
    virtio_blk_pfbd_unregister_ram(s);
    virtio_blk_pfbd_queues_cleanup(s);
    if (s->ram_discard_disabled) {
        ram_block_discard_disable(false);
        s->ram_discard_disabled = false;
    }
    virtio_blk_pfbd_vq_aio_context_cleanup(s);
    for (i = 0; i < s->conf.num_queues; i++) {
        virtio_del_queue(vdev, i);
    }
    virtio_cleanup(vdev);
    virtio_blk_pfbd_close_volume(s, give_back);
}

static void virtio_blk_pfbd_device_unrealize(DeviceState *dev)
{
    virtio_blk_pfbd_teardown(dev, false);
}

static void virtio_blk_pfbd_instance_init(Object *obj)
{
    VirtIOBlockPfbd *s = VIRTIO_BLK_PFBD(obj);

    device_add_bootindex_property(obj, &s->bootindex, "bootindex",
                                  "/disk@0,0", DEVICE(obj));
}

/*
 * The "volume-size" property: the capacity the guest sees, in bytes.
 * Writing 0 makes the device re-read the size of its volume (after the
 * file was extended or the rbd image resized) and, if it changed, tell
 * the guest with a configuration change notification.
 */
static void virtio_blk_pfbd_get_volume_size(Object *obj, Visitor *v,
                                            const char *name, void *opaque,
                                            Error **errp)
{
    VirtIOBlockPfbd *s = VIRTIO_BLK_PFBD(obj);
    uint64_t value = virtio_blk_pfbd_capacity(s) << BDRV_SECTOR_BITS;

    visit_type_uint64(v, name, &value, errp);
}

static void virtio_blk_pfbd_set_volume_size(Object *obj, Visitor *v,
                                            const char *name, void *opaque,
                                            Error **errp)
{
    VirtIOBlockPfbd *s = VIRTIO_BLK_PFBD(obj);
    VirtIODevice *vdev = VIRTIO_DEVICE(obj);
    uint64_t value, old, capacity;
    int ret;

    if (!visit_type_uint64(v, name, &value, errp)) {
        return;
    }
    if (value != 0) {
        error_setg(errp, "write 0 to volume-size to make the device re-read "
                   "the size of its volume");
        return;
    }
    if (!s->volume) {
        error_setg(errp, "the device has no volume open yet");
        return;
    }
    /* In the device's blocks: a size it refuses changes nothing */
    old = virtio_blk_pfbd_capacity(s);
    ret = pfbd_volume_refresh_size(s->volume);
    if (ret == -EINVAL) {
        error_setg(errp, "volume '%s' is now smaller than one block (%"
                   PRIu32 " bytes)", s->volume_shown,
                   s->conf.logical_block_size);
        return;
    }
    if (ret < 0) {
        error_setg_errno(errp, -ret, "cannot re-read the size of volume "
                         "'%s'", s->volume_shown);
        return;
    }
    capacity = virtio_blk_pfbd_capacity(s);
    trace_virtio_blk_pfbd_resize(s, old, capacity);
    if (capacity != old) {
        virtio_notify_config(vdev);
    }
}

/*
 * Saved by virtio_save() after the virtqueues.  Nothing is in flight then:
 * the VM was stopped and every queue drained.  The guest's write cache
 * choice (config-wce) must survive, or writes after migration would lose
 * their FUA.
 */
static const VMStateDescription vmstate_virtio_blk_pfbd_device = {
    .name = "virtio-blk-pfbd-device",
    .minimum_version_id = 1,
    .version_id = 1,
    .pre_save = virtio_blk_pfbd_pre_save,
    .fields = (const VMStateField[]) {
        VMSTATE_BOOL(writeback, VirtIOBlockPfbd),
        VMSTATE_END_OF_LIST()
    },
    .subsections = (const VMStateDescription * const []) {
        &vmstate_virtio_blk_pfbd_parked,
        NULL
    },
};

static const VMStateDescription vmstate_virtio_blk_pfbd = {
    .name = "virtio-blk-pfbd",
    .minimum_version_id = 1,
    .version_id = 1,
    .fields = (const VMStateField[]) {
        VMSTATE_VIRTIO_DEVICE,
        VMSTATE_END_OF_LIST()
    },
};

/*
 * The "volume" property: a string property whose value is read back
 * without its secrets (qom-get, info qtree), since an rbd spec may carry
 * its key (key=)
 */
static void virtio_blk_pfbd_get_volume(Object *obj, Visitor *v,
                                       const char *name, void *opaque,
                                       Error **errp)
{
    const Property *prop = opaque;
    char **ptr = object_field_prop_ptr(obj, prop);
    char *shown = pfbd_spec_redact(*ptr ? *ptr : "");

    if (!shown) {
        error_setg(errp, "out of memory");
        return;
    }
    visit_type_str(v, name, &shown, errp);
    free(shown);
}

static void virtio_blk_pfbd_set_volume(Object *obj, Visitor *v,
                                       const char *name, void *opaque,
                                       Error **errp)
{
    qdev_prop_string.set(obj, v, name, opaque, errp);
}

static void virtio_blk_pfbd_release_volume(Object *obj, const char *name,
                                           void *opaque)
{
    qdev_prop_string.release(obj, name, opaque);
}

static const PropertyInfo virtio_blk_pfbd_prop_volume = {
    .type = "str",
    .get = virtio_blk_pfbd_get_volume,
    .set = virtio_blk_pfbd_set_volume,
    .release = virtio_blk_pfbd_release_volume,
};

static const Property virtio_blk_pfbd_properties[] = {
    DEFINE_PROP("volume", VirtIOBlockPfbd, conf.volume,
                virtio_blk_pfbd_prop_volume, char *),
    DEFINE_PROP_STRING("serial", VirtIOBlockPfbd, conf.serial),
    DEFINE_PROP_UINT16("num-queues", VirtIOBlockPfbd, conf.num_queues,
                       VIRTIO_BLK_PFBD_AUTO_NUM_QUEUES),
    DEFINE_PROP_UINT16("queue-size", VirtIOBlockPfbd, conf.queue_size, 256),
    DEFINE_PROP_BOOL("seg-max-adjust", VirtIOBlockPfbd, conf.seg_max_adjust,
                     true),
    DEFINE_PROP_LINK("iothread", VirtIOBlockPfbd, conf.iothread,
                     TYPE_IOTHREAD, IOThread *),
    DEFINE_PROP_IOTHREAD_VQ_MAPPING_LIST("iothread-vq-mapping",
                                         VirtIOBlockPfbd,
                                         conf.iothread_vq_mapping_list),
    DEFINE_PROP_BLOCKSIZE("logical_block_size", VirtIOBlockPfbd,
                          conf.logical_block_size),
    DEFINE_PROP_BLOCKSIZE("physical_block_size", VirtIOBlockPfbd,
                          conf.physical_block_size),
    DEFINE_PROP_BIT64("discard", VirtIOBlockPfbd, host_features,
                      VIRTIO_BLK_F_DISCARD, true),
    DEFINE_PROP_BIT64("write-zeroes", VirtIOBlockPfbd, host_features,
                      VIRTIO_BLK_F_WRITE_ZEROES, true),
    DEFINE_PROP_UINT32("max-discard-sectors", VirtIOBlockPfbd,
                       conf.max_discard_sectors, VIRTIO_BLK_PFBD_MAX_SECTORS),
    DEFINE_PROP_UINT32("max-write-zeroes-sectors", VirtIOBlockPfbd,
                       conf.max_write_zeroes_sectors,
                       VIRTIO_BLK_PFBD_MAX_SECTORS),
    DEFINE_PROP_BIT64("config-wce", VirtIOBlockPfbd, host_features,
                      VIRTIO_BLK_F_CONFIG_WCE, true),
    DEFINE_PROP_BOOL("read-only", VirtIOBlockPfbd, conf.read_only, false),
    DEFINE_PROP_BOOL("fixed-buffers", VirtIOBlockPfbd, conf.fixed_buffers,
                     false),
    DEFINE_PROP_STRING("iowq-cpus", VirtIOBlockPfbd, conf.iowq_cpus),
    DEFINE_PROP_ON_OFF_AUTO("locking", VirtIOBlockPfbd, conf.locking,
                            ON_OFF_AUTO_AUTO),
    DEFINE_PROP_BOOL("share-rw", VirtIOBlockPfbd, conf.share_rw, false),
    DEFINE_PROP_BLOCKDEV_ON_ERROR("rerror", VirtIOBlockPfbd, conf.rerror,
                                  BLOCKDEV_ON_ERROR_REPORT),
    DEFINE_PROP_BLOCKDEV_ON_ERROR("werror", VirtIOBlockPfbd, conf.werror,
                                  BLOCKDEV_ON_ERROR_ENOSPC),
};

static const struct {
    const char *name;
    const char *description;
} virtio_blk_pfbd_property_help[] = {
    { "volume", "the volume: file:PATH (io_uring, O_DIRECT), "
      "rbd:POOL/IMAGE[@SNAP][:conf=PATH][:id=USER][:key-secret=ID]"
      "[:KEY=VALUE]... (Ceph, if built in), pureflash:VOLUME[@SNAP][:conductor=HOST[:PORT]|"
      ":zookeeper=HOST:PORT,...|:conf=PATH][:timeout=S] (PureFlash), "
      "null:SIZE[:completion_nsec=N][:write_nsec=N]"
      "[:mem_align=N] (no data, at once or after N ns; e.g. null:1G) or "
      "a name in the pool directory ($PFBD_POOL_DIR, default "
      "/var/lib/pfbd)" },
    { "serial", "serial number reported by VIRTIO_BLK_T_GET_ID "
      "(at most 20 bytes are visible)" },
    { "num-queues", "number of virtqueues (default: one per vCPU)" },
    { "queue-size", "virtqueue size offered and engine queue depth, a "
      "power of 2 (default 256); the driver may set rings up to 1024" },
    { "seg-max-adjust", "offer queue-size - 2 segments per request "
      "(off: 126)" },
    { "iothread", "the IOThread that serves every virtqueue "
      "(default: the main loop)" },
    { "iothread-vq-mapping", "IOThread of each virtqueue, as in virtio-blk: "
      "[{\"iothread\":\"io0\",\"vqs\":[0,2]},...]; round-robin when vqs "
      "are omitted" },
    { "logical_block_size", "logical block size (default: the volume's, "
      "at least 512)" },
    { "physical_block_size", "physical block size (default: "
      "logical_block_size)" },
    { "discard", "offer VIRTIO_BLK_F_DISCARD when the volume supports it" },
    { "write-zeroes", "offer VIRTIO_BLK_F_WRITE_ZEROES when the volume "
      "supports it" },
    { "max-discard-sectors", "largest discard, in 512-byte sectors" },
    { "max-write-zeroes-sectors", "largest write-zeroes, in 512-byte "
      "sectors" },
    { "config-wce", "let the guest switch the write cache through the "
      "config space" },
    { "read-only", "open the volume read-only and offer VIRTIO_BLK_F_RO" },
    { "fixed-buffers", "register the guest RAM with the engine (file: "
      "io_uring fixed buffers, no page mapping per request); pins all guest "
      "RAM and refuses RAM discards (virtio-balloon, virtio-mem)" },
    { "iowq-cpus", "file engine: the host CPUs its io_uring workers may run "
      "on, a list like 0,2-3 (default: those of the queue's IOThread)" },
    { "locking", "file volumes: take QEMU's image locks, as -blockdev "
      "file does, so that a second QEMU or qemu-img cannot write the image "
      "while this device uses it: on, off, auto (default: on where the "
      "host has OFD locks)" },
    { "share-rw", "let other users write the image while this device "
      "uses it (a cluster file system in the guests)" },
    { "rerror", "what a failed read does: report (default: the guest gets "
      "an I/O error), ignore, stop (pause the VM; cont retries)" },
    { "werror", "what a failed write, flush, discard or write-zeroes does: "
      "enospc (default: stop on ENOSPC, report otherwise), report, ignore, "
      "stop" },
};

static void virtio_blk_pfbd_class_init(ObjectClass *klass, void *data)
{
    DeviceClass *dc = DEVICE_CLASS(klass);
    VirtioDeviceClass *vdc = VIRTIO_DEVICE_CLASS(klass);
    unsigned int i;

    device_class_set_props(dc, virtio_blk_pfbd_properties);
    for (i = 0; i < ARRAY_SIZE(virtio_blk_pfbd_property_help); i++) {
        const char *name = virtio_blk_pfbd_property_help[i].name;

        /* A description whose property was renamed: every start fails */
        if (!object_class_property_find(klass, name)) {
            error_report("virtio-blk-pfbd: a description for the unknown "
                         "property '%s'", name);
            abort();
        }
        object_class_property_set_description(klass,
            virtio_blk_pfbd_property_help[i].name,
            virtio_blk_pfbd_property_help[i].description);
    }
    dc->vmsd = &vmstate_virtio_blk_pfbd;
    dc->desc = "virtio-blk with a native per-queue data plane (libpfbd)";
    set_bit(DEVICE_CATEGORY_STORAGE, dc->categories);
    vdc->realize = virtio_blk_pfbd_device_realize;
    vdc->unrealize = virtio_blk_pfbd_device_unrealize;
    vdc->get_config = virtio_blk_pfbd_update_config;
    vdc->set_config = virtio_blk_pfbd_set_config;
    vdc->get_features = virtio_blk_pfbd_get_features;
    vdc->set_status = virtio_blk_pfbd_set_status;
    vdc->reset = virtio_blk_pfbd_reset;
    vdc->vmsd = &vmstate_virtio_blk_pfbd_device;
    vdc->start_ioeventfd = virtio_blk_pfbd_start_ioeventfd;
    vdc->stop_ioeventfd = virtio_blk_pfbd_stop_ioeventfd;
    vdc->queue_reset = virtio_blk_pfbd_queue_reset;
    vdc->queue_enable = virtio_blk_pfbd_queue_enable;

    object_class_property_add(klass, "volume-size", "uint64",
                              virtio_blk_pfbd_get_volume_size,
                              virtio_blk_pfbd_set_volume_size, NULL, NULL);
    object_class_property_set_description(klass, "volume-size",
        "the capacity the guest sees, in bytes; set it to 0 to re-read the "
        "volume's size (after growing the file or resizing the rbd image) "
        "and notify the guest");
    virtio_blk_pfbd_stats_class_init(klass);
}

static const TypeInfo virtio_blk_pfbd_info = {
    .name = TYPE_VIRTIO_BLK_PFBD,
    .parent = TYPE_VIRTIO_DEVICE,
    .instance_size = sizeof(VirtIOBlockPfbd),
    .instance_init = virtio_blk_pfbd_instance_init,
    .class_init = virtio_blk_pfbd_class_init,
};

static void virtio_blk_pfbd_register_types(void)
{
    type_register_static(&virtio_blk_pfbd_info);
}

type_init(virtio_blk_pfbd_register_types)

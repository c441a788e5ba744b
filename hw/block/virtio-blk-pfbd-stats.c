/*
 * virtio-blk-pfbd: per-virtqueue statistics
 *
 * Copyright (c) 2026 pfbd-qemu developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * The counters of each virtqueue (VirtIOBlockPfbdQueueStats) are written
 * by the thread that serves the queue only; this file reads them, from the
 * main loop, into the QAPI type VirtioBlkPfbdStats (qapi/virtio-blk-pfbd.json)
 * for the QOM property "stats" and the QMP command
 * query-virtio-blk-pfbd-stats.
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qapi/visitor.h"
#include "qapi/qapi-commands-virtio-blk-pfbd.h"
#include "qapi/qapi-visit-virtio-blk-pfbd.h"
#include "hw/virtio/virtio-blk-pfbd.h"

static VirtioBlkPfbdQueueStats *
virtio_blk_pfbd_queue_stats(VirtIOBlockPfbdQueue *q)
{
    VirtIOBlockPfbdQueueStats *st = &q->stats;
    VirtioBlkPfbdQueueStats *info = g_new0(VirtioBlkPfbdQueueStats, 1);
    VirtioBlkPfbdRequestCounts *req = g_new0(VirtioBlkPfbdRequestCounts, 1);
    VirtioBlkPfbdByteCounts *bytes = g_new0(VirtioBlkPfbdByteCounts, 1);
    uint64List **tail = &info->latency_histogram_us;
    int i;

    req->read = qatomic_read_u64(&st->requests[VIRTIO_BLK_PFBD_REQ_READ]);
    req->write = qatomic_read_u64(&st->requests[VIRTIO_BLK_PFBD_REQ_WRITE]);
    req->flush = qatomic_read_u64(&st->requests[VIRTIO_BLK_PFBD_REQ_FLUSH]);
    req->discard =
        qatomic_read_u64(&st->requests[VIRTIO_BLK_PFBD_REQ_DISCARD]);
    req->write_zeroes =
        qatomic_read_u64(&st->requests[VIRTIO_BLK_PFBD_REQ_WRITE_ZEROES]);
    req->get_id = qatomic_read_u64(&st->requests[VIRTIO_BLK_PFBD_REQ_GET_ID]);
    req->unsupported =
        qatomic_read_u64(&st->requests[VIRTIO_BLK_PFBD_REQ_UNSUPPORTED]);
    bytes->read = qatomic_read_u64(&st->bytes_read);
    bytes->write = qatomic_read_u64(&st->bytes_written);

    info->index = q->index;
    info->iothread = g_strdup(q->iothread_name);
    info->thread_id = qatomic_read_i64(&st->thread_id);
    info->requests = req;
    info->bytes = bytes;
    info->in_flight = qatomic_read_u64(&st->in_flight);
    info->max_in_flight = qatomic_read_u64(&st->max_in_flight);
    info->errors = qatomic_read_u64(&st->errors);
    info->batches = qatomic_read_u64(&st->batches);
    info->submits = qatomic_read_u64(&st->submits);
    info->notifies = qatomic_read_u64(&st->notifies);
    info->notifies_suppressed = qatomic_read_u64(&st->notifies_suppressed);
    for (i = 0; i < VIRTIO_BLK_PFBD_LAT_BUCKETS; i++) {
        QAPI_LIST_APPEND(tail, qatomic_read_u64(&st->latency[i]));
    }
    return info;
}

/* Context: BQL held */
static VirtioBlkPfbdStats *virtio_blk_pfbd_get_stats(VirtIOBlockPfbd *s)
{
    VirtioBlkPfbdStats *stats = g_new0(VirtioBlkPfbdStats, 1);
    VirtioBlkPfbdQueueStatsList **tail = &stats->queues;
    unsigned int i;

    for (i = 0; s->queues && i < s->conf.num_queues; i++) {
        QAPI_LIST_APPEND(tail, virtio_blk_pfbd_queue_stats(&s->queues[i]));
    }
    return stats;
}

static void virtio_blk_pfbd_get_stats_prop(Object *obj, Visitor *v,
                                           const char *name, void *opaque,
                                           Error **errp)
{
    g_autoptr(VirtioBlkPfbdStats) stats =
        virtio_blk_pfbd_get_stats(VIRTIO_BLK_PFBD(obj));

    visit_type_VirtioBlkPfbdStats(v, name, &stats, errp);
}

void virtio_blk_pfbd_stats_class_init(ObjectClass *klass)
{
    object_class_property_add(klass, "stats", "VirtioBlkPfbdStats",
                              virtio_blk_pfbd_get_stats_prop, NULL, NULL,
                              NULL);
    object_class_property_set_description(klass, "stats",
        "per-queue statistics: requests and bytes by type, in-flight, "
        "errors, batches, submits, notifications sent and suppressed, "
        "latency histogram (QMP: query-virtio-blk-pfbd-stats)");
}

VirtioBlkPfbdStats *qmp_query_virtio_blk_pfbd_stats(const char *path,
                                                   Error **errp)
{
    Object *obj = object_resolve_path(path, NULL);

    /* The PCI (or other transport) device: its virtio backend */
    if (obj && !object_dynamic_cast(obj, TYPE_VIRTIO_BLK_PFBD)) {
        obj = object_resolve_path_component(obj, "virtio-backend");
    }
    if (!obj || !object_dynamic_cast(obj, TYPE_VIRTIO_BLK_PFBD)) {
        error_setg(errp, "'%s' is not a virtio-blk-pfbd device", path);
        return NULL;
    }
    return virtio_blk_pfbd_get_stats(VIRTIO_BLK_PFBD(obj));
}

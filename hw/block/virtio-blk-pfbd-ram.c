/*
 * virtio-blk-pfbd: the guest RAM registered with the engine
 * (fixed-buffers=on)
 *
 * Copyright (c) 2026 pfbd-qemu developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * The RAM is kept pinned as VFIO keeps it: ram_block_discard_disable()
 * while registered, a RAM block notifier that unregisters a block before
 * it goes away, and a postcopy notifier that refuses postcopy migration.
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qemu/rcu.h"
#include "block/aio-wait.h"
#include "exec/memory.h"
#include "exec/ramblock.h"
#include "system/hostmem.h"
#include "migration/postcopy-ram.h"
#include "hw/virtio/virtio-blk-pfbd.h"
#include "trace.h"

/*
 * fixed-buffers=on: the guest RAM is registered with every engine queue, so
 * that the file engine moves data through io_uring fixed buffers (no
 * pinning and mapping of the pages per request).  The RAM stays pinned
 * while registered, as with VFIO: RAM discards (virtio-balloon, virtio-mem)
 * are refused.  A RAM block that goes away is unregistered first; one that
 * comes (a DIMM's memory backend) is registered as well.
 */
typedef struct VirtIOBlockPfbdRamScan {
    GArray *ram;
    void *gone;                 /* a block on its way out, or NULL */
} VirtIOBlockPfbdRamScan;

static int virtio_blk_pfbd_collect_ram(RAMBlock *rb, void *opaque)
{
    VirtIOBlockPfbdRamScan *scan = opaque;
    struct iovec iov;

    /* Guest RAM comes from memory backends; not ROMs or device memory */
    if (!object_dynamic_cast(memory_region_owner(rb->mr),
                             TYPE_MEMORY_BACKEND) ||
        (rb->flags & RAM_READONLY)) {
        return 0;
    }
    iov.iov_base = qemu_ram_get_host_addr(rb);
    iov.iov_len = qemu_ram_get_used_length(rb);
    if (iov.iov_base != scan->gone) {
        g_array_append_val(scan->ram, iov);
    }
    return 0;
}

/* The guest RAM now, but the block at @gone (NULL: none), in s->ram */
static void virtio_blk_pfbd_scan_ram(VirtIOBlockPfbd *s, void *gone)
{
    VirtIOBlockPfbdRamScan scan = {
        .ram = g_array_new(false, false, sizeof(struct iovec)),
        .gone = gone,
    };

    WITH_RCU_READ_LOCK_GUARD() {
        qemu_ram_foreach_block(virtio_blk_pfbd_collect_ram, &scan);
    }
    g_free(s->ram);
    s->ram_count = scan.ram->len;
    s->ram = (struct iovec *)g_array_free(scan.ram, false);
}

/*
 * Hand the queue the guest RAM now in s->ram: libpfbd registers it before
 * the queue's next request, once those in flight have completed, and
 * sends nothing before (the pinning happens in the IOThread then, not
 * while the main loop waits here).  The result comes as the trace event
 * pfbd_memory_registered; on failure nothing is registered: requests
 * work, mapped as usual.
 *
 * Context: BH in the virtqueue's AioContext, the main loop waiting for it
 */
static void virtio_blk_pfbd_ram_changed_bh(void *opaque)
{
    VirtIOBlockPfbdQueue *q = opaque;
    VirtIOBlockPfbd *s = q->s;
    int ret;

    ret = pfbd_queue_register_memory_later(q->pq, s->ram, s->ram_count);
    trace_virtio_blk_pfbd_register_ram(s, q->index, s->ram_count, ret);
}

/* The same, after the queue has stopped using what it registered */
static void virtio_blk_pfbd_ram_going_bh(void *opaque)
{
    VirtIOBlockPfbdQueue *q = opaque;

    /* This stops the use of the ranges even when it fails */
    pfbd_queue_register_memory(q->pq, NULL, 0);
    virtio_blk_pfbd_ram_changed_bh(q);
}

/* Context: BQL held, a RAM block added (a DIMM's memory backend) */
static void virtio_blk_pfbd_ram_block_added(RAMBlockNotifier *n, void *host,
                                            size_t size, size_t max_size)
{
    VirtIOBlockPfbd *s = container_of(n, VirtIOBlockPfbd, ram_notifier);
    struct iovec *old = g_steal_pointer(&s->ram);
    unsigned int old_count = s->ram_count;
    unsigned int i;

    virtio_blk_pfbd_scan_ram(s, NULL);
    /* Not guest RAM, or the blocks already registered (at realize) */
    if (s->ram_count == old_count &&
        !memcmp(s->ram, old, old_count * sizeof(old[0]))) {
        g_free(old);
        return;
    }
    g_free(old);
    for (i = 0; i < s->conf.num_queues; i++) {
        aio_wait_bh_oneshot(s->queues[i].ctx, virtio_blk_pfbd_ram_changed_bh,
                            &s->queues[i]);
    }
}

/* Context: BQL held, before the RAM block's memory is unmapped */
static void virtio_blk_pfbd_ram_block_removed(RAMBlockNotifier *n,
                                              void *host, size_t size,
                                              size_t max_size)
{
    VirtIOBlockPfbd *s = container_of(n, VirtIOBlockPfbd, ram_notifier);
    uintptr_t start = (uintptr_t)host;
    bool overlaps = false;
    unsigned int i;

    for (i = 0; i < s->ram_count; i++) {
        uintptr_t base = (uintptr_t)s->ram[i].iov_base;

        if (start < base + s->ram[i].iov_len && base < start + max_size) {
            overlaps = true;
        }
    }
    if (!overlaps) {
        return;
    }
    virtio_blk_pfbd_scan_ram(s, host);
    for (i = 0; i < s->conf.num_queues; i++) {
        aio_wait_bh_oneshot(s->queues[i].ctx, virtio_blk_pfbd_ram_going_bh,
                            &s->queues[i]);
    }
}

/*
 * Postcopy migration discards the destination's RAM and fills it page by
 * page: pinned pages would no longer be the guest's.
 */
static int virtio_blk_pfbd_postcopy_notify(NotifierWithReturn *n,
                                           void *data, Error **errp)
{
    VirtIOBlockPfbd *s = container_of(n, VirtIOBlockPfbd,
                                      postcopy_notifier);
    struct PostcopyNotifyData *pnd = data;
    g_autofree char *path = NULL;

    if (pnd->reason == POSTCOPY_NOTIFY_PROBE) {
        path = object_get_canonical_path(OBJECT(s));
        error_setg(errp, "%s: virtio-blk-pfbd with fixed-buffers=on pins "
                   "the guest RAM", path);
        return -ENOTSUP;
    }
    return 0;
}

/* Context: realize, before any queue has served a request */
bool virtio_blk_pfbd_register_ram(VirtIOBlockPfbd *s, Error **errp)
{
    unsigned int i;
    int ret;

    ret = ram_block_discard_disable(true);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "fixed-buffers=on pins the guest RAM, "
                         "which a device that discards RAM (virtio-mem) "
                         "does not allow");
        return false;
    }
    s->ram_discard_disabled = true;

    virtio_blk_pfbd_scan_ram(s, NULL);
    for (i = 0; i < s->conf.num_queues; i++) {
        ret = pfbd_queue_register_memory(s->queues[i].pq, s->ram,
                                         s->ram_count);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "cannot register the guest RAM "
                             "with engine queue %u of volume '%s' "
                             "(fixed-buffers=on)", i, s->volume_shown);
            return false;
        }
    }
    s->ram_notifier.ram_block_added = virtio_blk_pfbd_ram_block_added;
    s->ram_notifier.ram_block_removed = virtio_blk_pfbd_ram_block_removed;
    ram_block_notifier_add(&s->ram_notifier);
    s->postcopy_notifier.notify = virtio_blk_pfbd_postcopy_notify;
    postcopy_add_notifier(&s->postcopy_notifier);
    return true;
}

void virtio_blk_pfbd_unregister_ram(VirtIOBlockPfbd *s)
{
    g_free(s->ram);
    s->ram = NULL;
    s->ram_count = 0;
    if (s->ram_notifier.ram_block_removed) {
        /* This calls ram_block_removed() for every block: nothing to do */
        ram_block_notifier_remove(&s->ram_notifier);
        s->ram_notifier.ram_block_added = NULL;
        s->ram_notifier.ram_block_removed = NULL;
    }
    if (s->postcopy_notifier.notify) {
        postcopy_remove_notifier(&s->postcopy_notifier);
        s->postcopy_notifier.notify = NULL;
    }
}

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

/*
 * fixed-buffers=on: the guest RAM is registered with every engine queue, so
 * that the file engine moves data through io_uring fixed buffers (no
 * pinning and mapping of the pages per request).  The RAM stays pinned
 * while registered, as with VFIO: RAM discards (virtio-balloon, virtio-mem)
 * are refused, and a RAM block that goes away is unregistered first.
 */
static int virtio_blk_pfbd_collect_ram(RAMBlock *rb, void *opaque)
{
    GArray *ram = opaque;
    struct iovec iov;

    /* Guest RAM comes from memory backends; not ROMs or device memory */
    if (!object_dynamic_cast(memory_region_owner(rb->mr),
                             TYPE_MEMORY_BACKEND) ||
        (rb->flags & RAM_READONLY)) {
        return 0;
    }
    iov.iov_base = qemu_ram_get_host_addr(rb);
    iov.iov_len = qemu_ram_get_used_length(rb);
    g_array_append_val(ram, iov);
    return 0;
}

/* Context: BH in the virtqueue's AioContext */
static void virtio_blk_pfbd_unregister_ram_bh(void *opaque)
{
    VirtIOBlockPfbdQueue *q = opaque;

    /* This stops the use of the ranges even when it fails */
    pfbd_queue_register_memory(q->pq, NULL, 0);
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
    for (i = 0; i < s->conf.num_queues; i++) {
        aio_wait_bh_oneshot(s->queues[i].ctx,
                            virtio_blk_pfbd_unregister_ram_bh,
                            &s->queues[i]);
    }
    g_free(s->ram);
    s->ram = NULL;
    s->ram_count = 0;
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
    GArray *ram = g_array_new(false, false, sizeof(struct iovec));
    unsigned int i;
    int ret;

    ret = ram_block_discard_disable(true);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "fixed-buffers=on pins the guest RAM, "
                         "which a device that discards RAM (virtio-mem) "
                         "does not allow");
        g_array_free(ram, true);
        return false;
    }
    s->ram_discard_disabled = true;

    WITH_RCU_READ_LOCK_GUARD() {
        qemu_ram_foreach_block(virtio_blk_pfbd_collect_ram, ram);
    }
    s->ram_count = ram->len;
    s->ram = (struct iovec *)g_array_free(ram, false);
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
        s->ram_notifier.ram_block_removed = NULL;
    }
    if (s->postcopy_notifier.notify) {
        postcopy_remove_notifier(&s->postcopy_notifier);
        s->postcopy_notifier.notify = NULL;
    }
}

/*
 * virtio-blk-pfbd: virtio-blk with a per-virtqueue native data plane
 *
 * Copyright (c) 2026 pfbd-qemu developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef QEMU_VIRTIO_BLK_PFBD_H
#define QEMU_VIRTIO_BLK_PFBD_H

#include "standard-headers/linux/virtio_blk.h"
#include "hw/virtio/virtio.h"
#include "exec/ramlist.h"
#include "system/iothread.h"
#include "qemu/event_notifier.h"
#include "qemu/queue.h"
#include "qemu/timer.h"
#include "qom/object.h"
#include "qapi/qapi-types-virtio.h"
#include "qapi/qapi-types-block-core.h"
#include "pfbd.h"

#define TYPE_VIRTIO_BLK_PFBD "virtio-blk-pfbd-device"
OBJECT_DECLARE_SIMPLE_TYPE(VirtIOBlockPfbd, VIRTIO_BLK_PFBD)

#define VIRTIO_BLK_PFBD_AUTO_NUM_QUEUES UINT16_MAX

typedef struct VirtIOBlockPfbdConf {
    char *volume;
    char *serial;
    char *iowq_cpus;            /* file engine: io_uring workers' CPUs */
    IOThread *iothread;
    IOThreadVirtQueueMappingList *iothread_vq_mapping_list;
    uint16_t num_queues;
    uint16_t queue_size;
    uint32_t logical_block_size;
    uint32_t physical_block_size;
    uint32_t max_discard_sectors;
    uint32_t max_write_zeroes_sectors;
    bool seg_max_adjust;
    bool read_only;
    bool fixed_buffers;
    bool share_rw;              /* other writers of the image are allowed */
    OnOffAuto locking;          /* file engine: QEMU's image locks */
    BlockdevOnError rerror;
    BlockdevOnError werror;
} VirtIOBlockPfbdConf;

/* Request classes counted by the per-queue statistics */
typedef enum VirtIOBlockPfbdReqClass {
    VIRTIO_BLK_PFBD_REQ_READ,
    VIRTIO_BLK_PFBD_REQ_WRITE,
    VIRTIO_BLK_PFBD_REQ_FLUSH,
    VIRTIO_BLK_PFBD_REQ_DISCARD,
    VIRTIO_BLK_PFBD_REQ_WRITE_ZEROES,
    VIRTIO_BLK_PFBD_REQ_GET_ID,
    VIRTIO_BLK_PFBD_REQ_UNSUPPORTED,
    VIRTIO_BLK_PFBD_REQ__MAX,
} VirtIOBlockPfbdReqClass;

/* Latency bucket i counts [2^i, 2^(i+1)) microseconds; 0 is < 2 us */
#define VIRTIO_BLK_PFBD_LAT_BUCKETS 24

/*
 * Per-virtqueue statistics, readable over QMP as the "stats" property.
 * Written only by the thread that serves the virtqueue, with
 * qatomic_set_u64() so that the main loop can read them at any time.
 */
typedef struct VirtIOBlockPfbdQueueStats {
    aligned_uint64_t requests[VIRTIO_BLK_PFBD_REQ__MAX];
    aligned_uint64_t bytes_read;
    aligned_uint64_t bytes_written;
    aligned_uint64_t errors;        /* requests completed with IOERR */
    aligned_uint64_t batches;       /* handler runs that popped requests */
    aligned_uint64_t submits;       /* engine submissions (flushes) */
    aligned_uint64_t notifies;      /* guest notifications sent */
    aligned_uint64_t notifies_suppressed; /* ... and suppressed by it */
    aligned_uint64_t in_flight;
    aligned_uint64_t max_in_flight;
    aligned_uint64_t latency[VIRTIO_BLK_PFBD_LAT_BUCKETS];
    aligned_int64_t thread_id;      /* host thread serving the queue, or 0 */
} VirtIOBlockPfbdQueueStats;

/*
 * Per-virtqueue state.  Everything below is touched only by the thread of
 * the virtqueue's AioContext while ioeventfd is started, and only with the
 * BQL held while it is stopped.
 */
typedef struct VirtIOBlockPfbdQueue {
    struct VirtIOBlockPfbd *s;
    VirtQueue *vq;
    AioContext *ctx;
    PfbdQueue *pq;                  /* the engine's queue */
    EventNotifier completion;       /* wraps pfbd_queue_get_fd() */
    QEMUTimer *retry_timer;         /* after a failed engine submit */
    unsigned int index;
    unsigned int used_pending;      /* filled in the used ring, not flushed */
    int64_t now_ns;                 /* get_clock() once per handler run */
    /*
     * Requests that failed with rerror/werror=stop, newest first: resent
     * when the VM runs again.  The queue's thread owns the list while the
     * queue runs, the main loop while it is stopped.
     */
    struct VirtIOBlockPfbdReq *parked;
    char *iothread_name;            /* for the stats; "main-loop" if none */
    VirtIOBlockPfbdQueueStats stats;
} VirtIOBlockPfbdQueue;

struct VirtIOBlockPfbd {
    VirtIODevice parent_obj;
    VirtIOBlockPfbdConf conf;
    int32_t bootindex;

    PfbdVolume *volume;
    char *volume_shown;         /* conf.volume without secrets (malloc) */
    /* "volume": "@NAME": what pfbd-volume-open kept under NAME */
    struct VirtIOBlockPfbdNamedVolume *named;
    Notifier lock_exit;         /* drops the image locks at exit */
    NotifierWithReturn lock_migration;  /* passes them on to migrate */
    bool locked;                /* the image locks are taken */
    bool migrating;             /* a migration of this VM is under way */
    PfbdVolumeInfo info;            /* at open; the size may change */
    uint32_t seg_max;               /* data segments per request */
    uint64_t max_request_bytes;     /* seg_max x size_max */
    bool writeback;                 /* guest-visible write cache enabled */

    uint64_t host_features;
    size_t config_size;

    AioContext **vq_aio_context;
    VirtIOBlockPfbdQueue *queues;

    VMChangeStateEntry *change;     /* resends parked requests on cont */
    MemoryListener map_listener;    /* flushes the queues' map caches */
    unsigned int map_flushes;       /* flush BHs scheduled, not yet run */

    /* fixed-buffers=on: guest RAM registered with the engine queues */
    struct iovec *ram;
    unsigned int ram_count;
    RAMBlockNotifier ram_notifier;  /* drops them when RAM goes away */
    NotifierWithReturn postcopy_notifier;   /* refuses postcopy */
    bool ram_discard_disabled;

    bool ioeventfd_disabled;
    bool ioeventfd_started;
    bool ioeventfd_starting;
    bool ioeventfd_stopping;
};

typedef struct VirtIOBlockPfbdReq {
    VirtQueueElement elem;
    VirtIOBlockPfbdQueue *q;
    uint8_t *status;                /* the guest's status byte */
    uint32_t in_len;                /* used length: all of in_sg */
    struct iovec *iov_copy;         /* data iovec when it had to be trimmed */
    uint64_t sector;
    uint64_t bytes;                 /* data bytes of a read or write */
    int64_t start_ns;               /* queue's now_ns when it was popped */
    uint32_t type;
    /* What went to libpfbd, to send it again after an error stop */
    PfbdOp op;
    const struct iovec *iov;
    int iovcnt;
    uint64_t len;
    unsigned int flags;
    struct VirtIOBlockPfbdReq *next_parked;
    bool migrated;                  /* parked on a migration's source */
} VirtIOBlockPfbdReq;

/* hw/block/virtio-blk-pfbd-volumes.c: volumes of QMP pfbd-volume-open */
typedef struct VirtIOBlockPfbdNamedVolume {
    PfbdVolume *vol;            /* NULL while the open runs */
    char *shown;                /* its spec without secrets (malloc) */
    bool read_only;             /* opened read-only */
    bool iowq_cpus;             /* opened with iowq-cpus */
} VirtIOBlockPfbdNamedVolume;

VirtIOBlockPfbdNamedVolume *virtio_blk_pfbd_take_volume(const char *name,
                                                        Error **errp);
void virtio_blk_pfbd_give_back_volume(const char *name,
                                      VirtIOBlockPfbdNamedVolume *nv);
int virtio_blk_pfbd_secret_lookup(void *opaque, const char *id,
                                  char **valuep, char **errmsg);

/* hw/block/virtio-blk-pfbd-stats.c: the "stats" property */
void virtio_blk_pfbd_stats_class_init(ObjectClass *klass);

/* hw/block/virtio-blk-pfbd-ram.c: fixed-buffers=on */
bool virtio_blk_pfbd_register_ram(VirtIOBlockPfbd *s, Error **errp);
void virtio_blk_pfbd_unregister_ram(VirtIOBlockPfbd *s);

#endif

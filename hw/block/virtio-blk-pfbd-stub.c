/*
 * virtio-blk-pfbd: QMP commands of targets built without the device
 *
 * Copyright (c) 2026 pfbd-qemu developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qapi/qapi-commands-virtio-blk-pfbd.h"

VirtioBlkPfbdStats *qmp_query_virtio_blk_pfbd_stats(const char *path,
                                                   Error **errp)
{
    error_setg(errp, "virtio-blk-pfbd is not built into this QEMU");
    return NULL;
}

void coroutine_fn qmp_pfbd_volume_open(const char *name, const char *volume,
                                       bool has_read_only, bool read_only,
                                       const char *iowq_cpus, Error **errp)
{
    error_setg(errp, "virtio-blk-pfbd is not built into this QEMU");
}

void qmp_pfbd_volume_close(const char *name, Error **errp)
{
    error_setg(errp, "virtio-blk-pfbd is not built into this QEMU");
}

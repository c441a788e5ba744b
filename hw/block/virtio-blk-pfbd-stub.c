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

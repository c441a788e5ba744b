/*
 * libqos driver framework: the virtio-blk-pfbd PCI device
 *
 * Copyright (c) 2026 pfbd-qemu developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef TESTS_LIBQOS_VIRTIO_BLK_PFBD_H
#define TESTS_LIBQOS_VIRTIO_BLK_PFBD_H

#include "../libqtest.h"

/*
 * qvirtio_blk_pfbd_resize: what block_resize of a -drive is to
 * virtio-blk: set the size of the node's volume file to @size bytes and
 * make the device re-read it (qom-set of its "volume-size" to 0), which
 * notifies the guest of the configuration change.
 */
void qvirtio_blk_pfbd_resize(QTestState *qts, int64_t size);

/*
 * qvirtio_blk_pfbd_reset_volume: give the node's volume file its size
 * again (64 MiB), before a test starts QEMU
 */
void qvirtio_blk_pfbd_reset_volume(void);

#endif

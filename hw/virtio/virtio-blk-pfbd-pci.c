/*
 * virtio-blk-pfbd: its PCI proxy
 *
 * Copyright (c) 2026 pfbd-qemu developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * The guest sees a virtio block device on PCI, as with virtio-blk-pci:
 * the PCI side (IDs, properties, queue and vector counts) is the one
 * virtio-blk-pci.c shares (hw/virtio/virtio-blk-pci.h); what is ours is
 * the back end embedded in the proxy.
 */

#include "qemu/osdep.h"

#include "hw/virtio/virtio-blk.h"
#include "hw/virtio/virtio-blk-pci.h"
#include "hw/virtio/virtio-blk-pfbd.h"
#include "qemu/module.h"
#include "qom/object.h"

/* "num-queues" means the same on both devices */
QEMU_BUILD_BUG_ON(VIRTIO_BLK_PFBD_AUTO_NUM_QUEUES !=
                  VIRTIO_BLK_AUTO_NUM_QUEUES);

#define TYPE_VIRTIO_BLK_PFBD_PCI "virtio-blk-pfbd-pci-base"

typedef struct VirtIOBlockPfbdPCI {
    VirtIOPCIProxy parent_obj;
    VirtIOBlockPfbd vdev;
} VirtIOBlockPfbdPCI;

DECLARE_INSTANCE_CHECKER(VirtIOBlockPfbdPCI, VIRTIO_BLK_PFBD_PCI,
                         TYPE_VIRTIO_BLK_PFBD_PCI)

static void virtio_blk_pfbd_pci_realize(VirtIOPCIProxy *vpci_dev,
                                        Error **errp)
{
    VirtIOBlockPfbdPCI *proxy = VIRTIO_BLK_PFBD_PCI(vpci_dev);

    virtio_blk_pci_realize_vdev(vpci_dev, DEVICE(&proxy->vdev),
                                &proxy->vdev.conf.num_queues, errp);
}

static void virtio_blk_pfbd_pci_class_init(ObjectClass *klass, void *data)
{
    virtio_blk_pci_class_init_common(klass);
    VIRTIO_PCI_CLASS(klass)->realize = virtio_blk_pfbd_pci_realize;
}

static void virtio_blk_pfbd_pci_instance_init(Object *obj)
{
    VirtIOBlockPfbdPCI *proxy = VIRTIO_BLK_PFBD_PCI(obj);

    virtio_instance_init_common(obj, &proxy->vdev, sizeof(proxy->vdev),
                                TYPE_VIRTIO_BLK_PFBD);
    /* -device virtio-blk-pfbd,bootindex=N sets the back end's */
    object_property_add_alias(obj, "bootindex", OBJECT(&proxy->vdev),
                              "bootindex");
}

static const VirtioPCIDeviceTypeInfo virtio_blk_pfbd_pci_types = {
    .base_name = TYPE_VIRTIO_BLK_PFBD_PCI,
    .generic_name = "virtio-blk-pfbd-pci",
    .transitional_name = "virtio-blk-pfbd-pci-transitional",
    .non_transitional_name = "virtio-blk-pfbd-pci-non-transitional",
    .instance_size = sizeof(VirtIOBlockPfbdPCI),
    .instance_init = virtio_blk_pfbd_pci_instance_init,
    .class_init = virtio_blk_pfbd_pci_class_init,
};

static void virtio_blk_pfbd_pci_register_types(void)
{
    virtio_pci_types_register(&virtio_blk_pfbd_pci_types);
}

type_init(virtio_blk_pfbd_pci_register_types)

/*
 * virtio-blk-pfbd PCI bindings
 *
 * Derived from hw/virtio/virtio-blk-pci.c (Virtio blk PCI Bindings), with
 * the names changed and the properties of virtio-blk-pfbd:
 *
 * Copyright IBM, Corp. 2007
 * Copyright (c) 2009 CodeSourcery
 * Copyright (c) 2026 pfbd-qemu developers
 *
 * Authors:
 *  Anthony Liguori   <aliguori@us.ibm.com>
 *  Paul Brook        <paul@codesourcery.com>
 *
 * This work is licensed under the terms of the GNU GPL, version 2.  See
 * the COPYING file in the top-level directory.
 *
 * Contributions after 2012-01-13 are licensed under the terms of the
 * GNU GPL, version 2 or (at your option) any later version.
 */

#include "qemu/osdep.h"

#include "hw/qdev-properties.h"
#include "hw/virtio/virtio-blk-pfbd.h"
#include "hw/virtio/virtio-pci.h"
#include "qapi/error.h"
#include "qemu/module.h"
#include "qom/object.h"

typedef struct VirtIOBlockPfbdPCI VirtIOBlockPfbdPCI;

/*
 * virtio-blk-pfbd-pci: This extends VirtioPCIProxy.
 */
#define TYPE_VIRTIO_BLK_PFBD_PCI "virtio-blk-pfbd-pci-base"
DECLARE_INSTANCE_CHECKER(VirtIOBlockPfbdPCI, VIRTIO_BLK_PFBD_PCI,
                         TYPE_VIRTIO_BLK_PFBD_PCI)

struct VirtIOBlockPfbdPCI {
    VirtIOPCIProxy parent_obj;
    VirtIOBlockPfbd vdev;
};

static const Property virtio_blk_pfbd_pci_properties[] = {
    DEFINE_PROP_UINT32("class", VirtIOPCIProxy, class_code, 0),
    DEFINE_PROP_BIT("ioeventfd", VirtIOPCIProxy, flags,
                    VIRTIO_PCI_FLAG_USE_IOEVENTFD_BIT, true),
    DEFINE_PROP_UINT32("vectors", VirtIOPCIProxy, nvectors,
                       DEV_NVECTORS_UNSPECIFIED),
};

static void virtio_blk_pfbd_pci_realize(VirtIOPCIProxy *vpci_dev,
                                        Error **errp)
{
    VirtIOBlockPfbdPCI *dev = VIRTIO_BLK_PFBD_PCI(vpci_dev);
    DeviceState *vdev = DEVICE(&dev->vdev);
    VirtIOBlockPfbdConf *conf = &dev->vdev.conf;

    if (conf->num_queues == VIRTIO_BLK_PFBD_AUTO_NUM_QUEUES) {
        conf->num_queues = virtio_pci_optimal_num_queues(0);
    }

    if (vpci_dev->nvectors == DEV_NVECTORS_UNSPECIFIED) {
        vpci_dev->nvectors = conf->num_queues + 1;
    }

    qdev_realize(vdev, BUS(&vpci_dev->bus), errp);
}

static void virtio_blk_pfbd_pci_class_init(ObjectClass *klass, void *data)
{
    DeviceClass *dc = DEVICE_CLASS(klass);
    VirtioPCIClass *k = VIRTIO_PCI_CLASS(klass);
    PCIDeviceClass *pcidev_k = PCI_DEVICE_CLASS(klass);

    set_bit(DEVICE_CATEGORY_STORAGE, dc->categories);
    device_class_set_props(dc, virtio_blk_pfbd_pci_properties);
    k->realize = virtio_blk_pfbd_pci_realize;
    /* The guest's stock virtio-blk driver binds to it */
    pcidev_k->vendor_id = PCI_VENDOR_ID_REDHAT_QUMRANET;
    pcidev_k->device_id = PCI_DEVICE_ID_VIRTIO_BLOCK;
    pcidev_k->revision = VIRTIO_PCI_ABI_VERSION;
    pcidev_k->class_id = PCI_CLASS_STORAGE_SCSI;
}

static void virtio_blk_pfbd_pci_instance_init(Object *obj)
{
    VirtIOBlockPfbdPCI *dev = VIRTIO_BLK_PFBD_PCI(obj);

    virtio_instance_init_common(obj, &dev->vdev, sizeof(dev->vdev),
                                TYPE_VIRTIO_BLK_PFBD);
    object_property_add_alias(obj, "bootindex", OBJECT(&dev->vdev),
                              "bootindex");
}

static const VirtioPCIDeviceTypeInfo virtio_blk_pfbd_pci_info = {
    .base_name              = TYPE_VIRTIO_BLK_PFBD_PCI,
    .generic_name           = "virtio-blk-pfbd-pci",
    .transitional_name      = "virtio-blk-pfbd-pci-transitional",
    .non_transitional_name  = "virtio-blk-pfbd-pci-non-transitional",
    .instance_size = sizeof(VirtIOBlockPfbdPCI),
    .instance_init = virtio_blk_pfbd_pci_instance_init,
    .class_init    = virtio_blk_pfbd_pci_class_init,
};

static void virtio_blk_pfbd_pci_register(void)
{
    virtio_pci_types_register(&virtio_blk_pfbd_pci_info);
}

type_init(virtio_blk_pfbd_pci_register)

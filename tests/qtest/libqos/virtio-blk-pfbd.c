/*
 * libqos driver framework: the virtio-blk-pfbd PCI device
 *
 * Copyright (c) 2026 pfbd-qemu developers
 *
 * The node's driver and constructor follow virtio-blk-pci's in
 * tests/qtest/libqos/virtio-blk.c:
 *
 * Copyright (c) 2018 Emanuele Giuseppe Esposito <e.emanuelegiuseppe@gmail.com>
 *
 * This library is free software; you can redistribute it and/or
 * modify it under the terms of the GNU Lesser General Public
 * License version 2.1 as published by the Free Software Foundation.
 *
 * This library is distributed in the hope that it will be useful,
 * but WITHOUT ANY WARRANTY; without even the implied warranty of
 * MERCHANTABILITY or FITNESS FOR A PARTICULAR PURPOSE.  See the GNU
 * Lesser General Public License for more details.
 *
 * You should have received a copy of the GNU Lesser General Public
 * License along with this library; if not, see <http://www.gnu.org/licenses/>
 *
 * The node "virtio-blk-pfbd-pci" produces the "virtio-blk" interface, so
 * that upstream's virtio-blk qtests (tests/qtest/virtio-blk-test.c) run
 * against virtio-blk-pfbd unchanged.  The device object is the same as
 * virtio-blk-pci's (QVirtioBlkPCI): the tests that cast to it work too.
 *
 * Those tests expect a 64 MiB disk.  virtio-blk-pfbd takes no -drive, so
 * the node gives the device a volume of its own: a sparse 64 MiB file made
 * when the node is registered and removed when the test program exits.
 */

#include "qemu/osdep.h"
#include "../libqtest.h"
#include "qemu/module.h"
#include "standard-headers/linux/virtio_blk.h"
#include "qgraph.h"
#include "virtio-blk.h"
#include "virtio-blk-pfbd.h"

#define PCI_SLOT                0x04
#define PCI_FN                  0x00
#define PFBD_QOS_VOLUME_SIZE    (64 * 1024 * 1024)

static char *pfbd_qos_volume;

static void *qvirtio_blk_pfbd_pci_get_driver(void *object,
                                             const char *interface)
{
    QVirtioBlkPCI *v_blk = object;

    if (!g_strcmp0(interface, "pci-device")) {
        return v_blk->pci_vdev.pdev;
    }
    if (!g_strcmp0(interface, "virtio-blk")) {
        return &v_blk->blk;
    }
    if (!g_strcmp0(interface, "virtio")) {
        return v_blk->blk.vdev;
    }

    fprintf(stderr, "%s not present in virtio-blk-pfbd-pci\n", interface);
    g_assert_not_reached();
}

static void *virtio_blk_pfbd_pci_create(void *pci_bus,
                                        QGuestAllocator *t_alloc,
                                        void *addr)
{
    QVirtioBlkPCI *virtio_blk = g_new0(QVirtioBlkPCI, 1);
    QVirtioBlk *interface = &virtio_blk->blk;
    QOSGraphObject *obj = &virtio_blk->pci_vdev.obj;

    virtio_pci_init(&virtio_blk->pci_vdev, pci_bus, addr);
    interface->vdev = &virtio_blk->pci_vdev.vdev;
    /* No -drive to block_resize: virtio-blk-test.c resizes through this */
    interface->resize = qvirtio_blk_pfbd_resize;

    g_assert_cmphex(interface->vdev->device_type, ==, VIRTIO_ID_BLOCK);

    obj->get_driver = qvirtio_blk_pfbd_pci_get_driver;

    return obj;
}

void qvirtio_blk_pfbd_resize(QTestState *qts, int64_t size)
{
    g_assert_nonnull(pfbd_qos_volume);
    g_assert_cmpint(truncate(pfbd_qos_volume, size), ==, 0);
    qtest_qmp_assert_success(qts, "{ 'execute': 'qom-set', 'arguments': "
                             "{ 'path': '/machine/peripheral/drv0/"
                             "virtio-backend', 'property': 'volume-size', "
                             "'value': 0 } }");
}

void qvirtio_blk_pfbd_reset_volume(void)
{
    if (pfbd_qos_volume && truncate(pfbd_qos_volume,
                                    PFBD_QOS_VOLUME_SIZE) < 0) {
        /* QEMU will refuse the device and name the culprit */
    }
}

static void pfbd_qos_volume_remove(void)
{
    if (pfbd_qos_volume) {
        unlink(pfbd_qos_volume);
    }
}

/* A sparse file for the device's volume; NULL if none could be made */
static char *pfbd_qos_volume_create(void)
{
    char *path = NULL;
    int fd = g_file_open_tmp("qtest-pfbd.XXXXXX", &path, NULL);

    if (fd < 0) {
        return NULL;
    }
    if (ftruncate(fd, PFBD_QOS_VOLUME_SIZE) < 0) {
        close(fd);
        unlink(path);
        g_free(path);
        return NULL;
    }
    close(fd);
    return path;
}

static void virtio_blk_pfbd_register_nodes(void)
{
    QPCIAddress addr = {
        .devfn = QPCI_DEVFN(PCI_SLOT, PCI_FN),
    };
    QOSGraphEdgeOptions opts = { };
    g_autofree char *arg = NULL;

    pfbd_qos_volume = pfbd_qos_volume_create();
    if (!pfbd_qos_volume) {
        /* QEMU will refuse the device and name the culprit */
        pfbd_qos_volume = g_strdup("/nonexistent/qtest-pfbd-volume");
    } else {
        atexit(pfbd_qos_volume_remove);
    }

    arg = g_strdup_printf("id=drv0,volume=file:%s,addr=%x.%x",
                          pfbd_qos_volume, PCI_SLOT, PCI_FN);
    opts.extra_device_opts = arg;
    add_qpci_address(&opts, &addr);
    qos_node_create_driver("virtio-blk-pfbd-pci", virtio_blk_pfbd_pci_create);
    qos_node_consumes("virtio-blk-pfbd-pci", "pci-bus", &opts);
    qos_node_produces("virtio-blk-pfbd-pci", "virtio-blk");
}

libqos_init(virtio_blk_pfbd_register_nodes);

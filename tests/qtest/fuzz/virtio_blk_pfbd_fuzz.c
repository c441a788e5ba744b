/*
 * virtio-blk-pfbd fuzzing target
 *
 * Copyright (c) 2026 pfbd-qemu developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * The target's registration on the libqos graph follows
 * tests/qtest/fuzz/virtio_blk_fuzz.c (virtio-blk Fuzzing Target,
 * Copyright Red Hat Inc., 2020, GNU GPL, version 2 or later).
 *
 * The input is a sequence of virtio-blk requests that the fuzzer shapes:
 * the request type (mostly a valid one), the sector (often near the end
 * of the volume), the data length, how the header, data and status are
 * split over descriptors (merged, split, missing, empty), the payload of
 * discard and write-zeroes, the virtqueue, and when to kick.  Unlike the
 * generic fuzzer, which rarely builds a usable virtqueue, every input
 * reaches the device's request path.  The device runs on the libqos node
 * virtio-blk-pfbd-pci (a file volume) with two queues in the main loop.
 *
 * Lifecycle events interleave with the requests, as a guest's other vCPUs
 * and the management make them: after a request the input may reset the
 * device, reset one virtqueue (virtio-pci's queue_reset), stop and resume
 * the VM, change the memory map (a PAM segment of the low 1 MiB, where
 * requests may lie, turned to PCI and back to RAM), unplug the device
 * with its requests in flight and plug an identical one into its slot,
 * or write the common configuration as a driver must not: queue_size or
 * queue_enable of a live queue, queue_select, device_status.  Requests
 * may point their data or status at addresses outside guest RAM (an
 * unassigned address, MMIO, ROM).
 *
 * Two targets: virtio-blk-pfbd-fuzz serves the queues in the main loop;
 * virtio-blk-pfbd-iothread-fuzz on an IOThread, where the device's data
 * path runs in another thread than the one that writes the configuration
 * and drives the lifecycle, as with a KVM guest.
 */

#include "qemu/osdep.h"

#include "qapi/error.h"
#include "qobject/qdict.h"
#include "qemu/bswap.h"
#include "qemu/rcu.h"
#include "qom/object.h"
#include "monitor/qdev.h"
#include "hw/qdev-core.h"
#include "hw/pci/pci_regs.h"
#include "system/runstate.h"
#include "tests/qtest/libqtest.h"
#include "tests/qtest/libqos/virtio-blk.h"
#include "tests/qtest/libqos/virtio.h"
#include "tests/qtest/libqos/virtio-pci.h"
#include "standard-headers/linux/virtio_blk.h"
#include "standard-headers/linux/virtio_pci.h"
#include "standard-headers/linux/virtio_ring.h"
#include "fuzz.h"
#include "qos_fuzz.h"

#define PFBD_FUZZ_QUEUES    2
#define PFBD_FUZZ_MAX_DATA  (64 * 1024)

/* One request as the fuzzer gives it */
typedef struct QEMU_PACKED PfbdFuzzReq {
    uint8_t type;       /* index into pfbd_fuzz_types, or raw when >= */
    uint8_t layout;     /* how the request is split into descriptors */
    uint8_t queue;
    uint8_t kick;       /* bit 0: kick now; bits 1-3: PfbdFuzzEvent after */
    uint16_t sectors;   /* data length in sectors (or payload count) */
    uint16_t tail;      /* bytes of data beyond the sectors (misaligned) */
    uint64_t sector;
    uint32_t dwz_num;   /* discard/write-zeroes: num_sectors */
    uint32_t dwz_flags;
} PfbdFuzzReq;

static const uint32_t pfbd_fuzz_types[] = {
    VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES,
};

/* What may happen after a request (PfbdFuzzReq.kick bits 1-3) */
typedef enum PfbdFuzzEvent {
    PFBD_FUZZ_EV_NONE,
    PFBD_FUZZ_EV_RESET,         /* device reset, then set up again */
    PFBD_FUZZ_EV_QUEUE_RESET,   /* the request's queue reset and set up */
    PFBD_FUZZ_EV_STOP_CONT,     /* VM stop, then cont */
    PFBD_FUZZ_EV_PAM,           /* 0xC0000-0xC3FFF to PCI and back to RAM */
    PFBD_FUZZ_EV_REPLUG,        /* unplug, plug an identical device */
    PFBD_FUZZ_EV_COMMON_CFG,    /* a write to the common configuration */
    PFBD_FUZZ_EV_RESIZE_LIVE,   /* queue_size of the live queue, 16 times */
} PfbdFuzzEvent;

/*
 * Guest-physical addresses outside RAM for layout 7: nothing there (the
 * PCI hole below the BARs libqos maps), MMIO (I/O APIC, HPET) and ROM
 */
static const uint64_t pfbd_fuzz_outside_ram[] = {
    0xd0000000, 0xfec00000, 0xfed00000, 0xffff0000,
};

/* Serve the queues on IOThread io0 (virtio-blk-pfbd-iothread-fuzz) */
static bool pfbd_fuzz_iothread;

/* The ACPI PCI hotplug eject register of the PIIX4 PM (libqos/pci-pc.c) */
#define PFBD_FUZZ_ACPI_PCIHP_EJ 0xae08

static QVirtQueue *pfbd_fuzz_vq[PFBD_FUZZ_QUEUES];

/* Guest memory of the current input, freed after the reset */
static uint64_t pfbd_fuzz_mem[512];
static unsigned int pfbd_fuzz_nmem;
static unsigned int pfbd_fuzz_inputs;

static void pfbd_fuzz_setup(QVirtioDevice *dev, uint64_t features_mask)
{
    uint64_t features;
    int i;

    /* Reset, ACKNOWLEDGE, DRIVER */
    qvirtio_start_device(dev);
    features = qvirtio_get_features(dev);

    /* Let the input turn features off, but keep the ring layout libqos has */
    features &= features_mask | (1ull << VIRTIO_F_VERSION_1);
    features &= ~(QVIRTIO_F_BAD_FEATURE | (1ull << VIRTIO_F_RING_PACKED));
    qvirtio_set_features(dev, features);
    for (i = 0; i < PFBD_FUZZ_QUEUES; i++) {
        pfbd_fuzz_vq[i] = qvirtqueue_setup(dev, fuzz_qos_alloc, i);
    }
    qvirtio_set_driver_ok(dev);
}

/* Lay out @r in guest memory and add it to its virtqueue; return the head */
static uint32_t pfbd_fuzz_add(QTestState *s, const PfbdFuzzReq *r,
                              QVirtQueue *vq)
{
    struct virtio_blk_outhdr hdr;
    struct virtio_blk_discard_write_zeroes dwz;
    uint32_t type = r->type < ARRAY_SIZE(pfbd_fuzz_types) ?
                    pfbd_fuzz_types[r->type] : r->type * 0x01010101u;
    bool is_dwz = type == VIRTIO_BLK_T_DISCARD ||
                  type == VIRTIO_BLK_T_WRITE_ZEROES;
    bool data_in = type == VIRTIO_BLK_T_IN || type == VIRTIO_BLK_T_GET_ID;
    size_t len = MIN((size_t)r->sectors * 512 + (r->tail & 511),
                     PFBD_FUZZ_MAX_DATA);
    uint64_t addr, outside;
    uint32_t head;

    hdr.type = cpu_to_le32(type);
    hdr.ioprio = 0;
    hdr.sector = cpu_to_le64(r->sector);
    if (is_dwz) {
        dwz.sector = cpu_to_le64(r->sector);
        dwz.num_sectors = cpu_to_le32(r->dwz_num);
        dwz.flags = cpu_to_le32(r->dwz_flags);
        len = (r->layout & 0x20) ? sizeof(dwz) / 2 : sizeof(dwz);
    }

    addr = guest_alloc(fuzz_qos_alloc, 16 + len + 1);
    pfbd_fuzz_mem[pfbd_fuzz_nmem++] = addr;
    qtest_memwrite(s, addr, &hdr, sizeof(hdr));
    if (is_dwz) {
        qtest_memwrite(s, addr + 16, &dwz, len);
    } else if (len) {
        qtest_memset(s, addr + 16, 0xa5, len);
    }
    qtest_writeb(s, addr + 16 + len, 0xff);

    switch (r->layout & 0x7) {
    case 0: /* header | data | status */
    default:
        head = qvirtqueue_add(s, vq, addr, 16, false, true);
        if (len) {
            qvirtqueue_add(s, vq, addr + 16, len, data_in, true);
        }
        qvirtqueue_add(s, vq, addr + 16 + len, 1, true, false);
        break;
    case 1: /* header+data | status, or header | data+status */
        if (data_in) {
            head = qvirtqueue_add(s, vq, addr, 16, false, true);
            qvirtqueue_add(s, vq, addr + 16, len + 1, true, false);
        } else {
            head = qvirtqueue_add(s, vq, addr, 16 + len, false, true);
            qvirtqueue_add(s, vq, addr + 16 + len, 1, true, false);
        }
        break;
    case 2: /* data split in two */
        head = qvirtqueue_add(s, vq, addr, 16, false, true);
        qvirtqueue_add(s, vq, addr + 16, len / 2, data_in, true);
        qvirtqueue_add(s, vq, addr + 16 + len / 2, len - len / 2, data_in,
                       true);
        qvirtqueue_add(s, vq, addr + 16 + len, 1, true, false);
        break;
    case 3: /* no status descriptor */
        head = qvirtqueue_add(s, vq, addr, 16 + len, false, false);
        break;
    case 4: /* short header */
        head = qvirtqueue_add(s, vq, addr, r->tail % 16, false, true);
        qvirtqueue_add(s, vq, addr + 16 + len, 1, true, false);
        break;
    case 5: /* empty status */
        head = qvirtqueue_add(s, vq, addr, 16, false, true);
        qvirtqueue_add(s, vq, addr + 16 + len, 0, true, false);
        break;
    case 6: /* data in the wrong direction */
        head = qvirtqueue_add(s, vq, addr, 16, false, true);
        qvirtqueue_add(s, vq, addr + 16, len, !data_in, true);
        qvirtqueue_add(s, vq, addr + 16 + len, 1, true, false);
        break;
    case 7: /* data (0x40 set: status) outside guest RAM */
        outside = pfbd_fuzz_outside_ram[(r->tail >> 9) %
                                        ARRAY_SIZE(pfbd_fuzz_outside_ram)];
        head = qvirtqueue_add(s, vq, addr, 16, false, true);
        if (len) {
            qvirtqueue_add(s, vq, (r->layout & 0x40) ? addr + 16 : outside,
                           len, data_in, true);
        }
        qvirtqueue_add(s, vq, (r->layout & 0x40) ? outside : addr + 16 + len,
                       1, true, false);
        break;
    }
    return head;
}

/* Set virtqueue @i of @dev up again after a queue reset */
static void pfbd_fuzz_queue_reset(QVirtioDevice *dev, int i)
{
    QVirtioPCIDevice *pdev = container_of(dev, QVirtioPCIDevice, vdev);

    qpci_io_writew(pdev->pdev, pdev->bar, pdev->common_cfg_offset +
                   VIRTIO_PCI_COMMON_Q_SELECT, i);
    qpci_io_writew(pdev->pdev, pdev->bar, pdev->common_cfg_offset +
                   VIRTIO_PCI_COMMON_Q_RESET, 1);
    qvirtqueue_cleanup(dev->bus, pfbd_fuzz_vq[i], fuzz_qos_alloc);
    pfbd_fuzz_vq[i] = qvirtqueue_setup(dev, fuzz_qos_alloc, i);
}

/* Write @val to the common configuration field at @offset of @dev */
static void pfbd_fuzz_common_writew(QVirtioDevice *dev, uint32_t offset,
                                    uint16_t val)
{
    QVirtioPCIDevice *pdev = container_of(dev, QVirtioPCIDevice, vdev);

    qpci_io_writew(pdev->pdev, pdev->bar, pdev->common_cfg_offset + offset,
                   val);
}

/*
 * Unplug the device as device_del and the guest's ACPI eject do, with
 * whatever it has in flight, then plug an identical device (the same id,
 * slot, volume and queues) as device_add does, and give it the BARs and
 * PCI command that libqos gave the old one.  Its queues need setting up.
 */
static void pfbd_fuzz_replug(QTestState *s, QVirtioDevice *dev)
{
    QVirtioPCIDevice *pdev = container_of(dev, QVirtioPCIDevice, vdev);
    Object *old = object_resolve_path("/machine/peripheral/drv0", NULL);
    g_autofree char *volume = NULL;
    g_autofree char *addr = NULL;
    uint32_t bar[6];
    uint16_t cmd;
    DeviceState *new;
    QDict *opts;
    int i;

    g_assert(old);
    volume = object_property_get_str(old, "volume", &error_abort);
    addr = g_strdup_printf("%x.%x", pdev->pdev->devfn >> 3,
                           pdev->pdev->devfn & 7);
    for (i = 0; i < ARRAY_SIZE(bar); i++) {
        bar[i] = qpci_config_readl(pdev->pdev, PCI_BASE_ADDRESS_0 + i * 4);
    }
    cmd = qpci_config_readw(pdev->pdev, PCI_COMMAND);

    qdev_unplug(DEVICE(old), &error_abort);
    qtest_outl(s, PFBD_FUZZ_ACPI_PCIHP_EJ, 1 << (pdev->pdev->devfn >> 3));
    flush_events(s);
    g_assert(!object_resolve_path("/machine/peripheral/drv0", NULL));
    /*
     * The old device's memory goes through call_rcu(): free it now, or
     * inputs that replug often hold hundreds of MiB until the next drain
     */
    drain_call_rcu();

    opts = qdict_new();
    qdict_put_str(opts, "driver", "virtio-blk-pfbd-pci");
    qdict_put_str(opts, "id", "drv0");
    qdict_put_str(opts, "addr", addr);
    qdict_put_str(opts, "volume", volume);
    qdict_put_str(opts, "num-queues", stringify(PFBD_FUZZ_QUEUES));
    if (pfbd_fuzz_iothread) {
        qdict_put_str(opts, "iothread", "io0");
    }
    new = qdev_device_add_from_qdict(opts, false, &error_abort);
    object_unref(OBJECT(new));
    qobject_unref(opts);

    for (i = 0; i < ARRAY_SIZE(bar); i++) {
        qpci_config_writel(pdev->pdev, PCI_BASE_ADDRESS_0 + i * 4, bar[i]);
    }
    qpci_config_writew(pdev->pdev, PCI_COMMAND, cmd);
}

/*
 * Run @ev (@arg: the fuzzer's choice of register and value); returns false
 * if the device's queues were set up again (what was added to them is
 * gone)
 */
static bool pfbd_fuzz_event(QTestState *s, QVirtioDevice *dev,
                            PfbdFuzzEvent ev, int queue, uint64_t mask,
                            uint32_t arg)
{
    static const uint32_t cfg[] = {
        VIRTIO_PCI_COMMON_Q_SIZE, VIRTIO_PCI_COMMON_Q_ENABLE,
        VIRTIO_PCI_COMMON_Q_SELECT, VIRTIO_PCI_COMMON_STATUS,
    };
    QVirtioPCIDevice *pdev = container_of(dev, QVirtioPCIDevice, vdev);
    uint32_t offset;
    int i;

    switch (ev) {
    case PFBD_FUZZ_EV_COMMON_CFG:
        /* On the request's queue, or on the one the input selects */
        offset = cfg[arg % ARRAY_SIZE(cfg)];
        if (offset != VIRTIO_PCI_COMMON_Q_SELECT) {
            pfbd_fuzz_common_writew(dev, VIRTIO_PCI_COMMON_Q_SELECT, queue);
        }
        if (offset == VIRTIO_PCI_COMMON_STATUS) {
            qpci_io_writeb(pdev->pdev, pdev->bar,
                           pdev->common_cfg_offset + offset, arg >> 16);
            /* Whatever the status did, start over */
            ev = PFBD_FUZZ_EV_RESET;
            break;
        }
        pfbd_fuzz_common_writew(dev, offset, arg >> 16);
        return true;
    case PFBD_FUZZ_EV_RESIZE_LIVE:
        /* The queue's IOThread may be serving it meanwhile */
        for (i = 0; i < 16; i++) {
            pfbd_fuzz_common_writew(dev, VIRTIO_PCI_COMMON_Q_SELECT, queue);
            pfbd_fuzz_common_writew(dev, VIRTIO_PCI_COMMON_Q_SIZE,
                                    i % 2 ? pfbd_fuzz_vq[queue]->size :
                                            (arg >> 16) % 1025);
        }
        return true;
    default:
        break;
    }

    switch (ev) {
    case PFBD_FUZZ_EV_RESET:
        qvirtio_reset(dev);
        for (i = 0; i < PFBD_FUZZ_QUEUES; i++) {
            qvirtqueue_cleanup(dev->bus, pfbd_fuzz_vq[i], fuzz_qos_alloc);
        }
        pfbd_fuzz_setup(dev, mask);
        return false;
    case PFBD_FUZZ_EV_QUEUE_RESET:
        /* pfbd_fuzz_setup() keeps VIRTIO_F_VERSION_1: the modern layout */
        pfbd_fuzz_queue_reset(dev, queue);
        return false;
    case PFBD_FUZZ_EV_STOP_CONT:
        /* What QMP stop and cont do (the fuzzer has no QMP monitor) */
        vm_stop(RUN_STATE_PAUSED);
        vm_start();
        break;
    case PFBD_FUZZ_EV_PAM:
        /* i440FX PAM1: the low nibble of config byte 0x5a */
        qtest_outl(s, 0xcf8, 0x80000058);
        qtest_outb(s, 0xcfe, 0x00);
        qtest_outb(s, 0xcfe, 0x33);
        break;
    case PFBD_FUZZ_EV_REPLUG:
        pfbd_fuzz_replug(s, dev);
        for (i = 0; i < PFBD_FUZZ_QUEUES; i++) {
            qvirtqueue_cleanup(dev->bus, pfbd_fuzz_vq[i], fuzz_qos_alloc);
        }
        pfbd_fuzz_setup(dev, mask);
        return false;
    default:
        break;
    }
    return true;
}

static void pfbd_fuzz(QTestState *s, const unsigned char *data, size_t size)
{
    QVirtioBlkPCI *blk = fuzz_qos_obj;
    QVirtioDevice *dev = &blk->pci_vdev.vdev;
    uint32_t head[PFBD_FUZZ_QUEUES];
    bool pending[PFBD_FUZZ_QUEUES] = { false };
    uint64_t mask;
    PfbdFuzzReq r;
    int i;

    if (size < sizeof(mask)) {
        return;
    }
    memcpy(&mask, data, sizeof(mask));
    data += sizeof(mask);
    size -= sizeof(mask);
    pfbd_fuzz_setup(dev, mask);

    while (size >= sizeof(r)) {
        QVirtQueue *vq;
        uint32_t h;

        memcpy(&r, data, sizeof(r));
        data += sizeof(r);
        size -= sizeof(r);

        i = r.queue % PFBD_FUZZ_QUEUES;
        vq = pfbd_fuzz_vq[i];
        if (vq->num_free < 4 ||
            pfbd_fuzz_nmem == ARRAY_SIZE(pfbd_fuzz_mem)) {
            break;
        }
        h = pfbd_fuzz_add(s, &r, vq);
        if (!pending[i]) {
            head[i] = h;
            pending[i] = true;
        }
        if (r.kick & 1) {
            qvirtqueue_kick(s, dev, vq, head[i]);
            pending[i] = false;
            flush_events(s);
        }
        if (!pfbd_fuzz_event(s, dev, (r.kick >> 1) & 7, i, mask,
                             r.dwz_flags)) {
            /* Queues set up again: nothing of theirs is pending */
            memset(pending, 0, sizeof(pending));
            flush_events(s);
        }
    }
    for (i = 0; i < PFBD_FUZZ_QUEUES; i++) {
        if (pending[i]) {
            qvirtqueue_kick(s, dev, pfbd_fuzz_vq[i], head[i]);
        }
    }
    flush_events(s);
    /*
     * A device reset drains whatever is still in flight.  (A system reset
     * would also clear the PCI BARs that libqos mapped once.)
     */
    qvirtio_reset(dev);
    flush_events(s);

    for (i = 0; i < PFBD_FUZZ_QUEUES; i++) {
        qvirtqueue_cleanup(dev->bus, pfbd_fuzz_vq[i], fuzz_qos_alloc);
    }
    while (pfbd_fuzz_nmem) {
        guest_free(fuzz_qos_alloc, pfbd_fuzz_mem[--pfbd_fuzz_nmem]);
    }
    /*
     * Setting the rings up again replaces the virtqueues' region caches,
     * which are freed through call_rcu(): let the RCU thread catch up now
     * and then (a drain takes some 25 ms).
     */
    if (++pfbd_fuzz_inputs % 256 == 0) {
        drain_call_rcu();
    }
}

static void pfbd_fuzz_pre(QTestState *s)
{
    qos_init_path(s);
}

static void pfbd_fuzz_iothread_pre(QTestState *s)
{
    pfbd_fuzz_iothread = true;
    qos_init_path(s);
}

static void register_virtio_blk_pfbd_fuzz_targets(void)
{
    fuzz_add_qos_target(&(FuzzTarget){
                .name = "virtio-blk-pfbd-fuzz",
                .description = "Fuzz virtio-blk-pfbd with shaped "
                "virtio-blk requests on two virtqueues",
                .pre_fuzz = &pfbd_fuzz_pre,
                .fuzz = pfbd_fuzz,
                },
                "virtio-blk-pfbd-pci",
                &(QOSGraphTestOptions){
                    .edge.extra_device_opts = "num-queues=2",
                });
    fuzz_add_qos_target(&(FuzzTarget){
                .name = "virtio-blk-pfbd-iothread-fuzz",
                .description = "Fuzz virtio-blk-pfbd on an IOThread with "
                "shaped virtio-blk requests on two virtqueues",
                .pre_fuzz = &pfbd_fuzz_iothread_pre,
                .fuzz = pfbd_fuzz,
                },
                "virtio-blk-pfbd-pci",
                &(QOSGraphTestOptions){
                    .edge.after_cmd_line = "-object iothread,id=io0",
                    .edge.extra_device_opts = "num-queues=2,iothread=io0",
                });
}

fuzz_target_init(register_virtio_blk_pfbd_fuzz_targets);

/*
 * QTest testcases for virtio-blk-pfbd: every request type, bad guest
 * input, multi-queue with iothread-vq-mapping, reset and unplug with
 * requests in flight, and the per-queue statistics.
 *
 * Copyright (c) 2026 pfbd-qemu developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Each test starts its own QEMU (qtest accelerator, no guest) with a fresh
 * file volume, drives the device through libqos and checks what a guest
 * would see: the status byte, the data read back, and the volume's file.
 *
 * Upstream's tests/qtest/virtio-blk-test.c runs against virtio-blk-pfbd
 * too, through the libqos node "virtio-blk-pfbd-pci"
 * (tests/qtest/libqos/virtio-blk-pfbd.c), from qos-test: "basic",
 * "indirect", "config", "resize", "msix", "idx" and "nxvirtq" (those that
 * resize the disk resize the node's volume and set the device's
 * volume-size).  Only "hotplug", which plugs a stock virtio-blk-pci with a
 * -drive, does not apply; hot-plug of virtio-blk-pfbd is tested here
 * (test_hotplug_cycles).
 */

#include "qemu/osdep.h"
#include <sys/syscall.h>
#include "libqtest.h"
#include "qemu/atomic.h"
#include "qemu/bswap.h"
#include "qemu/cutils.h"
#include "qemu/memfd.h"
#include "qapi/error.h"
#include "qobject/qdict.h"
#include "qobject/qjson.h"
#include "qobject/qlist.h"
#include "qobject/qnum.h"
#include "standard-headers/linux/virtio_blk.h"
#include "standard-headers/linux/virtio_config.h"
#include "standard-headers/linux/virtio_pci.h"
#include "standard-headers/linux/virtio_ring.h"
#include "libqos/libqos-pc.h"
#include "libqos/virtio.h"
#include "libqos/virtio-pci.h"

#define VOLUME_SIZE         (16 * 1024 * 1024)
#define TIMEOUT_US          (30 * 1000 * 1000)
#define PCI_SLOT            0x04
#define PCI_SLOT_HP         0x06
#define MAX_VQS             8
#define STATS_PATH          "/machine/peripheral/drv0/virtio-backend"

typedef struct Pfbd {
    QOSState *qs;
    QTestState *qts;
    QVirtioPCIDevice *pdev;
    QVirtioDevice *dev;
    QVirtQueue *vq[MAX_VQS];
    unsigned int nvqs;
    char *image;        /* the volume's file, as /proc/PID/fd/N */
    int image_fd;       /* N */
} Pfbd;

/* One request laid out in guest memory */
typedef struct PfbdReq {
    uint64_t addr;      /* header, then data, then status */
    uint32_t head;      /* first descriptor */
    size_t len;         /* data bytes */
} PfbdReq;

/*
 * A fresh file of @size bytes for a volume that leaves no name behind in
 * /tmp: QEMU, and the test's own checks, open it through the returned
 * path, /proc/PID/fd/N of this process, which keeps N (in *@fd) until
 * pfbd_stop().  A test that fails or is killed leaves nothing behind.
 */
static char *image_create(uint64_t size, int *fd)
{
    g_autofree char *path = NULL;

    *fd = g_file_open_tmp("qtest-pfbd.XXXXXX", &path, NULL);
    g_assert(*fd >= 0);
    unlink(path);
    g_assert(ftruncate(*fd, size) == 0);
    return g_strdup_printf("/proc/%d/fd/%d", (int)getpid(), *fd);
}

/*
 * Shared memory of @size bytes for a memory-backend-file that has no name
 * in any file system: a memfd called @name, which QEMU opens through the
 * path returned in @mem_path, /proc/PID/fd/N of this process.  A test
 * that fails or is killed leaves nothing behind in /dev/shm.  Returns the
 * memfd, which the caller closes once QEMU has opened it.
 */
static int shared_ram_create(const char *name, size_t size, char **mem_path)
{
    int fd = qemu_memfd_create(name, size, false, 0, 0, &error_abort);

    *mem_path = g_strdup_printf("/proc/%d/fd/%d", (int)getpid(), fd);
    return fd;
}

/*
 * Start QEMU with @extra on its command line and the virtio-pci block
 * device @device (JSON for -device) in slot 4, and enable it.  The
 * device is set up with @nvqs virtqueues (the driver's side), without
 * EVENT_IDX and INDIRECT_DESC.
 */
static Pfbd *dev_start(const char *extra, const char *device,
                       unsigned int nvqs)
{
    Pfbd *p = g_new0(Pfbd, 1);

    p->qs = qtest_pc_boot("-nodefaults %s -device '%s'", extra, device);
    p->qts = p->qs->qts;
    p->pdev = virtio_pci_new(p->qs->pcibus,
                             &(QPCIAddress) {
                                 .devfn = QPCI_DEVFN(PCI_SLOT, 0)
                             });
    g_assert_nonnull(p->pdev);
    p->dev = &p->pdev->vdev;
    g_assert_cmphex(p->dev->device_type, ==, VIRTIO_ID_BLOCK);
    qvirtio_pci_device_enable(p->pdev);
    p->nvqs = nvqs;
    return p;
}

/* -device JSON of virtio-blk-pfbd "drv0" on @volume, with @props */
static char *pfbd_device_json(const char *volume, const char *props)
{
    return g_strdup_printf("{\"driver\": \"virtio-blk-pfbd-pci\", "
                           "\"id\": \"drv0\", \"addr\": \"%x.0\", "
                           "\"volume\": \"%s\"%s}", PCI_SLOT, volume, props);
}

/*
 * A stock virtio-blk-pci "drv0" on IOThread io0, for the holes that the
 * virtio core and virtio-pci share between virtio-blk-pfbd and stock
 * devices: -device JSON, and the -blockdev of its disk, a null-co node of
 * 16 MiB that takes @latency_ns per request
 */
static char *stock_device_json(void)
{
    return g_strdup_printf("{\"driver\": \"virtio-blk-pci\", "
                           "\"id\": \"drv0\", \"addr\": \"%x.0\", "
                           "\"drive\": \"disk0\", \"iothread\": \"io0\"}",
                           PCI_SLOT);
}

static char *stock_blockdev(uint64_t latency_ns)
{
    return g_strdup_printf("-blockdev '{\"driver\": \"null-co\", "
                           "\"node-name\": \"disk0\", \"size\": %d, "
                           "\"latency-ns\": %" PRIu64 "}'", VOLUME_SIZE,
                           latency_ns);
}

/* Start QEMU with the stock device of stock_device_json() */
static Pfbd *stock_start(uint64_t latency_ns)
{
    g_autofree char *device = stock_device_json();
    g_autofree char *blockdev = stock_blockdev(latency_ns);
    g_autofree char *extra = g_strdup_printf("-object iothread,id=io0 %s",
                                             blockdev);

    return dev_start(extra, device, 1);
}

/*
 * Start QEMU with a virtio-blk-pfbd device "drv0" in slot 4 on @volume.
 * @props are more JSON members for the device ("" or ", \"key\": value,
 * ..."), @extra more command line.
 */
static Pfbd *pfbd_start_volume(const char *volume, const char *extra,
                               const char *props, unsigned int nvqs)
{
    g_autofree char *device = pfbd_device_json(volume, props);

    return dev_start(extra, device, nvqs);
}

/*
 * Start QEMU with a virtio-blk-pfbd device "drv0" in slot 4 whose volume
 * is a fresh file of @size bytes.  @props are more JSON members for the
 * device ("" or ", \"key\": value, ..."), @extra more command line.
 * The device is set up with @nvqs virtqueues (the driver's side), without
 * EVENT_IDX and INDIRECT_DESC.
 */
static Pfbd *pfbd_start(uint64_t size, const char *extra, const char *props,
                        unsigned int nvqs)
{
    int fd;
    g_autofree char *image = image_create(size, &fd);
    g_autofree char *volume = g_strdup_printf("file:%s", image);
    Pfbd *p = pfbd_start_volume(volume, extra, props, nvqs);

    p->image = g_steal_pointer(&image);
    p->image_fd = fd;
    return p;
}

/* Negotiate features (minus @clear) and set the queues up */
static uint64_t pfbd_driver_ok(Pfbd *p, uint64_t clear)
{
    uint64_t features;
    unsigned int i;

    qvirtio_start_device(p->dev);
    features = qvirtio_get_features(p->dev);
    features &= ~(QVIRTIO_F_BAD_FEATURE |
                  (1ull << VIRTIO_RING_F_INDIRECT_DESC) |
                  (1ull << VIRTIO_RING_F_EVENT_IDX) | clear);
    qvirtio_set_features(p->dev, features);
    for (i = 0; i < p->nvqs; i++) {
        if (p->vq[i]) {
            /* Set up again after a reset */
            qvirtqueue_cleanup(p->dev->bus, p->vq[i], &p->qs->alloc);
        }
        p->vq[i] = qvirtqueue_setup(p->dev, &p->qs->alloc, i);
    }
    qvirtio_set_driver_ok(p->dev);
    return features;
}

static Pfbd *pfbd_setup(uint64_t size, const char *extra, const char *props,
                        unsigned int nvqs)
{
    Pfbd *p = pfbd_start(size, extra, props, nvqs);

    pfbd_driver_ok(p, 0);
    return p;
}

static void pfbd_assert_alive(Pfbd *p)
{
    QDict *rsp = qtest_qmp(p->qts, "{ 'execute': 'query-status' }");

    g_assert(qdict_haskey(rsp, "return"));
    qobject_unref(rsp);
}

static void pfbd_stop(Pfbd *p)
{
    unsigned int i;

    pfbd_assert_alive(p);
    for (i = 0; i < p->nvqs; i++) {
        if (p->vq[i]) {
            qvirtqueue_cleanup(p->dev->bus, p->vq[i], &p->qs->alloc);
        }
    }
    qvirtio_pci_device_disable(p->pdev);
    qos_object_destroy((QOSGraphObject *)p->pdev);
    qtest_shutdown(p->qs);
    if (p->image) {
        close(p->image_fd);
        g_free(p->image);
    }
    g_free(p);
}

static bool pfbd_broken(Pfbd *p)
{
    return p->dev->bus->get_status(p->dev) & VIRTIO_CONFIG_S_NEEDS_RESET;
}

/* Write @val to the virtio-pci common configuration field at @offset */
static void pfbd_common_writew(Pfbd *p, size_t offset, uint16_t val)
{
    qpci_io_writew(p->pdev->pdev, p->pdev->bar,
                   p->pdev->common_cfg_offset + offset, val);
}

/*
 * Lay out a request: a 16-byte header, @len data bytes (@data, or a
 * 0x5a filler for reads) and a status byte preset to 0xff.
 */
static PfbdReq pfbd_req_prepare(Pfbd *p, uint32_t type, uint64_t sector,
                                const void *data, size_t len)
{
    struct virtio_blk_outhdr hdr = {
        .type = cpu_to_le32(type),
        .sector = cpu_to_le64(sector),
    };
    PfbdReq r = { .len = len };
    uint8_t status = 0xff;

    r.addr = guest_alloc(&p->qs->alloc, sizeof(hdr) + len + 1);
    qtest_memwrite(p->qts, r.addr, &hdr, sizeof(hdr));
    if (data) {
        qtest_memwrite(p->qts, r.addr + sizeof(hdr), data, len);
    } else if (len) {
        qtest_memset(p->qts, r.addr + sizeof(hdr), 0x5a, len);
    }
    qtest_memwrite(p->qts, r.addr + sizeof(hdr) + len, &status, 1);
    return r;
}

/* Add @r to @vq as header / data / status descriptors */
static void pfbd_req_add(Pfbd *p, QVirtQueue *vq, PfbdReq *r, bool data_in)
{
    r->head = qvirtqueue_add(p->qts, vq, r->addr, 16, false, true);
    if (r->len) {
        qvirtqueue_add(p->qts, vq, r->addr + 16, r->len, data_in, true);
    }
    qvirtqueue_add(p->qts, vq, r->addr + 16 + r->len, 1, true, false);
}

/*
 * Make the @n chains @heads available at once and notify the device once
 * (qvirtqueue_kick() publishes one chain per call).
 */
static void kick_heads(QTestState *qts, QVirtioDevice *dev, QVirtQueue *vq,
                       const uint32_t *heads, unsigned int n)
{
    uint16_t idx = qtest_readw(qts, vq->avail + 2);
    unsigned int i;

    for (i = 0; i + 1 < n; i++) {
        qtest_writew(qts, vq->avail + 4 + 2 * ((idx + i) % vq->size),
                     heads[i]);
    }
    qtest_writew(qts, vq->avail + 2, idx + n - 1);
    qvirtqueue_kick(qts, dev, vq, heads[n - 1]);
}

static void pfbd_kick_many(Pfbd *p, QVirtQueue *vq, const PfbdReq *r,
                           unsigned int n)
{
    g_autofree uint32_t *heads = g_new(uint32_t, n);
    unsigned int i;

    for (i = 0; i < n; i++) {
        heads[i] = r[i].head;
    }
    kick_heads(p->qts, p->dev, vq, heads, n);
}

/* Wait until @n requests of @vq are used; returns their heads in order */
static void pfbd_wait_used(Pfbd *p, QVirtQueue *vq, uint32_t *heads,
                           unsigned int n)
{
    gint64 start = g_get_monotonic_time();
    unsigned int got = 0;

    while (got < n) {
        uint32_t idx;

        if (qvirtqueue_get_buf(p->qts, vq, &idx, NULL)) {
            if (heads) {
                heads[got] = idx;
            }
            got++;
            continue;
        }
        qtest_clock_step(p->qts, 100);
        g_assert(g_get_monotonic_time() - start <= TIMEOUT_US);
    }
}

static uint8_t pfbd_req_status(Pfbd *p, PfbdReq *r)
{
    return qtest_readb(p->qts, r->addr + 16 + r->len);
}

/* Submit one request on virtqueue @q and return its status byte */
static uint8_t pfbd_do_req(Pfbd *p, unsigned int q, uint32_t type,
                           uint64_t sector, void *buf, size_t len)
{
    bool data_in = type == VIRTIO_BLK_T_IN || type == VIRTIO_BLK_T_GET_ID;
    PfbdReq r = pfbd_req_prepare(p, type, sector, data_in ? NULL : buf, len);
    uint8_t status;

    pfbd_req_add(p, p->vq[q], &r, data_in);
    qvirtqueue_kick(p->qts, p->dev, p->vq[q], r.head);
    pfbd_wait_used(p, p->vq[q], NULL, 1);
    status = pfbd_req_status(p, &r);
    if (data_in && buf) {
        qtest_memread(p->qts, r.addr + 16, buf, len);
    }
    guest_free(&p->qs->alloc, r.addr);
    return status;
}

static uint8_t pfbd_dwz(Pfbd *p, uint32_t type, uint64_t sector,
                        uint32_t num_sectors, uint32_t flags)
{
    struct virtio_blk_discard_write_zeroes dwz = {
        .sector = cpu_to_le64(sector),
        .num_sectors = cpu_to_le32(num_sectors),
        .flags = cpu_to_le32(flags),
    };

    return pfbd_do_req(p, 0, type, 0, &dwz, sizeof(dwz));
}

static void fill_pattern(uint8_t *buf, size_t len, uint8_t seed)
{
    size_t i;

    for (i = 0; i < len; i++) {
        buf[i] = seed + i * 7 + (i >> 9);
    }
}

static void assert_file_bytes(Pfbd *p, off_t off, const void *want,
                              size_t len)
{
    g_autofree uint8_t *got = g_malloc(len);
    int fd = open(p->image, O_RDONLY);

    g_assert(fd >= 0);
    g_assert_cmpint(pread(fd, got, len, off), ==, len);
    close(fd);
    g_assert(memcmp(got, want, len) == 0);
}

static bool all_zero(const uint8_t *buf, size_t len)
{
    size_t i;

    for (i = 0; i < len; i++) {
        if (buf[i]) {
            return false;
        }
    }
    return true;
}

/* The line @field ("VmRSS:", ...) of /proc/@pid/status, in KiB */
static long proc_status_kib(pid_t pid, const char *field)
{
    g_autofree char *path = g_strdup_printf("/proc/%d/status", (int)pid);
    g_autofree char *text = NULL;
    const char *p, *end;
    long kib;

    g_assert_true(g_file_get_contents(path, &text, NULL, NULL));
    p = strstr(text, field);
    g_assert_nonnull(p);
    p += strlen(field);
    while (*p == ' ' || *p == '\t') {
        p++;
    }
    g_assert_cmpint(qemu_strtol(p, &end, 10, &kib), ==, 0);
    return kib;
}

/* Peak resident set size of QEMU in KiB */
static long hwm_kib(Pfbd *p)
{
    return proc_status_kib(qtest_pid(p->qts), "VmHWM:");
}

/* The statistics of the device whose virtio backend is at @path */
static QDict *stats_at(QTestState *qts, const char *path)
{
    QDict *rsp = qtest_qmp(qts, "{ 'execute': 'qom-get', 'arguments': "
                           "{ 'path': %s, 'property': 'stats' } }", path);
    QDict *ret;

    g_assert(qdict_haskey(rsp, "return"));
    ret = qdict_get_qdict(rsp, "return");
    qobject_ref(ret);
    qobject_unref(rsp);
    return ret;
}

static QDict *pfbd_stats(Pfbd *p)
{
    return stats_at(p->qts, STATS_PATH);
}

static QDict *stats_queue(QDict *stats, unsigned int i)
{
    QList *queues = qdict_get_qlist(stats, "queues");
    QListEntry *e;

    QLIST_FOREACH_ENTRY(queues, e) {
        QDict *q = qobject_to(QDict, qlist_entry_obj(e));

        if (qdict_get_int(q, "index") == i) {
            return q;
        }
    }
    g_assert_not_reached();
}

static int64_t queue_in_flight(QTestState *qts, const char *path,
                               unsigned int i)
{
    QDict *stats = stats_at(qts, path);
    int64_t n = qdict_get_int(stats_queue(stats, i), "in-flight");

    qobject_unref(stats);
    return n;
}

/*
 * Wait until virtqueue @i of the device at @path has at least @n requests
 * in flight in its engine: what a test of an event "with requests in
 * flight" must see right before the event.
 */
static void wait_in_flight(QTestState *qts, const char *path, unsigned int i,
                           int64_t n)
{
    gint64 start = g_get_monotonic_time();

    while (queue_in_flight(qts, path, i) < n) {
        g_assert(g_get_monotonic_time() - start <= TIMEOUT_US);
        g_usleep(1000);
    }
}

/* Request types */

static void test_write_read(void)
{
    Pfbd *p = pfbd_setup(VOLUME_SIZE, "", "", 1);
    uint8_t wbuf[8192], rbuf[8192];

    g_assert_cmpint(qvirtio_config_readq(p->dev, 0), ==, VOLUME_SIZE / 512);

    fill_pattern(wbuf, sizeof(wbuf), 1);
    g_assert_cmpint(pfbd_do_req(p, 0, VIRTIO_BLK_T_OUT, 24, wbuf,
                                sizeof(wbuf)), ==, VIRTIO_BLK_S_OK);
    g_assert_cmpint(pfbd_do_req(p, 0, VIRTIO_BLK_T_IN, 24, rbuf,
                                sizeof(rbuf)), ==, VIRTIO_BLK_S_OK);
    g_assert(memcmp(wbuf, rbuf, sizeof(wbuf)) == 0);

    /* It reached the volume, at the right place */
    assert_file_bytes(p, 24 * 512, wbuf, sizeof(wbuf));

    /* The last sector of the volume */
    fill_pattern(wbuf, 512, 9);
    g_assert_cmpint(pfbd_do_req(p, 0, VIRTIO_BLK_T_OUT,
                                VOLUME_SIZE / 512 - 1, wbuf, 512), ==,
                    VIRTIO_BLK_S_OK);
    assert_file_bytes(p, VOLUME_SIZE - 512, wbuf, 512);
    pfbd_stop(p);
}

/*
 * Header and data in one descriptor for a write; data and status in one
 * for a read: buffers that do not split on the request's boundaries.
 */
static void test_merged_descriptors(void)
{
    Pfbd *p = pfbd_setup(VOLUME_SIZE, "", "", 1);
    struct virtio_blk_outhdr hdr = {
        .type = cpu_to_le32(VIRTIO_BLK_T_OUT),
        .sector = cpu_to_le64(100),
    };
    uint8_t wbuf[4096], rbuf[4096];
    uint64_t addr;
    uint32_t head;

    fill_pattern(wbuf, sizeof(wbuf), 3);
    addr = guest_alloc(&p->qs->alloc, 16 + sizeof(wbuf) + 1);
    qtest_memwrite(p->qts, addr, &hdr, 16);
    qtest_memwrite(p->qts, addr + 16, wbuf, sizeof(wbuf));
    qtest_writeb(p->qts, addr + 16 + sizeof(wbuf), 0xff);
    head = qvirtqueue_add(p->qts, p->vq[0], addr, 16 + sizeof(wbuf), false,
                          true);
    qvirtqueue_add(p->qts, p->vq[0], addr + 16 + sizeof(wbuf), 1, true,
                   false);
    qvirtqueue_kick(p->qts, p->dev, p->vq[0], head);
    pfbd_wait_used(p, p->vq[0], NULL, 1);
    g_assert_cmpint(qtest_readb(p->qts, addr + 16 + sizeof(wbuf)), ==,
                    VIRTIO_BLK_S_OK);
    assert_file_bytes(p, 100 * 512, wbuf, sizeof(wbuf));

    hdr.type = cpu_to_le32(VIRTIO_BLK_T_IN);
    qtest_memwrite(p->qts, addr, &hdr, 16);
    qtest_memset(p->qts, addr + 16, 0, sizeof(rbuf) + 1);
    head = qvirtqueue_add(p->qts, p->vq[0], addr, 16, false, true);
    qvirtqueue_add(p->qts, p->vq[0], addr + 16, sizeof(rbuf) + 1, true,
                   false);
    qvirtqueue_kick(p->qts, p->dev, p->vq[0], head);
    pfbd_wait_used(p, p->vq[0], NULL, 1);
    qtest_memread(p->qts, addr + 16, rbuf, sizeof(rbuf));
    g_assert(memcmp(wbuf, rbuf, sizeof(rbuf)) == 0);
    g_assert_cmpint(qtest_readb(p->qts, addr + 16 + sizeof(rbuf)), ==,
                    VIRTIO_BLK_S_OK);
    guest_free(&p->qs->alloc, addr);
    pfbd_stop(p);
}

static void test_flush(void)
{
    Pfbd *p = pfbd_setup(VOLUME_SIZE, "", "", 1);
    uint8_t buf[512];

    g_assert(qvirtio_get_features(p->dev) & (1ull << VIRTIO_BLK_F_FLUSH));
    fill_pattern(buf, sizeof(buf), 5);
    g_assert_cmpint(pfbd_do_req(p, 0, VIRTIO_BLK_T_OUT, 0, buf,
                                sizeof(buf)), ==, VIRTIO_BLK_S_OK);
    g_assert_cmpint(pfbd_do_req(p, 0, VIRTIO_BLK_T_FLUSH, 0, NULL, 0), ==,
                    VIRTIO_BLK_S_OK);
    assert_file_bytes(p, 0, buf, sizeof(buf));
    pfbd_stop(p);
}

static void test_get_id(void)
{
    Pfbd *p = pfbd_setup(VOLUME_SIZE, "", ", \"serial\": \"pfbd-disk-7\"", 1);
    char id[VIRTIO_BLK_ID_BYTES];

    g_assert_cmpint(pfbd_do_req(p, 0, VIRTIO_BLK_T_GET_ID, 0, id,
                                sizeof(id)), ==, VIRTIO_BLK_S_OK);
    g_assert_cmpstr(id, ==, "pfbd-disk-7");
    pfbd_stop(p);

    /* 20 bytes and more: the field is full, without a NUL */
    p = pfbd_setup(VOLUME_SIZE, "",
                   ", \"serial\": \"0123456789abcdefghijKLMN\"", 1);
    g_assert_cmpint(pfbd_do_req(p, 0, VIRTIO_BLK_T_GET_ID, 0, id,
                                sizeof(id)), ==, VIRTIO_BLK_S_OK);
    g_assert(memcmp(id, "0123456789abcdefghij", sizeof(id)) == 0);
    pfbd_stop(p);
}

/*
 * The used length covers every byte the driver gave the device to write,
 * the status byte included, wherever it lies: virtqueue_fill() marks
 * exactly that many bytes dirty for migration.
 */
static void test_used_len(void)
{
    Pfbd *p = pfbd_setup(VOLUME_SIZE, "", ", \"serial\": \"pfbd-disk-7\"", 1);
    struct virtio_blk_outhdr hdr = { 0 };
    uint64_t addr = guest_alloc(&p->qs->alloc, 1024);
    uint32_t head, len;
    char id[VIRTIO_BLK_ID_BYTES];

    /* GET_ID into 512 bytes, then the status byte */
    hdr.type = cpu_to_le32(VIRTIO_BLK_T_GET_ID);
    qtest_memwrite(p->qts, addr, &hdr, sizeof(hdr));
    qtest_memset(p->qts, addr + 16, 0xff, 512 + 1);
    head = qvirtqueue_add(p->qts, p->vq[0], addr, 16, false, true);
    qvirtqueue_add(p->qts, p->vq[0], addr + 16, 512, true, true);
    qvirtqueue_add(p->qts, p->vq[0], addr + 16 + 512, 1, true, false);
    qvirtqueue_kick(p->qts, p->dev, p->vq[0], head);
    qvirtio_wait_used_elem(p->qts, p->dev, p->vq[0], head, &len,
                           TIMEOUT_US);
    g_assert_cmpuint(len, ==, 512 + 1);
    g_assert_cmpint(qtest_readb(p->qts, addr + 16 + 512), ==,
                    VIRTIO_BLK_S_OK);
    qtest_memread(p->qts, addr + 16, id, sizeof(id));
    g_assert_cmpstr(id, ==, "pfbd-disk-7");

    /* FLUSH whose status byte ends a 16-byte buffer */
    hdr.type = cpu_to_le32(VIRTIO_BLK_T_FLUSH);
    qtest_memwrite(p->qts, addr, &hdr, sizeof(hdr));
    qtest_memset(p->qts, addr + 16, 0xff, 16);
    head = qvirtqueue_add(p->qts, p->vq[0], addr, 16, false, true);
    qvirtqueue_add(p->qts, p->vq[0], addr + 16, 16, true, false);
    qvirtqueue_kick(p->qts, p->dev, p->vq[0], head);
    qvirtio_wait_used_elem(p->qts, p->dev, p->vq[0], head, &len,
                           TIMEOUT_US);
    g_assert_cmpuint(len, ==, 16);
    g_assert_cmpint(qtest_readb(p->qts, addr + 16 + 15), ==,
                    VIRTIO_BLK_S_OK);
    g_assert(!pfbd_broken(p));
    pfbd_stop(p);
}

/*
 * The engine fails to send (io_uring_submit()'s -EAGAIN or -EBUSY, here
 * the null engine's fault injection, three times): the requests are sent
 * again without waiting for another kick, and complete.
 */
static void test_submit_retry(void)
{
    Pfbd *p = pfbd_start_volume("null:16M:flush_eagain=3",
                                "-object iothread,id=io0",
                                ", \"iothread\": \"io0\"", 1);

    pfbd_driver_ok(p, 0);
    g_assert_cmpint(pfbd_do_req(p, 0, VIRTIO_BLK_T_FLUSH, 0, NULL, 0), ==,
                    VIRTIO_BLK_S_OK);
    g_assert(!pfbd_broken(p));
    pfbd_stop(p);
}

/* The run state of QEMU ("running", "paused", "io-error"...) */
static char *pfbd_run_state(Pfbd *p)
{
    QDict *rsp = qtest_qmp(p->qts, "{ 'execute': 'query-status' }");
    char *state = g_strdup(qdict_get_str(qdict_get_qdict(rsp, "return"),
                                         "status"));

    qobject_unref(rsp);
    return state;
}

/*
 * An error the engine reports when a request completes goes through
 * rerror/werror, whatever its errno: a kernel's -EINVAL (an O_DIRECT
 * limit it did not advertise) is the host's, not the guest's.  The null
 * engine completes every request with -EINVAL here: with rerror=report a
 * read gets VIRTIO_BLK_S_IOERR, with werror=stop a write stops the VM
 * (io-error) and stays in flight.
 */
static void test_completion_error_policy(void)
{
    Pfbd *p = pfbd_start_volume("null:16M:complete_errno=22", "",
                                ", \"rerror\": \"report\", "
                                "\"werror\": \"stop\"", 1);
    gint64 start = g_get_monotonic_time();
    uint8_t buf[512] = { 0 };
    PfbdReq r;

    pfbd_driver_ok(p, 0);
    g_assert_cmpint(pfbd_do_req(p, 0, VIRTIO_BLK_T_IN, 0, buf, sizeof(buf)),
                    ==, VIRTIO_BLK_S_IOERR);

    r = pfbd_req_prepare(p, VIRTIO_BLK_T_OUT, 0, buf, sizeof(buf));
    pfbd_req_add(p, p->vq[0], &r, false);
    qvirtqueue_kick(p->qts, p->dev, p->vq[0], r.head);
    for (;;) {
        g_autofree char *state = pfbd_run_state(p);

        if (!strcmp(state, "io-error")) {
            break;
        }
        /* Completed instead (the old -EINVAL path): fail, not wait */
        g_assert_cmpint(pfbd_req_status(p, &r), ==, 0xff);
        g_assert(g_get_monotonic_time() - start <= TIMEOUT_US);
        g_usleep(1000);
    }
    g_assert_cmpint(queue_in_flight(p->qts, STATS_PATH, 0), ==, 1);
    g_assert_cmpint(pfbd_req_status(p, &r), ==, 0xff);
    pfbd_stop(p);
}

static void test_discard(void)
{
    Pfbd *p = pfbd_setup(VOLUME_SIZE, "", "", 1);
    g_autofree uint8_t *buf = g_malloc(65536);

    g_assert(qvirtio_get_features(p->dev) & (1ull << VIRTIO_BLK_F_DISCARD));
    g_assert_cmpint(qvirtio_config_readl(p->dev,
                    offsetof(struct virtio_blk_config, max_discard_seg)),
                    ==, 1);

    fill_pattern(buf, 65536, 11);
    g_assert_cmpint(pfbd_do_req(p, 0, VIRTIO_BLK_T_OUT, 256, buf, 65536),
                    ==, VIRTIO_BLK_S_OK);
    g_assert_cmpint(pfbd_dwz(p, VIRTIO_BLK_T_DISCARD, 256, 128, 0), ==,
                    VIRTIO_BLK_S_OK);
    /* The file engine punches a hole: the range reads back as zeroes */
    g_assert_cmpint(pfbd_do_req(p, 0, VIRTIO_BLK_T_IN, 256, buf, 65536),
                    ==, VIRTIO_BLK_S_OK);
    g_assert(all_zero(buf, 65536));

    /* UNMAP is a write-zeroes flag; on a discard it is unsupported */
    g_assert_cmpint(pfbd_dwz(p, VIRTIO_BLK_T_DISCARD, 256, 8,
                             VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP), ==,
                    VIRTIO_BLK_S_UNSUPP);
    /* Beyond the end */
    g_assert_cmpint(pfbd_dwz(p, VIRTIO_BLK_T_DISCARD, VOLUME_SIZE / 512 - 4,
                             8, 0), ==, VIRTIO_BLK_S_IOERR);
    pfbd_stop(p);
}

static void test_write_zeroes(void)
{
    Pfbd *p = pfbd_setup(VOLUME_SIZE, "", "", 1);
    g_autofree uint8_t *buf = g_malloc(65536);
    uint32_t flags[] = { 0, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP };
    unsigned int i;

    g_assert(qvirtio_get_features(p->dev) &
             (1ull << VIRTIO_BLK_F_WRITE_ZEROES));
    for (i = 0; i < ARRAY_SIZE(flags); i++) {
        fill_pattern(buf, 65536, 13 + i);
        g_assert_cmpint(pfbd_do_req(p, 0, VIRTIO_BLK_T_OUT, 512, buf, 65536),
                        ==, VIRTIO_BLK_S_OK);
        /* Zero the middle 32 KiB only */
        g_assert_cmpint(pfbd_dwz(p, VIRTIO_BLK_T_WRITE_ZEROES, 512 + 32, 64,
                                 flags[i]), ==, VIRTIO_BLK_S_OK);
        g_assert_cmpint(pfbd_do_req(p, 0, VIRTIO_BLK_T_IN, 512, buf, 65536),
                        ==, VIRTIO_BLK_S_OK);
        g_assert(!all_zero(buf, 32 * 512));
        g_assert(all_zero(buf + 32 * 512, 32 * 1024));
        g_assert(!all_zero(buf + 32 * 512 + 32 * 1024, 32 * 512));
    }
    /* An unknown flag */
    g_assert_cmpint(pfbd_dwz(p, VIRTIO_BLK_T_WRITE_ZEROES, 0, 8, 0x80), ==,
                    VIRTIO_BLK_S_UNSUPP);
    pfbd_stop(p);
}

static void test_discard_write_zeroes_off(void)
{
    Pfbd *p = pfbd_setup(VOLUME_SIZE, "",
                         ", \"discard\": false, \"write-zeroes\": false", 1);
    uint64_t f = qvirtio_get_features(p->dev);

    g_assert(!(f & (1ull << VIRTIO_BLK_F_DISCARD)));
    g_assert(!(f & (1ull << VIRTIO_BLK_F_WRITE_ZEROES)));
    g_assert_cmpint(pfbd_dwz(p, VIRTIO_BLK_T_DISCARD, 0, 8, 0), ==,
                    VIRTIO_BLK_S_UNSUPP);
    g_assert_cmpint(pfbd_dwz(p, VIRTIO_BLK_T_WRITE_ZEROES, 0, 8, 0), ==,
                    VIRTIO_BLK_S_UNSUPP);
    pfbd_stop(p);
}

static void test_unsupported_type(void)
{
    Pfbd *p = pfbd_setup(VOLUME_SIZE, "", "", 1);
    uint8_t buf[512];
    /* SCSI passthrough, a zoned op, and a type nobody defined */
    uint32_t types[] = { VIRTIO_BLK_T_SCSI_CMD, VIRTIO_BLK_T_ZONE_APPEND,
                         0x12345678 };
    unsigned int i;

    for (i = 0; i < ARRAY_SIZE(types); i++) {
        memset(buf, 0, sizeof(buf));
        g_assert_cmpint(pfbd_do_req(p, 0, types[i], 0, buf, sizeof(buf)),
                        ==, VIRTIO_BLK_S_UNSUPP);
    }
    g_assert(!pfbd_broken(p));
    pfbd_stop(p);
}

/* Out of range and misaligned */

static void test_out_of_range(void)
{
    Pfbd *p = pfbd_setup(VOLUME_SIZE, "", "", 1);
    uint64_t last = VOLUME_SIZE / 512;
    uint8_t buf[4096];
    struct stat st;

    fill_pattern(buf, sizeof(buf), 17);
    /* Starting beyond the end */
    g_assert_cmpint(pfbd_do_req(p, 0, VIRTIO_BLK_T_IN, last, buf, 512), ==,
                    VIRTIO_BLK_S_IOERR);
    g_assert_cmpint(pfbd_do_req(p, 0, VIRTIO_BLK_T_OUT, last + 100, buf,
                                512), ==, VIRTIO_BLK_S_IOERR);
    /* Straddling the end */
    g_assert_cmpint(pfbd_do_req(p, 0, VIRTIO_BLK_T_OUT, last - 4, buf,
                                sizeof(buf)), ==, VIRTIO_BLK_S_IOERR);
    g_assert_cmpint(pfbd_do_req(p, 0, VIRTIO_BLK_T_IN, last - 4, buf,
                                sizeof(buf)), ==, VIRTIO_BLK_S_IOERR);
    /* A sector number that wraps around */
    g_assert_cmpint(pfbd_do_req(p, 0, VIRTIO_BLK_T_IN, UINT64_MAX - 1, buf,
                                1024), ==, VIRTIO_BLK_S_IOERR);
    /* Nothing was written past the end */
    g_assert(stat(p->image, &st) == 0);
    g_assert_cmpint(st.st_size, ==, VOLUME_SIZE);
    pfbd_stop(p);
}

static void test_misaligned(void)
{
    Pfbd *p = pfbd_setup(VOLUME_SIZE, "",
                         ", \"logical_block_size\": 4096", 1);
    uint8_t buf[4096];

    g_assert_cmpint(qvirtio_config_readl(p->dev,
                    offsetof(struct virtio_blk_config, blk_size)), ==, 4096);
    fill_pattern(buf, sizeof(buf), 19);
    /* Sector not on a 4 KiB boundary */
    g_assert_cmpint(pfbd_do_req(p, 0, VIRTIO_BLK_T_OUT, 1, buf, 4096), ==,
                    VIRTIO_BLK_S_IOERR);
    /* Length not a multiple of 4 KiB */
    g_assert_cmpint(pfbd_do_req(p, 0, VIRTIO_BLK_T_IN, 8, buf, 512), ==,
                    VIRTIO_BLK_S_IOERR);
    g_assert_cmpint(pfbd_do_req(p, 0, VIRTIO_BLK_T_OUT, 8, buf, 4096), ==,
                    VIRTIO_BLK_S_OK);
    pfbd_stop(p);
}

static void test_read_only(void)
{
    Pfbd *p = pfbd_setup(VOLUME_SIZE, "", ", \"read-only\": true", 1);
    uint8_t buf[512], zero[512] = { 0 };

    g_assert(qvirtio_get_features(p->dev) & (1ull << VIRTIO_BLK_F_RO));
    fill_pattern(buf, sizeof(buf), 23);
    g_assert_cmpint(pfbd_do_req(p, 0, VIRTIO_BLK_T_OUT, 0, buf, 512), ==,
                    VIRTIO_BLK_S_IOERR);
    g_assert_cmpint(pfbd_dwz(p, VIRTIO_BLK_T_WRITE_ZEROES, 0, 8, 0), !=,
                    VIRTIO_BLK_S_OK);
    g_assert_cmpint(pfbd_do_req(p, 0, VIRTIO_BLK_T_IN, 0, buf, 512), ==,
                    VIRTIO_BLK_S_OK);
    g_assert(memcmp(buf, zero, 512) == 0);
    assert_file_bytes(p, 0, zero, 512);
    pfbd_stop(p);
}

static void test_zero_length(void)
{
    Pfbd *p = pfbd_setup(VOLUME_SIZE, "", "", 1);

    /* Header and status only: nothing to move, success */
    g_assert_cmpint(pfbd_do_req(p, 0, VIRTIO_BLK_T_IN, 0, NULL, 0), ==,
                    VIRTIO_BLK_S_OK);
    g_assert_cmpint(pfbd_do_req(p, 0, VIRTIO_BLK_T_OUT, 0, NULL, 0), ==,
                    VIRTIO_BLK_S_OK);
    /* ... but still checked against the end of the volume */
    g_assert_cmpint(pfbd_do_req(p, 0, VIRTIO_BLK_T_IN, VOLUME_SIZE, NULL, 0),
                    ==, VIRTIO_BLK_S_IOERR);
    g_assert(!pfbd_broken(p));
    pfbd_stop(p);
}

/* Malformed descriptor chains: virtio_error, QEMU keeps running */

/*
 * Add a READ of sector 0 whose data is @nseg descriptors of @seglen bytes,
 * all at guest address @buf
 */
static uint32_t add_aliased_read(Pfbd *p, QVirtQueue *vq, uint64_t hdr_addr,
                                 uint64_t buf, unsigned int nseg,
                                 uint32_t seglen)
{
    struct virtio_blk_outhdr hdr = { .type = cpu_to_le32(VIRTIO_BLK_T_IN) };
    uint32_t head;
    unsigned int i;

    qtest_memwrite(p->qts, hdr_addr, &hdr, sizeof(hdr));
    qtest_writeb(p->qts, hdr_addr + 16, 0xff);
    head = qvirtqueue_add(p->qts, vq, hdr_addr, 16, false, true);
    for (i = 0; i < nseg; i++) {
        qvirtqueue_add(p->qts, vq, buf, seglen, true, true);
    }
    qvirtqueue_add(p->qts, vq, hdr_addr + 16, 1, true, false);
    return head;
}

/* The most data one request may carry: seg_max segments of size_max */
static uint64_t max_request_bytes(Pfbd *p, uint64_t features)
{
    uint32_t seg_max = qvirtio_config_readl(p->dev,
                            offsetof(struct virtio_blk_config, seg_max));
    uint32_t size_max = qvirtio_config_readl(p->dev,
                            offsetof(struct virtio_blk_config, size_max));

    g_assert(features & (1ull << VIRTIO_BLK_F_SIZE_MAX));
    g_assert(features & (1ull << VIRTIO_BLK_F_SEG_MAX));
    g_assert_cmpuint(size_max, >=, 4096);
    return (uint64_t)seg_max * size_max;
}

/*
 * A READ larger than the device advertises (seg_max x size_max) gets
 * VIRTIO_BLK_S_IOERR without QEMU allocating for it: here 63 descriptors
 * of 64 MiB on one misaligned guest buffer, almost 4 GiB that the file
 * engine would bounce whole.
 */
static void test_huge_request(void)
{
    Pfbd *p = pfbd_start(8ull << 30, "-m 512M", "", 1);
    uint64_t features = pfbd_driver_ok(p, 0);
    uint64_t max = max_request_bytes(p, features);
    uint64_t hdr = guest_alloc(&p->qs->alloc, 64);
    uint64_t buf = guest_alloc(&p->qs->alloc, 65 << 20);
    long hwm = hwm_kib(p);
    uint32_t head;

    g_assert_cmpuint(max, <, 64ull << 20);
    /* Just over the limit, and far over it */
    head = add_aliased_read(p, p->vq[0], hdr, buf + 1, 2, max / 2 + 512);
    qvirtqueue_kick(p->qts, p->dev, p->vq[0], head);
    qvirtio_wait_used_elem(p->qts, p->dev, p->vq[0], head, NULL, TIMEOUT_US);
    g_assert_cmpint(qtest_readb(p->qts, hdr + 16), ==, VIRTIO_BLK_S_IOERR);

    head = add_aliased_read(p, p->vq[0], hdr, buf + 1, 63, 64 << 20);
    qvirtqueue_kick(p->qts, p->dev, p->vq[0], head);
    qvirtio_wait_used_elem(p->qts, p->dev, p->vq[0], head, NULL, TIMEOUT_US);
    g_assert_cmpint(qtest_readb(p->qts, hdr + 16), ==, VIRTIO_BLK_S_IOERR);
    g_assert(!pfbd_broken(p));
    g_test_message("VmHWM %ld -> %ld KiB", hwm, hwm_kib(p));
    g_assert_cmpint(hwm_kib(p) - hwm, <, 64 * 1024);

    /* The largest request it takes works, bounced */
    head = add_aliased_read(p, p->vq[0], hdr, buf + 1, 1, max);
    qvirtqueue_kick(p->qts, p->dev, p->vq[0], head);
    qvirtio_wait_used_elem(p->qts, p->dev, p->vq[0], head, NULL, TIMEOUT_US);
    g_assert_cmpint(qtest_readb(p->qts, hdr + 16), ==, VIRTIO_BLK_S_OK);
    pfbd_stop(p);
}

/*
 * Under ASan, freed bounce buffers would stay in its quarantine and in the
 * peak RSS: have the QEMU started next reuse them at once, as glibc does.
 * Returns what asan_quarantine_restore() puts back once QEMU runs.
 */
static char *asan_quarantine_off(void)
{
    const char *asan = getenv("ASAN_OPTIONS");
    g_autofree char *off = NULL;

    if (!asan) {
        return NULL;
    }
    off = g_strdup_printf("%s:quarantine_size_mb=0", asan);
    g_setenv("ASAN_OPTIONS", off, true);
    return g_strdup(asan);
}

static void asan_quarantine_restore(char *saved)
{
    if (saved) {
        g_setenv("ASAN_OPTIONS", saved, true);
        g_free(saved);
    }
}

/*
 * 32 of the largest requests, misaligned so that the file engine bounces
 * them, in one kick: they all complete, and the bounce buffers QEMU holds
 * at once stay within the per-queue bound (documented in the user guide)
 * instead of growing with the queue depth.
 */
static void test_bounce_bound(void)
{
    enum { N = 32 };
    char *asan_saved = asan_quarantine_off();
    uint64_t features, max, hdrs, buf;
    uint32_t heads[N];
    unsigned int i;
    long hwm;
    Pfbd *p;

    p = pfbd_start(64 << 20, "-m 512M", "", 1);
    asan_quarantine_restore(asan_saved);
    features = pfbd_driver_ok(p, 0);
    max = max_request_bytes(p, features);
    hdrs = guest_alloc(&p->qs->alloc, N * 64);
    buf = guest_alloc(&p->qs->alloc, max + 4096);
    hwm = hwm_kib(p);

    for (i = 0; i < N; i++) {
        heads[i] = add_aliased_read(p, p->vq[0], hdrs + 64 * i, buf + 1, 1,
                                    max);
    }
    kick_heads(p->qts, p->dev, p->vq[0], heads, N);
    pfbd_wait_used(p, p->vq[0], NULL, N);
    for (i = 0; i < N; i++) {
        g_assert_cmpint(qtest_readb(p->qts, hdrs + 64 * i + 16), ==,
                        VIRTIO_BLK_S_OK);
    }
    g_test_message("%d reads of %" PRIu64 " bytes: VmHWM %ld -> %ld KiB",
                   N, max, hwm, hwm_kib(p));
    /* Two of them at most, where all would take N * max */
    g_assert_cmpint(hwm_kib(p) - hwm, <,
                    (long)(2 * max / 1024 + 16 * 1024));
    g_assert(!pfbd_broken(p));
    pfbd_stop(p);
}

/*
 * libpfbd's events reach QEMU's trace: a read into a buffer that the
 * engine cannot take as it is (16 bytes into the request, on a volume
 * that wants 4 KiB alignment) shows as pfbd_bounce with its length.
 */
static void test_trace_engine_events(void)
{
    g_autofree char *trace = NULL;
    g_autofree char *extra = NULL;
    g_autofree char *log = NULL;
    uint8_t buf[4096];
    int fd;
    Pfbd *p;

    fd = g_file_open_tmp("qtest-pfbd-trace.XXXXXX", &trace, NULL);
    g_assert(fd >= 0);
    close(fd);
    extra = g_strdup_printf("-trace 'pfbd_*' -D %s", trace);
    p = pfbd_start_volume("null:64M:mem_align=4096", extra, "", 1);
    pfbd_driver_ok(p, 0);
    g_assert_cmpint(pfbd_do_req(p, 0, VIRTIO_BLK_T_IN, 8, buf, sizeof(buf)),
                    ==, VIRTIO_BLK_S_OK);
    pfbd_stop(p);
    g_assert_true(g_file_get_contents(trace, &log, NULL, NULL));
    unlink(trace);
    g_test_message("trace: %s", log);
    g_assert_nonnull(strstr(log, "pfbd_bounce "));
    g_assert_nonnull(strstr(log, " bytes 4096 new mapping 1"));
}

/*
 * Set the device up with queue 0 (the only one) of @size entries, as a
 * driver may choose up to 1024 whatever the device offers; with indirect
 * descriptors if @indirect
 */
static void pfbd_driver_ok_ring(Pfbd *p, uint16_t size, bool indirect)
{
    uint64_t features;

    qvirtio_start_device(p->dev);
    features = qvirtio_get_features(p->dev) &
               ~(QVIRTIO_F_BAD_FEATURE | (1ull << VIRTIO_RING_F_EVENT_IDX) |
                 (indirect ? 0 : 1ull << VIRTIO_RING_F_INDIRECT_DESC));
    qvirtio_set_features(p->dev, features);
    pfbd_common_writew(p, VIRTIO_PCI_COMMON_Q_SELECT, 0);
    pfbd_common_writew(p, VIRTIO_PCI_COMMON_Q_SIZE, size);
    p->vq[0] = qvirtqueue_setup(p->dev, &p->qs->alloc, 0);
    g_assert_cmpuint(p->vq[0]->size, ==, size);
    qvirtio_set_driver_ok(p->dev);
}

/*
 * A guest pairs a misaligned 4 KiB write with a misaligned read of half
 * the largest request, kick after kick, on storage whose writes are slow
 * (the null engine: writes take 50 ms, reads 1 ms, and buffers that
 * O_DIRECT would refuse are bounced, as the file engine bounces them).
 * The reads complete while the writes pile up.  A write used to take over
 * the bounce mapping a read had left, while the limit counted its 4 KiB:
 * QEMU grew by 800 MiB on one queue.  It stays within the user guide's
 * bound now, twice the limit per virtqueue.
 */
static void test_bounce_bound_slow_writes(void)
{
    enum { PAIRS = 40 };
    char *asan_saved = asan_quarantine_off();
    uint64_t features, max, hdrs, buf;
    uint8_t wdata[4096];
    unsigned int i;
    gint64 start;
    long hwm;
    Pfbd *p;

    p = pfbd_start_volume("null:64M:completion_nsec=1000000:"
                          "write_nsec=50000000:mem_align=4096", "-m 512M",
                          "", 1);
    asan_quarantine_restore(asan_saved);
    features = pfbd_driver_ok(p, 0);
    max = max_request_bytes(p, features);
    hdrs = guest_alloc(&p->qs->alloc, PAIRS * 128);
    buf = guest_alloc(&p->qs->alloc, max + 8192);
    fill_pattern(wdata, sizeof(wdata), 1);
    qtest_memwrite(p->qts, buf + 1, wdata, sizeof(wdata));
    hwm = hwm_kib(p);

    for (i = 0; i < PAIRS; i++) {
        struct virtio_blk_outhdr hdr = {
            .type = cpu_to_le32(VIRTIO_BLK_T_OUT),
            .sector = cpu_to_le64(8 * i),
        };
        uint64_t wh = hdrs + 128 * i, rh = wh + 64;
        uint32_t heads[2];

        qtest_memwrite(p->qts, wh, &hdr, sizeof(hdr));
        qtest_writeb(p->qts, wh + 16, 0xff);
        heads[0] = qvirtqueue_add(p->qts, p->vq[0], wh, 16, false, true);
        qvirtqueue_add(p->qts, p->vq[0], buf + 1, 4096, false, true);
        qvirtqueue_add(p->qts, p->vq[0], wh + 16, 1, true, false);
        heads[1] = add_aliased_read(p, p->vq[0], rh, buf + 1, 1, max / 2);
        kick_heads(p->qts, p->dev, p->vq[0], heads, 2);

        /* The read completes; the write stays in flight */
        start = g_get_monotonic_time();
        while (qtest_readb(p->qts, rh + 16) == 0xff) {
            g_assert(g_get_monotonic_time() - start <= TIMEOUT_US);
            g_usleep(100);
        }
        g_assert_cmpint(qtest_readb(p->qts, rh + 16), ==, VIRTIO_BLK_S_OK);
    }
    g_test_message("%d pairs of a 4 KiB write and a %" PRIu64 "-byte read: "
                   "VmHWM %ld -> %ld KiB", PAIRS, max / 2, hwm, hwm_kib(p));
    g_assert_cmpint(hwm_kib(p) - hwm, <, (long)(2 * max / 1024 + 16 * 1024));

    pfbd_wait_used(p, p->vq[0], NULL, 2 * PAIRS);
    for (i = 0; i < PAIRS; i++) {
        g_assert_cmpint(qtest_readb(p->qts, hdrs + 128 * i + 16), ==,
                        VIRTIO_BLK_S_OK);
    }
    g_assert(!pfbd_broken(p));
    pfbd_stop(p);
}

/*
 * The driver may size a virtqueue up to 1024 entries, above the device's
 * queue-size and so above the engine queue's depth: the requests over the
 * depth wait for room (back-pressure), they do not fail.
 */
static void test_ring_above_depth(void)
{
    enum { N = 64 };
    Pfbd *p = pfbd_start_volume("null:16M:completion_nsec=20000000", "",
                                ", \"queue-size\": 16", 1);
    g_autofree PfbdReq *r = g_new(PfbdReq, N);
    unsigned int i;

    pfbd_driver_ok_ring(p, 4 * N, false);
    for (i = 0; i < N; i++) {
        r[i] = pfbd_req_prepare(p, VIRTIO_BLK_T_FLUSH, 0, NULL, 0);
        pfbd_req_add(p, p->vq[0], &r[i], false);
    }
    pfbd_kick_many(p, p->vq[0], r, N);
    pfbd_wait_used(p, p->vq[0], NULL, N);
    for (i = 0; i < N; i++) {
        g_assert_cmpint(pfbd_req_status(p, &r[i]), ==, VIRTIO_BLK_S_OK);
    }
    g_assert(!pfbd_broken(p));
    pfbd_stop(p);
}

static void assert_broken_and_alive(Pfbd *p, QVirtQueue *vq)
{
    gint64 start = g_get_monotonic_time();

    while (!pfbd_broken(p)) {
        qtest_clock_step(p->qts, 100);
        g_assert(g_get_monotonic_time() - start <= TIMEOUT_US);
    }
    /* The bad request was not completed */
    g_assert(!qvirtqueue_get_buf(p->qts, vq, NULL, NULL));
    pfbd_assert_alive(p);
}

/* A reset brings a broken device back */
static void assert_recovers(Pfbd *p)
{
    uint8_t buf[512];

    qvirtio_reset(p->dev);
    pfbd_driver_ok(p, 0);
    g_assert(!pfbd_broken(p));
    g_assert_cmpint(pfbd_do_req(p, 0, VIRTIO_BLK_T_IN, 0, buf, 512), ==,
                    VIRTIO_BLK_S_OK);
}

/*
 * More than 4 GiB of buffers for the device to write: the used length,
 * 32 bits, cannot say how much was written, so the chain is malformed
 */
static void test_huge_in_buffers(void)
{
    Pfbd *p = pfbd_setup(VOLUME_SIZE, "-m 3G", "", 1);
    uint64_t hdr = guest_alloc(&p->qs->alloc, 64);
    uint32_t head;

    head = add_aliased_read(p, p->vq[0], hdr, 1 << 20, 2, 0x80000000u);
    qvirtqueue_kick(p->qts, p->dev, p->vq[0], head);
    assert_broken_and_alive(p, p->vq[0]);
    pfbd_stop(p);
}

/*
 * The driver selects a virtqueue the device does not have and resets or
 * enables it: virtio-pci passes any index below VIRTIO_QUEUE_MAX on to the
 * device's hooks.  Found by generic-fuzz (a heap-buffer-overflow in
 * virtio_blk_pfbd_attach_queue()).
 */
static void test_queue_reset_enable_out_of_range(void)
{
    static const uint16_t bad[] = { 1, 7, 1023 };
    Pfbd *p = pfbd_setup(VOLUME_SIZE, "-object iothread,id=io0",
                         ", \"iothread\": \"io0\"", 1);
    unsigned int i;

    for (i = 0; i < ARRAY_SIZE(bad); i++) {
        pfbd_common_writew(p, VIRTIO_PCI_COMMON_Q_SELECT, bad[i]);
        pfbd_common_writew(p, VIRTIO_PCI_COMMON_Q_RESET, 1);
        pfbd_common_writew(p, VIRTIO_PCI_COMMON_Q_ENABLE, 1);
    }
    pfbd_assert_alive(p);
    g_assert_cmpint(pfbd_do_req(p, 0, VIRTIO_BLK_T_FLUSH, 0, NULL, 0), ==,
                    VIRTIO_BLK_S_OK);
    g_assert(!pfbd_broken(p));
    pfbd_stop(p);
}

static void test_short_header(void)
{
    Pfbd *p = pfbd_setup(VOLUME_SIZE, "", "", 1);
    uint64_t addr = guest_alloc(&p->qs->alloc, 64);
    uint32_t head;

    qtest_memset(p->qts, addr, 0, 64);
    /* An 8-byte header */
    head = qvirtqueue_add(p->qts, p->vq[0], addr, 8, false, true);
    qvirtqueue_add(p->qts, p->vq[0], addr + 32, 1, true, false);
    qvirtqueue_kick(p->qts, p->dev, p->vq[0], head);
    assert_broken_and_alive(p, p->vq[0]);
    assert_recovers(p);
    pfbd_stop(p);
}

static void test_missing_status(void)
{
    Pfbd *p = pfbd_setup(VOLUME_SIZE, "", "", 1);
    uint64_t addr = guest_alloc(&p->qs->alloc, 64);
    uint32_t head;

    qtest_memset(p->qts, addr, 0, 64);
    /* A header and nothing for the device to write */
    head = qvirtqueue_add(p->qts, p->vq[0], addr, 16, false, false);
    qvirtqueue_kick(p->qts, p->dev, p->vq[0], head);
    assert_broken_and_alive(p, p->vq[0]);
    assert_recovers(p);
    pfbd_stop(p);
}

static void test_empty_status(void)
{
    Pfbd *p = pfbd_setup(VOLUME_SIZE, "", "", 1);
    uint64_t addr = guest_alloc(&p->qs->alloc, 64);
    uint32_t head;

    qtest_memset(p->qts, addr, 0, 64);
    /* The status descriptor has no room for the status byte */
    head = qvirtqueue_add(p->qts, p->vq[0], addr, 16, false, true);
    qvirtqueue_add(p->qts, p->vq[0], addr + 32, 0, true, false);
    qvirtqueue_kick(p->qts, p->dev, p->vq[0], head);
    assert_broken_and_alive(p, p->vq[0]);
    assert_recovers(p);
    pfbd_stop(p);
}

static void test_short_discard_payload(void)
{
    Pfbd *p = pfbd_setup(VOLUME_SIZE, "", "", 1);
    struct virtio_blk_outhdr hdr = {
        .type = cpu_to_le32(VIRTIO_BLK_T_DISCARD),
    };
    uint64_t addr = guest_alloc(&p->qs->alloc, 64);
    uint32_t head;

    qtest_memset(p->qts, addr, 0, 64);
    qtest_memwrite(p->qts, addr, &hdr, sizeof(hdr));
    /* 8 of the 16 bytes of struct virtio_blk_discard_write_zeroes */
    head = qvirtqueue_add(p->qts, p->vq[0], addr, 16 + 8, false, true);
    qvirtqueue_add(p->qts, p->vq[0], addr + 48, 1, true, false);
    qvirtqueue_kick(p->qts, p->dev, p->vq[0], head);
    assert_broken_and_alive(p, p->vq[0]);
    pfbd_stop(p);
}

static void test_descriptor_loop(void)
{
    Pfbd *p = pfbd_setup(VOLUME_SIZE, "", "", 1);
    QVirtQueue *vq = p->vq[0];
    uint64_t addr = guest_alloc(&p->qs->alloc, 64);
    uint32_t head;

    qtest_memset(p->qts, addr, 0, 64);
    head = qvirtqueue_add(p->qts, vq, addr, 16, false, true);
    qvirtqueue_add(p->qts, vq, addr + 16, 16, true, true);
    /* The second descriptor's next points back at the first */
    qtest_writew(p->qts, vq->desc + 16 * (head + 1) + 14, head);
    qvirtqueue_kick(p->qts, p->dev, vq, head);
    assert_broken_and_alive(p, vq);
    assert_recovers(p);
    pfbd_stop(p);
}

/*
 * Buffers outside guest RAM.  QEMU's virtqueue code maps what is not RAM
 * through its one bounce buffer: a small buffer in unassigned space is
 * served (reads go nowhere), a larger one cannot be mapped and is a guest
 * bug.  Either way QEMU keeps running and the device serves the next
 * request (after the reset a broken device needs).
 */
static void test_out_of_ram(void)
{
    Pfbd *p = pfbd_setup(VOLUME_SIZE, "", "", 1);
    QVirtQueue *vq = p->vq[0];
    PfbdReq r = pfbd_req_prepare(p, VIRTIO_BLK_T_IN, 0, NULL, 0);
    uint8_t buf[512];
    uint32_t head;

    head = qvirtqueue_add(p->qts, vq, r.addr, 16, false, true);
    qvirtqueue_add(p->qts, vq, 0xfff000000000ull, 512, true, true);
    qvirtqueue_add(p->qts, vq, r.addr + 16, 1, true, false);
    qvirtqueue_kick(p->qts, p->dev, vq, head);
    pfbd_wait_used(p, vq, NULL, 1);
    g_assert_cmpint(qtest_readb(p->qts, r.addr + 16), ==, VIRTIO_BLK_S_OK);
    g_assert(!pfbd_broken(p));
    g_assert_cmpint(pfbd_do_req(p, 0, VIRTIO_BLK_T_IN, 0, buf, 512), ==,
                    VIRTIO_BLK_S_OK);

    /* 1 MiB: more than the bounce buffer */
    head = qvirtqueue_add(p->qts, vq, r.addr, 16, false, true);
    qvirtqueue_add(p->qts, vq, 0xfff000000000ull, 1024 * 1024, true, true);
    qvirtqueue_add(p->qts, vq, r.addr + 16, 1, true, false);
    qvirtqueue_kick(p->qts, p->dev, vq, head);
    assert_broken_and_alive(p, vq);
    assert_recovers(p);
    pfbd_stop(p);
}

/*
 * One request whose data buffer is at guest address @data (outside the
 * allocator's RAM); header and status come from the allocator.
 */
static uint8_t pfbd_do_req_at(Pfbd *p, uint32_t type, uint64_t sector,
                              uint64_t data, size_t len)
{
    PfbdReq r = pfbd_req_prepare(p, type, sector, NULL, 0);
    QVirtQueue *vq = p->vq[0];
    uint8_t status;

    r.head = qvirtqueue_add(p->qts, vq, r.addr, 16, false, true);
    qvirtqueue_add(p->qts, vq, data, len, type == VIRTIO_BLK_T_IN, true);
    qvirtqueue_add(p->qts, vq, r.addr + 16, 1, true, false);
    qvirtqueue_kick(p->qts, p->dev, vq, r.head);
    pfbd_wait_used(p, vq, NULL, 1);
    status = qtest_readb(p->qts, r.addr + 16);
    guest_free(&p->qs->alloc, r.addr);
    return status;
}

/*
 * The device translates buffers through a per-queue cache of guest RAM
 * ranges (patches/0008).  Plug a DIMM while the device runs (the memory
 * map changes under the cached entries) and move data through buffers in
 * the new RAM, in the old RAM, and across the DIMM's end (cached part plus
 * the unassigned rest, which QEMU bounces).
 */
/*
 * Write 8 KiB of pattern @seed at @sector, check the file, read it back;
 * leaves the pattern in @wbuf
 */
static void pfbd_check_round_trip(Pfbd *p, uint64_t sector, unsigned seed,
                                  uint8_t *wbuf)
{
    uint8_t rbuf[8192];

    fill_pattern(wbuf, sizeof(rbuf), seed);
    g_assert_cmpint(pfbd_do_req(p, 0, VIRTIO_BLK_T_OUT, sector, wbuf,
                                sizeof(rbuf)), ==, VIRTIO_BLK_S_OK);
    assert_file_bytes(p, sector * 512, wbuf, sizeof(rbuf));
    g_assert_cmpint(pfbd_do_req(p, 0, VIRTIO_BLK_T_IN, sector, rbuf,
                                sizeof(rbuf)), ==, VIRTIO_BLK_S_OK);
    g_assert(memcmp(wbuf, rbuf, sizeof(rbuf)) == 0);
}

/* Write @len bytes of @data from guest address @addr to @sector; check */
static void pfbd_write_from(Pfbd *p, uint64_t sector, uint64_t addr,
                            const void *data, size_t len)
{
    qtest_memwrite(p->qts, addr, data, len);
    g_assert_cmpint(pfbd_do_req_at(p, VIRTIO_BLK_T_OUT, sector, addr, len),
                    ==, VIRTIO_BLK_S_OK);
    assert_file_bytes(p, sector * 512, data, len);
}

/* Read @len bytes at @sector into guest address @addr, then into @buf */
static void pfbd_read_into(Pfbd *p, uint64_t sector, uint64_t addr,
                           void *buf, size_t len)
{
    qtest_memset(p->qts, addr, 0xaa, len);
    g_assert_cmpint(pfbd_do_req_at(p, VIRTIO_BLK_T_IN, sector, addr, len),
                    ==, VIRTIO_BLK_S_OK);
    qtest_memread(p->qts, addr, buf, len);
}

/*
 * Plug a DIMM "dimm1" of @size bytes (memory backend "mem1") into a
 * machine started with -m 256M,slots=2,maxmem=1G; returns its address.
 */
static uint64_t pfbd_plug_dimm(Pfbd *p, uint64_t size)
{
    QDict *rsp;
    uint64_t addr;

    rsp = qtest_qmp(p->qts, "{ 'execute': 'object-add', 'arguments': "
                    "{ 'qom-type': 'memory-backend-ram', 'id': 'mem1', "
                    "'size': %" PRIu64 " } }", size);
    g_assert(qdict_haskey(rsp, "return"));
    qobject_unref(rsp);
    rsp = qtest_qmp(p->qts, "{ 'execute': 'device_add', 'arguments': "
                    "{ 'driver': 'pc-dimm', 'id': 'dimm1', "
                    "'memdev': 'mem1' } }");
    g_assert(qdict_haskey(rsp, "return"));
    qobject_unref(rsp);
    rsp = qtest_qmp(p->qts, "{ 'execute': 'qom-get', 'arguments': "
                    "{ 'path': '/machine/peripheral/dimm1', "
                    "'property': 'addr' } }");
    addr = qdict_get_int(rsp, "return");
    qobject_unref(rsp);
    g_assert_cmphex(addr, >=, 256 * 1024 * 1024);
    return addr;
}

/*
 * fixed-buffers=on: the boot RAM is registered with the engine (io_uring
 * fixed buffers), and so is a DIMM plugged later; requests work in both,
 * in both directions.
 */
static void test_fixed_buffers(void)
{
    Pfbd *p = pfbd_setup(VOLUME_SIZE, "-m 256M,slots=2,maxmem=1G",
                         ", \"fixed-buffers\": true", 1);
    uint8_t wbuf[8192], rbuf[8192];
    QDict *rsp;
    uint64_t dimm;

    rsp = qtest_qmp(p->qts, "{ 'execute': 'qom-get', 'arguments': "
                    "{ 'path': '/machine/peripheral/drv0', "
                    "'property': 'fixed-buffers' } }");
    g_assert(qdict_get_bool(rsp, "return"));
    qobject_unref(rsp);

    pfbd_check_round_trip(p, 8, 11, wbuf);

    dimm = pfbd_plug_dimm(p, 128 * 1024 * 1024);

    fill_pattern(wbuf, sizeof(wbuf), 13);
    pfbd_write_from(p, 32, dimm + 8192, wbuf, sizeof(wbuf));
    pfbd_read_into(p, 8, dimm + 65536, rbuf, sizeof(rbuf));
    fill_pattern(wbuf, sizeof(wbuf), 11);
    g_assert(memcmp(wbuf, rbuf, sizeof(rbuf)) == 0);

    /* The registered boot RAM still serves reads */
    g_assert_cmpint(pfbd_do_req(p, 0, VIRTIO_BLK_T_IN, 32, rbuf,
                                sizeof(rbuf)), ==, VIRTIO_BLK_S_OK);
    fill_pattern(wbuf, sizeof(wbuf), 13);
    g_assert(memcmp(wbuf, rbuf, sizeof(rbuf)) == 0);
    g_assert(!pfbd_broken(p));
    pfbd_stop(p);
}

/*
 * fixed-buffers=on and a registered RAM block that goes away (the memory
 * backend of an unplugged ivshmem device): the device unregisters the
 * memory before the block is freed, and requests go on working, with the
 * RAM that remains registered again.
 */
static void test_fixed_buffers_ram_removed(void)
{
    Pfbd *p = pfbd_setup(VOLUME_SIZE,
                         "-object memory-backend-ram,id=mb1,size=4M",
                         ", \"fixed-buffers\": true", 1);
    uint8_t wbuf[8192];
    QDict *rsp;

    /* The boot RAM and mb1 are pinned */
    g_assert_cmpuint(proc_status_kib(qtest_pid(p->qts), "VmPin:"), >=, 4096);
    qtest_qmp_device_add(p->qts, "ivshmem-plain", "iv1",
                         "{'addr': %s, 'memdev': 'mb1'}",
                         stringify(PCI_SLOT_HP));
    qpci_unplug_acpi_device_test(p->qts, "iv1", PCI_SLOT_HP);
    rsp = qtest_qmp(p->qts, "{ 'execute': 'object-del', 'arguments': "
                    "{ 'id': 'mb1' } }");
    g_assert(qdict_haskey(rsp, "return"));
    qobject_unref(rsp);
    g_assert_cmpuint(proc_status_kib(qtest_pid(p->qts), "VmPin:"), ==, 0);

    pfbd_check_round_trip(p, 40, 17, wbuf);
    g_assert_cmpuint(proc_status_kib(qtest_pid(p->qts), "VmPin:"), >=,
                     128 * 1024);
    g_assert(!pfbd_broken(p));
    pfbd_stop(p);
}

/* Unplug DIMM "dimm1" (slot 0) as the guest's ACPI code does */
static void pfbd_unplug_dimm(Pfbd *p)
{
    QDict *rsp;

    rsp = qtest_qmp(p->qts, "{ 'execute': 'device_del', 'arguments': "
                    "{ 'id': 'dimm1' } }");
    g_assert(qdict_haskey(rsp, "return"));
    qobject_unref(rsp);
    /* ACPI memory hot-plug registers: select slot 0, eject it */
    qtest_outl(p->qts, 0x0a00, 0);
    qtest_outl(p->qts, 0x0a14, 8);
    qtest_qmp_eventwait(p->qts, "DEVICE_DELETED");
    rsp = qtest_qmp(p->qts, "{ 'execute': 'object-del', 'arguments': "
                    "{ 'id': 'mem1' } }");
    g_assert(qdict_haskey(rsp, "return"));
    qobject_unref(rsp);
}

/*
 * fixed-buffers=on and a DIMM plugged after realize, right after a batch
 * of reads was kicked (whether some are still in flight when the queue
 * takes the new RAM depends on timing; either way they must complete):
 * the DIMM is registered too (what QEMU pins grows by its size), requests
 * read and write through it; when it is unplugged it is unregistered
 * before its memory goes, and the boot RAM is registered again.
 */
static void test_fixed_buffers_dimm(void)
{
    const uint64_t dimm_size = 128 * 1024 * 1024;
    Pfbd *p = pfbd_setup(VOLUME_SIZE, "-m 256M,slots=2,maxmem=1G",
                         ", \"fixed-buffers\": true", 1);
    pid_t pid = qtest_pid(p->qts);
    uint8_t wbuf[8192], rbuf[8192];
    PfbdReq reads[16];
    uint64_t pinned, dimm;
    gint64 deadline;
    unsigned int i;

    pfbd_check_round_trip(p, 8, 11, wbuf);
    pinned = proc_status_kib(pid, "VmPin:");
    g_assert_cmpuint(pinned, >=, 256 * 1024);

    for (i = 0; i < ARRAY_SIZE(reads); i++) {
        reads[i] = pfbd_req_prepare(p, VIRTIO_BLK_T_IN, i * 128, NULL,
                                    65536);
        pfbd_req_add(p, p->vq[0], &reads[i], true);
    }
    pfbd_kick_many(p, p->vq[0], reads, ARRAY_SIZE(reads));
    dimm = pfbd_plug_dimm(p, dimm_size);
    pfbd_wait_used(p, p->vq[0], NULL, ARRAY_SIZE(reads));
    for (i = 0; i < ARRAY_SIZE(reads); i++) {
        g_assert_cmpint(pfbd_req_status(p, &reads[i]), ==, VIRTIO_BLK_S_OK);
    }
    fill_pattern(wbuf, sizeof(wbuf), 13);
    pfbd_write_from(p, 32, dimm + 8192, wbuf, sizeof(wbuf));
    pfbd_read_into(p, 8, dimm + 65536, rbuf, sizeof(rbuf));
    fill_pattern(wbuf, sizeof(wbuf), 11);
    g_assert(memcmp(wbuf, rbuf, sizeof(rbuf)) == 0);
    g_assert_cmpuint(proc_status_kib(pid, "VmPin:"), >=,
                     pinned + dimm_size / 1024);

    pfbd_unplug_dimm(p);
    /*
     * The memory goes once RCU has let go of the last memory map that had
     * the DIMM; everything is unregistered before
     */
    deadline = g_get_monotonic_time() + 60 * G_USEC_PER_SEC;
    while (proc_status_kib(pid, "VmPin:") >= pinned + dimm_size / 1024) {
        g_assert_cmpint(g_get_monotonic_time(), <, deadline);
        g_usleep(10 * 1000);
    }
    /* What is pinned then is the boot RAM, registered again */
    pfbd_check_round_trip(p, 64, 15, wbuf);
    g_assert_cmpuint(proc_status_kib(pid, "VmPin:"), >=, 256 * 1024);
    g_assert_cmpuint(proc_status_kib(pid, "VmPin:"), <,
                     pinned + dimm_size / 1024);
    g_assert(!pfbd_broken(p));
    pfbd_stop(p);
}

/* Whether QEMU has a mapping of the file @path */
static bool qemu_maps_file(Pfbd *p, const char *path)
{
    g_autofree char *maps = g_strdup_printf("/proc/%d/maps",
                                            (int)qtest_pid(p->qts));
    g_autofree char *text = NULL;

    g_assert_true(g_file_get_contents(maps, &text, NULL, NULL));
    return strstr(text, path) != NULL;
}

/*
 * RAM that leaves the memory map is freed although the queue that last
 * used it stays idle: here the shared memory of an ivshmem device, the
 * data buffer of a write through the queue's map cache, then unplugged
 * and its memory backend deleted.
 */
static void test_unplugged_ram_freed(void)
{
    g_autofree char *mem_path = NULL;
    int fd = shared_ram_create("qtest-pfbd-iv", 1024 * 1024, &mem_path);
    g_autofree char *extra = g_strdup_printf(
        "-object iothread,id=io0 -object memory-backend-file,id=mb1,"
        "size=1M,mem-path=%s,share=on", mem_path);
    Pfbd *p = pfbd_setup(VOLUME_SIZE, extra, ", \"iothread\": \"io0\"", 1);
    /* QEMU's mapping of it, in its /proc/PID/maps */
    const char *shm = "/memfd:qtest-pfbd-iv ";
    gint64 start;
    uint8_t wbuf[4096];
    QPCIDevice *iv;
    QPCIBar bar;
    QDict *rsp;

    close(fd);
    qtest_qmp_device_add(p->qts, "ivshmem-plain", "iv1",
                         "{'addr': %s, 'memdev': 'mb1'}",
                         stringify(PCI_SLOT_HP));
    iv = qpci_device_find(p->qs->pcibus, QPCI_DEVFN(PCI_SLOT_HP, 0));
    g_assert_nonnull(iv);
    bar = qpci_iomap(iv, 2, NULL);
    qpci_device_enable(iv);
    fill_pattern(wbuf, sizeof(wbuf), 23);
    pfbd_write_from(p, 16, bar.addr, wbuf, sizeof(wbuf));
    g_assert_true(qemu_maps_file(p, shm));

    qpci_unplug_acpi_device_test(p->qts, "iv1", PCI_SLOT_HP);
    g_free(iv);
    rsp = qtest_qmp(p->qts, "{ 'execute': 'object-del', 'arguments': "
                    "{ 'id': 'mb1' } }");
    g_assert(qdict_haskey(rsp, "return"));
    qobject_unref(rsp);

    /* RCU frees the RAM block some time after its last reference goes */
    start = g_get_monotonic_time();
    while (qemu_maps_file(p, shm)) {
        g_assert(g_get_monotonic_time() - start <= TIMEOUT_US);
        g_usleep(10000);
    }
    g_assert(!pfbd_broken(p));
    pfbd_stop(p);
}

static void test_hotplugged_ram(void)
{
    Pfbd *p = pfbd_setup(VOLUME_SIZE, "-m 256M,slots=2,maxmem=1G", "", 1);
    const uint64_t dimm_size = 128 * 1024 * 1024;
    uint8_t wbuf[8192], rbuf[8192];
    uint64_t dimm;

    /* Entries for the boot RAM */
    fill_pattern(wbuf, sizeof(wbuf), 3);
    g_assert_cmpint(pfbd_do_req(p, 0, VIRTIO_BLK_T_OUT, 0, wbuf,
                                sizeof(wbuf)), ==, VIRTIO_BLK_S_OK);

    dimm = pfbd_plug_dimm(p, dimm_size);

    /* Write from the DIMM, read back into another place in it */
    fill_pattern(wbuf, sizeof(wbuf), 5);
    pfbd_write_from(p, 64, dimm + 4096, wbuf, sizeof(wbuf));
    pfbd_read_into(p, 64, dimm + 65536, rbuf, sizeof(rbuf));
    g_assert(memcmp(wbuf, rbuf, sizeof(wbuf)) == 0);

    /* The boot RAM still works after the change, in both directions */
    g_assert_cmpint(pfbd_do_req(p, 0, VIRTIO_BLK_T_IN, 0, rbuf,
                                sizeof(rbuf)), ==, VIRTIO_BLK_S_OK);
    fill_pattern(wbuf, sizeof(wbuf), 3);
    g_assert(memcmp(wbuf, rbuf, sizeof(rbuf)) == 0);

    /*
     * 1 KiB read across the DIMM's end: the first 512 bytes land in the
     * DIMM, the rest in unassigned space (bounced, and dropped)
     */
    qtest_memset(p->qts, dimm + dimm_size - 512, 0xaa, 512);
    g_assert_cmpint(pfbd_do_req_at(p, VIRTIO_BLK_T_IN, 64,
                                   dimm + dimm_size - 512, 1024), ==,
                    VIRTIO_BLK_S_OK);
    qtest_memread(p->qts, dimm + dimm_size - 512, rbuf, 512);
    fill_pattern(wbuf, sizeof(wbuf), 5);
    g_assert(memcmp(wbuf, rbuf, 512) == 0);
    g_assert(!pfbd_broken(p));
    pfbd_stop(p);
}

/* Multi-queue */

static int64_t iothread_thread_id(Pfbd *p, const char *id)
{
    QDict *rsp = qtest_qmp(p->qts, "{ 'execute': 'query-iothreads' }");
    QListEntry *e;
    int64_t tid = -1;

    QLIST_FOREACH_ENTRY(qdict_get_qlist(rsp, "return"), e) {
        QDict *t = qobject_to(QDict, qlist_entry_obj(e));

        if (!strcmp(qdict_get_str(t, "id"), id)) {
            tid = qdict_get_int(t, "thread-id");
        }
    }
    qobject_unref(rsp);
    g_assert_cmpint(tid, >, 0);
    return tid;
}

/*
 * Four virtqueues on two IOThreads: each vq serves its own requests, and
 * the statistics show that the thread that served vq i is the IOThread
 * the mapping gave it.
 */
static void test_multiqueue_mapping(void)
{
    const char *map[] = { "io0", "io1", "io0", "io1" };
    Pfbd *p = pfbd_setup(VOLUME_SIZE,
                         "-object iothread,id=io0 -object iothread,id=io1",
                         ", \"num-queues\": 4, \"iothread-vq-mapping\": "
                         "[{\"iothread\": \"io0\", \"vqs\": [0, 2]}, "
                         "{\"iothread\": \"io1\", \"vqs\": [1, 3]}]", 4);
    uint8_t wbuf[4096], rbuf[4096];
    QDict *stats;
    unsigned int i, j;

    g_assert_cmpint(qvirtio_config_readw(p->dev,
                    offsetof(struct virtio_blk_config, num_queues)), ==, 4);
    for (i = 0; i < 4; i++) {
        for (j = 0; j <= i; j++) {
            fill_pattern(wbuf, sizeof(wbuf), 31 * i + j);
            g_assert_cmpint(pfbd_do_req(p, i, VIRTIO_BLK_T_OUT, 8 * (i * 8 + j),
                                        wbuf, sizeof(wbuf)), ==,
                            VIRTIO_BLK_S_OK);
            g_assert_cmpint(pfbd_do_req(p, i, VIRTIO_BLK_T_IN, 8 * (i * 8 + j),
                                        rbuf, sizeof(rbuf)), ==,
                            VIRTIO_BLK_S_OK);
            g_assert(memcmp(wbuf, rbuf, sizeof(rbuf)) == 0);
        }
    }

    stats = pfbd_stats(p);
    for (i = 0; i < 4; i++) {
        QDict *q = stats_queue(stats, i);
        QDict *reqs = qdict_get_qdict(q, "requests");
        QDict *bytes = qdict_get_qdict(q, "bytes");

        g_assert_cmpstr(qdict_get_str(q, "iothread"), ==, map[i]);
        g_assert_cmpint(qdict_get_int(q, "thread-id"), ==,
                        iothread_thread_id(p, map[i]));
        g_assert_cmpint(qdict_get_int(reqs, "write"), ==, i + 1);
        g_assert_cmpint(qdict_get_int(reqs, "read"), ==, i + 1);
        g_assert_cmpint(qdict_get_int(bytes, "write"), ==, 4096 * (i + 1));
        g_assert_cmpint(qdict_get_int(bytes, "read"), ==, 4096 * (i + 1));
        g_assert_cmpint(qdict_get_int(q, "in-flight"), ==, 0);
        g_assert_cmpint(qdict_get_int(q, "errors"), ==, 0);
    }
    qobject_unref(stats);
    pfbd_stop(p);
}

/* Many requests in flight on one queue, one kick: all complete */
static void test_batch(void)
{
    enum { N = 64, LEN = 16384 };
    Pfbd *p = pfbd_setup(VOLUME_SIZE, "-object iothread,id=io0",
                         ", \"iothread\": \"io0\"", 1);
    g_autofree uint8_t *buf = g_malloc(LEN);
    g_autofree uint8_t *rbuf = g_malloc(LEN);
    PfbdReq r[N];
    uint32_t heads[N];
    QDict *stats, *q;
    unsigned int i;

    for (i = 0; i < N; i++) {
        fill_pattern(buf, LEN, i);
        r[i] = pfbd_req_prepare(p, VIRTIO_BLK_T_OUT, i * (LEN / 512), buf,
                                LEN);
        pfbd_req_add(p, p->vq[0], &r[i], false);
    }
    pfbd_kick_many(p, p->vq[0], r, N);
    pfbd_wait_used(p, p->vq[0], heads, N);
    for (i = 0; i < N; i++) {
        g_assert_cmpint(pfbd_req_status(p, &r[i]), ==, VIRTIO_BLK_S_OK);
        guest_free(&p->qs->alloc, r[i].addr);
    }
    for (i = 0; i < N; i += 7) {
        fill_pattern(buf, LEN, i);
        g_assert_cmpint(pfbd_do_req(p, 0, VIRTIO_BLK_T_IN, i * (LEN / 512),
                                    rbuf, LEN), ==, VIRTIO_BLK_S_OK);
        g_assert(memcmp(buf, rbuf, LEN) == 0);
    }

    stats = pfbd_stats(p);
    q = stats_queue(stats, 0);
    g_assert_cmpint(qdict_get_int(qdict_get_qdict(q, "requests"), "write"),
                    ==, N);
    /* The kick came after all N were queued: fewer batches than requests */
    g_assert_cmpint(qdict_get_int(q, "max-in-flight"), >, 1);
    g_assert_cmpint(qdict_get_int(q, "batches"), <, N);
    qobject_unref(stats);
    pfbd_stop(p);
}

/* Statistics */

static uint64_t list_sum(QList *l)
{
    QListEntry *e;
    uint64_t sum = 0;

    QLIST_FOREACH_ENTRY(l, e) {
        sum += qnum_get_uint(qobject_to(QNum, qlist_entry_obj(e)));
    }
    return sum;
}

static void test_stats(void)
{
    Pfbd *p = pfbd_setup(VOLUME_SIZE, "", ", \"serial\": \"s\"", 1);
    uint8_t buf[8192];
    QDict *stats, *q, *reqs, *bytes;
    unsigned int i;

    memset(buf, 0x11, sizeof(buf));
    for (i = 0; i < 3; i++) {
        pfbd_do_req(p, 0, VIRTIO_BLK_T_OUT, i * 16, buf, sizeof(buf));
    }
    for (i = 0; i < 5; i++) {
        pfbd_do_req(p, 0, VIRTIO_BLK_T_IN, i * 8, buf, 4096);
    }
    pfbd_do_req(p, 0, VIRTIO_BLK_T_FLUSH, 0, NULL, 0);
    pfbd_do_req(p, 0, VIRTIO_BLK_T_GET_ID, 0, buf, VIRTIO_BLK_ID_BYTES);
    pfbd_dwz(p, VIRTIO_BLK_T_DISCARD, 0, 8, 0);
    pfbd_dwz(p, VIRTIO_BLK_T_WRITE_ZEROES, 0, 8, 0);
    pfbd_do_req(p, 0, 0x4242, 0, NULL, 0);
    pfbd_do_req(p, 0, VIRTIO_BLK_T_IN, VOLUME_SIZE, buf, 512);

    stats = pfbd_stats(p);
    q = stats_queue(stats, 0);
    reqs = qdict_get_qdict(q, "requests");
    bytes = qdict_get_qdict(q, "bytes");
    g_assert_cmpint(qdict_get_int(reqs, "write"), ==, 3);
    g_assert_cmpint(qdict_get_int(reqs, "read"), ==, 6);
    g_assert_cmpint(qdict_get_int(reqs, "flush"), ==, 1);
    g_assert_cmpint(qdict_get_int(reqs, "get-id"), ==, 1);
    g_assert_cmpint(qdict_get_int(reqs, "discard"), ==, 1);
    g_assert_cmpint(qdict_get_int(reqs, "write-zeroes"), ==, 1);
    g_assert_cmpint(qdict_get_int(reqs, "unsupported"), ==, 1);
    g_assert_cmpint(qdict_get_int(bytes, "write"), ==, 3 * 8192);
    g_assert_cmpint(qdict_get_int(bytes, "read"), ==, 5 * 4096);
    g_assert_cmpint(qdict_get_int(q, "errors"), ==, 1);
    g_assert_cmpint(qdict_get_int(q, "in-flight"), ==, 0);
    g_assert_cmpint(qdict_get_int(q, "max-in-flight"), ==, 1);
    g_assert_cmpint(qdict_get_int(q, "batches"), ==, 14);
    g_assert_cmpint(qdict_get_int(q, "notifies"), ==, 14);
    g_assert_cmpint(qdict_get_int(q, "notifies-suppressed"), ==, 0);
    /* flush, discard, write-zeroes and 8 reads and writes went to the engine */
    g_assert_cmpint(qdict_get_int(q, "submits"), ==, 11);
    g_assert_cmpint(list_sum(qdict_get_qlist(q, "latency-histogram-us")), ==,
                    14);
    g_assert_cmpstr(qdict_get_str(q, "iothread"), ==, "main-loop");
    qobject_unref(stats);

    /* The driver turns interrupts off: completions are not notified */
    qtest_writew(p->qts, p->vq[0]->avail, VRING_AVAIL_F_NO_INTERRUPT);
    for (i = 0; i < 3; i++) {
        g_assert_cmpint(pfbd_do_req(p, 0, VIRTIO_BLK_T_IN, 0, buf, 512), ==,
                        VIRTIO_BLK_S_OK);
    }
    stats = pfbd_stats(p);
    q = stats_queue(stats, 0);
    g_assert_cmpint(qdict_get_int(q, "notifies"), ==, 14);
    g_assert_cmpint(qdict_get_int(q, "notifies-suppressed"), ==, 3);
    qobject_unref(stats);
    pfbd_stop(p);
}

/* The entry of query-qmp-schema's @schema named @name */
static QDict *schema_entry(QList *schema, const char *name)
{
    QListEntry *e;

    QLIST_FOREACH_ENTRY(schema, e) {
        QDict *d = qobject_to(QDict, qlist_entry_obj(e));

        if (g_str_equal(qdict_get_str(d, "name"), name)) {
            return d;
        }
    }
    g_assert_not_reached();
}

/* The type of member @member of object type @type in @schema */
static const char *schema_member_type(QList *schema, const char *type,
                                      const char *member)
{
    QList *members = qdict_get_qlist(schema_entry(schema, type), "members");
    QListEntry *e;

    QLIST_FOREACH_ENTRY(members, e) {
        QDict *m = qobject_to(QDict, qlist_entry_obj(e));

        if (g_str_equal(qdict_get_str(m, "name"), member)) {
            return qdict_get_str(m, "type");
        }
    }
    g_assert_not_reached();
}

/*
 * query-virtio-blk-pfbd-stats returns what the "stats" property does, for
 * the PCI device's path and its backend's; any other path is an error;
 * query-qmp-schema describes the statistics.
 */
static void test_stats_qmp(void)
{
    Pfbd *p = pfbd_setup(VOLUME_SIZE, "", ", \"num-queues\": 2", 2);
    const char *paths[] = { "/machine/peripheral/drv0", STATS_PATH };
    uint8_t buf[4096] = { 0 };
    QDict *rsp, *stats;
    QList *schema;
    const char *queues, *queue;
    unsigned int i;

    pfbd_do_req(p, 0, VIRTIO_BLK_T_OUT, 0, buf, sizeof(buf));
    pfbd_do_req(p, 1, VIRTIO_BLK_T_IN, 0, buf, sizeof(buf));
    stats = pfbd_stats(p);
    g_assert_cmpint(qdict_get_int(qdict_get_qdict(stats_queue(stats, 1),
                                                  "bytes"), "read"), ==,
                    sizeof(buf));
    for (i = 0; i < ARRAY_SIZE(paths); i++) {
        rsp = qtest_qmp(p->qts, "{ 'execute': 'query-virtio-blk-pfbd-stats',"
                        " 'arguments': { 'path': %s } }", paths[i]);
        g_assert(qdict_haskey(rsp, "return"));
        g_assert(qobject_is_equal(qdict_get(rsp, "return"),
                                  QOBJECT(stats)));
        qobject_unref(rsp);
    }
    qobject_unref(stats);

    rsp = qtest_qmp(p->qts, "{ 'execute': 'query-virtio-blk-pfbd-stats',"
                    " 'arguments': { 'path': '/machine' } }");
    g_assert_cmpstr(qdict_get_str(qdict_get_qdict(rsp, "error"), "desc"), ==,
                    "'/machine' is not a virtio-blk-pfbd device");
    qobject_unref(rsp);

    rsp = qtest_qmp(p->qts, "{ 'execute': 'query-qmp-schema' }");
    schema = qdict_get_qlist(rsp, "return");
    queues = qdict_get_str(schema_entry(schema,
                                        "query-virtio-blk-pfbd-stats"),
                           "ret-type");
    queue = qdict_get_str(schema_entry(schema,
                                       schema_member_type(schema, queues,
                                                          "queues")),
                          "element-type");
    g_assert_cmpstr(qdict_get_str(schema_entry(schema,
                        schema_member_type(schema, queue,
                                           "latency-histogram-us")),
                                  "meta-type"), ==, "array");
    schema_member_type(schema, queue, "notifies-suppressed");
    qobject_unref(rsp);
    pfbd_stop(p);
}

/* Lifecycle with requests in flight */

/*
 * A null volume whose requests stay in flight for half a second: long
 * enough to see them in the statistics on a loaded machine
 */
#define SLOW_VOLUME "null:16M:completion_nsec=500000000"

/* Queue @n writes of @len bytes on virtqueue @q with one kick */
static void queue_writes(Pfbd *p, unsigned int q, unsigned int n, size_t len)
{
    g_autofree uint8_t *buf = g_malloc(len);
    g_autofree PfbdReq *r = g_new(PfbdReq, n);
    unsigned int i;

    memset(buf, 0x77, len);
    for (i = 0; i < n; i++) {
        r[i] = pfbd_req_prepare(p, VIRTIO_BLK_T_OUT, i * (len / 512), buf,
                                len);
        pfbd_req_add(p, p->vq[q], &r[i], false);
    }
    pfbd_kick_many(p, p->vq[q], r, n);
}

static void test_reset_inflight(void)
{
    Pfbd *p = pfbd_start_volume(SLOW_VOLUME, "-object iothread,id=io0",
                                ", \"num-queues\": 2, "
                                "\"iothread\": \"io0\"", 2);
    uint8_t wbuf[4096];
    QDict *stats;
    unsigned int round;

    pfbd_driver_ok(p, 0);
    for (round = 0; round < 5; round++) {
        queue_writes(p, 0, 80, 65536);
        queue_writes(p, 1, 80, 4096);
        wait_in_flight(p->qts, STATS_PATH, 0, 80);
        wait_in_flight(p->qts, STATS_PATH, 1, 80);
        /* Reset returns after every request in flight has completed */
        qvirtio_reset(p->dev);
        stats = pfbd_stats(p);
        g_assert_cmpint(qdict_get_int(stats_queue(stats, 0), "in-flight"),
                        ==, 0);
        g_assert_cmpint(qdict_get_int(stats_queue(stats, 1), "in-flight"),
                        ==, 0);
        qobject_unref(stats);
        pfbd_assert_alive(p);

        /* The new rings work, and start empty */
        pfbd_driver_ok(p, 0);
        fill_pattern(wbuf, sizeof(wbuf), round);
        g_assert_cmpint(pfbd_do_req(p, 1, VIRTIO_BLK_T_OUT, 4000, wbuf,
                                    sizeof(wbuf)), ==, VIRTIO_BLK_S_OK);
        g_assert_cmpint(pfbd_do_req(p, 0, VIRTIO_BLK_T_IN, 4000, wbuf,
                                    sizeof(wbuf)), ==, VIRTIO_BLK_S_OK);
        g_assert_cmpint(qtest_readw(p->qts, p->vq[0]->used + 2), ==, 1);
        g_assert_cmpint(qtest_readw(p->qts, p->vq[1]->used + 2), ==, 1);
    }
    pfbd_stop(p);
}

static void test_stop_cont_inflight(void)
{
    Pfbd *p = pfbd_start_volume(SLOW_VOLUME, "-object iothread,id=io0",
                                ", \"iothread\": \"io0\"", 1);
    uint32_t heads[64];
    QDict *stats;

    pfbd_driver_ok(p, 0);
    queue_writes(p, 0, 64, 65536);
    wait_in_flight(p->qts, STATS_PATH, 0, 64);
    qtest_qmp_assert_success(p->qts, "{ 'execute': 'stop' }");
    /* Stopped: nothing is left in flight */
    stats = pfbd_stats(p);
    g_assert_cmpint(qdict_get_int(stats_queue(stats, 0), "in-flight"), ==,
                    0);
    qobject_unref(stats);
    qtest_qmp_assert_success(p->qts, "{ 'execute': 'cont' }");
    /* Every request completes, whether before the stop or after the cont */
    pfbd_wait_used(p, p->vq[0], heads, 64);
    pfbd_stop(p);
}

static int fd_count(pid_t pid)
{
    g_autofree char *dir = g_strdup_printf("/proc/%d/fd", (int)pid);
    GDir *d = g_dir_open(dir, 0, NULL);
    int n = 0;

    g_assert_nonnull(d);
    while (g_dir_read_name(d)) {
        n++;
    }
    g_dir_close(d);
    return n;
}

static void hotplug_pfbd(QTestState *qts, const char *volume)
{
    g_autofree char *addr = g_strdup_printf("%x.0", PCI_SLOT_HP);

    qtest_qmp_assert_success(qts, "{ 'execute': 'device_add', 'arguments': "
                             "{ 'driver': 'virtio-blk-pfbd-pci', "
                             "'id': 'drv1', 'addr': %s, "
                             "'volume': %s, 'num-queues': 2, "
                             "'iothread-vq-mapping': [{'iothread': 'io0'}, "
                             "{'iothread': 'io1'}] } }",
                             addr, volume);
}

/*
 * Set up the device hot-plugged in slot PCI_SLOT_HP as a driver would,
 * queue 0 only, without EVENT_IDX and INDIRECT_DESC; returns the device,
 * its queue 0 in *@vqp
 */
static QVirtioPCIDevice *hotplugged_setup(Pfbd *p, QVirtQueue **vqp)
{
    QVirtioPCIDevice *hp = virtio_pci_new(p->qs->pcibus, &(QPCIAddress) {
                                              .devfn = QPCI_DEVFN(PCI_SLOT_HP,
                                                                  0) });

    g_assert_nonnull(hp);
    qvirtio_pci_device_enable(hp);
    qvirtio_start_device(&hp->vdev);
    qvirtio_set_features(&hp->vdev, qvirtio_get_features(&hp->vdev) &
                         ~(QVIRTIO_F_BAD_FEATURE |
                           (1ull << VIRTIO_RING_F_INDIRECT_DESC) |
                           (1ull << VIRTIO_RING_F_EVENT_IDX)));
    *vqp = qvirtqueue_setup(&hp->vdev, &p->qs->alloc, 0);
    qvirtio_set_driver_ok(&hp->vdev);
    return hp;
}

/* Image locks */

/*
 * Whether an open file description other than @fd's holds a lock on byte
 * @off of the image: QEMU's image locks (file-posix's layout: byte 100 + i
 * for a permission a user holds, 200 + i for one it does not share; i is
 * 0 for "consistent read", 1 for "write")
 */
static bool image_byte_locked(int fd, off_t off)
{
    struct flock fl = {
        .l_type = F_WRLCK,
        .l_whence = SEEK_SET,
        .l_start = off,
        .l_len = 1,
    };

    g_assert_cmpint(fcntl(fd, F_OFD_GETLK, &fl), ==, 0);
    return fl.l_type != F_UNLCK;
}

/*
 * A writable device locks its image as stock QEMU's file driver does,
 * and its unplug releases the locks although QEMU goes on
 */
static void test_lock_released_on_unplug(void)
{
    Pfbd *p = pfbd_setup(VOLUME_SIZE,
                         "-object iothread,id=io0 -object iothread,id=io1",
                         "", 1);
    int fd;
    g_autofree char *image = image_create(VOLUME_SIZE, &fd);
    g_autofree char *volume = g_strdup_printf("file:%s", image);

    /* drv0's image: read and write taken, write not shared */
    g_assert_true(image_byte_locked(p->image_fd, 100));
    g_assert_true(image_byte_locked(p->image_fd, 101));
    g_assert_true(image_byte_locked(p->image_fd, 201));

    g_assert_false(image_byte_locked(fd, 101));
    hotplug_pfbd(p->qts, volume);
    g_assert_true(image_byte_locked(fd, 100));
    g_assert_true(image_byte_locked(fd, 101));
    g_assert_true(image_byte_locked(fd, 201));
    /* Consistent read, write unchanged and resize are shared */
    g_assert_false(image_byte_locked(fd, 200));
    g_assert_false(image_byte_locked(fd, 202));
    g_assert_false(image_byte_locked(fd, 203));

    qpci_unplug_acpi_device_test(p->qts, "drv1", PCI_SLOT_HP);
    g_assert_false(image_byte_locked(fd, 100));
    g_assert_false(image_byte_locked(fd, 101));
    g_assert_false(image_byte_locked(fd, 201));
    g_assert_true(image_byte_locked(p->image_fd, 101));
    close(fd);
    pfbd_stop(p);
}

/* Volumes opened ahead of hot-plug (QMP pfbd-volume-open) */

/*
 * Run the QMP command of @fmt on @qts (as qtest_qmp()); it must fail with
 * a message that contains @want
 */
static void G_GNUC_PRINTF(3, 4) qmp_assert_error(QTestState *qts,
                                                 const char *want,
                                                 const char *fmt, ...)
{
    va_list ap;
    QDict *rsp, *err;
    const char *desc;

    va_start(ap, fmt);
    rsp = qtest_vqmp(qts, fmt, ap);
    va_end(ap);
    err = qdict_get_qdict(rsp, "error");
    desc = err ? qdict_get_try_str(err, "desc") : NULL;
    if (!desc || !strstr(desc, want)) {
        g_autoptr(GString) json = qobject_to_json(QOBJECT(rsp));

        g_test_message("'%s' wanted in the reply %s", want, json->str);
        g_assert_not_reached();
    }
    qobject_unref(rsp);
}

/*
 * A volume opened by pfbd-volume-open is what a device hot-plugged with
 * "volume": "@NAME" serves (its data, its image locks); the device takes
 * it (pfbd-volume-close then fails, and so does a second device), a
 * failed realize gives it back, and bad names and requests are refused
 * with what to fix.
 */
static void test_volume_open_ahead(void)
{
    static const struct {
        const char *name, *volume, *want;
    } bad_opens[] = {
        { "v0", "null:1M", "open already" },
        { "a/b", "null:1M", "is not valid" },
        { "v2", "nope:1M", "unknown engine" },
    };
    Pfbd *p = pfbd_setup(VOLUME_SIZE,
                         "-object iothread,id=io0 -object iothread,id=io1",
                         "", 1);
    g_autofree char *image = NULL;
    g_autofree char *volume = NULL;
    g_autofree char *shown = NULL;
    uint8_t want[4096], got[4096];
    QVirtioPCIDevice *hp;
    QVirtQueue *vq;
    uint64_t addr;
    uint32_t head;
    unsigned int i;
    QDict *rsp;
    int fd;

    image = image_create(VOLUME_SIZE, &fd);
    fill_pattern(want, sizeof(want), 47);
    g_assert_cmpint(pwrite(fd, want, sizeof(want), 8192), ==, sizeof(want));
    volume = g_strdup_printf("file:%s", image);

    qtest_qmp_assert_success(p->qts, "{ 'execute': 'pfbd-volume-open', "
                             "'arguments': { 'name': 'v0', 'volume': %s } }",
                             volume);
    g_assert_false(image_byte_locked(fd, 101));
    for (i = 0; i < G_N_ELEMENTS(bad_opens); i++) {
        qmp_assert_error(p->qts, bad_opens[i].want,
                         "{ 'execute': 'pfbd-volume-open', 'arguments': "
                         "{ 'name': %s, 'volume': %s } }",
                         bad_opens[i].name, bad_opens[i].volume);
    }
    qmp_assert_error(p->qts, "no volume named 'v2'",
                     "{ 'execute': 'pfbd-volume-close', 'arguments': "
                     "{ 'name': 'v2' } }");
    qmp_assert_error(p->qts, "pfbd-volume-open first",
                     "{ 'execute': 'device_add', 'arguments': "
                     "{ 'driver': 'virtio-blk-pfbd-pci', 'id': 'drv1', "
                     "'volume': '@v2' } }");

    /* A failed realize gives the volume back */
    qtest_qmp_assert_success(p->qts, "{ 'execute': 'pfbd-volume-open', "
                             "'arguments': { 'name': 'ro', 'volume': %s, "
                             "'read-only': true } }", volume);
    qmp_assert_error(p->qts, "read-only=on",
                     "{ 'execute': 'device_add', 'arguments': "
                     "{ 'driver': 'virtio-blk-pfbd-pci', 'id': 'drv1', "
                     "'volume': '@ro' } }");
    qtest_qmp_assert_success(p->qts, "{ 'execute': 'pfbd-volume-close', "
                             "'arguments': { 'name': 'ro' } }");

    /* The device serves it */
    hotplug_pfbd(p->qts, "@v0");
    rsp = qtest_qmp(p->qts, "{ 'execute': 'qom-get', 'arguments': "
                    "{ 'path': '/machine/peripheral/drv1', "
                    "'property': 'volume' } }");
    shown = g_strdup(qdict_get_str(rsp, "return"));
    qobject_unref(rsp);
    g_assert_cmpstr(shown, ==, "@v0");
    g_assert_true(image_byte_locked(fd, 101));
    qmp_assert_error(p->qts, "no volume named 'v0'",
                     "{ 'execute': 'pfbd-volume-close', 'arguments': "
                     "{ 'name': 'v0' } }");

    hp = hotplugged_setup(p, &vq);
    addr = guest_alloc(&p->qs->alloc, 16 + sizeof(got) + 1);
    qtest_memwrite(p->qts, addr, &(struct virtio_blk_outhdr) {
                       .type = cpu_to_le32(VIRTIO_BLK_T_IN),
                       .sector = cpu_to_le64(16),
                   }, 16);
    head = qvirtqueue_add(p->qts, vq, addr, 16, false, true);
    qvirtqueue_add(p->qts, vq, addr + 16, sizeof(got), true, true);
    qvirtqueue_add(p->qts, vq, addr + 16 + sizeof(got), 1, true, false);
    qvirtqueue_kick(p->qts, &hp->vdev, vq, head);
    qvirtio_wait_used_elem(p->qts, &hp->vdev, vq, head, NULL,
                           TIMEOUT_US);
    g_assert_cmpint(qtest_readb(p->qts, addr + 16 + sizeof(got)), ==,
                    VIRTIO_BLK_S_OK);
    qtest_memread(p->qts, addr + 16, got, sizeof(got));
    g_assert_cmpmem(got, sizeof(got), want, sizeof(want));

    qpci_unplug_acpi_device_test(p->qts, "drv1", PCI_SLOT_HP);
    g_free(vq);
    guest_free(&p->qs->alloc, addr);
    qos_object_destroy((QOSGraphObject *)hp);
    g_assert_false(image_byte_locked(fd, 101));
    /* Taken, then closed with its device */
    qmp_assert_error(p->qts, "pfbd-volume-open first",
                     "{ 'execute': 'device_add', 'arguments': "
                     "{ 'driver': 'virtio-blk-pfbd-pci', 'id': 'drv1', "
                     "'volume': '@v0' } }");
    close(fd);
    unlink(image);
    pfbd_stop(p);
}

/*
 * pfbd-volume-open waits for the network outside the main loop: a
 * PureFlash conductor that takes the connection and does not answer
 * holds the command (the open's timeout is 60 s), while the main loop
 * goes on serving qtest commands under the BQL.  Only once one of them
 * has been answered does the conductor reply, HTTP 503: the command then
 * fails with that reply, not with a timeout, and the name is free again.
 */
static void test_volume_open_off_main_loop(void)
{
    Pfbd *p = pfbd_setup(VOLUME_SIZE, "", "", 1);
    struct sockaddr_in sa = { .sin_family = AF_INET };
    socklen_t len = sizeof(sa);
    g_autofree char *spec = NULL;
    const char *desc;
    char req[4096];
    size_t got = 0;
    ssize_t n;
    int lfd, cfd;
    QDict *rsp;

    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    g_assert_cmpint(lfd, >=, 0);
    g_assert_cmpint(bind(lfd, (struct sockaddr *)&sa, sizeof(sa)), ==, 0);
    g_assert_cmpint(listen(lfd, 1), ==, 0);
    g_assert_cmpint(getsockname(lfd, (struct sockaddr *)&sa, &len), ==, 0);
    spec = g_strdup_printf("pureflash:vol1:conductor=127.0.0.1:%u:timeout=60",
                           ntohs(sa.sin_port));

    qtest_qmp_send(p->qts, "{ 'execute': 'pfbd-volume-open', 'arguments': "
                   "{ 'name': 'pf', 'volume': %s } }", spec);
    /* The open's request reaches the conductor */
    cfd = accept(lfd, NULL, NULL);
    g_assert_cmpint(cfd, >=, 0);
    while (!g_strstr_len(req, got, "\r\n\r\n")) {
        n = recv(cfd, req + got, sizeof(req) - 1 - got, 0);
        g_assert_cmpint(n, >, 0);
        got += n;
    }
    req[got] = '\0';
    g_assert_nonnull(strstr(req, "op=open_volume"));

    /*
     * Meanwhile the main loop serves the qtest socket, under the BQL (the
     * QMP monitor is busy with the command: it answers afterwards)
     */
    qtest_writel(p->qts, 0x1000, 0x5a5a1234);
    g_assert_cmphex(qtest_readl(p->qts, 0x1000), ==, 0x5a5a1234);

    n = strlen("HTTP/1.1 503 Service Unavailable\r\n"
               "Content-Length: 0\r\n\r\n");
    g_assert_cmpint(send(cfd, "HTTP/1.1 503 Service Unavailable\r\n"
                         "Content-Length: 0\r\n\r\n", n, MSG_NOSIGNAL),
                    ==, n);
    close(cfd);
    close(lfd);

    rsp = qtest_qmp_receive(p->qts);
    g_assert_true(qdict_haskey(rsp, "error"));
    desc = qdict_get_str(qdict_get_qdict(rsp, "error"), "desc");
    g_test_message("pfbd-volume-open: %s", desc);
    g_assert_nonnull(strstr(desc, "HTTP status 503"));
    qobject_unref(rsp);
    qmp_assert_error(p->qts, "no volume named 'pf'",
                     "{ 'execute': 'pfbd-volume-close', 'arguments': "
                     "{ 'name': 'pf' } }");
    pfbd_stop(p);
}

/*
 * Hot-plug and unplug a two-queue device on two IOThreads 20 times, with
 * requests in flight at each unplug: QEMU survives, keeps no fd and does
 * not grow (RSS after the last cycle within 4 MiB of after the second).
 */
static void test_hotplug_cycles(void)
{
    Pfbd *p = pfbd_setup(VOLUME_SIZE,
                         "-object iothread,id=io0 -object iothread,id=io1",
                         "", 1);
    pid_t pid = qtest_pid(p->qts);
    int fds_before = -1;
    long rss_before = -1;
    unsigned int i;

    for (i = 0; i < 20; i++) {
        QVirtioPCIDevice *hp;
        QVirtQueue *vq;
        uint64_t addr;
        uint32_t heads[32];
        unsigned int j;

        hotplug_pfbd(p->qts, SLOW_VOLUME);
        hp = hotplugged_setup(p, &vq);

        /* Reads in flight when the unplug comes */
        addr = guest_alloc(&p->qs->alloc, 32 * (16 + 65536 + 1));
        for (j = 0; j < 32; j++) {
            uint64_t a = addr + j * (16 + 65536 + 1);
            struct virtio_blk_outhdr hdr = {
                .type = cpu_to_le32(VIRTIO_BLK_T_IN),
                .sector = cpu_to_le64(j * 128),
            };

            qtest_memwrite(p->qts, a, &hdr, sizeof(hdr));
            heads[j] = qvirtqueue_add(p->qts, vq, a, 16, false, true);
            qvirtqueue_add(p->qts, vq, a + 16, 65536, true, true);
            qvirtqueue_add(p->qts, vq, a + 16 + 65536, 1, true, false);
        }
        kick_heads(p->qts, &hp->vdev, vq, heads, 32);
        wait_in_flight(p->qts, "/machine/peripheral/drv1/virtio-backend", 0,
                       32);

        qpci_unplug_acpi_device_test(p->qts, "drv1", PCI_SLOT_HP);
        g_free(vq);
        guest_free(&p->qs->alloc, addr);
        qos_object_destroy((QOSGraphObject *)hp);
        pfbd_assert_alive(p);

        if (i == 0) {
            /* After one cycle: whatever QEMU allocates once is there */
            fds_before = fd_count(pid);
        } else if (i == 1) {
            rss_before = proc_status_kib(pid, "VmRSS:");
        }
    }
    g_assert_cmpint(fd_count(pid), ==, fds_before);
    g_test_message("RSS after cycle 2: %ld KiB, after cycle 20: %ld KiB",
                   rss_before, proc_status_kib(pid, "VmRSS:"));
    if (strstr(getenv("ASAN_OPTIONS") ?: "", "detect_leaks=1")) {
        /* ASan's quarantine keeps freed memory; LSan checks leaks instead */
        g_test_message("ASan build: RSS not compared, LeakSanitizer checks");
    } else {
        g_assert_cmpint(proc_status_kib(pid, "VmRSS:") - rss_before, <, 4096);
    }
    pfbd_stop(p);
}

/*
 * A hostile guest's kick storm: one vCPU publishes requests and kicks in a
 * loop while another resets the device or the VM stops.  Under KVM a kick
 * is a write to the queue's ioeventfd that needs no BQL, so it can land
 * between any two steps of the device's stop.  The test plays that vCPU
 * from a thread of its own: guest RAM is a shared file it maps, and it
 * writes QEMU's eventfds directly (pidfd_getfd()).
 */

#define STORM_RAM_SIZE      (256 * 1024 * 1024)
#define STORM_CHAINS        16
#define STORM_MAX_EVENTFDS  64

typedef struct Kicker {
    uint8_t *ram;               /* guest RAM: low RAM at its own offset */
    uint64_t avail, used;       /* the ring's guest addresses */
    uint16_t size;
    uint16_t max_outstanding;   /* published and not used; 0: size */
    uint16_t idx;               /* the avail index published last */
    uint32_t heads[STORM_CHAINS];
    int efds[STORM_MAX_EVENTFDS];
    unsigned int nefds;
    bool stop;
    GThread *thread;
} Kicker;

/* Add the eventfds that QEMU has open to the set @fds */
static void qemu_eventfds(pid_t pid, GHashTable *fds)
{
    g_autofree char *dir = g_strdup_printf("/proc/%d/fdinfo", (int)pid);
    GDir *d = g_dir_open(dir, 0, NULL);
    const char *name;

    g_assert_nonnull(d);
    while ((name = g_dir_read_name(d))) {
        g_autofree char *path = g_build_filename(dir, name, NULL);
        g_autofree char *info = NULL;

        if (g_file_get_contents(path, &info, NULL, NULL) &&
            strstr(info, "eventfd-count:")) {
            g_hash_table_add(fds, GINT_TO_POINTER(atoi(name)));
        }
    }
    g_dir_close(d);
}

static gpointer kicker_run(gpointer opaque)
{
    Kicker *k = opaque;
    uint16_t *avail_idx = (uint16_t *)(k->ram + k->avail + 2);
    uint16_t *ring = (uint16_t *)(k->ram + k->avail + 4);
    uint16_t *used_idx = (uint16_t *)(k->ram + k->used + 2);
    uint64_t one = 1;
    unsigned int i;

    while (!qatomic_read(&k->stop)) {
        uint16_t used = le16_to_cpu(qatomic_read(used_idx));

        /* At most a ring's worth outstanding, as a driver may */
        if ((uint16_t)(k->idx - used) <
            (k->max_outstanding ? k->max_outstanding : k->size)) {
            ring[k->idx % k->size] =
                cpu_to_le16(k->heads[k->idx % STORM_CHAINS]);
            k->idx++;
            smp_wmb(); /* the ring entry before the index, as a driver */
            qatomic_set(avail_idx, cpu_to_le16(k->idx));
        }
        for (i = 0; i < k->nefds; i++) {
            g_assert_cmpint(write(k->efds[i], &one, sizeof(one)), ==,
                            sizeof(one));
        }
        /* Leave the CPU to QEMU now and then: these machines are small */
        g_usleep(10);
    }
    return NULL;
}

/*
 * Start kicking queue 0 of @p, whose driver was set up after QEMU had the
 * eventfds in @before: the new ones are the queue's notifiers.  It
 * publishes the chain @chain over and over, or flushes if @chain is -1.
 */
static void kicker_start(Kicker *k, Pfbd *p, GHashTable *before, int chain)
{
    g_autoptr(GHashTable) now = g_hash_table_new(NULL, NULL);
    pid_t pid = qtest_pid(p->qts);
    int pidfd = syscall(SYS_pidfd_open, pid, 0);
    QVirtQueue *vq = p->vq[0];
    GHashTableIter iter;
    gpointer key;
    unsigned int i;

    g_assert_cmpint(pidfd, >=, 0);
    k->avail = vq->avail;
    k->used = vq->used;
    k->size = vq->size;
    k->idx = qtest_readw(p->qts, vq->avail + 2);
    k->stop = false;
    k->nefds = 0;

    /* Flushes: a header and a status byte each */
    for (i = 0; i < STORM_CHAINS; i++) {
        PfbdReq r;

        if (chain >= 0) {
            k->heads[i] = chain;
            continue;
        }
        r = pfbd_req_prepare(p, VIRTIO_BLK_T_FLUSH, 0, NULL, 0);
        pfbd_req_add(p, vq, &r, false);
        k->heads[i] = r.head;
    }

    qemu_eventfds(pid, now);
    g_hash_table_iter_init(&iter, now);
    while (g_hash_table_iter_next(&iter, &key, NULL)) {
        if (!g_hash_table_contains(before, key)) {
            g_assert_cmpuint(k->nefds, <, STORM_MAX_EVENTFDS);
            k->efds[k->nefds] = syscall(SYS_pidfd_getfd, pidfd,
                                        GPOINTER_TO_INT(key), 0);
            g_assert_cmpint(k->efds[k->nefds], >=, 0);
            k->nefds++;
        }
    }
    close(pidfd);
    /* The host notifier, the guest notifier */
    g_assert_cmpuint(k->nefds, >=, 2);
    k->thread = g_thread_new("kicker", kicker_run, k);
}

static void kicker_stop(Kicker *k)
{
    unsigned int i;

    qatomic_set(&k->stop, true);
    g_thread_join(k->thread);
    for (i = 0; i < k->nefds; i++) {
        close(k->efds[i]);
    }
}

typedef enum StormEvent {
    STORM_RESET,        /* device reset */
    STORM_STOP,         /* VM stop, then cont */
    STORM_QUEUE_RESET,  /* virtio-pci queue_reset of the queue */
} StormEvent;

/*
 * Start QEMU with the virtio-pci block device @device (-device JSON) on
 * IOThread io0, @extra more command line, and guest RAM that @k maps
 */
static Pfbd *kicker_boot_device(Kicker *k, const char *device,
                                const char *extra)
{
    g_autofree char *mem_path = NULL;
    int fd = shared_ram_create("qtest-pfbd-ram", STORM_RAM_SIZE, &mem_path);
    g_autofree char *all_extra = g_strdup_printf(
        "-object iothread,id=io0 -m 256M -machine memory-backend=mem "
        "-object memory-backend-file,id=mem,size=256M,mem-path=%s,share=on "
        "%s", mem_path, extra);
    Pfbd *p = dev_start(all_extra, device, 1);

    k->ram = mmap(NULL, STORM_RAM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED,
                  fd, 0);
    g_assert(k->ram != MAP_FAILED);
    close(fd);
    return p;
}

/*
 * Start QEMU with @volume on IOThread io0 (more device properties in
 * @props) and guest RAM that @k maps
 */
static Pfbd *kicker_boot(Kicker *k, const char *volume, const char *props)
{
    g_autofree char *all_props = g_strdup_printf(", \"iothread\": \"io0\"%s",
                                                 props);
    g_autofree char *device = pfbd_device_json(volume, all_props);

    return kicker_boot_device(k, device, "");
}

static void kick_storm(StormEvent event)
{
    Kicker k = { 0 };
    Pfbd *p = kicker_boot(&k, "null:16M:completion_nsec=20000000", "");
    unsigned int round;

    for (round = 0; round < 3; round++) {
        g_autoptr(GHashTable) before = g_hash_table_new(NULL, NULL);

        /* Stopped, the device has no notifier: the new ones are its own */
        qvirtio_reset(p->dev);
        qemu_eventfds(qtest_pid(p->qts), before);
        pfbd_driver_ok(p, 0);
        kicker_start(&k, p, before, -1);
        wait_in_flight(p->qts, STATS_PATH, 0, 1);

        switch (event) {
        case STORM_RESET:
            qvirtio_reset(p->dev);
            break;
        case STORM_STOP:
            qtest_qmp_assert_success(p->qts, "{ 'execute': 'stop' }");
            break;
        case STORM_QUEUE_RESET:
            pfbd_common_writew(p, VIRTIO_PCI_COMMON_Q_SELECT, 0);
            pfbd_common_writew(p, VIRTIO_PCI_COMMON_Q_RESET, 1);
            break;
        }
        /* Nothing in flight, whatever the kicks did meanwhile */
        g_assert_cmpint(queue_in_flight(p->qts, STATS_PATH, 0), ==, 0);
        kicker_stop(&k);

        if (event == STORM_QUEUE_RESET) {
            /* The queue set up again works */
            qvirtqueue_cleanup(p->dev->bus, p->vq[0], &p->qs->alloc);
            p->vq[0] = qvirtqueue_setup(p->dev, &p->qs->alloc, 0);
            g_assert_cmpint(pfbd_do_req(p, 0, VIRTIO_BLK_T_FLUSH, 0, NULL, 0),
                            ==, VIRTIO_BLK_S_OK);
            g_assert(!pfbd_broken(p));
        } else if (event == STORM_STOP) {
            /* Every request published is served once the VM runs again */
            gint64 start = g_get_monotonic_time();

            qtest_qmp_assert_success(p->qts, "{ 'execute': 'cont' }");
            while (qtest_readw(p->qts, p->vq[0]->used + 2) != k.idx) {
                g_assert(g_get_monotonic_time() - start <= TIMEOUT_US);
                g_usleep(1000);
            }
            g_assert(!pfbd_broken(p));
        }
    }
    munmap(k.ram, STORM_RAM_SIZE);
    pfbd_stop(p);
}

/*
 * The memory map changes while the IOThread maps an element's buffers:
 * another vCPU toggles the PAM segment at 0xC0000 between PCI (buffers
 * there are mapped outside the virtqueue's map cache, bounced by
 * address_space_map()) and RAM (they go through the cache).  A request of
 * 128 buffers in that segment is published and kicked over and over while
 * the test toggles: when the segment turns to RAM in the middle of an
 * element, the map cache entry made for its later buffers also covers the
 * earlier ones, which were bounced.  QEMU must go on serving.
 */
static void test_pam_toggle(void)
{
    enum { NBUF = 128, TOGGLES = 3000 };
    Kicker k = { .max_outstanding = 1 };
    Pfbd *p = kicker_boot(&k, "null:16M", ", \"queue-size\": 1024");
    QPCIDevice *host = qpci_device_find(p->qs->pcibus, 0);
    g_autoptr(GHashTable) before = g_hash_table_new(NULL, NULL);
    uint64_t status = guest_alloc(&p->qs->alloc, 64);
    uint32_t head = 0;
    uint16_t used;
    unsigned int i;

    g_assert_nonnull(host);
    /* 0xC0000-0xC3FFF as RAM, zeroed: each 16 bytes read as a header */
    qpci_config_writeb(host, 0x5a, 0x33);
    qtest_memset(p->qts, 0xc0000, 0, 16 * NBUF);

    qemu_eventfds(qtest_pid(p->qts), before);
    pfbd_driver_ok(p, 0);
    for (i = 0; i < NBUF; i++) {
        uint32_t d = qvirtqueue_add(p->qts, p->vq[0], 0xc0000 + 16 * i, 16,
                                    false, true);

        head = i ? head : d;
    }
    qvirtqueue_add(p->qts, p->vq[0], status, 1, true, false);
    kicker_start(&k, p, before, head);

    for (i = 0; i < TOGGLES; i++) {
        qpci_config_writeb(host, 0x5a, 0x00);    /* PCI */
        qpci_config_writeb(host, 0x5a, 0x33);    /* RAM */
    }
    used = qtest_readw(p->qts, p->vq[0]->used + 2);
    kicker_stop(&k);
    g_test_message("%u requests served while toggling", used);
    g_assert_cmpuint(used, >, 0);
    g_assert(!pfbd_broken(p));
    pfbd_assert_alive(p);
    g_free(host);
    munmap(k.ram, STORM_RAM_SIZE);
    pfbd_stop(p);
}

/*
 * The driver rewrites queue_size, or writes queue_enable again, on a queue
 * that its IOThread serves while another vCPU keeps publishing requests
 * and kicking.  The virtio spec forbids both on an enabled queue; QEMU
 * used to take the new size at once and rebuild the ring caches after it,
 * and in between the IOThread indexed the used ring with the new size
 * through the old cache: an assertion failure, SIGABRT.  virtio-pci now
 * ignores such writes (patches/0012): the queue keeps its size and serves
 * every request published.
 */
static void queue_resize_live(Pfbd *p, Kicker *k)
{
    enum { WRITES = 3000 };
    g_autoptr(GHashTable) before = g_hash_table_new(NULL, NULL);
    gint64 start;
    uint16_t size;
    unsigned int i;

    qemu_eventfds(qtest_pid(p->qts), before);
    pfbd_driver_ok(p, 0);
    size = p->vq[0]->size;
    /* A quarter still holds every chain the kicker publishes */
    g_assert_cmpuint(size / 4, >=, 2 * STORM_CHAINS);
    kicker_start(k, p, before, -1);
    for (i = 0; i < WRITES; i++) {
        pfbd_common_writew(p, VIRTIO_PCI_COMMON_Q_SELECT, 0);
        pfbd_common_writew(p, VIRTIO_PCI_COMMON_Q_SIZE,
                           i % 2 ? size : size / 4);
        if (i % 16 == 0) {
            pfbd_common_writew(p, VIRTIO_PCI_COMMON_Q_ENABLE, 1);
        }
    }
    kicker_stop(k);
    start = g_get_monotonic_time();
    while (qtest_readw(p->qts, p->vq[0]->used + 2) != k->idx) {
        g_assert(!pfbd_broken(p));
        g_assert(g_get_monotonic_time() - start <= TIMEOUT_US);
        g_usleep(1000);
    }
    g_test_message("%u requests served while the driver wrote queue_size",
                   k->idx);
    g_assert(!pfbd_broken(p));
    munmap(k->ram, STORM_RAM_SIZE);
    pfbd_stop(p);
}

static void test_queue_resize_live(void)
{
    Kicker k = { 0 };

    queue_resize_live(kicker_boot(&k, "null:16M:completion_nsec=2000000",
                                  ""), &k);
}

/* The same on a stock virtio-blk-pci on an IOThread */
static void test_queue_resize_live_stock(void)
{
    Kicker k = { 0 };
    g_autofree char *device = stock_device_json();
    g_autofree char *blockdev = stock_blockdev(2000000);

    queue_resize_live(kicker_boot_device(&k, device, blockdev), &k);
}

/*
 * The volume shrinks below one of the device's 4 KiB blocks, though not
 * below the engine's own block: re-reading its size (volume-size 0) is
 * refused and must change nothing.  libpfbd used to keep the new size
 * anyway, so that once the file had its size back every request past
 * the shrunk size failed with IOERR, the device still showing the old
 * capacity.
 */
static void test_resize_refused(void)
{
    Pfbd *p = pfbd_setup(VOLUME_SIZE, "", ", \"logical_block_size\": 4096, "
                         "\"physical_block_size\": 4096", 1);
    g_autofree char *want = g_strdup_printf("volume 'file:%s' is now "
                                            "smaller than one block (4096 "
                                            "bytes)", p->image);
    uint8_t buf[4096];
    QDict *rsp;

    g_assert_cmpint(truncate(p->image, 2048), ==, 0);
    rsp = qtest_qmp(p->qts, "{ 'execute': 'qom-set', 'arguments': "
                    "{ 'path': %s, 'property': 'volume-size', 'value': 0 } }",
                    STATS_PATH);
    g_assert_cmpstr(qdict_get_str(qdict_get_qdict(rsp, "error"), "desc"), ==,
                    want);
    qobject_unref(rsp);
    g_assert_cmpint(truncate(p->image, VOLUME_SIZE), ==, 0);
    fill_pattern(buf, sizeof(buf), 3);
    g_assert_cmpint(pfbd_do_req(p, 0, VIRTIO_BLK_T_OUT, 64, buf,
                                sizeof(buf)), ==, VIRTIO_BLK_S_OK);
    assert_file_bytes(p, 64 * 512, buf, sizeof(buf));
    pfbd_stop(p);
}

/*
 * Guest-physical addresses outside RAM: nothing (the PCI hole below the
 * BARs libqos assigns), MMIO (the I/O APIC) and ROM (the BIOS)
 */
static const uint64_t outside_ram[] = { 0xd0000000, 0xfec00000, 0xffff0000 };

/*
 * A read whose data buffer, or whose status byte, lies outside guest RAM,
 * on a queue served by an IOThread.  QEMU used to bounce such a buffer,
 * and the bounce reads or writes the region under the BQL: every stop
 * path (reset, queue reset, stop, unplug) waits for the IOThread while
 * it holds the BQL, so QEMU hung for good once a completion needed it.
 * A queue served without the BQL now maps RAM only (patches/0013): the
 * chain is refused and the device needs a reset, as for any malformed
 * chain, and the reset brings it back.
 */
static void buffer_outside_ram_iothread(Pfbd *p)
{
    QVirtQueue *vq;
    unsigned int i, data;

    pfbd_driver_ok(p, 0);
    for (i = 0; i < ARRAY_SIZE(outside_ram); i++) {
        for (data = 0; data < 2; data++) {
            PfbdReq r = pfbd_req_prepare(p, VIRTIO_BLK_T_IN, 0, NULL, 512);
            uint32_t head;

            vq = p->vq[0];
            head = qvirtqueue_add(p->qts, vq, r.addr, 16, false, true);
            qvirtqueue_add(p->qts, vq, data ? outside_ram[i] : r.addr + 16,
                           512, true, true);
            qvirtqueue_add(p->qts, vq,
                           data ? r.addr + 16 + 512 : outside_ram[i], 1,
                           true, false);
            qvirtqueue_kick(p->qts, p->dev, vq, head);
            assert_broken_and_alive(p, vq);
            assert_recovers(p);
            guest_free(&p->qs->alloc, r.addr);
        }
    }
    pfbd_stop(p);
}

/*
 * A driver that puts a ring outside guest RAM.  The ring caches used to
 * take it, and each access to such a ring dispatches to the region under
 * the BQL: an IOThread serving the queue took the BQL for every index it
 * read and every used entry it wrote, the hazard that hung QEMU with
 * buffers outside RAM.  Enabling such a queue now marks the device broken
 * (patches/0014).  (A ring in ROM is read as RAM is: only a used
 * ring there is refused.)
 */
static void ring_outside_ram_iothread(Pfbd *p)
{
    static const unsigned int ring_cfg[] = {
        VIRTIO_PCI_COMMON_Q_DESCLO, VIRTIO_PCI_COMMON_Q_AVAILLO,
        VIRTIO_PCI_COMMON_Q_USEDLO,
    };
    uint64_t features;
    unsigned int i, r, k;

    for (i = 0; i < ARRAY_SIZE(outside_ram); i++) {
        for (r = 0; r < ARRAY_SIZE(ring_cfg); r++) {
            uint64_t addr[ARRAY_SIZE(ring_cfg)];

            if (outside_ram[i] == 0xffff0000 && r != 2) {
                continue;   /* ROM reads like RAM: the used ring only */
            }
            qvirtio_start_device(p->dev);
            features = qvirtio_get_features(p->dev) &
                       ~(QVIRTIO_F_BAD_FEATURE |
                         (1ull << VIRTIO_RING_F_EVENT_IDX) |
                         (1ull << VIRTIO_RING_F_INDIRECT_DESC));
            qvirtio_set_features(p->dev, features);
            pfbd_common_writew(p, VIRTIO_PCI_COMMON_Q_SELECT, 0);
            for (k = 0; k < ARRAY_SIZE(ring_cfg); k++) {
                addr[k] = k == r ? outside_ram[i] :
                                   guest_alloc(&p->qs->alloc, 16384);
                qpci_io_writel(p->pdev->pdev, p->pdev->bar,
                               p->pdev->common_cfg_offset + ring_cfg[k],
                               addr[k]);
                qpci_io_writel(p->pdev->pdev, p->pdev->bar,
                               p->pdev->common_cfg_offset + ring_cfg[k] + 4,
                               addr[k] >> 32);
            }
            pfbd_common_writew(p, VIRTIO_PCI_COMMON_Q_ENABLE, 1);
            p->dev->bus->set_status(p->dev, p->dev->bus->get_status(p->dev) |
                                    VIRTIO_CONFIG_S_DRIVER_OK);
            g_assert(pfbd_broken(p));
            for (k = 0; k < ARRAY_SIZE(ring_cfg); k++) {
                if (k != r) {
                    guest_free(&p->qs->alloc, addr[k]);
                }
            }
            qvirtio_reset(p->dev);
        }
    }
    assert_recovers(p);
    pfbd_stop(p);
}

static void test_ring_outside_ram_iothread(void)
{
    ring_outside_ram_iothread(
        pfbd_start_volume("null:16M", "-object iothread,id=io0",
                          ", \"iothread\": \"io0\"", 1));
}

static void test_ring_outside_ram_iothread_stock(void)
{
    ring_outside_ram_iothread(stock_start(0));
}

static void test_buffer_outside_ram_iothread(void)
{
    buffer_outside_ram_iothread(
        pfbd_start_volume("null:16M:completion_nsec=100000000",
                          "-object iothread,id=io0",
                          ", \"iothread\": \"io0\"", 1));
}

static void test_buffer_outside_ram_iothread_stock(void)
{
    buffer_outside_ram_iothread(stock_start(100000000));
}

/* Migrate the VM of @p to a file and wait until that completed */
static void migrate_to_file(Pfbd *p)
{
    g_autofree char *path = NULL;
    g_autofree char *uri = NULL;
    gint64 start = g_get_monotonic_time();
    int fd = g_file_open_tmp("qtest-pfbd-mig.XXXXXX", &path, NULL);

    g_assert(fd >= 0);
    close(fd);
    uri = g_strdup_printf("file:%s", path);
    qtest_qmp_assert_success(p->qts, "{ 'execute': 'migrate', 'arguments': "
                             "{ 'uri': %s } }", uri);
    for (;;) {
        QDict *rsp = qtest_qmp(p->qts, "{ 'execute': 'query-migrate' }");
        const char *status = qdict_get_try_str(qdict_get_qdict(rsp, "return"),
                                               "status");
        bool done = status && !strcmp(status, "completed");

        g_assert_cmpstr(status, !=, "failed");
        qobject_unref(rsp);
        if (done) {
            break;
        }
        g_assert(g_get_monotonic_time() - start <= TIMEOUT_US);
        g_usleep(10000);
    }
    unlink(path);
}

/* The in-flight count of the last drain in the trace file @path */
static unsigned long last_drain_in_flight(const char *path)
{
    g_autofree char *log = NULL;
    const char *drain, *end;
    unsigned long n;

    g_assert_true(g_file_get_contents(path, &log, NULL, NULL));
    drain = g_strrstr(log, "virtio_blk_pfbd_drain ");
    g_assert_nonnull(drain);
    drain = strstr(drain, "in-flight ");
    g_assert_nonnull(drain);
    g_assert_cmpint(qemu_strtoul(drain + strlen("in-flight "), &end, 10, &n),
                    ==, 0);
    return n;
}

/*
 * Queues without an IOThread are served by whichever thread holds the BQL
 * and runs the main loop: a migration's final stop drains them from the
 * migration thread, while the guest keeps them busy from a thread of its
 * own (64 KiB reads of data on the disk, a ring as deep as the engine
 * queue).  The stop finds requests in flight (the drain's trace says how
 * many; the test migrates again until it does), completes them all
 * without an error, and the guest gets the data on the disk.
 *
 * Such queues are opened for any thread (PfbdOpenOptions.any_thread):
 * the migration thread uses the ring that the main thread submitted on,
 * as it is.  A single-issuer ring would refuse it while requests are in
 * flight (its waits would fall back to timed polls, and a submission to
 * an error), and be made anew each time an idle queue changes threads:
 * the engine's trace events say so, and must not appear.
 */
static void test_migrate_main_loop_inflight(void)
{
    Kicker k = { 0 };
    g_autofree char *trace = NULL;
    g_autofree char *device = NULL;
    g_autofree char *extra = NULL;
    g_autofree char *image = NULL;
    g_autofree char *volume = NULL;
    g_autofree char *log = NULL;
    g_autofree uint8_t *data = g_malloc(65536);
    unsigned long in_flight = 0;
    unsigned int round;
    QDict *stats;
    PfbdReq r;
    int fd, image_fd;
    Pfbd *p;

    fd = g_file_open_tmp("qtest-pfbd-trace.XXXXXX", &trace, NULL);
    g_assert(fd >= 0);
    close(fd);
    image = image_create(VOLUME_SIZE, &image_fd);
    /*
     * Data on the disk, not a hole: O_DIRECT reads of a disk's file
     * complete from its interrupt, as task work of the thread that
     * submitted them (on tmpfs, or with fsync, io_uring's workers post
     * the completions themselves)
     */
    memset(data, 0x6b, 65536);
    g_assert_cmpint(pwrite(image_fd, data, 65536, 0), ==, 65536);
    g_assert_cmpint(fsync(image_fd), ==, 0);
    volume = g_strdup_printf("file:%s", image);
    device = pfbd_device_json(volume, ", \"queue-size\": 16");
    extra = g_strdup_printf("-trace virtio_blk_pfbd_drain "
                            "-trace 'pfbd_ring_*' -D %s", trace);
    p = kicker_boot_device(&k, device, extra);

    /* Until a migration's stop finds requests in flight */
    for (round = 0; round < 10 && !in_flight; round++) {
        g_autoptr(GHashTable) before = g_hash_table_new(NULL, NULL);

        /* Stopped, the device has no notifier: the new ones are its own */
        qemu_eventfds(qtest_pid(p->qts), before);
        if (round == 0) {
            pfbd_driver_ok_ring(p, 16, false);
            r = pfbd_req_prepare(p, VIRTIO_BLK_T_IN, 0, NULL, 65536);
            pfbd_req_add(p, p->vq[0], &r, true);
        } else {
            qtest_qmp_assert_success(p->qts, "{ 'execute': 'cont' }");
        }
        kicker_start(&k, p, before, r.head);
        wait_in_flight(p->qts, STATS_PATH, 0, 1);
        migrate_to_file(p);
        kicker_stop(&k);
        in_flight = last_drain_in_flight(trace);
        g_test_message("round %u: the stop's drain found %lu in flight",
                       round, in_flight);
    }
    g_assert_cmpuint(in_flight, >, 0);
    g_assert_true(g_file_get_contents(trace, &log, NULL, NULL));
    unlink(trace);
    if (strstr(log, "pfbd_ring_")) {
        g_test_message("engine trace: %s", log);
    }
    g_assert_null(strstr(log, "pfbd_ring_busy"));
    g_assert_null(strstr(log, "pfbd_ring_moved"));

    stats = pfbd_stats(p);
    g_assert_cmpint(qdict_get_int(stats_queue(stats, 0), "errors"), ==, 0);
    g_assert_cmpint(qdict_get_int(stats_queue(stats, 0), "in-flight"), ==, 0);
    qobject_unref(stats);
    g_assert(!pfbd_broken(p));
    qtest_memread(p->qts, r.addr + 16, data, 65536);
    g_assert_cmphex(data[0], ==, 0x6b);
    g_assert_cmphex(data[65535], ==, 0x6b);
    munmap(k.ram, STORM_RAM_SIZE);
    close(image_fd);
    pfbd_stop(p);
}

/*
 * What popped requests cost (the user guide, "What a guest can make QEMU
 * allocate"): a driver sets a 1024-entry ring on a device of the default
 * queue-size, and fills it with reads of 1024 descriptors each (indirect
 * tables; the last carries data and the status byte, which costs the
 * device a copy of the iovec) on a volume whose requests take a second.
 * All 1024 are popped and held, 256 in the engine queue and the rest
 * waiting for room; QEMU's private memory grows by no more than the
 * guide's 42 MiB per virtqueue (plus 6 MiB for everything else), and
 * every read completes.
 */
static void test_popped_requests_bound(void)
{
    enum { RING = 1024, NDESC = 1024 };
    Kicker k = { 0 };
    Pfbd *p = kicker_boot(&k, "null:16M:completion_nsec=1000000000", "");
    g_autofree uint32_t *heads = g_new(uint32_t, RING);
    uint64_t hdrs, tables, status, buf;
    unsigned int i, j;
    long anon, now;

    pfbd_driver_ok_ring(p, RING, true);
    hdrs = guest_alloc(&p->qs->alloc, RING * 16);
    /* The last data segment and the status byte, merged: 513 bytes */
    status = guest_alloc(&p->qs->alloc, RING * 513);
    buf = guest_alloc(&p->qs->alloc, 512);
    tables = guest_alloc(&p->qs->alloc, RING * NDESC * 16);
    g_assert_cmphex(tables + RING * NDESC * 16, <=, STORM_RAM_SIZE);
    memset(k.ram + status, 0xff, RING * 513);
    for (i = 0; i < RING; i++) {
        struct virtio_blk_outhdr *hdr = (void *)(k.ram + hdrs + 16 * i);
        struct vring_desc *d = (void *)(k.ram + tables + i * NDESC * 16);
        QVRingIndirectDesc indirect = {
            .desc = tables + i * NDESC * 16, .index = NDESC, .elem = NDESC,
        };

        hdr->type = cpu_to_le32(VIRTIO_BLK_T_IN);
        hdr->ioprio = 0;
        hdr->sector = 0;
        for (j = 0; j < NDESC; j++) {
            d[j].addr = cpu_to_le64(j == 0 ? hdrs + 16 * i :
                                    j == NDESC - 1 ? status + 513 * i : buf);
            d[j].len = cpu_to_le32(j == 0 ? 16 : j == NDESC - 1 ? 513 : 512);
            d[j].flags = cpu_to_le16((j ? VRING_DESC_F_WRITE : 0) |
                                     (j < NDESC - 1 ? VRING_DESC_F_NEXT : 0));
            d[j].next = cpu_to_le16(j + 1);
        }
        heads[i] = qvirtqueue_add_indirect(p->qts, p->vq[0], &indirect);
    }
    /* Private memory: guest RAM is shared, and QEMU reads the tables */
    anon = proc_status_kib(qtest_pid(p->qts), "RssAnon:");
    kick_heads(p->qts, p->dev, p->vq[0], heads, RING);
    wait_in_flight(p->qts, STATS_PATH, 0, RING);
    now = proc_status_kib(qtest_pid(p->qts), "RssAnon:");
    g_test_message("%d requests of %d descriptors popped: RssAnon %ld -> "
                   "%ld KiB", RING, NDESC, anon, now);
    /*
     * ASan adds a shadow byte per 8 and redzones around each element:
     * 58.2 MiB measured
     */
    g_assert_cmpint(now - anon, <=, (getenv("ASAN_OPTIONS") ?
                                     42 * 3 / 2 + 8 : 42 + 6) * 1024);

    pfbd_wait_used(p, p->vq[0], NULL, RING);
    for (i = 0; i < RING; i++) {
        g_assert_cmpint(k.ram[status + 513 * i + 512], ==, VIRTIO_BLK_S_OK);
    }
    g_assert(!pfbd_broken(p));
    munmap(k.ram, STORM_RAM_SIZE);
    pfbd_stop(p);
}

static void test_kick_storm_reset(void)
{
    kick_storm(STORM_RESET);
}

static void test_kick_storm_stop(void)
{
    kick_storm(STORM_STOP);
}

static void test_kick_storm_queue_reset(void)
{
    kick_storm(STORM_QUEUE_RESET);
}

/* CPU time QEMU has used so far, user and system, in clock ticks */
static void proc_cpu_ticks(pid_t pid, uint64_t *user, uint64_t *sys)
{
    g_autofree char *path = g_strdup_printf("/proc/%d/stat", (int)pid);
    g_autofree char *text = NULL;
    const char *p;

    g_assert_true(g_file_get_contents(path, &text, NULL, NULL));
    /* Fields 14 and 15 (utime, stime) follow the ")" of the name */
    p = strrchr(text, ')');
    g_assert_nonnull(p);
    g_assert_cmpint(sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u "
                           "%*u %*u %" SCNu64 " %" SCNu64, user, sys), ==, 2);
}

/*
 * Benchmark (gtester -m perf): the host CPU time of a device reset and
 * set-up, as a guest that resets in a loop costs.  PFBD_PERF_VOLUME
 * picks the volume (default: a file), PFBD_PERF_CYCLES the cycles (1000).
 * Each cycle also writes a block (so the queues are in use) and reads it
 * back.
 */
static void test_perf_reset_cycles(void)
{
    const char *volume = g_getenv("PFBD_PERF_VOLUME");
    const char *cycles_env = g_getenv("PFBD_PERF_CYCLES");
    unsigned int cycles = cycles_env ? atoi(cycles_env) : 1000;
    static const char *const modes[] = { "main loop", "iothread" };
    long ticks = sysconf(_SC_CLK_TCK);
    unsigned int m, i;

    for (m = 0; m < ARRAY_SIZE(modes); m++) {
        const char *props = m ? ", \"num-queues\": 2, \"iothread\": \"io0\""
                              : ", \"num-queues\": 2";
        Pfbd *p = volume ?
            pfbd_start_volume(volume, "-object iothread,id=io0", props, 2) :
            pfbd_start(VOLUME_SIZE, "-object iothread,id=io0", props, 2);
        uint64_t u0, s0, u1, s1;
        uint8_t buf[4096];
        gint64 t0;

        pfbd_driver_ok(p, 0);
        proc_cpu_ticks(qtest_pid(p->qts), &u0, &s0);
        t0 = g_get_monotonic_time();
        for (i = 0; i < cycles; i++) {
            qvirtio_reset(p->dev);
            pfbd_driver_ok(p, 0);
            fill_pattern(buf, sizeof(buf), i);
            g_assert_cmpint(pfbd_do_req(p, i % 2, VIRTIO_BLK_T_OUT, 8, buf,
                                        sizeof(buf)), ==, VIRTIO_BLK_S_OK);
            g_assert_cmpint(pfbd_do_req(p, (i + 1) % 2, VIRTIO_BLK_T_IN, 8,
                                        buf, sizeof(buf)), ==,
                            VIRTIO_BLK_S_OK);
        }
        proc_cpu_ticks(qtest_pid(p->qts), &u1, &s1);
        g_test_message("reset-cycles %s, %s: %u cycles in %.1f s; QEMU "
                       "CPU per cycle: user %.3f ms, system %.3f ms",
                       volume ? volume : "file", modes[m], cycles,
                       (g_get_monotonic_time() - t0) / 1e6,
                       (u1 - u0) * 1000.0 / ticks / cycles,
                       (s1 - s0) * 1000.0 / ticks / cycles);
        pfbd_stop(p);
    }
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);

    qtest_add_func("/virtio-blk-pfbd/req/write-read", test_write_read);
    qtest_add_func("/virtio-blk-pfbd/req/merged-descriptors",
                   test_merged_descriptors);
    qtest_add_func("/virtio-blk-pfbd/req/flush", test_flush);
    qtest_add_func("/virtio-blk-pfbd/req/get-id", test_get_id);
    qtest_add_func("/virtio-blk-pfbd/req/used-len", test_used_len);
    qtest_add_func("/virtio-blk-pfbd/req/ring-above-depth",
                   test_ring_above_depth);
    qtest_add_func("/virtio-blk-pfbd/req/submit-retry", test_submit_retry);
    qtest_add_func("/virtio-blk-pfbd/req/completion-error-policy",
                   test_completion_error_policy);
    qtest_add_func("/virtio-blk-pfbd/req/discard", test_discard);
    qtest_add_func("/virtio-blk-pfbd/req/write-zeroes", test_write_zeroes);
    qtest_add_func("/virtio-blk-pfbd/req/discard-write-zeroes-off",
                   test_discard_write_zeroes_off);
    qtest_add_func("/virtio-blk-pfbd/req/unsupported", test_unsupported_type);
    qtest_add_func("/virtio-blk-pfbd/req/out-of-range", test_out_of_range);
    qtest_add_func("/virtio-blk-pfbd/req/misaligned", test_misaligned);
    qtest_add_func("/virtio-blk-pfbd/req/read-only", test_read_only);
    qtest_add_func("/virtio-blk-pfbd/req/zero-length", test_zero_length);
    qtest_add_func("/virtio-blk-pfbd/bad/queue-reset-enable-out-of-range",
                   test_queue_reset_enable_out_of_range);
    qtest_add_func("/virtio-blk-pfbd/bad/short-header", test_short_header);
    qtest_add_func("/virtio-blk-pfbd/bad/missing-status",
                   test_missing_status);
    qtest_add_func("/virtio-blk-pfbd/bad/empty-status", test_empty_status);
    qtest_add_func("/virtio-blk-pfbd/bad/short-discard-payload",
                   test_short_discard_payload);
    qtest_add_func("/virtio-blk-pfbd/bad/descriptor-loop",
                   test_descriptor_loop);
    qtest_add_func("/virtio-blk-pfbd/bad/out-of-ram", test_out_of_ram);
    qtest_add_func("/virtio-blk-pfbd/bad/buffer-outside-ram-iothread",
                   test_buffer_outside_ram_iothread);
    qtest_add_func("/virtio-blk-pfbd/bad/buffer-outside-ram-iothread-stock",
                   test_buffer_outside_ram_iothread_stock);
    qtest_add_func("/virtio-blk-pfbd/req/resize-refused",
                   test_resize_refused);
    qtest_add_func("/virtio-blk-pfbd/bad/ring-outside-ram-iothread",
                   test_ring_outside_ram_iothread);
    qtest_add_func("/virtio-blk-pfbd/bad/ring-outside-ram-iothread-stock",
                   test_ring_outside_ram_iothread_stock);
    qtest_add_func("/virtio-blk-pfbd/bad/queue-resize-live",
                   test_queue_resize_live);
    qtest_add_func("/virtio-blk-pfbd/bad/queue-resize-live-stock",
                   test_queue_resize_live_stock);
    qtest_add_func("/virtio-blk-pfbd/bad/huge-request", test_huge_request);
    qtest_add_func("/virtio-blk-pfbd/bad/huge-in-buffers",
                   test_huge_in_buffers);
    qtest_add_func("/virtio-blk-pfbd/mem/bounce-bound", test_bounce_bound);
    qtest_add_func("/virtio-blk-pfbd/mem/bounce-bound-slow-writes",
                   test_bounce_bound_slow_writes);
    qtest_add_func("/virtio-blk-pfbd/mem/popped-requests-bound",
                   test_popped_requests_bound);
    qtest_add_func("/virtio-blk-pfbd/mem/fixed-buffers", test_fixed_buffers);
    qtest_add_func("/virtio-blk-pfbd/mem/fixed-buffers-ram-removed",
                   test_fixed_buffers_ram_removed);
    qtest_add_func("/virtio-blk-pfbd/mem/fixed-buffers-dimm",
                   test_fixed_buffers_dimm);
    qtest_add_func("/virtio-blk-pfbd/mem/hotplugged-ram",
                   test_hotplugged_ram);
    qtest_add_func("/virtio-blk-pfbd/lock/released-on-unplug",
                   test_lock_released_on_unplug);
    qtest_add_func("/virtio-blk-pfbd/mq/mapping", test_multiqueue_mapping);
    qtest_add_func("/virtio-blk-pfbd/mq/batch", test_batch);
    qtest_add_func("/virtio-blk-pfbd/stats", test_stats);
    qtest_add_func("/virtio-blk-pfbd/stats/qmp", test_stats_qmp);
    qtest_add_func("/virtio-blk-pfbd/lifecycle/reset-inflight",
                   test_reset_inflight);
    qtest_add_func("/virtio-blk-pfbd/lifecycle/stop-cont-inflight",
                   test_stop_cont_inflight);
    qtest_add_func("/virtio-blk-pfbd/volume/open-ahead",
                   test_volume_open_ahead);
    qtest_add_func("/virtio-blk-pfbd/volume/open-off-main-loop",
                   test_volume_open_off_main_loop);
    qtest_add_func("/virtio-blk-pfbd/lifecycle/hotplug-cycles",
                   test_hotplug_cycles);
    qtest_add_func("/virtio-blk-pfbd/trace/engine-events",
                   test_trace_engine_events);
    qtest_add_func("/virtio-blk-pfbd/lifecycle/migrate-main-loop-inflight",
                   test_migrate_main_loop_inflight);
    qtest_add_func("/virtio-blk-pfbd/lifecycle/kick-storm-reset",
                   test_kick_storm_reset);
    qtest_add_func("/virtio-blk-pfbd/lifecycle/kick-storm-stop",
                   test_kick_storm_stop);
    qtest_add_func("/virtio-blk-pfbd/lifecycle/kick-storm-queue-reset",
                   test_kick_storm_queue_reset);
    qtest_add_func("/virtio-blk-pfbd/mem/pam-toggle", test_pam_toggle);
    qtest_add_func("/virtio-blk-pfbd/mem/unplugged-ram-freed",
                   test_unplugged_ram_freed);

    if (g_test_perf()) {
        qtest_add_func("/virtio-blk-pfbd/perf/reset-cycles",
                       test_perf_reset_cycles);
    }

    return g_test_run();
}

/*
 * pfbd-rig: drive one virtio-blk PCI device without a guest.
 *
 * Copyright (c) 2026 pfbd-qemu developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Starts QEMU with the qtest accelerator and guest RAM in a shared
 * memory-backend-file on /dev/shm, which this program maps too.  It then
 * plays the guest driver: it speaks the qtest text protocol over a unix
 * socket for port and MMIO accesses (PCI enumeration, BAR assignment, the
 * virtio 1.0 capabilities, feature negotiation, queue setup, kicks), writes
 * descriptors and avail entries straight into the mapped RAM and polls the
 * used rings there.  No interrupts: MSI-X stays off and every avail ring
 * carries VRING_AVAIL_F_NO_INTERRUPT.
 *
 * One thread serves every queue round-robin and keeps --iodepth requests in
 * flight on each.  Newly available requests of a queue are published with
 * one avail->idx store and one kick per batch (skipped, as Linux does,
 * while the device has set VRING_USED_F_NO_NOTIFY).  A kick is, by default
 * (--kick eventfd), a write to the queue's host notifier, the eventfd that
 * KVM signals for a vCPU's notify write: no QEMU thread takes part, as
 * with a KVM guest.  --kick qtest sends the notify write through the qtest
 * socket instead, which QEMU's main thread serves (pipelined: the "OK"
 * replies are collected later).
 *
 *   pfbd-rig [options] -- QEMU-ARGS...
 *
 * QEMU-ARGS add the IOThreads, block nodes and the one virtio-blk device,
 * e.g.  -object iothread,id=io0 -device virtio-blk-pfbd,volume=null:1G,
 *       iothread=io0
 *
 * Prints one JSON line: IOs, IOPS, latency (avg, p50, p99, max; submit to
 * completion seen, CLOCK_MONOTONIC), kicks, and CPU time per IO of the
 * IOThreads (+ io_uring workers; the main thread when there is no
 * IOThread), of QEMU's main thread (which serves qtest), of the whole QEMU
 * process, and of the rig itself (getrusage; with its idle polling).
 * --verify FILE checks every request's data against the backing
 * file; --rig-cpus / --qemu-cpus pin the two sides.
 *
 * --daemon-pid PID names an out-of-process device back end (e.g.
 * qemu-storage-daemon serving vhost-user-blk-pci): every thread of PID
 * counts as the data path, its io_uring workers with QEMU's and its other
 * threads with the IOThreads, and separately as "daemon_cpu_us_per_io".
 *
 * --loopback starts no QEMU: a forked process (pinned to --qemu-cpus,
 * named "IO loopback") plays an ideal device on the same rings: it polls
 * the avail rings, walks each chain to its status byte, writes 0 there and
 * publishes the used entry, touching no data.  Its latency at iodepth 1 is
 * the rig's own round trip between the two CPUs, the floor under any
 * device's figure.
 *
 * Plain C, libc only.
 */

#define _GNU_SOURCE
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ---------------------------------------------------------------- virtio */

/* From the virtio 1.x spec (linux/virtio_{ring,pci,config,blk}.h) */
struct vring_desc {
    uint64_t addr;
    uint32_t len;
    uint16_t flags;
    uint16_t next;
};
#define VRING_DESC_F_NEXT       1
#define VRING_DESC_F_WRITE      2
#define VRING_DESC_F_INDIRECT   4
#define VRING_AVAIL_F_NO_INTERRUPT 1
#define VRING_USED_F_NO_NOTIFY  1

struct vring_used_elem {
    uint32_t id;
    uint32_t len;
};

#define VIRTIO_PCI_CAP_COMMON_CFG 1
#define VIRTIO_PCI_CAP_NOTIFY_CFG 2
#define VIRTIO_PCI_CAP_ISR_CFG    3
#define VIRTIO_PCI_CAP_DEVICE_CFG 4

/* struct virtio_pci_common_cfg offsets */
#define CC_DFSELECT     0
#define CC_DF           4
#define CC_GFSELECT     8
#define CC_GF           12
#define CC_MSIX         16
#define CC_NUMQ         18
#define CC_STATUS       20
#define CC_CFGGEN       21
#define CC_Q_SELECT     22
#define CC_Q_SIZE       24
#define CC_Q_MSIX       26
#define CC_Q_ENABLE     28
#define CC_Q_NOFF       30
#define CC_Q_DESCLO     32
#define CC_Q_DESCHI     36
#define CC_Q_AVAILLO    40
#define CC_Q_AVAILHI    44
#define CC_Q_USEDLO     48
#define CC_Q_USEDHI     52

#define S_ACKNOWLEDGE   1
#define S_DRIVER        2
#define S_DRIVER_OK     4
#define S_FEATURES_OK   8
#define S_FAILED        0x80

#define F_BLK_SEG_MAX   2
#define F_BLK_BLK_SIZE  6
#define F_BLK_FLUSH     9
#define F_BLK_TOPOLOGY  10
#define F_BLK_CONFIG_WCE 11
#define F_BLK_MQ        12
#define F_INDIRECT_DESC 28
#define F_EVENT_IDX     29
#define F_VERSION_1     32

#define VIRTIO_BLK_T_IN     0
#define VIRTIO_BLK_T_OUT    1

struct blk_outhdr {
    uint32_t type;
    uint32_t ioprio;
    uint64_t sector;
};

/* ------------------------------------------------------------ utilities */

static int verbose;

static void die(const char *fmt, ...)
    __attribute__((noreturn, format(printf, 1, 2)));
static void vlog(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static pid_t qemu_pid;
static char sock_path[108];
static char shm_path[256];

static void cleanup(void)
{
    if (qemu_pid > 0) {
        kill(qemu_pid, SIGTERM);
        for (int i = 0; i < 200; i++) {
            if (waitpid(qemu_pid, NULL, WNOHANG) == qemu_pid) {
                qemu_pid = 0;
                break;
            }
            usleep(10000);
        }
        if (qemu_pid > 0) {
            kill(qemu_pid, SIGKILL);
            waitpid(qemu_pid, NULL, 0);
            qemu_pid = 0;
        }
    }
    if (sock_path[0]) {
        unlink(sock_path);
        sock_path[0] = 0;
    }
    if (shm_path[0]) {
        unlink(shm_path);
        shm_path[0] = 0;
    }
}

static void on_signal(int sig)
{
    cleanup();
    signal(sig, SIG_DFL);
    raise(sig);
}

static void die(const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "pfbd-rig: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n");
    cleanup();
    exit(1);
}

static void vlog(const char *fmt, ...)
{
    va_list ap;

    if (!verbose) {
        return;
    }
    fprintf(stderr, "pfbd-rig: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n");
}

static inline uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

/* A CPU number at *@s into @v, *@s moved past it; false if there is none */
static bool parse_cpu(const char **s, long *v)
{
    int n = 0;

    if (!isdigit((unsigned char)**s) || sscanf(*s, "%ld%n", v, &n) != 1 ||
        *v >= CPU_SETSIZE) {
        return false;
    }
    *s += n;
    return true;
}

/* "0,2-3" -> @set; false on a syntax error */
static bool parse_cpus(const char *s, cpu_set_t *set)
{
    CPU_ZERO(set);
    while (*s) {
        long a, b;

        if (!parse_cpu(&s, &a)) {
            return false;
        }
        b = a;
        if (*s == '-') {
            s++;
            if (!parse_cpu(&s, &b) || b < a) {
                return false;
            }
        }
        for (; a <= b; a++) {
            CPU_SET(a, set);
        }
        if (*s == ',') {
            s++;
        } else if (*s) {
            return false;
        }
    }
    return CPU_COUNT(set) > 0;
}

static uint64_t parse_size(const char *s)
{
    char *end;
    double v = strtod(s, &end);
    uint64_t m = 1;

    switch (toupper((unsigned char)*end)) {
    case 'K':
        m = 1ull << 10;
        end++;
        break;
    case 'M':
        m = 1ull << 20;
        end++;
        break;
    case 'G':
        m = 1ull << 30;
        end++;
        break;
    case 'T':
        m = 1ull << 40;
        end++;
        break;
    }
    if (*end == 'i' || *end == 'I') {
        end++;
    }
    if (*end == 'B' || *end == 'b') {
        end++;
    }
    if (end == s || *end || v < 0) {
        die("bad size '%s'", s);
    }
    return (uint64_t)(v * m);
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static inline uint64_t rng_next(void)
{
    uint64_t x = rng_state;

    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    rng_state = x;
    return x;
}

/* ---------------------------------------------------- latency histogram */

/* Log-linear: exact below 64 ns, then 32 sub-buckets per power of two */
#define HIST_BUCKETS (64 + 58 * 32)

static uint64_t hist[HIST_BUCKETS];

static inline int hist_idx(uint64_t v)
{
    int msb, idx;

    if (v < 64) {
        return (int)v;
    }
    msb = 63 - __builtin_clzll(v);
    idx = 64 + (msb - 6) * 32 + (int)((v >> (msb - 5)) & 31);
    return idx < HIST_BUCKETS ? idx : HIST_BUCKETS - 1;
}

/* Middle of bucket @idx, in ns */
static double hist_value(int idx)
{
    int msb, sub;
    double low, width;

    if (idx < 64) {
        return idx;
    }
    msb = (idx - 64) / 32 + 6;
    sub = (idx - 64) % 32;
    low = (double)(32 + sub) * (double)(1ull << (msb - 5));
    width = (double)(1ull << (msb - 5));
    return low + width / 2;
}

static double hist_pct(uint64_t total, double pct)
{
    uint64_t want = (uint64_t)(total * pct / 100.0 + 0.999999);
    uint64_t acc = 0;

    if (!total) {
        return 0;
    }
    if (want < 1) {
        want = 1;
    }
    for (int i = 0; i < HIST_BUCKETS; i++) {
        acc += hist[i];
        if (acc >= want) {
            return hist_value(i);
        }
    }
    return hist_value(HIST_BUCKETS - 1);
}

/* ----------------------------------------------------------------- qtest */

static int qfd = -1;
static char qbuf[1 << 16];
static size_t qlen;
static unsigned long pending_ok;    /* replies to pipelined writes */

static void qsend_raw(const char *buf, size_t len)
{
    while (len) {
        ssize_t n = send(qfd, buf, len, MSG_NOSIGNAL);

        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            die("qtest send: %s (QEMU gone?)", strerror(errno));
        }
        buf += n;
        len -= n;
    }
}

/* Fill qbuf; @block: wait for data.  Returns bytes read (0: none) */
static size_t qfill(bool block)
{
    ssize_t n;

    if (qlen == sizeof(qbuf)) {
        die("qtest reply line too long");
    }
    for (;;) {
        n = recv(qfd, qbuf + qlen, sizeof(qbuf) - qlen,
                 block ? 0 : MSG_DONTWAIT);
        if (n > 0) {
            qlen += n;
            return n;
        }
        if (n == 0) {
            die("qtest connection closed (QEMU exited?)");
        }
        if (errno == EINTR) {
            continue;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            return 0;
        }
        die("qtest recv: %s", strerror(errno));
    }
}

/*
 * Take one complete line out of qbuf into @line (NUL-terminated).
 * Async "IRQ ..." lines are skipped.  Returns false if none is complete.
 */
static bool qtake_line(char *line, size_t size)
{
    for (;;) {
        char *nl = memchr(qbuf, '\n', qlen);
        size_t l;

        if (!nl) {
            return false;
        }
        l = nl - qbuf;
        if (l >= size) {
            die("qtest line too long");
        }
        memcpy(line, qbuf, l);
        line[l] = 0;
        memmove(qbuf, nl + 1, qlen - l - 1);
        qlen -= l + 1;
        if (!strncmp(line, "IRQ", 3)) {
            continue;
        }
        return true;
    }
}

static void qread_line(char *line, size_t size)
{
    while (!qtake_line(line, size)) {
        qfill(true);
    }
}

static void qcheck_ok(const char *line, const char *what)
{
    if (strncmp(line, "OK", 2)) {
        die("qtest '%s' failed: %s", what, line);
    }
}

/* Collect replies to pipelined writes; @all: wait for every one */
static void qcollect(bool all)
{
    char line[256];

    while (pending_ok) {
        if (qtake_line(line, sizeof(line))) {
            qcheck_ok(line, "pipelined write");
            pending_ok--;
            continue;
        }
        if (!qfill(all)) {
            return;
        }
    }
}

/* A synchronous command; returns the value of "OK VALUE" (0 if none) */
static uint64_t qcmd(const char *fmt, ...)
    __attribute__((format(printf, 1, 2)));
static uint64_t qcmd(const char *fmt, ...)
{
    char cmd[256], line[256];
    va_list ap;
    int n;

    qcollect(true);
    va_start(ap, fmt);
    n = vsnprintf(cmd, sizeof(cmd) - 1, fmt, ap);
    va_end(ap);
    cmd[n++] = '\n';
    qsend_raw(cmd, n);
    qread_line(line, sizeof(line));
    cmd[n - 1] = 0;
    qcheck_ok(line, cmd);
    if (line[2] == ' ') {
        uint64_t v = 0;

        /* Values come as "OK 0x..." */
        sscanf(line + 3, "0x%" SCNx64, &v);
        return v;
    }
    return 0;
}

/* A write whose reply is collected later */
static void qwrite_async(const char *op, uint64_t addr, uint64_t val)
{
    char cmd[96];
    int n = snprintf(cmd, sizeof(cmd), "%s 0x%" PRIx64 " 0x%" PRIx64 "\n",
                     op, addr, val);

    qsend_raw(cmd, n);
    pending_ok++;
}

/* --------------------------------------------------------------- PCI */

#define PCI_VENDOR_REDHAT_QUMRANET 0x1af4
#define PCI_CFG_ADDR(dev, fn, reg) \
    (0x80000000u | ((dev) << 11) | ((fn) << 8) | ((reg) & 0xfc))

static int pci_dev;

static uint32_t cfg_readl(int reg)
{
    qcmd("outl 0xcf8 0x%x", PCI_CFG_ADDR(pci_dev, 0, reg));
    return (uint32_t)qcmd("inl 0xcfc");
}

static uint8_t cfg_readb(int reg)
{
    return (cfg_readl(reg) >> ((reg & 3) * 8)) & 0xff;
}

static void cfg_writel(int reg, uint32_t val)
{
    qcmd("outl 0xcf8 0x%x", PCI_CFG_ADDR(pci_dev, 0, reg));
    qcmd("outl 0xcfc 0x%x", val);
}

static void cfg_writew(int reg, uint16_t val)
{
    qcmd("outl 0xcf8 0x%x", PCI_CFG_ADDR(pci_dev, 0, reg));
    qcmd("outw 0x%x 0x%x", 0xcfc + (reg & 2), val);
}

static uint64_t bar_addr[6];

static void pci_find_and_map(void)
{
    uint64_t next_mmio = 0xc0000000ull;
    uint32_t next_io = 0xc000;
    int dev;

    for (dev = 0; dev < 32; dev++) {
        uint32_t id;

        qcmd("outl 0xcf8 0x%x", PCI_CFG_ADDR(dev, 0, 0));
        id = (uint32_t)qcmd("inl 0xcfc");
        if ((id & 0xffff) != PCI_VENDOR_REDHAT_QUMRANET) {
            continue;
        }
        /* 0x1001: transitional virtio-blk, 0x1042: modern (0x1040 + 2) */
        if ((id >> 16) == 0x1001 || (id >> 16) == 0x1042) {
            break;
        }
    }
    if (dev == 32) {
        die("no virtio-blk PCI device on bus 0");
    }
    pci_dev = dev;
    vlog("virtio-blk at 00:%02x.0, id %08x", dev, cfg_readl(0));

    for (int i = 0; i < 6; i++) {
        int reg = 0x10 + 4 * i;
        uint32_t orig = cfg_readl(reg), sz;

        cfg_writel(reg, 0xffffffff);
        sz = cfg_readl(reg);
        if (sz == 0) {
            cfg_writel(reg, orig);
            continue;
        }
        if (orig & 1) {                 /* I/O BAR */
            uint32_t size = ~(sz & ~3u) + 1;

            size &= 0xffff;
            next_io = (next_io + size - 1) & ~(size - 1);
            cfg_writel(reg, next_io);
            bar_addr[i] = next_io;
            next_io += size;
            continue;
        }
        {
            bool is64 = ((orig >> 1) & 3) == 2;
            uint64_t mask = sz & ~0xfull, size;

            if (is64) {
                uint32_t hi;

                cfg_writel(reg + 4, 0xffffffff);
                hi = cfg_readl(reg + 4);
                mask |= (uint64_t)hi << 32;
            } else {
                mask |= 0xffffffff00000000ull;
            }
            size = ~mask + 1;
            next_mmio = (next_mmio + size - 1) & ~(size - 1);
            cfg_writel(reg, (uint32_t)next_mmio);
            if (is64) {
                cfg_writel(reg + 4, (uint32_t)(next_mmio >> 32));
            }
            bar_addr[i] = next_mmio;
            vlog("BAR%d: %s size 0x%" PRIx64 " at 0x%" PRIx64, i,
                 is64 ? "mem64" : "mem32", size, next_mmio);
            next_mmio += size;
            if (next_mmio > 0xfe000000ull) {
                die("BARs do not fit in the 32-bit MMIO hole");
            }
            if (is64) {
                i++;
            }
        }
    }
    /* memory + I/O + bus master */
    cfg_writew(0x04, 0x0007);
}

/* --------------------------------------------------------- virtio-pci */

static uint64_t common_cfg, notify_base, isr_cfg, device_cfg;
static uint32_t notify_mult;

static void virtio_find_caps(void)
{
    int off;

    if (!(cfg_readl(0x04) & (1u << 20))) {
        die("device has no capability list");
    }
    off = cfg_readb(0x34) & 0xfc;
    while (off) {
        uint32_t w0 = cfg_readl(off);
        uint8_t vndr = w0 & 0xff, next = (w0 >> 8) & 0xff;

        if (vndr == 0x09) {         /* vendor specific: virtio_pci_cap */
            uint8_t type = (w0 >> 24) & 0xff;
            uint8_t bar = cfg_readl(off + 4) & 0xff;
            uint32_t offset = cfg_readl(off + 8);
            uint64_t addr;

            if (bar < 6 && bar_addr[bar]) {
                addr = bar_addr[bar] + offset;
                switch (type) {
                case VIRTIO_PCI_CAP_COMMON_CFG:
                    if (!common_cfg) {
                        common_cfg = addr;
                    }
                    break;
                case VIRTIO_PCI_CAP_NOTIFY_CFG:
                    if (!notify_base) {
                        notify_base = addr;
                        notify_mult = cfg_readl(off + 16);
                    }
                    break;
                case VIRTIO_PCI_CAP_ISR_CFG:
                    if (!isr_cfg) {
                        isr_cfg = addr;
                    }
                    break;
                case VIRTIO_PCI_CAP_DEVICE_CFG:
                    if (!device_cfg) {
                        device_cfg = addr;
                    }
                    break;
                }
            }
        }
        off = next & 0xfc;
    }
    if (!common_cfg || !notify_base || !device_cfg) {
        die("virtio 1.0 capabilities missing (common 0x%" PRIx64
            " notify 0x%" PRIx64 " device 0x%" PRIx64 ")",
            common_cfg, notify_base, device_cfg);
    }
    vlog("common cfg 0x%" PRIx64 ", notify 0x%" PRIx64 " (x%u), "
         "device cfg 0x%" PRIx64, common_cfg, notify_base, notify_mult,
         device_cfg);
}

static uint8_t cc_readb(int off)
{
    return (uint8_t)qcmd("readb 0x%" PRIx64, common_cfg + off);
}

static uint16_t cc_readw(int off)
{
    return (uint16_t)qcmd("readw 0x%" PRIx64, common_cfg + off);
}

static uint32_t cc_readl(int off)
{
    return (uint32_t)qcmd("readl 0x%" PRIx64, common_cfg + off);
}

static void cc_writeb(int off, uint8_t v)
{
    qcmd("writeb 0x%" PRIx64 " 0x%x", common_cfg + off, v);
}

static void cc_writew(int off, uint16_t v)
{
    qcmd("writew 0x%" PRIx64 " 0x%x", common_cfg + off, v);
}

static void cc_writel(int off, uint32_t v)
{
    qcmd("writel 0x%" PRIx64 " 0x%x", common_cfg + off, v);
}

/* ------------------------------------------------------------ workload */

enum rw { RW_RANDREAD, RW_RANDWRITE, RW_READ, RW_WRITE };
static const char *const rw_names[] = { "randread", "randwrite", "read",
                                        "write" };

struct slot {
    uint64_t submit_ns;
    uint64_t off;
    uint64_t hdr_gpa;       /* blk_outhdr, then the status byte at +16 */
    uint64_t data_gpa;
};

struct queue {
    int index;
    unsigned int size;          /* ring size */
    struct vring_desc *desc;
    uint16_t *avail;            /* flags, idx, ring[size], used_event */
    volatile uint16_t *used_hdr; /* flags, idx */
    struct vring_used_elem *used_ring;
    uint16_t avail_idx;
    uint16_t last_used;
    uint64_t notify_addr;
    int kick_fd;                /* --kick eventfd: the host notifier */
    unsigned int inflight;
    struct slot *slots;
    unsigned int *free_slots;
    unsigned int nfree;
    uint64_t seq_off;
    uint64_t kicks, kicks_skipped;
};

static uint8_t *ram;
static uint64_t ram_size = 256ull << 20;

static inline void *gpa(uint64_t a)
{
    return ram + a;
}

/* ------------------------------------------------------------- /proc */

struct cpu_sample {
    uint64_t iothreads_ns, iouring_ns, main_ns, total_ns, rig_ns, daemon_ns;
    int n_iothreads;
};

static pid_t daemon_pid;

/* Read the small file @path into @buf, NUL-terminated: its length, or -1 */
static int read_text(const char *path, char *buf, size_t size)
{
    int fd = open(path, O_RDONLY);
    int n;

    if (fd < 0) {
        return -1;
    }
    n = read(fd, buf, size - 1);
    close(fd);
    if (n <= 0) {
        return -1;
    }
    buf[n] = 0;
    return n;
}

static uint64_t task_cpu_ns(const char *dir)
{
    char path[700], buf[1024];
    unsigned long long run = 0, ut = 0, st = 0;
    char *p;

    /* schedstat: ns on cpu (precise); stat: clock ticks (fallback) */
    snprintf(path, sizeof(path), "%s/schedstat", dir);
    if (read_text(path, buf, sizeof(buf)) > 0 &&
        sscanf(buf, "%llu", &run) == 1) {
        return run;
    }
    snprintf(path, sizeof(path), "%s/stat", dir);
    if (read_text(path, buf, sizeof(buf)) > 0) {
        p = strrchr(buf, ')');
        /* fields after comm: state(3) ... utime(14) stime(15) */
        if (p && sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u "
                        "%*u %*u %llu %llu", &ut, &st) == 2) {
            return (ut + st) * (1000000000ull / sysconf(_SC_CLK_TCK));
        }
    }
    return 0;
}

/*
 * Add the CPU time of the threads of @pid to @s: the device process
 * (QEMU, or the --loopback device) by kind of thread, or, with @daemon,
 * the --daemon-pid process, all of whose threads serve the data path.
 */
static void cpu_sample_pid(struct cpu_sample *s, pid_t pid, bool daemon)
{
    char dir[64], path[600], comm[64];
    struct dirent *de;
    DIR *d;

    snprintf(dir, sizeof(dir), "/proc/%d/task", (int)pid);
    d = opendir(dir);
    if (!d) {
        die("cannot open %s: %s", dir, strerror(errno));
    }
    while ((de = readdir(d))) {
        uint64_t ns;

        if (de->d_name[0] == '.') {
            continue;
        }
        snprintf(path, sizeof(path), "%s/%s/comm", dir, de->d_name);
        if (read_text(path, comm, sizeof(comm)) < 0) {
            continue;
        }
        comm[strcspn(comm, "\n")] = 0;
        snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
        ns = task_cpu_ns(path);
        if (daemon) {
            s->daemon_ns += ns;
        } else {
            s->total_ns += ns;
        }
        if (!strncmp(comm, "iou-", 4)) {
            s->iouring_ns += ns;
        } else if (daemon || !strncmp(comm, "IO ", 3)) {
            s->iothreads_ns += ns;
            s->n_iothreads += !daemon;
        } else if (atoi(de->d_name) == (int)pid) {
            s->main_ns += ns;
        }
    }
    closedir(d);
}

static void cpu_sample(struct cpu_sample *s)
{
    struct rusage ru;

    memset(s, 0, sizeof(*s));
    cpu_sample_pid(s, qemu_pid, false);
    if (daemon_pid > 0) {
        cpu_sample_pid(s, daemon_pid, true);
    }
    getrusage(RUSAGE_SELF, &ru);
    s->rig_ns = (uint64_t)ru.ru_utime.tv_sec * 1000000000ull +
                ru.ru_utime.tv_usec * 1000ull +
                (uint64_t)ru.ru_stime.tv_sec * 1000000000ull +
                ru.ru_stime.tv_usec * 1000ull;
}

/*
 * Find the device, map its BARs, reset it and negotiate the features the
 * rig uses; returns the driver's features.
 */
static uint64_t virtio_negotiate(bool want_flush, bool indirect)
{
    uint64_t dev_features, drv_features;

    pci_find_and_map();
    virtio_find_caps();

    cc_writeb(CC_STATUS, 0);
    for (int i = 0; cc_readb(CC_STATUS) != 0; i++) {
        if (i > 1000) {
            die("device does not reset");
        }
        usleep(1000);
    }
    cc_writeb(CC_STATUS, S_ACKNOWLEDGE);
    cc_writeb(CC_STATUS, S_ACKNOWLEDGE | S_DRIVER);
    cc_writel(CC_DFSELECT, 0);
    dev_features = cc_readl(CC_DF);
    cc_writel(CC_DFSELECT, 1);
    dev_features |= (uint64_t)cc_readl(CC_DF) << 32;
    if (!(dev_features & (1ull << F_VERSION_1))) {
        die("device does not offer VIRTIO_F_VERSION_1");
    }
    drv_features = dev_features & ((1ull << F_VERSION_1) |
                                   (1ull << F_BLK_SEG_MAX) |
                                   (1ull << F_BLK_BLK_SIZE) |
                                   (1ull << F_BLK_TOPOLOGY) |
                                   (1ull << F_BLK_MQ) |
                                   (want_flush ? (1ull << F_BLK_FLUSH) |
                                    (1ull << F_BLK_CONFIG_WCE) : 0) |
                                   (indirect ? 1ull << F_INDIRECT_DESC : 0));
    if (indirect && !(dev_features & (1ull << F_INDIRECT_DESC))) {
        die("device does not offer VIRTIO_RING_F_INDIRECT_DESC");
    }
    cc_writel(CC_GFSELECT, 0);
    cc_writel(CC_GF, (uint32_t)drv_features);
    cc_writel(CC_GFSELECT, 1);
    cc_writel(CC_GF, (uint32_t)(drv_features >> 32));
    cc_writeb(CC_STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK);
    if (!(cc_readb(CC_STATUS) & S_FEATURES_OK)) {
        die("device refused features 0x%" PRIx64, drv_features);
    }
    vlog("features: device 0x%" PRIx64 ", driver 0x%" PRIx64, dev_features,
         drv_features);
    return drv_features;
}

/* ------------------------------------------------------------ loopback */

/*
 * The ideal device of --loopback: never returns.  The rig has set
 * VRING_USED_F_NO_NOTIFY (this polls), so it never kicks.
 */
static void __attribute__((noreturn))
loopback_device(struct queue *queues, unsigned int nq)
{
    uint16_t *last_avail = calloc(nq, sizeof(uint16_t));

    for (;;) {
        for (unsigned int i = 0; i < nq; i++) {
            struct queue *q = &queues[i];
            uint16_t avail = __atomic_load_n(&q->avail[1], __ATOMIC_ACQUIRE);
            uint16_t used = q->used_hdr[1];

            if (avail == last_avail[i]) {
                continue;
            }
            while (last_avail[i] != avail) {
                uint16_t head = q->avail[2 + last_avail[i] % q->size];
                struct vring_desc *table = q->desc;
                unsigned int n = q->size, hops = 0;
                struct vring_desc *d = &table[head % n];

                if (d->flags & VRING_DESC_F_INDIRECT) {
                    table = gpa(d->addr);
                    n = d->len / sizeof(*d);
                    d = &table[0];
                }
                while ((d->flags & VRING_DESC_F_NEXT) && ++hops < n) {
                    d = &table[d->next % n];
                }
                __atomic_store_n((uint8_t *)gpa(d->addr), 0, __ATOMIC_RELAXED);
                q->used_ring[used % q->size].id = head;
                q->used_ring[used % q->size].len = 1;
                used++;
                last_avail[i]++;
            }
            __atomic_store_n(&((uint16_t *)q->used_hdr)[1], used,
                             __ATOMIC_RELEASE);
        }
    }
}

/*
 * Fork the process that plays the device (QEMU, or the --loopback device),
 * which dies with the rig, pinned to @cpus if given.  Like fork(), returns
 * 0 in the child; sets qemu_pid, so that cpu_sample() counts the child as
 * the device side and cleanup() stops it.
 */
static pid_t fork_device(const cpu_set_t *cpus)
{
    qemu_pid = fork();
    if (qemu_pid < 0) {
        die("fork: %s", strerror(errno));
    }
    if (qemu_pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
        if (cpus && sched_setaffinity(0, sizeof(*cpus), cpus) < 0) {
            fprintf(stderr, "pfbd-rig: --qemu-cpus: %s\n", strerror(errno));
            _exit(127);
        }
    }
    return qemu_pid;
}

/*
 * Start @qemu with the rig's machine, RAM and qtest socket and @args
 * (the device and its back end) and connect the qtest socket (qfd).
 */
static void start_qemu(const char *qemu, int nargs, char **args,
                       const cpu_set_t *cpus)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    char memobj[512], machine[64], qtestarg[160];
    char **qargv;
    int i, n = 0, lsock;
    struct pollfd pfd;

    snprintf(sock_path, sizeof(sock_path), "/tmp/pfbd-rig-%d.sock",
             (int)getpid());
    lsock = socket(AF_UNIX, SOCK_STREAM, 0);
    unlink(sock_path);
    strcpy(sa.sun_path, sock_path);
    if (lsock < 0 || bind(lsock, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
        listen(lsock, 1) < 0) {
        die("qtest socket %s: %s", sock_path, strerror(errno));
    }

    snprintf(machine, sizeof(machine), "q35,memory-backend=mem");
    snprintf(memobj, sizeof(memobj),
             "memory-backend-file,id=mem,size=%" PRIu64 ",mem-path=%s,"
             "share=on", ram_size, shm_path);
    snprintf(qtestarg, sizeof(qtestarg), "unix:%s", sock_path);
    qargv = calloc(nargs + 32, sizeof(char *));
    qargv[n++] = (char *)qemu;
    qargv[n++] = "-machine";
    qargv[n++] = machine;
    qargv[n++] = "-object";
    qargv[n++] = memobj;
    qargv[n++] = "-accel";
    qargv[n++] = "qtest";
    qargv[n++] = "-qtest";
    qargv[n++] = qtestarg;
    qargv[n++] = "-qtest-log";
    qargv[n++] = "/dev/null";
    qargv[n++] = "-display";
    qargv[n++] = "none";
    qargv[n++] = "-nodefaults";
    qargv[n++] = "-name";
    qargv[n++] = "rig,debug-threads=on";
    for (i = 0; i < nargs; i++) {
        qargv[n++] = args[i];
    }
    qargv[n] = NULL;
    if (verbose) {
        fprintf(stderr, "pfbd-rig: qemu:");
        for (i = 0; i < n; i++) {
            fprintf(stderr, " %s", qargv[i]);
        }
        fprintf(stderr, "\n");
    }

    if (fork_device(cpus) == 0) {
        int devnull = open("/dev/null", O_RDWR);

        dup2(devnull, 0);
        dup2(2, 1);         /* QEMU's messages go to our stderr */
        close(lsock);
        execv(qemu, qargv);
        fprintf(stderr, "pfbd-rig: exec %s: %s\n", qemu, strerror(errno));
        _exit(127);
    }
    free(qargv);

    pfd.fd = lsock;
    pfd.events = POLLIN;
    for (i = 0; i < 300; i++) {
        int st;

        if (poll(&pfd, 1, 100) > 0) {
            break;
        }
        if (waitpid(qemu_pid, &st, WNOHANG) == qemu_pid) {
            qemu_pid = 0;
            die("QEMU exited before connecting (status %d)",
                WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
        }
    }
    if (i == 300) {
        die("QEMU did not connect to the qtest socket in 30 s");
    }
    qfd = accept(lsock, NULL, NULL);
    if (qfd < 0) {
        die("accept: %s", strerror(errno));
    }
    close(lsock);
    unlink(sock_path);
    sock_path[0] = 0;
}

/* Fork the --loopback device, named like an IOThread for cpu_sample() */
static void start_loopback(struct queue *queues, unsigned int nq,
                           const cpu_set_t *cpus)
{
    if (fork_device(cpus) == 0) {
        prctl(PR_SET_NAME, "IO loopback", 0, 0, 0);
        loopback_device(queues, nq);
    }
}

/* ---------------------------------------------------------------- main */

static void usage(FILE *f)
{
    fprintf(f,
"usage: pfbd-rig [options] -- QEMU-ARGS...\n"
"  --qemu PATH        QEMU binary (default build/qemu-system-x86_64)\n"
"  --rw MODE          randread|randwrite|read|write (default randread)\n"
"  --bs SIZE          block size (default 4k)\n"
"  --iodepth N        requests in flight per queue (default 1)\n"
"  --queues N         virtqueues to drive (default: all the device has)\n"
"  --runtime S        measured seconds (default 5)\n"
"  --ramp S           unmeasured seconds first (default 1)\n"
"  --size SIZE        range of the volume to address (default: all)\n"
"  --mem SIZE         guest RAM (default 256M)\n"
"  --poll MODE        spin|yield|sleep[:US]: when no used ring moved, go\n"
"                     on at once (spin), sched_yield() (yield, default)\n"
"                     or nanosleep US microseconds (sleep, default 2)\n"
"  --kick MODE        eventfd (default): signal each queue's host\n"
"                     notifier, as a KVM vCPU's notify write does;\n"
"                     qtest: notify writes through the qtest socket,\n"
"                     which QEMU's main thread serves\n"
"  --sync-kick        --kick qtest: wait for each notify write's reply\n"
"  --no-flush-feature do not negotiate VIRTIO_BLK_F_FLUSH (writes FUA)\n"
"  --indirect         negotiate VIRTIO_RING_F_INDIRECT_DESC and put each\n"
"                     request's 3 descriptors in an indirect table, as\n"
"                     Linux's virtio_blk does\n"
"  --rig-cpus LIST    pin the rig to these CPUs (e.g. 0)\n"
"  --qemu-cpus LIST   pin QEMU (every thread) to these CPUs (e.g. 1-3)\n"
"  --idle             run the rig under SCHED_IDLE once QEMU is up: it\n"
"                     gets its CPUs only when nothing else wants them\n"
"                     (when it shares them with, e.g., a storage cluster)\n"
"  --daemon-pid PID   the device's back end runs in process PID (e.g.\n"
"                     qemu-storage-daemon for vhost-user-blk-pci): its\n"
"                     threads count as the data path\n"
"  --label TEXT       copied into the JSON line as \"label\"\n"
"  --verify FILE      compare every completed request's data with FILE\n"
"                     (the volume's backing file; slows the rig down)\n"
"  --loopback         no QEMU: an ideal device in a forked process on the\n"
"                     --qemu-cpus answers every request at once (status\n"
"                     0, no data): the rig's own round trip, the floor\n"
"                     under any device's latency; no QEMU-ARGS\n"
"  -v                 log the setup to stderr\n"
"QEMU-ARGS: the IOThreads, block nodes and one virtio-blk device.\n");
}

/* ---------------------------------------------------- eventfd kicks */

/*
 * Publish a read of block 0 on @q without a notify write; wait for the
 * device to answer it for up to @wait_ns.  Returns true if it did (the
 * entry is consumed).
 */
static bool probe_answered(struct queue *q, uint64_t wait_ns)
{
    uint64_t t0 = now_ns();

    while (now_ns() - t0 < wait_ns) {
        uint16_t used = __atomic_load_n(&q->used_hdr[1], __ATOMIC_ACQUIRE);

        if (used != q->last_used) {
            struct vring_used_elem *e =
                &q->used_ring[q->last_used % q->size];

            q->free_slots[q->nfree++] = e->id / 3;
            q->last_used++;
            return true;
        }
        usleep(50);
    }
    return false;
}

static void probe_publish(struct queue *q)
{
    unsigned int s = q->free_slots[--q->nfree];
    struct slot *sl = &q->slots[s];
    struct blk_outhdr *h = gpa(sl->hdr_gpa);

    h->type = VIRTIO_BLK_T_IN;
    h->ioprio = 0;
    h->sector = 0;
    __atomic_store_n((uint8_t *)gpa(sl->hdr_gpa + 16), 0xff,
                     __ATOMIC_RELAXED);
    q->avail[2 + (q->avail_idx % q->size)] = 3 * s;
    q->avail_idx++;
    __atomic_store_n(&q->avail[1], q->avail_idx, __ATOMIC_RELEASE);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
}

/*
 * --kick eventfd: kick each queue as a KVM vCPU's notify write does, by
 * signalling the queue's host notifier, the eventfd that QEMU registers
 * as the notify address's ioeventfd (and that a vhost-user back end gets
 * as its kick fd), with no QEMU thread in between.  The rig takes copies
 * of the eventfds that QEMU opened when the driver set DRIVER_OK (the
 * queues' host and guest notifiers; not the event loops' own, which wake
 * an IOThread that may then find the request by polling) and finds each
 * queue's by trying them: it publishes a request without a notify write,
 * then signals one eventfd after the other until the request is answered.
 * A guest notifier signalled by mistake is a spurious interrupt, which
 * the rig does not take (MSI-X is off).
 */
#define MAX_QEMU_FDS 4096

/* Mark in @is_eventfd the fd numbers of QEMU's eventfds */
static void qemu_eventfds(bool *is_eventfd)
{
    char dir[64], path[128], info[512];
    struct dirent *de;
    int n;
    DIR *d;

    memset(is_eventfd, 0, MAX_QEMU_FDS * sizeof(*is_eventfd));
    snprintf(dir, sizeof(dir), "/proc/%d/fdinfo", (int)qemu_pid);
    d = opendir(dir);
    if (!d) {
        die("--kick eventfd: %s: %s", dir, strerror(errno));
    }
    while ((de = readdir(d))) {
        n = atoi(de->d_name);
        if (!isdigit((unsigned char)de->d_name[0]) || n >= MAX_QEMU_FDS) {
            continue;
        }
        snprintf(path, sizeof(path), "%s/%.20s", dir, de->d_name);
        if (read_text(path, info, sizeof(info)) > 0) {
            is_eventfd[n] = strstr(info, "eventfd-count:");
        }
    }
    closedir(d);
}

static void find_kick_fds(struct queue *queues, unsigned int nq,
                          const bool *before)
{
    static bool now[MAX_QEMU_FDS];
    int fds[256], nfds = 0, pidfd, i;
    bool used_fd[256] = { false };
    unsigned int qi;
    uint64_t one = 1;

    pidfd = syscall(SYS_pidfd_open, qemu_pid, 0);
    if (pidfd < 0) {
        die("--kick eventfd: pidfd_open: %s", strerror(errno));
    }
    qemu_eventfds(now);
    for (i = 0; i < MAX_QEMU_FDS && nfds < 256; i++) {
        if (now[i] && !before[i]) {
            fds[nfds] = syscall(SYS_pidfd_getfd, pidfd, i, 0);
            if (fds[nfds] < 0) {
                die("--kick eventfd: pidfd_getfd: %s", strerror(errno));
            }
            nfds++;
        }
    }
    close(pidfd);

    for (qi = 0; qi < nq; qi++) {
        struct queue *q = &queues[qi];

        q->kick_fd = -1;
        for (;;) {
            /* Until the device no longer polls this ring by itself */
            usleep(20000);
            if (q->used_hdr[0] & VRING_USED_F_NO_NOTIFY) {
                continue;
            }
            probe_publish(q);
            if (!probe_answered(q, 20000000)) {
                break;
            }
            vlog("queue %u: answered without a kick; again", qi);
        }
        for (i = 0; i < nfds && q->kick_fd < 0; i++) {
            if (used_fd[i]) {
                continue;
            }
            if (write(fds[i], &one, sizeof(one)) != sizeof(one)) {
                die("--kick eventfd: write: %s", strerror(errno));
            }
            if (probe_answered(q, 50000000)) {
                q->kick_fd = fds[i];
                used_fd[i] = true;
            }
        }
        if (q->kick_fd < 0) {
            die("--kick eventfd: no eventfd of QEMU kicks queue %u", qi);
        }
        vlog("queue %u: kicked through eventfd %d", qi, q->kick_fd);
    }
    for (i = 0; i < nfds; i++) {
        if (!used_fd[i]) {
            close(fds[i]);
        }
    }
}

int main(int argc, char **argv)
{
    const char *qemu = "build/qemu-system-x86_64";
    const char *label = NULL;
    int verify_fd = -1;
    uint64_t verified = 0, mismatches = 0;
    uint8_t *vbuf = NULL;
    enum rw rw = RW_RANDREAD;
    uint64_t bs = 4096, size = 0;
    unsigned int iodepth = 1, want_queues = 0;
    double runtime = 5, ramp = 1;
    enum { POLL_SPIN, POLL_YIELD, POLL_SLEEP } pollmode = POLL_YIELD;
    long sleep_ns = 2000;
    bool sync_kick = false, want_flush = true, indirect = false;
    bool eventfd_kick = true;
    bool loopback = false, idle = false;
    cpu_set_t rig_cpus, qemu_cpus;
    bool pin_rig = false, pin_qemu = false;
    int opt;
    static const struct option longopts[] = {
        { "qemu", required_argument, NULL, 'Q' },
        { "rw", required_argument, NULL, 'r' },
        { "bs", required_argument, NULL, 'b' },
        { "iodepth", required_argument, NULL, 'd' },
        { "queues", required_argument, NULL, 'q' },
        { "runtime", required_argument, NULL, 't' },
        { "ramp", required_argument, NULL, 'R' },
        { "size", required_argument, NULL, 's' },
        { "mem", required_argument, NULL, 'm' },
        { "poll", required_argument, NULL, 'p' },
        { "sync-kick", no_argument, NULL, 'k' },
        { "kick", required_argument, NULL, 'K' },
        { "no-flush-feature", no_argument, NULL, 'F' },
        { "indirect", no_argument, NULL, 'I' },
        { "loopback", no_argument, NULL, 'L' },
        { "label", required_argument, NULL, 'l' },
        { "verify", required_argument, NULL, 'V' },
        { "rig-cpus", required_argument, NULL, 'C' },
        { "qemu-cpus", required_argument, NULL, 'P' },
        { "daemon-pid", required_argument, NULL, 'D' },
        { "idle", no_argument, NULL, 'i' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };

    while ((opt = getopt_long(argc, argv, "vh", longopts, NULL)) != -1) {
        switch (opt) {
        case 'Q':
            qemu = optarg;
            break;
        case 'r':
            for (rw = 0; rw < 4; rw++) {
                if (!strcmp(optarg, rw_names[rw])) {
                    break;
                }
            }
            if (rw == 4) {
                die("--rw must be randread, randwrite, read or write");
            }
            break;
        case 'b':
            bs = parse_size(optarg);
            break;
        case 'd':
            iodepth = atoi(optarg);
            break;
        case 'q':
            want_queues = atoi(optarg);
            break;
        case 't':
            runtime = atof(optarg);
            break;
        case 'R':
            ramp = atof(optarg);
            break;
        case 's':
            size = parse_size(optarg);
            break;
        case 'm':
            ram_size = parse_size(optarg);
            break;
        case 'p':
            if (!strcmp(optarg, "spin")) {
                pollmode = POLL_SPIN;
            } else if (!strcmp(optarg, "yield")) {
                pollmode = POLL_YIELD;
            } else if (!strncmp(optarg, "sleep", 5)) {
                pollmode = POLL_SLEEP;
                if (optarg[5] == ':') {
                    sleep_ns = (long)(atof(optarg + 6) * 1000);
                }
            } else {
                die("--poll must be spin, yield or sleep[:US]");
            }
            break;
        case 'k':
            sync_kick = true;
            break;
        case 'K':
            if (!strcmp(optarg, "eventfd")) {
                eventfd_kick = true;
            } else if (!strcmp(optarg, "qtest")) {
                eventfd_kick = false;
            } else {
                die("--kick must be eventfd or qtest");
            }
            break;
        case 'F':
            want_flush = false;
            break;
        case 'I':
            indirect = true;
            break;
        case 'L':
            loopback = true;
            break;
        case 'l':
            label = optarg;
            break;
        case 'C':
            if (!parse_cpus(optarg, &rig_cpus)) {
                die("bad --rig-cpus '%s'", optarg);
            }
            pin_rig = true;
            break;
        case 'P':
            if (!parse_cpus(optarg, &qemu_cpus)) {
                die("bad --qemu-cpus '%s'", optarg);
            }
            pin_qemu = true;
            break;
        case 'i':
            idle = true;
            break;
        case 'D':
            daemon_pid = atoi(optarg);
            if (daemon_pid <= 0 || kill(daemon_pid, 0) < 0) {
                die("--daemon-pid %s: no such process", optarg);
            }
            break;
        case 'V':
            verify_fd = open(optarg, O_RDONLY);
            if (verify_fd < 0) {
                die("--verify %s: %s", optarg, strerror(errno));
            }
            break;
        case 'v':
            verbose++;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (iodepth < 1 || bs < 512 || bs % 512 || runtime <= 0 || ramp < 0) {
        die("bad --iodepth, --bs (a multiple of 512), --runtime or --ramp");
    }
    if (ram_size < (64ull << 20) || ram_size > (2ull << 30)) {
        die("--mem must be between 64M and 2G (low RAM only)");
    }
    if (loopback && (optind < argc || verify_fd >= 0)) {
        die("--loopback takes no QEMU-ARGS and no --verify");
    }

    /* ------------------------------------------------ start QEMU */
    {
        struct sigaction sa = { .sa_handler = on_signal };

        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGTERM, &sa, NULL);
        sigaction(SIGHUP, &sa, NULL);
    }
    {
        int fd;

        snprintf(shm_path, sizeof(shm_path), "/dev/shm/pfbd-rig-%d.ram",
                 (int)getpid());
        fd = open(shm_path, O_RDWR | O_CREAT | O_TRUNC, 0600);
        if (fd < 0 || ftruncate(fd, ram_size) < 0) {
            die("cannot create %s: %s", shm_path, strerror(errno));
        }
        ram = mmap(NULL, ram_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        close(fd);
        if (ram == MAP_FAILED) {
            die("mmap %s: %s", shm_path, strerror(errno));
        }
    }
    if (!loopback) {
        start_qemu(qemu, argc - optind, argv + optind,
                   pin_qemu ? &qemu_cpus : NULL);
    }

    /* ------------------------------------------ device, features */
    uint64_t drv_features;
    unsigned int nq, ring_size;
    struct queue *queues;
    uint64_t capacity;
    uint32_t blk_size = 512;
    unsigned int dev_nq;

    if (loopback) {
        drv_features = (1ull << F_VERSION_1) |
                       (indirect ? 1ull << F_INDIRECT_DESC : 0);
        capacity = (size ? size : 1ull << 30) / 512;
        dev_nq = want_queues ? want_queues : 1;
    } else {
        drv_features = virtio_negotiate(want_flush, indirect);
        capacity = (uint64_t)qcmd("readl 0x%" PRIx64, device_cfg) |
                   (uint64_t)qcmd("readl 0x%" PRIx64, device_cfg + 4) << 32;
        dev_nq = cc_readw(CC_NUMQ);
        if (drv_features & (1ull << F_BLK_BLK_SIZE)) {
            blk_size = (uint32_t)qcmd("readl 0x%" PRIx64, device_cfg + 20);
        }
    }
    if (!size || size > capacity * 512) {
        size = capacity * 512;
    }
    size -= size % bs;
    if (size < bs) {
        die("volume (%" PRIu64 " bytes) smaller than --bs", capacity * 512);
    }
    if (bs % blk_size) {
        die("--bs %" PRIu64 " is not a multiple of the block size %u", bs,
            blk_size);
    }
    nq = want_queues ? want_queues : dev_nq;
    if (nq < 1 || nq > dev_nq) {
        die("--queues %u: the device has %u", nq, dev_nq);
    }
    vlog("capacity %" PRIu64 " sectors, blk_size %u, %u queue(s)", capacity,
         blk_size, dev_nq);

    /* ------------------------------------------------- queues */
    /*
     * Layout from 16 MiB: per queue a 1 MiB area for the rings and the
     * request headers, then the data buffers (4 KiB aligned).
     */
    uint64_t area = 16ull << 20;
    uint64_t data_area = area + (uint64_t)nq * (1ull << 20);
    uint64_t bs_al = (bs + 4095) & ~4095ull;

    if (data_area + (uint64_t)nq * iodepth * bs_al > ram_size) {
        die("queues x iodepth x bs does not fit in --mem %" PRIu64, ram_size);
    }
    queues = calloc(nq, sizeof(*queues));
    for (unsigned int i = 0; i < nq; i++) {
        struct queue *q = &queues[i];
        uint64_t base = area + (uint64_t)i * (1ull << 20);
        uint64_t desc_gpa, avail_gpa, used_gpa, hdr_gpa;
        unsigned int max;

        if (loopback) {
            max = 32768;
        } else {
            cc_writew(CC_Q_SELECT, i);
            max = cc_readw(CC_Q_SIZE);
        }
        if (max == 0) {
            die("queue %u does not exist", i);
        }
        /*
         * Q_SIZE reads as the largest size the device takes; use the
         * smallest power of 2 (at least 256, Linux's usual) that holds
         * iodepth requests of 3 descriptors each.
         */
        for (ring_size = 256; ring_size < 3 * iodepth; ring_size *= 2) {
            /* nothing */
        }
        if (ring_size > max) {
            die("queue size %u < 3 x iodepth %u (3 descriptors per request; "
                "raise the device's queue-size property)", max, iodepth);
        }
        q->index = i;
        q->size = ring_size;
        desc_gpa = base;
        avail_gpa = desc_gpa + 16 * ring_size;
        used_gpa = (avail_gpa + 6 + 2 * ring_size + 4095) & ~4095ull;
        hdr_gpa = (used_gpa + 6 + 8 * ring_size + 4095) & ~4095ull;
        /* With --indirect, a 48-byte table per request after the headers */
        if (hdr_gpa + 80 * iodepth > base + (1ull << 20)) {
            die("rings do not fit");
        }
        memset(gpa(base), 0, 1 << 20);
        q->desc = gpa(desc_gpa);
        q->avail = gpa(avail_gpa);
        q->used_hdr = gpa(used_gpa);
        q->used_ring = gpa(used_gpa + 4);
        q->avail[0] = VRING_AVAIL_F_NO_INTERRUPT;
        q->slots = calloc(iodepth, sizeof(struct slot));
        q->free_slots = calloc(iodepth, sizeof(unsigned int));
        for (unsigned int s = 0; s < iodepth; s++) {
            struct slot *sl = &q->slots[s];
            struct vring_desc *d = &q->desc[3 * s];

            sl->hdr_gpa = hdr_gpa + 32 * s;
            sl->data_gpa = data_area + ((uint64_t)i * iodepth + s) * bs_al;
            memset(gpa(sl->data_gpa), 0xa5 ^ (s & 0xff), bs);
            d[0].addr = sl->hdr_gpa;
            d[0].len = sizeof(struct blk_outhdr);
            d[0].flags = VRING_DESC_F_NEXT;
            d[0].next = 3 * s + 1;
            d[1].addr = sl->data_gpa;
            d[1].len = bs;
            d[1].flags = VRING_DESC_F_NEXT |
                         ((rw == RW_RANDREAD || rw == RW_READ) ?
                          VRING_DESC_F_WRITE : 0);
            d[1].next = 3 * s + 2;
            d[2].addr = sl->hdr_gpa + 16;
            d[2].len = 1;
            d[2].flags = VRING_DESC_F_WRITE;
            d[2].next = 0;
            if (indirect) {
                uint64_t table = hdr_gpa + 32 * iodepth + 48 * s;
                struct vring_desc *t = gpa(table);

                memcpy(t, d, 3 * sizeof(*d));
                t[0].next = 1;
                t[1].next = 2;
                memset(d, 0, 3 * sizeof(*d));
                d[0].addr = table;
                d[0].len = 3 * sizeof(*d);
                d[0].flags = VRING_DESC_F_INDIRECT;
            }
            q->free_slots[q->nfree++] = iodepth - 1 - s;
        }
        q->seq_off = (size / nq * i) / bs * bs;

        if (loopback) {
            /* It polls: the rig never kicks */
            ((uint16_t *)q->used_hdr)[0] = VRING_USED_F_NO_NOTIFY;
            continue;
        }
        cc_writew(CC_Q_SIZE, ring_size);
        cc_writel(CC_Q_DESCLO, (uint32_t)desc_gpa);
        cc_writel(CC_Q_DESCHI, (uint32_t)(desc_gpa >> 32));
        cc_writel(CC_Q_AVAILLO, (uint32_t)avail_gpa);
        cc_writel(CC_Q_AVAILHI, (uint32_t)(avail_gpa >> 32));
        cc_writel(CC_Q_USEDLO, (uint32_t)used_gpa);
        cc_writel(CC_Q_USEDHI, (uint32_t)(used_gpa >> 32));
        q->notify_addr = notify_base +
                         (uint64_t)cc_readw(CC_Q_NOFF) * notify_mult;
        cc_writew(CC_Q_ENABLE, 1);
        vlog("queue %u: size %u, desc 0x%" PRIx64 ", notify 0x%" PRIx64,
             i, ring_size, desc_gpa, q->notify_addr);
    }
    if (loopback) {
        start_loopback(queues, nq, pin_qemu ? &qemu_cpus : NULL);
    } else {
        static bool eventfds_before[MAX_QEMU_FDS];

        if (eventfd_kick) {
            qemu_eventfds(eventfds_before);
        }
        cc_writeb(CC_STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK |
                  S_DRIVER_OK);
        if (cc_readb(CC_STATUS) & S_FAILED) {
            die("device failed at DRIVER_OK");
        }
        if (eventfd_kick) {
            find_kick_fds(queues, nq, eventfds_before);
        }
    }
    /* After the device side is forked: it must not inherit this pinning */
    if (pin_rig && sched_setaffinity(0, sizeof(rig_cpus), &rig_cpus) < 0) {
        die("--rig-cpus: %s", strerror(errno));
    }

    /* ------------------------------------------------ the run */
    uint32_t type = (rw == RW_RANDREAD || rw == RW_READ) ? VIRTIO_BLK_T_IN :
                                                          VIRTIO_BLK_T_OUT;
    bool rnd = rw == RW_RANDREAD || rw == RW_RANDWRITE;
    uint64_t nblocks = size / bs;
    uint64_t t_start = now_ns();
    uint64_t t_meas = t_start + (uint64_t)(ramp * 1e9);
    uint64_t t_end = t_meas + (uint64_t)(runtime * 1e9);
    uint64_t ios = 0, errors = 0, lat_sum = 0, lat_max = 0;
    uint64_t last_progress = t_start, meas_t0 = 0, meas_t1 = 0;
    uint64_t kicks0 = 0, skipped0 = 0, kicks1 = 0, skipped1 = 0;
    struct cpu_sample c0, c1;
    bool measuring = false, submitting = true, done_meas = false;
    unsigned int total_inflight = 0;

    rng_state ^= (uint64_t)getpid() << 32 ^ now_ns();
    if (verify_fd >= 0) {
        vbuf = malloc(bs);
    }
    if (pollmode == POLL_SLEEP) {
        prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
    }
    if (idle) {
        struct sched_param sp = { 0 };

        /* Only now: QEMU, forked earlier, keeps the normal policy */
        if (sched_setscheduler(0, SCHED_IDLE, &sp) < 0) {
            die("--idle: %s", strerror(errno));
        }
    }
    memset(&c0, 0, sizeof(c0));
    memset(&c1, 0, sizeof(c1));

    for (;;) {
        uint64_t now = now_ns();
        bool progress = false;

        if (!measuring && !done_meas && now >= t_meas) {
            qcollect(true);
            cpu_sample(&c0);
            measuring = true;
            meas_t0 = now_ns();
            now = meas_t0;
            for (unsigned int i = 0; i < nq; i++) {
                kicks0 += queues[i].kicks;
                skipped0 += queues[i].kicks_skipped;
            }
        } else if (measuring && now >= t_end) {
            meas_t1 = now;
            qcollect(true);
            cpu_sample(&c1);
            measuring = false;
            done_meas = true;
            submitting = false;
            for (unsigned int i = 0; i < nq; i++) {
                kicks1 += queues[i].kicks;
                skipped1 += queues[i].kicks_skipped;
            }
        }
        if (!submitting && total_inflight == 0) {
            break;
        }

        for (unsigned int i = 0; i < nq; i++) {
            struct queue *q = &queues[i];
            uint16_t used_idx = __atomic_load_n(&q->used_hdr[1],
                                                __ATOMIC_ACQUIRE);
            unsigned int n = 0;

            if (used_idx != q->last_used) {
                uint64_t t = now_ns();

                while (q->last_used != used_idx) {
                    struct vring_used_elem *e =
                        &q->used_ring[q->last_used % q->size];
                    unsigned int s = e->id / 3;
                    struct slot *sl;
                    uint8_t status;

                    if (e->id % 3 || s >= iodepth) {
                        die("queue %u: bad used id %u", i, e->id);
                    }
                    sl = &q->slots[s];
                    status = __atomic_load_n((uint8_t *)gpa(sl->hdr_gpa + 16),
                                             __ATOMIC_RELAXED);
                    if (measuring) {
                        uint64_t lat = t - sl->submit_ns;

                        ios++;
                        lat_sum += lat;
                        if (lat > lat_max) {
                            lat_max = lat;
                        }
                        hist[hist_idx(lat)]++;
                        if (status != 0) {
                            errors++;
                        }
                    } else if (status != 0 && !done_meas) {
                        errors++;
                    }
                    if (verify_fd >= 0 && status == 0) {
                        if (pread(verify_fd, vbuf, bs,
                                  sl->off) != (ssize_t)bs) {
                            die("--verify: short read at %" PRIu64, sl->off);
                        }
                        verified++;
                        if (memcmp(vbuf, gpa(sl->data_gpa), bs)) {
                            if (!mismatches) {
                                fprintf(stderr, "pfbd-rig: data mismatch at "
                                        "offset %" PRIu64 "\n", sl->off);
                            }
                            mismatches++;
                        }
                    }
                    q->free_slots[q->nfree++] = s;
                    q->inflight--;
                    total_inflight--;
                    q->last_used++;
                }
                progress = true;
                last_progress = t;
                now = t;
            }

            while (submitting && q->nfree) {
                unsigned int s = q->free_slots[--q->nfree];
                struct slot *sl = &q->slots[s];
                struct blk_outhdr *h = gpa(sl->hdr_gpa);
                uint64_t off;

                if (rnd) {
                    off = (rng_next() % nblocks) * bs;
                } else {
                    off = q->seq_off;
                    q->seq_off += bs;
                    if (q->seq_off + bs > size) {
                        q->seq_off = 0;
                    }
                }
                h->type = type;
                h->ioprio = 0;
                h->sector = off / 512;
                sl->off = off;
                if (verify_fd >= 0 && type == VIRTIO_BLK_T_OUT) {
                    /* Writes racing on one block then carry the same data */
                    memset(gpa(sl->data_gpa), (int)(off / bs) & 0xff, bs);
                    memcpy(gpa(sl->data_gpa), &off, sizeof(off));
                }
                __atomic_store_n((uint8_t *)gpa(sl->hdr_gpa + 16), 0xff,
                                 __ATOMIC_RELAXED);
                sl->submit_ns = now;
                q->avail[2 + (q->avail_idx % q->size)] = 3 * s;
                q->avail_idx++;
                q->inflight++;
                total_inflight++;
                n++;
            }
            if (n) {
                __atomic_store_n(&q->avail[1], q->avail_idx, __ATOMIC_RELEASE);
                __atomic_thread_fence(__ATOMIC_SEQ_CST);
                if (q->used_hdr[0] & VRING_USED_F_NO_NOTIFY) {
                    q->kicks_skipped++;
                } else {
                    q->kicks++;
                    if (eventfd_kick) {
                        static const uint64_t one = 1;

                        if (write(q->kick_fd, &one, sizeof(one)) !=
                            sizeof(one)) {
                            die("kick: %s", strerror(errno));
                        }
                    } else if (sync_kick) {
                        qcmd("writew 0x%" PRIx64 " 0x%x", q->notify_addr, i);
                    } else {
                        qwrite_async("writew", q->notify_addr, i);
                    }
                }
                progress = true;
            }
        }
        if (pending_ok) {
            qcollect(false);
        }
        if (!progress) {
            if (now - last_progress > 10000000000ull) {
                die("no completion for 10 s (%u in flight)", total_inflight);
            }
            if (pollmode == POLL_YIELD) {
                sched_yield();
            } else if (pollmode == POLL_SLEEP) {
                struct timespec ts = { 0, sleep_ns };

                nanosleep(&ts, NULL);
            }
        }
    }

    /* ------------------------------------------ reset and report */
    if (!loopback) {
        cc_writeb(CC_STATUS, 0);
        qcollect(true);
    }

    double secs = (meas_t1 - meas_t0) / 1e9;
    double iops = ios / secs;
    double per_io = ios ? 0.001 / ios : 0;  /* ns total -> us per IO */
    uint64_t ioth = c1.iothreads_ns - c0.iothreads_ns;
    uint64_t iou = c1.iouring_ns - c0.iouring_ns;
    uint64_t mainc = c1.main_ns - c0.main_ns;
    uint64_t total = c1.total_ns - c0.total_ns;
    uint64_t rig = c1.rig_ns - c0.rig_ns;
    uint64_t daemon = c1.daemon_ns - c0.daemon_ns;
    /*
     * The data path's CPU: the IOThreads (or the main loop without any),
     * and the --daemon-pid process
     */
    uint64_t path = (c1.n_iothreads || daemon_pid ? ioth : mainc) + iou;

    printf("{\"rw\": \"%s\", \"bs\": %" PRIu64 ", \"iodepth\": %u, "
           "\"queues\": %u, \"size\": %" PRIu64 ", \"runtime_s\": %.3f, "
           "\"ios\": %" PRIu64 ", \"iops\": %.1f, \"mbps\": %.2f, "
           "\"lat_avg_us\": %.2f, \"lat_p50_us\": %.2f, "
           "\"lat_p99_us\": %.2f, \"lat_max_us\": %.2f, "
           "\"errors\": %" PRIu64 ", \"kicks\": %" PRIu64 ", "
           "\"kicks_skipped\": %" PRIu64 ", "
           "\"iothreads\": %d, "
           "\"cpu_us_per_io\": %.3f, \"iothread_cpu_us_per_io\": %.3f, "
           "\"iouring_worker_cpu_us_per_io\": %.3f, "
           "\"main_cpu_us_per_io\": %.3f, \"qemu_cpu_us_per_io\": %.3f, "
           "\"rig_cpu_us_per_io\": %.3f, \"daemon_cpu_us_per_io\": %.3f, "
           "\"poll\": \"%s\", \"kick\": \"%s\", \"flush_feature\": %s, "
           "\"features\": \"0x%" PRIx64 "\", \"verified\": %" PRIu64 ", "
           "\"mismatches\": %" PRIu64,
           rw_names[rw], bs, iodepth, nq, size, secs, ios, iops,
           iops * bs / 1e6,
           ios ? lat_sum / 1e3 / ios : 0.0, hist_pct(ios, 50) / 1e3,
           hist_pct(ios, 99) / 1e3, lat_max / 1e3, errors,
           kicks1 - kicks0, skipped1 - skipped0, c1.n_iothreads,
           path * per_io, ioth * per_io, iou * per_io, mainc * per_io,
           total * per_io, rig * per_io, daemon * per_io,
           pollmode == POLL_SPIN ? "spin" :
           pollmode == POLL_YIELD ? "yield" : "sleep",
           loopback ? "none" : eventfd_kick ? "eventfd" :
           sync_kick ? "qtest-sync" : "qtest",
           want_flush ? "true" : "false",
           drv_features, verified, mismatches);
    if (label) {
        printf(", \"label\": \"");
        for (const char *p = label; *p; p++) {
            if (*p == '"' || *p == '\\') {
                putchar('\\');
            }
            putchar(*p);
        }
        putchar('"');
    }
    printf("}\n");
    fflush(stdout);
    cleanup();
    return errors || mismatches ? 3 : 0;
}

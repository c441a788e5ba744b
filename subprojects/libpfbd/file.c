/*
 * libpfbd: the file engine, io_uring on a regular file or block device
 *
 * Copyright (c) 2026 pfbd-qemu developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Each queue has its own io_uring with the volume's fd registered.  Its
 * completion fd is an epoll fd watching the ring's fd: level-triggered like
 * the ring fd itself (readable while completions wait in the ring, cleared
 * by reaping them, no read() per wakeup), yet the same fd for the queue's
 * life when the ring is re-created for a new thread.  Reads and writes use the
 * caller's buffers in place when they suit O_DIRECT, else an aligned
 * bounce buffer.  Short transfers are continued until done.  Zeroing
 * falls back from FALLOC_FL_ZERO_RANGE to FALLOC_FL_PUNCH_HOLE to writing
 * zeroes, as the filesystem allows.
 */

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <liburing.h>
#include "pfbd-int.h"

#define FILE_MIN_BLOCK_SIZE 512
#define FILE_ZERO_BUF_SIZE (256 * 1024)
/* The kernel's limit on one io_uring fixed buffer */
#define FILE_FIXED_BUF_MAX (1024 * 1024 * 1024)

typedef struct FileVolume {
    PfbdVolume base;
    int fd;
    bool is_blkdev;
    bool has_iowq_cpus;         /* PfbdOpenOptions.iowq_cpus was given: */
    cpu_set_t iowq_cpus;        /* the io_uring workers' CPUs */
    /* Set once the filesystem answered -EOPNOTSUPP; any queue's thread */
    bool no_zero_range;
    bool no_punch_hole;
} FileVolume;

typedef struct FileQueue FileQueue;

typedef struct FileReq {
    PfbdOp op;
    unsigned flags;
    uint64_t offset;
    uint64_t len;
    uint64_t done;              /* bytes transferred so far */
    const struct iovec *iov;    /* the caller's, or &bounce_iov */
    int iovcnt;
    struct iovec *iov_rest;     /* what is left after a short transfer */
    int iovcnt_rest;
    PfbdBounce bounce;          /* an aligned copy of the data */
    struct iovec bounce_iov;
    const struct iovec *caller_iov; /* where a bounced read goes */
    int caller_iovcnt;
    int falloc_mode;            /* WRITE_ZEROES: 0 means writing zeroes */
    bool tried_zero_range;
    bool tried_punch_hole;
    PfbdCompletionFunc *cb;
    void *opaque;
    struct FileReq *next_free;
} FileReq;

struct FileQueue {
    PfbdQueue base;
    struct io_uring ring;
    int epfd;                   /* epoll fd watching ring.ring_fd */
    int fd;                     /* 0 with the fd registered, else the fd */
    unsigned sqe_flags;         /* IOSQE_FIXED_FILE with the fd registered */
    FileReq *reqs;              /* base.depth requests */
    FileReq *free_reqs;
    void *zero_buf;             /* FILE_ZERO_BUF_SIZE zeroes, on demand */
    struct iovec *mem;          /* fixed buffers: registered memory, */
    unsigned nmem;              /* at most 1 GiB each, by address */
    bool single_issuer;         /* IORING_SETUP_SINGLE_ISSUER */
    bool enabled;               /* the ring was enabled, by @owner */
    pthread_t owner;
    bool iowq_bound;            /* iowq_thread has the iowq-cpus */
    pthread_t iowq_thread;
    int (*submit_fn)(struct io_uring *ring);    /* tests: see pfbd-int.h */
};

static uint32_t pfbd_file_max_u32(uint32_t a, uint32_t b)
{
    return a > b ? a : b;
}

static bool pfbd_file_is_pow2(uint32_t x)
{
    return x && !(x & (x - 1));
}

/* Read the size of the open file or block device into *@sizep */
static int pfbd_file_get_size(FileVolume *fv, uint64_t *sizep)
{
    struct stat st;

    if (fv->is_blkdev) {
        if (ioctl(fv->fd, BLKGETSIZE64, sizep) < 0) {
            return -errno;
        }
        return 0;
    }
    if (fstat(fv->fd, &st) < 0) {
        return -errno;
    }
    *sizep = st.st_size;
    return 0;
}

/* Fill in block_size and mem_align */
static void pfbd_file_get_alignment(FileVolume *fv, bool buffered)
{
    PfbdVolumeInfo *info = &fv->base.info;
    uint32_t block_size = FILE_MIN_BLOCK_SIZE;
    uint32_t mem_align = FILE_MIN_BLOCK_SIZE;
    int sector_size;
#ifdef STATX_DIOALIGN
    struct statx stx;
#endif

    if (fv->is_blkdev && ioctl(fv->fd, BLKSSZGET, &sector_size) == 0 &&
        sector_size > 0) {
        block_size = pfbd_file_max_u32(block_size, sector_size);
    }
#ifdef STATX_DIOALIGN
    if (!buffered &&
        statx(fv->fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &stx) == 0 &&
        (stx.stx_mask & STATX_DIOALIGN) && stx.stx_dio_offset_align) {
        block_size = pfbd_file_max_u32(block_size, stx.stx_dio_offset_align);
        mem_align = stx.stx_dio_mem_align;
    }
#endif
    if (buffered || !pfbd_file_is_pow2(mem_align)) {
        mem_align = buffered ? 1 : FILE_MIN_BLOCK_SIZE;
    }
    if (!pfbd_file_is_pow2(block_size)) {
        block_size = FILE_MIN_BLOCK_SIZE;
    }
    info->block_size = block_size;
    info->mem_align = mem_align;
}

/*
 * Parse a CPU number at *@p (below CPU_SETSIZE) into *@cpu and move *@p
 * past it; false if there is none.
 */
static bool pfbd_file_parse_cpu(const char **p, unsigned *cpu)
{
    const char *s = *p;

    *cpu = 0;
    if (*s < '0' || *s > '9') {
        return false;
    }
    for (; *s >= '0' && *s <= '9'; s++) {
        *cpu = *cpu * 10 + (*s - '0');
        if (*cpu >= CPU_SETSIZE) {
            return false;
        }
    }
    *p = s;
    return true;
}

/* Parse the CPU list @list ("0,2-3") into @set; false if it is not one */
static bool pfbd_file_parse_cpus(const char *list, cpu_set_t *set)
{
    const char *p = list;
    unsigned a, b;

    CPU_ZERO(set);
    for (;;) {
        if (!pfbd_file_parse_cpu(&p, &a)) {
            return false;
        }
        b = a;
        if (*p == '-') {
            p++;
            if (!pfbd_file_parse_cpu(&p, &b)) {
                return false;
            }
        }
        if (a > b) {
            return false;
        }
        for (; a <= b; a++) {
            CPU_SET(a, set);
        }
        if (*p == '\0') {
            return true;
        }
        if (*p++ != ',') {
            return false;
        }
    }
}

/*
 * Whether every CPU of @set is online.  The kernel takes the io_uring
 * workers' CPUs as a mask of its own size and leaves out, without a word,
 * a CPU it does not have.  True when the list of online CPUs cannot be
 * read: the kernel then has the last word.
 */
static bool pfbd_file_cpus_online(const cpu_set_t *set)
{
    int fd = open("/sys/devices/system/cpu/online", O_RDONLY | O_CLOEXEC);
    cpu_set_t online, both;
    char buf[4096];
    ssize_t n;

    if (fd < 0) {
        return true;
    }
    n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0) {
        return true;
    }
    buf[n] = '\0';
    buf[strcspn(buf, "\n")] = '\0';
    if (!pfbd_file_parse_cpus(buf, &online)) {
        return true;
    }
    CPU_AND(&both, set, &online);
    return CPU_EQUAL(&both, set);
}

static int pfbd_file_volume_open(const char *spec, const char *path,
                                 const PfbdOpenOptions *opts, PfbdVolume **volp,
                                 char **errmsg)
{
    bool read_only = opts && opts->read_only;
    int flags = (read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC;
    bool buffered = false;
    FileVolume *fv;
    struct stat st;
    uint64_t size;
    int ret;

    if (!path[0]) {
        pfbd_set_error(errmsg, "volume spec '%s': missing file name", spec);
        return -EINVAL;
    }
    fv = calloc(1, sizeof(*fv));
    if (!fv) {
        pfbd_set_error(errmsg, "volume '%s': out of memory", spec);
        return -ENOMEM;
    }

    fv->fd = open(path, flags | O_DIRECT);
    if (fv->fd < 0 && errno == EINVAL) {
        buffered = true;
        fv->fd = open(path, flags);
    }
    if (fv->fd < 0) {
        ret = -errno;
        if (ret == -EISDIR) {
            pfbd_set_error(errmsg, "volume '%s': '%s' is a directory, not a "
                           "regular file or block device", spec, path);
            ret = -EINVAL;
        } else {
            pfbd_set_error(errmsg, "volume '%s': could not open '%s': %s",
                           spec, path, strerror(-ret));
        }
        goto fail;
    }

    if (fstat(fv->fd, &st) < 0) {
        ret = -errno;
        pfbd_set_error(errmsg, "volume '%s': could not stat '%s': %s",
                       spec, path, strerror(-ret));
        goto fail;
    }
    if (S_ISBLK(st.st_mode)) {
        fv->is_blkdev = true;
    } else if (!S_ISREG(st.st_mode)) {
        pfbd_set_error(errmsg, "volume '%s': '%s' is not a regular file or "
                       "block device", spec, path);
        ret = -EINVAL;
        goto fail;
    }

    pfbd_file_get_alignment(fv, buffered);
    ret = pfbd_file_get_size(fv, &size);
    if (ret < 0) {
        pfbd_set_error(errmsg, "volume '%s': could not get the size of "
                       "'%s': %s", spec, path, strerror(-ret));
        goto fail;
    }
    size -= size % fv->base.info.block_size;
    if (size == 0) {
        pfbd_set_error(errmsg, "volume '%s': '%s' is smaller than one block "
                       "(%u bytes)", spec, path, fv->base.info.block_size);
        ret = -EINVAL;
        goto fail;
    }
    fv->base.info.size = size;
    if (opts && opts->iowq_cpus) {
        if (!pfbd_file_parse_cpus(opts->iowq_cpus, &fv->iowq_cpus)) {
            pfbd_set_error(errmsg, "volume '%s': iowq-cpus '%s' is not a "
                           "list of CPUs like '0,2-3'", spec,
                           opts->iowq_cpus);
            ret = -EINVAL;
            goto fail;
        }
        if (!pfbd_file_cpus_online(&fv->iowq_cpus)) {
            pfbd_set_error(errmsg, "volume '%s': iowq-cpus '%s' names a CPU "
                           "that is not online", spec, opts->iowq_cpus);
            ret = -EINVAL;
            goto fail;
        }
        fv->has_iowq_cpus = true;
    }
    fv->base.info.caps = PFBD_CAP_FLUSH | PFBD_CAP_DISCARD |
                         PFBD_CAP_WRITE_ZEROES;
    *volp = &fv->base;
    return 0;

fail:
    if (fv->fd >= 0) {
        close(fv->fd);
    }
    free(fv);
    return ret;
}

static void pfbd_file_volume_close(PfbdVolume *vol)
{
    FileVolume *fv = (FileVolume *)vol;

    close(fv->fd);
    free(fv);
}

static int pfbd_file_volume_get_file_fd(PfbdVolume *vol)
{
    return ((FileVolume *)vol)->fd;
}

static int pfbd_file_volume_get_size(PfbdVolume *vol, uint64_t *sizep)
{
    return pfbd_file_get_size((FileVolume *)vol, sizep);
}

/*
 * Set up @ring for @fq of volume @fv: @depth entries, the volume's fd
 * registered, its fd watched by the queue's epoll fd.  A single-issuer
 * ring starts disabled: pfbd_file_ring_bind() enables it in the thread
 * that uses it.  A queue that may change threads with requests in flight
 * (any_thread) gets a plain ring, as block/io_uring.c uses: with
 * COOP_TASKRUN its completions would wait for the thread that submitted
 * them to enter the kernel.
 */
static int pfbd_file_ring_init(FileQueue *fq, FileVolume *fv,
                               unsigned depth, struct io_uring *ring)
{
    struct epoll_event ev = { .events = EPOLLIN };
    int ret = -EINVAL;

    if (!fv->base.any_thread) {
        ret = io_uring_queue_init(depth, ring, IORING_SETUP_SINGLE_ISSUER |
                                  IORING_SETUP_COOP_TASKRUN |
                                  IORING_SETUP_TASKRUN_FLAG |
                                  IORING_SETUP_R_DISABLED);
    }
    fq->single_issuer = ret == 0;
    if (ret == -EINVAL) {
        ret = io_uring_queue_init(depth, ring, 0);
    }
    if (ret < 0) {
        return ret;
    }
    fq->enabled = !fq->single_issuer;

    if (io_uring_register_files(ring, &fv->fd, 1) == 0) {
        fq->fd = 0;
        fq->sqe_flags = IOSQE_FIXED_FILE;
    } else {
        fq->fd = fv->fd;
        fq->sqe_flags = 0;
    }
    if (fq->nmem && io_uring_register_buffers(ring, fq->mem, fq->nmem) < 0) {
        /* A new ring for another thread: go on without fixed buffers */
        free(fq->mem);
        fq->mem = NULL;
        fq->nmem = 0;
    }
    if (epoll_ctl(fq->epfd, EPOLL_CTL_ADD, ring->ring_fd, &ev) < 0) {
        ret = -errno;
        io_uring_queue_exit(ring);
        return ret;
    }
    return 0;
}

static void pfbd_file_ring_exit(FileQueue *fq, struct io_uring *ring)
{
    epoll_ctl(fq->epfd, EPOLL_CTL_DEL, ring->ring_fd, NULL);
    io_uring_queue_exit(ring);
}

/*
 * Make the ring usable from the calling thread before anything enters the
 * kernel.  A single-issuer ring only takes submissions from the thread
 * that enabled it; when an idle queue has moved to another thread, it gets
 * a new ring (watched by the same epoll fd).
 */
static int pfbd_file_ring_enable(FileQueue *fq)
{
    pthread_t self = pthread_self();
    struct io_uring ring;
    FileQueue old;
    int ret;

    if (!fq->single_issuer ||
        (fq->enabled && pthread_equal(fq->owner, self))) {
        return 0;
    }
    if (fq->enabled) {
        if (fq->base.inflight > 0) {
            /* moved with requests in flight */
            pfbd_trace(&fq->base, ring_busy, fq->base.inflight);
            return -EEXIST;
        }
        old = *fq;
        ret = pfbd_file_ring_init(fq, (FileVolume *)fq->base.vol,
                                  fq->base.depth, &ring);
        pfbd_trace(&fq->base, ring_moved, ret);
        if (ret < 0) {
            /* Keep the old ring, and the settings that go with it */
            fq->single_issuer = old.single_issuer;
            fq->enabled = old.enabled;
            fq->fd = old.fd;
            fq->sqe_flags = old.sqe_flags;
            return ret;
        }
        pfbd_file_ring_exit(fq, &fq->ring);
        fq->ring = ring;
        if (!fq->single_issuer) {
            return 0;
        }
    }
    /* io_uring_enable_rings() is not exported by liburing 2.3 */
    ret = io_uring_register(fq->ring.ring_fd, IORING_REGISTER_ENABLE_RINGS,
                            NULL, 0);
    if (ret < 0) {
        return ret;
    }
    fq->enabled = true;
    fq->owner = self;
    return 0;
}

/*
 * Give the io_uring workers of the calling thread the volume's iowq-cpus.
 * The kernel keeps one io-wq per thread (for all of its rings), so this is
 * done once in each thread that submits on the queue, before its first
 * submission: a worker keeps the CPUs it was created with.  The io-wq of a
 * thread that never submitted does not exist yet, and IOWQ_AFF refuses it
 * (-EINVAL); registering the ring's fd creates it, so do that first (and
 * undo it: liburing would then enter the ring by that registration, which
 * is valid in this thread only).
 */
static int pfbd_file_iowq_bind(FileQueue *fq)
{
    FileVolume *fv = (FileVolume *)fq->base.vol;
    pthread_t self;
    int ret;

    if (!fv->has_iowq_cpus) {
        return 0;
    }
    self = pthread_self();
    if (fq->iowq_bound && pthread_equal(fq->iowq_thread, self)) {
        return 0;
    }
    ret = io_uring_register_ring_fd(&fq->ring);
    if (ret < 0) {
        return ret;
    }
    io_uring_unregister_ring_fd(&fq->ring);
    ret = io_uring_register_iowq_aff(&fq->ring, sizeof(fv->iowq_cpus),
                                     &fv->iowq_cpus);
    if (ret < 0) {
        return ret;
    }
    fq->iowq_bound = true;
    fq->iowq_thread = self;
    return 0;
}

static int pfbd_file_ring_bind(FileQueue *fq)
{
    int ret = pfbd_file_ring_enable(fq);

    return ret < 0 ? ret : pfbd_file_iowq_bind(fq);
}

static int pfbd_file_queue_new(PfbdVolume *vol, unsigned depth, PfbdQueue **qp)
{
    FileQueue *fq;
    unsigned i;
    int ret;

    fq = calloc(1, sizeof(*fq));
    if (!fq) {
        return -ENOMEM;
    }
    fq->reqs = calloc(depth, sizeof(fq->reqs[0]));
    if (!fq->reqs) {
        free(fq);
        return -ENOMEM;
    }
    for (i = 0; i < depth; i++) {
        fq->reqs[i].next_free = fq->free_reqs;
        fq->free_reqs = &fq->reqs[i];
    }

    fq->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (fq->epfd < 0) {
        ret = -errno;
        goto fail;
    }
    ret = pfbd_file_ring_init(fq, (FileVolume *)vol, depth, &fq->ring);
    if (ret < 0) {
        close(fq->epfd);
        goto fail;
    }
    *qp = &fq->base;
    return 0;

fail:
    free(fq->reqs);
    free(fq);
    return ret;
}

static void pfbd_file_queue_free(PfbdQueue *q)
{
    FileQueue *fq = (FileQueue *)q;
    unsigned i;

    for (i = 0; i < q->depth; i++) {
        pfbd_bounce_free(&fq->reqs[i].bounce);
    }
    pfbd_file_ring_exit(fq, &fq->ring);
    close(fq->epfd);
    free(fq->mem);
    free(fq->zero_buf);
    free(fq->reqs);
    free(fq);
}

static int pfbd_file_queue_get_fd(PfbdQueue *q)
{
    return ((FileQueue *)q)->epfd;
}

static int pfbd_file_mem_cmp(const void *a, const void *b)
{
    uintptr_t x = (uintptr_t)((const struct iovec *)a)->iov_base;
    uintptr_t y = (uintptr_t)((const struct iovec *)b)->iov_base;

    return x < y ? -1 : x > y;
}

/* Register @iov as the ring's fixed buffers, cut at FILE_FIXED_BUF_MAX */
static int pfbd_file_queue_register_memory(PfbdQueue *q,
                                           const struct iovec *iov,
                                           unsigned n)
{
    FileQueue *fq = (FileQueue *)q;
    struct iovec *mem;
    unsigned nmem = 0;
    unsigned i;
    size_t off, len;
    int ret;

    /* Whatever happens next, the old ranges are no longer used */
    free(fq->mem);
    fq->mem = NULL;
    fq->nmem = 0;
    ret = io_uring_unregister_buffers(&fq->ring);
    if (ret < 0 && ret != -ENXIO) {
        return ret;
    }

    for (i = 0; i < n; i++) {
        nmem += (iov[i].iov_len + FILE_FIXED_BUF_MAX - 1) / FILE_FIXED_BUF_MAX;
    }
    if (nmem == 0) {
        return 0;
    }
    mem = calloc(nmem, sizeof(mem[0]));
    if (!mem) {
        return -ENOMEM;
    }
    nmem = 0;
    for (i = 0; i < n; i++) {
        for (off = 0; off < iov[i].iov_len; off += len) {
            len = iov[i].iov_len - off;
            if (len > FILE_FIXED_BUF_MAX) {
                len = FILE_FIXED_BUF_MAX;
            }
            mem[nmem].iov_base = (char *)iov[i].iov_base + off;
            mem[nmem].iov_len = len;
            nmem++;
        }
    }
    qsort(mem, nmem, sizeof(mem[0]), pfbd_file_mem_cmp);
    ret = io_uring_register_buffers(&fq->ring, mem, nmem);
    if (ret < 0) {
        free(mem);
        return ret;
    }
    fq->mem = mem;
    fq->nmem = nmem;
    return 0;
}

/* The fixed buffer that holds all of @iov, or -1 */
static int pfbd_file_fixed_index(FileQueue *fq, const struct iovec *iov)
{
    uintptr_t p = (uintptr_t)iov->iov_base;
    unsigned lo = 0, hi = fq->nmem;
    unsigned mid;
    uintptr_t base;

    /* The last range that starts at or below @p */
    while (hi - lo > 1) {
        mid = lo + (hi - lo) / 2;
        if ((uintptr_t)fq->mem[mid].iov_base <= p) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    if (lo == hi) {
        return -1;      /* nothing registered */
    }
    base = (uintptr_t)fq->mem[lo].iov_base;
    if (p < base || p - base > fq->mem[lo].iov_len ||
        iov->iov_len > fq->mem[lo].iov_len - (p - base)) {
        return -1;
    }
    return lo;
}

/* The next way for @req to write zeroes; 0 means writing a zero buffer */
static int pfbd_file_zero_mode(FileVolume *fv, FileReq *req)
{
    bool zero_range = !req->tried_zero_range &&
                      !__atomic_load_n(&fv->no_zero_range, __ATOMIC_RELAXED);
    bool punch_hole = !req->tried_punch_hole &&
                      !__atomic_load_n(&fv->no_punch_hole, __ATOMIC_RELAXED);

    if (punch_hole && (req->flags & PFBD_REQ_UNMAP)) {
        return FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
    }
    if (zero_range) {
        return FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE;
    }
    if (punch_hole) {
        return FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
    }
    return 0;
}

void pfbd_file_queue_set_submit_fn(PfbdQueue *q,
                                   int (*fn)(struct io_uring *ring))
{
    ((FileQueue *)q)->submit_fn = fn;
}

/*
 * Send the SQEs queued in @fq's ring.  Returns how many the kernel took,
 * or a negative errno; -EAGAIN if it took only some: io_uring_enter()
 * stops early when it cannot allocate requests, or at an SQE it refuses,
 * and leaves the others in the ring for the next call.
 */
static int pfbd_file_submit_sqes(FileQueue *fq)
{
    int ret = fq->submit_fn ? fq->submit_fn(&fq->ring) :
                              io_uring_submit(&fq->ring);

    if (ret >= 0 && io_uring_sq_ready(&fq->ring)) {
        return -EAGAIN;
    }
    return ret;
}

/* Get an SQE, sending what is queued if the ring is full */
static struct io_uring_sqe *pfbd_file_get_sqe(FileQueue *fq)
{
    struct io_uring_sqe *sqe;

    sqe = io_uring_get_sqe(&fq->ring);
    if (!sqe) {
        /* What the kernel leaves, a flush sends */
        pfbd_file_submit_sqes(fq);
        sqe = io_uring_get_sqe(&fq->ring);
    }
    return sqe;
}

/* Queue the next (or only) SQE of @req */
static int pfbd_file_req_queue(FileQueue *fq, FileReq *req)
{
    FileVolume *fv = (FileVolume *)fq->base.vol;
    struct io_uring_sqe *sqe;
    uint64_t chunk;
    int idx;

    if (req->op == PFBD_OP_WRITE_ZEROES && !req->falloc_mode &&
        !fq->zero_buf) {
        if (posix_memalign(&fq->zero_buf,
                           pfbd_file_max_u32(fv->base.info.mem_align, 4096),
                           FILE_ZERO_BUF_SIZE)) {
            fq->zero_buf = NULL;
            return -ENOMEM;
        }
        memset(fq->zero_buf, 0, FILE_ZERO_BUF_SIZE);
    }

    sqe = pfbd_file_get_sqe(fq);
    if (!sqe) {
        return -EAGAIN;
    }

    switch (req->op) {
    case PFBD_OP_READ:
    case PFBD_OP_WRITE:
        idx = !req->iov_rest && req->iovcnt == 1 && fq->nmem ?
              pfbd_file_fixed_index(fq, req->iov) : -1;
        if (idx >= 0 && req->op == PFBD_OP_READ) {
            io_uring_prep_read_fixed(sqe, fq->fd, req->iov[0].iov_base,
                                     req->iov[0].iov_len, req->offset, idx);
        } else if (idx >= 0) {
            io_uring_prep_write_fixed(sqe, fq->fd, req->iov[0].iov_base,
                                      req->iov[0].iov_len, req->offset, idx);
        } else if (req->op == PFBD_OP_READ) {
            io_uring_prep_readv(sqe, fq->fd, req->iov_rest ?: req->iov,
                                req->iov_rest ? req->iovcnt_rest : req->iovcnt,
                                req->offset + req->done);
        } else {
            io_uring_prep_writev(sqe, fq->fd, req->iov_rest ?: req->iov,
                                 req->iov_rest ? req->iovcnt_rest :
                                                 req->iovcnt,
                                 req->offset + req->done);
        }
        if (req->op == PFBD_OP_WRITE && (req->flags & PFBD_REQ_FUA)) {
            sqe->rw_flags = RWF_DSYNC;
        }
        break;
    case PFBD_OP_FLUSH:
        io_uring_prep_fsync(sqe, fq->fd, IORING_FSYNC_DATASYNC);
        break;
    case PFBD_OP_DISCARD:
        if (req->falloc_mode) {
            io_uring_prep_fallocate(sqe, fq->fd, req->falloc_mode,
                                    req->offset, req->len);
        } else {
            /* Punching holes is not supported: discard nothing */
            io_uring_prep_nop(sqe);
        }
        break;
    case PFBD_OP_WRITE_ZEROES:
        if (req->falloc_mode) {
            if (req->falloc_mode & FALLOC_FL_ZERO_RANGE) {
                req->tried_zero_range = true;
            } else {
                req->tried_punch_hole = true;
            }
            io_uring_prep_fallocate(sqe, fq->fd, req->falloc_mode,
                                    req->offset, req->len);
        } else {
            chunk = req->len - req->done;
            if (chunk > FILE_ZERO_BUF_SIZE) {
                chunk = FILE_ZERO_BUF_SIZE;
            }
            io_uring_prep_write(sqe, fq->fd, fq->zero_buf, chunk,
                                req->offset + req->done);
        }
        break;
    }
    sqe->flags |= fq->sqe_flags;
    io_uring_sqe_set_data(sqe, req);
    return 0;
}

static void pfbd_file_req_release(FileQueue *fq, FileReq *req)
{
    pfbd_bounce_release(&fq->base, &req->bounce);
    free(req->iov_rest);
    req->iov_rest = NULL;
    req->next_free = fq->free_reqs;
    fq->free_reqs = req;
}

static void pfbd_file_req_finish(FileQueue *fq, FileReq *req, int ret)
{
    PfbdCompletionFunc *cb = req->cb;
    void *opaque = req->opaque;

    if (req->bounce.buf && req->op == PFBD_OP_READ && ret == 0) {
        pfbd_buf_to_iov(req->bounce.buf, req->caller_iov,
                        req->caller_iovcnt);
    }
    pfbd_file_req_release(fq, req);
    pfbd_complete(&fq->base, cb, opaque, ret);
}

/* After a short transfer, point iov_rest at what is left of req->iov */
static int pfbd_file_req_advance(FileReq *req)
{
    size_t off;
    int i, n;

    if (!req->iov_rest) {
        req->iov_rest = malloc(req->iovcnt * sizeof(req->iov_rest[0]));
        if (!req->iov_rest) {
            return -ENOMEM;
        }
    }
    i = pfbd_iov_seek(req->iov, req->iovcnt, req->done, &off);
    for (n = 0; i < req->iovcnt; i++, n++, off = 0) {
        req->iov_rest[n].iov_base = (char *)req->iov[i].iov_base + off;
        req->iov_rest[n].iov_len = req->iov[i].iov_len - off;
    }
    req->iovcnt_rest = n;
    return 0;
}

/*
 * Handle the completion @res of @req's current SQE.  Returns true if @req
 * completed, false if it queued its next SQE.
 */
static bool pfbd_file_req_step(FileQueue *fq, FileReq *req, int res)
{
    FileVolume *fv = (FileVolume *)fq->base.vol;
    int ret;

    if (res == -EOPNOTSUPP && req->falloc_mode) {
        if (req->falloc_mode & FALLOC_FL_ZERO_RANGE) {
            __atomic_store_n(&fv->no_zero_range, true, __ATOMIC_RELAXED);
        } else {
            __atomic_store_n(&fv->no_punch_hole, true, __ATOMIC_RELAXED);
        }
        if (req->op == PFBD_OP_DISCARD) {
            /* Discarding is a hint: doing nothing is fine */
            pfbd_file_req_finish(fq, req, 0);
            return true;
        }
        req->falloc_mode = pfbd_file_zero_mode(fv, req);
        goto next;
    }
    if (res < 0) {
        pfbd_file_req_finish(fq, req, res);
        return true;
    }

    switch (req->op) {
    case PFBD_OP_READ:
    case PFBD_OP_WRITE:
    case PFBD_OP_WRITE_ZEROES:
        if (req->op == PFBD_OP_WRITE_ZEROES && req->falloc_mode) {
            break;
        }
        if (res == 0) {
            pfbd_file_req_finish(fq, req, -EIO);
            return true;
        }
        req->done += res;
        if (req->done >= req->len) {
            break;
        }
        if (req->op != PFBD_OP_WRITE_ZEROES) {
            ret = pfbd_file_req_advance(req);
            if (ret < 0) {
                pfbd_file_req_finish(fq, req, ret);
                return true;
            }
        }
        pfbd_trace(&fq->base, resend, req->offset + req->done,
                   req->len - req->done, "short transfer");
        goto next;
    default:
        break;
    }
    pfbd_file_req_finish(fq, req, 0);
    return true;

next:
    ret = pfbd_file_req_queue(fq, req);
    if (ret < 0) {
        pfbd_file_req_finish(fq, req, ret);
        return true;
    }
    return false;
}

static int pfbd_file_submit(PfbdQueue *q, PfbdOp op, uint64_t offset,
                            const struct iovec *iov, int iovcnt, uint64_t len,
                            unsigned flags, PfbdCompletionFunc *cb,
                            void *opaque)
{
    FileQueue *fq = (FileQueue *)q;
    FileVolume *fv = (FileVolume *)q->vol;
    uint32_t mem_align = q->vol->info.mem_align;
    FileReq *req = fq->free_reqs;
    bool fresh;
    int ret;

    if (!req) {
        return -EAGAIN;
    }
    ret = pfbd_file_ring_bind(fq);
    if (ret < 0) {
        return ret;
    }
    fq->free_reqs = req->next_free;
    *req = (FileReq) {
        .op = op,
        .flags = flags,
        .offset = offset,
        .len = len,
        .iov = iov,
        .iovcnt = iovcnt,
        .bounce = req->bounce,     /* the mapping it kept */
        .cb = cb,
        .opaque = opaque,
    };

    if ((op == PFBD_OP_READ || op == PFBD_OP_WRITE) &&
        (iovcnt > IOV_MAX || !(flags & PFBD_REQ_ALIGNED))) {
        fresh = !req->bounce.map;
        ret = pfbd_bounce_map(q, &req->bounce, len, mem_align);
        if (ret < 0) {
            goto fail;
        }
        if (op == PFBD_OP_READ && !fresh) {
            /*
             * Cheap next to the copy out, and tools like memcheck cannot
             * see io_uring write the buffer (a new mapping is zeroed)
             */
            memset(req->bounce.buf, 0, len);
        } else if (op == PFBD_OP_WRITE) {
            pfbd_iov_to_buf(iov, iovcnt, req->bounce.buf);
        }
        req->caller_iov = iov;
        req->caller_iovcnt = iovcnt;
        req->bounce_iov.iov_base = req->bounce.buf;
        req->bounce_iov.iov_len = len;
        req->iov = &req->bounce_iov;
        req->iovcnt = 1;
    } else if (op == PFBD_OP_DISCARD &&
               !__atomic_load_n(&fv->no_punch_hole, __ATOMIC_RELAXED)) {
        req->falloc_mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
    } else if (op == PFBD_OP_WRITE_ZEROES) {
        req->falloc_mode = pfbd_file_zero_mode(fv, req);
    }

    ret = pfbd_file_req_queue(fq, req);
    if (ret < 0) {
        goto fail;
    }
    return 0;

fail:
    pfbd_file_req_release(fq, req);
    return ret;
}

static int pfbd_file_flush(PfbdQueue *q)
{
    FileQueue *fq = (FileQueue *)q;
    int ret;

    /* Nothing to send: no system call (the device flushes after reaps) */
    if (q->inflight == 0 || !io_uring_sq_ready(&fq->ring)) {
        return 0;
    }
    ret = pfbd_file_ring_bind(fq);
    if (ret < 0) {
        return ret;
    }
    return pfbd_file_submit_sqes(fq);
}

static bool pfbd_file_completions_ready(PfbdQueue *q)
{
    struct io_uring *ring = &((FileQueue *)q)->ring;

    /*
     * With COOP_TASKRUN, completions of requests the kernel did not hand
     * to a worker (a block device's) wait as task work until this thread
     * enters the kernel; TASKRUN_FLAG says so, and reap enters it.
     */
    return io_uring_cq_ready(ring) > 0 ||
           (__atomic_load_n(ring->sq.kflags, __ATOMIC_RELAXED) &
            IORING_SQ_TASKRUN);
}

static int pfbd_file_reap(PfbdQueue *q, unsigned max)
{
    FileQueue *fq = (FileQueue *)q;
    struct io_uring_cqe *cqe;
    bool requeued = false;
    FileReq *req;
    int res;
    int n = 0;

    while (max == 0 || n < max) {
        if (io_uring_peek_cqe(&fq->ring, &cqe) < 0) {
            break;
        }
        req = io_uring_cqe_get_data(cqe);
        res = cqe->res;
        io_uring_cqe_seen(&fq->ring, cqe);
        if (pfbd_file_req_step(fq, req, res)) {
            n++;
        } else {
            requeued = true;
        }
    }
    if (requeued) {
        /*
         * Continue short transfers and fallbacks without waiting; what
         * the kernel does not take, the caller's next flush sends
         */
        pfbd_file_submit_sqes(fq);
    }
    return n;
}

static void pfbd_file_wait(PfbdQueue *q)
{
    FileQueue *fq = (FileQueue *)q;
    struct __kernel_timespec ts = { .tv_nsec = 1000000 };
    struct io_uring_cqe *cqe;
    int ret;

    ret = pfbd_file_ring_bind(fq);
    if (ret == 0) {
        do {
            ret = io_uring_submit_and_wait(&fq->ring, 1);
        } while (ret == -EINTR);
    }
    if (ret < 0) {
        /* Could not send (-EAGAIN, -EBUSY...): wait for room, then retry */
        io_uring_wait_cqe_timeout(&fq->ring, &cqe, &ts);
    }
}

const PfbdEngine pfbd_engine_file = {
    .name = "file",
    .volume_open = pfbd_file_volume_open,
    .volume_close = pfbd_file_volume_close,
    .volume_get_size = pfbd_file_volume_get_size,
    .volume_get_file_fd = pfbd_file_volume_get_file_fd,
    .queue_new = pfbd_file_queue_new,
    .queue_free = pfbd_file_queue_free,
    .queue_get_fd = pfbd_file_queue_get_fd,
    .queue_register_memory = pfbd_file_queue_register_memory,
    .submit = pfbd_file_submit,
    .flush = pfbd_file_flush,
    .completions_ready = pfbd_file_completions_ready,
    .reap = pfbd_file_reap,
    .wait = pfbd_file_wait,
};

/*
 * libpfbd unit tests: the file and null engines on real files
 *
 * Copyright (c) 2026 pfbd-qemu developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Every test works on its own files in a temporary directory.  The
 * -ENOSPC and fallback tests mount small tmpfs/ramfs file systems and so
 * must run as root.
 *
 * When the rbd engine is built in, its tests need a Ceph cluster: set
 * PFBD_TEST_CEPH_CONF to its ceph.conf (tests/ceph/with-ceph.sh starts a
 * throwaway one and does that).  Without it the /pfbd/rbd/cluster case
 * fails and says so.
 */

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/syscall.h>
#include <sys/stat.h>
#include <glib.h>
#include <liburing.h>
#ifdef PFBD_HAVE_RBD
#include <rados/librados.h>
#include <rbd/librbd.h>
#endif
#include "pfbd.h"
#include "pfbd-int.h"     /* pfbd_iov_seek() */

#define MiB (1024 * 1024)

static char *tmpdir;
static unsigned file_counter;

typedef struct Completion {
    int ret;
    int count;
} Completion;

/* What the engines reported through PfbdTraceOps (open_spec() asks) */
typedef struct TraceSeen {
    int ring_moved;
    int ring_busy;
    int bounce;
    int bounce_fresh;
    uint64_t bounce_bytes;
    int waits;
    unsigned max_waiting;
    int registered;
    int registered_ret;
} TraceSeen;

static TraceSeen trace_seen;

static void trace_ring_moved(void *opaque, PfbdQueue *q, int ret)
{
    TraceSeen *t = opaque;

    g_assert_cmpint(ret, ==, 0);
    t->ring_moved++;
}

static void trace_ring_busy(void *opaque, PfbdQueue *q, unsigned inflight)
{
    TraceSeen *t = opaque;

    g_assert_cmpuint(inflight, ==, pfbd_queue_inflight(q));
    t->ring_busy++;
}

static void trace_bounce(void *opaque, PfbdQueue *q, uint64_t len,
                         bool fresh)
{
    TraceSeen *t = opaque;

    t->bounce++;
    t->bounce_fresh += fresh;
    t->bounce_bytes += len;
}

static void trace_waits(void *opaque, PfbdQueue *q, unsigned nwaiting)
{
    TraceSeen *t = opaque;

    t->waits++;
    t->max_waiting = MAX(t->max_waiting, nwaiting);
}

static void trace_memory_registered(void *opaque, PfbdQueue *q, unsigned n,
                                    int ret)
{
    TraceSeen *t = opaque;

    t->registered++;
    t->registered_ret = ret;
}

static const PfbdTraceOps trace_ops = {
    .ring_moved = trace_ring_moved,
    .ring_busy = trace_ring_busy,
    .bounce = trace_bounce,
    .waits = trace_waits,
    .memory_registered = trace_memory_registered,
};

typedef struct TestVolume {
    char *path;
    PfbdVolume *vol;
    PfbdQueue *q;
    PfbdVolumeInfo info;
} TestVolume;

static void complete_cb(void *opaque, int ret)
{
    Completion *c = opaque;

    c->ret = ret;
    c->count++;
}

static void *alloc_aligned(size_t len)
{
    void *buf;

    g_assert_cmpint(posix_memalign(&buf, 4096, len), ==, 0);
    return buf;
}

static void fill_pattern(void *buf, size_t len, unsigned seed)
{
    uint8_t *p = buf;
    size_t i;

    for (i = 0; i < len; i++) {
        p[i] = (uint8_t)(i * 7 + seed * 31 + (i >> 9));
    }
}

static bool is_zero(const void *buf, size_t len)
{
    const uint8_t *p = buf;
    size_t i;

    for (i = 0; i < len; i++) {
        if (p[i]) {
            return false;
        }
    }
    return true;
}

/* A new file of @size bytes (sparse) in @dir, or in tmpdir if NULL */
static char *make_file(const char *dir, uint64_t size)
{
    char *path = g_strdup_printf("%s/vol%u", dir ? dir : tmpdir,
                                 file_counter++);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);

    g_assert_cmpint(fd, >=, 0);
    g_assert_cmpint(ftruncate(fd, size), ==, 0);
    close(fd);
    return path;
}

static void open_spec(TestVolume *tv, const char *spec, bool read_only,
                      unsigned depth)
{
    PfbdOpenOptions opts = {
        .read_only = read_only,
        .trace = &trace_ops,
        .trace_opaque = &trace_seen,
    };
    char *err = NULL;
    int ret;

    memset(&trace_seen, 0, sizeof(trace_seen));
    ret = pfbd_volume_open(spec, &opts, &tv->vol, &err);
    if (ret < 0) {
        g_test_message("pfbd_volume_open('%s'): %s", spec, err);
    }
    g_assert_cmpint(ret, ==, 0);
    g_assert_null(err);
    g_assert_cmpint(pfbd_queue_new(tv->vol, depth, &tv->q), ==, 0);
    pfbd_volume_get_info(tv->vol, &tv->info);
}

/* Open a new file of @size bytes in @dir (tmpdir if NULL) */
static void open_file(TestVolume *tv, const char *dir, uint64_t size,
                      bool read_only, unsigned depth)
{
    char *spec;

    tv->path = make_file(dir, size);
    spec = g_strdup_printf("file:%s", tv->path);
    open_spec(tv, spec, read_only, depth);
    g_free(spec);
}

static void close_volume(TestVolume *tv)
{
    pfbd_queue_drain(tv->q);
    g_assert_cmpuint(pfbd_queue_inflight(tv->q), ==, 0);
    pfbd_queue_free(tv->q);
    pfbd_volume_close(tv->vol);
    if (tv->path) {
        unlink(tv->path);
        g_free(tv->path);
    }
}

/*
 * pfbd_queue_do_io() that must succeed; returns how many requests it
 * completed, and in *@sent (if not NULL) its engine submissions
 */
static unsigned do_io(PfbdQueue *q, unsigned min, unsigned max,
                      unsigned *sent)
{
    PfbdIoCounts counts = { 0 };

    g_assert_cmpint(pfbd_queue_do_io(q, min, max, &counts), ==, 0);
    if (sent) {
        *sent = counts.sent;
    }
    return counts.completed;
}

/* Run one request to completion and return its result */
static int do_req(PfbdQueue *q, PfbdOp op, uint64_t offset,
                  const struct iovec *iov, int iovcnt, uint64_t len,
                  unsigned flags)
{
    Completion c = { .ret = 1 };

    g_assert_cmpint(pfbd_submit(q, op, offset, iov, iovcnt, len, flags,
                                complete_cb, &c), ==, 0);
    do_io(q, 1, 0, NULL);
    g_assert_cmpint(c.count, ==, 1);
    return c.ret;
}

static int do_rw(PfbdQueue *q, PfbdOp op, uint64_t offset, void *buf,
                 size_t len, unsigned flags)
{
    struct iovec iov = { .iov_base = buf, .iov_len = len };

    return do_req(q, op, offset, &iov, 1, len, flags);
}

/* Write a pattern, read it back and compare */
static void check_write_read(PfbdQueue *q, uint64_t offset, size_t len,
                             unsigned flags)
{
    uint8_t *wbuf = alloc_aligned(len);
    uint8_t *rbuf = alloc_aligned(len);

    fill_pattern(wbuf, len, offset / 512 + flags);
    memset(rbuf, 0xaa, len);
    g_assert_cmpint(do_rw(q, PFBD_OP_WRITE, offset, wbuf, len, flags), ==, 0);
    g_assert_cmpint(do_rw(q, PFBD_OP_READ, offset, rbuf, len, 0), ==, 0);
    g_assert_true(memcmp(wbuf, rbuf, len) == 0);
    free(wbuf);
    free(rbuf);
}

/* Fill [offset, offset + len) with a pattern, zero it with @op, check */
static void check_zeroing(PfbdQueue *q, PfbdOp op, uint64_t offset,
                          size_t len, unsigned flags)
{
    uint8_t *buf = alloc_aligned(len + 2 * 4096);

    fill_pattern(buf, len + 2 * 4096, 3);
    g_assert_cmpint(do_rw(q, PFBD_OP_WRITE, offset - 4096, buf,
                          len + 2 * 4096, 0), ==, 0);
    g_assert_cmpint(do_req(q, op, offset, NULL, 0, len, flags), ==, 0);
    memset(buf, 0xaa, len + 2 * 4096);
    g_assert_cmpint(do_rw(q, PFBD_OP_READ, offset - 4096, buf,
                          len + 2 * 4096, 0), ==, 0);
    g_assert_true(is_zero(buf + 4096, len));
    /* The neighbours are untouched */
    g_assert_cmpint(buf[0], !=, 0xaa);
    g_assert_cmpint(buf[len + 4096], !=, 0xaa);
    g_assert_false(is_zero(buf, 4096));
    g_assert_false(is_zero(buf + 4096 + len, 4096));
    free(buf);
}

/* Mount a file system of type @fstype on a new directory of tmpdir */
static char *mount_fs(const char *fstype, const char *data)
{
    char *dir = g_strdup_printf("%s/mnt%u", tmpdir, file_counter++);

    g_assert_cmpint(mkdir(dir, 0700), ==, 0);
    if (mount(fstype, dir, fstype, 0, data) < 0) {
        g_test_message("cannot mount %s (%s) on %s: %s; this test needs "
                       "root (CAP_SYS_ADMIN)", fstype, data ? data : "",
                       dir, strerror(errno));
        g_test_fail();
        rmdir(dir);
        g_free(dir);
        return NULL;
    }
    return dir;
}

static void unmount_fs(char *dir)
{
    g_assert_cmpint(umount2(dir, MNT_DETACH), ==, 0);
    rmdir(dir);
    g_free(dir);
}

/* Open @spec, which must fail with @expected and a message with @needle */
static void check_open_fails(const char *spec, const PfbdOpenOptions *opts,
                             int expected, const char *needle)
{
    PfbdVolume *vol = (PfbdVolume *)&vol;
    char *err = NULL;

    g_assert_cmpint(pfbd_volume_open(spec, opts, &vol, &err), ==, expected);
    g_assert_null(vol);
    g_assert_nonnull(err);
    if (!strstr(err, needle)) {
        g_test_message("message '%s' lacks '%s'", err, needle);
        g_test_fail();
    }
    free(err);
}

/* ---- volume specs ---- */

static void check_redact(const char *spec, const char *expected)
{
    char *shown = pfbd_spec_redact(spec);

    g_assert_cmpstr(shown, ==, expected);
    free(shown);
}

/* The value of every key= part is hidden, and nothing else */
static void test_spec_redact(void)
{
    check_redact("rbd:rbd/vm1:id=qemu:key=AQBsecret==:conf=/etc/c.conf",
                 "rbd:rbd/vm1:id=qemu:key=***:conf=/etc/c.conf");
    check_redact("rbd:rbd/vm1:key=AQB\\:x", "rbd:rbd/vm1:key=***");
    check_redact("rbd:rbd/vm1:key=a:key=b", "rbd:rbd/vm1:key=***:key=***");
    check_redact("rbd:rbd/vm1:keyring=/k:key-secret=sec0",
                 "rbd:rbd/vm1:keyring=/k:key-secret=sec0");
    check_redact("rbd:rbd/key=x", "rbd:rbd/key=x");
    check_redact("null:1G", "null:1G");
    check_redact("vm1", "vm1");
    check_redact("", "");
}

#ifdef PFBD_HAVE_RBD
/* Where an open fails, its message shows the spec without the key */
static void test_spec_key_not_shown(void)
{
    check_open_fails("rbd:rbd/vm1:conf=/nonexistent/ceph.conf:"
                     "key=AQBsecret==", NULL, -ENOENT,
                     "volume 'rbd:rbd/vm1:conf=/nonexistent/ceph.conf:"
                     "key=***'");
    check_open_fails("rbd:rbd/vm1:key=AQBsecret==:=x", NULL, -EINVAL,
                     "volume spec 'rbd:rbd/vm1:key=***:=x'");
}
#endif

static void test_spec_unknown_engine(void)
{
    check_open_fails("foo:x", NULL, -EINVAL,
                     "unknown engine 'foo' in volume spec 'foo:x' "
                     "(known: file, null"
#ifdef PFBD_HAVE_RBD
                     ", rbd"
#endif
                     ", pureflash)");
}

#ifndef PFBD_HAVE_RBD
static void test_spec_rbd_not_built(void)
{
    check_open_fails("rbd:pool/image", NULL, -ENOTSUP,
                     "volume spec 'rbd:pool/image': the rbd engine is not "
                     "built in");
}
#endif

static void test_spec_empty(void)
{
    check_open_fails("", NULL, -EINVAL, "empty volume spec");
    check_open_fails("file:", NULL, -EINVAL, "missing file name");
}

static void test_spec_bad_bare_name(void)
{
    check_open_fails(".hidden", NULL, -EINVAL, "'.hidden'");
    check_open_fails("a/b", NULL, -EINVAL, "invalid volume name 'a/b'");
    check_open_fails("../etc", NULL, -EINVAL, "'../etc'");
}

static void test_spec_bare_name_pool_dir(void)
{
    char *path = make_file(NULL, MiB);
    PfbdOpenOptions opts = { .pool_dir = tmpdir };
    PfbdVolumeInfo info;
    PfbdVolume *vol;

    g_assert_cmpint(pfbd_volume_open(strrchr(path, '/') + 1, &opts, &vol,
                                     NULL), ==, 0);
    pfbd_volume_get_info(vol, &info);
    g_assert_cmpstr(info.engine, ==, "file");
    g_assert_cmpuint(info.size, ==, MiB);
    pfbd_volume_close(vol);
    unlink(path);
    g_free(path);
}

static void test_spec_bare_name_env(void)
{
    char *path = make_file(NULL, MiB);
    char *name = strrchr(path, '/') + 1;
    PfbdVolume *vol;

    g_setenv("PFBD_POOL_DIR", tmpdir, true);
    g_assert_cmpint(pfbd_volume_open(name, NULL, &vol, NULL), ==, 0);
    pfbd_volume_close(vol);
    g_unsetenv("PFBD_POOL_DIR");
    unlink(path);
    check_open_fails(name, NULL, -ENOENT, name);
    g_free(path);
}

/* ---- null engine ---- */

static void test_null_size_suffixes(void)
{
    static const struct {
        const char *spec;
        uint64_t size;
    } cases[] = {
        { "null:4096", 4096 },
        { "null:1K", 1024 },
        { "null:2k", 2048 },
        { "null:3M", 3ull << 20 },
        { "null:1G", 1ull << 30 },
        { "null:5T", 5ull << 40 },
    };
    PfbdVolumeInfo info;
    PfbdVolume *vol;
    size_t i;

    for (i = 0; i < G_N_ELEMENTS(cases); i++) {
        g_assert_cmpint(pfbd_volume_open(cases[i].spec, NULL, &vol, NULL),
                        ==, 0);
        pfbd_volume_get_info(vol, &info);
        g_assert_cmpstr(info.engine, ==, "null");
        g_assert_cmpuint(info.size, ==, cases[i].size);
        g_assert_cmpuint(info.block_size, ==, 512);
        g_assert_cmpuint(info.caps, ==, PFBD_CAP_FLUSH | PFBD_CAP_DISCARD |
                         PFBD_CAP_WRITE_ZEROES);
        g_assert_false(info.read_only);
        pfbd_volume_close(vol);
    }
}

static void test_null_bad_size(void)
{
    static const char *const specs[] = {
        "null:", "null:abc", "null:1X", "null:1KB", "null:-1", "null:0",
        "null:1000", "null:99999999999999999999", "null:20000000T",
    };
    size_t i;

    for (i = 0; i < G_N_ELEMENTS(specs); i++) {
        check_open_fails(specs[i], NULL, -EINVAL, specs[i]);
    }
}

static void test_null_every_op(void)
{
    TestVolume tv = { 0 };
    uint8_t buf[4096];
    struct iovec iov = { .iov_base = buf, .iov_len = sizeof(buf) };

    open_spec(&tv, "null:1M", false, 4);
    memset(buf, 0x5a, sizeof(buf));
    g_assert_cmpint(do_req(tv.q, PFBD_OP_WRITE, 0, &iov, 1, 4096,
                           PFBD_REQ_FUA), ==, 0);
    g_assert_cmpint(do_req(tv.q, PFBD_OP_READ, MiB - 4096, &iov, 1, 4096, 0),
                    ==, 0);
    /* Reads do not touch the data */
    g_assert_cmpint(buf[0], ==, 0x5a);
    g_assert_cmpint(do_req(tv.q, PFBD_OP_FLUSH, 0, NULL, 0, 0, 0), ==, 0);
    g_assert_cmpint(do_req(tv.q, PFBD_OP_DISCARD, 0, NULL, 0, MiB, 0), ==, 0);
    g_assert_cmpint(do_req(tv.q, PFBD_OP_WRITE_ZEROES, 512, NULL, 0, 1024,
                           PFBD_REQ_UNMAP), ==, 0);
    close_volume(&tv);
}

static void test_null_completes_at_flush(void)
{
    TestVolume tv = { 0 };
    Completion c[3] = { { 0 } };
    struct pollfd pfd;
    unsigned sent;
    int i;

    open_spec(&tv, "null:1M", false, 3);
    pfd = (struct pollfd) { .fd = pfbd_queue_get_fd(tv.q), .events = POLLIN };
    for (i = 0; i < 3; i++) {
        g_assert_cmpint(pfbd_submit(tv.q, PFBD_OP_FLUSH, 0, NULL, 0, 0, 0,
                                    complete_cb, &c[i]), ==, 0);
    }
    g_assert_false(pfbd_queue_completions_ready(tv.q));
    g_assert_cmpint(poll(&pfd, 1, 0), ==, 0);

    /*
     * They complete in the engine submit, without a wakeup: the same call
     * takes them, up to its maximum
     */
    g_assert_cmpuint(do_io(tv.q, 0, 2, &sent), ==, 2);
    g_assert_cmpuint(sent, ==, 1);
    g_assert_cmpuint(pfbd_queue_inflight(tv.q), ==, 1);
    g_assert_true(pfbd_queue_completions_ready(tv.q));
    g_assert_cmpint(poll(&pfd, 1, 0), ==, 0);
    g_assert_cmpuint(do_io(tv.q, 0, 0, &sent), ==, 1);
    g_assert_cmpuint(sent, ==, 0);
    for (i = 0; i < 3; i++) {
        g_assert_cmpint(c[i].count, ==, 1);
        g_assert_cmpint(c[i].ret, ==, 0);
    }
    g_assert_false(pfbd_queue_completions_ready(tv.q));
    close_volume(&tv);
}

#define NULL_DELAY_NS (50 * 1000 * 1000)

/*
 * write_nsec=N: writes take their own time and complete out of order with
 * the rest; mem_align=N: misaligned buffers are bounced, within the
 * queue's bounce limit
 */
static void test_null_write_nsec_mem_align(void)
{
    TestVolume tv = { 0 };
    Completion c[5] = { { 0 } };
    uint8_t *mem = alloc_aligned(3 * 8192);
    struct iovec w = { mem + 1, 4096 }, r = { mem + 8192 + 1, 4096 };
    struct iovec big = { mem + 1, 2 * 8192 };
    struct pollfd pfd;
    int i;

    open_spec(&tv, "null:1M:completion_nsec=1000000:write_nsec=200000000:"
              "mem_align=4096", false, 5);
    g_assert_cmpuint(tv.info.mem_align, ==, 4096);
    pfd = (struct pollfd) { .fd = pfbd_queue_get_fd(tv.q), .events = POLLIN };
    pfbd_queue_set_bounce_limit(tv.q, 8192);

    /* The write first, then the read: the read completes first */
    g_assert_cmpint(pfbd_submit(tv.q, PFBD_OP_WRITE, 0, &w, 1, 4096, 0,
                                complete_cb, &c[0]), ==, 0);
    g_assert_cmpint(pfbd_submit(tv.q, PFBD_OP_READ, 0, &r, 1, 4096, 0,
                                complete_cb, &c[1]), ==, 0);
    /* Both bounced: the limit has no room for a third, which waits */
    g_assert_cmpint(pfbd_submit(tv.q, PFBD_OP_READ, 0, &r, 1, 4096, 0,
                                complete_cb, &c[2]), ==, 0);
    g_assert_cmpint(trace_seen.bounce, ==, 2);
    g_assert_cmpint(trace_seen.bounce_fresh, ==, 2);
    g_assert_cmpint(trace_seen.waits, ==, 1);
    g_assert_cmpuint(pfbd_queue_inflight(tv.q), ==, 3);
    g_assert_cmpuint(do_io(tv.q, 0, 0, NULL), ==, 0);

    /* The read completes; its room goes to the one that waited */
    g_assert_cmpint(poll(&pfd, 1, 10000), ==, 1);
    g_assert_cmpuint(do_io(tv.q, 0, 0, NULL), ==, 1);
    g_assert_cmpint(c[1].count, ==, 1);
    g_assert_cmpint(c[0].count, ==, 0);
    g_assert_cmpint(trace_seen.bounce, ==, 3);
    g_assert_cmpuint(pfbd_queue_inflight(tv.q), ==, 2);

    /*
     * A larger one waits for the write too, and one behind it waits in
     * turn, though its room would do
     */
    g_assert_cmpint(pfbd_submit(tv.q, PFBD_OP_READ, 0, &big, 1, 2 * 8192, 0,
                                complete_cb, &c[3]), ==, 0);
    g_assert_cmpint(poll(&pfd, 1, 10000), ==, 1);
    g_assert_cmpuint(do_io(tv.q, 0, 0, NULL), ==, 1);
    g_assert_cmpint(c[2].count, ==, 1);
    g_assert_cmpint(pfbd_submit(tv.q, PFBD_OP_READ, 0, &r, 1, 4096, 0,
                                complete_cb, &c[4]), ==, 0);
    g_assert_cmpint(trace_seen.waits, ==, 3);
    g_assert_cmpuint(trace_seen.max_waiting, ==, 2);
    g_assert_cmpint(trace_seen.bounce, ==, 3);
    pfbd_queue_drain(tv.q);
    for (i = 0; i < 5; i++) {
        g_assert_cmpint(c[i].count, ==, 1);
        g_assert_cmpint(c[i].ret, ==, 0);
    }
    /* Each bounced request was traced once */
    g_assert_cmpint(trace_seen.bounce, ==, 5);
    g_assert_cmpuint(trace_seen.bounce_bytes, ==, 4 * 4096 + 2 * 8192);
    free(mem);
    close_volume(&tv);
}

/*
 * completion_nsec=N: requests stay in flight N ns after the flush that
 * sent them, then the fd becomes readable; reap clears it.
 */
static void test_null_completion_nsec(void)
{
    TestVolume tv = { 0 };
    Completion c[3] = { { 0 } };
    struct pollfd pfd;
    gint64 sent_us;
    unsigned sent;
    int i;

    open_spec(&tv, "null:1M:completion_nsec=50000000", false, 3);
    g_assert_cmpuint(tv.info.size, ==, MiB);
    pfd = (struct pollfd) { .fd = pfbd_queue_get_fd(tv.q), .events = POLLIN };
    for (i = 0; i < 3; i++) {
        g_assert_cmpint(pfbd_submit(tv.q, PFBD_OP_FLUSH, 0, NULL, 0, 0, 0,
                                    complete_cb, &c[i]), ==, 0);
    }
    sent_us = g_get_monotonic_time();
    g_assert_cmpuint(do_io(tv.q, 0, 0, &sent), ==, 0);
    g_assert_cmpuint(sent, ==, 1);
    /* In flight until the delay has passed */
    g_assert_false(pfbd_queue_completions_ready(tv.q));
    g_assert_cmpuint(do_io(tv.q, 0, 0, &sent), ==, 0);
    g_assert_cmpuint(sent, ==, 0);
    g_assert_cmpuint(pfbd_queue_inflight(tv.q), ==, 3);
    g_assert_cmpint(poll(&pfd, 1, 0), ==, 0);

    /* Then the fd says so, and stays readable while some are left */
    g_assert_cmpint(poll(&pfd, 1, 10000), ==, 1);
    g_assert_cmpint(g_get_monotonic_time() - sent_us, >=,
                    NULL_DELAY_NS / 1000);
    g_assert_true(pfbd_queue_completions_ready(tv.q));
    g_assert_cmpuint(do_io(tv.q, 0, 2, NULL), ==, 2);
    g_assert_cmpint(poll(&pfd, 1, 0), ==, 1);
    g_assert_cmpuint(do_io(tv.q, 0, 0, NULL), ==, 1);
    g_assert_cmpint(poll(&pfd, 1, 0), ==, 0);
    for (i = 0; i < 3; i++) {
        g_assert_cmpint(c[i].count, ==, 1);
        g_assert_cmpint(c[i].ret, ==, 0);
    }

    /* Drain waits for the delay */
    g_assert_cmpint(pfbd_submit(tv.q, PFBD_OP_FLUSH, 0, NULL, 0, 0, 0,
                                complete_cb, &c[0]), ==, 0);
    sent_us = g_get_monotonic_time();
    pfbd_queue_drain(tv.q);
    g_assert_cmpint(g_get_monotonic_time() - sent_us, >=,
                    NULL_DELAY_NS / 1000);
    g_assert_cmpint(c[0].count, ==, 2);
    g_assert_cmpint(poll(&pfd, 1, 0), ==, 0);
    close_volume(&tv);
}

/* complete_errno=N: every request completes with -N */
static void test_null_complete_errno(void)
{
    TestVolume tv = { 0 };

    open_spec(&tv, "null:1M:complete_errno=22", false, 2);
    g_assert_cmpint(do_req(tv.q, PFBD_OP_FLUSH, 0, NULL, 0, 0, 0), ==,
                    -EINVAL);
    close_volume(&tv);
}

/* flush_eagain=N: the first N flushes fail and keep the requests */
static void test_null_flush_eagain(void)
{
    TestVolume tv = { 0 };
    Completion c = { 0 };
    PfbdIoCounts counts;

    open_spec(&tv, "null:1M:flush_eagain=2:completion_nsec=0", false, 2);
    /* Nothing to send: no engine submit, so no failure */
    g_assert_cmpuint(do_io(tv.q, 0, 0, NULL), ==, 0);
    g_assert_cmpint(pfbd_submit(tv.q, PFBD_OP_FLUSH, 0, NULL, 0, 0, 0,
                                complete_cb, &c), ==, 0);
    g_assert_cmpint(pfbd_queue_do_io(tv.q, 0, 0, &counts), ==, -EAGAIN);
    g_assert_cmpuint(counts.sent + counts.completed, ==, 0);
    g_assert_cmpint(pfbd_queue_do_io(tv.q, 0, 0, &counts), ==, -EAGAIN);
    g_assert_false(pfbd_queue_completions_ready(tv.q));
    g_assert_cmpint(pfbd_queue_do_io(tv.q, 0, 0, &counts), ==, 0);
    g_assert_cmpuint(counts.sent, ==, 1);
    g_assert_cmpuint(counts.completed, ==, 1);
    g_assert_cmpint(c.count, ==, 1);
    close_volume(&tv);
}

static void test_null_bad_options(void)
{
    static const char *const specs[] = {
        "null:1M:", "null:1M:completion_nsec=", "null:1M:completion_nsec=x",
        "null:1M:completion_nsec=60000000001", "null:1M:completion_nsec=1:",
        "null:1M:delay=1", "null::completion_nsec=1",
        "null:1M:flush_eagain=1000001", "null:1M:flush_eagain=1x",
        "null:1M:complete_errno=4096", "null:1M:mem_align=3000",
        "null:1M:write_nsec=60000000001",
    };
    size_t i;

    for (i = 0; i < G_N_ELEMENTS(specs); i++) {
        check_open_fails(specs[i], NULL, -EINVAL, specs[i]);
    }
}

/* ---- file engine: opening ---- */

static void test_file_open_info(void)
{
    TestVolume tv = { 0 };

    open_file(&tv, NULL, 8 * MiB + 4096, false, 1);
    g_assert_cmpstr(tv.info.engine, ==, "file");
    g_assert_cmpuint(tv.info.size, ==, 8 * MiB + 4096);
    g_assert_cmpuint(tv.info.block_size, >=, 512);
    g_assert_cmpuint(tv.info.size % tv.info.block_size, ==, 0);
    g_assert_cmpuint(tv.info.mem_align, >=, 1);
    g_assert_cmpuint(tv.info.caps, ==, PFBD_CAP_FLUSH | PFBD_CAP_DISCARD |
                     PFBD_CAP_WRITE_ZEROES);
    g_assert_false(tv.info.read_only);
    g_assert_cmpint(pfbd_queue_get_fd(tv.q), >=, 0);
    close_volume(&tv);
}

static void test_file_size_rounded_down(void)
{
    TestVolume tv = { 0 };

    open_file(&tv, NULL, MiB + 4096 + 100, false, 1);
    g_assert_cmpuint(tv.info.size, ==,
                     (MiB + 4096 + 100) / tv.info.block_size *
                     tv.info.block_size);
    close_volume(&tv);
}

static void test_file_refresh_size(void)
{
    TestVolume tv = { 0 };

    open_file(&tv, NULL, MiB, false, 1);
    g_assert_cmpint(truncate(tv.path, 2 * MiB), ==, 0);
    g_assert_cmpint(pfbd_volume_refresh_size(tv.vol), ==, 0);
    pfbd_volume_get_info(tv.vol, &tv.info);
    g_assert_cmpuint(tv.info.size, ==, 2 * MiB);
    close_volume(&tv);
}

static void test_file_missing(void)
{
    char *spec = g_strdup_printf("file:%s/does-not-exist", tmpdir);

    check_open_fails(spec, NULL, -ENOENT, "does-not-exist");
    check_open_fails(spec, NULL, -ENOENT, strerror(ENOENT));
    g_free(spec);
}

static void test_file_directory(void)
{
    PfbdOpenOptions ro = { .read_only = true };
    char *spec = g_strdup_printf("file:%s", tmpdir);

    check_open_fails(spec, NULL, -EINVAL, tmpdir);
    check_open_fails(spec, &ro, -EINVAL, "not a regular file or block");
    g_free(spec);
}

static void test_file_fifo(void)
{
    char *path = g_strdup_printf("%s/fifo%u", tmpdir, file_counter++);
    char *spec = g_strdup_printf("file:%s", path);

    g_assert_cmpint(mkfifo(path, 0600), ==, 0);
    check_open_fails(spec, NULL, -EINVAL, "not a regular file or block");
    unlink(path);
    g_free(spec);
    g_free(path);
}

static void test_file_too_small(void)
{
    char *path = make_file(NULL, 100);
    char *spec = g_strdup_printf("file:%s", path);

    check_open_fails(spec, NULL, -EINVAL, "smaller than one block");
    unlink(path);
    g_free(spec);
    g_free(path);
}

/* ---- file engine: data ---- */

static void test_file_write_read(void)
{
    TestVolume tv = { 0 };

    open_file(&tv, NULL, 4 * MiB, false, 4);
    check_write_read(tv.q, 0, 4096, 0);
    check_write_read(tv.q, MiB + 4096, 128 * 1024, 0);
    check_write_read(tv.q, 4 * MiB - 8192, 8192, 0);
    check_write_read(tv.q, 8192, 2 * MiB, 0);
    close_volume(&tv);
}

static void test_file_write_fua(void)
{
    TestVolume tv = { 0 };

    open_file(&tv, NULL, MiB, false, 1);
    check_write_read(tv.q, 65536, 65536, PFBD_REQ_FUA);
    close_volume(&tv);
}

static void test_file_readv_writev(void)
{
    TestVolume tv = { 0 };
    uint8_t *wbuf = alloc_aligned(16384);
    uint8_t *rbuf = alloc_aligned(16384);
    struct iovec iov[3] = {
        { wbuf, 4096 }, { wbuf + 4096, 8192 }, { wbuf + 12288, 4096 },
    };

    open_file(&tv, NULL, MiB, false, 1);
    fill_pattern(wbuf, 16384, 9);
    memset(rbuf, 0xaa, 16384);
    g_assert_cmpint(do_req(tv.q, PFBD_OP_WRITE, 4096, iov, 3, 16384, 0),
                    ==, 0);
    /* Read it back through a differently split vector */
    iov[0] = (struct iovec) { rbuf + 8192, 8192 };
    iov[1] = (struct iovec) { rbuf, 4096 };
    iov[2] = (struct iovec) { rbuf + 4096, 4096 };
    g_assert_cmpint(do_req(tv.q, PFBD_OP_READ, 4096, iov, 3, 16384, 0),
                    ==, 0);
    g_assert_true(memcmp(wbuf, rbuf + 8192, 8192) == 0);
    g_assert_true(memcmp(wbuf + 8192, rbuf, 8192) == 0);
    free(wbuf);
    free(rbuf);
    close_volume(&tv);
}

static void test_file_flush(void)
{
    TestVolume tv = { 0 };

    open_file(&tv, NULL, MiB, false, 1);
    check_write_read(tv.q, 0, 4096, 0);
    g_assert_cmpint(do_req(tv.q, PFBD_OP_FLUSH, 0, NULL, 0, 0, 0), ==, 0);
    close_volume(&tv);
}

static void test_file_discard(void)
{
    TestVolume tv = { 0 };

    open_file(&tv, NULL, 4 * MiB, false, 1);
    check_zeroing(tv.q, PFBD_OP_DISCARD, MiB, MiB, 0);
    close_volume(&tv);
}

static void test_file_write_zeroes(void)
{
    TestVolume tv = { 0 };

    open_file(&tv, NULL, 4 * MiB, false, 1);
    check_zeroing(tv.q, PFBD_OP_WRITE_ZEROES, 8192, 65536, 0);
    close_volume(&tv);
}

static void test_file_write_zeroes_unmap(void)
{
    TestVolume tv = { 0 };

    open_file(&tv, NULL, 4 * MiB, false, 1);
    check_zeroing(tv.q, PFBD_OP_WRITE_ZEROES, MiB, 2 * MiB, PFBD_REQ_UNMAP);
    close_volume(&tv);
}

/* Buffers whose address or length is not a multiple of mem_align */
static void test_file_misaligned_buffers(void)
{
    TestVolume tv = { 0 };
    uint8_t *wmem = alloc_aligned(65536 + 4096);
    uint8_t *rmem = alloc_aligned(65536 + 4096);
    uint8_t *wbuf = wmem + 1;
    uint8_t *rbuf = rmem + 3;
    struct iovec wiov[3] = {
        { wbuf, 100 }, { wbuf + 100, 4000 }, { wbuf + 4100, 65536 - 4100 },
    };
    struct iovec riov[2] = {
        { rbuf, 7 }, { rbuf + 7, 65536 - 7 },
    };

    open_file(&tv, NULL, MiB, false, 2);
    fill_pattern(wbuf, 65536, 5);
    memset(rbuf, 0xaa, 65536);
    g_assert_cmpint(do_req(tv.q, PFBD_OP_WRITE, 8192, wiov, 3, 65536, 0),
                    ==, 0);
    g_assert_cmpint(do_req(tv.q, PFBD_OP_READ, 8192, riov, 2, 65536, 0),
                    ==, 0);
    g_assert_true(memcmp(wbuf, rbuf, 65536) == 0);

    /* And through an aligned buffer, to see what reached the file */
    memset(rmem, 0xaa, 65536);
    g_assert_cmpint(do_rw(tv.q, PFBD_OP_READ, 8192, rmem, 65536, 0), ==, 0);
    g_assert_true(memcmp(wbuf, rmem, 65536) == 0);
    free(wmem);
    free(rmem);
    close_volume(&tv);
}

/*
 * pfbd_queue_set_bounce_limit(): misaligned requests over the limit wait
 * while others hold bounce buffers, and those behind them too; one
 * request larger than the limit goes through when none is held.
 */
static void test_file_bounce_limit(void)
{
    TestVolume tv = { 0 };
    char *mnt = mount_fs("tmpfs", "size=4m");
    uint8_t *mem = alloc_aligned(3 * 8192 + 4096);
    struct iovec odd[3], big, aligned = { mem, 4096 };
    Completion c[5] = { { 0 } };
    int i;

    /* tmpfs takes O_DIRECT: misaligned buffers are bounced */
    open_file(&tv, mnt, MiB, false, 8);
    g_assert_cmpuint(tv.info.mem_align, >, 1);
    pfbd_queue_set_bounce_limit(tv.q, 8192);
    for (i = 0; i < 3; i++) {
        odd[i] = (struct iovec) { mem + 1 + i * 4096, 4096 };
    }
    g_assert_cmpint(pfbd_submit(tv.q, PFBD_OP_READ, 0, &odd[0], 1, 4096, 0,
                                complete_cb, &c[0]), ==, 0);
    g_assert_cmpint(pfbd_submit(tv.q, PFBD_OP_READ, 4096, &odd[1], 1, 4096,
                                0, complete_cb, &c[1]), ==, 0);
    g_assert_cmpint(trace_seen.waits, ==, 0);
    g_assert_cmpint(pfbd_submit(tv.q, PFBD_OP_READ, 8192, &odd[2], 1, 4096,
                                0, complete_cb, &c[2]), ==, 0);
    g_assert_cmpint(trace_seen.waits, ==, 1);
    /* An aligned one needs no bounce buffer, but keeps the order */
    g_assert_cmpint(pfbd_submit(tv.q, PFBD_OP_READ, 8192, &aligned, 1, 4096,
                                0, complete_cb, &c[3]), ==, 0);
    g_assert_cmpint(trace_seen.waits, ==, 2);
    g_assert_cmpint(trace_seen.bounce, ==, 2);
    pfbd_queue_drain(tv.q);
    for (i = 0; i < 4; i++) {
        g_assert_cmpint(c[i].count, ==, 1);
        g_assert_cmpint(c[i].ret, ==, 0);
    }
    g_assert_cmpint(trace_seen.bounce, ==, 3);

    /* Nothing held: a request of three times the limit is taken */
    big = (struct iovec) { mem + 1, 3 * 8192 };
    g_assert_cmpint(pfbd_submit(tv.q, PFBD_OP_READ, 0, &big, 1, 3 * 8192, 0,
                                complete_cb, &c[4]), ==, 0);
    g_assert_cmpint(pfbd_submit(tv.q, PFBD_OP_READ, 8192, &odd[2], 1, 4096,
                                0, complete_cb, &c[2]), ==, 0);
    g_assert_cmpint(trace_seen.waits, ==, 3);
    g_assert_cmpint(trace_seen.bounce, ==, 4);
    pfbd_queue_drain(tv.q);
    g_assert_cmpint(c[4].count, ==, 1);
    g_assert_cmpint(c[4].ret, ==, 0);
    g_assert_cmpint(c[2].count, ==, 2);
    g_assert_cmpint(c[2].ret, ==, 0);
    g_assert_cmpint(trace_seen.bounce, ==, 5);
    free(mem);
    close_volume(&tv);
    unmount_fs(mnt);
}

/* This process's resident memory, in KiB */
static long rss_kib(void)
{
    g_autofree char *text = NULL;
    const char *p;

    g_assert_true(g_file_get_contents("/proc/self/status", &text, NULL,
                                      NULL));
    p = strstr(text, "VmRSS:");
    g_assert_nonnull(p);
    return atol(p + strlen("VmRSS:"));
}

/*
 * What counts against the bounce limit is what a request maps: a small
 * bounced request does not take over the large mapping that an earlier
 * one left for reuse.  It used to, with only its own length counted, so
 * that a guest pairing small writes on slow storage with large reads
 * made every write in flight hold a read's mapping: QEMU grew by 800 MiB
 * on one queue where the limit saw 4 KiB per write.
 */
static void test_file_bounce_mapping_counted(void)
{
    TestVolume tv = { 0 };
    char *mnt = mount_fs("tmpfs", "size=64m");
    size_t big = 16 * MiB;
    uint8_t *mem = alloc_aligned(big + 8192);
    uint8_t *check = alloc_aligned(4096);
    struct iovec rd = { mem + 1, big }, wr = { mem + 1, 4096 };
    Completion c[2] = { { 0 } };
    long kept, now;

    open_file(&tv, mnt, 32 * MiB, false, 4);
    g_assert_cmpuint(tv.info.mem_align, >, 1);
    pfbd_queue_set_bounce_limit(tv.q, big);
    memset(mem, 0, big + 8192);

    /* A large bounced read; its request keeps the mapping, resident */
    g_assert_cmpint(pfbd_submit(tv.q, PFBD_OP_READ, 0, &rd, 1, big, 0,
                                complete_cb, &c[0]), ==, 0);
    pfbd_queue_drain(tv.q);
    g_assert_cmpint(c[0].count, ==, 1);
    g_assert_cmpint(c[0].ret, ==, 0);
    kept = rss_kib();

    /* A small bounced write takes that request, and maps 4 KiB of its own */
    fill_pattern(mem + 1, 4096, 9);
    g_assert_cmpint(pfbd_submit(tv.q, PFBD_OP_WRITE, 8192, &wr, 1, 4096, 0,
                                complete_cb, &c[1]), ==, 0);
    now = rss_kib();
    g_test_message("RSS with the read's mapping kept %ld KiB, with a 4 KiB "
                   "write in flight %ld KiB", kept, now);
    g_assert_cmpint(kept - now, >, big / 2 / 1024);
    pfbd_queue_drain(tv.q);
    g_assert_cmpint(c[1].count, ==, 1);
    g_assert_cmpint(c[1].ret, ==, 0);
    g_assert_cmpint(do_rw(tv.q, PFBD_OP_READ, 8192, check, 4096, 0), ==, 0);
    g_assert_true(memcmp(check, mem + 1, 4096) == 0);
    free(check);
    free(mem);
    close_volume(&tv);
    unmount_fs(mnt);
}

/*
 * A loop device of 4 KiB logical blocks over a new file of @size bytes;
 * returns its path (losetup -d it when done)
 */
static char *loop_device_4k(uint64_t size, char **file)
{
    g_autofree char *cmd = NULL;
    g_autofree char *err = NULL;
    char *out = NULL;
    int status;

    *file = make_file(NULL, size);
    cmd = g_strdup_printf("losetup --find --show --sector-size 4096 "
                          "--direct-io=on %s", *file);
    g_assert_true(g_spawn_command_line_sync(cmd, &out, &err, &status, NULL));
    if (status) {
        g_test_message("%s: %s", cmd, err);
    }
    g_assert_cmpint(status, ==, 0);
    g_strchomp(out);
    return out;
}

static void loop_device_remove(const char *dev, char *file)
{
    g_autofree char *cmd = g_strdup_printf("losetup -d %s", dev);
    int status;

    g_assert_true(g_spawn_command_line_sync(cmd, NULL, NULL, &status, NULL));
    g_assert_cmpint(status, ==, 0);
    unlink(file);
    g_free(file);
}

/*
 * O_DIRECT takes buffers whose addresses are multiples of the memory
 * alignment and whose lengths are multiples of the logical block size:
 * Linux 6.1 refuses a segment of another length with -EINVAL (file-posix
 * bounces on the same rule).  The file engine compared the lengths with
 * the memory alignment, so that two 2 KiB segments on a device of 4 KiB
 * blocks went to the kernel as they were.  They are bounced now: with
 * the queue's bounce limit held by another request, they wait.
 */
static void test_file_segment_len_block_size(void)
{
    TestVolume tv = { 0 };
    char *file;
    g_autofree char *dev = loop_device_4k(4 * MiB, &file);
    g_autofree char *spec = g_strdup_printf("file:%s", dev);
    uint8_t *mem = alloc_aligned(4 * 4096);
    uint8_t *check = alloc_aligned(4096);
    struct iovec odd = { mem + 1, 4096 };
    struct iovec two[2] = { { mem + 4096, 2048 }, { mem + 8192, 2048 } };
    Completion c[3] = { { 0 } };

    open_spec(&tv, spec, false, 4);
    g_assert_cmpuint(tv.info.block_size, ==, 4096);
    g_assert_cmpuint(tv.info.mem_align, <=, 2048);
    pfbd_queue_set_bounce_limit(tv.q, 4096);

    /* An odd address takes the limit; the 2 KiB segments must wait */
    g_assert_cmpint(pfbd_submit(tv.q, PFBD_OP_READ, 0, &odd, 1, 4096, 0,
                                complete_cb, &c[0]), ==, 0);
    fill_pattern(mem + 4096, 2048, 4);
    fill_pattern(mem + 8192, 2048, 5);
    g_assert_cmpint(pfbd_submit(tv.q, PFBD_OP_WRITE, 8192, two, 2, 4096, 0,
                                complete_cb, &c[1]), ==, 0);
    g_assert_cmpint(trace_seen.waits, ==, 1);
    pfbd_queue_drain(tv.q);
    g_assert_cmpint(c[0].ret, ==, 0);
    g_assert_cmpint(trace_seen.bounce, ==, 2);
    g_assert_cmpint(c[1].count, ==, 1);
    g_assert_cmpint(c[1].ret, ==, 0);

    /* What reached the device, and the same read back through segments */
    g_assert_cmpint(do_rw(tv.q, PFBD_OP_READ, 8192, check, 4096, 0), ==, 0);
    g_assert_true(memcmp(check, mem + 4096, 2048) == 0);
    g_assert_true(memcmp(check + 2048, mem + 8192, 2048) == 0);
    memset(mem + 4096, 0, 2048);
    memset(mem + 8192, 0, 2048);
    g_assert_cmpint(pfbd_submit(tv.q, PFBD_OP_READ, 8192, two, 2, 4096, 0,
                                complete_cb, &c[2]), ==, 0);
    pfbd_queue_drain(tv.q);
    g_assert_cmpint(c[2].ret, ==, 0);
    g_assert_true(memcmp(check, mem + 4096, 2048) == 0);
    g_assert_true(memcmp(check + 2048, mem + 8192, 2048) == 0);
    free(check);
    free(mem);
    close_volume(&tv);
    loop_device_remove(dev, file);
}

/*
 * Send the SQEs queued in @ring, as io_uring_submit() does, but have the
 * kernel take only the first: as io_uring_enter() does when it cannot
 * allocate requests for the rest, or stops at an SQE it refuses
 */
static int submit_one(struct io_uring *ring)
{
    ring->sq.sqe_head = ring->sq.sqe_tail;
    io_uring_smp_store_release(ring->sq.ktail, ring->sq.sqe_tail);
    return syscall(__NR_io_uring_enter, ring->ring_fd, 1, 0, 0, NULL, 0);
}

/*
 * The kernel takes some of the SQEs a flush sends and leaves the others
 * in the ring.  The engine's flush used to report them sent (a positive
 * count), and the device then waited for completions that nothing would
 * bring until the guest kicked again.  pfbd_queue_do_io() reports -EAGAIN
 * now (the device tries again shortly), and a later call sends the rest.
 */
static void test_file_partial_submit(void)
{
    TestVolume tv = { 0 };
    uint8_t *mem = alloc_aligned(6 * 4096);
    struct iovec iov[3];
    Completion c[3] = { { 0 } };
    int i;

    open_file(&tv, NULL, MiB, false, 4);
    fill_pattern(mem, 3 * 4096, 7);
    for (i = 0; i < 3; i++) {
        /* The kernel reads each iovec when it takes the SQE */
        iov[i] = (struct iovec) { mem + i * 4096, 4096 };
        g_assert_cmpint(pfbd_submit(tv.q, PFBD_OP_WRITE, i * 4096, &iov[i],
                                    1, 4096, 0, complete_cb, &c[i]), ==, 0);
    }
    pfbd_file_queue_set_submit_fn(tv.q, submit_one);
    g_assert_cmpint(pfbd_queue_do_io(tv.q, 0, 0, NULL), ==, -EAGAIN);
    g_assert_cmpint(pfbd_queue_do_io(tv.q, 0, 0, NULL), ==, -EAGAIN);
    g_assert_cmpint(pfbd_queue_do_io(tv.q, 0, 0, NULL), ==, 0);
    pfbd_file_queue_set_submit_fn(tv.q, NULL);
    pfbd_queue_drain(tv.q);
    for (i = 0; i < 3; i++) {
        g_assert_cmpint(c[i].count, ==, 1);
        g_assert_cmpint(c[i].ret, ==, 0);
    }
    g_assert_cmpint(do_rw(tv.q, PFBD_OP_READ, 0, mem + 3 * 4096, 3 * 4096,
                          0), ==, 0);
    g_assert_true(memcmp(mem, mem + 3 * 4096, 3 * 4096) == 0);
    free(mem);
    close_volume(&tv);
}

typedef struct OtherThread {
    PfbdQueue *q;
    void *buf;
    Completion c;
    int ret;
    bool drain;
} OtherThread;

/*
 * Submit a read on the queue in another thread, then drain there, or
 * (!@drain) run pfbd_queue_do_io() there until the read alone completes
 */
static void *other_thread_read(void *opaque)
{
    OtherThread *t = opaque;
    struct iovec iov = { t->buf, 4096 };

    t->ret = pfbd_submit(t->q, PFBD_OP_READ, 8192, &iov, 1, 4096, 0,
                         complete_cb, &t->c);
    if (t->ret == 0 && t->drain) {
        pfbd_queue_drain(t->q);
    } else if (t->ret == 0) {
        /* (It cannot send what the other thread queued either) */
        pfbd_queue_do_io(t->q, 1, 1, NULL);
    }
    return NULL;
}

/*
 * A queue with requests in flight taken over by another thread: refused
 * (-EEXIST) by default, where the file engine binds the queue's ring to
 * its thread; served with PfbdOpenOptions.any_thread, as a QEMU main loop
 * needs, where any thread holding the BQL may run the queue.
 */
static void test_file_any_thread(void)
{
    char *path = make_file(NULL, MiB);
    char *spec = g_strdup_printf("file:%s", path);
    uint8_t *buf = alloc_aligned(2 * 4096);
    int i;

    for (i = 0; i < 2; i++) {
        PfbdOpenOptions opts = {
            .any_thread = i == 1,
            .trace = &trace_ops,
            .trace_opaque = &trace_seen,
        };
        struct iovec iov = { buf, 4096 };
        OtherThread t = { .buf = buf + 4096, .drain = opts.any_thread };
        Completion c = { 0 };
        PfbdVolume *vol;
        pthread_t th;

        memset(&trace_seen, 0, sizeof(trace_seen));
        g_assert_cmpint(pfbd_volume_open(spec, &opts, &vol, NULL), ==, 0);
        g_assert_cmpint(pfbd_queue_new(vol, 4, &t.q), ==, 0);
        g_assert_cmpint(pfbd_submit(t.q, PFBD_OP_READ, 0, &iov, 1, 4096, 0,
                                    complete_cb, &c), ==, 0);
        /* In flight (in the engine's ring, not sent yet) */
        g_assert_cmpuint(pfbd_queue_inflight(t.q), ==, 1);
        g_assert_cmpint(pthread_create(&th, NULL, other_thread_read, &t),
                        ==, 0);
        g_assert_cmpint(pthread_join(th, NULL), ==, 0);
        if (opts.any_thread) {
            g_assert_cmpint(t.ret, ==, 0);
            g_assert_cmpint(t.c.count, ==, 1);
            g_assert_cmpint(c.count, ==, 1);
            /* One ring for every thread */
            g_assert_cmpint(trace_seen.ring_busy, ==, 0);
            g_assert_cmpint(trace_seen.ring_moved, ==, 0);
        } else {
            /* The engine refused it: its callback says why */
            g_assert_cmpint(t.ret, ==, 0);
            g_assert_cmpint(t.c.count, ==, 1);
            g_assert_cmpint(t.c.ret, ==, -EEXIST);
            /* Its submit, and the send of the other's request it tried */
            g_assert_cmpint(trace_seen.ring_busy, ==, 2);
            pfbd_queue_drain(t.q);
            g_assert_cmpint(c.count, ==, 1);
            /* Idle, the queue moves: a new ring for the other thread */
            t.drain = true;
            g_assert_cmpint(pthread_create(&th, NULL, other_thread_read, &t),
                            ==, 0);
            g_assert_cmpint(pthread_join(th, NULL), ==, 0);
            g_assert_cmpint(t.ret, ==, 0);
            g_assert_cmpint(t.c.count, ==, 2);
            g_assert_cmpint(t.c.ret, ==, 0);
            g_assert_cmpint(trace_seen.ring_moved, ==, 1);
        }
        g_assert_cmpuint(pfbd_queue_inflight(t.q), ==, 0);
        pfbd_queue_free(t.q);
        pfbd_volume_close(vol);
    }
    free(buf);
    unlink(path);
    g_free(path);
    g_free(spec);
}

typedef struct IowqThread {
    PfbdQueue *q;
    void *buf;
    int ret;
    int workers;            /* this thread's io_uring workers seen */
    int workers_on_cpu0;    /* those allowed on CPU 0 only */
} IowqThread;

/*
 * Read through the queue in this thread until its io_uring workers
 * (iou-wrk-TID, they live while the thread does) have served requests,
 * then count them and those that may run on CPU 0 only.
 */
static void *iowq_thread_read(void *opaque)
{
    IowqThread *t = opaque;
    char *name = g_strdup_printf("iou-wrk-%d", (int)gettid());
    int i;

    for (i = 0; i < 64 && t->ret == 0; i++) {
        struct iovec iov = { t->buf, 4096 };
        Completion c = { 0 };
        g_autoptr(GDir) dir = NULL;
        const char *tid;

        t->ret = pfbd_submit(t->q, PFBD_OP_READ, i * 4096, &iov, 1, 4096, 0,
                             complete_cb, &c);
        if (t->ret < 0) {
            break;
        }
        pfbd_queue_drain(t->q);
        t->workers = t->workers_on_cpu0 = 0;
        dir = g_dir_open("/proc/self/task", 0, NULL);
        while ((tid = g_dir_read_name(dir))) {
            g_autofree char *comm_path = g_strdup_printf(
                "/proc/self/task/%s/comm", tid);
            g_autofree char *status_path = g_strdup_printf(
                "/proc/self/task/%s/status", tid);
            g_autofree char *comm = NULL, *status = NULL;

            if (!g_file_get_contents(comm_path, &comm, NULL, NULL) ||
                !g_file_get_contents(status_path, &status, NULL, NULL) ||
                strcmp(g_strchomp(comm), name)) {
                continue;
            }
            t->workers++;
            t->workers_on_cpu0 += !!strstr(status,
                                           "\nCpus_allowed_list:\t0\n");
        }
        if (t->workers) {
            break;
        }
    }
    g_free(name);
    return NULL;
}

/*
 * iowq-cpus: the io_uring workers of the thread that submits may run on
 * those CPUs only (tmpfs reads are served by workers)
 */
static void test_file_iowq_cpus(void)
{
    char *path = make_file("/dev/shm", MiB);
    char *spec = g_strdup_printf("file:%s", path);
    uint8_t *buf = alloc_aligned(4096);
    static const char *const bad[] = { "", "x", "1-0", "0,", "-1",
                                       "0-99999" };
    int i;

    for (i = 0; i < 2; i++) {
        PfbdOpenOptions opts = { .iowq_cpus = i ? "0" : NULL };
        IowqThread t = { .buf = buf };
        PfbdVolume *vol;
        pthread_t th;

        g_assert_cmpint(pfbd_volume_open(spec, &opts, &vol, NULL), ==, 0);
        g_assert_cmpint(pfbd_queue_new(vol, 4, &t.q), ==, 0);
        g_assert_cmpint(pthread_create(&th, NULL, iowq_thread_read, &t),
                        ==, 0);
        g_assert_cmpint(pthread_join(th, NULL), ==, 0);
        g_assert_cmpint(t.ret, ==, 0);
        g_assert_cmpint(t.workers, >, 0);
        if (opts.iowq_cpus) {
            g_assert_cmpint(t.workers_on_cpu0, ==, t.workers);
        } else if (sysconf(_SC_NPROCESSORS_ONLN) > 1) {
            g_assert_cmpint(t.workers_on_cpu0, ==, 0);
        }
        pfbd_queue_free(t.q);
        pfbd_volume_close(vol);
    }

    for (i = 0; i < G_N_ELEMENTS(bad); i++) {
        PfbdOpenOptions opts = { .iowq_cpus = bad[i] };
        PfbdVolume *vol = NULL;
        char *err = NULL;

        g_assert_cmpint(pfbd_volume_open(spec, &opts, &vol, &err), ==,
                        -EINVAL);
        g_assert_null(vol);
        g_assert_nonnull(strstr(err, "is not a list of CPUs"));
        free(err);
    }
    {
        /* A CPU the host does not have: refused, not left out silently */
        PfbdOpenOptions opts = { .iowq_cpus = "0,1023" };
        PfbdVolume *vol = NULL;
        char *err = NULL;

        g_assert_cmpint(sysconf(_SC_NPROCESSORS_CONF), <, 1024);
        g_assert_cmpint(pfbd_volume_open(spec, &opts, &vol, &err), ==,
                        -EINVAL);
        g_assert_null(vol);
        g_assert_nonnull(strstr(err, "not online"));
        free(err);
    }
    {
        PfbdOpenOptions opts = { .iowq_cpus = "0" };
        PfbdVolume *vol = NULL;
        char *err = NULL;

        g_assert_cmpint(pfbd_volume_open("null:1M", &opts, &vol, &err), ==,
                        -EINVAL);
        g_assert_null(vol);
        g_assert_nonnull(strstr(err, "file engine only"));
        free(err);
    }
    free(buf);
    unlink(path);
    g_free(path);
    g_free(spec);
}

/* More iovecs than one readv/writev takes */
static void test_file_many_iovecs(void)
{
    const int n = IOV_MAX + 100;
    TestVolume tv = { 0 };
    uint8_t *wbuf = alloc_aligned(n * 512);
    uint8_t *rbuf = alloc_aligned(n * 512);
    struct iovec *iov = g_new(struct iovec, n);
    int i;

    open_file(&tv, NULL, MiB, false, 1);
    fill_pattern(wbuf, n * 512, 11);
    memset(rbuf, 0xaa, n * 512);
    for (i = 0; i < n; i++) {
        iov[i] = (struct iovec) { wbuf + i * 512, 512 };
    }
    g_assert_cmpint(do_req(tv.q, PFBD_OP_WRITE, 0, iov, n, n * 512, 0), ==, 0);
    for (i = 0; i < n; i++) {
        iov[i] = (struct iovec) { rbuf + i * 512, 512 };
    }
    g_assert_cmpint(do_req(tv.q, PFBD_OP_READ, 0, iov, n, n * 512, 0), ==, 0);
    g_assert_true(memcmp(wbuf, rbuf, n * 512) == 0);
    g_free(iov);
    free(wbuf);
    free(rbuf);
    close_volume(&tv);
}

/* Many requests queued, sent with one engine submit */
static void test_file_batch(void)
{
    enum { N = 64, LEN = 8192 };
    TestVolume tv = { 0 };
    uint8_t *wbuf = alloc_aligned(N * LEN);
    uint8_t *rbuf = alloc_aligned(N * LEN);
    struct iovec iov[N];
    Completion c[N] = { { 0 } };
    unsigned sent;
    int i;

    open_file(&tv, NULL, MiB, false, N);
    fill_pattern(wbuf, N * LEN, 13);
    memset(rbuf, 0xaa, N * LEN);
    for (i = 0; i < N; i++) {
        iov[i] = (struct iovec) { wbuf + i * LEN, LEN };
        c[i].ret = 1;
        g_assert_cmpint(pfbd_submit(tv.q, PFBD_OP_WRITE, i * LEN, &iov[i], 1,
                                    LEN, 0, complete_cb, &c[i]), ==, 0);
    }
    g_assert_cmpuint(pfbd_queue_inflight(tv.q), ==, N);
    do_io(tv.q, 0, 0, &sent);
    g_assert_cmpuint(sent, ==, 1);
    pfbd_queue_drain(tv.q);
    for (i = 0; i < N; i++) {
        g_assert_cmpint(c[i].count, ==, 1);
        g_assert_cmpint(c[i].ret, ==, 0);
    }
    g_assert_cmpint(do_rw(tv.q, PFBD_OP_READ, 0, rbuf, N * LEN, 0), ==, 0);
    g_assert_true(memcmp(wbuf, rbuf, N * LEN) == 0);
    free(wbuf);
    free(rbuf);
    close_volume(&tv);
}

/*
 * Wait on @q's completion fd (at most @timeout_ms each time) and reap until
 * the @n requests of @c have completed (@done of them already), each once
 * and with success; the fd is level-triggered: never read, it must be
 * clear once all are reaped.
 * @ready_on_wakeup: the fd firing means a completion is ready.
 * @max: reap at most this many at a time (0: all); what is left ready
 * must keep the fd readable.
 */
static void reap_by_fd(PfbdQueue *q, Completion *c, int n, int done,
                       int timeout_ms, bool ready_on_wakeup, unsigned max)
{
    struct pollfd pfd = { .fd = pfbd_queue_get_fd(q), .events = POLLIN };
    int i;

    while (done < n) {
        g_assert_cmpint(poll(&pfd, 1, timeout_ms), ==, 1);
        g_assert_true(pfd.revents & POLLIN);
        if (ready_on_wakeup) {
            g_assert_true(pfbd_queue_completions_ready(q));
            /* Still readable: polling does not clear it */
            g_assert_cmpint(poll(&pfd, 1, 0), ==, 1);
        }
        done += do_io(q, 0, max, NULL);
        if (pfbd_queue_completions_ready(q)) {
            /*
             * What is ready makes the fd readable, though not at once
             * when a librbd callback has pushed its request and not yet
             * written the eventfd
             */
            g_assert_cmpint(poll(&pfd, 1, timeout_ms), ==, 1);
        }
    }
    g_assert_cmpint(done, ==, n);
    g_assert_cmpuint(pfbd_queue_inflight(q), ==, 0);
    g_assert_false(pfbd_queue_completions_ready(q));
    if (ready_on_wakeup) {
        g_assert_cmpint(poll(&pfd, 1, 0), ==, 0);
    } else {
        /*
         * An rbd wakeup may trail its request, even one already reaped:
         * it finds nothing, and the reap clears it.  Each request wakes
         * at most once, so a fd that stays readable fails here.
         */
        for (i = 0; poll(&pfd, 1, 0) == 1; i++) {
            g_assert_cmpint(i, <, n);
            g_assert_cmpuint(do_io(q, 0, 0, NULL), ==, 0);
        }
    }
    for (i = 0; i < n; i++) {
        g_assert_cmpint(c[i].count, ==, 1);
        g_assert_cmpint(c[i].ret, ==, 0);
    }
}

/* Send @n reads of 4 KiB on @q and complete them through its fd */
static void read_by_fd(PfbdQueue *q, int n, unsigned max)
{
    uint8_t *buf = alloc_aligned(n * 4096);
    struct iovec *iov = g_new(struct iovec, n);
    Completion *c = g_new0(Completion, n);
    struct pollfd pfd = { .fd = pfbd_queue_get_fd(q), .events = POLLIN };
    unsigned done, sent;
    int i;

    g_assert_cmpint(poll(&pfd, 1, 0), ==, 0);
    for (i = 0; i < n; i++) {
        iov[i] = (struct iovec) { buf + i * 4096, 4096 };
        g_assert_cmpint(pfbd_submit(q, PFBD_OP_READ, i * 8192, &iov[i], 1,
                                    4096, 0, complete_cb, &c[i]), ==, 0);
    }
    /* (What completed at once is done here: the fd says nothing of it) */
    done = do_io(q, 0, max, &sent);
    g_assert_cmpuint(sent, ==, 1);
    reap_by_fd(q, c, n, done, 5000, true, max);
    g_free(c);
    g_free(iov);
    free(buf);
}

/*
 * The completion fd becomes readable, stays so until reap has taken every
 * completion (all at once, or one at a time), and is clear after
 */
static void test_file_completion_fd(void)
{
    TestVolume tv = { 0 };

    open_file(&tv, NULL, MiB, false, 8);
    read_by_fd(tv.q, 8, 0);
    read_by_fd(tv.q, 8, 1);
    close_volume(&tv);
}

typedef struct Chain {
    PfbdQueue *q;
    struct iovec iov;
    int remaining;      /* requests still to submit from the callback */
    int completed;
} Chain;

static void chain_cb(void *opaque, int ret)
{
    Chain *ch = opaque;

    g_assert_cmpint(ret, ==, 0);
    ch->completed++;
    if (ch->remaining > 0) {
        ch->remaining--;
        g_assert_cmpint(pfbd_submit(ch->q, PFBD_OP_WRITE,
                                    ch->remaining * 4096, &ch->iov, 1, 4096,
                                    0, chain_cb, ch), ==, 0);
    }
}

/* drain waits for requests in flight, and those their callbacks submit */
static void test_file_drain(void)
{
    enum { N = 16 };
    TestVolume tv = { 0 };
    uint8_t *buf = alloc_aligned(MiB);
    struct iovec iov[N];
    unsigned sent;
    Chain ch[N];
    int i;

    open_file(&tv, NULL, 64 * MiB, false, N);
    fill_pattern(buf, MiB, 17);
    for (i = 0; i < N; i++) {
        ch[i] = (Chain) {
            .q = tv.q, .iov = { buf, 4096 }, .remaining = 3,
        };
        iov[i] = (struct iovec) { buf, MiB };
        g_assert_cmpint(pfbd_submit(tv.q, PFBD_OP_WRITE, (i * 4 + 1) * MiB,
                                    &iov[i], 1, MiB, PFBD_REQ_FUA, chain_cb,
                                    &ch[i]), ==, 0);
    }
    /* One completed at most, and its callback submitted another */
    g_assert_cmpuint(do_io(tv.q, 0, 1, &sent), <=, 1);
    g_assert_cmpuint(sent, ==, 1);
    g_assert_cmpuint(pfbd_queue_inflight(tv.q), ==, N);
    pfbd_queue_drain(tv.q);
    g_assert_cmpuint(pfbd_queue_inflight(tv.q), ==, 0);
    for (i = 0; i < N; i++) {
        g_assert_cmpint(ch[i].completed, ==, 4);
    }
    free(buf);
    close_volume(&tv);
}

/* drain also sends requests that were never flushed */
static void test_file_drain_unflushed(void)
{
    TestVolume tv = { 0 };
    uint8_t *buf = alloc_aligned(4096);
    struct iovec iov = { buf, 4096 };
    Completion c = { .ret = 1 };

    open_file(&tv, NULL, MiB, false, 1);
    g_assert_cmpint(pfbd_submit(tv.q, PFBD_OP_READ, 0, &iov, 1, 4096, 0,
                                complete_cb, &c), ==, 0);
    pfbd_queue_drain(tv.q);
    g_assert_cmpint(c.count, ==, 1);
    g_assert_cmpint(c.ret, ==, 0);
    free(buf);
    close_volume(&tv);
}

static gpointer write_in_thread(gpointer opaque)
{
    TestVolume *tv = opaque;

    check_write_read(tv->q, 8192, 65536, 0);
    return NULL;
}

/* A queue created in one thread serves another, then comes back */
static void test_file_queue_changes_thread(void)
{
    TestVolume tv = { 0 };
    GThread *thread;
    int fd;

    open_file(&tv, NULL, MiB, false, 4);
    fd = pfbd_queue_get_fd(tv.q);
    thread = g_thread_new("pfbd-test", write_in_thread, &tv);
    g_thread_join(thread);
    g_assert_cmpint(pfbd_queue_get_fd(tv.q), ==, fd);
    check_write_read(tv.q, 0, 4096, 0);
    /* The same fd tells of the completions of the ring made for it */
    read_by_fd(tv.q, 4, 0);
    thread = g_thread_new("pfbd-test", write_in_thread, &tv);
    g_thread_join(thread);
    close_volume(&tv);
}

/* ---- file engine: registered memory (io_uring fixed buffers) ---- */

#define MEM_LEN (64 * 1024)

/*
 * Give @mem new, zeroed pages at the same address.  A registration still
 * holds the old ones, so a request that uses it moves data there: @mem
 * staying zero after a read shows that the read went through it.
 */
static void remap_zero(void *mem)
{
    g_assert_true(mmap(mem, MEM_LEN, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) ==
                  mem);
}

static void *map_mem(void)
{
    void *mem = mmap(NULL, MEM_LEN, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

    g_assert_true(mem != MAP_FAILED);
    return mem;
}

/* Data the file holds at 0..16 KiB, as written by the test */
static uint8_t mem_pattern[16384];

/* Write 16 KiB from registered memory, read it back elsewhere */
static void check_registered_write(PfbdQueue *q, uint8_t *mem)
{
    uint8_t *rbuf = alloc_aligned(sizeof(mem_pattern));

    fill_pattern(mem_pattern, sizeof(mem_pattern), 29);
    memcpy(mem, mem_pattern, sizeof(mem_pattern));
    g_assert_cmpint(do_rw(q, PFBD_OP_WRITE, 0, mem, sizeof(mem_pattern),
                          PFBD_REQ_FUA), ==, 0);
    g_assert_cmpint(do_rw(q, PFBD_OP_READ, 0, rbuf, sizeof(mem_pattern), 0),
                    ==, 0);
    g_assert_true(memcmp(rbuf, mem_pattern, sizeof(mem_pattern)) == 0);
    free(rbuf);
}

/*
 * @mem is registered with @q: a read into it goes through the pages
 * pinned at the registration, so that after remap_zero() the process
 * sees zeros where the read went
 */
static void check_read_into_pinned(PfbdQueue *q, uint8_t *mem)
{
    remap_zero(mem);
    g_assert_cmpint(do_rw(q, PFBD_OP_READ, 0, mem, sizeof(mem_pattern),
                          0), ==, 0);
    g_assert_true(is_zero(mem, sizeof(mem_pattern)));
}

typedef struct MemThread {
    TestVolume *tv;
    uint8_t *mem;
} MemThread;

static gpointer registered_read_in_thread(gpointer opaque)
{
    MemThread *mt = opaque;
    TestVolume *tv = mt->tv;
    uint8_t *mem = mt->mem;

    /* The queue gets a new ring here, with the memory registered again */
    g_assert_cmpint(do_req(tv->q, PFBD_OP_FLUSH, 0, NULL, 0, 0, 0), ==, 0);
    remap_zero(mem);
    g_assert_cmpint(do_rw(tv->q, PFBD_OP_READ, 0, mem, 4096, 0), ==, 0);
    g_assert_true(is_zero(mem, 4096));
    return NULL;
}

static void test_file_register_memory(void)
{
    TestVolume tv = { 0 };
    uint8_t *mem = map_mem();
    struct iovec reg = { mem, MEM_LEN };
    struct iovec iov[2];
    Completion c = { .ret = 1 }, c2 = { .ret = 1 };
    MemThread mt = { &tv, mem };
    GThread *thread;

    open_file(&tv, NULL, MiB, false, 4);
    g_assert_cmpint(pfbd_queue_register_memory(tv.q, &reg, 1), ==, 0);
    check_registered_write(tv.q, mem);

    /* A read into registered memory goes through the registration */
    check_read_into_pinned(tv.q, mem);

    /* Two buffers, or one that sticks out, are sent as before */
    reg.iov_len = MEM_LEN - 4096;
    g_assert_cmpint(pfbd_queue_register_memory(tv.q, &reg, 1), ==, 0);
    remap_zero(mem);
    iov[0] = (struct iovec) { mem, 4096 };
    iov[1] = (struct iovec) { mem + 8192, 4096 };
    g_assert_cmpint(do_req(tv.q, PFBD_OP_READ, 0, iov, 2, 8192, 0), ==, 0);
    g_assert_true(memcmp(mem, mem_pattern, 4096) == 0);
    g_assert_true(memcmp(mem + 8192, mem_pattern + 4096, 4096) == 0);
    g_assert_cmpint(do_rw(tv.q, PFBD_OP_READ, 0, mem + MEM_LEN - 8192, 8192,
                          0), ==, 0);
    g_assert_true(memcmp(mem + MEM_LEN - 8192, mem_pattern, 8192) == 0);
    reg.iov_len = MEM_LEN;

    /* Unregistered, requests use the pages mapped now */
    g_assert_cmpint(pfbd_queue_register_memory(tv.q, NULL, 0), ==, 0);
    remap_zero(mem);
    g_assert_cmpint(do_rw(tv.q, PFBD_OP_READ, 0, mem, sizeof(mem_pattern),
                          0), ==, 0);
    g_assert_true(memcmp(mem, mem_pattern, sizeof(mem_pattern)) == 0);

    /*
     * With a request in flight, the registration waits for it, and new
     * requests wait for the registration
     */
    g_assert_cmpint(pfbd_submit(tv.q, PFBD_OP_FLUSH, 0, NULL, 0, 0, 0,
                                complete_cb, &c), ==, 0);
    g_assert_cmpuint(pfbd_queue_inflight(tv.q), ==, 1);
    g_assert_cmpint(pfbd_queue_register_memory(tv.q, &reg, 1), ==,
                    -EINPROGRESS);
    remap_zero(mem);
    iov[0] = (struct iovec) { mem, sizeof(mem_pattern) };
    g_assert_cmpint(pfbd_submit(tv.q, PFBD_OP_READ, 0, iov, 1,
                                sizeof(mem_pattern), 0, complete_cb, &c2),
                    ==, 0);
    g_assert_cmpint(trace_seen.waits, ==, 1);
    g_assert_cmpint(trace_seen.registered, ==, 0);
    pfbd_queue_drain(tv.q);
    g_assert_cmpint(c.ret, ==, 0);
    g_assert_cmpint(c2.count, ==, 1);
    g_assert_cmpint(c2.ret, ==, 0);
    g_assert_cmpint(trace_seen.registered, ==, 1);
    g_assert_cmpint(trace_seen.registered_ret, ==, 0);
    g_assert_true(memcmp(mem, mem_pattern, sizeof(mem_pattern)) == 0);
    /* Registered now */
    check_read_into_pinned(tv.q, mem);

    /*
     * _later(): made before the next request, not at once; unregistering
     * with it is at once
     */
    g_assert_cmpint(pfbd_queue_register_memory_later(tv.q, NULL, 0), ==, 0);
    g_assert_cmpint(pfbd_queue_register_memory_later(tv.q, &reg, 1), ==, 0);
    g_assert_cmpint(trace_seen.registered, ==, 1);
    remap_zero(mem);
    g_assert_cmpint(do_rw(tv.q, PFBD_OP_READ, 0, mem, sizeof(mem_pattern),
                          0), ==, 0);
    g_assert_cmpint(trace_seen.registered, ==, 2);
    g_assert_cmpint(trace_seen.registered_ret, ==, 0);
    /* Registered before the read: its pages are the ones read into */
    g_assert_true(memcmp(mem, mem_pattern, sizeof(mem_pattern)) == 0);
    check_read_into_pinned(tv.q, mem);

    /* A queue that moves to another thread keeps its registration */
    g_assert_cmpint(pfbd_queue_register_memory(tv.q, &reg, 1), ==, 0);
    check_registered_write(tv.q, mem);
    thread = g_thread_new("pfbd-test", registered_read_in_thread, &mt);
    g_thread_join(thread);

    close_volume(&tv);
    munmap(mem, MEM_LEN);
}

/* Engines without registration say so; requests work as before */
static void test_null_register_memory(void)
{
    TestVolume tv = { 0 };
    struct iovec reg = { &tv, sizeof(tv) };

    open_spec(&tv, "null:1M", false, 1);
    g_assert_cmpint(pfbd_queue_register_memory(tv.q, &reg, 1), ==,
                    -ENOTSUP);
    g_assert_cmpint(do_req(tv.q, PFBD_OP_FLUSH, 0, NULL, 0, 0, 0), ==, 0);
    close_volume(&tv);
}

/* ---- argument errors ---- */

static void test_submit_misaligned(void)
{
    TestVolume tv = { 0 };
    uint8_t *buf = alloc_aligned(8192);
    struct iovec iov = { buf, 4096 };
    struct iovec odd = { buf, 100 };
    Completion c = { 0 };
    uint32_t bs;

    open_file(&tv, NULL, MiB, false, 4);
    bs = tv.info.block_size;
    g_assert_cmpint(pfbd_submit(tv.q, PFBD_OP_READ, bs / 2, &iov, 1, 4096, 0,
                                complete_cb, &c), ==, -EINVAL);
    g_assert_cmpint(pfbd_submit(tv.q, PFBD_OP_READ, 0, &odd, 1, 100, 0,
                                complete_cb, &c), ==, -EINVAL);
    /* len does not match the iovecs */
    g_assert_cmpint(pfbd_submit(tv.q, PFBD_OP_WRITE, 0, &iov, 1, 8192, 0,
                                complete_cb, &c), ==, -EINVAL);
    g_assert_cmpint(pfbd_submit(tv.q, PFBD_OP_READ, 0, NULL, 0, 4096, 0,
                                complete_cb, &c), ==, -EINVAL);
    g_assert_cmpint(pfbd_submit(tv.q, PFBD_OP_DISCARD, bs, NULL, 0, bs + 1,
                                0, complete_cb, &c), ==, -EINVAL);
    g_assert_cmpint(pfbd_submit(tv.q, PFBD_OP_WRITE_ZEROES, 1, NULL, 0, bs,
                                0, complete_cb, &c), ==, -EINVAL);
    g_assert_cmpint(pfbd_submit(tv.q, PFBD_OP_FLUSH, 0, NULL, 0, 4096, 0,
                                complete_cb, &c), ==, -EINVAL);
    /* Unknown op and flags */
    g_assert_cmpint(pfbd_submit(tv.q, (PfbdOp)42, 0, NULL, 0, 0, 0,
                                complete_cb, &c), ==, -EINVAL);
    g_assert_cmpint(pfbd_submit(tv.q, PFBD_OP_WRITE, 0, &iov, 1, 4096,
                                1u << 7, complete_cb, &c), ==, -EINVAL);
    g_assert_cmpint(pfbd_submit(tv.q, PFBD_OP_READ, 0, &iov, 1, 4096,
                                PFBD_REQ_UNMAP, complete_cb, &c), ==, -EINVAL);
    g_assert_cmpuint(pfbd_queue_inflight(tv.q), ==, 0);
    pfbd_queue_drain(tv.q);
    g_assert_cmpint(c.count, ==, 0);
    free(buf);
    close_volume(&tv);
}

static void test_submit_beyond_end(void)
{
    TestVolume tv = { 0 };
    uint8_t *buf = alloc_aligned(8192);
    struct iovec iov = { buf, 8192 };
    Completion c = { 0 };

    open_file(&tv, NULL, MiB, false, 4);
    g_assert_cmpint(pfbd_submit(tv.q, PFBD_OP_READ, MiB - 4096, &iov, 1,
                                8192, 0, complete_cb, &c), ==, -ERANGE);
    g_assert_cmpint(pfbd_submit(tv.q, PFBD_OP_WRITE, MiB, &iov, 1, 8192, 0,
                                complete_cb, &c), ==, -ERANGE);
    g_assert_cmpint(pfbd_submit(tv.q, PFBD_OP_DISCARD, 0, NULL, 0, 2 * MiB,
                                0, complete_cb, &c), ==, -ERANGE);
    g_assert_cmpint(pfbd_submit(tv.q, PFBD_OP_WRITE_ZEROES,
                                UINT64_MAX - 511, NULL, 0, 1024, 0,
                                complete_cb, &c), ==, -ERANGE);
    g_assert_cmpint(c.count, ==, 0);
    /* The last block is fine */
    g_assert_cmpint(do_rw(tv.q, PFBD_OP_READ, MiB - 8192, buf, 8192, 0),
                    ==, 0);
    free(buf);
    close_volume(&tv);
}

static void test_submit_read_only(void)
{
    TestVolume tv = { 0 };
    uint8_t *buf = alloc_aligned(4096);
    struct iovec iov = { buf, 4096 };
    Completion c = { 0 };

    open_file(&tv, NULL, MiB, true, 4);
    g_assert_true(tv.info.read_only);
    g_assert_cmpint(pfbd_submit(tv.q, PFBD_OP_WRITE, 0, &iov, 1, 4096, 0,
                                complete_cb, &c), ==, -EROFS);
    g_assert_cmpint(pfbd_submit(tv.q, PFBD_OP_DISCARD, 0, NULL, 0, 4096, 0,
                                complete_cb, &c), ==, -EROFS);
    g_assert_cmpint(pfbd_submit(tv.q, PFBD_OP_WRITE_ZEROES, 0, NULL, 0, 4096,
                                0, complete_cb, &c), ==, -EROFS);
    g_assert_cmpint(c.count, ==, 0);
    g_assert_cmpint(do_rw(tv.q, PFBD_OP_READ, 0, buf, 4096, 0), ==, 0);
    g_assert_cmpint(do_req(tv.q, PFBD_OP_FLUSH, 0, NULL, 0, 0, 0), ==, 0);
    free(buf);
    close_volume(&tv);
}

/*
 * A request of 0 bytes moves nothing, but is checked like the others, and
 * completes in order (virtio-blk's requests without data buffers)
 */
static void test_submit_zero_length(void)
{
    TestVolume tv = { 0 };
    Completion c[4] = { { 0 } };
    int i;

    open_file(&tv, NULL, MiB, false, 1);
    g_assert_cmpint(pfbd_submit(tv.q, PFBD_OP_READ, MiB, NULL, 0, 0, 0,
                                complete_cb, &c[0]), ==, 0);
    g_assert_cmpint(pfbd_submit(tv.q, PFBD_OP_READ, MiB + 4096, NULL, 0, 0,
                                0, complete_cb, &c[1]), ==, -ERANGE);
    g_assert_cmpint(pfbd_submit(tv.q, PFBD_OP_WRITE, 1, NULL, 0, 0, 0,
                                complete_cb, &c[1]), ==, -EINVAL);
    g_assert_cmpint(pfbd_submit(tv.q, PFBD_OP_WRITE, 0, NULL, 0, 0, 0,
                                complete_cb, &c[1]), ==, 0);
    g_assert_cmpint(pfbd_submit(tv.q, PFBD_OP_DISCARD, 4096, NULL, 0, 0, 0,
                                complete_cb, &c[2]), ==, 0);
    g_assert_cmpint(pfbd_submit(tv.q, PFBD_OP_FLUSH, 0, NULL, 0, 0, 0,
                                complete_cb, &c[3]), ==, 0);
    g_assert_cmpuint(pfbd_queue_inflight(tv.q), ==, 4);
    /* Not before pfbd_queue_do_io() */
    g_assert_cmpint(c[0].count, ==, 0);
    pfbd_queue_drain(tv.q);
    for (i = 0; i < 4; i++) {
        g_assert_cmpint(c[i].count, ==, 1);
        g_assert_cmpint(c[i].ret, ==, 0);
    }
    close_volume(&tv);

    open_file(&tv, NULL, MiB, true, 1);
    g_assert_cmpint(pfbd_submit(tv.q, PFBD_OP_WRITE, 0, NULL, 0, 0, 0,
                                complete_cb, &c[0]), ==, -EROFS);
    close_volume(&tv);
}

/* Requests beyond the queue's depth wait for room, in order */
static void test_submit_depth_exceeded(void)
{
    TestVolume tv = { 0 };
    uint8_t *buf = alloc_aligned(4096);
    struct iovec iov = { buf, 4096 };
    Completion c[3] = { { 0 } };
    unsigned sent;

    open_file(&tv, NULL, MiB, false, 2);
    g_assert_cmpint(pfbd_submit(tv.q, PFBD_OP_READ, 0, &iov, 1, 4096, 0,
                                complete_cb, &c[0]), ==, 0);
    g_assert_cmpint(pfbd_submit(tv.q, PFBD_OP_FLUSH, 0, NULL, 0, 0, 0,
                                complete_cb, &c[1]), ==, 0);
    g_assert_cmpint(trace_seen.waits, ==, 0);
    g_assert_cmpint(pfbd_submit(tv.q, PFBD_OP_READ, 4096, &iov, 1, 4096, 0,
                                complete_cb, &c[2]), ==, 0);
    g_assert_cmpint(trace_seen.waits, ==, 1);
    g_assert_cmpuint(pfbd_queue_inflight(tv.q), ==, 3);
    /* It goes with the room the first completion makes */
    g_assert_cmpuint(do_io(tv.q, 1, 0, &sent), >=, 1);
    g_assert_cmpuint(sent, >=, 2);
    pfbd_queue_drain(tv.q);
    g_assert_cmpint(c[0].count + c[1].count + c[2].count, ==, 3);
    g_assert_cmpint(c[2].ret, ==, 0);
    free(buf);
    close_volume(&tv);
}

static void test_null_depth_exceeded(void)
{
    TestVolume tv = { 0 };
    Completion c = { 0 };

    open_spec(&tv, "null:1M", false, 1);
    g_assert_cmpint(pfbd_submit(tv.q, PFBD_OP_FLUSH, 0, NULL, 0, 0, 0,
                                complete_cb, &c), ==, 0);
    g_assert_cmpint(pfbd_submit(tv.q, PFBD_OP_FLUSH, 0, NULL, 0, 0, 0,
                                complete_cb, &c), ==, 0);
    g_assert_cmpint(trace_seen.waits, ==, 1);
    /* Both in one call: the first completes in the submit */
    g_assert_cmpuint(do_io(tv.q, 0, 0, NULL), ==, 2);
    g_assert_cmpint(c.count, ==, 2);
    close_volume(&tv);
}

static void test_queue_zero_depth(void)
{
    PfbdVolume *vol;
    PfbdQueue *q;

    g_assert_cmpint(pfbd_volume_open("null:1M", NULL, &vol, NULL), ==, 0);
    g_assert_cmpint(pfbd_queue_new(vol, 0, &q), ==, -EINVAL);
    pfbd_volume_close(vol);
}

/* ---- the file system's answers ---- */

/* A write past the capacity of a full file system fails with -ENOSPC */
static void test_file_enospc(void)
{
    TestVolume tv = { 0 };
    char *mnt = mount_fs("tmpfs", "size=64k");
    struct iovec *iov;
    uint8_t *buf;
    int i;

    if (!mnt) {
        return;
    }
    buf = alloc_aligned(MiB);
    open_file(&tv, mnt, 4 * MiB, false, 1);
    fill_pattern(buf, MiB, 19);
    g_assert_cmpint(do_rw(tv.q, PFBD_OP_WRITE, 0, buf, MiB, 0), ==, -ENOSPC);
    /* A FUA write, split in many iovecs, too */
    iov = g_new(struct iovec, 256);
    for (i = 0; i < 256; i++) {
        iov[i] = (struct iovec) { buf + i * 4096, 4096 };
    }
    g_assert_cmpint(do_req(tv.q, PFBD_OP_WRITE, 2 * MiB, iov, 256, MiB,
                           PFBD_REQ_FUA), ==, -ENOSPC);
    g_free(iov);
    free(buf);
    close_volume(&tv);
    unmount_fs(mnt);
}

/*
 * A file that shrank under the volume: the read is short, continued, and
 * fails with -EIO when it gets 0 bytes at the end of the file
 */
static void test_file_short_read_eof(void)
{
    enum { N = 8 };
    TestVolume tv = { 0 };
    uint8_t *buf = alloc_aligned(N * 4096);
    struct iovec iov[N];
    int i;

    open_file(&tv, NULL, MiB, false, 1);
    fill_pattern(buf, N * 4096, 23);
    g_assert_cmpint(do_rw(tv.q, PFBD_OP_WRITE, MiB - N * 4096, buf,
                          N * 4096, 0), ==, 0);
    g_assert_cmpint(truncate(tv.path, MiB - 3 * 4096), ==, 0);
    for (i = 0; i < N; i++) {
        iov[i] = (struct iovec) { buf + i * 4096, 4096 };
    }
    g_assert_cmpint(do_req(tv.q, PFBD_OP_READ, MiB - N * 4096, iov, N,
                           N * 4096, 0), ==, -EIO);
    g_assert_cmpint(pfbd_volume_refresh_size(tv.vol), ==, 0);
    pfbd_volume_get_info(tv.vol, &tv.info);
    g_assert_cmpuint(tv.info.size, ==, MiB - 3 * 4096);
    free(buf);
    close_volume(&tv);
}

/* tmpfs has no FALLOC_FL_ZERO_RANGE: write-zeroes punches a hole */
static void test_file_write_zeroes_tmpfs(void)
{
    TestVolume tv = { 0 };
    char *mnt = mount_fs("tmpfs", "size=16m");

    if (!mnt) {
        return;
    }
    open_file(&tv, mnt, 4 * MiB, false, 1);
    check_zeroing(tv.q, PFBD_OP_WRITE_ZEROES, 8192, 65536, 0);
    /* Again, now that the volume knows */
    check_zeroing(tv.q, PFBD_OP_WRITE_ZEROES, MiB, MiB, 0);
    check_zeroing(tv.q, PFBD_OP_DISCARD, 2 * MiB, 8192, 0);
    close_volume(&tv);
    unmount_fs(mnt);
}

/* ramfs has no fallocate and no O_DIRECT: zeroes are written */
static void test_file_write_zeroes_ramfs(void)
{
    TestVolume tv = { 0 };
    char *mnt = mount_fs("ramfs", NULL);

    if (!mnt) {
        return;
    }
    open_file(&tv, mnt, 4 * MiB, false, 1);
    g_assert_cmpuint(tv.info.mem_align, ==, 1);
    /* Discard may leave the data, but must succeed, asked or not */
    g_assert_cmpint(do_req(tv.q, PFBD_OP_DISCARD, 0, NULL, 0, 4096, 0), ==, 0);
    g_assert_cmpint(do_req(tv.q, PFBD_OP_DISCARD, 0, NULL, 0, 4096, 0), ==, 0);
    check_zeroing(tv.q, PFBD_OP_WRITE_ZEROES, 8192, 65536, 0);
    check_zeroing(tv.q, PFBD_OP_WRITE_ZEROES, MiB, MiB + 4096,
                  PFBD_REQ_UNMAP);
    check_write_read(tv.q, 4097 & ~511, 4096, 0);
    close_volume(&tv);
    unmount_fs(mnt);
}

#ifdef PFBD_HAVE_RBD
/* ---- rbd engine (needs PFBD_TEST_CEPH_CONF) ---- */

static const char *ceph_conf;
static rados_t test_cluster;
static rados_ioctx_t test_ioctx;
static unsigned rbd_image_counter;

static void test_rbd_no_cluster(void)
{
    g_test_message("the rbd engine is built in but PFBD_TEST_CEPH_CONF is "
                   "not set: run these tests with tests/ceph/with-ceph.sh");
    g_test_fail();
}

/* Connect the tests' own rados handle to the cluster */
static void rbd_test_connect(void)
{
    if (test_ioctx) {
        return;
    }
    g_assert_cmpint(rados_create(&test_cluster, NULL), ==, 0);
    g_assert_cmpint(rados_conf_read_file(test_cluster, ceph_conf), ==, 0);
    g_assert_cmpint(rados_connect(test_cluster), ==, 0);
    g_assert_cmpint(rados_ioctx_create(test_cluster, "rbd", &test_ioctx),
                    ==, 0);
}

/* Create a new image of @size bytes in pool rbd; returns its name */
static char *rbd_test_image(uint64_t size)
{
    char *name = g_strdup_printf("unit-%d-%u", (int)getpid(),
                                 rbd_image_counter++);
    int order = 0;

    rbd_test_connect();
    g_assert_cmpint(rbd_create2(test_ioctx, name, size,
                                RBD_FEATURE_LAYERING |
                                RBD_FEATURE_EXCLUSIVE_LOCK, &order), ==, 0);
    return name;
}

static void rbd_test_remove(const char *name)
{
    g_assert_cmpint(rbd_remove(test_ioctx, name), ==, 0);
}

/* Open a new image of @size bytes; @suffix is appended to the spec */
static char *open_rbd(TestVolume *tv, uint64_t size, const char *suffix,
                      unsigned depth)
{
    char *name = rbd_test_image(size);
    char *spec = g_strdup_printf("rbd:rbd/%s:conf=%s%s", name, ceph_conf,
                                 suffix ? suffix : "");

    open_spec(tv, spec, false, depth);
    g_free(spec);
    return name;
}

static void close_rbd(TestVolume *tv, char *name)
{
    close_volume(tv);
    rbd_test_remove(name);
    g_free(name);
}

static void test_rbd_open_info(void)
{
    TestVolume tv = { 0 };
    char *name = open_rbd(&tv, 64 * MiB + 512, NULL, 1);

    g_assert_cmpstr(tv.info.engine, ==, "rbd");
    g_assert_cmpuint(tv.info.size, ==, 64 * MiB + 512);
    g_assert_cmpuint(tv.info.block_size, ==, 512);
    g_assert_cmpuint(tv.info.mem_align, ==, 1);
    g_assert_cmpuint(tv.info.caps, ==, PFBD_CAP_FLUSH | PFBD_CAP_DISCARD |
                     PFBD_CAP_WRITE_ZEROES);
    g_assert_false(tv.info.read_only);
    g_assert_cmpint(pfbd_queue_get_fd(tv.q), >=, 0);
    close_rbd(&tv, name);
}

static void test_rbd_write_read(void)
{
    TestVolume tv = { 0 };
    char *name = open_rbd(&tv, 16 * MiB, NULL, 4);

    check_write_read(tv.q, 0, 4096, 0);
    check_write_read(tv.q, 512, 512, 0);
    /* across the boundary of two 4 MiB objects */
    check_write_read(tv.q, 4 * MiB - 8192, 65536, 0);
    check_write_read(tv.q, 8 * MiB, 2 * MiB, 0);
    check_write_read(tv.q, 16 * MiB - 4096, 4096, 0);
    check_write_read(tv.q, 65536, 65536, PFBD_REQ_FUA);
    close_rbd(&tv, name);
}

static void test_rbd_write_fua_cache_on(void)
{
    TestVolume tv = { 0 };
    char *name = open_rbd(&tv, 4 * MiB, ":rbd_cache=true", 1);

    check_write_read(tv.q, 4096, 8192, PFBD_REQ_FUA);
    check_write_read(tv.q, 65536, 4096, 0);
    g_assert_cmpint(do_req(tv.q, PFBD_OP_FLUSH, 0, NULL, 0, 0, 0), ==, 0);
    close_rbd(&tv, name);
}

static void test_rbd_readv_writev(void)
{
    TestVolume tv = { 0 };
    char *name = open_rbd(&tv, 4 * MiB, NULL, 1);
    uint8_t *wbuf = alloc_aligned(16384);
    uint8_t *rbuf = alloc_aligned(20480);
    struct iovec iov[3] = {
        { wbuf, 512 }, { wbuf + 512, 12288 }, { wbuf + 12800, 3584 },
    };

    fill_pattern(wbuf, 16384, 21);
    memset(rbuf, 0xaa, 20480);
    g_assert_cmpint(do_req(tv.q, PFBD_OP_WRITE, 1024, iov, 3, 16384, 0),
                    ==, 0);
    iov[0] = (struct iovec) { rbuf + 12288, 8192 };
    iov[1] = (struct iovec) { rbuf + 1, 4096 };     /* any alignment */
    iov[2] = (struct iovec) { rbuf + 4097, 4096 };
    g_assert_cmpint(do_req(tv.q, PFBD_OP_READ, 1024, iov, 3, 16384, 0),
                    ==, 0);
    g_assert_true(memcmp(wbuf, rbuf + 12288, 8192) == 0);
    g_assert_true(memcmp(wbuf + 8192, rbuf + 1, 8192) == 0);
    free(wbuf);
    free(rbuf);
    close_rbd(&tv, name);
}

static void test_rbd_unwritten_reads_zero(void)
{
    TestVolume tv = { 0 };
    char *name = open_rbd(&tv, 8 * MiB, NULL, 1);
    uint8_t *buf = alloc_aligned(MiB);

    memset(buf, 0xaa, MiB);
    g_assert_cmpint(do_rw(tv.q, PFBD_OP_READ, 3 * MiB, buf, MiB, 0), ==, 0);
    g_assert_true(is_zero(buf, MiB));
    free(buf);
    close_rbd(&tv, name);
}

static void test_rbd_discard(void)
{
    TestVolume tv = { 0 };
    char *name = open_rbd(&tv, 16 * MiB, NULL, 1);

    /* whole objects: librbd removes them, so they read back as zeroes */
    check_zeroing(tv.q, PFBD_OP_DISCARD, 4 * MiB, 8 * MiB, 0);
    /* a partial range is accepted (librbd may keep the data) */
    g_assert_cmpint(do_req(tv.q, PFBD_OP_DISCARD, 4096, NULL, 0, 4096, 0),
                    ==, 0);
    close_rbd(&tv, name);
}

static void test_rbd_write_zeroes(void)
{
    TestVolume tv = { 0 };
    char *name = open_rbd(&tv, 16 * MiB, NULL, 1);

    check_zeroing(tv.q, PFBD_OP_WRITE_ZEROES, 8192, 65536, 0);
    check_zeroing(tv.q, PFBD_OP_WRITE_ZEROES, 4 * MiB, 4 * MiB,
                  PFBD_REQ_UNMAP);
    check_zeroing(tv.q, PFBD_OP_WRITE_ZEROES, 10 * MiB + 512, 4096,
                  PFBD_REQ_UNMAP);
    close_rbd(&tv, name);
}

/*
 * Completions arrive through the completion fd and reap runs their
 * callbacks, all at once or one at a time
 */
static void test_rbd_completion_fd(void)
{
    enum { N = 16 };
    TestVolume tv = { 0 };
    char *name = open_rbd(&tv, 4 * MiB, NULL, N);
    uint8_t *buf = alloc_aligned(N * 4096);
    uint8_t *rbuf = alloc_aligned(N * 4096);
    struct iovec iov[N];
    Completion c[N] = { { 0 } };
    struct pollfd pfd;
    unsigned done, sent;
    int i, round;

    pfd = (struct pollfd) { .fd = pfbd_queue_get_fd(tv.q), .events = POLLIN };
    g_assert_cmpint(poll(&pfd, 1, 0), ==, 0);
    fill_pattern(buf, N * 4096, 5);
    for (i = 0; i < N; i++) {
        iov[i] = (struct iovec) { buf + i * 4096, 4096 };
        g_assert_cmpint(pfbd_submit(tv.q, PFBD_OP_WRITE, i * 8192, &iov[i],
                                    1, 4096, 0, complete_cb, &c[i]), ==, 0);
    }
    done = do_io(tv.q, 0, 0, &sent);
    g_assert_cmpuint(sent, ==, 1);
    done += do_io(tv.q, 0, 0, &sent);
    g_assert_cmpuint(sent, ==, 0);
    /*
     * A callback may push its request after the reap that took it was
     * woken by an earlier one: a wakeup need not find anything ready
     */
    reap_by_fd(tv.q, c, N, done, 30000, false, 0);

    /*
     * Read them back, reaping 1, 2 or 3 at a time, many times over: the
     * callbacks keep pushing while the reaps stop at their maximum, and a
     * completion left behind must keep the fd readable
     */
    for (round = 0; round < 30; round++) {
        memset(c, 0, sizeof(c));
        memset(rbuf, 0, N * 4096);
        for (i = 0; i < N; i++) {
            iov[i] = (struct iovec) { rbuf + i * 4096, 4096 };
            g_assert_cmpint(pfbd_submit(tv.q, PFBD_OP_READ, i * 8192,
                                        &iov[i], 1, 4096, 0, complete_cb,
                                        &c[i]), ==, 0);
        }
        done = do_io(tv.q, 0, 1 + round % 3, &sent);
        g_assert_cmpuint(sent, ==, 1);
        reap_by_fd(tv.q, c, N, done, 30000, false, 1 + round % 3);
        g_assert_true(memcmp(buf, rbuf, N * 4096) == 0);
    }
    free(rbuf);
    free(buf);
    close_rbd(&tv, name);
}

/* pfbd_queue_do_io()'s maximum leaves the rest for the next call */
static void test_rbd_reap_max(void)
{
    enum { N = 8 };
    TestVolume tv = { 0 };
    char *name = open_rbd(&tv, 4 * MiB, NULL, N);
    uint8_t *buf = alloc_aligned(4096);
    struct iovec iov = { buf, 4096 };
    Completion c = { 0 };
    struct pollfd pfd = { .fd = pfbd_queue_get_fd(tv.q), .events = POLLIN };
    int done = 0;
    int i, n;

    for (i = 0; i < N; i++) {
        g_assert_cmpint(pfbd_submit(tv.q, PFBD_OP_READ, i * 4096, &iov, 1,
                                    4096, 0, complete_cb, &c), ==, 0);
    }
    while (done < N) {
        n = do_io(tv.q, 0, 3, NULL);
        g_assert_cmpint(n, <=, 3);
        done += n;
        if (!n) {
            g_assert_cmpint(poll(&pfd, 1, 30000), ==, 1);
        }
    }
    g_assert_cmpint(c.count, ==, N);
    free(buf);
    close_rbd(&tv, name);
}

typedef struct RbdWriter {
    PfbdQueue *q;
    uint64_t base;
    unsigned seed;
} RbdWriter;

/* Write 64 interleaved 4 KiB blocks at depth 8 from this thread */
static gpointer rbd_writer_thread(gpointer opaque)
{
    enum { N = 64, D = 8 };
    RbdWriter *w = opaque;
    uint8_t *buf = alloc_aligned(N * 4096);
    struct iovec iov[N];
    Completion c = { 0 };
    int i;

    fill_pattern(buf, N * 4096, w->seed);
    for (i = 0; i < N; i++) {
        iov[i] = (struct iovec) { buf + i * 4096, 4096 };
        if (pfbd_queue_inflight(w->q) >= D) {
            do_io(w->q, 1, 0, NULL);
        }
        g_assert_cmpint(pfbd_submit(w->q, PFBD_OP_WRITE,
                                    w->base + i * 8192, &iov[i], 1, 4096, 0,
                                    complete_cb, &c), ==, 0);
        do_io(w->q, 0, 0, NULL);
    }
    pfbd_queue_drain(w->q);
    g_assert_cmpint(c.count, ==, N);
    g_assert_cmpint(c.ret, ==, 0);
    return buf;
}

/* Two queues of one volume, each in its own thread, as two IOThreads */
static void test_rbd_two_queues_two_threads(void)
{
    TestVolume tv = { 0 };
    char *name = open_rbd(&tv, 4 * MiB, NULL, 8);
    PfbdQueue *q2;
    RbdWriter w[2];
    GThread *t[2];
    uint8_t *wbuf[2];
    uint8_t *rbuf = alloc_aligned(4096);
    int i, k;

    g_assert_cmpint(pfbd_queue_new(tv.vol, 8, &q2), ==, 0);
    w[0] = (RbdWriter) { tv.q, 0, 31 };
    w[1] = (RbdWriter) { q2, 4096, 32 };   /* the blocks in between */
    for (k = 0; k < 2; k++) {
        t[k] = g_thread_new("writer", rbd_writer_thread, &w[k]);
    }
    for (k = 0; k < 2; k++) {
        wbuf[k] = g_thread_join(t[k]);
    }
    for (k = 0; k < 2; k++) {
        for (i = 0; i < 64; i++) {
            g_assert_cmpint(do_rw(k ? q2 : tv.q, PFBD_OP_READ,
                                  w[k].base + i * 8192, rbuf, 4096, 0),
                            ==, 0);
            g_assert_true(memcmp(rbuf, wbuf[k] + i * 4096, 4096) == 0);
        }
        free(wbuf[k]);
    }
    pfbd_queue_free(q2);
    free(rbuf);
    close_rbd(&tv, name);
}

static void test_rbd_snapshot_read_only(void)
{
    TestVolume tv = { 0 };
    TestVolume snap = { 0 };
    char *name = open_rbd(&tv, 4 * MiB, NULL, 1);
    uint8_t *old = alloc_aligned(65536);
    uint8_t *buf = alloc_aligned(65536);
    rbd_image_t image;
    char *spec;

    fill_pattern(old, 65536, 41);
    g_assert_cmpint(do_rw(tv.q, PFBD_OP_WRITE, 0, old, 65536, 0), ==, 0);
    g_assert_cmpint(rbd_open(test_ioctx, name, &image, NULL), ==, 0);
    g_assert_cmpint(rbd_snap_create(image, "s1"), ==, 0);
    g_assert_cmpint(rbd_close(image), ==, 0);
    fill_pattern(buf, 65536, 42);
    g_assert_cmpint(do_rw(tv.q, PFBD_OP_WRITE, 0, buf, 65536, 0), ==, 0);

    /* not asked for read-only, but a snapshot is */
    spec = g_strdup_printf("rbd:rbd/%s@s1:conf=%s", name, ceph_conf);
    open_spec(&snap, spec, false, 1);
    g_assert_true(snap.info.read_only);
    g_assert_cmpint(do_rw(snap.q, PFBD_OP_READ, 0, buf, 65536, 0), ==, 0);
    g_assert_true(memcmp(buf, old, 65536) == 0);
    g_assert_cmpint(pfbd_submit(snap.q, PFBD_OP_WRITE, 0,
                                &(struct iovec) { buf, 4096 }, 1, 4096, 0,
                                complete_cb, NULL), ==, -EROFS);
    close_volume(&snap);
    g_free(spec);

    g_assert_cmpint(rbd_open(test_ioctx, name, &image, NULL), ==, 0);
    g_assert_cmpint(rbd_snap_remove(image, "s1"), ==, 0);
    g_assert_cmpint(rbd_close(image), ==, 0);
    free(old);
    free(buf);
    close_rbd(&tv, name);
}

static void test_rbd_refresh_size(void)
{
    TestVolume tv = { 0 };
    char *name = open_rbd(&tv, 4 * MiB, NULL, 1);
    rbd_image_t image;

    g_assert_cmpint(rbd_open(test_ioctx, name, &image, NULL), ==, 0);
    g_assert_cmpint(rbd_resize(image, 12 * MiB), ==, 0);
    g_assert_cmpint(rbd_close(image), ==, 0);
    g_assert_cmpint(pfbd_volume_refresh_size(tv.vol), ==, 0);
    pfbd_volume_get_info(tv.vol, &tv.info);
    g_assert_cmpuint(tv.info.size, ==, 12 * MiB);
    close_rbd(&tv, name);
}

/* '\\' escapes ':' in names; id= and keyring= are taken */
static void test_rbd_spec_escapes(void)
{
    TestVolume tv = { 0 };
    char *name = g_strdup_printf("unit-%d-we:ird", (int)getpid());
    char *dir = g_path_get_dirname(ceph_conf);
    char *keyring = g_strdup_printf("%s/client.admin.keyring", dir);
    char *spec;
    int order = 0;

    rbd_test_connect();
    g_assert_cmpint(rbd_create2(test_ioctx, name, MiB, RBD_FEATURE_LAYERING,
                                &order), ==, 0);
    spec = g_strdup_printf("rbd:rbd/unit-%d-we\\:ird:id=admin:conf=%s:"
                           "keyring=%s", (int)getpid(), ceph_conf, keyring);
    open_spec(&tv, spec, false, 1);
    g_assert_cmpuint(tv.info.size, ==, MiB);
    check_write_read(tv.q, 0, 4096, 0);
    close_volume(&tv);
    rbd_test_remove(name);
    g_free(spec);
    g_free(keyring);
    g_free(dir);
    g_free(name);
}

static void test_rbd_open_errors(void)
{
    char *name = rbd_test_image(MiB);
    char *spec;

    spec = g_strdup_printf("rbd:rbd/nonexistent:conf=%s", ceph_conf);
    check_open_fails(spec, NULL, -ENOENT, "no image 'nonexistent' in pool "
                     "'rbd'");
    g_free(spec);
    spec = g_strdup_printf("rbd:nopool/x:conf=%s", ceph_conf);
    check_open_fails(spec, NULL, -ENOENT, "no pool 'nopool'");
    g_free(spec);
    spec = g_strdup_printf("rbd:rbd/%s@nosnap:conf=%s", name, ceph_conf);
    check_open_fails(spec, NULL, -ENOENT, "snapshot 'nosnap'");
    g_free(spec);
    spec = g_strdup_printf("rbd:rbd/%s:conf=%s:bogus_opt=1", name,
                           ceph_conf);
    check_open_fails(spec, NULL, -ENOENT, "unknown Ceph option "
                     "'bogus_opt=1'");
    g_free(spec);
    spec = g_strdup_printf("rbd:rbd/%s:conf=%s:novalue", name, ceph_conf);
    check_open_fails(spec, NULL, -EINVAL, "option 'novalue' is not "
                     "KEY=VALUE");
    g_free(spec);
    check_open_fails("rbd:image-only", NULL, -EINVAL,
                     "expected rbd:POOL/IMAGE");
    check_open_fails("rbd:/img", NULL, -EINVAL, "empty pool");
    check_open_fails("rbd:pool/", NULL, -EINVAL, "empty pool");
    check_open_fails("rbd:pool/img@", NULL, -EINVAL, "empty snapshot name");
    check_open_fails("rbd:pool/img:conf=/nonexistent/ceph.conf", NULL,
                     -ENOENT, "cannot read the Ceph configuration "
                     "'/nonexistent/ceph.conf'");
    rbd_test_remove(name);
    g_free(name);
}

/* Without conf=, $CEPH_CONF names the configuration */
static void test_rbd_ceph_conf_env(void)
{
    TestVolume tv = { 0 };
    char *name = rbd_test_image(MiB);
    char *spec = g_strdup_printf("rbd:rbd/%s", name);
    char *saved = g_strdup(getenv("CEPH_CONF"));

    g_setenv("CEPH_CONF", ceph_conf, TRUE);
    open_spec(&tv, spec, false, 1);
    check_write_read(tv.q, 0, 4096, 0);
    close_volume(&tv);
    g_setenv("CEPH_CONF", "/nonexistent/ceph.conf", TRUE);
    check_open_fails(spec, NULL, -ENOENT, "cannot read the Ceph "
                     "configuration '/nonexistent/ceph.conf' ($CEPH_CONF)");
    if (saved) {
        g_setenv("CEPH_CONF", saved, TRUE);
    } else {
        g_unsetenv("CEPH_CONF");
    }
    rbd_test_remove(name);
    g_free(saved);
    g_free(spec);
    g_free(name);
}

static void test_rbd_unreachable(void)
{
    char *conf = g_strdup_printf("%s/dead.conf", tmpdir);
    gint64 t0 = g_get_monotonic_time();
    char *spec;

    g_assert_true(g_file_set_contents(conf, "[global]\n"
                                      "mon_host = v2:127.0.0.1:9\n"
                                      "auth_client_required = none\n", -1,
                                      NULL));
    spec = g_strdup_printf("rbd:rbd/x:conf=%s:client_mount_timeout=2", conf);
    check_open_fails(spec, NULL, -ETIMEDOUT, "cannot connect to the Ceph "
                     "cluster");
    /* bounded by client_mount_timeout, with a generous margin */
    g_assert_cmpint(g_get_monotonic_time() - t0, <, 60 * G_USEC_PER_SEC);
    g_free(spec);
    g_free(conf);
}

/* The admin key of the test cluster, from the keyring beside ceph.conf */
static char *rbd_admin_key(void)
{
    g_autofree char *dir = g_path_get_dirname(ceph_conf);
    g_autofree char *path = g_build_filename(dir, "client.admin.keyring",
                                             NULL);
    g_autofree char *text = NULL;
    char *p;

    g_assert_true(g_file_get_contents(path, &text, NULL, NULL));
    p = strstr(text, "key = ");
    g_assert_nonnull(p);
    p += strlen("key = ");
    return g_strndup(p, strcspn(p, "\t\n "));
}

typedef struct TestSecrets {
    const char *id;
    const char *value;          /* NULL: no such secret */
    unsigned lookups;
} TestSecrets;

static int test_secret_lookup(void *opaque, const char *id, char **valuep,
                              char **errmsg)
{
    TestSecrets *ts = opaque;

    ts->lookups++;
    if (!ts->value || strcmp(id, ts->id)) {
        *errmsg = strdup("no such secret");
        return -ENOENT;
    }
    *valuep = strdup(ts->value);
    return 0;
}

/*
 * key-secret=ID: the key comes from the caller's secret lookup, and it is
 * the only credential (the keyring is empty)
 */
static void test_rbd_key_secret(void)
{
    g_autofree char *key = rbd_admin_key();
    TestSecrets ts = { .id = "sec0", .value = key };
    PfbdOpenOptions opts = {
        .secret_lookup = test_secret_lookup,
        .secret_opaque = &ts,
    };
    char *name = rbd_test_image(MiB);
    g_autofree char *spec = g_strdup_printf(
        "rbd:rbd/%s:conf=%s:keyring=/dev/null:client_mount_timeout=20:"
        "key-secret=sec0", name, ceph_conf);
    g_autofree guchar *raw = NULL;
    g_autofree char *wrong = NULL;
    PfbdVolume *vol = NULL;
    char *err = NULL;
    gsize len;

    g_assert_cmpint(pfbd_volume_open(spec, &opts, &vol, &err), ==, 0);
    g_assert_null(err);
    g_assert_cmpuint(ts.lookups, ==, 1);
    pfbd_volume_close(vol);

    /* Another key of the same form: the cluster refuses it */
    raw = g_base64_decode(key, &len);
    g_assert_cmpuint(len, >, 4);
    raw[len - 1] ^= 0x5a;
    wrong = g_base64_encode(raw, len);
    ts.value = wrong;
    vol = (PfbdVolume *)&vol;
    g_assert_cmpint(pfbd_volume_open(spec, &opts, &vol, &err), <, 0);
    g_assert_null(vol);
    g_assert_nonnull(strstr(err, "cannot connect to the Ceph cluster"));
    g_assert_null(strstr(err, wrong));
    free(err);

    /* The lookup's failure is the open's, with its message */
    ts.value = NULL;
    check_open_fails(spec, &opts, -ENOENT, "key-secret 'sec0': no such "
                     "secret");
    /* Without a lookup, a spec that names a secret is refused */
    check_open_fails(spec, NULL, -EINVAL, "key-secret");

    rbd_test_remove(name);
    g_free(name);
}

static void add_rbd_tests(void)
{
    ceph_conf = getenv("PFBD_TEST_CEPH_CONF");
    if (!ceph_conf || !ceph_conf[0]) {
        g_test_add_func("/pfbd/rbd/cluster", test_rbd_no_cluster);
        return;
    }
    g_test_add_func("/pfbd/rbd/open-info", test_rbd_open_info);
    g_test_add_func("/pfbd/rbd/key-secret", test_rbd_key_secret);
    g_test_add_func("/pfbd/rbd/write-read", test_rbd_write_read);
    g_test_add_func("/pfbd/rbd/write-fua-cache-on",
                    test_rbd_write_fua_cache_on);
    g_test_add_func("/pfbd/rbd/readv-writev", test_rbd_readv_writev);
    g_test_add_func("/pfbd/rbd/unwritten-reads-zero",
                    test_rbd_unwritten_reads_zero);
    g_test_add_func("/pfbd/rbd/discard", test_rbd_discard);
    g_test_add_func("/pfbd/rbd/write-zeroes", test_rbd_write_zeroes);
    g_test_add_func("/pfbd/rbd/completion-fd", test_rbd_completion_fd);
    g_test_add_func("/pfbd/rbd/reap-max", test_rbd_reap_max);
    g_test_add_func("/pfbd/rbd/two-queues-two-threads",
                    test_rbd_two_queues_two_threads);
    g_test_add_func("/pfbd/rbd/snapshot-read-only",
                    test_rbd_snapshot_read_only);
    g_test_add_func("/pfbd/rbd/refresh-size", test_rbd_refresh_size);
    g_test_add_func("/pfbd/rbd/spec-escapes", test_rbd_spec_escapes);
    g_test_add_func("/pfbd/rbd/open-errors", test_rbd_open_errors);
    g_test_add_func("/pfbd/rbd/ceph-conf-env", test_rbd_ceph_conf_env);
    g_test_add_func("/pfbd/rbd/unreachable", test_rbd_unreachable);
}
#endif /* PFBD_HAVE_RBD */

static int remove_one(const char *path, const struct stat *st, int type,
                      struct FTW *ftw)
{
    return remove(path);
}

/*
 * pfbd_iov_seek(), the engines' one walk of an iovec from an offset (the
 * file engine's rest of a short transfer, the rbd engine's zeroed tail)
 */
static void test_iov_seek(void)
{
    char buf[16];
    struct iovec iov[3] = { { buf, 4 }, { buf + 4, 0 }, { buf + 4, 8 } };
    static const struct {
        uint64_t skip;
        int index;
        size_t off;
    } cases[] = {
        { 0, 0, 0 }, { 3, 0, 3 }, { 4, 2, 0 },     /* the empty one skipped */
        { 11, 2, 7 }, { 12, 3, 0 }, { UINT64_MAX, 3, 0 },
    };
    size_t off;
    int i;

    for (i = 0; i < G_N_ELEMENTS(cases); i++) {
        off = 99;
        g_assert_cmpint(pfbd_iov_seek(iov, 3, cases[i].skip, &off), ==,
                        cases[i].index);
        g_assert_cmpuint(off, ==, cases[i].off);
    }
    off = 99;
    g_assert_cmpint(pfbd_iov_seek(iov, 0, 0, &off), ==, 0);
    g_assert_cmpuint(off, ==, 0);
}

int main(int argc, char **argv)
{
    int ret;

    g_test_init(&argc, &argv, NULL);
    tmpdir = g_dir_make_tmp("test-pfbd-XXXXXX", NULL);
    g_assert_nonnull(tmpdir);

    g_test_add_func("/pfbd/iov-seek", test_iov_seek);
    g_test_add_func("/pfbd/spec/unknown-engine", test_spec_unknown_engine);
    g_test_add_func("/pfbd/spec/redact", test_spec_redact);
#ifdef PFBD_HAVE_RBD
    g_test_add_func("/pfbd/spec/key-not-shown", test_spec_key_not_shown);
#endif
#ifndef PFBD_HAVE_RBD
    g_test_add_func("/pfbd/spec/rbd-not-built", test_spec_rbd_not_built);
#endif
    g_test_add_func("/pfbd/spec/empty", test_spec_empty);
    g_test_add_func("/pfbd/spec/bad-bare-name", test_spec_bad_bare_name);
    g_test_add_func("/pfbd/spec/bare-name-pool-dir",
                    test_spec_bare_name_pool_dir);
    g_test_add_func("/pfbd/spec/bare-name-env", test_spec_bare_name_env);

    g_test_add_func("/pfbd/null/size-suffixes", test_null_size_suffixes);
    g_test_add_func("/pfbd/null/bad-size", test_null_bad_size);
    g_test_add_func("/pfbd/null/every-op", test_null_every_op);
    g_test_add_func("/pfbd/null/register-memory", test_null_register_memory);
    g_test_add_func("/pfbd/null/completes-at-flush",
                    test_null_completes_at_flush);
    g_test_add_func("/pfbd/null/depth-exceeded", test_null_depth_exceeded);
    g_test_add_func("/pfbd/null/completion-nsec", test_null_completion_nsec);
    g_test_add_func("/pfbd/null/write-nsec-mem-align",
                    test_null_write_nsec_mem_align);
    g_test_add_func("/pfbd/null/flush-eagain", test_null_flush_eagain);
    g_test_add_func("/pfbd/null/complete-errno", test_null_complete_errno);
    g_test_add_func("/pfbd/null/bad-options", test_null_bad_options);
    g_test_add_func("/pfbd/queue/zero-depth", test_queue_zero_depth);

    g_test_add_func("/pfbd/file/open-info", test_file_open_info);
    g_test_add_func("/pfbd/file/size-rounded-down",
                    test_file_size_rounded_down);
    g_test_add_func("/pfbd/file/refresh-size", test_file_refresh_size);
    g_test_add_func("/pfbd/file/missing", test_file_missing);
    g_test_add_func("/pfbd/file/directory", test_file_directory);
    g_test_add_func("/pfbd/file/fifo", test_file_fifo);
    g_test_add_func("/pfbd/file/too-small", test_file_too_small);

    g_test_add_func("/pfbd/file/write-read", test_file_write_read);
    g_test_add_func("/pfbd/file/write-fua", test_file_write_fua);
    g_test_add_func("/pfbd/file/readv-writev", test_file_readv_writev);
    g_test_add_func("/pfbd/file/flush", test_file_flush);
    g_test_add_func("/pfbd/file/discard", test_file_discard);
    g_test_add_func("/pfbd/file/write-zeroes", test_file_write_zeroes);
    g_test_add_func("/pfbd/file/write-zeroes-unmap",
                    test_file_write_zeroes_unmap);
    g_test_add_func("/pfbd/file/bounce-limit", test_file_bounce_limit);
    g_test_add_func("/pfbd/file/bounce-mapping-counted",
                    test_file_bounce_mapping_counted);
    g_test_add_func("/pfbd/file/segment-len-block-size",
                    test_file_segment_len_block_size);
    g_test_add_func("/pfbd/file/partial-submit", test_file_partial_submit);
    g_test_add_func("/pfbd/file/any-thread", test_file_any_thread);
    g_test_add_func("/pfbd/file/iowq-cpus", test_file_iowq_cpus);
    g_test_add_func("/pfbd/file/misaligned-buffers",
                    test_file_misaligned_buffers);
    g_test_add_func("/pfbd/file/many-iovecs", test_file_many_iovecs);
    g_test_add_func("/pfbd/file/batch", test_file_batch);
    g_test_add_func("/pfbd/file/completion-fd", test_file_completion_fd);
    g_test_add_func("/pfbd/file/register-memory", test_file_register_memory);
    g_test_add_func("/pfbd/file/drain", test_file_drain);
    g_test_add_func("/pfbd/file/drain-unflushed", test_file_drain_unflushed);
    g_test_add_func("/pfbd/file/queue-changes-thread",
                    test_file_queue_changes_thread);

    g_test_add_func("/pfbd/submit/misaligned", test_submit_misaligned);
    g_test_add_func("/pfbd/submit/zero-length", test_submit_zero_length);
    g_test_add_func("/pfbd/submit/beyond-end", test_submit_beyond_end);
    g_test_add_func("/pfbd/submit/read-only", test_submit_read_only);
    g_test_add_func("/pfbd/submit/depth-exceeded",
                    test_submit_depth_exceeded);

    g_test_add_func("/pfbd/file/short-read-eof", test_file_short_read_eof);
    g_test_add_func("/pfbd/file/enospc", test_file_enospc);
    g_test_add_func("/pfbd/file/write-zeroes-tmpfs",
                    test_file_write_zeroes_tmpfs);
    g_test_add_func("/pfbd/file/write-zeroes-ramfs",
                    test_file_write_zeroes_ramfs);

#ifdef PFBD_HAVE_RBD
    add_rbd_tests();
#endif

    ret = g_test_run();
#ifdef PFBD_HAVE_RBD
    if (test_ioctx) {
        rados_ioctx_destroy(test_ioctx);
        rados_shutdown(test_cluster);
    }
#endif
    nftw(tmpdir, remove_one, 16, FTW_DEPTH | FTW_PHYS | FTW_MOUNT);
    g_free(tmpdir);
    return ret;
}

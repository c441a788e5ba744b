/*
 * libpfbd unit tests: the pureflash engine against a PureFlash cluster
 *
 * Copyright (c) 2026 pfbd-qemu developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * PFBD_PUREFLASH_CONDUCTOR names the cluster's conductor (HOST:PORT), and
 * PFBD_PUREFLASH_STORE_PORT the stores' port if it is not PureFlash's.
 * tests/pureflash/with-pfdouble.sh runs the tests against the project's
 * conformance double (tests/pureflash/pfdouble.py, not a PureFlash) and
 * sets PFBD_PUREFLASH_DOUBLE=1: the /pfbd/pureflash/double/ cases, which
 * make the stores misbehave through the double's control API, are added
 * only then.  Every other case runs the same against a real cluster
 * (docs/pureflash.rst says how).  Without a cluster, /pfbd/pureflash/cluster
 * fails and says so.
 */

#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <glib.h>
#ifdef PFBD_HAVE_ZOOKEEPER
#define THREADED            /* the synchronous API of zookeeper_mt */
#include <zookeeper/zookeeper.h>
#endif
#include "pfbd.h"

#define KiB 1024ull
#define MiB (1024 * KiB)
#define GiB (1024 * MiB)
#define SHARD (64 * GiB)

static const char *conductor;
static const char *store_port;
static const char *zookeeper;
static bool is_double;
static unsigned vol_counter;
static char vol_prefix[32];

typedef struct Completion {
    int ret;
    int count;
} Completion;

typedef struct TestVolume {
    char *name;
    char *spec;
    PfbdVolume *vol;
    PfbdQueue *q;
    PfbdVolumeInfo info;
} TestVolume;

/* What the engine reported through PfbdTraceOps (open_named() asks) */
typedef struct TraceSeen {
    int connect;
    int reopen;
    int resend_reopen;
    int resend_not_primary;
} TraceSeen;

static TraceSeen trace_seen;

static void trace_connect(void *opaque, PfbdQueue *q, const char *addr)
{
    TraceSeen *t = opaque;

    /* The stores of the tests are on the loopback network */
    g_assert_true(g_str_has_prefix(addr, "127."));
    t->connect++;
}

static void trace_reopen(void *opaque, PfbdQueue *q)
{
    TraceSeen *t = opaque;

    t->reopen++;
}

static void trace_resend(void *opaque, PfbdQueue *q, uint64_t offset,
                         uint64_t len, const char *why)
{
    TraceSeen *t = opaque;

    g_assert_cmpuint(len, >, 0);
    if (!strcmp(why, "REOPEN")) {
        t->resend_reopen++;
    } else {
        g_assert_cmpstr(why, ==, "NOT_PRIMARY");
        t->resend_not_primary++;
    }
}

static const PfbdTraceOps trace_ops = {
    .connect = trace_connect,
    .reopen = trace_reopen,
    .resend = trace_resend,
};

static void complete_cb(void *opaque, int ret)
{
    Completion *c = opaque;

    c->ret = ret;
    c->count++;
}

static void fill_pattern(void *buf, size_t len, unsigned seed)
{
    uint8_t *p = buf;
    size_t i;

    for (i = 0; i < len; i++) {
        p[i] = (uint8_t)(i * 7 + seed * 31 + (i >> 9));
    }
}

/*
 * A GET of @path at the conductor; returns the body (g_free it).  The
 * test's own few lines of HTTP, so that the engine's client is not
 * checked against itself.
 */
static char *http_get(const char *path)
{
    g_autofree char *host = g_strdup(conductor);
    char *colon = strrchr(host, ':');
    struct sockaddr_in sa = { .sin_family = AF_INET };
    GString *resp = g_string_new(NULL);
    g_autofree char *req = NULL;
    char buf[4096], *body;
    ssize_t n;
    int fd;

    g_assert_nonnull(colon);
    *colon = '\0';
    sa.sin_port = htons(atoi(colon + 1));
    g_assert_cmpint(inet_pton(AF_INET, host, &sa.sin_addr), ==, 1);
    fd = socket(AF_INET, SOCK_STREAM, 0);
    g_assert_cmpint(fd, >=, 0);
    g_assert_cmpint(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), ==, 0);
    req = g_strdup_printf("GET %s HTTP/1.0\r\nHost: %s\r\n\r\n", path,
                          conductor);
    g_assert_cmpint(send(fd, req, strlen(req), 0), ==, strlen(req));
    while ((n = recv(fd, buf, sizeof(buf), 0)) > 0) {
        g_string_append_len(resp, buf, n);
    }
    close(fd);
    body = strstr(resp->str, "\r\n\r\n");
    g_assert_nonnull(body);
    body = g_strdup(body + 4);
    g_string_free(resp, true);
    return body;
}

/* A conductor or control call that must succeed; returns the reply */
static char *api(const char *fmt, ...) G_GNUC_PRINTF(1, 2);

static char *api(const char *fmt, ...)
{
    g_autofree char *path = NULL;
    va_list ap;
    char *body;

    va_start(ap, fmt);
    path = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    body = http_get(path);
    if (!strstr(body, "\"ret_code\": 0") && !strstr(body, "\"ret_code\":0")) {
        g_test_message("GET %s: %s", path, body);
        g_assert_not_reached();
    }
    return body;
}

static void api_ok(const char *path)
{
    g_free(api("%s", path));
}

/* A new volume of @size bytes; returns its name */
static char *make_volume(uint64_t size)
{
    char *name = g_strdup_printf("%s-%u", vol_prefix, vol_counter++);

    g_free(api("/s5c/?op=create_volume&volume_name=%s&size=%" PRIu64
               "&rep_cnt=1&host_id=-1", name, size));
    return name;
}

/* "pureflash:NAME[@SNAP]:conductor=...[:store_port=...]@extra" */
static char *make_spec(const char *name, const char *extra)
{
    return g_strdup_printf("pureflash:%s:conductor=%s%s%s%s", name,
                           conductor, store_port ? ":store_port=" : "",
                           store_port ? store_port : "", extra ? extra : "");
}

static void open_named(TestVolume *tv, const char *name, const char *extra,
                       unsigned depth)
{
    char *err = NULL;
    int ret;

    PfbdOpenOptions opts = {
        .trace = &trace_ops,
        .trace_opaque = &trace_seen,
    };

    tv->spec = make_spec(name, extra);
    memset(&trace_seen, 0, sizeof(trace_seen));
    ret = pfbd_volume_open(tv->spec, &opts, &tv->vol, &err);
    if (ret < 0) {
        g_test_message("pfbd_volume_open('%s'): %s", tv->spec, err);
    }
    g_assert_cmpint(ret, ==, 0);
    g_assert_null(err);
    g_assert_cmpint(pfbd_queue_new(tv->vol, depth, &tv->q), ==, 0);
    pfbd_volume_get_info(tv->vol, &tv->info);
}

static void open_new(TestVolume *tv, uint64_t size, const char *extra,
                     unsigned depth)
{
    tv->name = make_volume(size);
    open_named(tv, tv->name, extra, depth);
}

/* Under the double: the stores saw no protocol violation */
static void check_no_violations(void)
{
    g_autofree char *stats = NULL;

    if (!is_double) {
        return;
    }
    stats = api("/ctl/?op=stats");
    if (!strstr(stats, "\"violations\": []")) {
        g_test_message("stats: %s", stats);
        g_assert_not_reached();
    }
}

static void close_volume(TestVolume *tv)
{
    pfbd_queue_free(tv->q);
    pfbd_volume_close(tv->vol);
    check_no_violations();
    if (tv->name) {
        g_free(api("/s5c/?op=delete_volume&volume_name=%s",
                               tv->name));
    }
    g_free(tv->name);
    g_free(tv->spec);
    memset(tv, 0, sizeof(*tv));
}

/* Run what is queued on @q to completion, waiting on its fd */
static void run_queue(PfbdQueue *q)
{
    struct pollfd pfd = { .fd = pfbd_queue_get_fd(q), .events = POLLIN };

    g_assert_cmpint(pfbd_queue_do_io(q, 0, 0, NULL), ==, 0);
    while (pfbd_queue_inflight(q) > 0) {
        g_assert_cmpint(poll(&pfd, 1, 120000), ==, 1);
        g_assert_cmpint(pfbd_queue_do_io(q, 0, 0, NULL), ==, 0);
    }
}

/* One request on @iov, run to completion; returns its result */
static int do_iov(TestVolume *tv, PfbdOp op, uint64_t offset,
                  struct iovec *iov, int iovcnt)
{
    Completion c = { .ret = 1 };
    uint64_t len = 0;
    int i;

    for (i = 0; i < iovcnt; i++) {
        len += iov[i].iov_len;
    }
    g_assert_cmpint(pfbd_submit(tv->q, op, offset, iov, iovcnt, len, 0,
                                complete_cb, &c), ==, 0);
    run_queue(tv->q);
    g_assert_cmpint(c.count, ==, 1);
    return c.ret;
}

static int do_rw(TestVolume *tv, PfbdOp op, uint64_t offset, void *buf,
                 size_t len)
{
    struct iovec iov = { buf, len };

    return do_iov(tv, op, offset, &iov, 1);
}

/* Write a pattern to [@offset, +@len) and read it back */
static void write_read_check(TestVolume *tv, uint64_t offset, size_t len,
                             unsigned seed)
{
    g_autofree uint8_t *w = g_malloc(len);
    g_autofree uint8_t *r = g_malloc0(len);

    fill_pattern(w, len, seed);
    g_assert_cmpint(do_rw(tv, PFBD_OP_WRITE, offset, w, len), ==, 0);
    g_assert_cmpint(do_rw(tv, PFBD_OP_READ, offset, r, len), ==, 0);
    g_assert_true(memcmp(w, r, len) == 0);
}

static void read_check(TestVolume *tv, uint64_t offset, size_t len,
                       unsigned seed)
{
    g_autofree uint8_t *w = g_malloc(len);
    g_autofree uint8_t *r = g_malloc0(len);

    fill_pattern(w, len, seed);
    g_assert_cmpint(do_rw(tv, PFBD_OP_READ, offset, r, len), ==, 0);
    g_assert_true(memcmp(w, r, len) == 0);
}

static void test_cluster(void)
{
    if (!conductor) {
        g_test_message("PFBD_PUREFLASH_CONDUCTOR is not set: run the tests "
                       "with tests/pureflash/with-pfdouble.sh, or point it "
                       "at a PureFlash cluster's conductor");
        g_test_fail();
        return;
    }
    g_free(api("/s5c/?op=list_volume"));
}

static void test_open_info(void)
{
    TestVolume tv = { 0 };

    open_new(&tv, 64 * MiB, NULL, 1);
    g_assert_cmpstr(tv.info.engine, ==, "pureflash");
    g_assert_cmpuint(tv.info.size, ==, 64 * MiB);
    g_assert_cmpuint(tv.info.block_size, ==, 512);
    g_assert_cmpuint(tv.info.mem_align, ==, 1);
    g_assert_cmpuint(tv.info.caps, ==, PFBD_CAP_FLUSH);
    g_assert_false(tv.info.read_only);
    close_volume(&tv);
}

static void test_write_read(void)
{
    TestVolume tv = { 0 };

    open_new(&tv, 64 * MiB, NULL, 4);
    write_read_check(&tv, 0, 4 * KiB, 1);
    write_read_check(&tv, 8 * KiB + 512, 512, 2);
    write_read_check(&tv, 64 * MiB - 128 * KiB, 128 * KiB, 3);
    /* Split into commands of 128 KiB, and a partial one */
    write_read_check(&tv, 3 * MiB + 512, 1 * MiB + 1536, 4);
    /* What the first write left is still there */
    read_check(&tv, 0, 4 * KiB, 1);
    close_volume(&tv);
}

/* Segments of any length and address: TCP has no alignment rule */
static void test_odd_iovecs(void)
{
    TestVolume tv = { 0 };
    g_autofree uint8_t *w = g_malloc(8 * KiB + 1);
    g_autofree uint8_t *r = g_malloc0(8 * KiB + 1);
    struct iovec wv[3] = {
        { w + 1, 100 }, { w + 101, 3996 }, { w + 4097, 4096 },
    };
    struct iovec rv[4] = {
        { r + 1, 7 }, { r + 8, 5000 }, { r + 5008, 0 }, { r + 5008, 3185 },
    };

    open_new(&tv, 16 * MiB, NULL, 1);
    fill_pattern(w, 8 * KiB + 1, 9);
    g_assert_cmpint(do_iov(&tv, PFBD_OP_WRITE, 8 * KiB, wv, 3), ==, 0);
    g_assert_cmpint(do_iov(&tv, PFBD_OP_READ, 8 * KiB, rv, 4), ==, 0);
    g_assert_true(memcmp(w + 1, r + 1, 8 * KiB) == 0);
    close_volume(&tv);
}

/* A request across the 64 GiB boundary goes to two shards */
static void test_cross_shard(void)
{
    TestVolume tv = { 0 };
    size_t len = 1 * MiB;
    g_autofree uint8_t *w = g_malloc(len);
    g_autofree uint8_t *r = g_malloc0(len);

    open_new(&tv, SHARD + 64 * MiB, NULL, 2);
    fill_pattern(w, len, 5);
    g_assert_cmpint(do_rw(&tv, PFBD_OP_WRITE, SHARD - len / 2, w, len), ==,
                    0);
    /* back in one request, and in one piece from each shard */
    g_assert_cmpint(do_rw(&tv, PFBD_OP_READ, SHARD - len / 2, r, len), ==, 0);
    g_assert_true(memcmp(w, r, len) == 0);
    memset(r, 0, len);
    g_assert_cmpint(do_rw(&tv, PFBD_OP_READ, SHARD - len / 2, r, len / 2),
                    ==, 0);
    g_assert_cmpint(do_rw(&tv, PFBD_OP_READ, SHARD, r + len / 2, len / 2),
                    ==, 0);
    g_assert_true(memcmp(w, r, len) == 0);
    /* the last block of the volume */
    write_read_check(&tv, SHARD + 64 * MiB - 512, 512, 6);
    close_volume(&tv);
}

#define MANY 64

/* Many requests in flight at once, more than a store grants */
static void test_many_in_flight(void)
{
    TestVolume tv = { 0 };
    size_t len = 64 * KiB;
    g_autofree uint8_t *w = g_malloc(MANY * len);
    g_autofree uint8_t *r = g_malloc0(MANY * len);
    Completion c[MANY] = { 0 }, extra = { 0 };
    struct iovec wv[MANY], rv[MANY];
    int i;

    if (is_double) {
        api_ok("/ctl/?op=set_max_depth&depth=4");
    }
    open_new(&tv, 64 * MiB, NULL, MANY);
    fill_pattern(w, MANY * len, 7);
    for (i = 0; i < MANY; i++) {
        wv[i] = (struct iovec) { w + i * len, len };
        rv[i] = (struct iovec) { r + i * len, len };
        g_assert_cmpint(pfbd_submit(tv.q, PFBD_OP_WRITE, i * len, &wv[i], 1,
                                    len, 0, complete_cb, &c[i]), ==, 0);
    }
    /* One more than the queue's depth waits for room */
    g_assert_cmpint(pfbd_submit(tv.q, PFBD_OP_WRITE, 0, &wv[0], 1, len, 0,
                                complete_cb, &extra), ==, 0);
    g_assert_cmpuint(pfbd_queue_inflight(tv.q), ==, MANY + 1);
    run_queue(tv.q);
    g_assert_cmpint(extra.count, ==, 1);
    g_assert_cmpint(extra.ret, ==, 0);
    for (i = 0; i < MANY; i++) {
        g_assert_cmpint(c[i].count, ==, 1);
        g_assert_cmpint(c[i].ret, ==, 0);
        g_assert_cmpint(pfbd_submit(tv.q, PFBD_OP_READ, i * len, &rv[i], 1,
                                    len, 0, complete_cb, &c[i]), ==, 0);
    }
    run_queue(tv.q);
    for (i = 0; i < MANY; i++) {
        g_assert_cmpint(c[i].count, ==, 2);
        g_assert_cmpint(c[i].ret, ==, 0);
    }
    g_assert_true(memcmp(w, r, MANY * len) == 0);
    if (is_double) {
        g_autofree char *stats = api("/ctl/?op=stats");

        /* the store saw no more than it granted: no violation */
        g_assert_nonnull(strstr(stats, "\"max_inflight\": 4"));
        api_ok("/ctl/?op=reset");
    }
    close_volume(&tv);
}

/* The completion fd becomes readable when a reply is in */
static void test_completion_fd(void)
{
    TestVolume tv = { 0 };
    uint8_t buf[4096];
    struct iovec iov = { buf, sizeof(buf) };
    struct pollfd pfd;
    Completion c = { 0 };
    PfbdIoCounts counts;
    int i;

    open_new(&tv, 16 * MiB, NULL, 1);
    pfd = (struct pollfd) { .fd = pfbd_queue_get_fd(tv.q), .events = POLLIN };
    g_assert_cmpint(pfbd_submit(tv.q, PFBD_OP_READ, 0, &iov, 1, sizeof(buf),
                                0, complete_cb, &c), ==, 0);
    g_assert_cmpint(pfbd_queue_do_io(tv.q, 0, 0, &counts), ==, 0);
    g_assert_cmpuint(counts.sent, ==, 1);
    for (i = 0; i < 1000 && c.count == 0; i++) {
        g_assert_cmpint(poll(&pfd, 1, 120000), ==, 1);
        g_assert_cmpint(pfbd_queue_do_io(tv.q, 0, 0, NULL), ==, 0);
    }
    g_assert_cmpint(c.count, ==, 1);
    g_assert_cmpint(c.ret, ==, 0);
    g_assert_cmpuint(pfbd_queue_inflight(tv.q), ==, 0);
    close_volume(&tv);
}

static void test_drain(void)
{
    TestVolume tv = { 0 };
    g_autofree uint8_t *buf = g_malloc0(8 * 128 * KiB);
    struct iovec iov[8];
    Completion c = { 0 };
    int i;

    open_new(&tv, 16 * MiB, NULL, 8);
    for (i = 0; i < 8; i++) {
        iov[i] = (struct iovec) { buf + i * 128 * KiB, 128 * KiB };
        g_assert_cmpint(pfbd_submit(tv.q, PFBD_OP_WRITE, i * 128 * KiB,
                                    &iov[i], 1, 128 * KiB, 0, complete_cb,
                                    &c), ==, 0);
    }
    /* not flushed: drain sends them */
    pfbd_queue_drain(tv.q);
    g_assert_cmpint(c.count, ==, 8);
    g_assert_cmpint(c.ret, ==, 0);
    close_volume(&tv);
}

/*
 * A store answers a write once it has written it (O_DIRECT), and the
 * protocol has no flush: a flush has nothing to
 * wait for and completes at once.  Discard and write-zeroes have no
 * opcode in the protocol.
 */
static void test_flush_and_unsupported(void)
{
    TestVolume tv = { 0 };
    Completion c = { 0 };

    open_new(&tv, 16 * MiB, NULL, 1);
    write_read_check(&tv, 0, 4096, 1);
    g_assert_cmpint(pfbd_submit(tv.q, PFBD_OP_FLUSH, 0, NULL, 0, 0, 0,
                                complete_cb, &c), ==, 0);
    g_assert_true(pfbd_queue_completions_ready(tv.q));
    run_queue(tv.q);
    g_assert_cmpint(c.count, ==, 1);
    g_assert_cmpint(c.ret, ==, 0);
    c.count = 0;
    g_assert_cmpint(pfbd_submit(tv.q, PFBD_OP_DISCARD, 0, NULL, 0, 4096, 0,
                                complete_cb, &c), ==, -ENOTSUP);
    g_assert_cmpint(pfbd_submit(tv.q, PFBD_OP_WRITE_ZEROES, 0, NULL, 0, 4096,
                                0, complete_cb, &c), ==, -ENOTSUP);
    g_assert_cmpint(c.count, ==, 0);
    close_volume(&tv);
}

/* A snapshot opens read-only and reads what the volume had */
static void test_snapshot(void)
{
    TestVolume tv = { 0 }, snap = { 0 };
    g_autofree char *name = NULL;
    uint8_t buf[4096];

    open_new(&tv, 16 * MiB, NULL, 1);
    write_read_check(&tv, 0, 4096, 11);
    g_free(api("/s5c/?op=create_snapshot&volume_name=%s"
                           "&snapshot_name=s1", tv.name));
    write_read_check(&tv, 0, 4096, 12);
    name = g_strdup_printf("%s@s1", tv.name);
    open_named(&snap, name, NULL, 1);
    g_assert_true(snap.info.read_only);
    read_check(&snap, 0, 4096, 11);
    read_check(&tv, 0, 4096, 12);
    g_assert_cmpint(pfbd_submit(snap.q, PFBD_OP_WRITE, 0,
                                &(struct iovec) { buf, 4096 }, 1, 4096, 0,
                                complete_cb, NULL), ==, -EROFS);
    close_volume(&snap);
    close_volume(&tv);
}

static void check_open_fails(const char *spec, int err, const char *msg)
{
    PfbdVolume *vol = (PfbdVolume *)1;
    char *errmsg = NULL;

    g_assert_cmpint(pfbd_volume_open(spec, NULL, &vol, &errmsg), ==, err);
    g_assert_null(vol);
    g_assert_nonnull(errmsg);
    if (!strstr(errmsg, msg)) {
        g_test_message("'%s' gave: %s (wanted: %s)", spec, errmsg, msg);
        g_assert_not_reached();
    }
    free(errmsg);
}

static void test_bad_specs(void)
{
    g_autofree char *unknown = make_spec("no-such-volume", NULL);
    g_autofree char *badsnap = NULL;
    g_autofree char *name = make_volume(16 * MiB);
    int fd;
    struct sockaddr_in sa = { .sin_family = AF_INET };
    socklen_t len = sizeof(sa);
    g_autofree char *closed = NULL;
    g_autofree char *nostore = NULL;

    check_open_fails("pureflash:", -EINVAL, "no volume name");
    if (access("/etc/pureflash/pf.conf", F_OK) < 0) {
        check_open_fails("pureflash:v1", -ENOENT,
                         "with conductor=HOST[:PORT], zookeeper=HOST:PORT"
                         "[,HOST:PORT...] or conf=PATH (there is no "
                         "/etc/pureflash/pf.conf)");
    }
    check_open_fails("pureflash:v1:conductor=h:zookeeper=z:2181", -EINVAL,
                     "conductor, zookeeper and conf are alternatives");
    check_open_fails("pureflash:v1:conf=/nonexistent/pf.conf", -ENOENT,
                     "cannot read the PureFlash configuration "
                     "'/nonexistent/pf.conf'");
    check_open_fails("pureflash:v1:conductor=h:colour=red", -EINVAL,
                     "unknown option 'colour' (known: conductor, "
                     "zookeeper, cluster, conf, conductor_port, timeout, "
                     "store_port)");
    check_open_fails("pureflash:v1:conductor=h:timeout=0", -EINVAL,
                     "timeout must be a number from 1 to 3600, not '0'");
    check_open_fails("pureflash:v1:conductor=127.0.0.1:99999", -EINVAL,
                     "bad port in conductor '127.0.0.1:99999'");
    check_open_fails("pureflash:v1@:conductor=h", -EINVAL,
                     "empty snapshot name");
    check_open_fails("pureflash:v1:cluster=c:conductor=h", -EINVAL,
                     "cluster applies to zookeeper only");
    check_open_fails(unknown, -ENOENT, "cannot open it: the conductor "
                     "refused it");

    badsnap = g_strdup_printf("pureflash:%s@nosnap:conductor=%s", name,
                              conductor);
    check_open_fails(badsnap, -ENOENT, "the conductor refused it");

    /* A port where nothing listens: refused at once */
    fd = socket(AF_INET, SOCK_STREAM, 0);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    g_assert_cmpint(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), ==, 0);
    g_assert_cmpint(getsockname(fd, (struct sockaddr *)&sa, &len), ==, 0);
    closed = g_strdup_printf("pureflash:%s:conductor=127.0.0.1:%u", name,
                             ntohs(sa.sin_port));
    check_open_fails(closed, -ECONNREFUSED, "did not answer: Connection "
                     "refused");
    nostore = g_strdup_printf("pureflash:%s:conductor=%s:store_port=%u",
                              name, conductor, ntohs(sa.sin_port));
    check_open_fails(nostore, -ECONNREFUSED, "no store of shard 0 takes it "
                     "(tried 127.0.0.1:");
    close(fd);
    g_free(api("/s5c/?op=delete_volume&volume_name=%s", name));
}

#ifdef PFBD_HAVE_ZOOKEEPER
/* A ZooKeeper session on PFBD_PUREFLASH_ZOOKEEPER, connected */
static zhandle_t *zk_connect(void)
{
    zhandle_t *zh;
    int i;

    zoo_set_debug_level(ZOO_LOG_LEVEL_ERROR);
    zh = zookeeper_init(zookeeper, NULL, 10000, NULL, NULL, 0);
    g_assert_nonnull(zh);
    for (i = 0; i < 3000 && zoo_state(zh) != ZOO_CONNECTED_STATE; i++) {
        g_usleep(10000);
    }
    g_assert_cmpint(zoo_state(zh), ==, ZOO_CONNECTED_STATE);
    return zh;
}

static void zk_create(zhandle_t *zh, const char *path, const char *data,
                      int flags)
{
    char made[256];
    int rc;

    rc = zoo_create(zh, path, data, data ? strlen(data) : -1,
                    &ZOO_OPEN_ACL_UNSAFE, flags, made, sizeof(made));
    g_assert_true(rc == ZOK || rc == ZNODEEXISTS);
}

/*
 * Register the double's conductor as the leader of cluster @cluster, and
 * a second conductor that must not be used (its address is wrong).
 */
static void zk_register(zhandle_t *zh, const char *cluster)
{
    g_autofree char *base = g_strdup_printf("/pureflash/%s", cluster);
    g_autofree char *dir = g_strdup_printf("%s/conductors", base);
    g_autofree char *node = g_strdup_printf("%s/conductor", dir);
    g_autofree char *host = g_strdup(conductor);

    *strrchr(host, ':') = '\0';
    zk_create(zh, "/pureflash", NULL, 0);
    zk_create(zh, base, NULL, 0);
    zk_create(zh, dir, NULL, 0);
    zk_create(zh, node, host, ZOO_SEQUENCE | ZOO_EPHEMERAL);
    zk_create(zh, node, "192.0.2.1", ZOO_SEQUENCE | ZOO_EPHEMERAL);
}

/*
 * The conductor found through ZooKeeper: named in the spec, or in a
 * PureFlash configuration file.  Under the double, the test registers
 * the double's conductor itself; on a real cluster, the cluster is
 * PFBD_PUREFLASH_CLUSTER (PureFlash's default cluster1).
 */
static void test_zookeeper(void)
{
    g_autofree char *cluster = NULL;
    g_autofree char *port = NULL;
    g_autofree char *extra = NULL;
    g_autofree char *conf_path = NULL;
    g_autofree char *conf = NULL;
    g_autofree char *empty = NULL;
    g_autofree char *spec = NULL;
    zhandle_t *zh = NULL;
    TestVolume tv = { 0 };
    const char *env_cluster = getenv("PFBD_PUREFLASH_CLUSTER");

    if (is_double) {
        zh = zk_connect();
        cluster = g_strdup_printf("test%ld", (long)getpid());
        zk_register(zh, cluster);
        port = g_strdup_printf(":conductor_port=%s",
                               strrchr(conductor, ':') + 1);
    } else {
        cluster = g_strdup(env_cluster ? env_cluster : "cluster1");
        port = g_strdup("");
    }
    tv.name = make_volume(16 * MiB);

    /* in the spec */
    extra = g_strdup_printf(":zookeeper=%s:cluster=%s%s%s%s", zookeeper,
                            cluster, port, store_port ? ":store_port=" : "",
                            store_port ? store_port : "");
    spec = g_strdup_printf("pureflash:%s%s", tv.name, extra);
    tv.spec = g_strdup(spec);
    g_assert_cmpint(pfbd_volume_open(spec, NULL, &tv.vol, NULL), ==, 0);
    g_assert_cmpint(pfbd_queue_new(tv.vol, 1, &tv.q), ==, 0);
    write_read_check(&tv, 0, 4096, 21);
    pfbd_queue_free(tv.q);
    pfbd_volume_close(tv.vol);

    /* in PureFlash's configuration file */
    conf_path = g_strdup_printf("/tmp/pf-%ld.conf", (long)getpid());
    conf = g_strdup_printf("# a PureFlash client configuration\n"
                           "[cluster]\nname = %s\n"
                           "[zookeeper]\nip=%s\n", cluster, zookeeper);
    g_assert_true(g_file_set_contents(conf_path, conf, -1, NULL));
    g_free(spec);
    spec = g_strdup_printf("pureflash:%s:conf=%s%s%s%s", tv.name, conf_path,
                           port, store_port ? ":store_port=" : "",
                           store_port ? store_port : "");
    g_assert_cmpint(pfbd_volume_open(spec, NULL, &tv.vol, NULL), ==, 0);
    g_assert_cmpint(pfbd_queue_new(tv.vol, 1, &tv.q), ==, 0);
    read_check(&tv, 0, 4096, 21);
    unlink(conf_path);

    /* a cluster nobody registered */
    g_free(spec);
    spec = g_strdup_printf("pureflash:%s:zookeeper=%s:cluster=nosuch%ld",
                           tv.name, zookeeper, (long)getpid());
    check_open_fails(spec, -ENOENT, "has no conductors of cluster 'nosuch");
    if (zh) {
        empty = g_strdup_printf("/pureflash/empty%ld", (long)getpid());
        zk_create(zh, empty, NULL, 0);
        g_free(empty);
        empty = g_strdup_printf("/pureflash/empty%ld/conductors",
                                (long)getpid());
        zk_create(zh, empty, NULL, 0);
        g_free(spec);
        spec = g_strdup_printf("pureflash:%s:zookeeper=%s:cluster=empty%ld",
                               tv.name, zookeeper, (long)getpid());
        check_open_fails(spec, -ENOENT, "no conductor of cluster 'empty");
        zookeeper_close(zh);
    }
    close_volume(&tv);
}

/* A ZooKeeper that does not answer: the open gives up after timeout */
static void test_zookeeper_unreachable(void)
{
    struct sockaddr_in sa = { .sin_family = AF_INET };
    socklen_t len = sizeof(sa);
    g_autofree char *spec = NULL;
    int fd;

    /* bound, not listening: connections are refused */
    fd = socket(AF_INET, SOCK_STREAM, 0);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    g_assert_cmpint(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), ==, 0);
    g_assert_cmpint(getsockname(fd, (struct sockaddr *)&sa, &len), ==, 0);
    spec = g_strdup_printf("pureflash:v:zookeeper=127.0.0.1:%u:timeout=2",
                           ntohs(sa.sin_port));
    check_open_fails(spec, -ETIMEDOUT, "cannot reach ZooKeeper at "
                     "'127.0.0.1:");
    close(fd);
}
#endif

/*
 * A conductor that gives canned answers: every connection gets the next
 * reply of the list, whatever it asked
 */
typedef struct FakeConductor {
    int fd;
    unsigned port;
    const char *const *replies;
    GThread *thread;
} FakeConductor;

static gpointer fake_conductor_thread(gpointer opaque)
{
    FakeConductor *fc = opaque;
    const char *const *r;

    for (r = fc->replies; *r; r++) {
        char buf[4096];
        size_t got = 0;
        ssize_t n;
        int c = accept(fc->fd, NULL, NULL);

        g_assert_cmpint(c, >=, 0);
        /* the request, up to its blank line */
        while (got < sizeof(buf) - 1 &&
               (n = recv(c, buf + got, sizeof(buf) - 1 - got, 0)) > 0) {
            got += n;
            buf[got] = '\0';
            if (strstr(buf, "\r\n\r\n")) {
                break;
            }
        }
        g_assert_nonnull(strstr(buf, "GET /s5c/?op=open_volume&"
                                "volume_name=v%2F1&snapshot_name= "
                                "HTTP/1.0\r\n"));
        if (!strcmp(*r, "HUGE")) {
            g_autofree char *big = g_malloc(1024 * 1024);

            memset(big, ' ', 1024 * 1024);
            send(c, "HTTP/1.0 200 OK\r\n\r\n", 19, MSG_NOSIGNAL);
            for (n = 0; n < 8; n++) {
                if (send(c, big, 1024 * 1024, MSG_NOSIGNAL) < 0) {
                    break;
                }
            }
        } else {
            send(c, *r, strlen(*r), MSG_NOSIGNAL);
        }
        close(c);
    }
    return NULL;
}

static void fake_conductor_start(FakeConductor *fc,
                                 const char *const *replies)
{
    struct sockaddr_in sa = { .sin_family = AF_INET };
    socklen_t len = sizeof(sa);

    fc->fd = socket(AF_INET, SOCK_STREAM, 0);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    g_assert_cmpint(bind(fc->fd, (struct sockaddr *)&sa, sizeof(sa)), ==, 0);
    g_assert_cmpint(getsockname(fc->fd, (struct sockaddr *)&sa, &len), ==, 0);
    g_assert_cmpint(listen(fc->fd, 4), ==, 0);
    fc->port = ntohs(sa.sin_port);
    fc->replies = replies;
    fc->thread = g_thread_new("conductor", fake_conductor_thread, fc);
}

#define OK200 "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n"
#define VOL "\"ret_code\": 0, \"volume_id\": 7, \"meta_ver\": 1, " \
            "\"shard_lba_cnt_order\": 36, "

/*
 * What a conductor may answer, and what the open says of it: every
 * reply the engine cannot use fails the open with a message, never a
 * crash (the replies come from the network).
 */
static void test_conductor_replies(void)
{
    static const char *const replies[] = {
        "HTTP/1.0 500 Oops\r\n\r\n",
        OK200 "not json",
        OK200 "{\"ret_code\": 2, \"reason\": \"a\\\"b\\u00e9\\n\"}",
        OK200 "{\"ret_code\": 0}",
        OK200 "{" VOL "\"volume_size\": 1048576}",
        OK200 "{" VOL "\"volume_size\": 1048576, \"shards\": [{\"index\": 1, "
        "\"store_ips\": \"127.0.0.1\"}]}",
        OK200 "{" VOL "\"volume_size\": 1048576, \"shards\": [{\"index\": 0, "
        "\"store_ips\": \"not-an-ip\"}]}",
        OK200 "{" VOL "\"volume_size\": 137438953472, \"shards\": "
        "[{\"index\": 0, \"store_ips\": \"127.0.0.1\"}]}",
        OK200 "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["
        "]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
        OK200 "{\"ret_code\": 0, \"volume_id\": 12",
        OK200 "{" VOL "\"volume_size\": 256, \"shards\": [{\"index\": 0, "
        "\"store_ips\": \"127.0.0.1\"}]}",
        OK200 "{" VOL "\"volume_size\": 1048576, \"shards\": [{\"index\": 0, "
        "\"store_ips\": \"127.0.0.1,127.0.0.2\"}], \"x\": [1, 2.5e3, true, "
        "null, {}]}",
        "HUGE",
        NULL,
    };
    static const struct {
        int err;
        const char *msg;
    } want[] = {
        { -EPROTO, "answered HTTP status 500" },
        { -EPROTO, "the conductor's reply is not a JSON object" },
        { -ENOENT, "the conductor refused it (ret_code 2: a\"b\xc3\xa9\n)" },
        { -EPROTO, "the conductor's reply has no volume_id" },
        { -EPROTO, "the conductor's reply has no shards" },
        { -EPROTO, "a shard without a valid index or store_ips" },
        { -EPROTO, "not an IPv4 address: 'not-an-ip'" },
        { -EPROTO, "names no store for shard 1" },
        { -EPROTO, "the conductor's reply is not a JSON object" },
        { -EPROTO, "the conductor's reply is not a JSON object" },
        { -EINVAL, "smaller than one block" },
        { -ECONNREFUSED, "no store of shard 0 takes it (tried "
          "127.0.0.1:9, 127.0.0.2:9): cannot connect" },
        { -EFBIG, "did not answer: File too large" },
    };
    FakeConductor fc;
    unsigned i;

    fake_conductor_start(&fc, replies);
    for (i = 0; i < G_N_ELEMENTS(want); i++) {
        g_autofree char *spec = g_strdup_printf("pureflash:v/1:conductor="
                                                "127.0.0.1:%u:store_port=9",
                                                fc.port);

        check_open_fails(spec, want[i].err, want[i].msg);
    }
    g_thread_join(fc.thread);
    close(fc.fd);
}

/*
 * A conductor that takes the connection and never answers: the open
 * gives up after the spec's timeout, with a message saying so
 */
static void test_conductor_unresponsive(void)
{
    struct sockaddr_in sa = { .sin_family = AF_INET };
    socklen_t len = sizeof(sa);
    g_autofree char *spec = NULL;
    gint64 t0;
    int fd;

    /* listening, never accepting: the kernel completes the connection */
    fd = socket(AF_INET, SOCK_STREAM, 0);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    g_assert_cmpint(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), ==, 0);
    g_assert_cmpint(getsockname(fd, (struct sockaddr *)&sa, &len), ==, 0);
    g_assert_cmpint(listen(fd, 1), ==, 0);
    spec = g_strdup_printf("pureflash:v:conductor=127.0.0.1:%u:timeout=2",
                           ntohs(sa.sin_port));
    t0 = g_get_monotonic_time();
    check_open_fails(spec, -ETIMEDOUT, "did not answer: Connection timed "
                     "out");
    /* bounded: the timeout, not forever (generous for a loaded machine) */
    g_assert_cmpint(g_get_monotonic_time() - t0, <, 60 * G_USEC_PER_SEC);
    close(fd);
}

/* Two queues, each driven by its own thread */
typedef struct Worker {
    TestVolume *tv;
    PfbdQueue *q;
    unsigned index;
} Worker;

static gpointer worker_thread(gpointer opaque)
{
    Worker *wk = opaque;
    size_t len = 32 * KiB;
    g_autofree uint8_t *w = g_malloc(len);
    g_autofree uint8_t *r = g_malloc(len);
    int i;

    for (i = 0; i < 32; i++) {
        uint64_t off = (wk->index * 32 + i) * len;
        struct iovec wv = { w, len }, rv = { r, len };
        Completion c = { 0 };

        fill_pattern(w, len, wk->index * 100 + i);
        g_assert_cmpint(pfbd_submit(wk->q, PFBD_OP_WRITE, off, &wv, 1, len, 0,
                                    complete_cb, &c), ==, 0);
        run_queue(wk->q);
        g_assert_cmpint(pfbd_submit(wk->q, PFBD_OP_READ, off, &rv, 1, len, 0,
                                    complete_cb, &c), ==, 0);
        run_queue(wk->q);
        g_assert_cmpint(c.count, ==, 2);
        g_assert_cmpint(c.ret, ==, 0);
        g_assert_true(memcmp(w, r, len) == 0);
    }
    return NULL;
}

static void test_two_queues_two_threads(void)
{
    TestVolume tv = { 0 };
    Worker wk[2];
    GThread *t[2];
    int k;

    open_new(&tv, 16 * MiB, NULL, 4);
    for (k = 0; k < 2; k++) {
        wk[k] = (Worker) { &tv, NULL, k };
        g_assert_cmpint(pfbd_queue_new(tv.vol, 4, &wk[k].q), ==, 0);
        t[k] = g_thread_new("worker", worker_thread, &wk[k]);
    }
    for (k = 0; k < 2; k++) {
        g_thread_join(t[k]);
        pfbd_queue_free(wk[k].q);
    }
    close_volume(&tv);
}

/* ---- misbehaving stores, through the double's control API ---- */

static void fault(const char *kind, unsigned count, const char *more)
{
    g_autofree char *path = g_strdup_printf("/ctl/?op=fault&store=all"
                                            "&kind=%s&count=%u%s", kind,
                                            count, more ? more : "");

    api_ok(path);
}

/* A figure of store @k from the double's stats */
static long store_stat(unsigned k, const char *key)
{
    g_autofree char *stats = api("/ctl/?op=stats");
    g_autofree char *pat = g_strdup_printf("\"%s\": ", key);
    const char *p = stats;
    unsigned i;

    for (i = 0; i <= k; i++) {
        p = strstr(p + 1, "\"connections\":");
        g_assert_nonnull(p);
    }
    p = strstr(p, pat);
    g_assert_nonnull(p);
    return atol(p + strlen(pat));
}

/* Several requests in flight under a fault; all of them succeed */
static void run_batch(TestVolume *tv, unsigned n, unsigned seed)
{
    size_t len = 16 * KiB;
    g_autofree uint8_t *w = g_malloc(n * len);
    g_autofree uint8_t *r = g_malloc0(n * len);
    g_autofree Completion *c = g_new0(Completion, n);
    g_autofree struct iovec *wv = g_new(struct iovec, n);
    g_autofree struct iovec *rv = g_new(struct iovec, n);
    unsigned i;

    fill_pattern(w, n * len, seed);
    for (i = 0; i < n; i++) {
        wv[i] = (struct iovec) { w + i * len, len };
        rv[i] = (struct iovec) { r + i * len, len };
        g_assert_cmpint(pfbd_submit(tv->q, PFBD_OP_WRITE, i * len, &wv[i], 1,
                                    len, 0, complete_cb, &c[i]), ==, 0);
    }
    run_queue(tv->q);
    for (i = 0; i < n; i++) {
        g_assert_cmpint(c[i].ret, ==, 0);
        g_assert_cmpint(pfbd_submit(tv->q, PFBD_OP_READ, i * len, &rv[i], 1,
                                    len, 0, complete_cb, &c[i]), ==, 0);
    }
    run_queue(tv->q);
    for (i = 0; i < n; i++) {
        g_assert_cmpint(c[i].count, ==, 2);
        g_assert_cmpint(c[i].ret, ==, 0);
    }
    g_assert_true(memcmp(w, r, n * len) == 0);
}

static void test_double_fault(gconstpointer data)
{
    const char *kind = data;
    TestVolume tv = { 0 };
    g_autofree char *stats = NULL;

    api_ok("/ctl/?op=reset");
    open_new(&tv, 16 * MiB, NULL, 8);
    run_batch(&tv, 8, 1);
    fault(kind, 3, !strcmp(kind, "slow") ? "&delay_ms=300" : NULL);
    if (!strcmp(kind, "hs_reject")) {
        /* a new queue: new connections, new handshakes */
        pfbd_queue_free(tv.q);
        g_assert_cmpint(pfbd_queue_new(tv.vol, 8, &tv.q), ==, 0);
    }
    run_batch(&tv, 8, 2);
    /* the fault was used up: the double really misbehaved */
    stats = api("/ctl/?op=stats");
    if (!strstr(stats, "\"faults\": []")) {
        g_test_message("stats: %s", stats);
        g_assert_not_reached();
    }
    /* and the engine's trace tells what it did about it */
    g_assert_cmpint(trace_seen.connect, >=, 1);
    if (!strcmp(kind, "reopen")) {
        g_assert_cmpint(trace_seen.resend_reopen, >=, 1);
        g_assert_cmpint(trace_seen.reopen, >=, 1);
    } else if (!strcmp(kind, "not_primary")) {
        g_assert_cmpint(trace_seen.resend_not_primary, >=, 1);
        g_assert_cmpint(trace_seen.reopen, >=, 1);
    } else if (!strcmp(kind, "drop") || !strcmp(kind, "hs_reject")) {
        g_assert_cmpint(trace_seen.connect, >=, 2);
    }
    close_volume(&tv);
}

/* The conductor moved the volume to a new metadata version */
static void test_double_meta_ver(void)
{
    TestVolume tv = { 0 };

    api_ok("/ctl/?op=reset");
    open_new(&tv, 16 * MiB, NULL, 8);
    run_batch(&tv, 8, 1);
    g_free(api("/ctl/?op=bump_meta_ver&volume_name=%s",
                           tv.name));
    run_batch(&tv, 8, 2);
    g_free(api("/ctl/?op=bump_meta_ver&volume_name=%s",
                           tv.name));
    run_batch(&tv, 8, 3);
    close_volume(&tv);
}

/* The primary of shard 0 moved to the other store */
static void test_double_primary_moved(void)
{
    TestVolume tv = { 0 };

    api_ok("/ctl/?op=reset");
    open_new(&tv, 16 * MiB, NULL, 8);
    run_batch(&tv, 8, 1);
    g_free(api("/ctl/?op=set_primary&volume_name=%s&shard=0"
                           "&store=1", tv.name));
    run_batch(&tv, 8, 2);
    /* store 1 (127.0.0.2) served them */
    g_assert_cmpint(store_stat(1, "bytes_written"), >, 0);
    g_free(api("/ctl/?op=set_primary&volume_name=%s&shard=0"
                           "&store=0", tv.name));
    run_batch(&tv, 8, 3);
    close_volume(&tv);
}

/* A store that fails a request: the request fails, the next ones work */
static void test_double_aioerror(void)
{
    TestVolume tv = { 0 };
    uint8_t buf[4096];

    api_ok("/ctl/?op=reset");
    open_new(&tv, 16 * MiB, NULL, 1);
    fault("aioerror", 1, NULL);
    g_assert_cmpint(do_rw(&tv, PFBD_OP_WRITE, 0, buf, sizeof(buf)), ==,
                    -EIO);
    write_read_check(&tv, 0, 4096, 3);
    close_volume(&tv);
}

/*
 * A store that does not answer within the I/O timeout: the request fails
 * with -ETIMEDOUT, and the next one (a new connection) works.
 */
static void test_double_timeout(void)
{
    TestVolume tv = { 0 };
    uint8_t buf[4096];

    api_ok("/ctl/?op=reset");
    open_new(&tv, 16 * MiB, ":timeout=1", 1);
    fault("slow", 1, "&delay_ms=4000");
    g_assert_cmpint(do_rw(&tv, PFBD_OP_READ, 0, buf, sizeof(buf)), ==,
                    -ETIMEDOUT);
    write_read_check(&tv, 0, 4096, 4);
    close_volume(&tv);
}

/*
 * Every store down: requests fail within the timeout; once a store is
 * back, requests sent again (as the device's "cont" does) succeed.
 */
static void test_double_stores_down(void)
{
    TestVolume tv = { 0 };
    uint8_t buf[4096];

    api_ok("/ctl/?op=reset");
    open_new(&tv, 16 * MiB, ":timeout=2", 1);
    write_read_check(&tv, 0, 4096, 5);
    api_ok("/ctl/?op=stop_store&store=0");
    api_ok("/ctl/?op=stop_store&store=1");
    g_assert_cmpint(do_rw(&tv, PFBD_OP_READ, 0, buf, sizeof(buf)), ==,
                    -ETIMEDOUT);
    api_ok("/ctl/?op=start_store&store=0");
    api_ok("/ctl/?op=start_store&store=1");
    read_check(&tv, 0, 4096, 5);
    close_volume(&tv);
}

/*
 * A conductor that accepts the re-open and then stalls: the engine gives
 * that re-open up and asks again, so the request still completes within
 * its timeout, and so do the next ones.
 */
static void test_double_conductor_stalls(void)
{
    TestVolume tv = { 0 };

    api_ok("/ctl/?op=reset");
    open_new(&tv, 16 * MiB, ":timeout=8", 1);
    write_read_check(&tv, 0, 4096, 7);
    g_free(api("/ctl/?op=bump_meta_ver&volume_name=%s", tv.name));
    fault("conductor_hang", 1, "&delay_ms=30000");
    write_read_check(&tv, 0, 4096, 8);
    g_free(api("/ctl/?op=bump_meta_ver&volume_name=%s", tv.name));
    write_read_check(&tv, 0, 4096, 9);
    close_volume(&tv);
}

/* The primary store down: the engine goes on with the other one */
static void test_double_primary_down(void)
{
    TestVolume tv = { 0 };

    api_ok("/ctl/?op=reset");
    open_new(&tv, 16 * MiB, NULL, 8);
    run_batch(&tv, 8, 1);
    api_ok("/ctl/?op=stop_store&store=0");
    /* the conductor still names store 0 first: the engine tries store 1 */
    g_free(api("/ctl/?op=set_primary&volume_name=%s&shard=0"
                           "&store=1", tv.name));
    run_batch(&tv, 8, 2);
    g_assert_cmpint(store_stat(1, "bytes_written"), >, 0);
    api_ok("/ctl/?op=reset");
    close_volume(&tv);
}

static unsigned count_fds(void)
{
    GDir *d = g_dir_open("/proc/self/fd", 0, NULL);
    unsigned n = 0;

    g_assert_nonnull(d);
    while (g_dir_read_name(d)) {
        n++;
    }
    g_dir_close(d);
    return n;
}

/*
 * A guest that touches every shard of a volume with many of them: the
 * queue keeps at most 16 sockets open, and every request still completes
 * (the double's shard_order makes 64 shards of 1 MiB).
 */
static void test_double_many_shards(void)
{
    TestVolume tv = { 0 };
    enum { N = 64 };
    g_autofree uint8_t *w = g_malloc(N * 4096);
    g_autofree uint8_t *r = g_malloc0(N * 4096);
    Completion c[N] = { 0 };
    struct iovec wv[N], rv[N];
    struct pollfd pfd;
    unsigned base, most = 0;
    int i, pass;

    api_ok("/ctl/?op=reset");
    tv.name = g_strdup_printf("%s-%u", vol_prefix, vol_counter++);
    g_free(api("/s5c/?op=create_volume&volume_name=%s&size=%llu"
               "&rep_cnt=1&host_id=-1&shard_order=20", tv.name, N * MiB));
    open_named(&tv, tv.name, NULL, N);
    pfd = (struct pollfd) { .fd = pfbd_queue_get_fd(tv.q), .events = POLLIN };
    fill_pattern(w, N * 4096, 31);
    base = count_fds();
    for (pass = 0; pass < 2; pass++) {
        for (i = 0; i < N; i++) {
            wv[i] = (struct iovec) { w + i * 4096, 4096 };
            rv[i] = (struct iovec) { r + i * 4096, 4096 };
            g_assert_cmpint(pfbd_submit(tv.q, pass ? PFBD_OP_READ :
                                        PFBD_OP_WRITE, i * MiB + 8192,
                                        pass ? &rv[i] : &wv[i], 1, 4096, 0,
                                        complete_cb, &c[i]), ==, 0);
        }
        g_assert_cmpint(pfbd_queue_do_io(tv.q, 0, 0, NULL), ==, 0);
        while (pfbd_queue_inflight(tv.q) > 0) {
            most = MAX(most, count_fds() - base);
            g_assert_cmpint(poll(&pfd, 1, 120000), ==, 1);
            g_assert_cmpint(pfbd_queue_do_io(tv.q, 0, 0, NULL), ==, 0);
        }
    }
    for (i = 0; i < N; i++) {
        g_assert_cmpint(c[i].count, ==, 2);
        g_assert_cmpint(c[i].ret, ==, 0);
    }
    g_assert_true(memcmp(w, r, N * 4096) == 0);
    g_test_message("most sockets open at once: %u", most);
    g_assert_cmpuint(most, >, 1);
    g_assert_cmpuint(most, <=, 16 + 1);     /* + a re-open's HTTP socket */
    close_volume(&tv);
}

static void add_double_tests(void)
{
    static const char *const kinds[] = {
        "reopen", "not_primary", "drop", "slow", "reorder", "fragment",
        "short", "hs_reject",
    };
    unsigned i;

    for (i = 0; i < G_N_ELEMENTS(kinds); i++) {
        g_autofree char *path = g_strdup_printf("/pfbd/pureflash/double/"
                                                "fault-%s", kinds[i]);

        g_test_add_data_func(path, kinds[i], test_double_fault);
    }
    g_test_add_func("/pfbd/pureflash/double/many-shards",
                    test_double_many_shards);
    g_test_add_func("/pfbd/pureflash/double/meta-ver-changed",
                    test_double_meta_ver);
    g_test_add_func("/pfbd/pureflash/double/primary-moved",
                    test_double_primary_moved);
    g_test_add_func("/pfbd/pureflash/double/primary-down",
                    test_double_primary_down);
    g_test_add_func("/pfbd/pureflash/double/aioerror", test_double_aioerror);
    g_test_add_func("/pfbd/pureflash/double/conductor-stalls",
                    test_double_conductor_stalls);
    g_test_add_func("/pfbd/pureflash/double/timeout", test_double_timeout);
    g_test_add_func("/pfbd/pureflash/double/stores-down",
                    test_double_stores_down);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    conductor = getenv("PFBD_PUREFLASH_CONDUCTOR");
    zookeeper = getenv("PFBD_PUREFLASH_ZOOKEEPER");
    store_port = getenv("PFBD_PUREFLASH_STORE_PORT");
    is_double = getenv("PFBD_PUREFLASH_DOUBLE") != NULL;
    if (conductor && !conductor[0]) {
        conductor = NULL;
    }
    if (store_port && !store_port[0]) {
        store_port = NULL;
    }
    snprintf(vol_prefix, sizeof(vol_prefix), "pfbdtest%ld",
             (long)getpid());

    g_test_add_func("/pfbd/pureflash/conductor-replies",
                    test_conductor_replies);
    g_test_add_func("/pfbd/pureflash/conductor-unresponsive",
                    test_conductor_unresponsive);
    g_test_add_func("/pfbd/pureflash/cluster", test_cluster);
    if (conductor) {
        g_test_add_func("/pfbd/pureflash/open-info", test_open_info);
        g_test_add_func("/pfbd/pureflash/bad-specs", test_bad_specs);
        g_test_add_func("/pfbd/pureflash/write-read", test_write_read);
        g_test_add_func("/pfbd/pureflash/odd-iovecs", test_odd_iovecs);
        g_test_add_func("/pfbd/pureflash/cross-shard", test_cross_shard);
        g_test_add_func("/pfbd/pureflash/many-in-flight",
                        test_many_in_flight);
        g_test_add_func("/pfbd/pureflash/completion-fd", test_completion_fd);
        g_test_add_func("/pfbd/pureflash/drain", test_drain);
        g_test_add_func("/pfbd/pureflash/flush-and-unsupported",
                        test_flush_and_unsupported);
        g_test_add_func("/pfbd/pureflash/snapshot", test_snapshot);
        g_test_add_func("/pfbd/pureflash/two-queues-two-threads",
                        test_two_queues_two_threads);
#ifdef PFBD_HAVE_ZOOKEEPER
        if (zookeeper) {
            g_test_add_func("/pfbd/pureflash/zookeeper", test_zookeeper);
        }
        g_test_add_func("/pfbd/pureflash/zookeeper-unreachable",
                        test_zookeeper_unreachable);
#endif
        if (is_double) {
            add_double_tests();
        }
    }
    return g_test_run();
}

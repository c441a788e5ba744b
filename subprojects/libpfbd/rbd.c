/*
 * libpfbd: the rbd engine, librbd's asynchronous API on a Ceph RBD image
 *
 * Copyright (c) 2026 pfbd-qemu developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * The volume holds the cluster connection, the pool's I/O context and one
 * image handle, shared by its queues.  librbd reports completions per
 * image handle, so a queue cannot have its own eventfd through
 * rbd_set_image_notification() without its own handle, and several
 * handles writing to one image pass the exclusive lock back and forth (a
 * round trip to the OSD each time: 2 queues writing ran at 0.13x of one
 * handle, and with a connection per queue they stalled).  Instead every
 * request's completion callback does only this, in librbd's thread: push
 * the request on its queue's lock-free done list and, if the list was
 * empty, write the queue's eventfd.  The queue's owner takes the list in
 * pfbd_queue_reap() and runs the callbacks there, so nothing of the caller
 * ever runs on a librbd thread.
 *
 * The spec is QEMU's classic rbd filename:
 *   POOL/[NAMESPACE/]IMAGE[@SNAP][:KEY=VALUE]...
 * with "\" escaping ':', '@', '/', '=' and '\'.  conf=PATH reads that file
 * (else $CEPH_CONF and Ceph's default places, if present), id=USER picks
 * the client name, and every other KEY=VALUE (key, keyring,
 * rados_osd_op_timeout, ...) is a Ceph option set with rados_conf_set().
 * rbd_cache is off unless the spec turns it on: requests are durable when
 * they complete.  A snapshot opens read-only.
 */

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/eventfd.h>
#include <rados/librados.h>
#include <rbd/librbd.h>
#include "pfbd-int.h"

#define RBD_BLOCK_SIZE 512

/* Give up connecting after this long unless the spec says otherwise */
#define RBD_DEFAULT_MOUNT_TIMEOUT "30"

typedef struct RbdOption {
    char *key;
    char *value;
} RbdOption;

typedef struct RbdSpec {
    char *pool;
    char *ns;                   /* or NULL */
    char *image;
    char *snap;                 /* or NULL */
    char *conf;                 /* or NULL */
    char *id;                   /* or NULL */
    char *key_secret;           /* the secret that holds the key, or NULL */
    RbdOption *opts;            /* Ceph options */
    unsigned nopts;
} RbdSpec;

typedef struct RbdVolume {
    PfbdVolume base;
    RbdSpec sp;                 /* what the spec says, for each connection */
    rados_t cluster;
    rados_ioctx_t ioctx;
    rbd_image_t image;          /* every queue's requests go here */
    bool cache;                 /* rbd_cache on: FUA needs a flush */
} RbdVolume;

typedef struct RbdQueue RbdQueue;

typedef struct RbdReq {
    RbdQueue *rq;
    PfbdOp op;
    unsigned flags;
    uint64_t offset;
    uint64_t len;
    const struct iovec *iov;
    int iovcnt;
    bool fua_flush;             /* the flush that follows a FUA write */
    ssize_t ret;                /* librbd's result, set by the callback */
    PfbdCompletionFunc *cb;
    void *opaque;
    struct RbdReq *next;        /* on the free, done or ready list */
} RbdReq;

struct RbdQueue {
    PfbdQueue base;
    int efd;
    unsigned queued;            /* sent since the last flush */
    RbdReq *reqs;               /* base.depth requests */
    RbdReq *free_reqs;
    RbdReq *done;               /* pushed by librbd's callbacks (atomic) */
    unsigned callbacks;         /* callbacks running now (atomic) */
    RbdReq *ready;              /* taken from @done, oldest first */
};

static void pfbd_rbd_spec_free(RbdSpec *sp)
{
    unsigned i;

    free(sp->pool);
    free(sp->ns);
    free(sp->image);
    free(sp->snap);
    free(sp->conf);
    free(sp->id);
    free(sp->key_secret);
    for (i = 0; i < sp->nopts; i++) {
        free(sp->opts[i].key);
        free(sp->opts[i].value);
    }
    free(sp->opts);
    memset(sp, 0, sizeof(*sp));
}

static bool pfbd_rbd_bad_name(const char *s)
{
    return !s || !s[0];
}

/* Append Ceph option @key=@value to @sp, which takes both (or frees them) */
static int pfbd_rbd_add_option(RbdSpec *sp, char *key, char *value)
{
    RbdOption *opts = realloc(sp->opts, (sp->nopts + 1) * sizeof(*opts));

    if (!opts) {
        free(key);
        free(value);
        return -ENOMEM;
    }
    sp->opts = opts;
    sp->opts[sp->nopts].key = key;
    sp->opts[sp->nopts].value = value;
    sp->nopts++;
    return 0;
}

/*
 * key-secret=ID: look the key up with the caller's secret lookup and set
 * it as Ceph option "key", after the spec's own options (it wins over a
 * key= there)
 */
static int pfbd_rbd_resolve_key(RbdSpec *sp, const char *spec,
                                const PfbdOpenOptions *opts, char **errmsg)
{
    char *value = NULL;
    char *msg = NULL;
    char *key;
    int ret;

    if (!sp->key_secret) {
        return 0;
    }
    if (!opts || !opts->secret_lookup) {
        pfbd_set_error(errmsg, "volume '%s': key-secret needs a program "
                       "that resolves secrets (QEMU: -object secret)", spec);
        return -EINVAL;
    }
    ret = opts->secret_lookup(opts->secret_opaque, sp->key_secret, &value,
                              &msg);
    if (ret < 0) {
        pfbd_set_error(errmsg, "volume '%s': key-secret '%s': %s", spec,
                       sp->key_secret, msg ? msg : strerror(-ret));
        free(msg);
        return ret;
    }
    key = strdup("key");
    if (!key || pfbd_rbd_add_option(sp, key, value) < 0) {
        free(value);
        pfbd_set_error(errmsg, "volume '%s': out of memory", spec);
        return -ENOMEM;
    }
    return 0;
}

/* Parse @arg, the spec after "rbd:", into @sp */
static int pfbd_rbd_parse_spec(const char *spec, const char *arg, RbdSpec *sp,
                          char **errmsg)
{
    const char *p = arg;
    char *first, *second, *third = NULL;
    char *key, *value;
    char d;

    memset(sp, 0, sizeof(*sp));
    first = pfbd_next_token(&p, "/:@", &d);
    if (!first) {
        goto nomem;
    }
    if (d != '/') {
        free(first);
        pfbd_set_error(errmsg, "volume spec '%s': expected "
                       "rbd:POOL/IMAGE[@SNAP][:KEY=VALUE]...", spec);
        return -EINVAL;
    }
    sp->pool = first;
    second = pfbd_next_token(&p, "/:@", &d);
    if (!second) {
        goto nomem;
    }
    if (d == '/') {
        third = pfbd_next_token(&p, ":@", &d);
        if (!third) {
            free(second);
            goto nomem;
        }
        sp->ns = second;
        sp->image = third;
    } else {
        sp->image = second;
    }
    if (d == '@') {
        sp->snap = pfbd_next_token(&p, ":", &d);
        if (!sp->snap) {
            goto nomem;
        }
        if (pfbd_rbd_bad_name(sp->snap)) {
            pfbd_set_error(errmsg, "volume spec '%s': empty snapshot name",
                           spec);
            goto inval;
        }
    }
    if (pfbd_rbd_bad_name(sp->pool) || pfbd_rbd_bad_name(sp->image) ||
        (sp->ns && pfbd_rbd_bad_name(sp->ns))) {
        pfbd_set_error(errmsg, "volume spec '%s': empty pool, namespace or "
                       "image name", spec);
        goto inval;
    }

    while (p) {
        key = pfbd_next_token(&p, "=:", &d);
        if (!key) {
            goto nomem;
        }
        if (d != '=' || !key[0]) {
            pfbd_set_error(errmsg, "volume spec '%s': option '%s' is not "
                           "KEY=VALUE", spec, key);
            free(key);
            goto inval;
        }
        value = pfbd_next_token(&p, ":", &d);
        if (!value) {
            free(key);
            goto nomem;
        }
        if (!strcmp(key, "conf") || !strcmp(key, "id") ||
            !strcmp(key, "key-secret")) {
            char **slot = key[0] == 'c' ? &sp->conf :
                          key[0] == 'i' ? &sp->id : &sp->key_secret;

            free(*slot);
            *slot = value;
            free(key);
            continue;
        }
        if (pfbd_rbd_add_option(sp, key, value) < 0) {
            goto nomem;
        }
    }
    return 0;

nomem:
    pfbd_set_error(errmsg, "volume '%s': out of memory", spec);
    pfbd_rbd_spec_free(sp);
    return -ENOMEM;
inval:
    pfbd_rbd_spec_free(sp);
    return -EINVAL;
}

/*
 * Create, configure and connect a cluster handle as @sp says, and open
 * the I/O context of its pool.  On failure *@clusterp and *@ioctxp are
 * what must be cleaned up (NULL if nothing).
 */
static int pfbd_rbd_connect(const RbdSpec *sp, const char *spec,
                            rados_t *clusterp, rados_ioctx_t *ioctxp,
                            bool *cachep, char **errmsg)
{
    const char *conf_path;
    rados_t cluster;
    char buf[16];
    unsigned i;
    int ret;

    *clusterp = NULL;
    *ioctxp = NULL;
    ret = rados_create(&cluster, sp->id);
    if (ret < 0) {
        pfbd_set_error(errmsg, "volume '%s': cannot create the cluster "
                       "handle: %s", spec, strerror(-ret));
        return ret;
    }
    *clusterp = cluster;
    /* Our defaults: the configuration file and the spec override them */
    rados_conf_set(cluster, "client_mount_timeout",
                   RBD_DEFAULT_MOUNT_TIMEOUT);
    rados_conf_set(cluster, "rbd_cache", "false");

    if (sp->conf) {
        ret = rados_conf_read_file(cluster, sp->conf);
        if (ret < 0) {
            pfbd_set_error(errmsg, "volume '%s': cannot read the Ceph "
                           "configuration '%s': %s", spec, sp->conf,
                           strerror(-ret));
            return ret;
        }
    } else {
        /* $CEPH_CONF or Ceph's default paths; none is fine (spec options) */
        conf_path = getenv("CEPH_CONF");
        ret = rados_conf_read_file(cluster, NULL);
        if (ret < 0 && conf_path && conf_path[0]) {
            pfbd_set_error(errmsg, "volume '%s': cannot read the Ceph "
                           "configuration '%s' ($CEPH_CONF): %s", spec,
                           conf_path, strerror(-ret));
            return ret;
        }
    }
    for (i = 0; i < sp->nopts; i++) {
        ret = rados_conf_set(cluster, sp->opts[i].key, sp->opts[i].value);
        if (ret < 0) {
            /* The value of "key" is a secret */
            pfbd_set_error(errmsg, "volume '%s': %s Ceph option '%s=%s'",
                           spec, ret == -ENOENT ? "unknown" : "invalid",
                           sp->opts[i].key,
                           strcmp(sp->opts[i].key, "key") ?
                           sp->opts[i].value : "***");
            return ret;
        }
    }
    if (rados_conf_get(cluster, "rbd_cache", buf, sizeof(buf)) == 0) {
        *cachep = !strcmp(buf, "true");
    }

    ret = rados_connect(cluster);
    if (ret < 0) {
        if (rados_conf_get(cluster, "client_mount_timeout", buf,
                           sizeof(buf)) < 0) {
            strcpy(buf, "?");
        }
        pfbd_set_error(errmsg, "volume '%s': cannot connect to the Ceph "
                       "cluster: %s (client_mount_timeout is %s s)", spec,
                       strerror(-ret), buf);
        return ret;
    }

    ret = rados_ioctx_create(cluster, sp->pool, ioctxp);
    if (ret < 0) {
        *ioctxp = NULL;
        pfbd_set_error(errmsg, "volume '%s': %s pool '%s': %s", spec,
                       ret == -ENOENT ? "no" : "cannot open", sp->pool,
                       strerror(-ret));
        return ret;
    }
    if (sp->ns) {
        rados_ioctx_set_namespace(*ioctxp, sp->ns);
    }
    return 0;
}

/* Open the image of @rv, read-only for a snapshot or a read-only volume */
static int pfbd_rbd_open_image(RbdVolume *rv, rados_ioctx_t ioctx,
                               rbd_image_t *imagep)
{
    if (rv->base.info.read_only) {
        return rbd_open_read_only(ioctx, rv->sp.image, imagep, rv->sp.snap);
    }
    return rbd_open(ioctx, rv->sp.image, imagep, NULL);
}

static void pfbd_rbd_disconnect(rados_t cluster, rados_ioctx_t ioctx)
{
    if (ioctx) {
        rados_ioctx_destroy(ioctx);
    }
    if (cluster) {
        rados_shutdown(cluster);
    }
}

static void pfbd_rbd_volume_close(PfbdVolume *vol)
{
    RbdVolume *rv = (RbdVolume *)vol;

    if (rv->image) {
        rbd_close(rv->image);
    }
    pfbd_rbd_disconnect(rv->cluster, rv->ioctx);
    pfbd_rbd_spec_free(&rv->sp);
    free(rv);
}

static int pfbd_rbd_volume_open(const char *spec, const char *arg,
                                const PfbdOpenOptions *opts, PfbdVolume **volp,
                                char **errmsg)
{
    RbdVolume *rv;
    RbdSpec *sp;
    uint64_t size;
    int ret;

    rv = calloc(1, sizeof(*rv));
    if (!rv) {
        pfbd_set_error(errmsg, "volume '%s': out of memory", spec);
        return -ENOMEM;
    }
    sp = &rv->sp;
    ret = pfbd_rbd_parse_spec(spec, arg, sp, errmsg);
    if (ret < 0) {
        free(rv);
        return ret;
    }
    rv->base.info.read_only = (opts && opts->read_only) || sp->snap;

    ret = pfbd_rbd_resolve_key(sp, spec, opts, errmsg);
    if (ret < 0) {
        goto fail;
    }
    ret = pfbd_rbd_connect(sp, spec, &rv->cluster, &rv->ioctx, &rv->cache,
                           errmsg);
    if (ret < 0) {
        goto fail;
    }
    ret = pfbd_rbd_open_image(rv, rv->ioctx, &rv->image);
    if (ret < 0) {
        rv->image = NULL;
        if (ret == -ENOENT && sp->snap) {
            pfbd_set_error(errmsg, "volume '%s': no image '%s' with a "
                           "snapshot '%s' in pool '%s'%s%s", spec,
                           sp->image, sp->snap, sp->pool,
                           sp->ns ? ", namespace " : "", sp->ns ? sp->ns : "");
        } else if (ret == -ENOENT) {
            pfbd_set_error(errmsg, "volume '%s': no image '%s' in pool "
                           "'%s'%s%s", spec, sp->image, sp->pool,
                           sp->ns ? ", namespace " : "", sp->ns ? sp->ns : "");
        } else {
            pfbd_set_error(errmsg, "volume '%s': cannot open image '%s': %s",
                           spec, sp->image, strerror(-ret));
        }
        goto fail;
    }
    ret = rbd_get_size(rv->image, &size);
    if (ret < 0) {
        pfbd_set_error(errmsg, "volume '%s': cannot get the image size: %s",
                       spec, strerror(-ret));
        goto fail;
    }
    size -= size % RBD_BLOCK_SIZE;
    if (size == 0) {
        pfbd_set_error(errmsg, "volume '%s': the image is smaller than one "
                       "block (%u bytes)", spec, RBD_BLOCK_SIZE);
        ret = -EINVAL;
        goto fail;
    }
    rv->base.info.size = size;
    rv->base.info.block_size = RBD_BLOCK_SIZE;
    rv->base.info.mem_align = 1;
    rv->base.info.caps = PFBD_CAP_FLUSH | PFBD_CAP_DISCARD |
                         PFBD_CAP_WRITE_ZEROES;
    *volp = &rv->base;
    return 0;

fail:
    pfbd_rbd_volume_close(&rv->base);
    return ret;
}

static int pfbd_rbd_volume_get_size(PfbdVolume *vol, uint64_t *sizep)
{
    return rbd_get_size(((RbdVolume *)vol)->image, sizep);
}

static void pfbd_rbd_queue_free(PfbdQueue *q)
{
    RbdQueue *rq = (RbdQueue *)q;

    /*
     * Nothing is in flight, but the callback of the last request may still
     * be about to write the eventfd: wait until it has
     */
    while (__atomic_load_n(&rq->callbacks, __ATOMIC_ACQUIRE)) {
        sched_yield();
    }
    if (rq->efd >= 0) {
        close(rq->efd);
    }
    free(rq->reqs);
    free(rq);
}

static int pfbd_rbd_queue_new(PfbdVolume *vol, unsigned depth, PfbdQueue **qp)
{
    RbdQueue *rq;
    unsigned i;
    int ret;

    rq = calloc(1, sizeof(*rq));
    if (!rq) {
        return -ENOMEM;
    }
    rq->efd = -1;
    rq->reqs = calloc(depth, sizeof(rq->reqs[0]));
    if (!rq->reqs) {
        ret = -ENOMEM;
        goto fail;
    }
    for (i = 0; i < depth; i++) {
        rq->reqs[i].rq = rq;
        rq->reqs[i].next = rq->free_reqs;
        rq->free_reqs = &rq->reqs[i];
    }
    rq->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (rq->efd < 0) {
        ret = -errno;
        goto fail;
    }
    *qp = &rq->base;
    return 0;

fail:
    pfbd_rbd_queue_free(&rq->base);
    return ret;
}

static int pfbd_rbd_queue_get_fd(PfbdQueue *q)
{
    return ((RbdQueue *)q)->efd;
}

/*
 * Context: a librbd thread.  Only touch @req and its queue's done list,
 * eventfd and callback count.
 */
static void pfbd_rbd_aio_done(rbd_completion_t c, void *arg)
{
    RbdReq *req = arg;
    RbdQueue *rq = req->rq;
    uint64_t one = 1;
    RbdReq *head;

    __atomic_fetch_add(&rq->callbacks, 1, __ATOMIC_ACQUIRE);
    req->ret = rbd_aio_get_return_value(c);
    rbd_aio_release(c);
    head = __atomic_load_n(&rq->done, __ATOMIC_RELAXED);
    do {
        req->next = head;
    } while (!__atomic_compare_exchange_n(&rq->done, &head, req, true,
                                          __ATOMIC_RELEASE, __ATOMIC_RELAXED));
    /*
     * The owner clears the eventfd before it takes the list, so only the
     * push onto an empty list needs a wakeup
     */
    if (!head && write(rq->efd, &one, sizeof(one)) < 0) {
        /* EAGAIN: the counter is full, so the eventfd is readable anyway */
    }
    __atomic_fetch_sub(&rq->callbacks, 1, __ATOMIC_RELEASE);
}

/* Send @req (or the flush that follows its FUA write) to librbd */
static int pfbd_rbd_req_send(RbdQueue *rq, RbdReq *req)
{
    rbd_image_t image = ((RbdVolume *)rq->base.vol)->image;
    PfbdOp op = req->fua_flush ? PFBD_OP_FLUSH : req->op;
    rbd_completion_t c;
    int zero_flags = 0;
    int ret;

    ret = rbd_aio_create_completion(req, pfbd_rbd_aio_done, &c);
    if (ret < 0) {
        return ret;
    }
    switch (op) {
    case PFBD_OP_READ:
        ret = rbd_aio_readv(image, req->iov, req->iovcnt, req->offset, c);
        break;
    case PFBD_OP_WRITE:
        ret = rbd_aio_writev(image, req->iov, req->iovcnt, req->offset, c);
        break;
    case PFBD_OP_FLUSH:
        ret = rbd_aio_flush(image, c);
        break;
    case PFBD_OP_DISCARD:
        ret = rbd_aio_discard(image, req->offset, req->len, c);
        break;
    case PFBD_OP_WRITE_ZEROES:
        if (!(req->flags & PFBD_REQ_UNMAP)) {
            zero_flags = RBD_WRITE_ZEROES_FLAG_THICK_PROVISION;
        }
        ret = rbd_aio_write_zeroes(image, req->offset, req->len, c,
                                   zero_flags, 0);
        break;
    default:
        ret = -EINVAL;
    }
    if (ret < 0) {
        rbd_aio_release(c);
    }
    return ret;
}

static int pfbd_rbd_submit(PfbdQueue *q, PfbdOp op, uint64_t offset,
                      const struct iovec *iov, int iovcnt, uint64_t len,
                      unsigned flags, PfbdCompletionFunc *cb, void *opaque)
{
    RbdQueue *rq = (RbdQueue *)q;
    RbdReq *req = rq->free_reqs;
    int ret;

    if (!req) {
        return -EAGAIN;
    }
    if ((op == PFBD_OP_READ || op == PFBD_OP_WRITE) && iovcnt > IOV_MAX) {
        return -EINVAL;
    }
    req->op = op;
    req->flags = flags;
    req->offset = offset;
    req->len = len;
    req->iov = iov;
    req->iovcnt = iovcnt;
    req->fua_flush = false;
    req->cb = cb;
    req->opaque = opaque;
    /* Off the free list first: the callback may run before send returns */
    rq->free_reqs = req->next;
    ret = pfbd_rbd_req_send(rq, req);
    if (ret < 0) {
        req->next = rq->free_reqs;
        rq->free_reqs = req;
        return ret;
    }
    rq->queued++;
    return 0;
}

/* librbd has the requests already: this only counts them */
static int pfbd_rbd_flush(PfbdQueue *q)
{
    RbdQueue *rq = (RbdQueue *)q;
    int n = rq->queued;

    rq->queued = 0;
    return n;
}

/* Move what librbd has completed to @rq->ready, oldest first */
static bool pfbd_rbd_take(RbdQueue *rq)
{
    RbdReq *list = __atomic_exchange_n(&rq->done, NULL, __ATOMIC_ACQUIRE);
    RbdReq *next;

    while (list) {
        next = list->next;
        list->next = rq->ready;
        rq->ready = list;
        list = next;
    }
    return rq->ready != NULL;
}

static bool pfbd_rbd_completions_ready(PfbdQueue *q)
{
    RbdQueue *rq = (RbdQueue *)q;

    return rq->ready || __atomic_load_n(&rq->done, __ATOMIC_RELAXED);
}

/* Zero what a short read left untouched */
static void pfbd_rbd_zero_tail(RbdReq *req, uint64_t done)
{
    size_t off;
    int i;

    i = pfbd_iov_seek(req->iov, req->iovcnt, done, &off);
    for (; i < req->iovcnt; i++, off = 0) {
        memset((char *)req->iov[i].iov_base + off, 0,
               req->iov[i].iov_len - off);
    }
}

/*
 * Handle the completion of @req with librbd's result @r.  Returns false if
 * @req went back to librbd (the flush after a FUA write).
 */
static bool pfbd_rbd_req_done(RbdQueue *rq, RbdReq *req, ssize_t r)
{
    PfbdCompletionFunc *cb = req->cb;
    void *opaque = req->opaque;
    int ret = 0;

    if (r < 0) {
        ret = r < -INT_MAX ? -EIO : (int)r;
    } else if (req->op == PFBD_OP_READ && (uint64_t)r < req->len) {
        pfbd_rbd_zero_tail(req, r);
    } else if (req->op == PFBD_OP_WRITE && (req->flags & PFBD_REQ_FUA) &&
               !req->fua_flush && ((RbdVolume *)rq->base.vol)->cache) {
        req->fua_flush = true;
        ret = pfbd_rbd_req_send(rq, req);
        if (ret == 0) {
            return false;
        }
    }
    req->next = rq->free_reqs;
    rq->free_reqs = req;
    pfbd_complete(&rq->base, cb, opaque, ret);
    return true;
}

static int pfbd_rbd_reap(PfbdQueue *q, unsigned max)
{
    RbdQueue *rq = (RbdQueue *)q;
    uint64_t one = 1;
    uint64_t count;
    RbdReq *req;
    int n = 0;

    /*
     * The fd is level-triggered for the caller: clear it before taking the
     * list, so that a request pushed after the take signals it again
     */
    if (read(rq->efd, &count, sizeof(count)) < 0) {
        /* EAGAIN: it was not signalled */
    }
    while (max == 0 || n < max) {
        if (!rq->ready && !pfbd_rbd_take(rq)) {
            break;
        }
        req = rq->ready;
        rq->ready = req->next;
        if (pfbd_rbd_req_done(rq, req, req->ret)) {
            n++;
        }
    }
    /*
     * Stopped at @max: what is left must keep the fd readable.  That is
     * what was taken and not reaped, and also what was pushed since the
     * last take: its wakeup may be the one the read above consumed (its
     * push found the list empty, so the pushes after it did not signal).
     */
    if (pfbd_rbd_completions_ready(q) &&
        write(rq->efd, &one, sizeof(one)) < 0) {
        /* EAGAIN: the counter is full, so the eventfd is readable anyway */
    }
    return n;
}

static void pfbd_rbd_wait(PfbdQueue *q)
{
    RbdQueue *rq = (RbdQueue *)q;
    struct pollfd pfd = { .fd = rq->efd, .events = POLLIN };
    uint64_t count;

    if (pfbd_rbd_completions_ready(q)) {
        return;
    }
    if (poll(&pfd, 1, 100) > 0 &&
        read(rq->efd, &count, sizeof(count)) < 0) {
        /* EAGAIN: cleared by someone else; the list tells */
    }
}

const PfbdEngine pfbd_engine_rbd = {
    .name = "rbd",
    .volume_open = pfbd_rbd_volume_open,
    .volume_close = pfbd_rbd_volume_close,
    .volume_get_size = pfbd_rbd_volume_get_size,
    .queue_new = pfbd_rbd_queue_new,
    .queue_free = pfbd_rbd_queue_free,
    .queue_get_fd = pfbd_rbd_queue_get_fd,
    .submit = pfbd_rbd_submit,
    .flush = pfbd_rbd_flush,
    .completions_ready = pfbd_rbd_completions_ready,
    .reap = pfbd_rbd_reap,
    .wait = pfbd_rbd_wait,
};

/*
 * libpfbd: volume specs, request validation and engine dispatch
 *
 * Copyright (c) 2026 pfbd-qemu developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include "pfbd-int.h"

#define PFBD_DEFAULT_POOL_DIR "/var/lib/pfbd"

/* The engines built in, in the order error messages list them */
static const PfbdEngine *const pfbd_engines[] = {
#ifdef PFBD_HAVE_IO_URING
    &pfbd_engine_file,
#endif
    &pfbd_engine_null,
#ifdef PFBD_HAVE_RBD
    &pfbd_engine_rbd,
#endif
    &pfbd_engine_pureflash,
};

#define PFBD_NUM_ENGINES (sizeof(pfbd_engines) / sizeof(pfbd_engines[0]))

/* Engines that a build may leave out: their specs get -ENOTSUP */
static const char *const pfbd_optional_engines[] = {
    "file", "rbd",
};

void pfbd_set_error(char **errmsg, const char *fmt, ...)
{
    va_list ap;

    if (!errmsg) {
        return;
    }
    va_start(ap, fmt);
    if (vasprintf(errmsg, fmt, ap) < 0) {
        *errmsg = NULL;
    }
    va_end(ap);
}

char *pfbd_next_token(const char **p, const char *delims, char *found)
{
    const char *s = *p;
    char *tok, *out;

    tok = malloc(strlen(s) + 1);
    if (!tok) {
        return NULL;
    }
    out = tok;
    *found = '\0';
    for (; *s; s++) {
        if (*s == '\\' && s[1]) {
            *out++ = *++s;
            continue;
        }
        if (strchr(delims, *s)) {
            *found = *s;
            break;
        }
        *out++ = *s;
    }
    *out = '\0';
    *p = *s ? s + 1 : NULL;
    return tok;
}

int pfbd_iov_seek(const struct iovec *iov, int iovcnt, uint64_t skip,
                  size_t *off)
{
    int i;

    for (i = 0; i < iovcnt; i++) {
        if (skip < iov[i].iov_len) {
            *off = skip;
            return i;
        }
        skip -= iov[i].iov_len;
    }
    *off = 0;
    return iovcnt;
}

static const PfbdEngine *pfbd_find_engine(const char *name, size_t len)
{
    size_t i;

    for (i = 0; i < PFBD_NUM_ENGINES; i++) {
        if (strlen(pfbd_engines[i]->name) == len &&
            !memcmp(pfbd_engines[i]->name, name, len)) {
            return pfbd_engines[i];
        }
    }
    return NULL;
}

static bool pfbd_is_optional_engine(const char *name, size_t len)
{
    size_t i;

    for (i = 0; i < sizeof(pfbd_optional_engines) /
                    sizeof(pfbd_optional_engines[0]); i++) {
        if (strlen(pfbd_optional_engines[i]) == len &&
            !memcmp(pfbd_optional_engines[i], name, len)) {
            return true;
        }
    }
    return false;
}

/* "file, null": the names of the engines built in */
static void pfbd_engine_names(char *buf, size_t size)
{
    size_t i, pos = 0;

    buf[0] = '\0';
    for (i = 0; i < PFBD_NUM_ENGINES && pos < size; i++) {
        pos += snprintf(buf + pos, size - pos, "%s%s", i ? ", " : "",
                        pfbd_engines[i]->name);
    }
}

static bool pfbd_is_volume_name_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
}

/* Open a bare volume NAME as a file of the pool directory */
static int pfbd_open_bare_name(const char *spec, const PfbdOpenOptions *opts,
                               PfbdVolume **volp, char **errmsg)
{
    const char *dir;
    const char *p;
    char *path;
    int ret;

    if (spec[0] == '.') {
        pfbd_set_error(errmsg, "invalid volume name '%s': it must not start "
                       "with '.'", spec);
        return -EINVAL;
    }
    for (p = spec; *p; p++) {
        if (!pfbd_is_volume_name_char(*p)) {
            pfbd_set_error(errmsg, "invalid volume name '%s': only letters, "
                           "digits, '.', '_' and '-' are allowed "
                           "(or use ENGINE:ARG)", spec);
            return -EINVAL;
        }
    }

#ifdef PFBD_HAVE_IO_URING
    dir = opts ? opts->pool_dir : NULL;
    if (!dir) {
        dir = getenv("PFBD_POOL_DIR");
    }
    if (!dir || !dir[0]) {
        dir = PFBD_DEFAULT_POOL_DIR;
    }
    if (asprintf(&path, "%s/%s", dir, spec) < 0) {
        pfbd_set_error(errmsg, "volume '%s': out of memory", spec);
        return -ENOMEM;
    }
    ret = pfbd_engine_file.volume_open(spec, path, opts, volp, errmsg);
    if (ret == 0) {
        (*volp)->engine = &pfbd_engine_file;
    }
    free(path);
    return ret;
#else
    (void)dir;
    (void)path;
    (void)ret;
    pfbd_set_error(errmsg, "volume '%s': pool volumes need the file engine, "
                   "which is not built in", spec);
    return -ENOTSUP;
#endif
}

/* Open @spec; messages show @shown, the spec without its secrets */
static int pfbd_volume_open_shown(const char *spec, const char *shown,
                                  const PfbdOpenOptions *opts,
                                  PfbdVolume **volp, char **errmsg)
{
    const PfbdEngine *engine;
    PfbdVolume *vol = NULL;
    const char *colon;
    char names[128];
    size_t len;
    int ret;

    colon = strchr(spec, ':');
    if (!colon) {
        /* A bare name has no options: @shown is @spec */
        ret = pfbd_open_bare_name(spec, opts, &vol, errmsg);
    } else {
        len = colon - spec;
        engine = pfbd_find_engine(spec, len);
        if (!engine) {
            if (pfbd_is_optional_engine(spec, len)) {
                pfbd_set_error(errmsg, "volume spec '%s': the %.*s engine is "
                               "not built in", shown, (int)len, spec);
                return -ENOTSUP;
            }
            pfbd_engine_names(names, sizeof(names));
            pfbd_set_error(errmsg, "unknown engine '%.*s' in volume spec "
                           "'%s' (known: %s)", (int)len, spec, shown, names);
            return -EINVAL;
        }
        ret = engine->volume_open(shown, colon + 1, opts, &vol, errmsg);
        if (ret == 0) {
            vol->engine = engine;
        }
    }
    if (ret < 0) {
        return ret;
    }
    if (opts && opts->iowq_cpus && strcmp(vol->engine->name, "file")) {
        pfbd_set_error(errmsg, "volume '%s': iowq-cpus applies to the file "
                       "engine only, not to %s", shown, vol->engine->name);
        vol->engine->volume_close(vol);
        return -EINVAL;
    }

    vol->info.engine = vol->engine->name;
    /* An engine may force read-only (an rbd snapshot) */
    vol->info.read_only = vol->info.read_only || (opts && opts->read_only);
    vol->align = vol->info.block_size;
    vol->nqueues = 0;
    pfbd_volume_adopt(vol, opts);
    *volp = vol;
    return 0;
}

int pfbd_volume_adopt(PfbdVolume *vol, const PfbdOpenOptions *opts)
{
    if (vol->nqueues) {
        return -EBUSY;
    }
    vol->any_thread = opts && opts->any_thread;
    vol->trace = opts ? opts->trace : NULL;
    vol->trace_opaque = opts ? opts->trace_opaque : NULL;
    return 0;
}

char *pfbd_spec_redact(const char *spec)
{
    const char *p = spec;
    char *out, *o;

    /*
     * An empty value grows by 3, and takes 5 bytes of @spec (":key="):
     * twice the length is enough
     */
    out = malloc(2 * strlen(spec) + 4);
    if (!out) {
        return NULL;
    }
    o = out;
    while (*p) {
        if (*p == ':' && !strncmp(p + 1, "key=", 4)) {
            /* Skip the value, up to the next unescaped ':' */
            memcpy(o, ":key=***", 8);
            o += 8;
            for (p += 5; *p && *p != ':'; p++) {
                if (*p == '\\' && p[1]) {
                    p++;
                }
            }
            continue;
        }
        if (*p == '\\' && p[1]) {
            *o++ = *p++;
        }
        *o++ = *p++;
    }
    *o = '\0';
    return out;
}

int pfbd_volume_open(const char *spec, const PfbdOpenOptions *opts,
                     PfbdVolume **volp, char **errmsg)
{
    char *shown;
    int ret;

    *volp = NULL;
    if (errmsg) {
        *errmsg = NULL;
    }
    if (!spec || !spec[0]) {
        pfbd_set_error(errmsg, "empty volume spec");
        return -EINVAL;
    }
    shown = pfbd_spec_redact(spec);
    if (!shown) {
        pfbd_set_error(errmsg, "out of memory");
        return -ENOMEM;
    }
    ret = pfbd_volume_open_shown(spec, shown, opts, volp, errmsg);
    free(shown);
    return ret;
}

void pfbd_volume_close(PfbdVolume *vol)
{
    if (vol) {
        vol->engine->volume_close(vol);
    }
}

void pfbd_volume_get_info(PfbdVolume *vol, PfbdVolumeInfo *info)
{
    *info = vol->info;
    info->size = __atomic_load_n(&vol->info.size, __ATOMIC_RELAXED);
}

int pfbd_volume_get_file_fd(PfbdVolume *vol)
{
    if (!vol->engine->volume_get_file_fd) {
        return -ENOTSUP;
    }
    return vol->engine->volume_get_file_fd(vol);
}

int pfbd_volume_set_block_size(PfbdVolume *vol, uint32_t block_size)
{
    uint64_t size;

    if (vol->nqueues) {
        return -EBUSY;
    }
    if (!block_size || (block_size & (block_size - 1)) ||
        block_size % vol->info.block_size) {
        return -EINVAL;
    }
    size = vol->info.size - vol->info.size % block_size;
    if (size == 0) {
        return -EINVAL;
    }
    vol->align = block_size;
    vol->info.size = size;
    return 0;
}

int pfbd_volume_refresh_size(PfbdVolume *vol)
{
    uint64_t size;
    int ret;

    if (!vol->engine->volume_get_size) {
        return 0;
    }
    ret = vol->engine->volume_get_size(vol, &size);
    if (ret < 0) {
        return ret;
    }
    size -= size % vol->align;
    if (size == 0) {
        return -EINVAL;
    }
    /* Queues may be checking requests against it right now */
    __atomic_store_n(&vol->info.size, size, __ATOMIC_RELAXED);
    return 0;
}

int pfbd_queue_new(PfbdVolume *vol, unsigned depth, PfbdQueue **qp)
{
    PfbdQueue *q;
    int ret;

    *qp = NULL;
    if (depth < 1) {
        return -EINVAL;
    }
    ret = vol->engine->queue_new(vol, depth, &q);
    if (ret < 0) {
        return ret;
    }
    q->vol = vol;
    q->depth = depth;
    q->inflight = 0;
    q->nwaiting = 0;
    q->waiting = NULL;
    q->waiting_tail = &q->waiting;
    q->waiting_free = NULL;
    q->reg_waits = false;
    q->reg_iov = NULL;
    q->reg_n = 0;
    q->bounce_limit = 0;
    q->bounce_bytes = 0;
    q->bounce_kept = 0;
    vol->nqueues++;
    *qp = q;
    return 0;
}

void pfbd_queue_free(PfbdQueue *q)
{
    PfbdWaiting *w;

    if (q) {
        while ((w = q->waiting_free)) {
            q->waiting_free = w->next;
            free(w);
        }
        free(q->reg_iov);
        q->vol->nqueues--;
        q->vol->engine->queue_free(q);
    }
}

int pfbd_queue_get_fd(PfbdQueue *q)
{
    return q->vol->engine->queue_get_fd(q);
}

/* The flags that @op accepts */
static unsigned pfbd_op_flags(PfbdOp op)
{
    switch (op) {
    case PFBD_OP_WRITE:
        return PFBD_REQ_FUA;
    case PFBD_OP_WRITE_ZEROES:
        return PFBD_REQ_UNMAP;
    default:
        return 0;
    }
}

/*
 * Check the arguments of pfbd_submit() against the volume.  Returns 0 and
 * adds PFBD_REQ_ALIGNED to *@flags where it applies, or a negative errno.
 */
static int pfbd_check_request(PfbdQueue *q, PfbdOp op, uint64_t offset,
                              const struct iovec *iov, int iovcnt,
                              uint64_t len, unsigned *flags)
{
    const PfbdVolume *vol = q->vol;
    const PfbdVolumeInfo *info = &vol->info;
    uintptr_t mem_mask = info->mem_align - 1;
    size_t len_mask = info->mem_align > 1 ? info->block_size - 1 : 0;
    uintptr_t misaligned = 0;
    uint32_t cap;
    uint64_t total;
    uint64_t size;
    int i;

    switch (op) {
    case PFBD_OP_READ:
    case PFBD_OP_WRITE:
        cap = 0;
        break;
    case PFBD_OP_FLUSH:
        cap = PFBD_CAP_FLUSH;
        break;
    case PFBD_OP_DISCARD:
        cap = PFBD_CAP_DISCARD;
        break;
    case PFBD_OP_WRITE_ZEROES:
        cap = PFBD_CAP_WRITE_ZEROES;
        break;
    default:
        return -EINVAL;
    }
    if (*flags & ~pfbd_op_flags(op)) {
        return -EINVAL;
    }
    if (op != PFBD_OP_READ && op != PFBD_OP_FLUSH && info->read_only) {
        return -EROFS;
    }
    if ((info->caps & cap) != cap) {
        return -ENOTSUP;
    }

    if (op == PFBD_OP_FLUSH) {
        return (iov || iovcnt || len) ? -EINVAL : 0;
    }

    if (op == PFBD_OP_READ || op == PFBD_OP_WRITE) {
        if (iovcnt < 0 || (!iov && iovcnt)) {
            return -EINVAL;
        }
        /* One walk: the total, and whether O_DIRECT takes it as it is */
        total = 0;
        for (i = 0; i < iovcnt; i++) {
            if (iov[i].iov_len > UINT64_MAX - total) {
                return -EINVAL;
            }
            total += iov[i].iov_len;
            misaligned |= ((uintptr_t)iov[i].iov_base & mem_mask) |
                          (iov[i].iov_len & len_mask);
        }
        if (total != len) {
            return -EINVAL;
        }
        if (!misaligned) {
            *flags |= PFBD_REQ_ALIGNED;
        }
    } else if (iov || iovcnt) {
        return -EINVAL;
    }

    if ((offset % vol->align) || (len % vol->align)) {
        return -EINVAL;
    }
    /* The size may change under us (pfbd_volume_refresh_size()) */
    size = __atomic_load_n(&info->size, __ATOMIC_RELAXED);
    if (offset > size || len > size - offset) {
        return -ERANGE;
    }
    return 0;
}

/* Give a request to the engine: 0, -EAGAIN (no room), or its error */
static int pfbd_engine_submit(PfbdQueue *q, PfbdOp op, uint64_t offset,
                              const struct iovec *iov, int iovcnt,
                              uint64_t len, unsigned flags,
                              PfbdCompletionFunc *cb, void *opaque)
{
    int ret;

    if (q->inflight >= q->depth || q->reg_waits) {
        return -EAGAIN;
    }
    ret = q->vol->engine->submit(q, op, offset, iov, iovcnt, len, flags,
                                 cb, opaque);
    if (ret == 0) {
        q->inflight++;
    }
    return ret;
}

int pfbd_submit(PfbdQueue *q, PfbdOp op, uint64_t offset,
                const struct iovec *iov, int iovcnt, uint64_t len,
                unsigned flags, PfbdCompletionFunc *cb, void *opaque)
{
    PfbdWaiting *w;
    int ret;

    ret = pfbd_check_request(q, op, offset, iov, iovcnt, len, &flags);
    if (ret < 0) {
        return ret;
    }
    /* Behind those that wait, in order */
    ret = -EAGAIN;
    if (len == 0 && op != PFBD_OP_FLUSH) {
        ret = PFBD_WAITING_DONE;
    } else if (!q->waiting) {
        ret = pfbd_engine_submit(q, op, offset, iov, iovcnt, len, flags,
                                 cb, opaque);
        if (ret == 0) {
            return 0;
        }
    }
    w = q->waiting_free;
    if (w) {
        q->waiting_free = w->next;
    } else {
        w = malloc(sizeof(*w));
        if (!w) {
            return -ENOMEM;
        }
    }
    *w = (PfbdWaiting) {
        .op = op,
        .ret = ret == -EAGAIN ? PFBD_WAITING_SEND : ret,
        .offset = offset,
        .iov = iov,
        .iovcnt = iovcnt,
        .flags = flags,
        .len = len,
        .cb = cb,
        .opaque = opaque,
    };
    *q->waiting_tail = w;
    q->waiting_tail = &w->next;
    q->nwaiting++;
    pfbd_trace(q, waits, q->nwaiting);
    return 0;
}

/* Make the registration that waited for the requests in flight */
static void pfbd_register_waiting(PfbdQueue *q)
{
    int ret;

    q->reg_waits = false;
    ret = q->vol->engine->queue_register_memory(q, q->reg_iov, q->reg_n);
    pfbd_trace(q, memory_registered, q->reg_n, ret);
    free(q->reg_iov);
    q->reg_iov = NULL;
    q->reg_n = 0;
}

/*
 * Send what waits, oldest first, while the engine takes it; complete
 * what the engine refused.  Returns how many callbacks ran.
 */
static unsigned pfbd_send_waiting(PfbdQueue *q)
{
    PfbdCompletionFunc *cb;
    PfbdWaiting *w;
    unsigned done = 0;
    void *opaque;
    int ret;

    if (q->reg_waits && q->inflight == 0) {
        pfbd_register_waiting(q);
    }
    while ((w = q->waiting)) {
        ret = w->ret;
        if (ret == PFBD_WAITING_SEND) {
            ret = pfbd_engine_submit(q, w->op, w->offset, w->iov, w->iovcnt,
                                     w->len, w->flags, w->cb, w->opaque);
            if (ret == -EAGAIN && q->inflight > 0) {
                break;      /* room comes with a completion */
            }
            /*
             * (With none in flight every engine takes any request: should
             * one not, no completion will make room, and it fails now)
             */
        }
        q->waiting = w->next;
        if (!q->waiting) {
            q->waiting_tail = &q->waiting;
        }
        q->nwaiting--;
        cb = w->cb;
        opaque = w->opaque;
        w->next = q->waiting_free;
        q->waiting_free = w;
        if (ret != 0) {
            /* (It may submit, and take @w again) */
            cb(opaque, ret == PFBD_WAITING_DONE ? 0 : ret);
            done++;
        }
    }
    return done;
}

/*
 * Free requests keep the mappings of their last bounce buffers for reuse,
 * up to the queue's bounce limit in all (or this much without one)
 */
#define PFBD_BOUNCE_KEEP_MAX    (4 * 1024 * 1024)

/*
 * Account for a bounce mapping of @len bytes for a request of @q.
 * Returns 0, or -EAGAIN if it would go over the queue's limit while other
 * requests hold bounce buffers.
 */
static int pfbd_bounce_get(PfbdQueue *q, uint64_t len)
{
    if (q->bounce_limit && q->bounce_bytes &&
        (q->bounce_bytes >= q->bounce_limit ||
         len > q->bounce_limit - q->bounce_bytes)) {
        return -EAGAIN;
    }
    q->bounce_bytes += len;
    return 0;
}

/*
 * From mmap(), not malloc(): the guest sets the sizes (up to a request's
 * maximum), and glibc keeps freed heap memory resident (in holes between
 * chunks, and at the top of the heap up to a trim threshold that grows
 * with the sizes freed), so the bound on the bounce bytes in flight would
 * not bound the memory the process holds.
 */
int pfbd_bounce_map(PfbdQueue *q, PfbdBounce *b, uint64_t len,
                    uint32_t align)
{
    /* A mapping starts on a page, and pages are 4 KiB or more */
    size_t extra = align > 4096 ? align : 0;
    uintptr_t addr;
    size_t need;
    bool fresh;
    int ret;

    if (len > SIZE_MAX - extra - 8192) {
        return -ENOMEM;
    }
    need = ((len ? len : 1) + extra + 4095) & ~(size_t)4095;
    if (b->map) {
        q->bounce_kept -= b->map_len;
        if (b->map_len < need || b->map_len / 2 > need) {
            pfbd_bounce_free(b);
        }
    }
    ret = pfbd_bounce_get(q, b->map ? b->map_len : need);
    if (ret < 0) {
        /* Its room in the kept bytes is gone: do not keep it uncounted */
        pfbd_bounce_free(b);
        return ret;
    }
    fresh = !b->map;
    if (fresh) {
        b->map = mmap(NULL, need, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (b->map == MAP_FAILED) {
            b->map = NULL;
            q->bounce_bytes -= need;
            return -ENOMEM;
        }
        b->map_len = need;
    }
    pfbd_trace(q, bounce, len, fresh);
    addr = (uintptr_t)b->map;
    if (extra) {
        addr = (addr + align - 1) & ~(uintptr_t)(align - 1);
    }
    b->buf = (void *)addr;
    return 0;
}

void pfbd_bounce_release(PfbdQueue *q, PfbdBounce *b)
{
    uint64_t keep = q->bounce_limit ? q->bounce_limit :
                    PFBD_BOUNCE_KEEP_MAX;

    if (!b->buf) {
        return;
    }
    b->buf = NULL;
    q->bounce_bytes -= b->map_len;
    if (q->bounce_kept <= keep && b->map_len <= keep - q->bounce_kept) {
        q->bounce_kept += b->map_len;
    } else {
        pfbd_bounce_free(b);
    }
}

void pfbd_iov_to_buf(const struct iovec *iov, int iovcnt, void *buf)
{
    char *p = buf;
    int i;

    for (i = 0; i < iovcnt; i++) {
        memcpy(p, iov[i].iov_base, iov[i].iov_len);
        p += iov[i].iov_len;
    }
}

void pfbd_buf_to_iov(const void *buf, const struct iovec *iov, int iovcnt)
{
    const char *p = buf;
    int i;

    for (i = 0; i < iovcnt; i++) {
        memcpy(iov[i].iov_base, p, iov[i].iov_len);
        p += iov[i].iov_len;
    }
}

void pfbd_bounce_free(PfbdBounce *b)
{
    if (b->map) {
        munmap(b->map, b->map_len);
        b->map = NULL;
    }
}

void pfbd_queue_set_bounce_limit(PfbdQueue *q, uint64_t bytes)
{
    q->bounce_limit = bytes;
}

/* Forget a registration that waits */
static void pfbd_register_cancel(PfbdQueue *q)
{
    free(q->reg_iov);
    q->reg_iov = NULL;
    q->reg_n = 0;
    q->reg_waits = false;
}

/*
 * Keep a copy of @iov, to register before the engine gets another
 * request: 0, or -ENOMEM with nothing registered
 */
static int pfbd_register_defer(PfbdQueue *q, const struct iovec *iov,
                               unsigned n)
{
    struct iovec *copy = malloc(n * sizeof(*iov));

    if (!copy) {
        q->vol->engine->queue_register_memory(q, NULL, 0);
        return -ENOMEM;
    }
    memcpy(copy, iov, n * sizeof(*iov));
    q->reg_iov = copy;
    q->reg_n = n;
    q->reg_waits = true;
    return 0;
}

int pfbd_queue_register_memory(PfbdQueue *q, const struct iovec *iov,
                               unsigned n)
{
    int ret;

    if (!q->vol->engine->queue_register_memory) {
        return -ENOTSUP;
    }
    pfbd_register_cancel(q);
    if (q->inflight > 0 && n > 0) {
        ret = pfbd_register_defer(q, iov, n);
        return ret < 0 ? ret : -EINPROGRESS;
    }
    return q->vol->engine->queue_register_memory(q, iov, n);
}

int pfbd_queue_register_memory_later(PfbdQueue *q, const struct iovec *iov,
                                     unsigned n)
{
    if (!q->vol->engine->queue_register_memory) {
        return -ENOTSUP;
    }
    pfbd_register_cancel(q);
    if (n == 0) {
        return q->vol->engine->queue_register_memory(q, NULL, 0);
    }
    return pfbd_register_defer(q, iov, n);
}

bool pfbd_queue_completions_ready(PfbdQueue *q)
{
    return q->vol->engine->completions_ready(q);
}

int pfbd_queue_do_io(PfbdQueue *q, unsigned min_completions,
                     unsigned max_completions, PfbdIoCounts *counts)
{
    const PfbdEngine *engine = q->vol->engine;
    unsigned done = 0, sent = 0;
    bool woken = true;
    int err = 0;
    int ret;

    for (;;) {
        done += pfbd_send_waiting(q);
        ret = engine->flush(q);
        if (ret > 0) {
            sent++;
        }
        err = ret < 0 ? ret : 0;
        if (max_completions && done >= max_completions) {
            break;
        }
        /*
         * After a wake-up, reap even when nothing looks ready: an engine
         * may have to read its sockets first (pureflash).  Completions
         * make room for what waits, and callbacks may submit: send again.
         */
        if (woken || engine->completions_ready(q)) {
            woken = false;
            ret = engine->reap(q, max_completions ?
                                  max_completions - done : 0);
            if (ret > 0) {
                done += ret;
                continue;
            }
        }
        if (done >= min_completions || pfbd_queue_inflight(q) == 0) {
            break;
        }
        engine->wait(q);
        woken = true;
    }
    if (counts) {
        counts->sent = sent;
        counts->completed = done;
    }
    return err;
}

unsigned pfbd_queue_inflight(PfbdQueue *q)
{
    return q->inflight + q->nwaiting;
}

void pfbd_queue_drain(PfbdQueue *q)
{
    while (pfbd_queue_inflight(q) > 0) {
        pfbd_queue_do_io(q, 1, 0, NULL);
    }
}

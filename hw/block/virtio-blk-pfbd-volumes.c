/*
 * virtio-blk-pfbd: volumes opened ahead of their device
 *
 * Copyright (c) 2026 pfbd-qemu developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Opening a network volume waits for its cluster (a PureFlash conductor
 * and store, Ceph's monitors), up to the engine's timeout.  A device's
 * realize cannot wait like that: it runs in the main loop under the BQL,
 * and it cannot drop the BQL either, because the device is on its bus by
 * then, where a vCPU may reach it (an ACPI eject of its slot unplugs what
 * the slot holds, realized or not).
 *
 * QMP pfbd-volume-open therefore opens the volume before the device
 * exists: a coroutine command that hands the open to a thread of the main
 * loop's pool and yields, so that the main loop and the vCPUs go on.  The
 * volume waits under its name until a device realized with
 * "volume": "@NAME" takes it (a failed realize gives it back), or
 * pfbd-volume-close closes it.
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qapi/qapi-commands-virtio-blk-pfbd.h"
#include "block/thread-pool.h"
#include "hw/virtio/virtio-blk-pfbd.h"
#include "trace.h"

/* name -> VirtIOBlockPfbdNamedVolume; Context: BQL held */
static GHashTable *named_volumes;

typedef struct PfbdOpenJob {
    const char *spec;
    PfbdOpenOptions opts;
    PfbdVolume *vol;
    char *msg;
    int ret;
} PfbdOpenJob;

/* Context: a thread of the main loop's pool, without the BQL */
static int virtio_blk_pfbd_open_job(void *opaque)
{
    PfbdOpenJob *job = opaque;

    job->ret = pfbd_volume_open(job->spec, &job->opts, &job->vol, &job->msg);
    return job->ret;
}

static bool virtio_blk_pfbd_volume_name_ok(const char *name)
{
    const char *p;

    if (!name[0] || strlen(name) > 64) {
        return false;
    }
    for (p = name; *p; p++) {
        if (!g_ascii_isalnum(*p) && !strchr("._-", *p)) {
            return false;
        }
    }
    return true;
}

static void virtio_blk_pfbd_named_free(VirtIOBlockPfbdNamedVolume *nv)
{
    pfbd_volume_close(nv->vol);
    free(nv->shown);
    g_free(nv);
}

void coroutine_fn qmp_pfbd_volume_open(const char *name, const char *volume,
                                       bool has_read_only, bool read_only,
                                       const char *iowq_cpus, Error **errp)
{
    PfbdOpenJob job = {
        .spec = volume,
        .opts = {
            .read_only = read_only,
            .iowq_cpus = iowq_cpus,
            .secret_lookup = virtio_blk_pfbd_secret_lookup,
        },
    };
    VirtIOBlockPfbdNamedVolume *nv;

    if (!virtio_blk_pfbd_volume_name_ok(name)) {
        error_setg(errp, "volume name '%s' is not valid: use 1 to 64 "
                   "letters, digits, '.', '_' and '-'", name);
        return;
    }
    if (!named_volumes) {
        named_volumes = g_hash_table_new_full(g_str_hash, g_str_equal, g_free,
                                              NULL);
    }
    if (g_hash_table_contains(named_volumes, name)) {
        error_setg(errp, "a volume named '%s' is open already", name);
        return;
    }
    nv = g_new0(VirtIOBlockPfbdNamedVolume, 1);
    nv->shown = pfbd_spec_redact(volume);
    if (!nv->shown) {
        g_free(nv);
        error_setg(errp, "out of memory");
        return;
    }
    nv->read_only = read_only;
    nv->iowq_cpus = iowq_cpus;

    /* The name is taken while the open runs; nv->vol stays NULL */
    g_hash_table_insert(named_volumes, g_strdup(name), nv);
    trace_virtio_blk_pfbd_volume_open(name, nv->shown);
    thread_pool_submit_co(virtio_blk_pfbd_open_job, &job);
    trace_virtio_blk_pfbd_volume_opened(name, job.ret);

    if (job.ret < 0) {
        g_hash_table_remove(named_volumes, name);
        if (job.msg) {
            /* libpfbd's message names the volume and the culprit */
            error_setg(errp, "%s", job.msg);
        } else {
            error_setg_errno(errp, -job.ret, "cannot open volume '%s'",
                             nv->shown);
        }
        free(job.msg);
        virtio_blk_pfbd_named_free(nv);
        return;
    }
    nv->vol = job.vol;
}

void qmp_pfbd_volume_close(const char *name, Error **errp)
{
    VirtIOBlockPfbdNamedVolume *nv;

    nv = named_volumes ? g_hash_table_lookup(named_volumes, name) : NULL;
    if (!nv) {
        error_setg(errp, "no volume named '%s' is open", name);
        return;
    }
    if (!nv->vol) {
        error_setg(errp, "volume '%s' is still being opened", name);
        return;
    }
    g_hash_table_remove(named_volumes, name);
    virtio_blk_pfbd_named_free(nv);
}

VirtIOBlockPfbdNamedVolume *virtio_blk_pfbd_take_volume(const char *name,
                                                        Error **errp)
{
    VirtIOBlockPfbdNamedVolume *nv;

    nv = named_volumes ? g_hash_table_lookup(named_volumes, name) : NULL;
    if (!nv) {
        error_setg(errp, "no volume named '%s' is open: open it with QMP "
                   "pfbd-volume-open first", name);
        return NULL;
    }
    if (!nv->vol) {
        error_setg(errp, "volume '%s' is still being opened", name);
        return NULL;
    }
    g_hash_table_remove(named_volumes, name);
    return nv;
}

void virtio_blk_pfbd_give_back_volume(const char *name,
                                      VirtIOBlockPfbdNamedVolume *nv)
{
    /* Nothing took the name meanwhile: the BQL was held since the take */
    assert(!g_hash_table_contains(named_volumes, name));
    pfbd_volume_adopt(nv->vol, NULL);
    g_hash_table_insert(named_volumes, g_strdup(name), nv);
}

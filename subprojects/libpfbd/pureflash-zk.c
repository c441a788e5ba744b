/*
 * libpfbd: the pureflash engine's conductor discovery through ZooKeeper
 *
 * Copyright (c) 2026 pfbd-qemu developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * The conductors of a PureFlash cluster register as sequential nodes
 * under /pureflash/CLUSTER/conductors; the leader is the smallest name,
 * and its data is its address.  This runs once, when the volume is
 * opened, with ZooKeeper's multi-threaded C client (its threads end with
 * zookeeper_close()), and gives up after the engine's timeout.
 */

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#define THREADED            /* the synchronous API of zookeeper_mt */
#include <zookeeper/zookeeper.h>
#include "pfbd-int.h"

typedef struct PfZkWait {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int state;              /* the session's last state */
} PfZkWait;

static void pf_zk_watcher(zhandle_t *zh, int type, int state,
                          const char *path, void *ctx)
{
    PfZkWait *w = ctx;

    (void)zh;
    (void)path;
    if (type == ZOO_SESSION_EVENT) {
        pthread_mutex_lock(&w->lock);
        w->state = state;
        pthread_cond_broadcast(&w->cond);
        pthread_mutex_unlock(&w->lock);
    }
}

/* ZooKeeper's client logs every failed connect: keep QEMU's stderr clean */
static void pf_zk_log(const char *message)
{
    (void)message;
}

static const char *pf_zk_strerror(int rc)
{
    return zerror(rc);
}

int pfbd_pureflash_zk_conductor(const char *hosts, const char *cluster,
                                int timeout_ms, char **addr, char **errmsg)
{
    PfZkWait w = {
        .lock = PTHREAD_MUTEX_INITIALIZER,
        .cond = PTHREAD_COND_INITIALIZER,
    };
    struct String_vector children = { 0 };
    struct timespec deadline;
    zhandle_t *zh;
    char *path = NULL;
    char data[256];
    int len = sizeof(data) - 1;
    int rc, i, best = -1;
    int ret = -EHOSTUNREACH;

    *addr = NULL;
    zoo_set_debug_level(ZOO_LOG_LEVEL_ERROR);
    zh = zookeeper_init2(hosts, pf_zk_watcher, timeout_ms, NULL, &w, 0,
                         pf_zk_log);
    if (!zh) {
        pfbd_set_error(errmsg, "zookeeper '%s': %s", hosts,
                       errno == EINVAL ? "not a list of HOST:PORT" :
                       strerror(errno));
        return errno == EINVAL ? -EINVAL : -errno;
    }

    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += timeout_ms / 1000;
    deadline.tv_nsec += (timeout_ms % 1000) * 1000000L;
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&w.lock);
    while (w.state != ZOO_CONNECTED_STATE &&
           w.state != ZOO_AUTH_FAILED_STATE &&
           pthread_cond_timedwait(&w.cond, &w.lock, &deadline) == 0) {
        /* until connected, or the deadline */
    }
    rc = w.state;
    pthread_mutex_unlock(&w.lock);
    if (rc != ZOO_CONNECTED_STATE) {
        pfbd_set_error(errmsg, "cannot reach ZooKeeper at '%s' within %d s",
                       hosts, timeout_ms / 1000);
        ret = -ETIMEDOUT;
        goto out;
    }

    if (asprintf(&path, "/pureflash/%s/conductors", cluster) < 0) {
        path = NULL;
        ret = -ENOMEM;
        goto out;
    }
    rc = zoo_get_children(zh, path, 0, &children);
    if (rc != ZOK) {
        pfbd_set_error(errmsg, "ZooKeeper at '%s' has no conductors of "
                       "cluster '%s' (%s: %s)", hosts, cluster, path,
                       pf_zk_strerror(rc));
        ret = rc == ZNONODE ? -ENOENT : -EIO;
        goto out;
    }
    for (i = 0; i < children.count; i++) {
        if (!strncmp(children.data[i], "conductor", 9) &&
            (best < 0 || strcmp(children.data[i], children.data[best]) < 0)) {
            best = i;
        }
    }
    if (best < 0) {
        pfbd_set_error(errmsg, "no conductor of cluster '%s' is registered "
                       "in ZooKeeper at '%s' (%s is empty)", cluster, hosts,
                       path);
        ret = -ENOENT;
        goto out;
    }
    free(path);
    if (asprintf(&path, "/pureflash/%s/conductors/%s", cluster,
                 children.data[best]) < 0) {
        path = NULL;
        ret = -ENOMEM;
        goto out;
    }
    rc = zoo_get(zh, path, 0, data, &len, NULL);
    if (rc != ZOK || len <= 0) {
        pfbd_set_error(errmsg, "cannot read the leading conductor's address "
                       "from ZooKeeper (%s: %s)", path,
                       rc != ZOK ? pf_zk_strerror(rc) : "empty");
        ret = -EIO;
        goto out;
    }
    data[len] = '\0';
    data[strcspn(data, " \t\r\n")] = '\0';
    *addr = strdup(data);
    ret = *addr ? 0 : -ENOMEM;

out:
    if (ret == -ENOMEM) {
        pfbd_set_error(errmsg, "out of memory");
    }
    deallocate_String_vector(&children);
    free(path);
    zookeeper_close(zh);
    return ret;
}

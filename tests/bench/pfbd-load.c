/*
 * pfbd-load: drive a libpfbd volume directly, as fio drives a device
 *
 * Copyright (c) 2026 pfbd-qemu developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * The engine alone, without QEMU: --jobs threads, each with its own
 * queue, keep --iodepth requests of --bs bytes in flight at random (or,
 * for "write", sequential) offsets of the first --size bytes of the
 * volume, waiting on the queue's completion fd as the device's IOThread
 * does.  After --ramp seconds it counts for --runtime seconds and prints
 * one line of JSON: IOPS, average latency, and the CPU time of the whole
 * process (every thread, the engine's included) per I/O.
 *
 *   pfbd-load --volume SPEC [--rw randread|randwrite|read|write]
 *             [--bs N] [--iodepth N] [--jobs N] [--size N]
 *             [--runtime S] [--ramp S]
 *
 * "write" writes the range once, start to end, and stops: it fills a
 * volume before reads are measured.
 */

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/resource.h>
#include "pfbd.h"

typedef struct Job Job;

typedef struct Req {
    Job *job;
    struct iovec iov;
    uint64_t start_ns;
} Req;

struct Job {
    PfbdQueue *q;
    pthread_t thread;
    Req *reqs;
    uint64_t rng;
    uint64_t next_off;      /* "write": the next offset */
    bool stop;
    /* counted after the ramp */
    uint64_t ios;
    uint64_t lat_ns;
    uint64_t errors;
};

static PfbdVolume *vol;
static PfbdOp op = PFBD_OP_READ;
static bool sequential;
static uint64_t bs = 4096, size;
static unsigned iodepth = 1, njobs = 1;
static double runtime = 5, ramp = 1;
static volatile int phase;  /* 0 ramp, 1 counting, 2 done */

static uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

static uint64_t cpu_ns(void)
{
    struct rusage ru;

    getrusage(RUSAGE_SELF, &ru);
    return (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000000ull +
           (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1000ull;
}

/* xorshift64: the offsets, one stream per job */
static uint64_t next_offset(Job *j)
{
    uint64_t blocks = size / bs;

    if (sequential) {
        uint64_t off = j->next_off;

        j->next_off += bs;
        return off;
    }
    j->rng ^= j->rng << 13;
    j->rng ^= j->rng >> 7;
    j->rng ^= j->rng << 17;
    return (j->rng % blocks) * bs;
}

static void complete_cb(void *opaque, int ret);

static void submit(Req *r)
{
    Job *j = r->job;
    uint64_t off;
    int ret;

    if (j->stop || (sequential && j->next_off >= size)) {
        return;
    }
    off = next_offset(j);
    r->start_ns = now_ns();
    ret = pfbd_submit(j->q, op, off, &r->iov, 1, bs, 0, complete_cb, r);
    if (ret < 0) {
        fprintf(stderr, "pfbd-load: submit: %s\n", strerror(-ret));
        exit(1);
    }
}

static void complete_cb(void *opaque, int ret)
{
    Req *r = opaque;
    Job *j = r->job;

    if (phase == 1) {
        j->ios++;
        j->lat_ns += now_ns() - r->start_ns;
        if (ret < 0) {
            j->errors++;
        }
    } else if (ret < 0 && sequential) {
        fprintf(stderr, "pfbd-load: write: %s\n", strerror(-ret));
        exit(1);
    }
    if (phase == 2) {
        j->stop = true;
    }
    submit(r);
}

static void *job_thread(void *opaque)
{
    Job *j = opaque;
    struct pollfd pfd = { .fd = pfbd_queue_get_fd(j->q), .events = POLLIN };
    unsigned i;

    for (i = 0; i < iodepth; i++) {
        submit(&j->reqs[i]);
    }
    pfbd_queue_do_io(j->q, 0, 0, NULL);
    while (pfbd_queue_inflight(j->q) > 0) {
        /* (The call sends again what the engine could not send) */
        poll(&pfd, 1, 100);
        pfbd_queue_do_io(j->q, 0, 0, NULL);
    }
    return NULL;
}

/* N with an optional K, M or G (powers of 1024), as pfbd-rig takes it */
static uint64_t parse_num(const char *s)
{
    char *end;
    double v = strtod(s, &end);

    switch (*end) {
    case 'k':
    case 'K':
        v *= 1024;
        break;
    case 'm':
    case 'M':
        v *= 1024 * 1024;
        break;
    case 'g':
    case 'G':
        v *= 1024 * 1024 * 1024;
        break;
    }
    return v;
}

int main(int argc, char **argv)
{
    const char *spec = NULL, *rw = "randread";
    PfbdVolumeInfo info;
    Job *jobs;
    uint64_t t0, c0, t1, c1, ios = 0, lat = 0, errors = 0;
    char *err = NULL;
    unsigned i, k;
    int ret;

    for (i = 1; i + 1 < (unsigned)argc; i += 2) {
        const char *o = argv[i], *v = argv[i + 1];

        if (!strcmp(o, "--volume")) {
            spec = v;
        } else if (!strcmp(o, "--rw")) {
            rw = v;
        } else if (!strcmp(o, "--bs")) {
            bs = parse_num(v);
        } else if (!strcmp(o, "--iodepth")) {
            iodepth = atoi(v);
        } else if (!strcmp(o, "--jobs")) {
            njobs = atoi(v);
        } else if (!strcmp(o, "--size")) {
            size = parse_num(v);
        } else if (!strcmp(o, "--runtime")) {
            runtime = atof(v);
        } else if (!strcmp(o, "--ramp")) {
            ramp = atof(v);
        } else {
            fprintf(stderr, "pfbd-load: unknown option %s\n", o);
            return 2;
        }
    }
    if (!spec || !bs || !iodepth || !njobs || (argc % 2) != 1) {
        fprintf(stderr, "usage: pfbd-load --volume SPEC [--rw RW] [--bs N] "
                "[--iodepth N] [--jobs N] [--size N] [--runtime S] "
                "[--ramp S]\n");
        return 2;
    }
    if (!strcmp(rw, "randwrite") || !strcmp(rw, "write")) {
        op = PFBD_OP_WRITE;
    }
    sequential = !strcmp(rw, "write") || !strcmp(rw, "read");
    ret = pfbd_volume_open(spec, NULL, &vol, &err);
    if (ret < 0) {
        fprintf(stderr, "pfbd-load: %s\n", err ? err : strerror(-ret));
        return 1;
    }
    pfbd_volume_get_info(vol, &info);
    if (!size || size > info.size) {
        size = info.size;
    }
    if (size < bs || bs % info.block_size) {
        fprintf(stderr, "pfbd-load: bad --bs or --size\n");
        return 2;
    }

    jobs = calloc(njobs, sizeof(*jobs));
    for (k = 0; k < njobs; k++) {
        Job *j = &jobs[k];

        ret = pfbd_queue_new(vol, iodepth, &j->q);
        if (ret < 0) {
            fprintf(stderr, "pfbd-load: queue: %s\n", strerror(-ret));
            return 1;
        }
        j->rng = 0x9e3779b97f4a7c15ull * (k + 1);
        j->next_off = size / njobs / bs * bs * k;
        j->reqs = calloc(iodepth, sizeof(*j->reqs));
        for (i = 0; i < iodepth; i++) {
            j->reqs[i].job = j;
            j->reqs[i].iov.iov_len = bs;
            if (posix_memalign(&j->reqs[i].iov.iov_base, 4096, bs)) {
                return 1;
            }
            memset(j->reqs[i].iov.iov_base, 0xa5 ^ i, bs);
        }
    }
    if (sequential) {
        /* each job writes its part once; count all of it */
        phase = 1;
        size = size / njobs / bs * bs;
        for (k = 0; k < njobs; k++) {
            jobs[k].next_off = 0;
        }
    }
    t0 = now_ns();
    c0 = cpu_ns();
    for (k = 0; k < njobs; k++) {
        pthread_create(&jobs[k].thread, NULL, job_thread, &jobs[k]);
    }
    if (!sequential) {
        struct timespec ts = { (time_t)ramp,
                               (long)((ramp - (time_t)ramp) * 1e9) };

        nanosleep(&ts, NULL);
        t0 = now_ns();
        c0 = cpu_ns();
        phase = 1;
        ts = (struct timespec) { (time_t)runtime,
                                 (long)((runtime - (time_t)runtime) * 1e9) };
        nanosleep(&ts, NULL);
        phase = 2;
    }
    t1 = now_ns();
    c1 = cpu_ns();
    for (k = 0; k < njobs; k++) {
        pthread_join(jobs[k].thread, NULL);
        ios += jobs[k].ios;
        lat += jobs[k].lat_ns;
        errors += jobs[k].errors;
        pfbd_queue_free(jobs[k].q);
    }
    if (sequential) {
        t1 = now_ns();
        c1 = cpu_ns();
    }
    pfbd_volume_close(vol);
    printf("{\"ios\": %llu, \"iops\": %.1f, \"lat_avg_us\": %.2f, "
           "\"cpu_us_per_io\": %.3f, \"errors\": %llu, \"seconds\": %.3f}\n",
           (unsigned long long)ios, ios / ((t1 - t0) / 1e9),
           ios ? lat / 1e3 / ios : 0.0,
           ios ? (c1 - c0) / 1e3 / ios : 0.0, (unsigned long long)errors,
           (t1 - t0) / 1e9);
    return errors ? 3 : 0;
}

#!/usr/bin/python3
"""pfbd rbd engine vs stock QEMU rbd (block/rbd.c) on one Ceph cluster.

Starts a throwaway single-node Ceph cluster (tests/ceph/start-ceph.sh: one
mon, one memstore OSD on 127.0.0.1), creates one image and fills it, then
drives, with one QEMU binary and pfbd-rig (see bench.py), interleaved:

  stock      virtio-blk-pci + -blockdev driver=rbd (cache.direct=on)
  pfbd       virtio-blk-pfbd volume=rbd:rbd/IMAGE
  host       fio --ioengine=rbd on the same image (when fio has the rbd
             engine): librbd without QEMU

with the same librbd cache setting for all three (--rbd-cache, default
off: rbd_cache = false in fio's configuration; stock cache.direct=on,
which makes block/rbd.c turn rbd_cache off; pfbd's default), and the same
CPUs: the Ceph daemons (every thread) on CPU 0, the client (fio, or QEMU)
on the others.  The rig, which plays the application for QEMU and polls
the used rings, runs on the client's CPUs as fio's application does, under
SCHED_IDLE (pfbd-rig --idle): it runs only when QEMU's threads leave them
idle, so its polling takes no CPU time from them.  --rig-on cluster puts
it on the cluster's CPU instead (where it runs only when the daemons leave
it idle); --rig-on both runs the QEMU devices with the rig in each place,
side by side ("stock@cluster" and "pfbd@cluster" are the second one).

x {randread, randwrite} x 4 KiB x iodepth {1, 32} x IOThreads {1, 2}, medians
of --runs runs.  Output: BUILD/bench/rbd.json, BUILD/bench/rbd.md, and the
"rbd" section of docs/benchmarks.md (unless --no-doc).
"""

import argparse
import copy
import datetime
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

REPO = bench.REPO
IMAGE = "bench"
VARIANTS = ("stock", "pfbd", "host")
DEVICE = {"stock": "virtio-blk-pci", "pfbd": "virtio-blk-pfbd",
          "host": "host"}


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def dev_args(variant, conf, iothreads, iodepth, cache=False):
    ids = ["io%d" % i for i in range(iothreads)]
    args = []
    for t in ids:
        args += ["-object", "iothread,id=%s" % t]
    dev = {"id": "disk0", "num-queues": iothreads,
           "queue-size": bench.queue_size(iodepth),
           "iothread-vq-mapping": [{"iothread": t} for t in ids]}
    if variant == "stock":
        args += ["-blockdev", json.dumps({
            "driver": "rbd", "node-name": "r0", "pool": "rbd",
            "image": IMAGE, "conf": conf, "cache": {"direct": not cache}})]
        dev.update({"driver": "virtio-blk-pci", "drive": "r0"})
    else:
        vol = "rbd:rbd/%s:conf=%s" % (IMAGE, conf)
        if cache:
            vol += ":rbd_cache=true"
        dev.update({"driver": "virtio-blk-pfbd", "volume": vol})
    args += ["-device", json.dumps(dev, separators=(",", ":"))]
    return args


def fio_has_rbd():
    if not shutil.which("fio"):
        return False
    p = subprocess.run(["fio", "--enghelp"], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT)
    return b"rbd" in p.stdout


def run_host(opts, conf, rw, iodepth, numjobs):
    """fio's rbd engine on the image: librbd alone, no QEMU"""
    cmd = ["fio", "--name=host", "--ioengine=rbd", "--clientname=admin",
           "--pool=rbd", "--rbdname=" + IMAGE, "--rw=" + rw, "--bs=4096",
           "--iodepth=%d" % iodepth, "--numjobs=%d" % numjobs,
           "--size=%s" % opts.size, "--runtime=%g" % opts.runtime,
           "--ramp_time=%g" % opts.ramp, "--time_based", "--norandommap",
           "--randrepeat=0", "--output-format=json"]
    if opts.qemu_cpus:
        # the CPUs QEMU gets
        cmd = ["taskset", "-c", opts.qemu_cpus] + cmd
    env = dict(os.environ, CEPH_CONF=conf)
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       env=env, timeout=opts.runtime + opts.ramp + 120)
    if p.returncode != 0:
        raise RuntimeError("fio failed (rc %d): %s" % (
            p.returncode, p.stderr.decode(errors="replace")[-2000:]))
    text = p.stdout.decode(errors="replace")
    data = json.loads(text[text.index("{"):])
    key = "read" if "read" in rw else "write"
    ios = iops = lat_w = 0.0
    for j in data["jobs"]:
        d = j[key]
        ios += d["total_ios"]
        iops += d["iops"]
        lat_w += d["lat_ns"]["mean"] * d["total_ios"]
    return {"iops": iops, "lat_avg_us": lat_w / ios / 1e3 if ios else None,
            "ios": int(ios), "command": "CEPH_CONF=%s " % conf +
            " ".join(shlex.quote(c) for c in cmd)}


def start_cluster(opts):
    d = tempfile.mkdtemp(prefix="pfbd-bench-ceph-", dir="/tmp")
    os.rmdir(d)
    env = dict(os.environ, CEPH_STORE_BYTES=str(4 << 30))
    p = subprocess.run(["bash", os.path.join(REPO, "tests", "ceph",
                                             "start-ceph.sh"), d],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       env=env)
    if p.returncode != 0:
        sys.exit("bench-rbd: could not start Ceph:\n" +
                 p.stdout.decode(errors="replace")[-3000:])
    return d


def stop_cluster(d):
    subprocess.run(["bash", os.path.join(REPO, "tests", "ceph",
                                         "stop-ceph.sh"), d, "--purge"],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def fio_conf(conf, cache):
    """A copy of the cluster's @conf whose [client] section (the last one)
    sets rbd_cache as QEMU's devices have it: fio's rbd engine leaves it at
    librbd's default (on)."""
    path = conf + (".fio-cache-%s" % ("on" if cache else "off"))
    with open(conf) as f:
        text = f.read()
    sections = [ln.strip() for ln in text.splitlines()
                if ln.strip().startswith("[")]
    if not sections or sections[-1] != "[client]":
        raise RuntimeError("%s: [client] is not the last section" % conf)
    with open(path, "w") as f:
        f.write(text.rstrip("\n") + "\nrbd_cache = %s\n" %
                ("true" if cache else "false"))
    return path


def rig_opts(opts, member):
    """@opts with the rig's CPUs for @member ("stock", "pfbd@cluster"...):
    the client's or the cluster's"""
    where = member.split("@")[1] if "@" in member else opts.rig_on[0]
    if not opts.qemu_cpus:
        return opts
    o = copy.copy(opts)
    o.rig_cpus = opts.qemu_cpus if where == "client" else opts.ceph_cpus
    return o


def pin_daemons(d, cpus):
    """Pin every thread of the cluster's daemons (the pids file of
    start-ceph.sh) to @cpus"""
    with open(os.path.join(d, "pids")) as f:
        pids = [ln.split()[1] for ln in f if len(ln.split()) == 2]
    for pid in pids:
        subprocess.run(["taskset", "-a", "-p", "-c", cpus, pid], check=True,
                       stdout=subprocess.DEVNULL)


def rbd(conf, *args):
    subprocess.run(["rbd", "-c", conf] + list(args), check=True,
                   stdout=subprocess.DEVNULL)


def fmt(v, nd=0):
    return bench.fmt(v, nd)


def target_rows(idx, meta):
    """Issue 19's figures: (figure, target, value text)"""
    for rw in meta["rw"]:
        for t in meta["iothreads"]:
            s, p, h = (idx.get((v, rw, 32, t)) for v in VARIANTS)
            if p and h and h.get("iops"):
                yield ("%s iodepth 32, %d IOThread(s): pfbd / fio rbd IOPS"
                       % (rw, t), ">= 0.9", "%s / %s = **%s**" % (
                           fmt(p["iops"]), fmt(h["iops"]),
                           bench.ratio(p["iops"], h["iops"])))
            if p and s and s.get("iops"):
                yield ("%s iodepth 32, %d IOThread(s): pfbd / stock IOPS"
                       % (rw, t), ">= 1.15", "%s / %s = **%s**" % (
                           fmt(p["iops"]), fmt(s["iops"]),
                           bench.ratio(p["iops"], s["iops"])))
            s, p, h = (idx.get((v, rw, 1, t)) for v in VARIANTS)
            if p and s and h and h.get("lat_avg_us"):
                pa = p["lat_avg_us"] - h["lat_avg_us"]
                sa = s["lat_avg_us"] - h["lat_avg_us"]
                yield ("%s iodepth 1, %d IOThread(s): latency added over fio "
                       "rbd, pfbd vs stock" % (rw, t), "pfbd <= stock",
                       "%.0f vs %.0f us: **%s**" % (
                           pa, sa, "met" if pa <= sa else "not met"))


def placement_table(idx, meta):
    """--rig-on both: the QEMU devices with the rig on the cluster's CPU
    and on the client's, from the same interleaved runs"""
    first, second = meta["rig_on"]
    cpus = {"client": meta["qemu_cpus"], "cluster": meta["ceph_cpus"]}
    L = ["The rig's CPU (`--rig-on both`): the same interleaved runs with "
         "the rig on the %s's CPU %s (as above) and on the %s's CPU %s, "
         "both under `SCHED_IDLE`; IOPS, and latency average in us:" % (
             first, cpus[first], second, cpus[second]), "",
         "| rw | IOThreads | iodepth | host IOPS | rig on | stock | pfbd "
         "| pfbd/stock | pfbd/host |",
         "| --- | --: | --: | --: | --- | --: | --: | --: | --: |"]
    for rw in meta["rw"]:
        for t in meta["iothreads"]:
            for qd in meta["iodepths"]:
                h = idx.get(("host", rw, qd, t))
                for sfx, where in (("", first), ("@" + second, second)):
                    s = idx.get(("stock" + sfx, rw, qd, t))
                    p = idx.get(("pfbd" + sfx, rw, qd, t))
                    if not s or not p:
                        continue
                    L.append("| %s | %d | %d | %s | %s | %s (%s) | %s (%s) "
                             "| %s | %s |" % (
                                 rw, t, qd, fmt(h and h["iops"]), where,
                                 fmt(s["iops"]),
                                 fmt(s.get("lat_avg_us"), 1),
                                 fmt(p["iops"]),
                                 fmt(p.get("lat_avg_us"), 1),
                                 bench.ratio(p["iops"], s["iops"]),
                                 bench.ratio(p["iops"], h and h["iops"])))
    return L + [""]


def report(doc):
    meta, res = doc["meta"], doc["results"]
    idx = {(r["variant"], r["rw"], r["iodepth"], r["iothreads"]): r
           for r in res}
    L = ["## rbd engine: pfbd vs stock QEMU rbd on one Ceph cluster", ""]
    L.append("Generated by `tests/bench/bench_rbd.py` (`%s`) on %s; "
             "machine as above (nproc %d), load average %s / %s."
             % (meta["command"], meta["date"], meta["nproc"],
                meta["loadavg_start"], meta["loadavg_end"]))
    L.append("")
    L.append("Cluster: tests/ceph/start-ceph.sh (1 mon, 1 memstore OSD, "
             "127.0.0.1, cephx), image `rbd/%s` of %s (feature `layering` "
             "only: no exclusive lock, which fio's jobs, one image handle "
             "each, would pass back and forth) filled before the "
             "runs; 4 KiB, %d run(s) per point interleaved, medians; "
             "%g s measured after %g s ramp.  stock: `virtio-blk-pci` + "
             "`-blockdev driver=rbd,cache.direct=%s` (block/rbd.c); pfbd: "
             "`volume=rbd:rbd/%s:conf=...%s`; host: fio `--ioengine=rbd` "
             "(librbd without QEMU, numjobs = IOThreads) with `rbd_cache = "
             "%s` added to its configuration.  **librbd's cache is %s for "
             "all three.**  CPU: all threads of the QEMU process "
             "(librbd's messenger and finisher threads included) per IO."
             % (IMAGE, meta["size"], meta["runs"], meta["runtime_s"],
                meta["ramp_s"], "off" if meta["rbd_cache"] else "on", IMAGE,
                ":rbd_cache=true" if meta["rbd_cache"] else "",
                "true" if meta["rbd_cache"] else "false",
                "on" if meta["rbd_cache"] else "off"))
    L.append("")
    rig_on = meta.get("rig_on") or ["cluster"]
    if meta.get("ceph_cpus") and rig_on[0] == "client":
        L.append("CPUs: the Ceph daemons (every thread) on CPU %s; the "
                 "client on CPU %s: fio (the application and librbd), or "
                 "QEMU (every thread) and the rig, which plays the "
                 "application for QEMU as fio's own thread does for fio "
                 "and polls the used rings, under `SCHED_IDLE` (`pfbd-rig "
                 "--idle`): it runs only when QEMU's threads leave the CPU "
                 "idle, so its polling takes no CPU time from them." % (
                     meta["ceph_cpus"], meta["qemu_cpus"]))
        L.append("")
    elif meta.get("ceph_cpus"):
        L.append("CPUs: the Ceph daemons (every thread) on CPU %s; the "
                 "client on CPU %s: fio (the application and librbd), or "
                 "QEMU (every thread).  The rig, which plays the "
                 "application for QEMU and polls the used rings, shares "
                 "CPU %s with the daemons under `SCHED_IDLE` "
                 "(`pfbd-rig --idle`): it runs only when they leave the "
                 "CPU idle.  Without that, its polling took CPU time from "
                 "the OSD, which fio does not: pfbd randread 4 KiB at "
                 "iodepth 32 went from 7.9k to 13.8k IOPS (fio 18.0k), "
                 "and at iodepth 1 from 1.5k to 4.2k (fio 6.7k)." % (
                     meta["ceph_cpus"], meta["qemu_cpus"],
                     meta["rig_cpus"]))
        L.append("")
    rows = list(target_rows(idx, meta))
    if rows:
        L.append("Targets (issue 19), medians of this run:")
        L.append("")
        L += bench.target_table(rows)
    L.append("| rw | IOThreads | iodepth | stock IOPS | pfbd IOPS | "
             "pfbd/stock | host IOPS | pfbd/host | "
             "stock / pfbd lat avg us | stock / pfbd QEMU CPU us/IO |")
    L.append("| --- | --: | --: | --: | --: | --: | --: | --: | --: | --: |")
    for rw in meta["rw"]:
        for t in meta["iothreads"]:
            for qd in meta["iodepths"]:
                s = idx.get(("stock", rw, qd, t))
                p = idx.get(("pfbd", rw, qd, t))
                h = idx.get(("host", rw, qd, t))
                if not s and not p:
                    continue
                g = (lambda r, k: r.get(k) if r else None)
                L.append("| %s | %d | %d | %s | %s | %s | %s | %s | "
                         "%s / %s | %s / %s |" % (
                             rw, t, qd, fmt(g(s, "iops")), fmt(g(p, "iops")),
                             bench.ratio(g(p, "iops"), g(s, "iops")),
                             fmt(g(h, "iops")),
                             bench.ratio(g(p, "iops"), g(h, "iops")),
                             fmt(g(s, "lat_avg_us"), 1),
                             fmt(g(p, "lat_avg_us"), 1),
                             fmt(g(s, "qemu_cpu_us_per_io"), 1),
                             fmt(g(p, "qemu_cpu_us_per_io"), 1)))
    L.append("")
    if len(rig_on) > 1:
        L += placement_table(idx, meta)
    if doc["errors"]:
        L.append("Errors: " + "; ".join(doc["errors"]))
        L.append("")
    L.append("Reproduce: `make bench-rbd` (raw runs and commands in "
             "`build/bench/rbd.json`).")
    return "\n".join(L) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default=os.environ.get("BUILD", "build"))
    ap.add_argument("--runtime", type=float, default=3.0)
    ap.add_argument("--ramp", type=float, default=0.5)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--size", default="512M", help="image size")
    ap.add_argument("--iodepth", default="1,32")
    ap.add_argument("--iothreads", default="1,2")
    ap.add_argument("--rw", default="randread,randwrite")
    ap.add_argument("--no-doc", action="store_true")
    ap.add_argument("--no-pin", action="store_true")
    ap.add_argument("--rig-on", choices=("client", "cluster", "both"),
                    default="client",
                    help="the rig's CPUs: the client's (default, as fio's "
                    "application), the cluster's, or both side by side")
    ap.add_argument("--rbd-cache", choices=("off", "on"), default="off",
                    help="librbd's cache for all three (default off)")
    opts = ap.parse_args()
    opts.rbd_cache = opts.rbd_cache == "on"
    build = opts.build if os.path.isabs(opts.build) else \
        os.path.join(REPO, opts.build)
    opts.qemu = os.path.join(build, "qemu-system-x86_64")
    opts.rig = os.path.join(build, "bench", "pfbd-rig")
    ncpu = os.cpu_count() or 1
    opts.rig_cpus = opts.qemu_cpus = opts.ceph_cpus = None
    if not opts.no_pin and ncpu >= 2:
        # The cluster on CPU 0; the client (fio, or QEMU and the rig)
        # on the others
        opts.ceph_cpus = "0"
        opts.qemu_cpus = "1" if ncpu == 2 else "1-%d" % (ncpu - 1)
    opts.rig_args = ["--idle"]
    opts.rig_on = ["client", "cluster"] if opts.rig_on == "both" else \
        [opts.rig_on]
    opts.rig_cpus = rig_opts(opts, "stock").rig_cpus
    iodepths = [int(x) for x in opts.iodepth.split(",")]
    iothreads = [int(x) for x in opts.iothreads.split(",")]
    rws = opts.rw.split(",")
    host_ok = fio_has_rbd()
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc)
        .strftime("%Y-%m-%d %H:%M UTC"),
        "command": os.environ.get("BENCH_COMMAND") or
        " ".join(shlex.quote(a) for a in sys.argv),
        "nproc": ncpu, "loadavg_start": bench.loadavg(),
        "qemu_version": bench.qemu_version(opts.qemu), "git":
        bench.git_describe(), "size": opts.size, "runs": opts.runs,
        "runtime_s": opts.runtime, "ramp_s": opts.ramp,
        "iodepths": iodepths, "iothreads": iothreads, "rw": rws,
        "rbd_cache": opts.rbd_cache, "rig_cpus": opts.rig_cpus,
        "qemu_cpus": opts.qemu_cpus, "ceph_cpus": opts.ceph_cpus,
        "rig_args": opts.rig_args, "rig_on": opts.rig_on,
    }
    # make sure a kill stops the cluster too (the finally block below)
    signal.signal(signal.SIGTERM, lambda *a: sys.exit("bench-rbd: killed"))
    d = start_cluster(opts)
    conf = os.path.join(d, "ceph.conf")
    results, errors = [], []
    try:
        log("bench-rbd: cluster in %s; creating and filling %s" % (d,
                                                                   opts.size))
        if opts.ceph_cpus:
            pin_daemons(d, opts.ceph_cpus)
        fconf = fio_conf(conf, opts.rbd_cache)
        # No exclusive-lock (nor what needs it): fio's jobs each open the
        # image, and with the lock their writes took it from each other
        # (474 IOPS at iodepth 1 with 2 jobs)
        rbd(conf, "create", "--size", opts.size, "--image-feature",
            "layering", "rbd/" + IMAGE)
        rbd(conf, "bench", "--io-type", "write", "--io-size", "4M",
            "--io-pattern", "seq", "--io-total", opts.size, "rbd/" + IMAGE)
        for rw in rws:
            for t in iothreads:
                for qd in iodepths:
                    members = []
                    for i, where in enumerate(opts.rig_on):
                        sfx = "@" + where if i else ""
                        members += ["stock" + sfx, "pfbd" + sfx]
                    if host_ok:
                        members.append("host")
                    runs = {m: [] for m in members}
                    for _ in range(opts.runs):
                        for m in members:
                            try:
                                if m == "host":
                                    r = run_host(opts, fconf, rw, qd, t)
                                else:
                                    r = bench.run_rig(
                                        rig_opts(opts, m), None, None, rw,
                                        4096, qd, t, dev_args=dev_args(
                                            m.split("@")[0], conf, t, qd,
                                            opts.rbd_cache),
                                        size=opts.size)
                            except (RuntimeError, ValueError,
                                    subprocess.TimeoutExpired) as e:
                                errors.append("%s %s qd%d t%d: %s" % (
                                    m, rw, qd, t, str(e)[:500]))
                                log("  FAILED %s: %s" % (
                                    m, str(e).splitlines()[0]))
                                continue
                            if r.get("errors"):
                                errors.append("%s %s qd%d t%d: %d IO errors"
                                              % (m, rw, qd, t, r["errors"]))
                            runs[m].append(r)
                    line = []
                    for m in members:
                        if runs[m]:
                            s = bench.summarize(
                                runs[m], mode="host" if m == "host" else
                                "rig", device=DEVICE[m.split("@")[0]],
                                backend="rbd", variant=m, rw=rw, bs=4096,
                                iodepth=qd, iothreads=t,
                                rig_cpus=None if m == "host" else
                                rig_opts(opts, m).rig_cpus)
                            results.append(s)
                            line.append("%s %.1fk" % (m, s["iops"] / 1e3))
                    log("%s qd%d %d IOThread(s): %s" % (rw, qd, t,
                                                        "  ".join(line)))
    finally:
        stop_cluster(d)
    meta["loadavg_end"] = bench.loadavg()
    doc = {"meta": meta, "results": results, "errors": errors}
    out = os.path.join(build, "bench")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "rbd.json"), "w") as f:
        json.dump(doc, f, indent=1)
    md = report(doc)
    with open(os.path.join(out, "rbd.md"), "w") as f:
        f.write(md)
    if not opts.no_doc:
        bench.put_section(os.path.join(REPO, "docs", "benchmarks.md"), "rbd",
                          "tests/bench/bench_rbd.py", md)
    log(md)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())

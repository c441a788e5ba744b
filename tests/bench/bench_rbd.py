#!/usr/bin/python3
"""pfbd rbd engine vs stock QEMU rbd (block/rbd.c) on one Ceph cluster.

Starts a throwaway single-node Ceph cluster (tests/ceph/start-ceph.sh: one
mon, one memstore OSD on 127.0.0.1), creates one image and fills it, then
drives, with one QEMU binary and pfbd-rig (see bench.py), interleaved:

  stock      virtio-blk-pci + -blockdev driver=rbd (cache.direct=on)
  pfbd       virtio-blk-pfbd volume=rbd:rbd/IMAGE (one rados connection)
  pfbd-qconn the same with pfbd_connection=queue (a connection per queue;
             only with more than one IOThread)
  host       fio --ioengine=rbd on the same image (when fio has the rbd
             engine): librbd without QEMU

x {randread, randwrite} x 4 KiB x iodepth {1, 32} x IOThreads {1, 2}, medians
of --runs runs.  Output: BUILD/bench/rbd.json, BUILD/bench/rbd.md, and the
"rbd" section of docs/benchmarks.md (unless --no-doc).
"""

import argparse
import datetime
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

REPO = bench.REPO
IMAGE = "bench"
VARIANTS = ("stock", "pfbd", "pfbd-qconn", "host")


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def dev_args(variant, conf, iothreads, iodepth):
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
            "image": IMAGE, "conf": conf, "cache": {"direct": True}})]
        dev.update({"driver": "virtio-blk-pci", "drive": "r0"})
    else:
        vol = "rbd:rbd/%s:conf=%s" % (IMAGE, conf)
        if variant == "pfbd-qconn":
            vol += ":pfbd_connection=queue"
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


def rbd(conf, *args):
    subprocess.run(["rbd", "-c", conf] + list(args), check=True,
                   stdout=subprocess.DEVNULL)


def fmt(v, nd=0):
    return bench.fmt(v, nd)


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
             "127.0.0.1, cephx), image `rbd/%s` of %s filled before the "
             "runs; 4 KiB, %d run(s) per point interleaved, medians; "
             "%g s measured after %g s ramp.  stock: `virtio-blk-pci` + "
             "`-blockdev driver=rbd,cache.direct=on` (block/rbd.c); pfbd: "
             "`volume=rbd:rbd/%s:conf=...`; pfbd-qconn: the same with "
             "`pfbd_connection=queue`; host: fio `--ioengine=rbd` (librbd "
             "without QEMU).  CPU: all threads of the QEMU process "
             "(librbd's messenger and finisher threads included) per IO."
             % (IMAGE, meta["size"], meta["runs"], meta["runtime_s"],
                meta["ramp_s"], IMAGE))
    L.append("")
    L.append("| rw | IOThreads | iodepth | stock IOPS | pfbd IOPS | "
             "pfbd/stock | pfbd-qconn IOPS | host IOPS | pfbd/host | "
             "stock / pfbd lat avg us | stock / pfbd QEMU CPU us/IO |")
    L.append("| --- | --: | --: | --: | --: | --: | --: | --: | --: | --: "
             "| --: |")
    for rw in meta["rw"]:
        for t in meta["iothreads"]:
            for qd in meta["iodepths"]:
                s = idx.get(("stock", rw, qd, t))
                p = idx.get(("pfbd", rw, qd, t))
                q = idx.get(("pfbd-qconn", rw, qd, t))
                h = idx.get(("host", rw, qd, t))
                if not s and not p:
                    continue
                g = (lambda r, k: r.get(k) if r else None)
                L.append("| %s | %d | %d | %s | %s | %s | %s | %s | %s | "
                         "%s / %s | %s / %s |" % (
                             rw, t, qd, fmt(g(s, "iops")), fmt(g(p, "iops")),
                             bench.ratio(g(p, "iops"), g(s, "iops")),
                             fmt(g(q, "iops")), fmt(g(h, "iops")),
                             bench.ratio(g(p, "iops"), g(h, "iops")),
                             fmt(g(s, "lat_avg_us"), 1),
                             fmt(g(p, "lat_avg_us"), 1),
                             fmt(g(s, "qemu_cpu_us_per_io"), 1),
                             fmt(g(p, "qemu_cpu_us_per_io"), 1)))
    L.append("")
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
    opts = ap.parse_args()
    build = opts.build if os.path.isabs(opts.build) else \
        os.path.join(REPO, opts.build)
    opts.qemu = os.path.join(build, "qemu-system-x86_64")
    opts.rig = os.path.join(build, "bench", "pfbd-rig")
    ncpu = os.cpu_count() or 1
    opts.rig_cpus = opts.qemu_cpus = None
    if not opts.no_pin and ncpu >= 2:
        opts.rig_cpus = "0"
        opts.qemu_cpus = "1" if ncpu == 2 else "1-%d" % (ncpu - 1)
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
    }
    d = start_cluster(opts)
    conf = os.path.join(d, "ceph.conf")
    results, errors = [], []
    try:
        log("bench-rbd: cluster in %s; creating and filling %s" % (d,
                                                                   opts.size))
        rbd(conf, "create", "--size", opts.size, "rbd/" + IMAGE)
        rbd(conf, "bench", "--io-type", "write", "--io-size", "4M",
            "--io-pattern", "seq", "--io-total", opts.size, "rbd/" + IMAGE)
        for rw in rws:
            for t in iothreads:
                for qd in iodepths:
                    members = ["stock", "pfbd"]
                    if t > 1:
                        members.append("pfbd-qconn")
                    if host_ok:
                        members.append("host")
                    runs = {m: [] for m in members}
                    for _ in range(opts.runs):
                        for m in members:
                            try:
                                if m == "host":
                                    r = run_host(opts, conf, rw, qd, t)
                                else:
                                    r = bench.run_rig(
                                        opts, None, None, rw, 4096, qd, t,
                                        dev_args=dev_args(m, conf, t, qd),
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
                            s = bench.summarize(runs[m], variant=m, rw=rw,
                                                iodepth=qd, iothreads=t)
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

#!/usr/bin/python3
"""pfbd's pureflash engine vs PureFlash's own client, on one PureFlash volume.

Needs a running PureFlash cluster: PFBD_PUREFLASH_CONDUCTOR=HOST:PORT names
its conductor (PFBD_PUREFLASH_STORE_PORT its stores' port, if not 49162).
--double runs the project's conformance double instead: a check of this
script, not a benchmark (the double is a Python server).

Creates one volume of --size, fills it, then drives it, interleaved, with:

  pf-fio     PureFlash's own client: a fio with PureFlash's pfbd engine
             (libs5common), when PFBD_PUREFLASH_FIO names that fio
             (PFBD_PUREFLASH_FIO_ARGS: more options for it, such as its
             client configuration); never part of this project
  libpfbd    the pureflash engine alone: tests/bench/pfbd-load, a thread
             and a queue per job, waiting on the queue's completion fd
  pfbd       the whole device path: virtio-blk-pfbd volume=pureflash:...
             in QEMU, driven by pfbd-rig as a vCPU would (see bench.py)

PFBD_PUREFLASH_PIDS: the cluster's processes, pinned (every thread) to the
CPUs the clients do not use.

x {randread, randwrite} x 4 KiB x iodepth {1, 32, 128}, one job/queue,
medians of --runs runs.  CPU per I/O is every thread of the client's
process (fio and libs5common's threads; pfbd-load; QEMU), sampled inside
the measured window.  Output: BUILD/bench/pureflash.json, .md, and the
"pureflash" section of docs/benchmarks.md (unless --no-doc or --double).
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
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

REPO = bench.REPO
VARIANTS = ("pf-fio", "libpfbd", "pfbd")


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def s5c(conductor, op, **params):
    query = urllib.parse.urlencode(dict(params, op=op))
    with urllib.request.urlopen("http://%s/s5c/?%s" % (conductor, query),
                                timeout=60) as r:
        reply = json.load(r)
    if reply.get("ret_code") != 0:
        raise RuntimeError("conductor %s: %r" % (op, reply))
    return reply


def size_bytes(text):
    """"1G" and the like (powers of 1024) in bytes"""
    units = {"K": 10, "M": 20, "G": 30, "T": 40}
    if text[-1:].upper() in units:
        return int(text[:-1]) << units[text[-1:].upper()]
    return int(text)


def spec(opts):
    s = "pureflash:%s:conductor=%s" % (opts.volume, opts.conductor)
    if opts.store_port:
        s += ":store_port=%s" % opts.store_port
    return s


def run_load(opts, rw, iodepth, jobs, bs=4096, runtime=None, ramp=None):
    cmd = [opts.load, "--volume", spec(opts), "--rw", rw, "--bs", str(bs),
           "--iodepth", str(iodepth), "--jobs", str(jobs), "--size",
           opts.size, "--runtime", str(runtime or opts.runtime), "--ramp",
           str(ramp if ramp is not None else opts.ramp)]
    if opts.client_cpus:
        cmd = ["taskset", "-c", opts.client_cpus] + cmd
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=opts.runtime + opts.ramp + 600)
    if p.returncode not in (0, 3):
        raise RuntimeError("pfbd-load failed (rc %d): %s" % (
            p.returncode, p.stderr.decode(errors="replace")[-2000:]))
    r = json.loads(p.stdout.decode().strip().splitlines()[-1])
    r["command"] = " ".join(shlex.quote(c) for c in cmd)
    return r


def run_pf_fio(opts, rw, iodepth, jobs):
    cmd = [opts.pf_fio, "--name=pf", "--ioengine=pfbd",
           "--volume=" + opts.volume, "--rw=" + rw, "--bs=4096",
           "--iodepth=%d" % iodepth, "--numjobs=%d" % jobs,
           "--size=" + opts.size, "--runtime=%g" % opts.runtime,
           "--ramp_time=%g" % opts.ramp, "--time_based", "--norandommap",
           "--randrepeat=0", "--direct=1", "--output-format=json"]
    cmd += opts.pf_fio_args
    if opts.client_cpus:
        cmd = ["taskset", "-c", opts.client_cpus] + cmd
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # its volume open takes a moment: keep clear of both ends
    margin = min(0.5, opts.runtime / 4)
    time.sleep(0.5 + opts.ramp + margin)
    c0, t0 = bench.tree_cpu_ns(p.pid), time.monotonic()
    time.sleep(opts.runtime - 3 * margin)
    c1, t1 = bench.tree_cpu_ns(p.pid), time.monotonic()
    out, err = p.communicate(timeout=opts.runtime + opts.ramp + 120)
    if p.returncode != 0:
        raise RuntimeError("PureFlash's fio failed (rc %d): %s" % (
            p.returncode, err.decode(errors="replace")[-2000:]))
    text = out.decode(errors="replace")
    data = json.loads(text[text.index("{"):])
    key = "read" if "read" in rw else "write"
    ios = iops = lat_w = 0.0
    for j in data["jobs"]:
        d = j[key]
        # fio 3 reports lat_ns; older ones lat in microseconds
        n = d.get("total_ios") or d["iops"] * opts.runtime
        lat_ns = d["lat_ns"]["mean"] if "lat_ns" in d else \
            d["lat"]["mean"] * 1e3
        ios += n
        iops += d["iops"]
        lat_w += lat_ns * n
    return {"iops": iops, "ios": int(ios),
            "lat_avg_us": lat_w / ios / 1e3 if ios else None,
            "cpu_us_per_io": (c1 - c0) / 1e3 / (iops * (t1 - t0))
            if iops else None,
            "command": " ".join(shlex.quote(c) for c in cmd)}


def rig_args(opts, jobs, iodepth):
    ids = ["io%d" % i for i in range(jobs)]
    args = []
    for t in ids:
        args += ["-object", "iothread,id=%s" % t]
    dev = {"driver": "virtio-blk-pfbd", "id": "disk0", "num-queues": jobs,
           "queue-size": bench.queue_size(iodepth), "volume": spec(opts),
           "iothread-vq-mapping": [{"iothread": t} for t in ids]}
    return args + ["-device", json.dumps(dev, separators=(",", ":"))]


def run_one(opts, variant, rw, qd, jobs):
    if variant == "pf-fio":
        return run_pf_fio(opts, rw, qd, jobs)
    if variant == "libpfbd":
        return run_load(opts, rw, qd, jobs)
    r = bench.run_rig(opts, None, None, rw, 4096, qd, jobs,
                      dev_args=rig_args(opts, jobs, qd), size=opts.size)
    # the client's CPU: QEMU's every thread (the rig plays the guest)
    r["cpu_us_per_io"] = r.get("qemu_cpu_us_per_io")
    return r


def report(doc):
    meta, res = doc["meta"], doc["results"]
    idx = {(r["variant"], r["rw"], r["iodepth"]): r for r in res}
    fmt = bench.fmt
    L = ["## pureflash engine: pfbd vs PureFlash's own client", ""]
    L.append("Generated by `tests/bench/bench_pureflash.py` (`%s`) on %s; "
             "nproc %d, load average %s / %s; %s."
             % (meta["command"], meta["date"], meta["nproc"],
                meta["loadavg_start"], meta["loadavg_end"],
                meta["cluster"]))
    L.append("")
    L.append("One volume of %s, filled before the runs; 4 KiB, %d job(s) / "
             "queue(s), %d run(s) per point interleaved, medians; %g s "
             "measured after %g s ramp.  pf-fio: PureFlash's fio with its "
             "`pfbd` engine (libs5common)%s; libpfbd: `pfbd-load` (the "
             "engine without QEMU); pfbd: virtio-blk-pfbd in QEMU driven "
             "by pfbd-rig.  Client CPU: every thread of the client's "
             "process (fio, pfbd-load, QEMU), sampled in the measured "
             "window; the client on CPU %s, the cluster's processes on "
             "%s.  IOPS per client CPU second is 1e6 / (CPU us per I/O)."
             % (meta["size"], meta["jobs"], meta["runs"], meta["runtime_s"],
                meta["ramp_s"], "" if meta["pf_fio"] else
                " (not run: PFBD_PUREFLASH_FIO unset)",
                meta["client_cpus"] or "any",
                "CPU %s" % meta["cluster_cpus"] if meta.get("cluster_cpus")
                else "the CPUs the kernel gives them"))
    L.append("")
    L.append("| rw | iodepth | pf-fio IOPS | CPU us/IO | libpfbd IOPS | "
             "CPU us/IO | pfbd (QEMU) IOPS | CPU us/IO | IOPS per CPU, "
             "libpfbd / pf-fio | pfbd (QEMU) / pf-fio |")
    L.append("| --- | --: | --: | --: | --: | --: | --: | --: | --: | --: |")
    for rw in meta["rw"]:
        for qd in meta["iodepths"]:
            f, lib, p = (idx.get((v, rw, qd)) for v in VARIANTS)

            def g(r, k, nd=0):
                return fmt(r.get(k) if r else None, nd)

            def per_cpu(a, b):
                ca = a and a.get("cpu_us_per_io")
                cb = b and b.get("cpu_us_per_io")
                return bench.ratio(cb, ca) if ca and cb else "-"
            L.append("| %s | %d | %s | %s | %s | %s | %s | %s | %s | %s |"
                     % (rw, qd, g(f, "iops"), g(f, "cpu_us_per_io", 1),
                        g(lib, "iops"), g(lib, "cpu_us_per_io", 1),
                        g(p, "iops"), g(p, "cpu_us_per_io", 1),
                        per_cpu(lib, f), per_cpu(p, f)))
    L.append("")
    L.append("Where QEMU's CPU per I/O goes (pfbd rows): the IOThread (the "
             "device and the engine) and the main thread, which the rig "
             "makes parse a qtest command for every kick (a KVM vCPU's "
             "kick is an ioeventfd the main thread never sees):")
    L.append("")
    L.append("| rw | iodepth | IOThread us/IO | main thread us/IO |")
    L.append("| --- | --: | --: | --: |")
    for rw in meta["rw"]:
        for qd in meta["iodepths"]:
            p = idx.get(("pfbd", rw, qd))
            if p:
                L.append("| %s | %d | %s | %s |" % (
                    rw, qd, fmt(p.get("iothread_cpu_us_per_io"), 1),
                    fmt(p.get("main_cpu_us_per_io"), 1)))
    L.append("")
    if doc["errors"]:
        L.append("Errors: " + "; ".join(doc["errors"]))
        L.append("")
    L.append("Reproduce: `make bench-pureflash` with the cluster's "
             "variables set (raw runs and commands in "
             "`build/bench/pureflash.json`).")
    return "\n".join(L) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default=os.environ.get("BUILD", "build"))
    ap.add_argument("--runtime", type=float, default=5.0)
    ap.add_argument("--ramp", type=float, default=1.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--size", default="1G", help="volume size")
    ap.add_argument("--iodepth", default="1,32,128")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--rw", default="randread,randwrite")
    ap.add_argument("--client-cpus", default=None,
                    help="taskset CPU list for every client (default: "
                    "the last CPU when there are 2 or more)")
    ap.add_argument("--double", action="store_true",
                    help="the conformance double instead of a cluster "
                    "(checks this script; its figures mean nothing)")
    ap.add_argument("--no-doc", action="store_true")
    opts = ap.parse_args()
    build = opts.build if os.path.isabs(opts.build) else \
        os.path.join(REPO, opts.build)
    opts.qemu = os.path.join(build, "qemu-system-x86_64")
    opts.rig = os.path.join(build, "bench", "pfbd-rig")
    opts.load = os.path.join(build, "bench", "pfbd-load")
    ncpu = os.cpu_count() or 1
    if opts.client_cpus is None and ncpu >= 2:
        opts.client_cpus = str(ncpu - 1)
    # the rig's options (bench.run_rig): QEMU and the rig on the client's
    # CPU, the rig under SCHED_IDLE so that it takes no time from QEMU
    opts.qemu_cpus = opts.rig_cpus = opts.client_cpus
    opts.rig_args = ["--idle"]
    opts.pf_fio = os.environ.get("PFBD_PUREFLASH_FIO")
    opts.pf_fio_args = shlex.split(os.environ.get("PFBD_PUREFLASH_FIO_ARGS",
                                                  ""))
    # the cluster's processes on the CPUs the clients do not use
    cluster_pids = os.environ.get("PFBD_PUREFLASH_PIDS", "").split()
    opts.cluster_cpus = None
    if cluster_pids and opts.client_cpus and ncpu >= 2:
        opts.cluster_cpus = ",".join(
            str(c) for c in range(ncpu)
            if str(c) not in opts.client_cpus.split(","))
        for pid in cluster_pids:
            subprocess.run(["taskset", "-a", "-p", "-c", opts.cluster_cpus,
                            pid], check=True, stdout=subprocess.DEVNULL)
    double = None
    iodepths = [int(x) for x in opts.iodepth.split(",")]
    rws = opts.rw.split(",")
    tmp = None
    if opts.double:
        sys.path.insert(0, os.path.join(REPO, "tests", "pureflash"))
        from pfdouble_client import PfDouble
        tmp = tempfile.mkdtemp(prefix="pfbd-bench-pf-")
        double = PfDouble(tmp).start()
        opts.conductor, opts.store_port = double.conductor, double.store_port
        opts.pf_fio = None
        opts.no_doc = True
    else:
        opts.conductor = os.environ.get("PFBD_PUREFLASH_CONDUCTOR")
        opts.store_port = os.environ.get("PFBD_PUREFLASH_STORE_PORT")
        if not opts.conductor:
            sys.exit("bench-pureflash: set PFBD_PUREFLASH_CONDUCTOR to a "
                     "PureFlash cluster's conductor (HOST:PORT), or use "
                     "--double (docs/pureflash.rst)")
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc)
        .strftime("%Y-%m-%d %H:%M UTC"),
        "command": os.environ.get("BENCH_COMMAND") or
        " ".join(shlex.quote(a) for a in sys.argv),
        "nproc": ncpu, "loadavg_start": bench.loadavg(),
        "qemu_version": bench.qemu_version(opts.qemu),
        "git": bench.git_describe(), "size": opts.size, "runs": opts.runs,
        "runtime_s": opts.runtime, "ramp_s": opts.ramp, "jobs": opts.jobs,
        "iodepths": iodepths, "rw": rws, "client_cpus": opts.client_cpus,
        "cluster_cpus": opts.cluster_cpus, "pf_fio_args": opts.pf_fio_args,
        "pf_fio": opts.pf_fio,
        "cluster": "the conformance double" if opts.double else
        "PureFlash cluster at %s" % opts.conductor,
    }
    opts.volume = "pfbench%d" % os.getpid()
    results, errors = [], []
    try:
        s5c(opts.conductor, "create_volume", volume_name=opts.volume,
            size=size_bytes(opts.size), rep_cnt=1, host_id=-1)
        log("bench-pureflash: volume %s; filling %s" % (opts.volume,
                                                        opts.size))
        run_load(opts, "write", 16, 1, bs=128 * 1024, runtime=1, ramp=0)
        variants = [v for v in VARIANTS if v != "pf-fio" or opts.pf_fio]
        for rw in rws:
            for qd in iodepths:
                runs = {v: [] for v in variants}
                for _ in range(opts.runs):
                    for v in variants:
                        try:
                            r = run_one(opts, v, rw, qd, opts.jobs)
                        except (RuntimeError, ValueError,
                                subprocess.TimeoutExpired) as e:
                            errors.append("%s %s qd%d: %s" % (
                                v, rw, qd, str(e)[:500]))
                            log("  FAILED %s: %s" % (
                                v, str(e).splitlines()[0]))
                            continue
                        if r.get("errors"):
                            errors.append("%s %s qd%d: %d I/O errors" % (
                                v, rw, qd, r["errors"]))
                        runs[v].append(r)
                line = []
                for v in variants:
                    if runs[v]:
                        s = bench.summarize(runs[v], variant=v, rw=rw,
                                            iodepth=qd, jobs=opts.jobs)
                        results.append(s)
                        line.append("%s %.1fk %.1fus/IO" % (
                            v, s["iops"] / 1e3, s["cpu_us_per_io"] or 0))
                log("%s qd%d: %s" % (rw, qd, "  ".join(line)))
    finally:
        try:
            s5c(opts.conductor, "delete_volume", volume_name=opts.volume)
        except (OSError, RuntimeError) as e:
            log("bench-pureflash: could not delete %s: %s" % (opts.volume,
                                                              e))
        if double:
            double.stop()
            shutil.rmtree(tmp, ignore_errors=True)
    meta["loadavg_end"] = bench.loadavg()
    doc = {"meta": meta, "results": results, "errors": errors}
    out = os.path.join(build, "bench")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "pureflash.json"), "w") as f:
        json.dump(doc, f, indent=1)
    md = report(doc)
    with open(os.path.join(out, "pureflash.md"), "w") as f:
        f.write(md)
    if not opts.no_doc:
        bench.put_section(os.path.join(REPO, "docs", "benchmarks.md"),
                          "pureflash", "tests/bench/bench_pureflash.py", md)
    log(md)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())

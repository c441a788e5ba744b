#!/usr/bin/python3
"""pfbd benchmark matrix: virtio-blk-pfbd vs stock virtio-blk-pci vs the host.

Runs, with one QEMU binary, side by side:

  rig    the device driven without a guest by pfbd-rig (qtest accelerator,
         guest RAM in a shared memory-backend-file on /dev/shm, descriptors
         written directly, kicks through qtest, used rings polled) for
           virtio-blk-pci  + -blockdev null-co (read-zeroes=off)
           virtio-blk-pci  + -blockdev file (aio=io_uring, cache.direct=on)
           virtio-blk-pfbd   volume=null:1G
           virtio-blk-pfbd   volume=file:F
           vhost-user-blk-pci + qemu-storage-daemon exporting F (file,
                             aio=io_uring, cache.direct=on) on 1 IOThread
         x {randread, randwrite} x 4 KiB x iodepth {1, 32, 128}
         x IOThreads {1, 2} (num-queues = IOThreads, iothread-vq-mapping)
  host   fio (io_uring, O_DIRECT) on F itself, numjobs = IOThreads, the
         same rw/bs/iodepth: the limit of the file path
  guest  fio in the test guest (tests/guest; KVM if it works, else TCG),
         iodepth 32, 1 IOThread, file backend, pfbd vs stock

F is a 1 GiB file on /dev/shm (tmpfs; O_DIRECT works there) filled with
data once.  Every point is run --runs times, interleaved (A B C ... A B C
...), and medians are reported.  The rig is pinned to CPU 0 (it plays the
guest's vCPU) and QEMU to the other CPUs (--no-pin: no pinning); --nice -10
keeps other work on the machine from skewing the figures.

Output: BUILD/bench/results.json, BUILD/bench/report.md, BUILD/bench/iops.png
and, unless --quick or --no-doc, docs/benchmarks.md.  --render rewrites the
last three from results.json.

Python stdlib only (matplotlib, when installed, draws the plot).
"""

import argparse
import contextlib
import datetime
import importlib.util
import json
import shutil
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))

GIB = 1 << 30

# (device, backend), in the order runs are interleaved
RIG_DEVICES = (
    ("virtio-blk-pci", "null"),
    ("virtio-blk-pfbd", "null"),
    ("virtio-blk-pci", "file"),
    ("virtio-blk-pfbd", "file"),
    ("vhost-user-blk", "file"),
)
SHORT = {"virtio-blk-pci": "stock", "virtio-blk-pfbd": "pfbd", "host": "host",
         "loopback": "loopback", "vhost-user-blk": "vhost-user"}
METRICS = ("iops", "lat_avg_us", "lat_p50_us", "lat_p99_us", "cpu_us_per_io",
           "iothread_cpu_us_per_io", "iouring_worker_cpu_us_per_io",
           "main_cpu_us_per_io", "qemu_cpu_us_per_io", "rig_cpu_us_per_io",
           "kicks_per_io", "vcpu_cpu_us_per_io", "iothread_runs_per_io",
           "daemon_cpu_us_per_io")


def log(msg):
    print(msg, flush=True)


# ------------------------------------------------------------------ setup
def ensure_image(path, size):
    """Create @path (@size bytes of random data) unless it is there."""
    try:
        if os.path.getsize(path) == size:
            return False
    except OSError:
        pass
    log("creating %s (%d MiB of data)" % (path, size >> 20))
    chunk = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for i in range(size >> 20):
            # one random MiB over and over, each copy stamped with its index
            f.write(i.to_bytes(8, "little") + chunk[8:])
    return True


def file_id(path):
    try:
        st = os.stat(path)
        return "%d bytes, mtime %s" % (st.st_size, datetime.datetime.fromtimestamp(
            st.st_mtime).strftime("%Y-%m-%d %H:%M:%S"))
    except OSError as e:
        return str(e)


def qemu_version(qemu):
    try:
        out = subprocess.run([qemu, "--version"], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, timeout=30)
        return out.stdout.decode(errors="replace").splitlines()[0].strip()
    except (OSError, IndexError, subprocess.TimeoutExpired) as e:
        return "unknown (%s)" % e


def machine_info():
    model, flags = "unknown", ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model == "unknown":
                    model = line.split(":", 1)[1].strip()
                if line.startswith("flags") and not flags:
                    flags = line.split(":", 1)[1]
    except OSError:
        pass
    mem = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem = int(line.split()[1]) * 1024
    except OSError:
        pass
    nproc = subprocess.run(["nproc"], stdout=subprocess.PIPE).stdout.decode()
    return {
        "cpu_model": model,
        "nproc": int(nproc.strip() or 0),
        "hypervisor": " hypervisor" in " " + flags,
        "mem_bytes": mem,
        "kernel": platform.release(),
        "kvm": os.access("/dev/kvm", os.R_OK | os.W_OK),
    }


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return [float(x) for x in f.read().split()[:3]]
    except (OSError, ValueError):
        return None


def git_describe():
    try:
        rev = subprocess.run(["git", "-C", REPO, "rev-parse", "--short",
                              "HEAD"], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL).stdout.decode().strip()
        dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain",
                                "--untracked-files=no"],
                               stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except OSError:
        return None


# ------------------------------------------------------------------ rig
def queue_size(iodepth):
    """Device queue-size: 256 (the default) unless 3 descriptors x iodepth
    need more; the same for both devices."""
    qs = 256
    while qs < 3 * iodepth:
        qs *= 2
    return qs


def device_args(device, backend, iothreads, iodepth, image):
    ids = ["io%d" % i for i in range(iothreads)]
    args = []
    for t in ids:
        args += ["-object", "iothread,id=%s" % t]
    dev = {"driver": device, "id": "disk0", "num-queues": iothreads,
           "queue-size": queue_size(iodepth),
           "iothread-vq-mapping": [{"iothread": t} for t in ids]}
    if device == "virtio-blk-pfbd" and backend == "null":
        dev["volume"] = "null:1G"
    elif device == "virtio-blk-pfbd":
        # Guest RAM as io_uring fixed buffers, as host fio's fixedbufs
        dev["volume"] = "file:" + image
        dev["fixed-buffers"] = True
    elif backend == "null":
        args += ["-blockdev", "driver=null-co,node-name=n0,read-zeroes=off,"
                 "size=%d" % GIB]
        dev["drive"] = "n0"
    else:
        args += ["-blockdev", "driver=file,filename=%s,aio=io_uring,"
                 "cache.direct=on,node-name=f0" % image]
        dev["drive"] = "f0"
    args += ["-device", json.dumps(dev, separators=(",", ":"))]
    return args


class StorageDaemon:
    """qemu-storage-daemon exporting @image as vhost-user-blk on a unix
    socket, with @queues queues on one IOThread (QEMU 10.0's vhost-user-blk
    export runs in one AioContext), pinned to @cpus; a context manager.
    The file node is the stock device's: aio=io_uring, cache.direct=on."""

    def __init__(self, qsd, image, queues, cpus=None):
        self.sock = "/tmp/pfbd-bench-vu-%d.sock" % os.getpid()
        blockdev = {"driver": "file", "filename": image, "aio": "io_uring",
                    "cache": {"direct": True}, "node-name": "f0"}
        self.cmd = [qsd, "--object", "iothread,id=io0",
                    "--blockdev", json.dumps(blockdev,
                                             separators=(",", ":")),
                    "--export", "type=vhost-user-blk,id=e0,node-name=f0,"
                    "writable=on,addr.type=unix,addr.path=%s,num-queues=%d,"
                    "iothread=io0" % (self.sock, queues)]
        if cpus:
            self.cmd = ["taskset", "-c", cpus] + self.cmd
        self.proc = None

    def __enter__(self):
        try:
            os.unlink(self.sock)
        except OSError:
            pass
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        # Ready when it listens: the socket exists (or it has failed)
        deadline = time.monotonic() + 30
        while not os.path.exists(self.sock):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError("qemu-storage-daemon did not start: %s\n"
                                   "  command: %s" % (
                                       self.output[-2000:],
                                       " ".join(shlex.quote(c)
                                                for c in self.cmd)))
            time.sleep(0.01)
        return self

    def __exit__(self, *exc):
        self.output = ""
        if self.proc:
            if self.proc.poll() is None:
                self.proc.terminate()
            try:
                out, _ = self.proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                out, _ = self.proc.communicate()
            self.output = out.decode(errors="replace")
        try:
            os.unlink(self.sock)
        except OSError:
            pass
        return False


def vhost_user_args(sock, iothreads, iodepth):
    """QEMU's side of vhost-user-blk: the device, on the daemon's socket"""
    dev = {"driver": "vhost-user-blk-pci", "id": "disk0", "chardev": "vu0",
           "num-queues": iothreads, "queue-size": queue_size(iodepth)}
    return ["-chardev", "socket,id=vu0,path=%s" % sock,
            "-device", json.dumps(dev, separators=(",", ":"))]


def run_rig(opts, device, backend, rw, bs, iodepth, iothreads, dev_args=None,
            size="1G", daemon_pid=None):
    """One pfbd-rig run; @dev_args replaces device_args()' QEMU args;
    vhost-user-blk starts its qemu-storage-daemon (@daemon_pid: the rig
    counts that process's CPU as the device path's)."""
    if device == "vhost-user-blk" and dev_args is None:
        with StorageDaemon(opts.qsd, opts.image, iothreads,
                           opts.qemu_cpus) as qsd:
            args = vhost_user_args(qsd.sock, iothreads, iodepth)
            r = run_rig(opts, device, backend, rw, bs, iodepth, iothreads,
                        args, size, daemon_pid=qsd.proc.pid)
        r["daemon_command"] = " ".join(shlex.quote(c) for c in qsd.cmd)
        return r
    cmd = [opts.rig, "--qemu", opts.qemu, "--rw", rw, "--bs", str(bs),
           "--iodepth", str(iodepth), "--runtime", str(opts.runtime),
           "--ramp", str(opts.ramp), "--size", size]
    if opts.rig_cpus:
        cmd += ["--rig-cpus", opts.rig_cpus, "--qemu-cpus", opts.qemu_cpus]
    cmd += getattr(opts, "rig_args", [])
    if getattr(opts, "kick", None):
        cmd += ["--kick", opts.kick]
    if device == "loopback":
        # No QEMU: the rig's ideal device, one queue per "IOThread"
        cmd += ["--loopback", "--queues", str(iothreads)]
    else:
        if daemon_pid:
            cmd += ["--daemon-pid", str(daemon_pid)]
        cmd += ["--"]
        cmd += dev_args or device_args(device, backend, iothreads, iodepth,
                                       opts.image)
    timeout = opts.runtime + opts.ramp + 60
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        stdout, stderr = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()        # QEMU follows (PR_SET_PDEATHSIG)
        p.communicate()
        for f in ("/dev/shm/pfbd-rig-%d.ram", "/tmp/pfbd-rig-%d.sock"):
            try:
                os.unlink(f % p.pid)
            except OSError:
                pass
        raise
    out = stdout.decode(errors="replace").strip().splitlines()
    err = stderr.decode(errors="replace").strip()
    if p.returncode not in (0, 3) or not out:
        raise RuntimeError("pfbd-rig failed (rc %d): %s\n  command: %s"
                           % (p.returncode, err[-2000:],
                              " ".join(shlex.quote(c) for c in cmd)))
    r = json.loads(out[-1])
    r["kicks_per_io"] = r["kicks"] / r["ios"] if r["ios"] else None
    r["command"] = " ".join(shlex.quote(c) for c in cmd)
    if err:
        r["stderr"] = err[-2000:]
    return r


# ------------------------------------------------------------------ host
def tree_cpu_ns(pid):
    """CPU time (ns) of every thread of @pid and of its descendants."""
    total, todo, seen = 0, [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            tids = os.listdir("/proc/%d/task" % p)
        except OSError:
            continue
        for tid in tids:
            try:
                with open("/proc/%d/task/%s/schedstat" % (p, tid)) as f:
                    total += int(f.read().split()[0])
                with open("/proc/%d/task/%s/children" % (p, tid)) as f:
                    todo += [int(c) for c in f.read().split()]
            except (OSError, ValueError, IndexError):
                pass
    return total


def run_host(opts, rw, bs, iodepth, numjobs):
    cmd = ["fio", "--name=host", "--filename=" + opts.image, "--direct=1",
           "--ioengine=io_uring", "--rw=" + rw, "--bs=%d" % bs,
           "--iodepth=%d" % iodepth, "--numjobs=%d" % numjobs,
           "--size=%d" % GIB, "--runtime=%g" % opts.runtime,
           "--ramp_time=%g" % opts.ramp, "--time_based", "--norandommap",
           "--randrepeat=0", "--lat_percentiles=1",
           "--registerfiles=1", "--fixedbufs=1", "--output-format=json"]
    if opts.qemu_cpus:
        # The CPUs the device path (QEMU) gets in rig mode
        cmd = ["taskset", "-c", opts.qemu_cpus] + cmd
    # CPU: fio's own usr/sys misses its io_uring workers (iou-wrk-*), so
    # sample every thread of the fio processes inside the measured window
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # fio starts its job within ~0.1 s; keep clear of both ends
    margin = min(0.3, opts.runtime / 4)
    time.sleep(0.1 + opts.ramp + margin)
    c0, t0 = tree_cpu_ns(p.pid), time.monotonic()
    time.sleep(opts.runtime - 3 * margin)
    c1, t1 = tree_cpu_ns(p.pid), time.monotonic()
    try:
        stdout, stderr = p.communicate(timeout=opts.runtime + opts.ramp + 60)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        raise
    if p.returncode != 0:
        raise RuntimeError("fio failed (rc %d): %s" % (
            p.returncode, stderr.decode(errors="replace")[-2000:]))
    text = stdout.decode(errors="replace")
    data = json.loads(text[text.index("{"):])
    key = "read" if "read" in rw else "write"
    ios = iops = lat_w = fio_cpu_s = 0.0
    p99 = p50 = 0.0
    for j in data["jobs"]:
        d = j[key]
        n = d["total_ios"]
        ios += n
        iops += d["iops"]
        lat_w += d["lat_ns"]["mean"] * n
        # submission to completion, like the rig's
        pct = d.get("lat_ns", {}).get("percentile", {})
        p99 = max(p99, pct.get("99.000000", 0.0))
        p50 = max(p50, pct.get("50.000000", 0.0))
        fio_cpu_s += (j["usr_cpu"] + j["sys_cpu"]) / 100.0 * \
            j["job_runtime"] / 1e3
    return {
        "rw": rw, "bs": bs, "iodepth": iodepth, "numjobs": numjobs,
        "ios": int(ios), "iops": iops,
        "lat_avg_us": lat_w / ios / 1e3 if ios else None,
        # latency percentiles: with several jobs, the largest job's
        "lat_p50_us": p50 / 1e3, "lat_p99_us": p99 / 1e3,
        # fio's threads and io_uring workers, sampled in the measured window
        "cpu_us_per_io": (c1 - c0) / 1e3 / (iops * (t1 - t0))
        if iops else None,
        "fio_cpu_us_per_io": fio_cpu_s * 1e6 / ios if ios else None,
        "command": " ".join(shlex.quote(c) for c in cmd),
    }


# ------------------------------------------------------------------ guest
def load_guest_fio():
    spec = importlib.util.spec_from_file_location(
        "guest_fio", os.path.join(HERE, "guest-fio.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def qemu_thread_cpu_ns(pid, daemon_pid=None):
    """CPU time (ns) of QEMU's threads by kind: IOThreads ("IO ..."),
    io_uring workers ("iou-..."), vCPUs ("CPU ..."), and how often the
    IOThreads were scheduled in ("iothread_runs": wake-ups, near enough);
    needs -name ...,debug-threads=on.  Every thread of @daemon_pid (the
    vhost-user back end) counts as an IOThread or io_uring worker."""
    cpu = {"iothread": 0, "iou": 0, "vcpu": 0, "iothread_runs": 0,
           "daemon": 0}
    for p in (pid, daemon_pid):
        if p is None:
            continue
        base = "/proc/%d/task" % p
        for tid in os.listdir(base):
            try:
                with open("%s/%s/comm" % (base, tid)) as f:
                    comm = f.read().strip()
                with open("%s/%s/schedstat" % (base, tid)) as f:
                    ns, _, runs = (int(x) for x in f.read().split()[:3])
            except (OSError, ValueError):
                continue        # the thread has gone
            if p == daemon_pid:
                cpu["daemon"] += ns
            if comm.startswith("iou-"):
                cpu["iou"] += ns
            elif comm.startswith("IO ") or p == daemon_pid:
                cpu["iothread"] += ns
                cpu["iothread_runs"] += runs
            elif comm.startswith("CPU "):
                cpu["vcpu"] += ns
    return cpu


def guest_run_sampled(g, gf, job, extra, timeout, daemon_pid=None):
    """Boot the guest on @job (gf.job_script()) and, at each marker line it
    prints around a workload, sample the CPU time of QEMU's threads (and of
    @daemon_pid's, see qemu_thread_cpu_ns()).
    Returns (JobResult, {rw: {"ios", "iothread_cpu_us_per_io", ...}})."""
    vm = g.start(job, list(extra) + ["-name", "bench,debug-threads=on"],
                 timeout=timeout, smp=1)
    samples = []
    while vm.proc.poll() is None and \
            time.monotonic() - vm.t0 < vm.timeout:
        marks = gf.parse_marks(vm.console())
        while len(samples) < len(marks):
            try:
                samples.append((marks[len(samples)],
                                qemu_thread_cpu_ns(vm.proc.pid,
                                                   daemon_pid)))
            except OSError:
                break       # QEMU has exited
        time.sleep(0.02)
    res = vm.wait()
    cpu = {}
    for (m0, c0), (m1, c1) in zip(samples, samples[1:]):
        if m0[0] == "begin" and m1[0] == "end" and m0[1] == m1[1]:
            ios = m1[2] - m0[2]
            if ios > 0:
                cpu[m0[1]] = {
                    "ios_sampled": ios,
                    "iothread_cpu_us_per_io":
                        (c1["iothread"] - c0["iothread"]) / 1e3 / ios,
                    "iouring_worker_cpu_us_per_io":
                        (c1["iou"] - c0["iou"]) / 1e3 / ios,
                    "cpu_us_per_io": (c1["iothread"] - c0["iothread"] +
                                      c1["iou"] - c0["iou"]) / 1e3 / ios,
                    "vcpu_cpu_us_per_io": (c1["vcpu"] - c0["vcpu"]) / 1e3 /
                    ios,
                    "iothread_runs_per_io":
                        (c1["iothread_runs"] - c0["iothread_runs"]) / ios,
                }
                if daemon_pid:
                    cpu[m0[1]]["daemon_cpu_us_per_io"] = \
                        (c1["daemon"] - c0["daemon"]) / 1e3 / ios
    return res, cpu


def run_guest_mode(opts, results, errors, failures):
    """Guest mode runs; a failed boot adds its first line to @errors and
    its whole text to @failures."""
    gf = load_guest_fio()
    pfbdguest = gf.pfbdguest
    try:
        g = pfbdguest.Guest(qemu=opts.qemu, log=lambda m: None)
    except Exception as e:  # noqa: BLE001 - report and go on
        errors.append("guest mode skipped: %s" % e)
        log("guest mode SKIPPED: %s" % e)
        return None
    runs = {}
    for rep in range(opts.runs):
        for kind in ("stock", "pfbd", "vhost-user"):
            daemon = None
            if kind == "vhost-user":
                # vhost-user needs the guest RAM shared with the daemon
                daemon = StorageDaemon(opts.qsd, opts.image, 1,
                                       opts.qemu_cpus)
                extra = ["-object", "memory-backend-memfd,id=mem,size=%s,"
                         "share=on" % g.mem, "-machine",
                         "memory-backend=mem"] + \
                    vhost_user_args(daemon.sock, 1, 32)
            else:
                extra = pfbdguest.disk_args("file:" + opts.image, kind=kind,
                                            num_queues=1, iothreads=["io0"])
            t0 = time.monotonic()
            try:
                with daemon or contextlib.nullcontext():
                    r, cpu = guest_run_sampled(
                        g, gf, gf.job_script(opts.guest_runtime, 32, "4k"),
                        extra, g.default_timeout() + 4 * opts.guest_runtime,
                        daemon and daemon.proc.pid)
                parsed = gf.parse(r.output)
            except (pfbdguest.GuestError, ValueError, KeyError,
                    RuntimeError) as e:
                # The first line says what went wrong; the console tail
                # that follows it goes to results.json only
                first = (str(e).splitlines() or [repr(e)])[0]
                errors.append("guest %s run %d: %s" % (kind, rep + 1, first))
                failures.append({"kind": kind, "run": rep + 1,
                                 "error": str(e)[-4000:]})
                log("guest %s run %d FAILED: %s" % (kind, rep + 1, first))
                continue
            for rw, d in parsed.items():
                run = {"iops": d["iops"], "lat_avg_us": d["lat_avg_us"],
                       "lat_p99_us": d["clat_p99_us"], "errors": d["errors"],
                       "command": " ".join(extra)}
                run.update(cpu.get(rw, {}))
                runs.setdefault((kind, rw), []).append(run)
            log("guest %-5s run %d: %s (%.0f s)" % (
                kind, rep + 1, ", ".join(
                    "%s %.0f IOPS, IOThread %s us/IO" % (
                        k, v["iops"],
                        fmt(cpu.get(k, {}).get("iothread_cpu_us_per_io"), 2))
                    for k, v in parsed.items()),
                time.monotonic() - t0))
    for (kind, rw), rl in runs.items():
        device = {"pfbd": "virtio-blk-pfbd", "stock": "virtio-blk-pci",
                  "vhost-user": "vhost-user-blk"}[kind]
        results.append(summarize(rl, mode="guest", device=device,
                                 backend="file", rw=rw, bs=4096, iodepth=32,
                                 iothreads=1, extra={"accel": g.accel}))
    return g.accel


# ------------------------------------------------------------------ stats
def median(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def spread(runs):
    v = [r["iops"] for r in runs if r.get("iops")]
    return max(v) / min(v) if len(v) > 1 else 1.0


def summarize(runs, **key):
    extra = key.pop("extra", {})
    res = dict(key)
    for m in METRICS:
        if any(m in r for r in runs):
            res[m] = median([r.get(m) for r in runs])
    res.setdefault("cpu_us_per_io", None)
    res["runs"] = len(runs)
    res["iops_runs"] = [round(r["iops"], 1) for r in runs]
    res["errors"] = sum(r.get("errors", 0) or 0 for r in runs)
    if runs:
        res["command"] = runs[0].get("command")
        if runs[0].get("kick"):
            # eventfd, qtest or qtest-sync: how the rig kicked
            res["kick"] = runs[0]["kick"]
    res.update(extra)
    return res


# ------------------------------------------------------------------ report
def fmt(v, nd=0, unit=""):
    if v is None:
        return "-"
    if nd == 0:
        return "{:,.0f}".format(v) + unit
    return ("%." + str(nd) + "f") % v + unit


def ratio(a, b):
    if a is None or not b:
        return "-"
    return "%.2fx" % (a / b)


def index(results):
    return {(r["mode"], r["device"], r["backend"], r["rw"], r["iodepth"],
             r["iothreads"]): r for r in results}


def rig_ceiling(results):
    """The rig ceiling rows: the null backends at the highest iodepth (the
    fastest points), with the rig's and the qtest main thread's CPU per IO
    next to the device path's, and the highest IOPS any single rig run
    reached: the rig can drive at least that much."""
    rig = [r for r in results if r["mode"] == "rig" and r["backend"] == "null"]
    if not rig:
        return []
    qmax = max(r["iodepth"] for r in rig)
    best = max(max(r["iops_runs"] or [0]) for r in rig)
    rows = []
    for r in sorted((r for r in rig if r["iodepth"] == qmax),
                    key=lambda r: (r["rw"], r["iothreads"], r["device"])):
        rows.append({"device": r["device"], "backend": r["backend"],
                     "rw": r["rw"], "iothreads": r["iothreads"],
                     "iodepth": r["iodepth"], "iops": r["iops"],
                     "iops_max_run": max(r["iops_runs"] or [0]),
                     "cpu_us_per_io": r["cpu_us_per_io"],
                     "rig_cpu_us_per_io": r.get("rig_cpu_us_per_io"),
                     "main_cpu_us_per_io": r.get("main_cpu_us_per_io"),
                     "rig_max_iops_any_run": best})
    return rows


def rig_rows(idx, opts):
    """The rows of the rig tables: (rw, iothreads, iodepth, backend, stock
    result, pfbd result, host result) for every point with a rig result."""
    for rw in opts.rws:
        for t in opts.iothreads:
            for qd in opts.iodepths:
                host = idx.get(("host", "host", "file", rw, qd, t))
                for be in ("null", "file"):
                    s = idx.get(("rig", "virtio-blk-pci", be, rw, qd, t))
                    p = idx.get(("rig", "virtio-blk-pfbd", be, rw, qd, t))
                    if s or p:
                        yield rw, t, qd, be, s, p, host


def target_rows(idx):
    """Issue 5's figures: randread 4 KiB, 1 IOThread, rig mode, from this
    run.  Yields (figure, target, value text)."""
    def get(mode, dev, be, qd):
        return idx.get((mode, dev, be, "randread", qd, 1))

    def best(dev, be):
        rs = [get("rig", dev, be, qd) for qd in (32, 128)]
        rs = [r for r in rs if r and r.get("iops")]
        return max(rs, key=lambda r: r["iops"]) if rs else None

    for be, target in (("null", ">= 2.0 (aim 3.0)"), ("file", ">= 1.5")):
        p, s = best("virtio-blk-pfbd", be), best("virtio-blk-pci", be)
        if p and s:
            yield ("%s: pfbd / stock IOPS, best of iodepth 32/128" % be,
                   target, "%s / %s = **%s**" % (
                       fmt(p["iops"]), fmt(s["iops"]),
                       ratio(p["iops"], s["iops"])))
    for qd in (32, 128):
        p = get("rig", "virtio-blk-pfbd", "file", qd)
        h = get("host", "host", "file", qd)
        if p and h:
            yield ("file: pfbd / host fio IOPS, iodepth %d" % qd,
                   ">= 0.85 (aim 0.95)", "%s / %s = **%s**" % (
                       fmt(p["iops"]), fmt(h["iops"]),
                       ratio(p["iops"], h["iops"])))
    loop = get("rig", "loopback", "none", 1)
    for be in ("null", "file"):
        p = get("rig", "virtio-blk-pfbd", be, 1)
        s = get("rig", "virtio-blk-pci", be, 1)
        if not (p and s and p.get("lat_avg_us") and s.get("lat_avg_us")):
            continue
        floors = []
        if loop and loop.get("lat_avg_us"):
            floors.append(("the rig's loopback", loop["lat_avg_us"]))
        h = get("host", "host", "file", 1) if be == "file" else None
        if h and h.get("lat_avg_us"):
            floors.append(("host fio", h["lat_avg_us"]))
        for what, base in floors:
            pa, sa = p["lat_avg_us"] - base, s["lat_avg_us"] - base
            if sa > 0 and pa >= 0:
                v = "(%.2f - %.2f) / (%.2f - %.2f) us = **%.2f**" % (
                    p["lat_avg_us"], base, s["lat_avg_us"], base, pa / sa)
            else:
                v = ("n/a: a device (pfbd %.2f, stock %.2f us) is not above "
                     "%s's %.2f us" % (p["lat_avg_us"], s["lat_avg_us"],
                                       what, base))
            yield ("%s, iodepth 1: latency added over %s, pfbd / stock" %
                   (be, what), "<= 0.5", v)
    for be in ("null", "file"):
        for qd in (32, 128):
            p = get("rig", "virtio-blk-pfbd", be, qd)
            s = get("rig", "virtio-blk-pci", be, qd)
            if p and s and p.get("cpu_us_per_io") and s.get("cpu_us_per_io"):
                v = "%.2f / %.2f = **%.2f**" % (
                    p["cpu_us_per_io"], s["cpu_us_per_io"],
                    p["cpu_us_per_io"] / s["cpu_us_per_io"])
                wrk = p.get("iouring_worker_cpu_us_per_io")
                if wrk and s.get("iothread_cpu_us_per_io"):
                    # the io_uring workers (tmpfs hands every read to
                    # io-wq) cost the same for both: what is left to win
                    v += ("; IOThreads alone %.2f / %.2f = %.2f; with a "
                          "free IOThread (pfbd's io_uring workers alone) "
                          "%.2f / %.2f = %.2f" % (
                              p["iothread_cpu_us_per_io"],
                              s["iothread_cpu_us_per_io"],
                              p["iothread_cpu_us_per_io"] /
                              s["iothread_cpu_us_per_io"],
                              wrk, s["cpu_us_per_io"],
                              wrk / s["cpu_us_per_io"]))
                yield ("%s iodepth %d: device path CPU us/IO, pfbd / stock"
                       % (be, qd), "<= 0.5", v)
    for qd in (32, 128):
        p = get("rig", "virtio-blk-pfbd", "file", qd)
        v = get("rig", "vhost-user-blk", "file", qd)
        if p and v and v.get("iops"):
            yield ("file iodepth %d: pfbd / vhost-user-blk IOPS" % qd,
                   ">= 1.3", "%s / %s = **%s**" % (
                       fmt(p["iops"]), fmt(v["iops"]),
                       ratio(p["iops"], v["iops"])))
    for qd in (32, 128):
        p = get("rig", "virtio-blk-pfbd", "file", qd)
        v = get("rig", "vhost-user-blk", "file", qd)
        if p and v and p.get("cpu_us_per_io") and v.get("cpu_us_per_io"):
            yield ("file iodepth %d: device path CPU us/IO, pfbd / "
                   "vhost-user-blk (daemon included)" % qd, "<= 0.7",
                   "%.2f / %.2f = **%.2f**" % (
                       p["cpu_us_per_io"], v["cpu_us_per_io"],
                       p["cpu_us_per_io"] / v["cpu_us_per_io"]))
    p = idx.get(("guest", "virtio-blk-pfbd", "file", "randread", 32, 1))
    s = idx.get(("guest", "virtio-blk-pci", "file", "randread", 32, 1))
    if p and s and p.get("iothread_cpu_us_per_io") and \
            s.get("iothread_cpu_us_per_io"):
        yield ("guest mode (%s), file iodepth 32: IOThread CPU us/IO, "
               "pfbd / stock" % (p.get("accel") or "?").upper(), "<= 0.5",
               "%.1f / %.1f = **%.2f** (IOThread wake-ups per IO: "
               "%.2f / %.2f)" % (
                   p["iothread_cpu_us_per_io"], s["iothread_cpu_us_per_io"],
                   p["iothread_cpu_us_per_io"] /
                   s["iothread_cpu_us_per_io"],
                   p.get("iothread_runs_per_io") or 0,
                   s.get("iothread_runs_per_io") or 0))


def target_table(rows):
    """The markdown lines of a targets table of (figure, target, value)"""
    return ["| figure | target | this run |", "| --- | --- | --- |"] + \
        ["| %s | %s | %s |" % row for row in rows] + [""]


def report_md(doc, opts):
    meta, results = doc["meta"], doc["results"]
    idx = index(results)
    m = meta["machine"]
    L = []
    # Results from before --kick existed were taken with qtest kicks
    eventfd_kicks = meta.get("kick", "qtest") == "eventfd"
    L.append("# Benchmarks: virtio-blk-pfbd vs stock virtio-blk-pci vs the host")
    L.append("")
    L.append("Generated by `tests/bench/bench.py` (`make bench`) on %s."
             % meta["date"])
    L.append("")
    L.append("Command: `%s`" % meta["command"])
    L.append("")
    L.append("- Machine: %s, `nproc` = %d%s, %.1f GiB RAM, kernel %s, "
             "KVM %s" % (m["cpu_model"], m["nproc"],
                         " (a VM)" if m["hypervisor"] else "",
                         (m["mem_bytes"] or 0) / GIB, m["kernel"],
                         "usable" if m["kvm"] else "not available"))
    L.append("- QEMU: `%s` (%s; %s), repo %s" % (
        meta["qemu"], meta["qemu_version"], meta.get("qemu_binary"),
        meta["git"]))
    L.append("- Load average before / after: %s / %s" % (
        meta.get("loadavg_start"), meta.get("loadavg_end")))
    L.append("- %d run(s) per point, interleaved; medians.  Rig and host: "
             "%g s measured after %g s ramp; guest: %g s per workload." % (
                 meta["runs"], meta["runtime_s"], meta["ramp_s"],
                 meta.get("guest_runtime_s") or 0))
    if meta.get("extra_rounds"):
        counts = {}
        for x in meta["extra_rounds"]:
            counts[x] = counts.get(x, 0) + 1
        L.append("- %d extra runs (a point's runs differed by more than %gx; "
                 "at most %d per point): %s." % (
                     len(meta["extra_rounds"]), meta.get("max_spread", 1.5),
                     meta.get("extra_runs", 2),
                     ", ".join("%s%s" % (k, " (x%d)" % n if n > 1 else "")
                               for k, n in counts.items())))
    L.append("- File backend: `%s`, 1 GiB on tmpfs (O_DIRECT), filled with "
             "data; null backends: `null-co` (read-zeroes=off) and pfbd "
             "`null:1G`." % meta["image"])
    L.append("- Wall time of the whole run: %.0f s%s." % (
        meta["elapsed_s"], ", everything at nice %d" % meta["nice"]
        if meta.get("nice") else ""))
    la = meta.get("loadavg_start") or [0]
    if la[0] > 0.5 * m["nproc"]:
        L.append("- **The machine was busy with other work** (load average "
                 "%.1f on %d CPUs at the start): expect noise; compare the "
                 "per-run IOPS in `results.json`." % (la[0], m["nproc"]))
    L.append("")
    L.append("## How it is measured")
    L.append("")
    L.append(
        "**rig**: `pfbd-rig` starts QEMU with `-accel qtest` and the guest RAM "
        "in a shared `memory-backend-file` it maps; it enumerates PCI, "
        "programs the virtio 1.0 capabilities, sets up one split virtqueue "
        "per IOThread (`num-queues` = IOThreads, `iothread-vq-mapping` "
        "round-robin, `queue-size` 256, or 512 at iodepth 128 for both "
        "devices), and keeps `iodepth` requests (3 descriptors each: "
        "header, 4 KiB data, status) in flight per queue.  It writes "
        "descriptors and avail entries straight into guest RAM, kicks once "
        "per batch %s (skipped while "
        "the device sets `VRING_USED_F_NO_NOTIFY`, as Linux does), and polls "
        "the used ring (no interrupts, `VRING_AVAIL_F_NO_INTERRUPT`).  "
        "Features: VERSION_1, FLUSH, CONFIG_WCE, BLK_SIZE, SEG_MAX, "
        "TOPOLOGY, MQ; no EVENT_IDX, no INDIRECT_DESC.  virtio-blk-pfbd "
        "on the file backend has `fixed-buffers=on` (the guest RAM "
        "registered as io_uring fixed buffers, as host fio's `fixedbufs`).  "
        "Latency is submit "
        "(avail publish) to completion seen in the used ring.  "
        "**CPU us/IO** is the CPU time of the IOThreads (`IO ioN`) plus "
        "io_uring workers (`iou-wrk-*`) of the QEMU process over the measured "
        "window (`/proc/PID/task/*/schedstat`) divided by completed IOs; it "
        "includes the IOThreads' adaptive polling (default `poll-max-ns`).  "
        "%s, as is the rig's own CPU (`rig`, getrusage)." % (
            "by writing the queue's host notifier, the eventfd that KVM "
            "signals for a vCPU's notify write (`--kick eventfd`: no QEMU "
            "thread takes part, as with a KVM guest)" if eventfd_kicks else
            "with a qtest write to the notify register (`--kick qtest`), "
            "which QEMU's main thread serves",
            "QEMU's main thread takes no part in a kick; its CPU is shown "
            "separately (`main`)" if eventfd_kicks else
            "The qtest kicks are served by QEMU's main thread and are shown "
            "separately (`main`)"))
    L.append("")
    if meta.get("rig_cpus") is not None:
        L.append("The rig (the guest's vCPU, as it were) is pinned to CPU %s "
                 "and QEMU, every thread, to CPU(s) %s; fio on the host is "
                 "pinned to QEMU's CPU(s), so that the host limit has the "
                 "CPUs the device path has." % (meta["rig_cpus"],
                                                 meta["qemu_cpus"]))
        L.append("")
    L.append("**host**: fio, `ioengine=io_uring`, `direct=1`, on the same "
             "file, `numjobs` = IOThreads, same rw/bs/iodepth per job.  "
             "`registerfiles`, `fixedbufs`.  CPU us/IO: every thread of "
             "the fio processes (io_uring workers included), sampled "
             "inside the measured window, over the IOs done in it.")
    L.append("")
    if meta.get("guest_accel"):
        L.append("**guest**: the test guest (`tests/guest`) under %s, fio "
                 "io_uring O_DIRECT on `/dev/vda`, iodepth 32, 1 queue on 1 "
                 "IOThread, file backend." % meta["guest_accel"].upper())
        L.append("")

    # ---------------- targets
    rows = list(target_rows(idx))
    if rows:
        L.append("## Targets (issues 5 and 19): randread 4 KiB, "
                 "1 IOThread, rig")
        L.append("")
        L.append("Medians of this run.  CPU us/IO is the device path's "
                 "(IOThread + io_uring workers) in rig mode; the guest mode "
                 "row is the IOThread's alone (see the guest section).  "
                 "Latency added: a device's iodepth 1 average latency minus "
                 "a floor: the rig's loopback (the rig's own round trip, no "
                 "device) or host fio.")
        L.append("")
        L += target_table(rows)

    # ---------------- main table
    L.append("## IOPS (rig), ratios pfbd/stock and pfbd/host-limit")
    L.append("")
    L.append("| rw | IOThreads | iodepth | backend | stock IOPS | pfbd IOPS "
             "| pfbd/stock | host IOPS | pfbd/host | stock CPU us/IO "
             "| pfbd CPU us/IO |")
    L.append("| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: "
             "| ---: | ---: |")
    for rw, t, qd, be, s, p, host in rig_rows(idx, opts):
        hi = host["iops"] if (host and be == "file") else None
        L.append("| %s | %d | %d | %s | %s | %s | **%s** | %s | %s "
                 "| %s | %s |" % (
                     rw, t, qd, be,
                     fmt(s and s["iops"]), fmt(p and p["iops"]),
                     ratio(p and p["iops"], s and s["iops"]),
                     fmt(hi), ratio(p and p["iops"], hi),
                     fmt(s and s["cpu_us_per_io"], 2),
                     fmt(p and p["cpu_us_per_io"], 2)))
    L.append("")

    # ---------------- vhost-user-blk
    vrows = [(rw, t, qd) for rw in opts.rws for t in opts.iothreads
             for qd in opts.iodepths
             if idx.get(("rig", "vhost-user-blk", "file", rw, qd, t))]
    if vrows:
        L.append("## The out-of-process peer: vhost-user-blk-pci and "
                 "qemu-storage-daemon (rig, file backend)")
        L.append("")
        L.append("`qemu-storage-daemon` (built from the same tree) exports "
                 "the file (`aio=io_uring`, `cache.direct=on`, as stock) as "
                 "`vhost-user-blk` with `num-queues` = IOThreads, all on "
                 "one IOThread: QEMU 10.0's export runs in a single "
                 "AioContext.  QEMU has `vhost-user-blk-pci` with the same "
                 "`num-queues` and `queue-size`; the daemon is pinned to "
                 "QEMU's CPU(s).  Its CPU us/IO counts every thread of the "
                 "daemon (its IOThread, main loop, io_uring workers) and "
                 "QEMU's IOThreads and io_uring workers (none here); "
                 "`daemon` is the daemon's share.  Latency: avg / p99 us.  "
                 "`kicks/IO` and `main`: notify writes per request and the "
                 "CPU of QEMU's main thread per IO: libvhost-user does not "
                 "suppress notifications while it works (no "
                 "`VRING_USED_F_NO_NOTIFY`), so the rig kicks it more "
                 "often.  %s" % (
                     "The kicks go to the daemon's kick eventfd directly, as "
                     "a KVM vCPU's would (`--kick eventfd`)." if eventfd_kicks
                     else "The rig's qtest kicks are served by QEMU's main "
                     "thread, which shares the device's CPU(s) and forwards "
                     "each kick to the daemon; in a KVM guest a kick is an "
                     "exit of the vCPU and an eventfd write instead."))
        L.append("")
        L.append("| rw | IOThreads | iodepth | vhost-user IOPS | pfbd IOPS "
                 "| pfbd/vhost-user | stock IOPS | vhost-user CPU us/IO "
                 "(daemon) | pfbd CPU us/IO | pfbd/vhost-user CPU "
                 "| vhost-user lat | pfbd lat | vhost-user / pfbd kicks/IO "
                 "| vhost-user / pfbd main |")
        L.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
                 "| ---: | ---: | ---: | ---: | ---: | ---: |")
        for rw, t, qd in vrows:
            v = idx[("rig", "vhost-user-blk", "file", rw, qd, t)]
            p = idx.get(("rig", "virtio-blk-pfbd", "file", rw, qd, t))
            s = idx.get(("rig", "virtio-blk-pci", "file", rw, qd, t))
            pc, vc = p and p.get("cpu_us_per_io"), v.get("cpu_us_per_io")
            L.append("| %s | %d | %d | %s | %s | **%s** | %s | %s (%s) "
                     "| %s | %s | %s / %s | %s / %s | %s / %s | %s / %s |" % (
                         rw, t, qd, fmt(v["iops"]), fmt(p and p["iops"]),
                         ratio(p and p["iops"], v["iops"]),
                         fmt(s and s["iops"]), fmt(vc, 2),
                         fmt(v.get("daemon_cpu_us_per_io"), 2), fmt(pc, 2),
                         ratio(pc, vc), fmt(v.get("lat_avg_us"), 1),
                         fmt(v.get("lat_p99_us"), 1),
                         fmt(p and p.get("lat_avg_us"), 1),
                         fmt(p and p.get("lat_p99_us"), 1),
                         fmt(v.get("kicks_per_io"), 3),
                         fmt(p and p.get("kicks_per_io"), 3),
                         fmt(v.get("main_cpu_us_per_io"), 2),
                         fmt(p and p.get("main_cpu_us_per_io"), 2)))
        L.append("")

    # ---------------- latency
    L.append("## Latency (rig and host), microseconds, avg / p99")
    L.append("")
    L.append("`loopback`: `pfbd-rig --loopback`, no QEMU: a process on the "
             "QEMU CPU(s) polls the avail rings and answers each request at "
             "once (status byte 0, used entry, no data), so its latency is "
             "the rig's own round trip between the two CPUs: the floor "
             "under either device's (iodepth 1 only).")
    L.append("")
    L.append("| rw | IOThreads | iodepth | loopback | stock null | pfbd null "
             "| stock file | pfbd file | host file |")
    L.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for rw in opts.rws:
        for t in opts.iothreads:
            for qd in opts.iodepths:
                cells = []
                for mode, dev, be in (("rig", "loopback", "none"),
                                      ("rig", "virtio-blk-pci", "null"),
                                      ("rig", "virtio-blk-pfbd", "null"),
                                      ("rig", "virtio-blk-pci", "file"),
                                      ("rig", "virtio-blk-pfbd", "file"),
                                      ("host", "host", "file")):
                    r = idx.get((mode, dev, be, rw, qd, t))
                    cells.append("%s / %s" % (fmt(r["lat_avg_us"], 1),
                                              fmt(r["lat_p99_us"], 1))
                                 if r else "-")
                L.append("| %s | %d | %d | %s |" % (rw, t, qd,
                                                    " | ".join(cells)))
    L.append("")

    # ---------------- CPU
    L.append("## CPU per IO (rig), microseconds: device path / QEMU main "
             "thread (qtest kicks) / rig; kicks per IO")
    L.append("")
    L.append("`path`: IOThreads + io_uring workers; `main`: QEMU's main "
             "thread, which serves the qtest kicks (a rig artefact; a KVM "
             "guest's kick is an ioeventfd signalled by the kernel); "
             "`kicks/IO`: notify writes per request (the rest were "
             "suppressed by the device's `VRING_USED_F_NO_NOTIFY`); "
             "`rig`: the rig's own CPU (with its idle polling); `host fio`: "
             "fio's threads and io_uring workers per IO.")
    L.append("")
    L.append("| rw | IOThreads | iodepth | backend | stock path | stock main "
             "| stock kicks/IO | pfbd path | pfbd main | pfbd kicks/IO "
             "| rig (pfbd run) | host fio |")
    L.append("| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: "
             "| ---: | ---: | ---: |")
    for rw, t, qd, be, s, p, host in rig_rows(idx, opts):
        L.append("| %s | %d | %d | %s | %s | %s | %s | %s | %s "
                 "| %s | %s | %s |" % (
                     rw, t, qd, be,
                     fmt(s and s["cpu_us_per_io"], 2),
                     fmt(s and s["main_cpu_us_per_io"], 2),
                     fmt(s and s["kicks_per_io"], 2),
                     fmt(p and p["cpu_us_per_io"], 2),
                     fmt(p and p["main_cpu_us_per_io"], 2),
                     fmt(p and p["kicks_per_io"], 2),
                     fmt(p and p.get("rig_cpu_us_per_io"), 2),
                     fmt(host["cpu_us_per_io"], 2)
                     if (host and be == "file") else "-"))
    L.append("")

    # ---------------- kicks
    kp = {}
    for r in results:
        if r["mode"] == "rig" and r.get("kicks_per_io") is not None:
            kp.setdefault((r["iodepth"], r["device"]), []).append(
                r["kicks_per_io"])
    parts = []
    for qd in opts.iodepths:
        s_, p_ = kp.get((qd, "virtio-blk-pci")), kp.get((qd, "virtio-blk-pfbd"))
        if s_ and p_:
            parts.append("iodepth %d: stock %.3f, pfbd %.3f" % (
                qd, median(s_), median(p_)))
    if parts:
        L.append("Notify writes (kicks) per IO, median over the points at "
                 "each iodepth: %s.  A kick is skipped while the device "
                 "sets `VRING_USED_F_NO_NOTIFY` (e.g. while its IOThread "
                 "polls the ring); in a KVM guest every kick is a VM exit."
                 % "; ".join(parts))
        L.append("")

    # ---------------- rig ceiling
    ceiling = doc["meta"].get("rig_ceiling") or []
    if ceiling:
        best = ceiling[0]["rig_max_iops_any_run"]
        L.append("## Rig ceiling")
        L.append("")
        L.append("The null backends at the highest iodepth are the fastest "
                 "points, so they show how far the rig can drive: the "
                 "fastest single rig run reached **%s IOPS**, so points well "
                 "below that are not limited by the rig.  Next to the device "
                 "path's CPU per IO: the rig's own (`rig`, getrusage, which "
                 "includes its idle polling: it runs alone on its CPU and "
                 "polls whenever nothing is due) and that of QEMU's main "
                 "thread serving the qtest kicks (`qtest`, on the QEMU CPU, "
                 "a cost a KVM guest's kick does not have)." % fmt(best))
        L.append("")
        L.append("| rig ceiling | rw | IOThreads | iodepth | IOPS (median) "
                 "| IOPS (best run) | device path us/IO | rig us/IO "
                 "| qtest us/IO |")
        L.append("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: "
                 "| ---: |")
        for r in ceiling:
            L.append("| %s %s | %s | %d | %d | %s | %s | %s | %s | %s |" % (
                SHORT[r["device"]], r["backend"], r["rw"], r["iothreads"],
                r["iodepth"], fmt(r["iops"]), fmt(r["iops_max_run"]),
                fmt(r["cpu_us_per_io"], 2), fmt(r["rig_cpu_us_per_io"], 2),
                fmt(r["main_cpu_us_per_io"], 2)))
        L.append("")
        if meta.get("rig_cpus") is not None:
            L.append("The rig has CPU %s to itself; QEMU's main thread (the "
                     "qtest kicks), IOThreads and io_uring workers share CPU(s) "
                     "%s, so with few CPUs the figures are the device path "
                     "under that sharing." % (meta["rig_cpus"],
                                               meta["qemu_cpus"]))
        else:
            L.append("The rig, QEMU's main thread and the IOThreads share "
                     "the machine's %d CPUs, so with few CPUs the figures "
                     "are the device path under that sharing." %
                     meta["machine"]["nproc"])
        L.append("")

    # ---------------- guest
    g = [r for r in results if r["mode"] == "guest"]
    if g:
        L.append("## Guest (fio in the test guest, iodepth 32, 1 IOThread, "
                 "file backend, %s)" % (meta.get("guest_accel") or "?").upper())
        L.append("")
        L.append("IOThread CPU us/IO: the IOThread's CPU time (schedstat) "
                 "between two marker lines the guest prints around each fio "
                 "run, over the I/Os the guest completed between them "
                 "(`/sys/block/vda/stat`, fio's 1 s ramp included); "
                 "`+wrk`: with the io_uring workers; `runs/IO`: how often "
                 "the IOThread was scheduled in per I/O (its wake-ups).  "
                 "Default IOThread polling (`poll-max-ns`).")
        L.append("")
        L.append("| rw | stock IOPS | pfbd IOPS | pfbd/stock | stock lat avg "
                 "/ p99 us | pfbd lat avg / p99 us | stock IOThread us/IO "
                 "(+wrk) | pfbd IOThread us/IO (+wrk) | stock / pfbd "
                 "runs/IO |")
        L.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
                 "| ---: |")
        for rw in opts.rws:
            s = idx.get(("guest", "virtio-blk-pci", "file", rw, 32, 1))
            p = idx.get(("guest", "virtio-blk-pfbd", "file", rw, 32, 1))
            if not s and not p:
                continue
            L.append("| %s | %s | %s | %s | %s | %s |" % (
                rw, fmt(s and s["iops"]), fmt(p and p["iops"]),
                ratio(p and p["iops"], s and s["iops"]),
                "%s / %s" % (fmt(s["lat_avg_us"], 1), fmt(s["lat_p99_us"], 1))
                if s else "-",
                "%s / %s" % (fmt(p["lat_avg_us"], 1), fmt(p["lat_p99_us"], 1))
                if p else "-") +
                " %s | %s | %s / %s |" % tuple(
                    ["%s (%s)" % (fmt(r.get("iothread_cpu_us_per_io"), 1),
                                  fmt(r.get("cpu_us_per_io"), 1))
                     if r else "-" for r in (s, p)] +
                    [fmt(r and r.get("iothread_runs_per_io"), 2)
                     for r in (s, p)]))
        L.append("")
        vrows = [(rw, idx.get(("guest", "vhost-user-blk", "file", rw, 32,
                               1)),
                  idx.get(("guest", "virtio-blk-pfbd", "file", rw, 32, 1)))
                 for rw in opts.rws]
        vrows = [x for x in vrows if x[1]]
        if vrows:
            L.append("vhost-user-blk-pci on qemu-storage-daemon (1 queue, "
                     "the daemon's 1 IOThread; guest RAM in a shared "
                     "`memory-backend-memfd`): its \"IOThread\" is every "
                     "thread of the daemon but its io_uring workers.")
            L.append("")
            L.append("| rw | vhost-user IOPS | pfbd IOPS | pfbd/vhost-user "
                     "| vhost-user lat avg / p99 us | daemon us/IO (+wrk) "
                     "| pfbd IOThread us/IO (+wrk) |")
            L.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
            for rw, v, p in vrows:
                L.append("| %s | %s | %s | %s | %s / %s | %s | %s |" % (
                    rw, fmt(v["iops"]), fmt(p and p["iops"]),
                    ratio(p and p["iops"], v["iops"]),
                    fmt(v["lat_avg_us"], 1), fmt(v["lat_p99_us"], 1),
                    *["%s (%s)" % (fmt(r.get("iothread_cpu_us_per_io"), 1),
                                   fmt(r.get("cpu_us_per_io"), 1))
                      if r else "-" for r in (v, p)]))
            L.append("")
        if meta.get("guest_accel") == "tcg":
            L.append("Under TCG the emulated guest CPU is the bottleneck: "
                     "the guest hands the IOThread one or two requests per "
                     "wake-up, so its CPU per I/O is mostly the event "
                     "loop's wake-ups, adaptive polling and system calls "
                     "(ppoll, the ioeventfd reads, io_uring_enter, the "
                     "guest notification's eventfd write); the device "
                     "path's own work per request is the rig's CPU column "
                     "(tenths of a microsecond).  pfbd's completion fd is "
                     "level-triggered (an epoll fd on the io_uring's fd): "
                     "a completion its polling already reaped leaves no "
                     "wake-up behind, which would also grow the polling "
                     "window.")
            L.append("")

    if doc.get("errors"):
        L.append("## Errors")
        L.append("")
        for e in doc["errors"]:
            L.append("- `%s`" % e.replace("\n", " ")[:400])
        L.append("")
    L.append("## Reproduce")
    L.append("")
    L.append("```sh")
    L.append("make bench            # the full matrix (this page)")
    L.append("make bench QUICK=1    # a subset in under 3 minutes")
    L.append("```")
    L.append("")
    L.append("Raw results (every run's command and per-run IOPS): "
             "`build/bench/results.json`; plot: `build/bench/iops.png` "
             "(a full run copies it to `docs/benchmarks-iops.png`).  "
             "One rig point by hand:")
    L.append("")
    L.append("```sh")
    L.append("build/bench/pfbd-rig --qemu build/qemu-system-x86_64 "
             "--rw randread --iodepth 32 --runtime 5 -- \\")
    L.append("    -object iothread,id=io0 \\")
    L.append("    -device '{\"driver\":\"virtio-blk-pfbd\",\"volume\":"
             "\"null:1G\",\"num-queues\":1,\"iothread-vq-mapping\":"
             "[{\"iothread\":\"io0\"}]}'")
    L.append("```")
    L.append("")
    return "\n".join(L)


def plot(doc, opts, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib not installed (apt-get install python3-matplotlib): "
            "no plot")
        return False
    idx = index(doc["results"])
    fig, axes = plt.subplots(len(opts.iothreads), len(opts.rws),
                             figsize=(6 * len(opts.rws),
                                      4.2 * len(opts.iothreads)),
                             squeeze=False)
    lines = [("rig", d, b) for d, b in RIG_DEVICES] + [("host", "host",
                                                        "file")]
    styles = {"virtio-blk-pci": "--", "virtio-blk-pfbd": "-", "host": ":",
              "vhost-user-blk": "-."}
    colors = {"null": "tab:blue", "file": "tab:orange"}
    for i, t in enumerate(opts.iothreads):
        for j, rw in enumerate(opts.rws):
            ax = axes[i][j]
            for mode, dev, be in lines:
                xs, ys = [], []
                for qd in opts.iodepths:
                    r = idx.get((mode, dev, be, rw, qd, t))
                    if r and r["iops"]:
                        xs.append(qd)
                        ys.append(r["iops"] / 1000.0)
                if xs:
                    ax.plot(xs, ys, styles[dev], marker="o",
                            color="black" if dev == "host" else
                            "tab:green" if dev == "vhost-user-blk" else
                            colors[be],
                            label="%s %s" % (SHORT[dev], be))
            ax.set_xscale("log", base=2)
            ax.set_xticks(opts.iodepths)
            ax.set_xticklabels([str(q) for q in opts.iodepths])
            ax.set_xlabel("iodepth (per queue)")
            ax.set_ylabel("kIOPS")
            ax.set_ylim(bottom=0)
            ax.grid(True, alpha=0.3)
            ax.set_title("4k %s, %d IOThread(s), rig mode" % (rw, t))
            ax.legend(fontsize=8)
    fig.suptitle("virtio-blk-pfbd vs virtio-blk-pci vs host fio (%s, "
                 "nproc %d)" % (doc["meta"]["machine"]["cpu_model"],
                                doc["meta"]["machine"]["nproc"]))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


# ------------------------------------------------------------------ main
def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    default=os.environ.get("QUICK", "") not in ("", "0"),
                    help="a subset in under 3 minutes (also env QUICK=1)")
    ap.add_argument("--build", default=os.environ.get("BUILD", "build"),
                    help="build directory (default build)")
    ap.add_argument("--qemu", help="QEMU binary (default "
                    "BUILD/qemu-system-x86_64)")
    ap.add_argument("--rig", help="pfbd-rig (default BUILD/bench/pfbd-rig)")
    ap.add_argument("--qsd", help="qemu-storage-daemon for vhost-user-blk "
                    "(default BUILD/qemu-build/storage-daemon/"
                    "qemu-storage-daemon)")
    ap.add_argument("--image", default="/dev/shm/pfbd-bench.img",
                    help="the 1 GiB file backend (default %(default)s)")
    ap.add_argument("--keep-image", action="store_true",
                    help="do not remove the image at the end")
    ap.add_argument("--runtime", type=float, help="measured seconds per run")
    ap.add_argument("--ramp", type=float, help="unmeasured seconds first")
    ap.add_argument("--guest-runtime", type=float,
                    help="fio seconds per workload in the guest")
    ap.add_argument("--runs", type=int, help="runs per point")
    ap.add_argument("--max-spread", type=float, default=1.5,
                    help="when a point's fastest run beats its slowest by "
                    "more than this factor, run it once more "
                    "(default %(default)s)")
    ap.add_argument("--extra-runs", type=int,
                    help="at most this many such extra runs per point "
                    "(default 2; 0 with --quick)")
    ap.add_argument("--iodepth", help="comma list (default 1,32,128)")
    ap.add_argument("--iothreads", help="comma list (default 1,2)")
    ap.add_argument("--rw", help="comma list (default randread,randwrite)")
    ap.add_argument("--kick", choices=("eventfd", "qtest"),
                    default="eventfd",
                    help="how the rig kicks a queue: eventfd (default) "
                    "signals its host notifier, as a KVM vCPU's notify "
                    "write does; qtest sends the notify write through "
                    "QEMU's main thread")
    ap.add_argument("--no-guest", action="store_true")
    ap.add_argument("--no-host", action="store_true")
    ap.add_argument("--no-doc", action="store_true",
                    help="do not write docs/benchmarks.md")
    ap.add_argument("--out", help="output dir (default BUILD/bench)")
    ap.add_argument("--render", action="store_true",
                    help="only rewrite the report, plot and docs from the "
                    "results.json of an earlier run")
    ap.add_argument("--no-pin", action="store_true",
                    help="do not pin the rig to CPU 0 and QEMU to the "
                    "other CPUs")
    ap.add_argument("--nice", type=int, default=0,
                    help="run everything at this nice value (e.g. -10 as "
                    "root, to keep other work on the machine from skewing "
                    "the figures)")
    opts = ap.parse_args()

    q = opts.quick
    opts.runtime = opts.runtime or (3.0 if q else 3.0)
    opts.ramp = opts.ramp if opts.ramp is not None else (0.5 if q else 0.5)
    opts.guest_runtime = opts.guest_runtime or 5.0
    opts.runs = opts.runs or (1 if q else 3)
    if opts.extra_runs is None:
        opts.extra_runs = 0 if q else 2
    opts.iodepths = [int(x) for x in (opts.iodepth or
                                      ("1,32" if q else "1,32,128"))
                     .split(",")]
    opts.iothreads = [int(x) for x in (opts.iothreads or
                                       ("1" if q else "1,2")).split(",")]
    opts.rws = (opts.rw or "randread,randwrite").split(",")
    if q:
        opts.no_guest = True
    build = os.path.join(REPO, opts.build) if not os.path.isabs(
        opts.build) else opts.build
    opts.qemu = os.path.abspath(opts.qemu or os.path.join(
        build, "qemu-system-x86_64"))
    opts.rig = os.path.abspath(opts.rig or os.path.join(build, "bench",
                                                        "pfbd-rig"))
    opts.qsd = os.path.abspath(opts.qsd or os.path.join(
        build, "qemu-build", "storage-daemon", "qemu-storage-daemon"))
    out = opts.out or os.path.join(build, "bench")
    os.makedirs(out, exist_ok=True)
    if opts.render:
        return render(opts, out)
    for exe in (opts.qemu, opts.rig, opts.qsd):
        if not os.access(exe, os.X_OK):
            sys.exit("bench: %s missing (make build; make %s; ninja -C "
                     "%s storage-daemon/qemu-storage-daemon)" % (
                         exe, os.path.relpath(opts.rig, REPO),
                         os.path.relpath(os.path.join(build, "qemu-build"),
                                         REPO)))

    if opts.nice:
        os.nice(opts.nice)
    # The rig plays the guest's vCPU: CPU 0; QEMU (main thread, IOThreads)
    # the host's I/O side: the other CPUs.
    ncpu = os.cpu_count() or 1
    opts.rig_cpus = opts.qemu_cpus = None
    if not opts.no_pin and ncpu >= 2:
        opts.rig_cpus = "0"
        opts.qemu_cpus = "1" if ncpu == 2 else "1-%d" % (ncpu - 1)
    t_start = time.monotonic()
    cmdline = " ".join(shlex.quote(a) for a in sys.argv)
    if os.environ.get("BENCH_COMMAND"):
        cmdline = os.environ["BENCH_COMMAND"]
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc)
        .strftime("%Y-%m-%d %H:%M UTC"),
        "command": cmdline,
        "quick": q,
        "machine": machine_info(),
        "qemu": os.path.relpath(opts.qemu, REPO),
        "qemu_version": qemu_version(opts.qemu),
        "qemu_binary": file_id(opts.qemu),
        "git": git_describe(),
        "image": opts.image,
        "runtime_s": opts.runtime, "ramp_s": opts.ramp, "runs": opts.runs,
        "guest_runtime_s": None if opts.no_guest else opts.guest_runtime,
        "bs": 4096, "iodepths": opts.iodepths, "iothreads": opts.iothreads,
        "rw": opts.rws,
        "loadavg_start": loadavg(),
        "nice": os.nice(0),
        "rig_cpus": opts.rig_cpus, "qemu_cpus": opts.qemu_cpus,
        "kick": opts.kick,
        "max_spread": opts.max_spread, "extra_runs": opts.extra_runs,
    }
    log("bench: %s, nproc %d, %s; %s" % (
        meta["machine"]["cpu_model"], meta["machine"]["nproc"],
        meta["qemu_version"], "QUICK" if q else "full matrix"))
    log("load average: %s" % meta["loadavg_start"])
    created = ensure_image(opts.image, GIB)

    results, errors, extra_rounds, guest_failures = [], [], [], []
    bs = 4096
    try:
        nsets = len(opts.rws) * len(opts.iothreads) * len(opts.iodepths)
        n = 0
        for rw in opts.rws:
            for t in opts.iothreads:
                for qd in opts.iodepths:
                    n += 1
                    members = [("rig", d, b) for d, b in RIG_DEVICES]
                    if qd == 1:
                        # The rig's own round trip: the latency floor
                        members.append(("rig", "loopback", "none"))
                    if not opts.no_host:
                        members.append(("host", "host", "file"))
                    runs = {m: [] for m in members}
                    # --runs interleaved rounds of the set, then extra runs
                    # of the points whose runs differ by more than
                    # --max-spread (the machine was busy), up to --extra-runs
                    todo = [m for _ in range(opts.runs) for m in members]
                    extra = {m: 0 for m in members}
                    while True:
                        if not todo:
                            todo = [m for m in members
                                    if spread(runs[m]) > opts.max_spread and
                                    extra[m] < opts.extra_runs]
                            if not todo:
                                break
                            for m in todo:
                                extra[m] += 1
                                extra_rounds.append("%s %s %s qd%d t%d" % (
                                    SHORT[m[1]], m[2], rw, qd, t))
                        m = todo.pop(0)
                        mode, dev, be = m
                        try:
                            if mode == "rig":
                                r = run_rig(opts, dev, be, rw, bs, qd, t)
                            else:
                                r = run_host(opts, rw, bs, qd, t)
                        except (RuntimeError, ValueError,
                                subprocess.TimeoutExpired) as e:
                            errors.append("%s %s %s %s qd%d t%d: %s" % (
                                mode, dev, be, rw, qd, t, e))
                            log("  FAILED %s %s %s: %s" % (
                                mode, SHORT[dev], be, str(e).splitlines()[0]))
                            continue
                        if r.get("errors"):
                            errors.append("%s %s %s %s qd%d t%d: %d IO "
                                          "errors" % (mode, dev, be, rw, qd,
                                                      t, r["errors"]))
                        runs[m].append(r)
                    line = []
                    for m in members:
                        mode, dev, be = m
                        if not runs[m]:
                            continue
                        s = summarize(runs[m], mode=mode, device=dev,
                                      backend=be, rw=rw, bs=bs, iodepth=qd,
                                      iothreads=t)
                        results.append(s)
                        line.append("%s-%s %.0fk" % (SHORT[dev], be,
                                                     s["iops"] / 1e3))
                    log("[%d/%d] %s qd%d %d IOThread(s): %s" % (
                        n, nsets, rw, qd, t, "  ".join(line)))
        if not opts.no_guest:
            meta["guest_accel"] = run_guest_mode(opts, results, errors,
                                                  guest_failures)
    finally:
        if created and not opts.keep_image:
            try:
                os.unlink(opts.image)
            except OSError:
                pass

    meta["loadavg_end"] = loadavg()
    meta["extra_rounds"] = extra_rounds
    if file_id(opts.qemu) != meta["qemu_binary"]:
        errors.append("%s changed during the run (%s -> %s)" % (
            opts.qemu, meta["qemu_binary"], file_id(opts.qemu)))
    meta["elapsed_s"] = time.monotonic() - t_start
    doc = {"meta": meta, "results": results, "errors": errors,
           "guest_failures": guest_failures}
    write_outputs(doc, opts, out)
    return 1 if errors else 0


def write_outputs(doc, opts, out):
    """results.json, report.md, iops.png and (full runs) docs/benchmarks.md"""
    doc["meta"]["rig_ceiling"] = rig_ceiling(doc["results"])
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(doc, f, indent=1)
    md = report_md(doc, opts)
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(md)
    plot(doc, opts, os.path.join(out, "iops.png"))
    if not doc["meta"]["quick"] and not opts.no_doc:
        path = os.path.join(REPO, "docs", "benchmarks.md")
        kept = keep_section(path, md)   # before "w" empties the file
        with open(path, "w") as f:
            f.write(md + kept)
        if os.path.exists(os.path.join(out, "iops.png")):
            shutil.copyfile(os.path.join(out, "iops.png"),
                            os.path.join(REPO, "docs", "benchmarks-iops.png"))
    log("")
    log("## IOPS" + md.split("## Latency")[0].split("## IOPS")[1]
        if "## IOPS" in md else md)
    log("results: %s (%.0f s)" % (os.path.join(out, "results.json"),
                                  doc["meta"]["elapsed_s"]))


SECTION_BEGIN = "<!-- section %s: written by %s -->"
SECTION_END = "<!-- end of section %s -->"


def keep_section(path, md):
    """The sections of the old @path that other scripts wrote (rbd,
    reset, ...), to append to the new text @md; '' if there are none."""
    try:
        with open(path) as f:
            old = f.read()
    except OSError:
        return ""
    kept = ""
    prefix = SECTION_BEGIN.split("%s")[0]
    for m in re.finditer(re.escape(prefix) + r"(\w+):", old):
        end = SECTION_END % m.group(1)
        e = old.find(end, m.start())
        if e >= 0 and end not in md:
            kept += "\n" + old[m.start():e + len(end)] + "\n"
    return kept


def put_section(path, name, script, text):
    """Replace (or append) section @name of @path with @text."""
    begin = SECTION_BEGIN % (name, script)
    end = SECTION_END % name
    try:
        with open(path) as f:
            old = f.read()
    except OSError:
        old = ""
    b = old.find(SECTION_BEGIN.split("%s")[0] + name + ":")
    e = old.find(end)
    block = begin + "\n\n" + text.strip() + "\n\n" + end
    if b >= 0 and e >= 0:
        new = old[:b] + block + old[e + len(end):]
    else:
        new = old.rstrip() + "\n\n" + block + "\n"
    with open(path, "w") as f:
        f.write(new)


def render(opts, out):
    """--render: rewrite the report, plot and doc from results.json"""
    with open(os.path.join(out, "results.json")) as f:
        doc = json.load(f)
    meta = doc["meta"]
    opts.rws, opts.iodepths = meta["rw"], meta["iodepths"]
    opts.iothreads = meta["iothreads"]
    write_outputs(doc, opts, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/python3
"""Side-by-side guest fio: virtio-blk-pfbd vs stock virtio-blk-pci.

Boots the test guest (tests/guest) twice on the same image file
(<repo>/build/volumes/run.img, created if missing):
  pfbd : -device {"driver":"virtio-blk-pfbd","volume":"file:IMG",
                  "num-queues":Q,"iothread-vq-mapping":[io0,io1]}
  stock: -blockdev file,aio=io_uring,cache.direct=on + -device virtio-blk-pci
         with the same num-queues and iothread-vq-mapping
and runs 4k randread then 4k randwrite at iodepth 32 (io_uring, O_DIRECT) in
each, printing IOPS, average and p99 completion latency side by side.

Env: PFBD_QEMU (binary), PFBD_ACCEL (tcg|kvm).  Python stdlib only.
"""

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "functional"))

import pfbdguest  # noqa: E402

DEVICES = {"pfbd": "virtio-blk-pfbd", "stock": "virtio-blk-pci"}
WORKLOADS = ("randread", "randwrite")
MARK = "PFBD-BENCH-MARK"


def job_script(runtime, iodepth, bs):
    """One fio run per workload, each between two marker lines carrying
    /sys/block/vda/stat (the guest's completed I/O counts), so that a host
    watching the console can sample QEMU's threads over the same I/Os
    (bench.py does: IOThread CPU per I/O)."""
    return f"""
set -e
echo "queues=$(ls -d /sys/block/vda/mq/* | wc -l)"
for rw in {" ".join(WORKLOADS)}; do
    echo "{MARK} begin $rw $(cat /sys/block/vda/stat)"
    fio --filename=/dev/vda --direct=1 --ioengine=io_uring --bs={bs} \\
        --iodepth={iodepth} --runtime={runtime} --time_based --ramp_time=1 \\
        --size=100% --norandommap --randrepeat=0 \\
        --output-format=json --output=/tmp/fio.json --eta=never \\
        --name=$rw --rw=$rw
    echo "{MARK} end $rw $(cat /sys/block/vda/stat)"
    echo FIO-JSON-BEGIN; cat /tmp/fio.json; echo FIO-JSON-END
done
"""


def parse_marks(console):
    """The marker lines of job_script() on @console: a list of (what, rw,
    completed I/Os), what being 'begin' or 'end'."""
    marks = []
    for line in console.splitlines():
        f = line[line.find(MARK):].split() if MARK in line else []
        if len(f) >= 8:
            # /sys/block/vda/stat: reads completed is field 1, writes 5
            marks.append((f[1], f[2], int(f[3]) + int(f[7])))
    return marks


def parse(output):
    res = {}
    pos = 0
    while True:
        b = output.find("FIO-JSON-BEGIN\n", pos)
        if b < 0:
            break
        b += len("FIO-JSON-BEGIN\n")
        e = output.index("FIO-JSON-END", b)
        pos = e
        data = json.loads(output[b:e])
        for j in data["jobs"]:
            d = j["read"] if j["jobname"] == "randread" else j["write"]
            pct = d.get("clat_ns", {}).get("percentile", {})
            p99 = next((v for k, v in pct.items() if k.startswith("99.0")),
                       None)
            res[j["jobname"]] = {
                "iops": d["iops"],
                "lat_avg_us": d["lat_ns"]["mean"] / 1000.0,
                "clat_p99_us": (p99 / 1000.0) if p99 is not None else None,
                "errors": j["error"],
            }
    if not res:
        raise ValueError("no fio JSON in the guest's output")
    return res


def ensure_image(path, size):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if not os.path.exists(path):
        print("creating %s (%s, preallocated)" % (path, size), flush=True)
        pfbdguest.make_image(path, size, prealloc=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runtime", type=int, default=10,
                    help="seconds per workload (default 10)")
    ap.add_argument("--device-only", choices=sorted(DEVICES),
                    help="run only one device")
    ap.add_argument("--json", metavar="OUT", help="write results as JSON")
    ap.add_argument("--image", default=os.path.join(pfbdguest.REPO, "build",
                                                    "volumes", "run.img"))
    ap.add_argument("--size", default="512M", help="image size if created")
    ap.add_argument("--queues", type=int, default=2)
    ap.add_argument("--iothreads", type=int, default=2)
    ap.add_argument("--iodepth", type=int, default=32)
    ap.add_argument("--bs", default="4k")
    ap.add_argument("--timeout", type=int, default=None,
                    help="per-boot timeout in seconds")
    args = ap.parse_args()

    ensure_image(args.image, args.size)
    g = pfbdguest.Guest(log=lambda m: None)
    image = os.path.abspath(args.image)
    kinds = [args.device_only] if args.device_only else ["pfbd", "stock"]
    iothreads = ["io%d" % i for i in range(args.iothreads)]
    results, errors, cmdlines = {}, {}, {}
    print("qemu=%s accel=%s image=%s queues=%d iothreads=%d runtime=%ds"
          % (g.qemu, g.accel, image, args.queues, args.iothreads,
             args.runtime), flush=True)
    for kind in kinds:
        if not pfbdguest.qemu_has_device(g.qemu, DEVICES[kind]):
            errors[kind] = "device %s not in %s" % (DEVICES[kind], g.qemu)
            print("%s: SKIPPED: %s" % (kind, errors[kind]), flush=True)
            continue
        extra = pfbdguest.disk_args("file:" + image, kind=kind,
                                    num_queues=args.queues,
                                    iothreads=iothreads)
        cmdlines[kind] = " ".join(extra)
        print("%s: booting (%s)" % (kind, " ".join(extra)), flush=True)
        timeout = args.timeout or (g.default_timeout() + 2 * args.runtime)
        try:
            r = g.run_job(job_script(args.runtime, args.iodepth, args.bs),
                          extra, timeout=timeout,
                          smp=max(args.queues, 1))
            results[kind] = parse(r.output)
            print("%s: done in %.0fs" % (kind, r.elapsed), flush=True)
        except (pfbdguest.GuestError, ValueError, KeyError) as e:
            errors[kind] = str(e)
            print("%s: FAILED: %s" % (kind, e), flush=True)

    # table
    print()
    print("guest fio, %s %s iodepth %d, %d s each, %d queue(s) on %d "
          "IOThread(s), accel=%s" % (args.bs, "/".join(WORKLOADS),
                                     args.iodepth, args.runtime, args.queues,
                                     args.iothreads, g.accel))
    hdr = "%-10s %-7s %12s %14s %14s" % ("workload", "device", "IOPS",
                                         "avg lat (us)", "p99 clat (us)")
    print(hdr)
    print("-" * len(hdr))
    for w in WORKLOADS:
        for kind in kinds:
            r = results.get(kind, {}).get(w)
            if r is None:
                print("%-10s %-7s %12s" % (w, kind, "n/a"))
                continue
            p99 = "%14.1f" % r["clat_p99_us"] if r["clat_p99_us"] else "%14s" % "-"
            print("%-10s %-7s %12.0f %14.1f %s%s" % (
                w, kind, r["iops"], r["lat_avg_us"], p99,
                "  errors=%d" % r["errors"] if r["errors"] else ""))
        if all(k in results for k in ("pfbd", "stock")):
            ratio = results["pfbd"][w]["iops"] / max(results["stock"][w]["iops"], 1e-9)
            print("%-10s %-7s %11.2fx" % ("", "pfbd/stk", ratio))
    if g.accel == "tcg":
        print("\nnote: accel=tcg -- the emulated guest CPU dominates these "
              "numbers; they show the\ndevices work side by side, not the "
              "device path's cost (see the qtest-driven rig).")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"accel": g.accel, "qemu": g.qemu, "image": image,
                       "runtime": args.runtime, "queues": args.queues,
                       "iothreads": args.iothreads, "iodepth": args.iodepth,
                       "bs": args.bs, "devices": cmdlines,
                       "results": results, "errors": errors}, f, indent=2)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())

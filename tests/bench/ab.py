#!/usr/bin/env python3
#
# Copyright (c) 2026 pfbd-qemu developers
#
# SPDX-License-Identifier: GPL-2.0-or-later
"""pfbd before/after: two QEMU binaries, virtio-blk-pfbd in the rig.

For a change made for (or that might cost) speed: the same rig points as
make bench, for virtio-blk-pfbd only, with the runs of the two binaries
interleaved (A B A B ...) so that the machine's noise falls on both.  Prints
a Markdown table of medians and the B/A ratios; --json writes every run.

  make bench-ab BEFORE=path/to/old/qemu-system-x86_64 [AFTER=...]
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--before", required=True, help="QEMU binary A")
    ap.add_argument("--after", default="build/qemu-system-x86_64",
                    help="QEMU binary B (default %(default)s)")
    ap.add_argument("--rig", default="build/bench/pfbd-rig")
    ap.add_argument("--image", default="/dev/shm/pfbd-bench.img")
    ap.add_argument("--backends", default="null,file")
    ap.add_argument("--iodepth", default="1,32,128")
    ap.add_argument("--rw", default="randread,randwrite")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--runtime", type=float, default=3.0)
    ap.add_argument("--ramp", type=float, default=0.5)
    ap.add_argument("--json", help="write every run here")
    opts = ap.parse_args()

    opts.rig = os.path.abspath(opts.rig)
    binaries = {"A": os.path.abspath(opts.before),
                "B": os.path.abspath(opts.after)}
    ncpu = os.cpu_count() or 1
    opts.rig_cpus = opts.qemu_cpus = None
    if ncpu >= 2:
        opts.rig_cpus = "0"
        opts.qemu_cpus = "1" if ncpu == 2 else "1-%d" % (ncpu - 1)
    opts.kick = "eventfd"
    bench.ensure_image(opts.image, bench.GIB)

    runs = []
    metrics = ("iops", "lat_avg_us", "cpu_us_per_io")
    rows = []
    for be in opts.backends.split(","):
        for rw in opts.rw.split(","):
            for qd in [int(x) for x in opts.iodepth.split(",")]:
                point = {"A": [], "B": []}
                for i in range(opts.runs):
                    for tag, qemu in sorted(binaries.items()):
                        opts.qemu = qemu
                        r = bench.run_rig(opts, "virtio-blk-pfbd", be, rw,
                                          4096, qd, 1)
                        r.update(binary=tag, backend=be, rw=rw, iodepth=qd)
                        runs.append(r)
                        point[tag].append(r)
                        bench.log("%s %s %s qd%d run %d: %.0f IOPS" % (
                            tag, be, rw, qd, i, r["iops"]))
                med = {t: {m: bench.median([r.get(m) for r in point[t]])
                           for m in metrics} for t in point}
                rows.append((be, rw, qd, med))

    print()
    print("| backend | rw | iodepth | IOPS A | IOPS B | B/A | lat A us "
          "| lat B us | CPU/IO A us | CPU/IO B us |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
          "| ---: |")
    for be, rw, qd, med in rows:
        a, b = med["A"], med["B"]
        print("| %s | %s | %d | %s | %s | %s | %s | %s | %s | %s |" % (
            be, rw, qd, bench.fmt(a["iops"]), bench.fmt(b["iops"]),
            bench.ratio(b["iops"], a["iops"]),
            bench.fmt(a["lat_avg_us"], 2), bench.fmt(b["lat_avg_us"], 2),
            bench.fmt(a["cpu_us_per_io"], 2),
            bench.fmt(b["cpu_us_per_io"], 2)))
    print("\nA: %s\nB: %s\n%d runs per point, interleaved, %.1f s each "
          "(+%.1f s ramp), 4 KiB, 1 IOThread, eventfd kicks, rig on CPU "
          "%s, QEMU on %s" % (binaries["A"], binaries["B"], opts.runs,
                              opts.runtime, opts.ramp, opts.rig_cpus,
                              opts.qemu_cpus))
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(runs, f, indent=1)


if __name__ == "__main__":
    main()

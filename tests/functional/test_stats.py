"""virtio-blk-pfbd per-queue statistics ("stats" QOM property), the
scripts/pfbd-stat tool and the data-path trace points, checked against a real
Linux guest.

The stats tests keep the guest up after its job (it prints READY and
sleeps) so that the test can read the counters over QMP while no I/O runs,
then quit QEMU.  Three guest boots in all.
Run: /usr/bin/python3 -m pytest tests/functional/test_stats.py -v
"""

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import pytest

from pfbdguest import REPO, GuestError, parse_console

TIMEOUT = int(os.environ.get("PFBD_TEST_TIMEOUT", "300"))
READY = "===READY-FOR-QMP==="
PFBD_STAT = os.path.join(REPO, "scripts", "pfbd-stat")
DEV_ID = "disk0"
QOM = "/machine/peripheral/%s/virtio-backend" % DEV_ID

FIO = ("fio --filename=/dev/vda --direct=1 --eta=never --ioengine=io_uring "
       "--bs=4k "
       "--iodepth=8 --numjobs=2 --cpus_allowed=0-1 "
       "--cpus_allowed_policy=split")

# Fields of /sys/block/vda/stat (Documentation/block/stat.rst), 0-based
ST_READ_IOS, ST_READ_MERGES, ST_READ_SECTORS = 0, 1, 2
ST_WRITE_IOS, ST_WRITE_MERGES, ST_WRITE_SECTORS = 4, 5, 6
ST_IN_FLIGHT = 8
ST_DISCARD_IOS = 11     # kernel >= 4.18
ST_FLUSH_IOS = 15       # kernel >= 5.5

pytestmark = pytest.mark.usefixtures("pfbd_only")


@contextlib.contextmanager
def running(guest, job, extra_args, **kw):
    """Start the guest with QMP, wait for READY; yield (vm, job output so
    far); quit QEMU on the way out.  An assertion failing in the block gets
    the guest console and QEMU stderr appended."""
    vm = guest.start(job + "\necho %s\nsleep %d\n" % (READY, TIMEOUT),
                     extra_args, timeout=TIMEOUT, qmp=True, **kw)
    try:
        if not vm.wait_console(READY + "\n", timeout=TIMEOUT):
            vm.kill()
            res = vm.wait(check=False)
            raise GuestError(res.describe("guest never printed " + READY),
                             res)
        output, _ = parse_console(vm.console())
        yield vm, output
    except GuestError:
        raise
    except AssertionError as e:
        res = quit_vm(vm)
        raise AssertionError("%s\n%s" % (e, res.describe())) from e
    except Exception:
        print(quit_vm(vm).describe("guest run (test raised)"))
        raise
    else:
        res = quit_vm(vm)
        assert res.qemu_rc == 0, res.describe("QEMU failed at quit")
    finally:
        vm.kill()


def quit_vm(vm):
    if vm.proc.poll() is None:
        try:
            vm.qmp("quit")
        except (OSError, EOFError, RuntimeError):
            vm.kill()
    return vm.wait(check=False)


def device_stats(vm, path=QOM):
    return vm.qmp("qom-get", path=path, property="stats")


def between(output, begin, end):
    b = output.index(begin + "\n") + len(begin) + 1
    return output[b:output.index(end, b)]


def stat_fields(output, tag):
    m = re.search(r"^%s (.*)$" % tag, output, re.M)
    assert m, "no %s line in the job output" % tag
    return [int(x) for x in m.group(1).split()]


def total(stats, *keys):
    n = 0
    for q in stats["queues"]:
        v = q
        for k in keys:
            v = v[k]
        n += v
    return n


def test_stats_match_guest(guest, disk, image):
    """Device counters equal the guest block layer's /sys/block/vda/stat."""
    job = f"""
set -e
test -b /dev/vda || {{ echo 'no /dev/vda'; ls /sys/block; exit 1; }}
# no merging: one fio I/O is one request, in the guest and the device
echo 2 >/sys/block/vda/queue/nomerges
echo "write_cache=$(cat /sys/block/vda/queue/write_cache | tr ' ' _)"
echo "STAT-BEFORE $(cat /sys/block/vda/stat)"
{FIO} --size=8M --offset_increment=8M \\
    --output-format=json --output=/tmp/fio.json \\
    --name=w --rw=randwrite --fsync=256 \\
    --name=r --stonewall --rw=randread
echo "STAT-AFTER $(cat /sys/block/vda/stat)"
echo FIO-JSON-BEGIN; cat /tmp/fio.json; echo FIO-JSON-END
"""
    # SeaBIOS reads the disk's sector 0 (a 512-byte read the guest kernel
    # never sees) unless strict boot order leaves the disk out of its list
    extra = disk("file:" + image, num_queues=2, iothreads=["io0", "io1"],
                 dev_id=DEV_ID) + ["-boot", "strict=on"]
    with running(guest, job, extra) as (vm, out):
        stats = device_stats(vm)
        before = stat_fields(out, "STAT-BEFORE")
        after = stat_fields(out, "STAT-AFTER")
        fio = json.loads(between(out, "FIO-JSON-BEGIN", "FIO-JSON-END"))
        print(json.dumps(stats))
        print("guest stat before: %s\nguest stat after:  %s" % (before, after))

        queues = stats["queues"]
        assert [q["index"] for q in queues] == [0, 1]
        assert [q["iothread"] for q in queues] == ["io0", "io1"]
        tids = [q["thread-id"] for q in queues]
        assert all(t > 0 for t in tids) and tids[0] != tids[1], tids

        # fio's fsync is blkdev_issue_flush(): an empty REQ_OP_WRITE |
        # REQ_PREFLUSH bio.  The guest counts it as a write I/O of 0 sectors
        # and the FLUSH it sends the device (concurrent ones share one) in
        # "flush I/Os"; the device sees only the FLUSH.
        fio_sync = sum(j["sync"]["total_ios"] for j in fio["jobs"])

        # the same totals, read at a moment when no I/O runs
        assert after[ST_IN_FLIGHT] == 0
        assert total(stats, "requests", "read") == after[ST_READ_IOS]
        assert total(stats, "requests", "write") == \
            after[ST_WRITE_IOS] - fio_sync
        assert total(stats, "bytes", "read") == after[ST_READ_SECTORS] * 512
        assert total(stats, "bytes", "write") == after[ST_WRITE_SECTORS] * 512
        if len(after) > ST_DISCARD_IOS:
            assert total(stats, "requests", "discard") == after[ST_DISCARD_IOS]
        if len(after) > ST_FLUSH_IOS:
            assert total(stats, "requests", "flush") == after[ST_FLUSH_IOS]
        if "write_cache=write_back" in out:
            assert fio_sync > 0
            assert 0 < total(stats, "requests", "flush") <= fio_sync

        # fio's own counts: the device saw them all (and the boot-time
        # partition scan); with nomerges=2 the guest's delta is exactly fio
        fio_r = sum(j["read"]["total_ios"] for j in fio["jobs"])
        fio_w = sum(j["write"]["total_ios"] for j in fio["jobs"])
        assert fio_r == 4096 and fio_w == 4096, (fio_r, fio_w)
        assert all(j["error"] == 0 for j in fio["jobs"])
        assert fio_r <= total(stats, "requests", "read")
        assert fio_w <= total(stats, "requests", "write")
        assert after[ST_READ_IOS] - before[ST_READ_IOS] == fio_r
        assert after[ST_WRITE_IOS] - before[ST_WRITE_IOS] == fio_w + fio_sync

        for q in queues:
            reqs = sum(q["requests"].values())
            assert q["in-flight"] == 0, q
            assert q["errors"] == 0, q
            assert q["requests"]["unsupported"] == 0, q
            # both vCPUs ran a fio job: both queues served I/O
            assert q["requests"]["read"] > 0 and q["requests"]["write"] > 0, q
            assert q["bytes"]["write"] >= 4096 * q["requests"]["write"], q
            assert sum(q["latency-histogram-us"]) == reqs, q
            assert len(q["latency-histogram-us"]) == 24, q
            assert 1 <= q["batches"] <= reqs, q
            assert 1 <= q["submits"] <= q["batches"], q
            assert q["notifies"] >= 1, q
            assert q["notifies"] + q["notifies-suppressed"] <= reqs, q
            assert 1 <= q["max-in-flight"] <= 256, q

        # the property is on the PCI proxy too (an alias)
        assert device_stats(vm, "/machine/peripheral/" + DEV_ID) == stats


# ------------------------------------------------------------ pfbd-stat
def pfbd_stat(*args, timeout=60):
    return subprocess.run([sys.executable, PFBD_STAT] + list(args),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=timeout)


def num(s):
    return None if s == "-" else float(s)


def parse_reports(text):
    """pfbd-stat text -> [(title, [row dict, ...]), ...]."""
    reports = []
    for block in text.strip().split("\n\n"):
        lines = block.splitlines()
        assert len(lines) >= 3, block
        cols = lines[1].split()
        rows = []
        for line in lines[2:]:
            f = line.split()
            assert len(f) == len(cols), (cols, line)
            row = dict(zip(cols, f))
            for c in cols:
                if c != "iothread":
                    row[c] = num(row[c])
            rows.append(row)
        reports.append((lines[0], rows))
    return reports


def test_pfbd_stat_script(guest, disk, image):
    """scripts/pfbd-stat reads the stats over a second QMP socket."""
    sockdir = tempfile.mkdtemp(prefix="pfbd-stat-", dir="/tmp")
    sock = os.path.join(sockdir, "qmp.sock")
    # load that runs while pfbd-stat watches; READY once it is under way
    job = f"""
test -b /dev/vda || {{ echo 'no /dev/vda'; exit 1; }}
{FIO} --name=load --rw=randread --size=64M --offset_increment=64M \\
    --runtime={TIMEOUT} --time_based >/dev/null 2>&1 &
r0=$(cut -c1-16 /sys/block/vda/stat)
i=0
while [ "$(cut -c1-16 /sys/block/vda/stat)" = "$r0" ] && [ $i -lt 300 ]; do
    sleep 0.1; i=$((i + 1))
done
sleep 1
"""
    extra = disk("file:" + image, num_queues=2, iothreads=["io0", "io1"],
                 dev_id=DEV_ID)
    extra += ["-qmp", "unix:%s,server=on,wait=off" % sock,
              "-device", "virtio-rng-pci,id=rng0"]    # no "stats" property
    assert os.access(PFBD_STAT, os.X_OK), PFBD_STAT
    try:
        with running(guest, job, extra) as (vm, out):
            s0 = device_stats(vm)
            p = pfbd_stat(sock, DEV_ID, "-i", "0.5", "-n", "2")
            s1 = device_stats(vm)
            print(p.stdout, p.stderr)
            assert p.returncode == 0, p.stderr
            reports = parse_reports(p.stdout)
            assert len(reports) == 2, p.stdout
            (t0, first), (t1, second) = reports
            assert "totals" in t0 and "last" in t1, p.stdout
            for rows in (first, second):
                assert [r["queue"] for r in rows] == [0, 1], p.stdout
                assert [r["iothread"] for r in rows] == ["io0", "io1"]
                for r in rows:
                    assert r["errors"] == 0 and r["inflt"] >= 0, r
            # the first report is the totals, between two readings
            for r, q0, q1 in zip(first, s0["queues"], s1["queues"]):
                rd0, rd1 = q0["requests"]["read"], q1["requests"]["read"]
                assert rd0 <= r["r"] <= rd1, (r, rd0, rd1)
                assert r["w"] == q0["requests"]["write"] == \
                    q1["requests"]["write"], r
                assert r["p50us"] is not None and r["p99us"] is not None, r
                assert r["p50us"] <= r["p99us"], r
                assert r["batch"] >= 1, r
            # the second report: rates over 0.5 s of the running load
            rps = sum(r["r/s"] for r in second)
            assert rps > 0, p.stdout
            assert sum(r["rMB/s"] for r in second) == \
                pytest.approx(rps * 4096 / 1e6, rel=0.05, abs=0.02), p.stdout
            assert all(r["w/s"] == 0 for r in second), p.stdout

            p = pfbd_stat("--json", "-n", "1", sock, QOM)
            assert p.returncode == 0, p.stderr
            lines = p.stdout.splitlines()
            assert len(lines) == 1, p.stdout
            js = json.loads(lines[0])
            s2 = device_stats(vm)
            queues = js["stats"]["queues"]
            assert [q["index"] for q in queues] == [0, 1]
            for q, a, b in zip(queues, s1["queues"], s2["queues"]):
                assert set(q) == set(a), q
                assert a["requests"]["read"] <= q["requests"]["read"] <= \
                    b["requests"]["read"]

            for bad in ("nope", "rng0"):
                p = pfbd_stat("-n", "1", sock, bad)
                assert p.returncode == 1, (bad, p.stdout, p.stderr)
                assert "is %s a virtio-blk-pfbd device?" % bad in p.stderr, \
                    p.stderr
                assert p.stdout == ""
    finally:
        shutil.rmtree(sockdir, ignore_errors=True)

    p = pfbd_stat(sock, DEV_ID)     # QEMU is gone
    assert p.returncode == 1
    assert "cannot connect to QMP socket" in p.stderr, p.stderr


# ------------------------------------------------------------ trace points
TRACE_RE = re.compile(r"(virtio_blk_pfbd_\w+) vdev (\S+) vq (\d+)"
                      r"(?: batch (\d+)| req \S+ status (-?\d+))?")


def test_trace_points_fire(guest, disk, image, tmp_path):
    """-trace virtio_blk_pfbd_{handle_vq,req_complete,notify} log each stage
    with the number of the virtqueue that served it."""
    log = str(tmp_path / "trace.log")
    job = f"""
set -e
test -b /dev/vda || {{ echo 'no /dev/vda'; exit 1; }}
{FIO} --size=4M --offset_increment=4M --name=w --rw=randwrite \\
    --output-format=json --output=/tmp/fio.json
echo FIO-JSON-BEGIN; cat /tmp/fio.json; echo FIO-JSON-END
"""
    extra = disk("file:" + image, num_queues=2, iothreads=["io0", "io1"],
                 dev_id=DEV_ID)
    extra += ["-trace", "virtio_blk_pfbd_handle_vq",
              "-trace", "virtio_blk_pfbd_req_complete",
              "-trace", "virtio_blk_pfbd_notify", "-D", log]
    r = guest.run_job(job, extra, timeout=TIMEOUT)
    fio = json.loads(between(r.output, "FIO-JSON-BEGIN", "FIO-JSON-END"))
    fio_w = sum(j["write"]["total_ios"] for j in fio["jobs"])
    with open(log) as f:
        text = f.read()

    popped, completed, notifies, other = {}, {}, {}, set()
    for line in text.splitlines():
        m = TRACE_RE.search(line)
        if not m:
            continue
        name, vq = m.group(1), int(m.group(3))
        if name == "virtio_blk_pfbd_handle_vq":
            assert m.group(4) is not None, line
            popped[vq] = popped.get(vq, 0) + int(m.group(4))
        elif name == "virtio_blk_pfbd_req_complete":
            assert m.group(5) == "0", line      # VIRTIO_BLK_S_OK
            completed[vq] = completed.get(vq, 0) + 1
        elif name == "virtio_blk_pfbd_notify":
            notifies[vq] = notifies.get(vq, 0) + 1
        else:
            other.add(name)
    msg = ("trace log (%d lines, first 20):\n%s\n%s"
           % (len(text.splitlines()), "\n".join(text.splitlines()[:20]),
              r.describe()))
    assert not other, "events not asked for: %s\n%s" % (other, msg)
    # both virtqueues, and only them, served requests
    assert sorted(popped) == [0, 1], msg
    assert sorted(completed) == [0, 1], msg
    assert sorted(notifies) == [0, 1], msg
    # every request popped by a handler completed, on its own virtqueue
    assert popped == completed, msg
    assert sum(completed.values()) >= fio_w == 2048, msg
    for vq in (0, 1):
        assert 1 <= notifies[vq] <= completed[vq], msg

"""virtio-blk-pfbd on the rbd engine, against a real single-node Ceph cluster.

The `ceph` fixture (conftest.py) uses the cluster named by
PFBD_TEST_CEPH_CONF, or starts its own with tests/ceph/start-ceph.sh and
stops it at the end of the session.  Run:
  /usr/bin/python3 -m pytest tests/functional/test_rbd.py -v
"""

import base64
import contextlib
import hashlib
import json
import os
import signal
import time

import pytest

import pfbdguest
from pfbdguest import disk_args

MiB = 1 << 20
TIMEOUT = int(os.environ.get("PFBD_TEST_TIMEOUT", "300"))
FIO = "fio --filename=/dev/vda --direct=1 --group_reporting"


def rbd_disk(ceph, image, extra="", **kw):
    return disk_args("rbd:rbd/%s:conf=%s%s" % (image, ceph.conf, extra),
                     kind="pfbd", **kw)


def test_verify_two_queues_two_iothreads(guest, ceph):
    """fio crc32c verify on an rbd volume, 2 queues on 2 IOThreads."""
    img = ceph.create_image("mq", "256M")
    job = f"""
set -e
cat /sys/block/vda/size
nq=$(ls -d /sys/block/vda/mq/* | wc -l)
echo "queues=$nq"
[ "$nq" -eq 2 ]
{FIO} --name=mq --ioengine=io_uring --rw=randwrite --bs=4k --iodepth=16 \\
    --numjobs=2 --cpus_allowed=0-1 --cpus_allowed_policy=split \\
    --size=16M --offset_increment=32M --verify=crc32c --do_verify=1 \\
    --verify_fatal=1
{FIO} --name=big --ioengine=libaio --rw=write --bs=1M --iodepth=4 \\
    --offset=128M --size=32M --verify=crc32c --do_verify=1 --verify_fatal=1
{FIO} --name=mixed --ioengine=psync --rw=randrw --bsrange=512-128k \\
    --offset=192M --size=8M --verify=crc32c --do_verify=1 --verify_fatal=1
dd if=/dev/zero of=/dev/vda bs=1M count=1 seek=250 oflag=direct 2>/dev/null
/usr/local/bin/blkdiscard -o $((200 << 20)) -l $((8 << 20)) /dev/vda
echo discard-rc=$?
echo ALL-OK
"""
    r = guest.run_job(job, rbd_disk(ceph, img, num_queues=2,
                                    iothreads=["io0", "io1"]),
                      timeout=TIMEOUT)
    assert "ALL-OK" in r.output, r.describe()
    assert r.output.splitlines()[0].strip() == str(256 * MiB // 512)
    # What the guest wrote is in the image: the 1M sequential region
    # (fio's verify headers) is not zero; the discarded range reads zeroes
    data = ceph.read_image(img, 128 * MiB, MiB)
    assert data.count(0) < len(data)
    assert ceph.read_image(img, 200 * MiB, 8 * MiB) == bytes(8 * MiB)


def test_snapshot_is_read_only(guest, ceph, tmp_path):
    """IMAGE@SNAP opens read-only and reads the snapshot's data."""
    src = tmp_path / "src.img"
    payload = os.urandom(8 * MiB)
    src.write_bytes(payload)
    img = ceph.import_image("snap", str(src))
    ceph.rbd("snap", "create", "rbd/%s@s1" % img)
    # Change the head after the snapshot
    ceph.rbd("bench", "--io-type", "write", "--io-size", "4M",
             "--io-total", "8M", "--io-pattern", "seq", "rbd/" + img)
    assert ceph.read_image(img, 0, 8 * MiB) != payload
    job = """
cat /sys/block/vda/ro
head -c 8388608 /dev/vda | sha256sum
if dd if=/dev/zero of=/dev/vda bs=4096 count=1 oflag=direct 2>/dev/null; then
    echo WRITE-SUCCEEDED
else
    echo WRITE-REFUSED
fi
"""
    r = guest.run_job(job, rbd_disk(ceph, img + "@s1"), timeout=TIMEOUT)
    lines = r.output.splitlines()
    assert lines[0].strip() == "1", r.output
    assert lines[1].split()[0] == hashlib.sha256(payload).hexdigest()
    assert "WRITE-REFUSED" in r.output
    # the snapshot is unchanged
    assert ceph.read_image(img + "@s1", 0, 8 * MiB) == payload


# Guest side of the OSD tests: write 1 MiB of a pattern to /tmp/pat and the
# disk, say so, then wait for the host, which stops the OSD, to send "go"
# on ttyS1
WRITE_THEN_WAIT_FOR_OSD_STOP = """
head -c 1048576 /dev/urandom > /tmp/pat
dd if=/tmp/pat of=/dev/vda bs=1M count=1 oflag=direct 2>/dev/null || exit 3
echo PHASE-WRITTEN
exec 3</dev/ttyS1
while :; do
    read -t 1 line <&3 || continue
    case "$line" in go*) break ;; esac
done
echo GOT-GO
"""


def start_osd_test(guest, ceph, img, job, name, qmp=False, **disk_kw):
    """Start a guest on rbd/IMG (requests time out after 5 s) with a
    control serial port (ttyS1) for WRITE_THEN_WAIT_FOR_OSD_STOP; returns
    (vm, socket path)."""
    sock = os.path.join(ceph.dir, "ttyS1-%s.sock" % name)
    extra = ["-chardev", "socket,id=ctl,path=%s,server=on,wait=off" % sock,
             "-serial", "chardev:ctl"]
    vm = guest.start(job, rbd_disk(ceph, img, ":rados_osd_op_timeout=5",
                                   **disk_kw) + extra,
                     timeout=TIMEOUT, qmp=qmp)
    return vm, sock


@contextlib.contextmanager
def osd_stopped(ceph, vm, sock):
    """Once the guest wrote its pattern: SIGSTOP the OSD and tell the guest
    to go on; SIGCONT it when the block ends."""
    assert vm.wait_console("PHASE-WRITTEN"), vm.console()[-3000:]
    osd = ceph.osd_pid()
    os.kill(osd, signal.SIGSTOP)
    try:
        # resend until the guest has it (it may not be reading yet)
        for _ in range(60):
            ceph.send_line(sock, "go")
            if vm.wait_console("GOT-GO", timeout=1):
                break
        yield
    finally:
        os.kill(osd, signal.SIGCONT)


def test_osd_down_ioerr_then_resume(guest, ceph):
    """An unresponsive OSD: requests fail with an I/O error in the guest
    (rados_osd_op_timeout), QEMU stays up, and I/O works again once the
    OSD is back."""
    img = ceph.create_image("osd", "64M")
    job = "set -u\n" + WRITE_THEN_WAIT_FOR_OSD_STOP + """
if dd if=/dev/vda of=/tmp/back bs=1M count=1 iflag=direct 2>/tmp/dd.err; then
    echo READ-SUCCEEDED-WHILE-DOWN
else
    echo IOERR-SEEN; cat /tmp/dd.err
fi
dmesg | grep -m1 'I/O error' || true
# the host resumes the OSD; retry until the read works
for i in $(seq 1 120); do
    if dd if=/dev/vda of=/tmp/back bs=1M count=1 iflag=direct 2>/dev/null; then
        cmp /tmp/pat /tmp/back && echo DATA-OK
        break
    fi
    sleep 1
done
dd if=/tmp/pat of=/dev/vda bs=1M count=1 seek=2 oflag=direct 2>/dev/null &&
    echo WRITE-AFTER-OK
"""
    vm, sock = start_osd_test(guest, ceph, img, job, "osd", num_queues=2,
                              iothreads=["io0"])
    try:
        with osd_stopped(ceph, vm, sock):
            ok = vm.wait_console("IOERR-SEEN", timeout=120)
        assert ok, vm.console()[-3000:]
        res = vm.wait()
    finally:
        vm.kill()
    print(res.output)
    assert "READ-SUCCEEDED-WHILE-DOWN" not in res.output
    assert "DATA-OK" in res.output, res.describe()
    assert "WRITE-AFTER-OK" in res.output, res.describe()


@pytest.mark.parametrize("spec,needle", [
    ("rbd:rbd/no-such-image:conf={conf}",
     "no image 'no-such-image' in pool 'rbd'"),
    ("rbd:no-such-pool/img:conf={conf}", "no pool 'no-such-pool'"),
    ("rbd:rbd:conf={conf}", "expected rbd:POOL/IMAGE"),
    ("rbd:rbd/{img}:conf={conf}:no_such_option=1",
     "unknown Ceph option 'no_such_option=1'"),
    ("rbd:rbd/{img}@nosnap:conf={conf}",
     "no image '{img}' with a snapshot 'nosnap'"),
    ("rbd:rbd/{img}:conf=/nonexistent/ceph.conf",
     "cannot read the Ceph configuration '/nonexistent/ceph.conf'"),
])
def test_bad_rbd_volume(guest, ceph, spec, needle):
    img = ceph.create_image("bad", "16M")
    spec = spec.format(conf=ceph.conf, img=img)
    rc, err = guest.run_expect_fail(["-device",
                                     '{"driver":"virtio-blk-pfbd",'
                                     '"volume":"%s"}' % spec])
    assert rc == 1, err
    assert needle.format(img=img) in err, err


def test_unreachable_cluster_times_out(guest, ceph, tmp_path):
    """No monitor listening: start-up fails within the connect timeout."""
    conf = tmp_path / "dead.conf"
    conf.write_text("[global]\nmon_host = v2:127.0.0.1:9\n"
                    "auth_client_required = none\n")
    t0 = time.monotonic()
    rc, err = guest.run_expect_fail([
        "-device", '{"driver":"virtio-blk-pfbd","volume":'
        '"rbd:rbd/x:conf=%s:client_mount_timeout=3"}' % conf], timeout=120)
    assert rc == 1, err
    assert "cannot connect to the Ceph cluster" in err, err
    assert "client_mount_timeout is 3" in err, err
    assert time.monotonic() - t0 < 60


def test_live_migration_rbd(guest, ceph, tmp_path):
    """Live migration between two QEMU processes on one rbd volume, with
    fio verify running in the guest across it."""
    from test_lifecycle import migrate_and_finish
    img = ceph.create_image("mig", "256M")
    migrate_and_finish(guest, "rbd:rbd/%s:conf=%s" % (img, ceph.conf),
                       tmp_path, to_file=False)


def test_resize_rbd(guest, ceph):
    """rbd resize, then qom-set volume-size 0: the guest sees the new
    capacity."""
    img = ceph.create_image("resize", "64M")
    job = """
echo WAITING-FOR-RESIZE
i=0
while [ "$(cat /sys/block/vda/size)" = 131072 ]; do
    sleep 0.5; i=$((i + 1)); [ $i -lt 600 ] || exit 3
done
echo "SIZE-AFTER $(cat /sys/block/vda/size)"
dd if=/dev/urandom of=/tmp/p bs=1M count=1 2>/dev/null
dd if=/tmp/p of=/dev/vda bs=1M seek=90 oflag=direct 2>/dev/null
dd if=/dev/vda of=/tmp/b bs=1M skip=90 count=1 iflag=direct 2>/dev/null
cmp /tmp/p /tmp/b && echo ALL-OK
"""
    vm = guest.start(job, rbd_disk(ceph, img), timeout=TIMEOUT, qmp=True)
    try:
        assert vm.wait_console("WAITING-FOR-RESIZE"), vm.console()[-2000:]
        ceph.rbd("resize", "--size", "96M", "rbd/" + img)
        vm.qmp("qom-set", path="disk0", property="volume-size", value=0)
        assert vm.qmp("qom-get", path="disk0",
                      property="volume-size") == 96 * MiB
        res = vm.wait()
    finally:
        vm.kill()
    assert "SIZE-AFTER %d" % (96 * MiB // 512) in res.output, res.describe()
    assert "ALL-OK" in res.output, res.describe()


def test_osd_down_rerror_stop_then_cont(guest, ceph):
    """rerror=stop: a read that times out on an unresponsive OSD pauses
    the VM (io-error); after the OSD is back, cont retries it and the
    guest never sees an error."""
    img = ceph.create_image("rstop", "64M")
    job = WRITE_THEN_WAIT_FOR_OSD_STOP + """
dd if=/dev/vda of=/tmp/back bs=1M count=1 iflag=direct 2>/dev/null &&
    cmp /tmp/pat /tmp/back && echo DATA-OK
echo "IOERR-IN-GUEST $(dmesg | grep -c 'I/O error' || true)"
"""
    vm, sock = start_osd_test(guest, ceph, img, job, "rstop", qmp=True,
                              rerror="stop")
    try:
        with osd_stopped(ceph, vm, sock):
            vm.wait_status("io-error", timeout=120)
        ev = [e["data"] for e in vm.qmp_conn.events
              if e["event"] == "BLOCK_IO_ERROR"]
        assert ev and ev[0]["operation"] == "read" and \
            ev[0]["action"] == "stop", vm.qmp_conn.events
        vm.qmp("cont")
        res = vm.wait()
    finally:
        vm.kill()
    assert "DATA-OK" in res.output, res.describe()
    assert "IOERR-IN-GUEST 0" in res.output, res.describe()


def admin_key(ceph):
    """The test cluster's client.admin key"""
    with open(os.path.join(ceph.dir, "client.admin.keyring")) as f:
        for line in f:
            k, _, v = line.strip().partition(" = ")
            if k == "key":
                return v
    raise AssertionError("no key in the test cluster's admin keyring")


@contextlib.contextmanager
def bare_qemu(tmp_path, args):
    """A QEMU that boots nothing: refused (its stderr) or running"""
    q = pfbdguest.BareQemu(str(tmp_path), "q", args)
    try:
        yield q
    finally:
        if q.refused is None:
            q.quit()


def secret_dev(ceph, image, secret, extra=""):
    # keyring=/dev/null: the secret's key is the only credential
    spec = ("rbd:rbd/%s:conf=%s:keyring=/dev/null:key-secret=sec0%s" %
            (image, ceph.conf, extra))
    args = []
    if secret is not None:
        args = ["-object", "secret,id=sec0,format=base64,data=" + secret]
    return spec, args + ["-device", json.dumps(
        {"driver": "virtio-blk-pfbd", "id": "d0", "volume": spec})]


def test_key_secret(ceph, tmp_path):
    """key-secret=ID takes the client's key from a QEMU secret object, as
    QEMU's rbd driver does (libvirt passes it so)"""
    img = ceph.create_image("sec", "16M")
    key = admin_key(ceph)
    spec, args = secret_dev(ceph, img, key)
    with bare_qemu(tmp_path, args) as q:
        assert q.refused is None, q.refused
        assert q.cmd("qom-get", path="/machine/peripheral/d0",
                     property="volume") == spec

    # The cluster refuses another key of the same form
    raw = bytearray(base64.b64decode(key))
    raw[-1] ^= 0x5a
    _, args = secret_dev(ceph, img, base64.b64encode(raw).decode(),
                         ":client_mount_timeout=20")
    with bare_qemu(tmp_path, args) as q:
        assert q.refused and "cannot connect to the Ceph cluster" in \
            q.refused, q.refused

    # No such secret object
    _, args = secret_dev(ceph, img, None)
    with bare_qemu(tmp_path, args) as q:
        assert q.refused and "key-secret 'sec0': " in q.refused and \
            "sec0" in q.refused, q.refused


def test_inline_key_not_shown(ceph, tmp_path):
    """A key given inline (key=) is not shown: not by qom-get, not by
    info qtree, not in an error message"""
    img = ceph.create_image("key", "16M")
    key = admin_key(ceph)
    spec = "rbd:rbd/%s:conf=%s:keyring=/dev/null:key=%s" % (
        img, ceph.conf, key)
    dev = {"driver": "virtio-blk-pfbd", "id": "d0", "volume": spec}
    with bare_qemu(tmp_path, ["-device", json.dumps(dev)]) as q:
        assert q.refused is None, q.refused
        shown = q.cmd("qom-get", path="/machine/peripheral/d0",
                      property="volume")
        assert shown == spec.replace(key, "***"), shown
        qtree = q.cmd("human-monitor-command", **{"command-line":
                                                  "info qtree"})
        assert "key=***" in qtree and key not in qtree, qtree

    # QEMU prefixes a start-up error with the option it came from, which
    # shows the key as the command line does (key-secret avoids both);
    # the device's message itself does not
    dev["volume"] = spec.replace(img, "no-such-image")
    with bare_qemu(tmp_path, ["-device", json.dumps(dev)]) as q:
        assert q.refused, "QEMU started on a missing image"
        msg = q.refused.split("}: ", 1)[-1]
        assert "no image 'no-such-image'" in msg and "key=***" in msg and \
            key not in msg, q.refused

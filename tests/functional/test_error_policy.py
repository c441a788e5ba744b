"""rerror/werror with a real Linux guest: a file volume on a small tmpfs
that fills up (ENOSPC).  With stop (and enospc, the werror default) the VM
pauses with the io-error run state and a BLOCK_IO_ERROR event naming the
device; after the host makes room, cont sends the failed requests again
and fio's verify passes.  With report the guest gets the I/O error.

Mounting the tmpfs needs root.
Run: /usr/bin/python3 -m pytest tests/functional/test_error_policy.py -v
"""

import fcntl
import os
import subprocess
import struct
import tempfile

import pytest

from pfbdguest import disk_args, make_image, wait_migrated

MiB = 1 << 20
TIMEOUT = int(os.environ.get("PFBD_TEST_TIMEOUT", "300"))
QOM = "/machine/peripheral/disk0/virtio-backend"

pytestmark = pytest.mark.usefixtures("pfbd_only")


@pytest.fixture
def small_fs():
    """A 48 MiB tmpfs; remount(size) makes room."""
    d = tempfile.mkdtemp(prefix="pfbd-enospc-")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48M", "tmpfs", d],
                   check=True)
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", d])
        os.rmdir(d)


def remount(d, size):
    subprocess.run(["mount", "-o", "remount,size=" + size, d], check=True)


# 96 MiB through a 48 MiB file system: fio verifies what it wrote
FILL_JOB = """
set -e
fio --filename=/dev/vda --direct=1 --eta=never --ioengine=libaio \\
    --iodepth=4 --bs=1M --rw=write --size=96M --name=fill \\
    --verify=crc32c --do_verify=1 --verify_fatal=1
echo "IOERR-IN-GUEST $(dmesg | grep -c 'I/O error' || true)"
echo ALL-OK
"""


@pytest.mark.parametrize("werror", ["stop", None])
def test_enospc_stops_then_cont_retries(guest, small_fs, werror):
    """werror=stop, and the default (enospc): the VM pauses on ENOSPC,
    cont after making room completes every write, nothing is lost."""
    image = make_image(os.path.join(small_fs, "disk.img"), "128M")
    props = {"werror": werror} if werror else {}
    vm = guest.start(FILL_JOB, disk_args("file:" + image, kind="pfbd",
                                         num_queues=2, iothreads=["io0"],
                                         **props),
                     timeout=TIMEOUT, qmp=True)
    try:
        vm.wait_status("io-error")
        events = [e for e in vm.qmp_conn.events
                  if e["event"] == "BLOCK_IO_ERROR"]
        assert events, vm.qmp_conn.events
        ev = events[0]["data"]
        assert ev["qom-path"] == QOM, ev
        assert ev["action"] == "stop" and ev["operation"] == "write", ev
        assert ev["nospace"] is True, ev
        stats = vm.qmp("qom-get", path=QOM, property="stats")
        assert sum(q["in-flight"] for q in stats["queues"]) >= 1, stats
        # make room and resume: the parked writes go again
        remount(small_fs, "256M")
        vm.qmp("cont")
        res = vm.wait()
    finally:
        vm.kill()
    assert "ALL-OK" in res.output, res.describe()
    assert "IOERR-IN-GUEST 0" in res.output, res.describe()


def test_werror_report_gives_guest_ioerr(guest, small_fs):
    """werror=report: the write fails in the guest, the VM keeps running."""
    image = make_image(os.path.join(small_fs, "disk.img"), "128M")
    job = """
if dd if=/dev/zero of=/dev/vda bs=1M count=96 oflag=direct 2>/tmp/err; then
    echo DD-SUCCEEDED
else
    echo DD-FAILED; cat /tmp/err
fi
dmesg | grep -m1 'I/O error' || true
"""
    r = guest.run_job(job, disk_args("file:" + image, kind="pfbd",
                                     werror="report"), timeout=TIMEOUT)
    assert "DD-FAILED" in r.output, r.describe()
    assert "I/O error, dev vda" in r.output, r.describe()


def image_locked(path, byte):
    """Whether an open file description other than ours holds an OFD lock
    on @byte of @path (QEMU's image locks: 101 is "write" taken)"""
    fd = os.open(path, os.O_RDONLY)
    try:
        fl = struct.pack("hhqqi", fcntl.F_WRLCK, os.SEEK_SET, byte, 1, 0)
        fl = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, fl)
        return struct.unpack("hhqqi", fl)[0] != fcntl.F_UNLCK
    finally:
        os.close(fd)


def test_migrate_with_parked_writes(guest, small_fs, tmp_path):
    """A VM stopped on ENOSPC migrates with the writes that wait for room
    (as stock virtio-blk does); on the destination, after the host made
    room, cont sends them and fio's verify passes.  The image lock moves
    with the VM: the destination starts on the locked image and takes the
    lock when it runs."""
    image = make_image(os.path.join(small_fs, "disk.img"), "128M")
    args = disk_args("file:" + image, kind="pfbd", num_queues=2,
                     iothreads=["io0"], werror="stop")
    uri = "unix:" + str(tmp_path / "mig.sock")
    src = guest.start(FILL_JOB, args, timeout=TIMEOUT, qmp=True)
    dst = None
    try:
        src.wait_status("io-error")
        stats = src.qmp("qom-get", path=QOM, property="stats")
        parked = sum(q["in-flight"] for q in stats["queues"])
        assert parked >= 1, stats
        assert image_locked(image, 101)

        # The destination opens the image the source has locked
        dst = guest.start(FILL_JOB, args + ["-incoming", uri],
                          timeout=TIMEOUT, qmp=True)
        dst.qmp("query-status")
        src.qmp("migrate", uri=uri)
        wait_migrated(src.qmp, TIMEOUT)
        src.qmp("quit")
        src.wait(check=False)

        dst.wait_status("io-error")
        stats = dst.qmp("qom-get", path=QOM, property="stats")
        assert sum(q["in-flight"] for q in stats["queues"]) == parked, stats
        assert not image_locked(image, 101)

        remount(small_fs, "256M")
        dst.qmp("cont")
        assert image_locked(image, 101)
        res = dst.wait(check=False)
    finally:
        src.kill()
        if dst:
            dst.kill()
    # The destination's console starts mid-job: no BEGIN marker
    assert "ALL-OK" in res.console and "IOERR-IN-GUEST 0" in res.console, \
        res.describe("after migration to the destination")
    assert res.qemu_rc == 0, res.describe()

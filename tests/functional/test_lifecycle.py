"""Lifecycle and failure with a real Linux guest doing I/O: stop/cont,
system_reset, resize, crash consistency, live migration and save/restore.
Nothing written and completed may be lost.

Run: /usr/bin/python3 -m pytest tests/functional/test_lifecycle.py -v
"""

import hashlib
import os
import signal
import time

import pytest

from pfbdguest import GuestError, disk_args, wait_migrated

MiB = 1 << 20
TIMEOUT = int(os.environ.get("PFBD_TEST_TIMEOUT", "300"))
QOM = "/machine/peripheral/disk0/virtio-backend"
FIO = ("fio --filename=/dev/vda --direct=1 --eta=never --ioengine=io_uring "
       "--bs=4k --iodepth=32 --verify=crc32c --do_verify=1 --verify_fatal=1")

pytestmark = pytest.mark.usefixtures("pfbd_only")


def pfbd_disk(volume, **kw):
    return disk_args(volume, kind="pfbd", **kw)


def wait_for(vm, needle, what, timeout=TIMEOUT):
    if not vm.wait_console(needle, timeout=timeout):
        vm.kill()
        res = vm.wait(check=False)
        raise GuestError(res.describe("%s: '%s' never appeared on the "
                                      "console" % (what, needle)), res)


def finish(vm, what):
    """Wait for the job's end; it must have printed ALL-OK."""
    res = vm.wait()
    assert "ALL-OK" in res.output, res.describe(what)
    return res


def in_flight(vm):
    stats = vm.qmp("qom-get", path=QOM, property="stats")
    return [q["in-flight"] for q in stats["queues"]]


def wait_in_flight(vm, what, timeout=TIMEOUT):
    """Wait until the device's statistics show requests in flight, so that
    the event that follows (stop, reset, migration) meets I/O under way.
    Returns False instead if the job printed ALL-OK (its I/O is over)."""
    deadline = time.monotonic() + timeout
    while sum(in_flight(vm)) == 0:
        if "ALL-OK" in vm.console():
            return False
        if vm.proc.poll() is not None or time.monotonic() > deadline:
            vm.kill()
            res = vm.wait(check=False)
            raise GuestError(res.describe("%s: no request was ever in "
                                          "flight" % what), res)
        time.sleep(0.01)
    return True


def test_stop_cont_during_fio(guest, image):
    """QMP stop/cont over and over while fio verify runs on 2 queues on 2
    IOThreads: at each stop nothing is in flight, and the data verifies."""
    job = f"""
set -e
echo FIO-START
for off in 0 64 128; do
    {FIO} --name=w$off --rw=randwrite --offset=${{off}}M --size=48M
done
echo ALL-OK
"""
    vm = guest.start(job, pfbd_disk("file:" + image, num_queues=2,
                                    iothreads=["io0", "io1"]),
                     timeout=TIMEOUT, qmp=True)
    try:
        wait_for(vm, "FIO-START", "stop/cont")
        stops = 0
        while stops < 20 and wait_in_flight(vm, "stop/cont"):
            vm.qmp("stop")
            assert vm.qmp("query-status")["status"] == "paused"
            assert in_flight(vm) == [0, 0]
            stops += 1
            vm.qmp("cont")
            assert vm.qmp("query-status")["status"] == "running"
        assert stops >= 3, vm.console()[-2000:]
        finish(vm, "fio verify across %d stop/cont" % stops)
    finally:
        vm.kill()


def test_system_reset_during_io(guest, image):
    """system_reset while fio writes on 2 queues: no crash, and the
    rebooted guest's disk works (fio verify) on the same device."""
    reset_during_io(guest, "file:" + image)


def reset_during_io(guest, volume):
    """The guest on @volume (2 queues, 2 IOThreads) is reset while fio
    writes, with requests in flight; the second boot's fio verify on the
    same device must pass and QEMU must exit cleanly."""
    # The job runs at every boot; the first sector tells which boot it is
    job = f"""
set -e
if [ "$(head -c 10 /dev/vda)" = RESET-TEST ]; then
    echo SECOND-BOOT
    {FIO} --name=after --rw=randwrite --offset=128M --size=32M
    echo ALL-OK
    exit 0
fi
printf 'RESET-TEST' | dd of=/dev/vda conv=notrunc,fsync 2>/dev/null
echo FIO-START
fio --filename=/dev/vda --direct=1 --eta=never --ioengine=io_uring \\
    --bs=64k --iodepth=32 --rw=randwrite --offset=1M --size=100M \\
    --time_based --runtime=600 --name=busy
"""
    vm = guest.start(job, pfbd_disk(volume, num_queues=2,
                                    iothreads=["io0", "io1"]),
                     timeout=TIMEOUT, qmp=True, reboot=True)
    try:
        wait_for(vm, "FIO-START", "system_reset")
        assert wait_in_flight(vm, "system_reset")
        vm.qmp("system_reset")
        wait_for(vm, "SECOND-BOOT", "the guest after system_reset")
        # the second job ends with a power-off
        res = vm.wait(check=False)
        assert res.qemu_rc == 0 and not res.timed_out, res.describe()
        text = res.console
        assert "ALL-OK" in text[text.index("SECOND-BOOT"):], \
            res.describe("after system_reset")
    finally:
        vm.kill()


def test_resize_grow(guest, image):
    """The file grows; qom-set volume-size 0 makes the guest see the new
    capacity (config change), and the new space works."""
    job = f"""
set -e
echo "SIZE-BEFORE $(cat /sys/block/vda/size)"
echo WAITING-FOR-RESIZE
i=0
while [ "$(cat /sys/block/vda/size)" = {256 * MiB // 512} ]; do
    sleep 0.5; i=$((i + 1)); [ $i -lt 600 ] || exit 3
done
echo "SIZE-AFTER $(cat /sys/block/vda/size)"
{FIO} --name=tail --rw=randwrite --offset=256M --size=64M
echo ALL-OK
"""
    vm = guest.start(job, pfbd_disk("file:" + image), timeout=TIMEOUT,
                     qmp=True)
    try:
        wait_for(vm, "WAITING-FOR-RESIZE", "resize")
        assert vm.qmp("qom-get", path="disk0",
                      property="volume-size") == 256 * MiB
        with pytest.raises(RuntimeError, match="write 0 to volume-size"):
            vm.qmp("qom-set", path="disk0", property="volume-size",
                   value=12345)
        os.truncate(image, 320 * MiB)
        vm.qmp("qom-set", path="disk0", property="volume-size", value=0)
        assert vm.qmp("qom-get", path="disk0",
                      property="volume-size") == 320 * MiB
        res = finish(vm, "resize")
    finally:
        vm.kill()
    assert "SIZE-AFTER %d" % (320 * MiB // 512) in res.output, res.output


def test_crash_after_flush_keeps_data(guest, image):
    """Writes the guest flushed survive kill -9 of QEMU: the host file
    and the next boot read them back."""
    payload = hashlib.sha256(b"pfbd").hexdigest()
    job = f"""
set -e
# 8 MiB of a known pattern through the page cache, then fsync (a FLUSH)
yes "{payload}" | head -c 8388608 > /tmp/pat
dd if=/tmp/pat of=/dev/vda bs=1M seek=16 conv=fsync 2>/dev/null
echo "SUM $(sha256sum < /tmp/pat | cut -d' ' -f1)"
echo FLUSHED
sleep 600
"""
    vm = guest.start(job, pfbd_disk("file:" + image, num_queues=2,
                                    iothreads=["io0"]), timeout=TIMEOUT)
    try:
        wait_for(vm, "FLUSHED", "crash consistency")
        os.kill(vm.proc.pid, signal.SIGKILL)
        res = vm.wait(check=False)
    finally:
        vm.kill()
    assert res.qemu_rc == -signal.SIGKILL
    want = [l.split()[1] for l in res.console.splitlines()
            if l.startswith("SUM ")][0]
    with open(image, "rb") as f:
        f.seek(16 * MiB)
        assert hashlib.sha256(f.read(8 * MiB)).hexdigest() == want
    r = guest.run_job("echo \"SUM $(dd if=/dev/vda bs=1M skip=16 count=8 "
                      "2>/dev/null | sha256sum | cut -d' ' -f1)\"",
                      pfbd_disk("file:" + image), timeout=TIMEOUT)
    assert "SUM " + want in r.output, r.describe("after the crash")


MIGRATION_JOB = f"""
set -e
echo FIO-START
for off in 0 48 96 144; do
    {FIO} --name=w$off --rw=randwrite --offset=${{off}}M --size=40M
done
echo ALL-OK
"""


def migrate_and_finish(guest, volume, tmp_path, to_file, **props):
    """Start the guest on @volume with fio verify running, migrate it to a
    second QEMU (live over a Unix socket, or through a file: save/restore),
    and check the job ends well on the destination.  @props: more device
    properties."""
    args = pfbd_disk(volume, num_queues=2, iothreads=["io0", "io1"],
                     **props)
    src = guest.start(MIGRATION_JOB, args, timeout=TIMEOUT, qmp=True)
    dst = None
    try:
        wait_for(src, "FIO-START", "migration source")
        assert wait_in_flight(src, "migration source")
        if to_file:
            uri = "file:" + str(tmp_path / "vm.state")
            src.qmp("stop")
        else:
            uri = "unix:" + str(tmp_path / "mig.sock")
            dst = guest.start(MIGRATION_JOB, args + ["-incoming", uri],
                              timeout=TIMEOUT, qmp=True)
            dst.qmp("query-status")     # up and listening
            if props.get("fixed-buffers"):
                # Postcopy would discard the pinned RAM: refused
                with pytest.raises(RuntimeError,
                                   match="fixed-buffers=on pins the guest "
                                   "RAM"):
                    dst.qmp("migrate-set-capabilities", capabilities=[
                        {"capability": "postcopy-ram", "state": True}])
        src.qmp("migrate", uri=uri)
        wait_migrated(src.qmp, TIMEOUT)
        assert src.qmp("query-status")["status"] == "postmigrate"
        src.qmp("quit")
        src.wait(check=False)
        if to_file:
            # the volume alone must carry the data: a new process restores
            dst = guest.start(MIGRATION_JOB, args + ["-incoming", uri],
                              timeout=TIMEOUT, qmp=True)
        deadline = time.monotonic() + TIMEOUT
        while dst.qmp("query-status")["status"] != "running":
            if to_file and dst.qmp("query-status")["status"] == "paused":
                dst.qmp("cont")
            assert time.monotonic() < deadline
            time.sleep(0.2)
        res = dst.wait(check=False)
        # the destination's console starts mid-job: no BEGIN marker
        text = res.console
        assert "ALL-OK" in text and "===PFBD-JOB-END rc=0===" in text, \
            res.describe("after migration to the destination")
        assert res.qemu_rc == 0, res.describe()
    finally:
        src.kill()
        if dst:
            dst.kill()


def test_live_migration_file(guest, image, tmp_path):
    """Live migration between two QEMU processes sharing a file volume,
    with fio verify running in the guest across it."""
    migrate_and_finish(guest, "file:" + image, tmp_path, to_file=False)


def test_live_migration_fixed_buffers(guest, image, tmp_path):
    """The same with fixed-buffers=on on both sides: the destination's
    pinned RAM is what the migrated pages land in, and fio verify passes;
    postcopy is refused on the destination."""
    migrate_and_finish(guest, "file:" + image, tmp_path, to_file=False,
                       **{"fixed-buffers": True})


def test_save_restore_file(guest, image, tmp_path):
    """stop, migrate to a file, quit; a new QEMU restores it and the fio
    verify that was running completes."""
    migrate_and_finish(guest, "file:" + image, tmp_path, to_file=True)

"""virtio-blk-pfbd on the pureflash engine (libpfbd's own PureFlash client).

The `pureflash` fixture (conftest.py) runs the project's conformance
double, tests/pureflash/pfdouble.py (a test server of ours, not a
PureFlash), or uses the real cluster whose conductor PFBD_PUREFLASH_CONDUCTOR
names (docs/pureflash.rst).  Run:
  /usr/bin/python3 -m pytest tests/functional/test_pureflash.py -v
On a real cluster, give the commands that do to it what the double's
control API does: PFBD_PUREFLASH_STOP_STORES, PFBD_PUREFLASH_START_STORES
(the store back, and its replicas usable again) and
PFBD_PUREFLASH_BUMP_META_VER (the conductor raises volume $1's meta_ver).
"""

import os
import shutil
import tempfile
import time

import pytest

from conftest import Ceph
from pfbdguest import GuestError, disk_args
from test_lifecycle import wait_for, wait_in_flight

MiB = 1 << 20
GiB = 1 << 30
SHARD = 64 * GiB
TIMEOUT = int(os.environ.get("PFBD_TEST_TIMEOUT", "300"))
FIO = "fio --filename=/dev/vda --direct=1 --group_reporting --eta=never"
QOM = "disk0"

pytestmark = pytest.mark.usefixtures("pfbd_only")


def pf_disk(pureflash, name, extra="", **kw):
    return disk_args(pureflash.spec(name, extra), kind="pfbd", **kw)


# The guest side of a control port (ttyS1): wait for the host's "go"
WAIT_FOR_GO = """
exec 3</dev/ttyS1
while :; do
    read -t 1 line <&3 || continue
    case "$line" in go*) break ;; esac
done
echo GOT-GO
"""


def control_port():
    """A directory and the QEMU args of a ttyS1 the host can write to."""
    sockdir = tempfile.mkdtemp(prefix="pf-ttyS1-")
    sock = os.path.join(sockdir, "ttyS1.sock")
    return sockdir, sock, ["-chardev", "socket,id=ctl,path=%s,server=on,"
                           "wait=off" % sock, "-serial", "chardev:ctl"]


def send_go(vm, sock):
    """Say "go" on ttyS1 until the guest has it (it may not be reading
    yet)."""
    for _ in range(120):
        Ceph.send_line(sock, "go")
        if vm.wait_console("GOT-GO", timeout=1):
            return
    raise GuestError("the guest never read 'go' on ttyS1:\n" +
                     vm.console()[-3000:])


def test_verify_two_queues_across_shards(guest, pureflash):
    """fio crc32c verify on 2 queues / 2 IOThreads, on a volume larger
    than one 64 GiB shard, with requests that cross the shard boundary."""
    name = pureflash.create_volume("mq", SHARD + 256 * MiB)
    edge = SHARD - 16 * MiB
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
{FIO} --name=edge --ioengine=libaio --rw=write --bs=1M --iodepth=4 \\
    --offset={edge + 512 * 1024} --size=31M --verify=crc32c --do_verify=1 \\
    --verify_fatal=1
{FIO} --name=mixed --ioengine=psync --rw=randrw --bsrange=512-256k \\
    --offset={edge} --size=32M --verify=crc32c --do_verify=1 \\
    --verify_fatal=1
echo ALL-OK
"""
    r = guest.run_job(job, pf_disk(pureflash, name, num_queues=2,
                                   iothreads=["io0", "io1"]),
                      timeout=TIMEOUT)
    assert "ALL-OK" in r.output, r.describe()
    assert r.output.splitlines()[0].strip() == str((SHARD + 256 * MiB) // 512)
    # The data is in the volume, on both sides of the boundary
    conn = pureflash.connect(name)
    try:
        for off in (SHARD - MiB, SHARD):
            data = conn.read(off, MiB)
            assert data.count(0) < len(data), hex(off)
    finally:
        conn.close()


def test_meta_ver_changes_under_io(guest, pureflash):
    """The conductor moves the volume to a new metadata version again and
    again while fio verify runs: the stores answer REOPEN, the engine
    opens the volume again and resends, and the guest sees nothing."""
    name = pureflash.create_volume("reopen", 256 * MiB)
    job = f"""
set -e
echo FIO-START
{FIO} --name=w --ioengine=io_uring --rw=randwrite --bs=16k --iodepth=16 \\
    --size=64M --verify=crc32c --do_verify=1 --verify_fatal=1
echo "IOERR $(dmesg | grep -c 'I/O error' || true)"
echo ALL-OK
"""
    vm = guest.start(job, pf_disk(pureflash, name, num_queues=2,
                                  iothreads=["io0"]),
                     timeout=TIMEOUT, qmp=True)
    try:
        wait_for(vm, "FIO-START", "meta_ver")
        bumps = 0
        while bumps < 10 and wait_in_flight(vm, "meta_ver"):
            pureflash.bump_meta_ver(name)
            bumps += 1
        res = vm.wait()
    finally:
        vm.kill()
    assert bumps >= 3, res.describe()
    assert "ALL-OK" in res.output, res.describe()
    assert "IOERR 0" in res.output, res.describe()


def test_stores_down_werror_stop_then_cont(guest, pureflash):
    """werror=stop: with every store down, a write times out (timeout=3)
    and pauses the VM; once the stores are back, cont sends it again and
    the guest never sees an error."""
    name = pureflash.create_volume("stop", 64 * MiB)
    job = """
head -c 1048576 /dev/urandom > /tmp/pat
echo PHASE-READY
""" + WAIT_FOR_GO + """
dd if=/tmp/pat of=/dev/vda bs=1M count=1 oflag=direct 2>/dev/null &&
    echo WRITE-DONE
dd if=/dev/vda of=/tmp/back bs=1M count=1 iflag=direct 2>/dev/null &&
    cmp /tmp/pat /tmp/back && echo DATA-OK
echo "IOERR-IN-GUEST $(dmesg | grep -c 'I/O error' || true)"
"""
    sockdir, sock, extra = control_port()
    vm = guest.start(job, pf_disk(pureflash, name, ":timeout=3",
                                  werror="stop") + extra,
                     timeout=TIMEOUT, qmp=True)
    try:
        wait_for(vm, "PHASE-READY", "stores down")
        pureflash.stop_stores()
        try:
            send_go(vm, sock)
            vm.wait_status("io-error", timeout=120)
        finally:
            pureflash.start_stores()
        ev = [e["data"] for e in vm.qmp_conn.events
              if e["event"] == "BLOCK_IO_ERROR"]
        assert ev and ev[0]["operation"] == "write" and \
            ev[0]["action"] == "stop", vm.qmp_conn.events
        vm.qmp("cont")
        res = vm.wait()
    finally:
        vm.kill()
        shutil.rmtree(sockdir, ignore_errors=True)
    assert "WRITE-DONE" in res.output, res.describe()
    assert "DATA-OK" in res.output, res.describe()
    assert "IOERR-IN-GUEST 0" in res.output, res.describe()


def test_reset_with_io_in_flight(guest, pureflash):
    """system_reset while fio writes on 2 queues: the requests in flight
    are waited for, and the rebooted guest's disk works (fio verify)."""
    from test_lifecycle import reset_during_io
    reset_during_io(guest, pureflash.spec(pureflash.create_volume(
        "reset", 256 * MiB)))


def test_unplug_with_io_in_flight(guest, pureflash):
    """device_del while fio runs: the guest lets the disk go once its
    requests in flight are done, and QEMU stays up."""
    name = pureflash.create_volume("unplug", 64 * MiB)
    job = f"""
echo FIO-START
{FIO} --ioengine=io_uring --bs=16k --iodepth=32 --rw=randwrite \\
    --size=32M --time_based --runtime=600 --name=busy
echo FIO-ENDED
i=0
while [ -e /sys/block/vda ]; do
    sleep 0.2; i=$((i + 1)); [ $i -lt 600 ] || break
done
[ -e /sys/block/vda ] || echo DISK-GONE
""" + WAIT_FOR_GO + """
echo ALL-OK
"""
    # a PCIe root port: the root bus of q35 has no hot-plug
    sockdir, sock, extra = control_port()
    port = ["-device", "pcie-root-port,id=rp1,chassis=1"]
    vm = guest.start(job, extra + port +
                     pf_disk(pureflash, name, num_queues=2,
                             iothreads=["io0"], bus="rp1"),
                     timeout=TIMEOUT, qmp=True)
    try:
        wait_for(vm, "FIO-START", "unplug")
        assert wait_in_flight(vm, "unplug")
        vm.qmp("device_del", id=QOM)
        wait_for(vm, "DISK-GONE", "unplug")
        deadline = time.monotonic() + TIMEOUT
        while not any(e["event"] == "DEVICE_DELETED" and
                      e["data"].get("device") == QOM
                      for e in vm.qmp_conn.events):
            assert time.monotonic() < deadline, vm.qmp_conn.events
            vm.qmp("query-status")
            time.sleep(0.1)
        # QEMU is up and the device is gone
        assert not any(d.get("qdev_id") == QOM for d in
                       vm.qmp("query-pci")[0]["devices"])
        send_go(vm, sock)
        res = vm.wait()
    finally:
        vm.kill()
        shutil.rmtree(sockdir, ignore_errors=True)
    assert "ALL-OK" in res.output, res.describe()


def test_hotplug_opened_ahead(guest, pureflash):
    """Hot-plug as the user guide says for cluster volumes: QMP
    pfbd-volume-open (the open runs off the main loop), then device_add
    with "volume": "@NAME".  The guest finds the disk and fio verify
    passes on it; the name was taken by the device."""
    name = pureflash.create_volume("ahead", 64 * MiB)
    job = """
echo WAITING-FOR-DISK
i=0
while [ ! -e /sys/block/vda ]; do
    sleep 0.2; i=$((i + 1)); [ $i -lt 1500 ] || break
done
""" + f"""
{FIO} --ioengine=io_uring --bs=16k --iodepth=16 --rw=randwrite \\
    --size=32M --verify=crc32c --do_verify=1 --verify_fatal=1 \\
    --name=ahead && echo ALL-OK
"""
    # a PCIe root port: the root bus of q35 has no hot-plug
    extra = ["-device", "pcie-root-port,id=rp1,chassis=1",
             "-object", "iothread,id=io0"]
    vm = guest.start(job, extra, timeout=TIMEOUT, qmp=True)
    try:
        wait_for(vm, "WAITING-FOR-DISK", "hot-plug")
        vm.qmp("pfbd-volume-open", name="pf", volume=pureflash.spec(name))
        vm.qmp("device_add", driver="virtio-blk-pfbd-pci", id=QOM,
               volume="@pf", bus="rp1", iothread="io0")
        assert vm.qmp("qom-get", path="/machine/peripheral/" + QOM,
                      property="volume") == "@pf"
        with pytest.raises(RuntimeError, match="no volume named .pf."):
            vm.qmp("pfbd-volume-close", name="pf")
        res = vm.wait()
    finally:
        vm.kill()
    assert "ALL-OK" in res.output, res.describe()


@pytest.mark.parametrize("extra,needle", [
    ("", "cannot open it: the conductor refused it"),
    (":colour=red", "unknown option 'colour'"),
    (":timeout=x", "timeout must be a number from 1 to 3600, not 'x'"),
])
def test_bad_pureflash_volume(guest, pureflash, extra, needle):
    spec = pureflash.spec("no-such-volume", extra)
    rc, err = guest.run_expect_fail(["-device",
                                     '{"driver":"virtio-blk-pfbd",'
                                     '"volume":"%s"}' % spec])
    assert rc == 1, err
    assert needle in err, err


def test_no_store_answers(guest, pureflash):
    """Stores that cannot be reached fail realize with the addresses."""
    name = pureflash.create_volume("nostore", 16 * MiB)
    spec = "pureflash:%s:conductor=%s:store_port=9" % (name,
                                                       pureflash.conductor)
    rc, err = guest.run_expect_fail(["-device",
                                     '{"driver":"virtio-blk-pfbd",'
                                     '"volume":"%s"}' % spec])
    assert rc == 1, err
    assert "no store of shard 0 takes it (tried " in err, err


def test_live_migration_pureflash(guest, pureflash, tmp_path):
    """Live migration between two QEMU processes on one pureflash volume,
    with fio verify running in the guest across it."""
    from test_lifecycle import migrate_and_finish
    name = pureflash.create_volume("mig", 256 * MiB)
    migrate_and_finish(guest, pureflash.spec(name), tmp_path, to_file=False)

"""Boot a real Debian system from a virtio-blk-pfbd volume (project issue 9).

The Debian bookworm image of tests/image/build-image.sh (built and cached in
build/image on first use; docs/images.rst) is booted by SeaBIOS from a
virtio-blk-pfbd disk with bootindex=1 -- no -kernel/-initrd -- under the
accelerator pfbdguest's probe picked (TCG where KVM does not work).  Its
pfbd-autorun service runs the job below (fw_cfg opt/pfbd/job):

  boot 1: root is on the pfbd boot disk; fio crc32c write+verify on a second
          pfbd volume (2 queues on 2 IOThreads); a pattern for boot 2; then
          `reboot` inside the guest (systemd reboot -> machine reset ->
          SeaBIOS -> GRUB -> Linux from the pfbd disk again)
  boot 2: root is on the pfbd boot disk again, the state file of boot 1 is
          there, the pattern reads back (fio --verify_only), more fio verify;
          then the guest powers off and QEMU must exit with status 0.

PFBD_TEST_DEVICE=stock runs the same on stock virtio-blk-pci.
Run: /usr/bin/python3 -m pytest tests/functional/test_boot_image.py -v
Env: PFBD_BOOT_TEST_TIMEOUT (seconds for the whole VM run, default 600),
     PFBD_IMAGE_DIR (image cache, default build/image), PFBD_KEEP=1.
"""

import os
import re
import subprocess
import time

import pytest

import pfbdguest
from pfbdguest import BEGIN, END_PREFIX, GuestError, make_image

TIMEOUT = int(os.environ.get("PFBD_BOOT_TEST_TIMEOUT", "600"))
BUILD_TIMEOUT = int(os.environ.get("PFBD_IMAGE_BUILD_TIMEOUT", "3600"))

BOOT_ADDR = "0x4"          # PCI slot of the boot disk
DATA_ADDR = "0x5"          # PCI slot of the data disk
BOOT_PCI = "0000:00:04.0"
DATA_PCI = "0000:00:05.0"
DATA_SIZE = "256M"
BIOS_BOOT = "Booting from Hard Disk"
TAIL = 40

FIO = ("fio --filename=$DATA --direct=1 --group_reporting "
       "--verify=crc32c --do_verify=1 --verify_fatal=1")
FIO_PATTERN = ("fio --filename=$DATA --direct=1 --name=pattern "
               "--ioengine=libaio --rw=write --bs=64k --iodepth=8 "
               "--offset=128M --size=32M --verify=crc32c --randseed=4242 "
               "--verify_fatal=1")

JOB = r"""
set -e
pci_of() { readlink -f "/sys/class/block/$1" |
           sed -n 's|.*/\(0000:[0-9a-f:.]*\)/virtio[0-9]*/block/.*|\1|p'; }
root=$(findmnt -n -o SOURCE /)
echo "BOOT $PFBD_BOOT root=$root pci=$(pci_of "$(basename "$root")")"
DATA=
for b in /sys/block/vd*; do
    if [ "$(pci_of "$(basename "$b")")" = "%(data_pci)s" ]; then
        DATA=/dev/$(basename "$b")
    fi
done
[ -n "$DATA" ] || { echo "no disk at %(data_pci)s"; ls -l /sys/block; exit 1; }
echo "DATA $DATA sectors=$(cat /sys/block/${DATA#/dev/}/size) queues=$(ls /sys/block/${DATA#/dev/}/mq | wc -l)"
if [ ! -e "$PFBD_STATE_DIR/stage1" ]; then
    %(fio)s --name=boot1 --ioengine=io_uring --rw=randwrite --bs=4k \
        --iodepth=16 --numjobs=2 --size=16M --offset_increment=16M
    %(fio_pattern)s
    echo "FIO-BOOT1-OK"
    echo "written-in-boot-$PFBD_BOOT" >"$PFBD_STATE_DIR/stage1"
    sync
    reboot
    exit 0
fi
echo "STATE $(cat "$PFBD_STATE_DIR/stage1")"
%(fio_pattern)s --verify_only
echo "PATTERN-OK"
%(fio)s --name=boot2 --ioengine=libaio --rw=randrw --bsrange=4k-128k \
    --iodepth=8 --numjobs=2 --size=16M --offset=64M --offset_increment=16M
echo "ALL-OK"
""" % {"data_pci": DATA_PCI, "fio": FIO, "fio_pattern": FIO_PATTERN}


@pytest.fixture(scope="module")
def boot_image(guest):
    """The cached Debian image (built by tests/image/build-image.sh if
    missing or stale)."""
    t0 = time.monotonic()
    try:
        path = pfbdguest.ensure_image(timeout=BUILD_TIMEOUT, log=guest.log)
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        pytest.fail("could not build the boot image: %s" % e)
    print("[boot-image] %s ready after %.0fs" % (path, time.monotonic() - t0))
    return path


def bios_tail(res, n=TAIL):
    return ("---- SeaBIOS debug log (last %d lines) ----\n%s\n----"
            % (n, "\n".join(res.bios_log.splitlines()[-n:])))


def fail(res, problem):
    msg = res.describe("boot test failed: " + problem)
    if res.console.strip():     # (describe() shows it for an empty console)
        msg += "\n" + bios_tail(res)
    raise GuestError(msg, res)


def job_runs(console):
    """[(output, rc)] of every job run on the console, one per boot."""
    text = console.replace("\r", "")
    runs = []
    for part in text.split(BEGIN + "\n")[1:]:
        out, rc = part, None
        e = part.find(END_PREFIX)
        if e >= 0:
            out = part[:e]
            m = re.match(r"(-?\d+)", part[e + len(END_PREFIX):])
            rc = int(m.group(1)) if m else None
        runs.append((out, rc))
    return runs


def watch(vm, max_boots):
    """Wait for QEMU to exit; kill it early on a boot loop or a guest that
    cannot get anywhere.  Returns a problem string or None."""
    bios_path = os.path.join(vm.workdir, "bios.log")
    deadline = vm.t0 + vm.timeout
    while vm.proc.poll() is None and time.monotonic() < deadline:
        time.sleep(1)
        try:
            with open(bios_path, "rb") as f:
                bios = f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            bios = ""
        con = vm.console()
        problem = None
        if bios.count(BIOS_BOOT) > max_boots:
            problem = "more than %d boots (reboot loop?)" % max_boots
        elif "Kernel panic" in con:
            problem = "kernel panic"
        elif "Gave up waiting for root" in con or "(initramfs)" in con:
            problem = "the initramfs could not mount the root file system"
        elif "Boot failed" in bios or "No bootable device" in bios:
            problem = "SeaBIOS found nothing to boot"
        if problem:
            time.sleep(2)   # let the console catch up
            vm.kill()
            return problem
    return None


def test_boot_reboot_fio(guest, disk, boot_image, image_dir):
    """SeaBIOS boots Debian from the pfbd disk, fio verify on a second pfbd
    volume, reboot inside the guest, second boot from the pfbd disk, clean
    poweroff (QEMU exit status 0)."""
    boot = os.path.join(image_dir, "boot.raw")
    subprocess.run(["cp", "--sparse=always", boot_image, boot], check=True)
    boot_and_check(guest, disk, "file:" + boot, image_dir)


@pytest.mark.usefixtures("pfbd_only")
def test_boot_from_rbd(guest, disk, boot_image, image_dir, ceph):
    """The same with the boot disk on the rbd engine: the image imported
    with `rbd import` into the test cluster (docs/images.rst)."""
    name = "boot-%d" % os.getpid()
    ceph.rbd("import", "--no-progress", boot_image, "rbd/" + name)
    try:
        boot_and_check(guest, disk,
                       "rbd:rbd/%s:conf=%s" % (name, ceph.conf), image_dir)
    finally:
        ceph.rbd("rm", "--no-progress", "rbd/" + name)


@pytest.mark.usefixtures("pfbd_only")
def test_boot_from_pureflash(guest, disk, boot_image, image_dir, pureflash):
    """The same with the boot disk on the pureflash engine: the image's
    data copied into a PureFlash volume over the store protocol (the
    conformance double in make check, or a real cluster)."""
    size = os.path.getsize(boot_image)
    name = pureflash.create_volume("boot", size)
    pureflash.upload(name, boot_image)
    boot_and_check(guest, disk, pureflash.spec(name), image_dir)


def boot_and_check(guest, disk, boot_volume, image_dir):
    data = make_image(os.path.join(image_dir, "data.raw"), DATA_SIZE)

    # 2 queues on the boot disk too: SeaBIOS drives only the first one
    disks = (disk(boot_volume, dev_id="boot0", num_queues=2, bootindex=1,
                  addr=BOOT_ADDR) +
             disk("file:" + data, dev_id="data0", num_queues=2,
                  iothreads=["io0", "io1"], addr=DATA_ADDR))
    vm = pfbdguest.start_firmware_boot(guest, JOB, disks, timeout=TIMEOUT,
                                       mem="1G", smp=2)
    problem = watch(vm, max_boots=2)
    res = vm.wait(check=False)
    if problem is None:
        if res.timed_out:
            problem = "timed out after %ds" % TIMEOUT
        elif res.qemu_rc != 0:
            problem = "QEMU exited with status %s" % res.qemu_rc
        elif pfbdguest.INIT_ERROR in res.console:
            problem = "pfbd-autorun could not run the job"
    if problem:
        fail(res, problem)
    print("[boot-image] %s run: %.0fs, accel=%s"
          % (pfbdguest.device_kind(), res.elapsed, res.accel))

    runs = job_runs(res.console)
    if len(runs) != 2:
        fail(res, "expected the job to run on 2 boots, it ran on %d"
             % len(runs))
    (out1, rc1), (out2, rc2) = runs
    if rc1 != 0 or "FIO-BOOT1-OK" not in out1:
        fail(res, "boot 1: job rc=%s (fio verify on the data disk)" % rc1)
    if "reboot requested" not in out1:
        fail(res, "boot 1: the job's reboot was not requested")
    if rc2 != 0 or "ALL-OK" not in out2:
        fail(res, "boot 2: job rc=%s" % rc2)
    # both boots came up from the pfbd boot disk
    for n, out in ((1, out1), (2, out2)):
        m = re.search(r"^BOOT (\d+) root=(\S+) pci=(\S*)$", out, re.M)
        if not m:
            fail(res, "boot %d: no BOOT line" % n)
        if m.group(1) != str(n) or m.group(3) != BOOT_PCI:
            fail(res, "boot %d: expected boot %d with root on %s, got %r"
                 % (n, n, BOOT_PCI, m.group(0)))
        data_line = re.search(r"^DATA (\S+) sectors=(\d+) queues=(\d+)$",
                              out, re.M)
        if (not data_line or
                int(data_line.group(2)) != pfbdguest.parse_size(DATA_SIZE) // 512
                or data_line.group(3) != "2"):
            fail(res, "boot %d: data disk: %r" % (
                n, data_line.group(0) if data_line else None))
    if "STATE written-in-boot-1" not in out2 or "PATTERN-OK" not in out2:
        fail(res, "boot 2 did not see what boot 1 wrote")
    # the guest really went through the firmware twice and restarted once
    if res.bios_log.count(BIOS_BOOT) != 2:
        fail(res, "SeaBIOS booted %d times, expected 2"
             % res.bios_log.count(BIOS_BOOT))
    if "reboot: Restarting system" not in res.console:
        fail(res, "no 'reboot: Restarting system' from the guest kernel")
    # the final job's rc is what parse_console (Vm.wait) reports
    assert res.rc == 0, res.describe()

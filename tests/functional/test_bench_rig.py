"""The benchmark rig's devices move the right data: every read that
pfbd-rig completes on virtio-blk-pfbd, stock virtio-blk-pci and
vhost-user-blk-pci (qemu-storage-daemon, the out-of-process peer of
make bench) matches the backing file, and the daemon's CPU time is counted
as the device path's.  Needs build/bench/pfbd-rig and qemu-storage-daemon
(make check-functional builds both)."""

import os
import subprocess
import sys
import types

import pytest

from conftest import REPO_DIR

sys.path.insert(0, os.path.join(REPO_DIR, "tests", "bench"))

import bench  # noqa: E402

BUILD = os.environ.get("BUILD", os.path.join(REPO_DIR, "build"))
RIG = os.path.join(BUILD, "bench", "pfbd-rig")
QSD = os.path.join(BUILD, "qemu-build", "storage-daemon",
                   "qemu-storage-daemon")
SIZE = 64 << 20


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    """64 MiB of random data, on tmpfs (O_DIRECT) when there is room"""
    d = "/dev/shm" if os.statvfs("/dev/shm").f_bavail * \
        os.statvfs("/dev/shm").f_frsize > 4 * SIZE else \
        str(tmp_path_factory.mktemp("rig"))
    path = os.path.join(d, "pfbd-test-rig-%d.img" % os.getpid())
    with open(path, "wb") as f:
        f.write(os.urandom(SIZE))
    yield path
    os.unlink(path)


def run_rig(qemu, image, device, kick=None):
    """One short bench.run_rig() of @device on @image, every read checked
    against @image (pfbd-rig --verify); the rig's JSON result.  @kick:
    pfbd-rig's --kick (None: its default, eventfd)"""
    for exe in (RIG, QSD):
        assert os.access(exe, os.X_OK), \
            "%s missing: make bench-rig bench-qsd" % exe
    opts = types.SimpleNamespace(
        rig=RIG, qemu=qemu, qsd=QSD, image=image, runtime=1, ramp=0.2,
        rig_cpus=None, qemu_cpus=None, rig_args=["--verify", image],
        kick=kick)
    try:
        return bench.run_rig(opts, device, "file", "randread", 4096, 8, 1,
                             size=str(SIZE))
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        pytest.fail("pfbd-rig failed: %s" % e)


@pytest.mark.parametrize("device", ["virtio-blk-pfbd", "virtio-blk-pci",
                                    "vhost-user-blk"])
@pytest.mark.parametrize("kick", ["eventfd", "qtest"])
def test_rig_reads_match_the_file(guest, image, device, kick):
    """The rig's kicks reach the device either way: through the queue's
    host notifier, as a KVM vCPU's (eventfd, the default), or through
    QEMU's main thread (qtest)"""
    r = run_rig(guest.qemu, image, device, kick)
    # The device answered (verified below): it was kicked at least once
    assert r["kick"] == kick, r
    if device == "vhost-user-blk":
        assert r["daemon_cpu_us_per_io"] > 0, r
        # the daemon's threads are the device path
        assert r["cpu_us_per_io"] >= r["daemon_cpu_us_per_io"], r
    else:
        assert r["daemon_cpu_us_per_io"] == 0, r
    assert r["errors"] == 0, r
    assert r["mismatches"] == 0, r
    assert r["verified"] > 100, r

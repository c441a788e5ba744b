"""pytest fixtures for the pfbd-qemu functional tests (real Linux guest).

Run:  /usr/bin/python3 -m pytest tests/functional -v
Env:  PFBD_QEMU (binary), PFBD_ACCEL (tcg|kvm), PFBD_TEST_DEVICE (pfbd|stock),
      PFBD_KEEP=1 (keep per-run work dirs with console log and cmdline).
See pfbdguest.py for the details.
"""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import pfbdguest  # noqa: E402
from pfbdguest import GuestError, disk_args, make_image  # noqa: E402,F401

REPO_DIR = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


@pytest.fixture(scope="session")
def guest():
    """A pfbdguest.Guest: builds the guest if needed, probes the accelerator.

    guest.run_job(job, extra_args, timeout=...) -> JobResult (.output, .rc)
    guest.run_expect_fail(extra_args) -> (exit code, stderr)
    guest.start(job, extra_args, qmp=True) -> Vm (vm.qmp("stop"), vm.wait())
    """
    g = pfbdguest.Guest(log=lambda m: print("[pfbdguest] " + m))
    print("[pfbdguest] accel=%s qemu=%s" % (g.accel, g.qemu))
    return g


@pytest.fixture(scope="session")
def device_kind(guest):
    """'pfbd' (default) or 'stock' (env PFBD_TEST_DEVICE)."""
    kind = pfbdguest.device_kind()
    if kind == "pfbd" and not pfbdguest.qemu_has_device(guest.qemu,
                                                        "virtio-blk-pfbd"):
        pytest.fail("QEMU %s has no virtio-blk-pfbd device; set "
                    "PFBD_TEST_DEVICE=stock to run these tests against stock "
                    "virtio-blk-pci" % guest.qemu)
    return kind


@pytest.fixture
def pfbd_only(device_kind):
    """For tests of virtio-blk-pfbd's own features (statistics, lifecycle
    properties, error policy): skipped with PFBD_TEST_DEVICE=stock."""
    if device_kind != "pfbd":
        pytest.skip("a virtio-blk-pfbd feature: not run on stock "
                    "virtio-blk-pci (PFBD_TEST_DEVICE=stock)")


@pytest.fixture
def disk(device_kind):
    """disk(volume, **kw) -> QEMU args for the device under test."""
    def make(volume, **kw):
        return disk_args(volume, kind=device_kind, **kw)
    return make


@pytest.fixture
def image_dir(tmp_path):
    """A per-test directory for images: on /dev/shm when it has room."""
    base = pfbdguest.shm_dir(1 << 30)
    if base is None:
        yield tmp_path
        return
    d = tempfile.mkdtemp(prefix="pfbd-test-", dir=base)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def image(image_dir):
    """Path of a fresh 256 MiB sparse image file."""
    return make_image(os.path.join(image_dir, "disk.img"), "256M")


class Ceph:
    """A running Ceph cluster (tests/ceph/start-ceph.sh) and rbd helpers."""

    def __init__(self, conf):
        self.conf = conf
        self.dir = os.path.dirname(conf)
        self.env = dict(os.environ, CEPH_CONF=conf)
        self._n = 0

    def rbd(self, *args, input=None):
        p = subprocess.run(["rbd", "-c", self.conf] + list(args),
                           input=input, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=120)
        if p.returncode != 0:
            raise AssertionError("rbd %s failed (%d): %s" % (
                " ".join(args), p.returncode,
                p.stderr.decode(errors="replace")))
        return p.stdout

    def _name(self, prefix):
        self._n += 1
        return "%s-%d-%d" % (prefix, os.getpid(), self._n)

    def create_image(self, prefix, size):
        name = self._name(prefix)
        self.rbd("create", "--size", size, "rbd/" + name)
        return name

    def import_image(self, prefix, path):
        name = self._name(prefix)
        self.rbd("import", path, "rbd/" + name)
        return name

    def read_image(self, image, offset, length):
        """Bytes [offset, offset + length) of rbd/IMAGE (or IMAGE@SNAP)."""
        data = self.rbd("export", "--no-progress", "rbd/" + image, "-")
        return data[offset:offset + length]

    def osd_pid(self):
        with open(os.path.join(self.dir, "run", "osd.0.pid")) as f:
            return int(f.read().strip())

    @staticmethod
    def send_line(sock_path, text):
        """Write a line to a QEMU chardev socket (server=on)."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.settimeout(5)
            s.connect(sock_path)
            s.sendall(text.encode() + b"\n")
            time.sleep(0.1)
        finally:
            s.close()


@pytest.fixture(scope="session")
def ceph():
    """A Ceph cluster: $PFBD_TEST_CEPH_CONF, or one started for the session
    with tests/ceph/start-ceph.sh (the packages come from
    scripts/install-deps.sh)."""
    conf = os.environ.get("PFBD_TEST_CEPH_CONF")
    if conf:
        yield Ceph(conf)
        return
    if not shutil.which("ceph-mon"):
        pytest.fail("ceph-mon not found: run scripts/install-deps.sh (the "
                    "rbd tests start their own Ceph cluster)")
    d = tempfile.mkdtemp(prefix="pfbd-ceph-", dir="/tmp")
    start = os.path.join(REPO_DIR, "tests", "ceph", "start-ceph.sh")
    stop = os.path.join(REPO_DIR, "tests", "ceph", "stop-ceph.sh")
    p = subprocess.run(["bash", start, d], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT)
    if p.returncode != 0:
        pytest.fail("could not start a Ceph cluster:\n" +
                    p.stdout.decode(errors="replace")[-3000:])
    try:
        yield Ceph(os.path.join(d, "ceph.conf"))
    finally:
        subprocess.run(["bash", stop, d, "--purge"], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT)

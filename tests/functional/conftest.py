"""pytest fixtures for the pfbd-qemu functional tests (real Linux guest).

Run:  /usr/bin/python3 -m pytest tests/functional -v
Env:  PFBD_QEMU (binary), PFBD_ACCEL (tcg|kvm), PFBD_TEST_DEVICE (pfbd|stock),
      PFBD_KEEP=1 (keep per-run work dirs with console log and cmdline).
See pfbdguest.py for the details.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

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
        try:
            p = subprocess.run(["rbd", "-c", self.conf] + list(args),
                               input=input, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, timeout=120)
        except subprocess.TimeoutExpired:
            raise AssertionError("rbd %s: no answer in 120 s\n%s" % (
                " ".join(args), self.diagnose()))
        if p.returncode != 0:
            raise AssertionError("rbd %s failed (%d): %s\n%s" % (
                " ".join(args), p.returncode,
                p.stderr.decode(errors="replace"), self.diagnose()))
        return p.stdout

    def diagnose(self):
        """What the test cluster's daemons and disk look like, for a
        failure message"""
        out = []
        for name in ("mon.a", "osd.0"):
            try:
                with open(os.path.join(self.dir, "run", name + ".pid")) as f:
                    pid = int(f.read().strip())
                os.kill(pid, 0)
                state = "running (pid %d)" % pid
            except (OSError, ValueError):
                state = "NOT RUNNING"
            out.append("%s: %s" % (name, state))
        st = os.statvfs(self.dir)
        out.append("free space under %s: %d MiB of %d MiB" % (
            self.dir, st.f_bavail * st.f_frsize >> 20,
            st.f_blocks * st.f_frsize >> 20))
        for name in ("mon.a", "osd.0"):
            try:
                with open(os.path.join(self.dir, "out", name + ".log"),
                          errors="replace") as f:
                    tail = f.readlines()[-15:]
            except OSError:
                tail = ["(no log)\n"]
            out.append("---- %s.log (last lines) ----\n%s" % (
                name, "".join(tail).rstrip()))
        return "\n".join(out)

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


class PureFlash:
    """A PureFlash cluster for the pureflash engine's tests: the project's
    conformance double (tests/pureflash/pfdouble.py, not a PureFlash), or a
    real cluster named by PFBD_PUREFLASH_CONDUCTOR (docs/pureflash.rst).

    What a test does to the cluster goes through the double's control API;
    on a real cluster it runs the commands in PFBD_PUREFLASH_STOP_STORES,
    PFBD_PUREFLASH_START_STORES and PFBD_PUREFLASH_BUMP_META_VER."""

    def __init__(self, conductor, store_port=None, double=None):
        self.conductor = conductor
        self.store_port = store_port
        self.double = double
        self._n = 0

    def _get(self, api, op, **params):
        query = urllib.parse.urlencode(dict(params, op=op))
        url = "http://%s/%s/?%s" % (self.conductor, api, query)
        with urllib.request.urlopen(url, timeout=30) as reply:
            r = json.load(reply)
        if r.get("ret_code") != 0:
            raise AssertionError("%s %s %r: %r" % (api, op, params, r))
        return r

    def s5c(self, op, **params):
        return self._get("s5c", op, **params)

    def ctl(self, op, **params):
        if self.double is None:
            pytest.fail("this test needs the conformance double's control "
                        "API (%s): deselect it on a real cluster" % op)
        return self._get("ctl", op, **params)

    def create_volume(self, prefix, size):
        self._n += 1
        name = "%s-%d-%d" % (prefix, os.getpid(), self._n)
        self.s5c("create_volume", volume_name=name, size=size, rep_cnt=1,
                 host_id=-1)
        return name

    def spec(self, name, extra=""):
        s = "pureflash:%s:conductor=%s" % (name, self.conductor)
        if self.store_port:
            s += ":store_port=%s" % self.store_port
        return s + extra

    def connect(self, name):
        """A raw protocol connection to the primary of shard 0, for
        reading and writing the volume from the host."""
        sys.path.insert(0, os.path.join(REPO_DIR, "tests", "pureflash"))
        from pfdouble_client import RawConn
        info = self.s5c("open_volume", volume_name=name, snapshot_name="")
        host = info["shards"][0]["store_ips"].split(",")[0]
        return RawConn(host, int(self.store_port or 49162), info)

    def upload(self, name, path):
        """Copy the data extents of the file at PATH into the volume."""
        conn = self.connect(name)
        try:
            with open(path, "rb") as f:
                fd = f.fileno()
                end = os.fstat(fd).st_size
                pos = 0
                while pos < end:
                    try:
                        start = os.lseek(fd, pos, os.SEEK_DATA)
                    except OSError:
                        break
                    stop = os.lseek(fd, start, os.SEEK_HOLE)
                    for off in range(start, stop, 1 << 20):
                        n = min(1 << 20, stop - off)
                        conn.write(off, os.pread(fd, n, off))
                    pos = stop
        finally:
            conn.close()

    def bump_meta_ver(self, name):
        """Make the conductor move volume NAME to a new metadata version:
        the double's control API, or on a real cluster the command in
        PFBD_PUREFLASH_BUMP_META_VER, with the volume's name as $1 (what
        an operator does that makes the conductor raise meta_ver)."""
        if self.double is not None:
            return self.ctl("bump_meta_ver", volume_name=name)
        cmd = os.environ.get("PFBD_PUREFLASH_BUMP_META_VER")
        if not cmd:
            pytest.fail("set PFBD_PUREFLASH_BUMP_META_VER to a command that "
                        "makes this cluster's conductor raise the meta_ver "
                        "of the volume named by $1")
        subprocess.run(["bash", "-c", cmd, "bump", name], check=True,
                       timeout=300)

    def stop_stores(self):
        if self.double is None:
            self._run_env("PFBD_PUREFLASH_STOP_STORES")
            return
        for i in range(len(self.double.stores)):
            self.ctl("stop_store", store=i)

    def start_stores(self):
        if self.double is None:
            self._run_env("PFBD_PUREFLASH_START_STORES")
            return
        for i in range(len(self.double.stores)):
            self.ctl("start_store", store=i)

    @staticmethod
    def _run_env(var):
        cmd = os.environ.get(var)
        if not cmd:
            pytest.fail("set %s to the command that does it on this "
                        "cluster" % var)
        subprocess.run(cmd, shell=True, check=True, timeout=300)


@pytest.fixture(scope="session")
def pureflash():
    """PFBD_PUREFLASH_CONDUCTOR's cluster, or the conformance double
    started for the session."""
    conductor = os.environ.get("PFBD_PUREFLASH_CONDUCTOR")
    if conductor:
        yield PureFlash(conductor,
                        os.environ.get("PFBD_PUREFLASH_STORE_PORT"))
        return
    sys.path.insert(0, os.path.join(REPO_DIR, "tests", "pureflash"))
    from pfdouble_client import PfDouble
    d = tempfile.mkdtemp(prefix="pfdouble-", dir="/tmp")
    pf = PfDouble(d)
    try:
        pf.start()
        yield PureFlash(pf.conductor, pf.store_port, double=pf)
    finally:
        pf.stop()
        shutil.rmtree(d, ignore_errors=True)

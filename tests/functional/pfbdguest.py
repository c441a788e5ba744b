"""Boot the pfbd-qemu test guest and run a shell job in it (stdlib only).

Used by the pytest suite (tests/functional) and by tests/bench/guest-fio.py.

The guest (tests/guest/build-guest.sh -> <repo>/build/guest/{vmlinuz,
initramfs.img}) reads a job script from fw_cfg (opt/pfbd/job), runs it with
busybox sh, prints its output between markers on ttyS0 and powers off.

Environment:
  PFBD_QEMU          QEMU binary (default <repo>/build/qemu-system-x86_64)
  PFBD_ACCEL         force the accelerator: "tcg" or "kvm" (default: probe)
  PFBD_GUEST_DIR     guest artefacts dir (default <repo>/build/guest)
  PFBD_FIRMWARE_DIR  dir for -L (default <guest dir>/firmware, created with
                     symlinks to /usr/share/seabios and /usr/share/qemu)
  PFBD_GUEST_LOGLEVEL  guest kernel loglevel (default 4; 7 shows the boot)
  PFBD_KVM_PROBE_TIMEOUT  seconds the KVM probe boot may take (default 20;
                     the result is cached in <guest dir>/accel-probe.json)

Typical use:
    g = Guest()
    res = g.run_job("fio ...", extra_args=[...], timeout=600)   # raises GuestError
    res.output, res.rc
    code, stderr = g.run_expect_fail([...])                       # bad configs

For QMP (stop/cont etc.) use g.start(...) -> Vm, vm.qmp("stop"), vm.wait().
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

BEGIN = "===PFBD-JOB-BEGIN==="
END_PREFIX = "===PFBD-JOB-END rc="
INIT_ERROR = "===PFBD-INIT-ERROR"

TAIL_LINES = 60


def qemu_binary():
    return os.environ.get("PFBD_QEMU",
                          os.path.join(REPO, "build", "qemu-system-x86_64"))


def install_sh(action, prefix, destdir=""):
    """scripts/install.sh ACTION (install, uninstall) of the emulator
    qemu_binary() lies in, under DESTDIR=@destdir, PREFIX=@prefix; returns
    its output, raises AssertionError if it fails."""
    qemu_build = os.path.dirname(os.path.realpath(qemu_binary()))
    r = subprocess.run(["bash", os.path.join(REPO, "scripts", "install.sh"),
                        action, qemu_build],
                       env=dict(os.environ, DESTDIR=str(destdir),
                                PREFIX=str(prefix)),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, "install.sh %s failed:\n%s%s" % (
        action, r.stdout, r.stderr)
    return r.stdout


def guest_dir():
    return os.environ.get("PFBD_GUEST_DIR", os.path.join(REPO, "build", "guest"))


class GuestError(AssertionError):
    """A guest run failed (timeout, QEMU error, missing marker, job failure)."""

    def __init__(self, msg, result=None):
        super().__init__(msg)
        self.result = result


class JobResult:
    def __init__(self, output, rc, qemu_rc, console, stderr, elapsed, accel,
                 timed_out=False):
        self.output = output        # job stdout+stderr (None if no markers)
        self.rc = rc                # job exit status (None if unknown)
        self.qemu_rc = qemu_rc
        self.console = console      # whole serial console text
        self.stderr = stderr        # QEMU's stderr
        self.elapsed = elapsed
        self.accel = accel
        self.timed_out = timed_out
        self.bios_log = ""          # SeaBIOS debugcon output

    def describe(self, what="guest run"):
        con = self.console.splitlines()[-TAIL_LINES:]
        err = self.stderr.splitlines()[-TAIL_LINES:]
        bios = ""
        if not self.console.strip() and self.bios_log:
            bios = ("---- console empty; SeaBIOS debug log (last 20 lines) "
                    "----\n%s\n" % "\n".join(
                        self.bios_log.splitlines()[-20:]))
        return bios + ("%s: job rc=%s, qemu rc=%s, timed_out=%s, %.1fs, accel=%s\n"
                "---- last %d console lines ----\n%s\n"
                "---- QEMU stderr (last %d lines) ----\n%s\n----"
                % (what, self.rc, self.qemu_rc, self.timed_out, self.elapsed,
                   self.accel, len(con), "\n".join(con), len(err),
                   "\n".join(err)))


def parse_console(text):
    """Return (output, rc) from the console text; (None, None) if absent."""
    text = text.replace("\r\n", "\n").replace("\r", "")
    b = text.find(BEGIN + "\n")
    if b < 0:
        return None, None
    body = text[b + len(BEGIN) + 1:]
    e = body.rfind(END_PREFIX)
    if e < 0:
        return body, None
    tail = body[e + len(END_PREFIX):]
    try:
        rc = int(tail.split("=", 1)[0])
    except ValueError:
        return body[:e], None
    return body[:e], rc


def qemu_python_dir():
    """python/ of the QEMU source tree: its qemu.qmp package"""
    return os.environ.get("PFBD_QEMU_PYTHON",
                          os.path.join(REPO, "build", "qemu-src", "python"))


def qmp_client(path):
    """QEMU's legacy synchronous QMP client (qemu.qmp.legacy), not
    connected yet, for the UNIX socket @path"""
    if qemu_python_dir() not in sys.path:
        sys.path.insert(0, qemu_python_dir())
    from qemu.qmp.legacy import QEMUMonitorProtocol
    return QEMUMonitorProtocol(path)


class Qmp:
    """QMP connection of a Vm, with qemu.qmp: commands raise RuntimeError
    with QEMU's error, events are kept in .events."""

    def __init__(self, path, timeout=60):
        deadline = time.monotonic() + timeout
        while True:
            self.mon = qmp_client(path)
            try:
                self.mon.connect()
                break
            except Exception:
                # Not listening yet
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.mon.settimeout(timeout)
        self._events = []

    @property
    def events(self):
        """Every event received so far"""
        self._events.extend(self.mon.get_events(wait=False))
        return self._events

    def cmd(self, name, /, **args):
        r = self.mon.cmd_raw(name, args)
        if "error" in r:
            raise RuntimeError("QMP %s failed: %s" % (name, r["error"]))
        return r.get("return")

    def close(self):
        try:
            self.mon.close()
        except Exception:
            pass


class Vm:
    """A running QEMU (from Guest.start); call wait() to collect the result."""

    def __init__(self, guest, proc, workdir, console_path, stderr_path,
                 qmp_path, accel, timeout):
        self.guest = guest
        self.proc = proc
        self.workdir = workdir
        self.console_path = console_path
        self.stderr_path = stderr_path
        self.qmp_path = qmp_path
        self.accel = accel
        self.timeout = timeout
        self.t0 = time.monotonic()
        self._qmp = None

    @property
    def qmp_conn(self):
        if self._qmp is None:
            if not self.qmp_path:
                raise RuntimeError("VM started without qmp=True")
            self._qmp = Qmp(self.qmp_path)
        return self._qmp

    def qmp(self, name, /, **args):
        return self.qmp_conn.cmd(name, **args)

    def console(self):
        try:
            with open(self.console_path, "rb") as f:
                return f.read().decode("utf-8", "replace").replace("\r", "")
        except FileNotFoundError:
            return ""

    def wait_console(self, needle, timeout=None):
        """Wait until `needle` appears on the console; return True/False."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while time.monotonic() < deadline:
            if needle in self.console():
                return True
            if self.proc.poll() is not None:
                return needle in self.console()
            time.sleep(0.2)
        return False

    def wait_status(self, want, timeout=None):
        """Poll QMP query-status until the run state is `want`; on a
        timeout or a QEMU exit, kill it and raise GuestError with the
        console tail."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while time.monotonic() < deadline:
            if self.qmp("query-status")["status"] == want:
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        self.kill()
        res = self.wait(check=False)
        raise GuestError(res.describe("the VM never reached run state '%s'"
                                      % want), res)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def wait(self, check=True, expect_rc=0):
        remaining = self.timeout - (time.monotonic() - self.t0)
        timed_out = False
        try:
            qemu_rc = self.proc.wait(timeout=max(remaining, 1))
        except subprocess.TimeoutExpired:
            timed_out = True
            self.proc.terminate()
            try:
                qemu_rc = self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                qemu_rc = self.proc.wait()
        if self._qmp:
            self._qmp.close()
        elapsed = time.monotonic() - self.t0
        console = self.console()
        with open(self.stderr_path, "rb") as f:
            stderr = f.read().decode("utf-8", "replace")
        try:
            with open(os.path.join(self.workdir, "bios.log"), "rb") as f:
                bios = f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            bios = ""
        output, rc = parse_console(console)
        res = JobResult(output, rc, qemu_rc, console, stderr, elapsed,
                        self.accel, timed_out)
        res.bios_log = bios
        if not self.guest.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        if check:
            problem = None
            if timed_out:
                problem = "timed out after %ds" % self.timeout
            elif qemu_rc != 0:
                problem = "QEMU exited with status %s" % qemu_rc
            elif INIT_ERROR in console:
                problem = "guest init error"
            elif output is None:
                problem = "job start marker missing on the console"
            elif rc is None:
                problem = "job end marker missing on the console"
            elif expect_rc is not None and rc != expect_rc:
                problem = "job exited with status %s (expected %s)" % (rc, expect_rc)
            if problem:
                raise GuestError(res.describe("guest run failed: " + problem), res)
        return res


class Guest:
    def __init__(self, qemu=None, accel=None, mem="512M", smp=2,
                 keep_workdir=False, log=None):
        self.qemu = qemu or qemu_binary()
        self.gdir = guest_dir()
        self.mem = mem
        self.smp = smp
        self.keep_workdir = keep_workdir or bool(os.environ.get("PFBD_KEEP"))
        self.log = log or (lambda msg: None)
        self.ensure_built()
        self.firmware = self.ensure_firmware()
        self.accel = accel or os.environ.get("PFBD_ACCEL") or self.probe_accel()

    # ------------------------------------------------------------ setup
    def ensure_built(self):
        if not os.access(self.qemu, os.X_OK):
            raise RuntimeError("QEMU binary %s not found/executable "
                               "(set PFBD_QEMU)" % self.qemu)
        script = os.path.join(REPO, "tests", "guest", "build-guest.sh")
        p = subprocess.run([script, self.gdir], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT)
        if p.returncode != 0:
            raise RuntimeError("build-guest.sh failed:\n" +
                               p.stdout.decode(errors="replace")[-4000:])

    def ensure_firmware(self):
        fw = os.environ.get("PFBD_FIRMWARE_DIR")
        if fw:
            return fw
        fw = os.path.join(self.gdir, "firmware")
        if not os.path.exists(os.path.join(fw, "bios-256k.bin")):
            os.makedirs(fw, exist_ok=True)
            for d in ("/usr/share/seabios", "/usr/share/qemu"):
                if not os.path.isdir(d):
                    continue
                for n in os.listdir(d):
                    dst = os.path.join(fw, n)
                    if not os.path.lexists(dst):
                        os.symlink(os.path.join(d, n), dst)
        if not os.path.exists(os.path.join(fw, "bios-256k.bin")):
            raise RuntimeError("no bios-256k.bin: install Debian's seabios "
                               "package or set PFBD_FIRMWARE_DIR")
        return fw

    def probe_accel(self):
        """kvm if a real boot of the guest under KVM works, else tcg (cached)."""
        if not os.access("/dev/kvm", os.R_OK | os.W_OK):
            return "tcg"
        # KVM usability is a property of the host (kernel, nested/paravirt
        # KVM flavour), not of the QEMU build: key the cache on those.
        with open(os.path.join(self.gdir, "stamp")) as f:
            stamp = f.read().strip()
        key = "%s:%s:%s" % (os.uname().release, os.path.realpath(self.qemu),
                            stamp)
        cache = os.path.join(self.gdir, "accel-probe.json")
        try:
            with open(cache) as f:
                c = json.load(f)
            if c.get("key") == key:
                return c["accel"]
        except (OSError, ValueError):
            pass
        timeout = int(os.environ.get("PFBD_KVM_PROBE_TIMEOUT", "20"))
        accel = "tcg"
        try:
            r = self.run_job("echo kvm-ok", accel="kvm", timeout=timeout,
                             check=False)
            if r.rc == 0 and r.output and "kvm-ok" in r.output:
                accel = "kvm"
        except Exception:
            pass
        self.log("accelerator probe: %s" % accel)
        try:
            with open(cache, "w") as f:
                json.dump({"key": key, "accel": accel}, f)
        except OSError:
            pass
        return accel

    # ------------------------------------------------------------ running
    def default_timeout(self, accel=None):
        return 600 if (accel or self.accel) == "tcg" else 180

    def base_args(self, accel, job_path, console_path, smp=None, mem=None,
                  cmdline_extra="", reboot=False, firmware_boot=False):
        # reboot=True: a guest reboot or system_reset restarts the guest
        # (the job runs again) instead of ending QEMU; firmware_boot=True:
        # no -kernel/-initrd, SeaBIOS boots a disk with a bootindex
        args = [self.qemu, "-nodefaults", "-no-user-config", "-display", "none",
                "-machine", "q35", "-accel", accel,
                "-m", mem or self.mem, "-smp", str(smp or self.smp),
                "-L", self.firmware]
        if not firmware_boot:
            args += ["-kernel", os.path.join(self.gdir, "vmlinuz"),
                     "-initrd", os.path.join(self.gdir, "initramfs.img"),
                     "-append", ("console=ttyS0 loglevel=%s panic=-1 "
                                 % os.environ.get("PFBD_GUEST_LOGLEVEL", "4")
                                 + cmdline_extra).strip()]
        args += ["-serial", "file:" + console_path,
                 # SeaBIOS debug output (shown on failure when the kernel did
                 # not get to print anything, e.g. a hang in the BIOS' own
                 # virtio-blk driver)
                 "-chardev", "file,id=pfbdbios,path=" +
                 os.path.join(os.path.dirname(console_path), "bios.log"),
                 "-device", "isa-debugcon,iobase=0x402,chardev=pfbdbios",
                 "-fw_cfg", "name=opt/pfbd/job,file=" + job_path]
        if not reboot:
            args.append("-no-reboot")
        return args

    def start(self, job, extra_args=(), timeout=None, accel=None, qmp=False,
              smp=None, mem=None, cmdline_extra="", reboot=False,
              firmware_boot=False):
        """Start QEMU running `job` (shell script text); returns a Vm."""
        accel = accel or self.accel
        workdir = tempfile.mkdtemp(prefix="pfbd-guest-")
        job_path = os.path.join(workdir, "job.sh")
        with open(job_path, "w") as f:
            f.write(job if job.endswith("\n") else job + "\n")
        console_path = os.path.join(workdir, "console.log")
        stderr_path = os.path.join(workdir, "qemu.stderr")
        args = self.base_args(accel, job_path, console_path, smp, mem,
                              cmdline_extra, reboot, firmware_boot)
        qmp_path = None
        if qmp:
            qmp_path = os.path.join(workdir, "qmp.sock")
            args += ["-qmp", "unix:%s,server=on,wait=off" % qmp_path]
        args += list(extra_args)
        self.log("qemu: " + " ".join(args))
        with open(os.path.join(workdir, "cmdline"), "w") as f:
            f.write(" ".join(args) + "\n")
        errf = open(stderr_path, "wb")
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL,
                                stdout=errf, stderr=errf)
        errf.close()
        return Vm(self, proc, workdir, console_path, stderr_path, qmp_path,
                  accel, timeout or self.default_timeout(accel))

    def run_job(self, job, extra_args=(), timeout=None, accel=None, check=True,
                expect_rc=0, **kw):
        """Boot, run `job`, return JobResult; raise GuestError on failure."""
        return self.start(job, extra_args, timeout, accel, **kw).wait(
            check=check, expect_rc=expect_rc)

    def run_expect_fail(self, extra_args, timeout=60, accel="tcg"):
        """Start QEMU with a (bad) configuration that must fail at start-up.

        Returns (exit_code, stderr).  Raises GuestError if QEMU actually
        booted the guest (job markers seen) or did not exit within timeout."""
        vm = self.start("echo SHOULD-NOT-RUN", extra_args, timeout, accel)
        res = vm.wait(check=False)
        if res.timed_out or res.output is not None or res.qemu_rc == 0:
            raise GuestError(res.describe(
                "QEMU was expected to fail at start-up but did not"), res)
        return res.qemu_rc, res.stderr


class BareQemu:
    """A QEMU that boots nothing (-S), with a QMP socket in @workdir, for
    what realize does: .refused is its stderr when it exited at start-up,
    None while it runs."""

    def __init__(self, workdir, name, args, timeout=60):
        self.qmp_path = os.path.join(workdir, name + ".qmp")
        self.stderr_path = os.path.join(workdir, name + ".stderr")
        cmd = [qemu_binary(), "-nodefaults", "-no-user-config",
               "-display", "none", "-machine", "q35", "-accel", "tcg", "-S",
               "-qmp", "unix:%s,server=on,wait=off" % self.qmp_path] + args
        with open(self.stderr_path, "wb") as errf:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                         stdout=errf, stderr=errf)
        self.sock = None
        self.refused = None
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            # QMP answers once the main loop runs: the devices are realized
            try:
                self.sock = self._qmp_connect()
                return
            except OSError:
                if time.monotonic() > deadline:
                    self.proc.kill()
                    raise AssertionError("QEMU neither started nor exited "
                                         "in %d s: %s" % (timeout, cmd))
                time.sleep(0.05)
        with open(self.stderr_path, errors="replace") as f:
            self.refused = f.read()

    def _qmp_connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(60)
            sock.connect(self.qmp_path)
            self.reader = sock.makefile("rb")
            if not self.reader.readline():
                raise ConnectionError("QMP closed before its greeting")
            self._cmd(sock, "qmp_capabilities", {})
        except BaseException:
            sock.close()
            raise
        return sock

    def _cmd(self, sock, name, args):
        sock.sendall(json.dumps({"execute": name,
                                 "arguments": args}).encode() + b"\n")
        while True:
            line = self.reader.readline()
            if not line:
                raise ConnectionError("QMP closed while waiting for %s" %
                                      name)
            r = json.loads(line)
            if "return" in r or "error" in r:
                return r

    def cmd(self, name, /, **args):
        """Run QMP command @name; its "return", or raise RuntimeError"""
        r = self._cmd(self.sock, name, args)
        if "error" in r:
            raise RuntimeError("QMP %s failed: %s" % (name, r["error"]))
        return r["return"]

    def quit(self):
        """Quit QEMU and wait until it has exited"""
        try:
            self._cmd(self.sock, "quit", {})
        except ConnectionError:
            # QEMU may close the socket before its answer arrives
            pass
        self.sock.close()
        assert self.proc.wait(timeout=60) == 0


def wait_migrated(qmp, timeout):
    """Poll query-migrate through @qmp(name, **args) until the migration
    has completed; fail when it failed, was cancelled or took longer than
    @timeout seconds"""
    deadline = time.monotonic() + timeout
    while True:
        st = qmp("query-migrate")
        if st.get("status") == "completed":
            return
        assert st.get("status") not in ("failed", "cancelled"), st
        assert time.monotonic() < deadline, st
        time.sleep(0.05)


# ---------------------------------------------------------------- disks
DEVICE_KINDS = ("pfbd", "stock")


def device_kind():
    """Device under test: env PFBD_TEST_DEVICE = pfbd (default) | stock."""
    k = os.environ.get("PFBD_TEST_DEVICE", "pfbd")
    if k not in DEVICE_KINDS:
        raise ValueError("PFBD_TEST_DEVICE must be one of %s" % (DEVICE_KINDS,))
    return k


def parse_size(s):
    s = str(s).strip()
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    if s and s[-1].upper() in mult:
        return int(s[:-1]) * mult[s[-1].upper()]
    return int(s)


def disk_args(volume, kind=None, num_queues=1, iothreads=(), dev_id="disk0",
              **props):
    """QEMU args for one virtio-blk disk on `volume` ("file:/path" or
    "null:SIZE").

    kind "pfbd":  -device {"driver":"virtio-blk-pfbd","volume":volume,...}
    kind "stock": -blockdev file (aio=io_uring, cache.direct=on,
                  discard=unmap) or null-co, + -device virtio-blk-pci.
    iothreads: list of IOThread ids; one -object iothread per id is added and
    the queues are spread over them with iothread-vq-mapping (round-robin).
    Extra device properties go in **props (use the QEMU spelling via a dict
    like **{"write-zeroes": False})."""
    kind = kind or device_kind()
    args = []
    for t in iothreads:
        args += ["-object", "iothread,id=%s" % t]
    dev = {"id": dev_id, "num-queues": num_queues}
    if iothreads:
        dev["iothread-vq-mapping"] = [{"iothread": t} for t in iothreads]
    dev.update(props)
    if kind == "pfbd":
        d = {"driver": "virtio-blk-pfbd", "volume": volume}
        d.update(dev)
        args += ["-device", json.dumps(d)]
        return args
    eng, _, rest = volume.partition(":")
    node = dev_id + "-node"
    if eng == "file":
        bd = {"driver": "file", "filename": rest, "node-name": node,
              "cache": {"direct": True}, "aio": "io_uring", "discard": "unmap"}
    elif eng == "null":
        bd = {"driver": "null-co", "node-name": node, "size": parse_size(rest)}
    else:
        raise ValueError("stock device cannot use volume %r" % volume)
    d = {"driver": "virtio-blk-pci", "drive": node}
    d.update(dev)
    args += ["-blockdev", json.dumps(bd), "-device", json.dumps(d)]
    return args


def qemu_has_device(qemu, name):
    p = subprocess.run([qemu, "-nodefaults", "-machine", "none", "-device",
                        "help"], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT)
    return ('"%s"' % name) in p.stdout.decode(errors="replace")


def make_image(path, size="256M", prealloc=False):
    """Create a sparse (or zero-filled) image file of `size` bytes."""
    n = parse_size(size)
    with open(path, "wb") as f:
        if prealloc:
            chunk = b"\0" * (1 << 20)
            for _ in range(n // len(chunk)):
                f.write(chunk)
        f.truncate(n)
    return path


def shm_dir(need_bytes):
    """/dev/shm if it has room for need_bytes (+slack), else None."""
    try:
        st = os.statvfs("/dev/shm")
    except OSError:
        return None
    if st.f_bavail * st.f_frsize > need_bytes + (1 << 30):
        return "/dev/shm"
    return None


# ---------------------------------------------------------------- boot images
# The Debian system image of tests/image/build-image.sh (docs/images.rst),
# booted by the firmware from a disk instead of -kernel/-initrd.

IMAGE_NAME = "debian-bookworm.raw"


def image_dir():
    """Where build-image.sh caches the image (env PFBD_IMAGE_DIR, default
    <repo>/build/image)."""
    return os.environ.get("PFBD_IMAGE_DIR", os.path.join(REPO, "build", "image"))


def ensure_image(timeout=3600, log=None):
    """Build the Debian boot image if it is missing or stale (a no-op when
    its stamp matches); return the path of the cached raw image.  Boot a copy
    of it (cp --sparse=always): jobs write to the root file system."""
    out = image_dir()
    script = os.path.join(REPO, "tests", "image", "build-image.sh")
    if log:
        log("build-image.sh %s" % out)
    p = subprocess.run(["bash", script, out], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError("build-image.sh failed:\n" +
                           p.stdout.decode(errors="replace")[-4000:])
    return os.path.join(out, IMAGE_NAME)


def start_firmware_boot(guest, job, disks, timeout=None, accel=None, qmp=False,
                        smp=None, mem=None, no_reboot=False, extra_args=()):
    """Like Guest.start(), but SeaBIOS boots a disk: no -kernel/-initrd/
    -append, and a reboot in the guest resets the machine (the firmware runs
    again) unless no_reboot.  `disks` are the QEMU args of the disks (one with
    bootindex); the job goes to fw_cfg opt/pfbd/job as with Guest.start(), for
    the image's pfbd-autorun.  Returns a Vm; SeaBIOS' debug log is in
    <vm.workdir>/bios.log (JobResult.bios_log after wait())."""
    return guest.start(job, list(disks) + list(extra_args), timeout, accel,
                       qmp, smp, mem, reboot=not no_reboot,
                       firmware_boot=True)

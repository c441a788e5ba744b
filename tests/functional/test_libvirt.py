"""virtio-blk-pfbd under libvirt (docs/user-guide.rst, "Running under
libvirt"): libvirt has no element for the device, so a domain runs the
installed emulator (<emulator>), gets its IOThreads from <iothreads> and
the devices through <qemu:commandline>.

The test starts Debian's libvirtd (and virtlogd) itself unless one
answers already, and stops what it started.  It installs the emulator
(make install's script) into a work directory and defines a TCG domain,
run as libvirt's unprivileged user, that boots the Debian image of
tests/image/build-image.sh from a pfbd volume and has a second pfbd volume
with 2 queues on 2 IOThreads.  The guest's pfbd-autorun job runs fio
verify on the second volume, then waits for it to go away.  The test
reads the device's statistics through libvirt (virsh qemu-monitor-command,
and pfbd-stat --domain), hot-unplugs the second volume with device_del,
plugs a new volume into the same root port with device_add, on which the
guest runs fio verify, and the guest then powers off: the domain must end
"shut off (shutdown)".

Env: PFBD_LIBVIRT_TIMEOUT (seconds for the guest's run, default 900),
     PFBD_IMAGE_DIR (image cache), PFBD_KEEP=1 (keep the work directory).
"""

import json
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import xml.sax.saxutils

import pytest

import pfbdguest
from pfbdguest import BEGIN, END_PREFIX, make_image

URI = "qemu:///system"
TIMEOUT = int(os.environ.get("PFBD_LIBVIRT_TIMEOUT", "900"))
QEMU_USER = "libvirt-qemu"
DATA_SIZE = "256M"
BOOT_SLOT = 0x10        # on pcie.0, clear of the slots libvirt assigns
# The data disk on a root port of its own (pci.1): pcie.0 takes no hot-unplug
DATA_PORT = "pci.1"

JOB = r"""
set -e
# The disk whose serial is $1 (names change: a new disk may take the name
# of the one unplugged)
disk() {
    for b in /sys/block/vd*; do
        [ "$(cat $b/serial 2>/dev/null)" = "$1" ] && echo /dev/$(basename $b)
    done
    return 0
}
DATA=$(disk pfbd-data)
[ -n "$DATA" ] || { echo "no disk with serial pfbd-data"; ls -l /sys/block; exit 1; }
echo "DATA $DATA queues=$(ls /sys/block/${DATA#/dev/}/mq | wc -l)"
fio --name=libvirt --filename=$DATA --direct=1 --ioengine=io_uring \
    --rw=randwrite --bs=4k --iodepth=16 --numjobs=2 --size=16M \
    --offset_increment=16M --verify=crc32c --do_verify=1 --verify_fatal=1 \
    --group_reporting
echo "FIO-OK"
# The host unplugs the disk now, and plugs a new one into the same port
i=0
while [ -n "$(disk pfbd-data)" ] && [ $i -lt 600 ]; do
    sleep 1; i=$((i + 1))
done
[ -z "$(disk pfbd-data)" ] || { echo "still plugged"; exit 1; }
echo "UNPLUGGED"
i=0
while [ -z "$(disk pfbd-new)" ] && [ $i -lt 600 ]; do
    sleep 1; i=$((i + 1))
done
NEW=$(disk pfbd-new)
[ -n "$NEW" ] || { echo "no hot-plugged disk"; exit 1; }
fio --name=plugged --filename=$NEW --direct=1 --ioengine=libaio \
    --rw=randwrite --bs=4k --iodepth=8 --size=8M --verify=crc32c \
    --do_verify=1 --verify_fatal=1
echo "PLUGGED-OK"
"""


def virsh(*args, check=True, timeout=120):
    r = subprocess.run(["virsh", "-c", URI] + list(args),
                       capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError("virsh %s: %s%s" % (" ".join(args), r.stdout,
                                                 r.stderr))
    return r


def qmp(domain, name, **arguments):
    cmd = {"execute": name}
    if arguments:
        cmd["arguments"] = arguments
    reply = json.loads(virsh("qemu-monitor-command", domain,
                             json.dumps(cmd)).stdout)
    assert "return" in reply, reply
    return reply["return"]


def wait_for(what, cond, timeout, diag=lambda: ""):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail("timed out after %ds waiting for %s\n%s"
                        % (timeout, what, diag()))
        time.sleep(0.5)


def daemon_answers():
    return subprocess.run(["virsh", "-c", URI, "uri"],
                          capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def libvirtd():
    """Debian's libvirtd on qemu:///system: the running one, or one started
    here (with virtlogd) and stopped after the module."""
    if shutil.which("libvirtd") is None:
        pytest.fail("libvirtd not installed: run scripts/install-deps.sh")
    started = []
    if not daemon_answers():
        for d in ("virtlogd", "libvirtd"):
            pidfile = "/run/pfbd-test-%s.pid" % d
            if subprocess.run(["pgrep", "-x", d],
                              capture_output=True).returncode != 0:
                subprocess.run([d, "--daemon", "--pid-file", pidfile],
                               check=True)
                started.append(pidfile)
        wait_for("libvirtd to answer", daemon_answers, 60)
    yield
    for pidfile in reversed(started):
        try:
            with open(pidfile) as f:
                pid = int(f.read())
            os.kill(pid, 15)
            wait_for("pid %d to exit" % pid,
                     lambda: not os.path.exists("/proc/%d" % pid), 60)
        except (OSError, ValueError):
            pass


@pytest.fixture
def workdir():
    """A directory libvirt's QEMU user can reach (pytest's tmp is 0700)."""
    d = tempfile.mkdtemp(prefix="pfbd-libvirt-", dir="/var/tmp")
    os.chmod(d, 0o755)
    yield d
    if os.environ.get("PFBD_KEEP"):
        print("[libvirt] kept %s" % d)
    else:
        shutil.rmtree(d, ignore_errors=True)


def domain_xml(name, emulator, boot, data, job, console):
    def dev(props):
        return json.dumps(props, separators=(",", ":"))
    args = [
        "-device", dev({"driver": "virtio-blk-pfbd", "id": "boot0",
                        "volume": "file:" + boot, "num-queues": 2,
                        "bootindex": 1, "bus": "pcie.0",
                        "addr": "0x%x" % BOOT_SLOT}),
        "-device", dev({"driver": "virtio-blk-pfbd", "id": "data0",
                        "volume": "file:" + data, "num-queues": 2,
                        "iothread-vq-mapping": [{"iothread": "iothread1"},
                                                {"iothread": "iothread2"}],
                        "serial": "pfbd-data", "bus": DATA_PORT}),
        "-fw_cfg", "name=opt/pfbd/job,file=" + job,
    ]
    q = xml.sax.saxutils.quoteattr
    cmdline = "\n".join("    <qemu:arg value=%s/>" % q(a) for a in args)
    return """<domain type='qemu'
        xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>%(name)s</name>
  <memory unit='MiB'>1024</memory>
  <vcpu>2</vcpu>
  <iothreads>2</iothreads>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <devices>
    <emulator>%(emulator)s</emulator>
    <serial type='file'>
      <source path=%(console)s/>
      <target port='0'/>
    </serial>
    <controller type='pci' index='1' model='pcie-root-port'/>
    <controller type='usb' model='none'/>
    <video><model type='none'/></video>
    <memballoon model='none'/>
  </devices>
  <qemu:commandline>
%(cmdline)s
  </qemu:commandline>
</domain>
""" % {"name": name, "emulator": emulator, "console": q(console),
       "cmdline": cmdline}


def read(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def test_libvirt_domain(libvirtd, workdir):
    try:
        image = pfbdguest.ensure_image(timeout=3600)
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        pytest.fail("could not build the boot image: %s" % e)
    prefix = os.path.join(workdir, "prefix")
    pfbdguest.install_sh("install", prefix)
    emulator = os.path.join(prefix, "bin", "pfbd-qemu-system-x86_64")

    boot = os.path.join(workdir, "boot.raw")
    data = os.path.join(workdir, "data.raw")
    job = os.path.join(workdir, "job.sh")
    console = os.path.join(workdir, "console.log")
    subprocess.run(["cp", "--sparse=always", image, boot], check=True)
    make_image(data, DATA_SIZE)
    with open(job, "w") as f:
        f.write(JOB)
    # libvirt runs QEMU as its own user, and relabels only the disks it
    # knows: ours are not among them
    user = pwd.getpwnam(QEMU_USER)
    for p in (workdir, boot, data, job):
        os.chown(p, user.pw_uid, user.pw_gid)

    name = "pfbd-test-%d" % os.getpid()
    xml_path = os.path.join(workdir, "domain.xml")
    with open(xml_path, "w") as f:
        f.write(domain_xml(name, emulator, boot, data, job, console))

    def diag():
        log = "/var/log/libvirt/qemu/%s.log" % name
        return ("---- console (last 40 lines) ----\n%s\n"
                "---- %s (last 20 lines) ----\n%s" % (
                    "\n".join(read(console).splitlines()[-40:]), log,
                    "\n".join(read(log).splitlines()[-20:])))

    virsh("define", xml_path)
    try:
        virsh("start", name)
        # The emulator and its IOThreads are libvirt's
        threads = qmp(name, "query-iothreads")
        assert sorted(t["id"] for t in threads) == ["iothread1", "iothread2"]

        wait_for("the guest's fio verify", lambda: "FIO-OK" in read(console)
                 or END_PREFIX in read(console), TIMEOUT, diag)
        assert "FIO-OK" in read(console), diag()

        # Statistics through libvirt, which owns the monitor
        stats = qmp(name, "qom-get",
                    path="/machine/peripheral/data0/virtio-backend",
                    property="stats")
        assert len(stats["queues"]) == 2
        for q in stats["queues"]:
            assert q["requests"]["write"] > 0, stats
        r = subprocess.run([os.path.join(prefix, "bin", "pfbd-stat"),
                            "--connect", URI, "--domain", name, "--json",
                            "-n", "1", "data0"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        seen = json.loads(r.stdout)["stats"]
        assert [q["requests"]["write"] for q in seen["queues"]] >= \
            [q["requests"]["write"] for q in stats["queues"]]

        # Hot-unplug: the guest lets the disk go, QEMU deletes the device
        qmp(name, "device_del", id="data0")
        wait_for("data0 to be deleted",
                 lambda: "data0" not in [p["name"] for p in qmp(
                     name, "qom-list", path="/machine/peripheral")],
                 300, diag)

        # Hot-plug a new volume into the freed root port
        new = os.path.join(workdir, "new.raw")
        make_image(new, "64M")
        os.chown(new, user.pw_uid, user.pw_gid)
        qmp(name, "device_add", driver="virtio-blk-pfbd", id="new0",
            volume="file:" + new, serial="pfbd-new", bus=DATA_PORT,
            **{"iothread-vq-mapping": [{"iothread": "iothread1"}]})

        # The job ends, pfbd-autorun powers the guest off
        wait_for("the domain to shut off",
                 lambda: virsh("domstate", name).stdout.strip() == "shut off",
                 TIMEOUT, diag)
        assert virsh("domstate", "--reason", name).stdout.strip() == \
            "shut off (shutdown)", diag()
        con = read(console).replace("\r", "")
        out = con.split(BEGIN + "\n")[-1]
        assert "UNPLUGGED" in out and "PLUGGED-OK" in out, diag()
        assert END_PREFIX + "0" in out, diag()
    finally:
        virsh("destroy", name, check=False)
        virsh("undefine", name, check=False)

"""Image locking: virtio-blk-pfbd locks a file volume as QEMU's file
driver (file-posix) locks an image, so that two QEMUs, a stock QEMU and
qemu-img see each other's users and refuse what would corrupt the image.

The QEMUs here boot nothing: a device's locks are taken at realize, and a
QEMU that answers QMP has realized its devices."""

import json
import os
import subprocess

import pytest

import pfbdguest
from pfbdguest import make_image

pytestmark = pytest.mark.usefixtures("pfbd_only")

WRITE_LOCK = 'Failed to get "write" lock'
SHARED_WRITE_LOCK = 'Failed to get shared "write" lock'
HINT = "Is another process using the image"


def pfbd_dev(image, **props):
    d = {"driver": "virtio-blk-pfbd", "volume": "file:" + image}
    d.update(props)
    return ["-device", json.dumps(d)]


def stock_dev(image, read_only=False):
    bd = {"driver": "file", "filename": image, "node-name": "n0",
          "read-only": read_only}
    return ["-blockdev", json.dumps(bd),
            "-device", "virtio-blk-pci,drive=n0"]


@pytest.fixture
def qemus(tmp_path):
    """start(args) -> a running Qemu (or fails the test with its stderr);
    refused(args) -> the stderr of a QEMU that must exit at start-up"""
    started = []

    class Starter:
        def start(self, args):
            q = pfbdguest.BareQemu(str(tmp_path), "q%d" % len(started),
                                   args)
            started.append(q)
            if q.refused is not None:
                raise AssertionError("QEMU refused to start: " + q.refused)
            return q

        def refused(self, args):
            q = pfbdguest.BareQemu(str(tmp_path), "q%d" % len(started),
                                   args)
            started.append(q)
            if q.refused is None:
                raise AssertionError("QEMU started, but the image was in "
                                     "use: %s" % args)
            assert q.proc.returncode == 1, q.refused
            return q.refused

    yield Starter()
    for q in started:
        if q.sock:
            q.sock.close()
        if q.proc.poll() is None:
            q.proc.kill()
            q.proc.wait()


@pytest.fixture
def image(tmp_path):
    return make_image(str(tmp_path / "disk.img"), "64M")


def qemu_img(*args):
    exe = os.path.join(os.path.dirname(os.path.realpath(
        pfbdguest.qemu_binary())), "qemu-img")
    if not os.access(exe, os.X_OK):
        pytest.fail("%s not built: make build builds it" % exe)
    return subprocess.run([exe] + list(args), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=60)


def test_second_pfbd_writer_refused(qemus, image):
    qemus.start(pfbd_dev(image))
    err = qemus.refused(pfbd_dev(image))
    assert WRITE_LOCK in err and HINT in err and image in err, err


def test_pfbd_and_stock_see_each_other(qemus, image):
    first = qemus.start(pfbd_dev(image))
    err = qemus.refused(stock_dev(image))
    assert WRITE_LOCK in err, err
    first.quit()

    qemus.start(stock_dev(image))
    err = qemus.refused(pfbd_dev(image))
    assert WRITE_LOCK in err, err


def test_qemu_img_and_release_on_exit(qemus, image, tmp_path):
    first = qemus.start(pfbd_dev(image))
    # A reader that wants consistent data needs -U (force share), as
    # with a stock QEMU using the image.  (qemu-img info on a raw image
    # reads nothing and takes no lock: it works with stock as with pfbd.)
    copy = str(tmp_path / "copy.img")
    r = qemu_img("convert", "-f", "raw", "-O", "raw", image, copy)
    out = r.stdout.decode(errors="replace")
    assert r.returncode != 0 and SHARED_WRITE_LOCK in out, out
    r = qemu_img("convert", "-U", "-f", "raw", "-O", "raw", image, copy)
    assert r.returncode == 0, r.stdout
    r = qemu_img("resize", "-f", "raw", image, "128M")
    out = r.stdout.decode(errors="replace")
    assert r.returncode != 0 and WRITE_LOCK in out, out
    assert os.path.getsize(image) == 64 << 20

    # The locks go with the QEMU
    first.quit()
    r = qemu_img("resize", "-f", "raw", image, "128M")
    assert r.returncode == 0, r.stdout
    assert os.path.getsize(image) == 128 << 20


def test_read_only_users(qemus, image):
    # A reader is refused while a writer holds the image...
    first = qemus.start(pfbd_dev(image))
    err = qemus.refused(pfbd_dev(image, **{"read-only": True}))
    assert SHARED_WRITE_LOCK in err, err
    err = qemus.refused(stock_dev(image, read_only=True))
    assert SHARED_WRITE_LOCK in err, err
    first.quit()

    # ...readers share the image with each other and with qemu-img info,
    # and keep writers out
    qemus.start(pfbd_dev(image, **{"read-only": True}))
    qemus.start(pfbd_dev(image, **{"read-only": True}))
    qemus.start(stock_dev(image, read_only=True))
    r = qemu_img("convert", "-f", "raw", "-O", "raw", image,
                 image + ".copy")
    assert r.returncode == 0, r.stdout
    err = qemus.refused(pfbd_dev(image))
    assert WRITE_LOCK in err, err


def test_share_rw(qemus, image):
    """share-rw=on: writers that share writing (a cluster file system)"""
    qemus.start(pfbd_dev(image, **{"share-rw": True}))
    qemus.start(pfbd_dev(image, **{"share-rw": True}))
    err = qemus.refused(pfbd_dev(image))
    assert SHARED_WRITE_LOCK in err, err


def test_locking_off(qemus, image):
    qemus.start(pfbd_dev(image))
    qemus.start(pfbd_dev(image, locking="off"))


def test_locking_on_needs_a_file(qemus):
    err = qemus.refused(["-device", json.dumps(
        {"driver": "virtio-blk-pfbd", "volume": "null:1G",
         "locking": "on"})])
    assert "locking=on" in err and "null" in err, err
    # auto (the default) takes no lock where there is no file
    qemus.start(["-device", json.dumps(
        {"driver": "virtio-blk-pfbd", "volume": "null:1G",
         "locking": "auto"})])


def test_lock_moves_with_migration(qemus, image, tmp_path):
    """The source of a migration lets the image go with its device state
    and takes it back when it runs again; the destination starts on a
    locked image and takes the lock when its VM first runs (live
    migration with a guest: test_error_policy.py)."""
    state = "file:" + str(tmp_path / "vm.state")
    src = qemus.start(pfbd_dev(image))
    src.cmd("migrate", uri=state)
    pfbdguest.wait_migrated(src.cmd, 60)
    # Migrated: another writer may take the image...
    other = qemus.start(pfbd_dev(image))
    other.quit()
    # ...until the source runs again
    src.cmd("cont")
    err = qemus.refused(pfbd_dev(image))
    assert WRITE_LOCK in err, err

    # A destination starts while the source holds the image
    dst = qemus.start(pfbd_dev(image) + ["-incoming", state])
    src.quit()
    # Until it runs, the destination leaves the image free
    reader = qemus.start(pfbd_dev(image, **{"read-only": True}))
    reader.quit()
    dst.cmd("cont")
    err = qemus.refused(pfbd_dev(image))
    assert WRITE_LOCK in err, err

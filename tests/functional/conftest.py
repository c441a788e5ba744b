"""pytest fixtures for the pfbd-qemu functional tests (real Linux guest).

Run:  /usr/bin/python3 -m pytest tests/functional -v
Env:  PFBD_QEMU (binary), PFBD_ACCEL (tcg|kvm), PFBD_TEST_DEVICE (pfbd|stock),
      PFBD_KEEP=1 (keep per-run work dirs with console log and cmdline).
See pfbdguest.py for the details.
"""

import os
import shutil
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import pfbdguest  # noqa: E402
from pfbdguest import GuestError, disk_args, make_image  # noqa: E402,F401


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

"""Bad virtio-blk-pfbd configurations: QEMU refuses to start with exit
status 1 and a message naming the culprit; never a crash, never a hang."""

import json

import pytest

from pfbdguest import make_image


def dev(**props):
    d = {"driver": "virtio-blk-pfbd"}
    d.update(props)
    return ["-device", json.dumps(d)]


def iothreads(*ids):
    args = []
    for i in ids:
        args += ["-object", "iothread,id=%s" % i]
    return args


@pytest.fixture
def image(tmp_path):
    return make_image(str(tmp_path / "disk.img"), "16M")


def cases(image):
    vol = "file:" + image
    return {
        "missing volume": (
            ["-device", "virtio-blk-pfbd"],
            "property 'volume' is required"),
        "path does not exist": (
            dev(volume="file:/nonexistent/pfbd.img"),
            "/nonexistent/pfbd.img"),
        "unknown engine prefix": (
            dev(volume="bogus:thing"),
            "unknown engine 'bogus'"),
        "mapping to a missing IOThread": (
            iothreads("io0") + dev(volume=vol, **{
                "num-queues": 2,
                "iothread-vq-mapping": [{"iothread": "io0"},
                                        {"iothread": "nope"}]}),
            'IOThread "nope" object does not exist'),
        "vq index >= num-queues": (
            iothreads("io0") + dev(volume=vol, **{
                "num-queues": 2,
                "iothread-vq-mapping": [{"iothread": "io0",
                                         "vqs": [0, 1, 2]}]}),
            "vq index 2 for IOThread \"io0\" must be less than num_queues 2"),
        "vq mapped twice": (
            iothreads("io0", "io1") + dev(volume=vol, **{
                "num-queues": 2,
                "iothread-vq-mapping": [{"iothread": "io0", "vqs": [0, 1]},
                                        {"iothread": "io1", "vqs": [1]}]}),
            "cannot assign vq 1 to IOThread \"io1\" because it is already "
            "assigned"),
        "vq not mapped": (
            iothreads("io0") + dev(volume=vol, **{
                "num-queues": 2,
                "iothread-vq-mapping": [{"iothread": "io0", "vqs": [0]}]}),
            "missing vq 1 IOThread assignment"),
        "rerror=enospc": (
            dev(volume=vol, rerror="enospc"),
            "rerror=enospc is not supported"),
        "werror not an action": (
            dev(volume=vol, werror="pause"),
            "werror"),
        "num-queues 0": (
            dev(volume=vol, **{"num-queues": 0}),
            "num-queues property must be larger than 0"),
        "block size not a power of 2": (
            dev(volume=vol, logical_block_size=1000),
            "logical_block_size must be a power of 2"),
        "logical > physical block size": (
            dev(volume=vol, logical_block_size=4096,
                physical_block_size=512),
            "logical_block_size > physical_block_size"),
        "a block larger than the largest request": (
            dev(volume=vol, logical_block_size=262144,
                physical_block_size=262144, **{"queue-size": 4}),
            "logical_block_size 262144 is larger than the largest request "
            "the device takes (2 segments of 64 KiB)"),
        "iothread and iothread-vq-mapping": (
            iothreads("io0") + dev(volume=vol, iothread="io0", **{
                "iothread-vq-mapping": [{"iothread": "io0"}]}),
            "iothread and iothread-vq-mapping properties cannot be set at "
            "the same time"),
        "queue-size not a power of 2": (
            dev(volume=vol, **{"queue-size": 100}),
            "invalid queue-size property (100)"),
        "ioeventfd off": (
            dev(volume=vol, ioeventfd=False),
            "virtio-blk-pfbd needs ioeventfd"),
        "bad null size": (
            dev(volume="null:12Q"),
            "null:12Q"),
        "fixed-buffers on an engine without them": (
            dev(volume="null:16M", **{"fixed-buffers": True}),
            "cannot register the guest RAM with engine queue 0 of volume "
            "'null:16M' (fixed-buffers=on): Operation not supported"),
        "iowq-cpus not a CPU list": (
            dev(volume=vol, **{"iowq-cpus": "1-0"}),
            "iowq-cpus '1-0' is not a list of CPUs like '0,2-3'"),
        "iowq-cpus with a CPU the host lacks": (
            dev(volume=vol, **{"iowq-cpus": "0,1023"}),
            "iowq-cpus '0,1023' names a CPU that is not online"),
        "iowq-cpus on the null engine": (
            dev(volume="null:16M", **{"iowq-cpus": "0"}),
            "iowq-cpus applies to the file engine only, not to null"),
        "fixed-buffers with virtio-mem": (
            ["-m", "512M,maxmem=1G", "-object",
             "memory-backend-ram,id=vmem0,size=128M", "-device",
             "virtio-mem-pci,memdev=vmem0"] +
            dev(volume=vol, **{"fixed-buffers": True}),
            "fixed-buffers=on pins the guest RAM, which a device that "
            "discards RAM (virtio-mem) does not allow"),
    }


CASE_NAMES = list(cases("x").keys())


@pytest.mark.parametrize("name", CASE_NAMES)
def test_bad_config_refused(guest, image, name):
    args, message = cases(image)[name]
    rc, stderr = guest.run_expect_fail(args)
    assert rc == 1, "%s: expected exit status 1, got %s\n%s" % (
        name, rc, stderr)
    assert message in stderr, "%s: expected %r in QEMU's message:\n%s" % (
        name, message, stderr)

"""make install and make uninstall (scripts/install.sh), into a DESTDIR:
the installed emulator keeps clear of Debian's QEMU, finds its firmware
without -L, runs the device, and uninstall leaves nothing behind."""

import json
import os
import subprocess
import time

from pfbdguest import install_sh


def files_under(root):
    found = []
    for d, _, names in os.walk(root):
        found += [os.path.relpath(os.path.join(d, n), root) for n in names]
    return sorted(found)


def qmp_session(qemu, args, commands, timeout=120):
    """Start @qemu with a QMP monitor on stdio, send @commands (then quit);
    returns the replies to @commands"""
    lines = [{"execute": "qmp_capabilities"}] + commands + \
        [{"execute": "quit"}]
    r = subprocess.run([qemu, "-nodefaults", "-display", "none",
                        "-qmp", "stdio"] + args,
                       input="".join(json.dumps(c) + "\n" for c in lines),
                       capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, "%s exited with %d:\n%s" % (
        qemu, r.returncode, r.stderr)
    replies = [json.loads(x) for x in r.stdout.splitlines() if x.strip()]
    replies = [x for x in replies if "return" in x or "error" in x]
    # qmp_capabilities, the commands, quit
    assert len(replies) == len(commands) + 2, r.stdout
    return replies[1:-1]


def test_install_run_uninstall(tmp_path):
    dest = tmp_path / "root"
    out = install_sh("install", "/usr", dest)
    assert "bin/pfbd-qemu-system-x86_64" in out
    usr = dest / "usr"
    qemu = str(usr / "bin" / "pfbd-qemu-system-x86_64")

    # Next to Debian's QEMU: nothing of its names
    installed = files_under(dest)
    assert "usr/bin/qemu-system-x86_64" not in installed
    assert not [f for f in installed if f.startswith("usr/share/qemu/")]
    for f in ["usr/bin/pfbd-qemu-system-x86_64", "usr/bin/pfbd-stat",
              "usr/share/man/man1/pfbd-stat.1.gz",
              "usr/share/man/man1/pfbd-qemu-system-x86_64.1.gz",
              "usr/share/doc/pfbd-qemu/user-guide.rst",
              "usr/share/doc/pfbd-qemu/COPYING",
              "usr/share/pfbd-qemu/installed-files"]:
        assert f in installed
    with open(usr / "share" / "pfbd-qemu" / "installed-files") as f:
        assert sorted(f.read().split()) == sorted(
            os.path.relpath(x, "usr") for x in installed)

    # Its data directory relative to where it lies, Debian's firmware
    r = subprocess.run([qemu, "-L", "help"], capture_output=True,
                       text=True, timeout=60)
    dirs = [os.path.normpath(d) for d in r.stdout.split()]
    assert str(usr / "share" / "pfbd-qemu") in dirs, r.stdout
    assert "/usr/share/seabios" in dirs, r.stdout

    r = subprocess.run([qemu, "-device", "virtio-blk-pfbd,help"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "volume=" in r.stdout and "iothread-vq-mapping=" in r.stdout

    # A q35 machine loads its BIOS at start: without -L, from seabios
    replies = qmp_session(qemu, [
        "-machine", "q35", "-accel", "qtest",
        "-device", "virtio-blk-pfbd,id=d0,volume=null:16M"], [
        {"execute": "qom-get",
         "arguments": {"path": "/machine/peripheral/d0/virtio-backend",
                       "property": "volume-size"}}])
    assert replies[0]["return"] == 16 << 20

    # pfbd-stat runs from where it was installed, with the qemu.qmp
    # installed next to it: it reads the statistics over a QMP socket
    r = subprocess.run([str(usr / "bin" / "pfbd-stat"), "--help"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "usage" in r.stdout.lower(), r.stderr
    sock = str(tmp_path / "qmp.sock")
    vm = subprocess.Popen([qemu, "-nodefaults", "-display", "none",
                           "-machine", "q35", "-accel", "qtest",
                           "-qmp", "unix:%s,server=on,wait=off" % sock,
                           "-device", "virtio-blk-pfbd,id=d0,"
                           "volume=null:16M,num-queues=2"],
                          stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(sock):
            assert vm.poll() is None, vm.stderr.read()
            assert time.monotonic() < deadline, "no QMP socket " + sock
            time.sleep(0.05)
        env = dict(os.environ)
        env.pop("PFBD_QEMU_PYTHON", None)
        r = subprocess.run([str(usr / "bin" / "pfbd-stat"), "--json",
                            "-n", "1", sock, "d0"],
                           capture_output=True, text=True, timeout=60,
                           env=env)
        assert r.returncode == 0, r.stderr
        queues = json.loads(r.stdout)["stats"]["queues"]
        assert [q["index"] for q in queues] == [0, 1], r.stdout
    finally:
        vm.kill()
        vm.wait()

    install_sh("uninstall", "/usr", dest)
    assert files_under(dest) == []
    # Only our own directories went: the rest of the tree stays
    assert (usr / "bin").is_dir() and (usr / "share" / "doc").is_dir()
    assert (usr / "share" / "man" / "man1").is_dir()
    assert not (usr / "share" / "pfbd-qemu").exists()


def test_uninstall_keeps_other_files(tmp_path):
    dest = tmp_path / "root"
    other = dest / "usr" / "local" / "bin" / "qemu-system-x86_64"
    other.parent.mkdir(parents=True)
    other.write_text("not ours\n")
    install_sh("install", "/usr/local", dest)
    install_sh("uninstall", "/usr/local", dest)
    assert files_under(dest) == ["usr/local/bin/qemu-system-x86_64"]
    assert other.read_text() == "not ours\n"

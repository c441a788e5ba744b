#!/bin/bash
# install-deps.sh: install every Debian package that building pfbd-qemu,
# its tests and its test guest need.  Idempotent; run as root.
#
# The packages come in two lists: what building the emulator needs (a
# plain `make` checks those only) and what the tests, the test guest,
# the image and the package need on top (`make deps` installs both).
#
# On bookworm it adds the bookworm-backports suite (meson >= 1.5 and
# python3-pycotap live there) and a deb-src entry for trixie (the QEMU
# 10.0.x source package), reusing the URI of the machine's existing Debian
# entry.  On trixie and later only the deb-src entry is added.

set -euo pipefail

# --build: only what building needs
# --fuzz: also what `make fuzz` needs (clang and its libFuzzer runtime)
# --check: install nothing and touch no apt source: list what building
# needs and is missing, and exit 1 if anything is (what a plain `make`
# does)
fuzz=
check=
build_only=
case "${1:-}" in
--build) build_only=1 ;;
--fuzz) fuzz=1 ;;
--check) check=1; build_only=1 ;;
esac

say() { echo "install-deps: $*"; }

if [ "$(id -u)" != 0 ]; then
    SUDO=sudo
else
    SUDO=
fi

. /etc/os-release
codename=${VERSION_CODENAME:-}
if [ "${ID:-}" != debian ] || [ -z "$codename" ]; then
    say "this script knows Debian only (found ${PRETTY_NAME:-unknown})" >&2
    exit 1
fi

add_sources() {
# The URI of the machine's own Debian entry (no host name in the project)
uri=$(bash "$(dirname "$0")/debian-uri.sh" "$codename" || true)
if [ -z "$uri" ]; then
    say "no Debian entry for '$codename' found in /etc/apt; cannot add suites" >&2
    exit 1
fi

list=/etc/apt/sources.list.d/pfbd-qemu.sources
if [ "$codename" = bookworm ]; then
    cat >"$want" <<EOT
# Added by pfbd-qemu scripts/install-deps.sh
Types: deb deb-src
URIs: $uri
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: $uri
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOT
else
    cat >"$want" <<EOT
# Added by pfbd-qemu scripts/install-deps.sh
Types: deb-src
URIs: $uri
Suites: $codename
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOT
fi

if ! cmp -s "$want" "$list"; then
    say "adding apt sources in $list (URI $uri)"
    $SUDO cp "$want" "$list"
    $SUDO chmod 644 "$list"
    need_update=1
fi
}
if [ -z "$check" ]; then
    want=$(mktemp)
    trap 'rm -f "$want"' EXIT
    add_sources
fi

pkgs=(
    # QEMU build
    gcc make ninja-build pkg-config python3 python3-venv ccache
    libglib2.0-dev libpixman-1-dev zlib1g-dev libfdt-dev flex bison
    liburing-dev libaio-dev librbd-dev libzookeeper-mt-dev
    # upstream source and its unpacking
    dpkg-dev xz-utils patch git
    # the emulator finds its firmware in Debian's packages
    seabios qemu-system-data ipxe-qemu
)
test_pkgs=(
    # tests and the test guest
    python3-pytest fio busybox-static cpio kmod util-linux e2fsprogs
    # the throwaway Ceph cluster of the rbd tests (tests/ceph/)
    ceph-mon ceph-osd ceph-common jq uuid-runtime iproute2
    # the ZooKeeper server of the pureflash tests (tests/pureflash/)
    zookeeper
    # the bootable Debian image (tests/image/build-image.sh)
    mmdebstrap grub-pc-bin fdisk
    # the Debian package (make deb: built in a fresh root of mmdebstrap)
    # and its install test (make check-deb)
    lintian
    # libvirt (tests/functional/test_libvirt.py)
    libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients
)
if [ -z "$build_only" ]; then
    pkgs+=("${test_pkgs[@]}")
fi
if [ -n "$fuzz" ]; then
    pkgs+=(clang libclang-rt-dev)
fi
bpo_pkgs=(meson)
[ -n "$build_only" ] || bpo_pkgs+=(python3-pycotap)

missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null |
        grep -q '^install ok installed' || missing+=("$p")
done
meson_ok=0
if command -v meson >/dev/null &&
   dpkg --compare-versions "$(meson --version)" ge 1.5; then
    meson_ok=1
fi
pycotap_ok=0
if [ -n "$build_only" ] || /usr/bin/python3 -c 'import pycotap' 2>/dev/null; then
    pycotap_ok=1
fi

if [ ${#missing[@]} = 0 ] && [ $meson_ok = 1 ] && [ $pycotap_ok = 1 ]; then
    say "all packages present"
    exit 0
fi
if [ -n "$check" ]; then
    [ $meson_ok = 1 ] || missing+=("meson>=1.5")
    [ $pycotap_ok = 1 ] || missing+=(python3-pycotap)
    say "missing: ${missing[*]}; run 'make deps' (as root) to install them" >&2
    exit 1
fi

if [ -n "${need_update:-}" ] ||
   [ -z "$(find /var/lib/apt/lists -name '*Sources*' -mmin -1440 2>/dev/null)" ]; then
    say "apt-get update"
    $SUDO apt-get update -q
fi
export DEBIAN_FRONTEND=noninteractive
if [ ${#missing[@]} != 0 ]; then
    say "installing: ${missing[*]}"
    $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
if [ $meson_ok = 0 ] || [ $pycotap_ok = 0 ]; then
    if [ "$codename" = bookworm ]; then
        say "installing from bookworm-backports: ${bpo_pkgs[*]}"
        $SUDO apt-get install -y -q -t bookworm-backports "${bpo_pkgs[@]}"
    else
        $SUDO apt-get install -y -q "${bpo_pkgs[@]}"
    fi
fi
say "done"

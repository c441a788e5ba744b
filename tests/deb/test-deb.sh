#!/bin/bash
# test-deb.sh DEB: install the pfbd-qemu package DEB (make deb) with
# apt-get into a fresh Debian root made with mmdebstrap (the host's
# release and archive entry, scripts/debian-uri.sh), then run what it
# installed there: the device's help, a q35 machine (qtest accelerator) with
# a null volume whose size QMP reads back, pfbd-stat --help.  Exit status 0
# when all of that works; the root is thrown away.  Run as root.
set -euo pipefail

deb=$(readlink -f "${1:?usage: $0 DEB}")
[ -f "$deb" ] || { echo "test-deb: no file $deb" >&2; exit 1; }
here=$(cd "$(dirname "$0")" && pwd)
. /etc/os-release
suite=$VERSION_CODENAME
uri=$(bash "$here/../../scripts/debian-uri.sh" "$suite")
cache=$(dirname "$deb")/chroot-debs
mkdir -p "$cache"
log=$(mktemp)
trap 'rm -f "$log"' EXIT

say() { echo "test-deb: $*"; }

# Dependencies from the shared libraries it links, and the firmware
deps=$(dpkg-deb -f "$deb" Depends)
say "Depends: $deps"
for p in libglib2.0-0 liburing2 librbd1 libfdt1 seabios ipxe-qemu \
         qemu-system-data; do
    case " $deps," in
    *" $p,"* | *" $p "*) ;;
    *) say "FAIL: $p is not in Depends"; exit 1 ;;
    esac
done

# The checks, run in the new root after the package is installed
checks='
set -eu
q=/usr/bin/pfbd-qemu-system-x86_64
test -x $q
test ! -e /usr/bin/qemu-system-x86_64
$q -device virtio-blk-pfbd,help | grep -q "volume="
out=$(printf "%s\n" "{\"execute\": \"qmp_capabilities\"}" \
    "{\"execute\": \"qom-get\", \"arguments\": {\"path\": \"/machine/peripheral/d0/virtio-backend\", \"property\": \"volume-size\"}}" \
    "{\"execute\": \"quit\"}" |
    $q -machine q35 -accel qtest -nodefaults -display none -qmp stdio \
       -device virtio-blk-pfbd,id=d0,volume=null:16M)
echo "$out" | grep -q "\"return\": 16777216" || {
    echo "no volume size in: $out"; exit 1; }
pfbd-stat --help >/dev/null
echo "test-deb: installed package works"
'

say "mmdebstrap $suite, then apt-get install ./$(basename "$deb")"
if ! mmdebstrap --mode=root --format=null --variant=apt \
    --aptopt='Acquire::Languages "none"' \
    --setup-hook='mkdir -p "$1/var/cache/apt/archives"' \
    --setup-hook="sync-in $cache /var/cache/apt/archives" \
    --customize-hook="copy-in $deb /tmp" \
    --customize-hook="chroot \"\$1\" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q /tmp/$(basename "$deb")" \
    --customize-hook="sync-out /var/cache/apt/archives $cache" \
    --customize-hook="chroot \"\$1\" sh -c '$checks'" \
    "$suite" /dev/null "deb $uri $suite main" >"$log" 2>&1; then
    tail -40 "$log" >&2
    say "FAIL"
    exit 1
fi
grep '^test-deb:' "$log"
say "PASS"

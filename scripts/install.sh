#!/bin/bash
# install.sh install|uninstall QEMU_BUILD_DIR: `make install` and
# `make uninstall`.
#
# Installs, under $DESTDIR$PREFIX (PREFIX default /usr/local):
#   bin/pfbd-qemu-system-x86_64    the emulator, under a name of its own: it
#                                  never replaces Debian's qemu-system-x86_64
#   bin/pfbd-stat                  the statistics tool
#   share/man/man1/                their manual pages
#   share/doc/pfbd-qemu/           README, user guide, design, benchmarks,
#                                  QEMU's licence
#   share/pfbd-qemu/               the data directory (keymaps,
#                                  trace-events-all), python/qemu/qmp (QEMU's
#                                  QMP client, which pfbd-stat uses), and
#                                  installed-files: the list of what was
#                                  installed
#
# The emulator was configured with its own data directory
# (share/pfbd-qemu, found relative to the binary wherever it is installed)
# and with Debian's firmware packages as its firmware path (seabios,
# ipxe-qemu, qemu-system-data): it starts without -L.
#
# uninstall removes what installed-files lists, then the list and the
# directories of our own that are left empty; nothing else.
set -euo pipefail

die() {
    echo "install.sh: $*" >&2
    exit 1
}

action=${1:-}
qb=${2:-}
[ "$action" = install ] || [ "$action" = uninstall ] ||
    die "usage: $0 install|uninstall QEMU_BUILD_DIR"
prefix=${PREFIX:-/usr/local}
case $prefix in
/*) ;;
*) die "PREFIX must be an absolute path (got '$prefix')" ;;
esac
root=${DESTDIR:-}$prefix
manifest=share/pfbd-qemu/installed-files
top=$(cd "$(dirname "$0")/.." && pwd)
# The QEMU source tree (COPYING, LICENSE, the QMP client): the build's
# sibling in a pfbd-qemu build directory; the package build sets it
qemu_src=${QEMU_SRC:-$qb/../qemu-src}

if [ "$action" = uninstall ]; then
    if [ ! -f "$root/$manifest" ]; then
        echo "install.sh: nothing installed in $root"
        exit 0
    fi
    while read -r f; do
        rm -f "$root/$f"
    done <"$root/$manifest"
    rm -f "$root/$manifest"
    # Our own directories, deepest first, if empty now
    find "$root/share/pfbd-qemu" "$root/share/doc/pfbd-qemu" -depth \
        -type d -empty -delete 2>/dev/null || true
    echo "install.sh: removed pfbd-qemu from $root"
    exit 0
fi

[ -x "$qb/qemu-system-x86_64" ] || die "no emulator in '$qb': run make first"

files=()
put() {     # put MODE SOURCE DEST (DEST relative to $root)
    install -D -m "$1" "$2" "$root/$3"
    files+=("$3")
}
put 755 "$qb/qemu-system-x86_64" bin/pfbd-qemu-system-x86_64
put 755 "$top/scripts/pfbd-stat" bin/pfbd-stat
# pfbd-stat's QMP client: qemu.qmp from the QEMU source (not its shells)
for f in "$qemu_src/python/qemu/qmp/"*.py; do
    case $(basename "$f") in
    qmp_shell.py|qmp_tui.py) ;;
    *) put 644 "$f" "share/pfbd-qemu/python/qemu/qmp/$(basename "$f")" ;;
    esac
done
for f in pfbd-qemu-system-x86_64.1 pfbd-stat.1; do
    mkdir -p "$root/share/man/man1"
    gzip -9n <"$top/docs/man/$f" >"$root/share/man/man1/$f.gz"
    chmod 644 "$root/share/man/man1/$f.gz"
    files+=("share/man/man1/$f.gz")
done
put 644 "$top/README.md" share/doc/pfbd-qemu/README.md
for f in user-guide.rst design.rst images.rst pureflash.rst benchmarks.md; do
    put 644 "$top/docs/$f" "share/doc/pfbd-qemu/$f"
done
for f in COPYING LICENSE; do
    put 644 "$qemu_src/$f" "share/doc/pfbd-qemu/$f"
done
# What upstream installs in the data directory (keymaps, trace-events-all)
data=$qb/qemu-bundle/usr/local/share/pfbd-qemu
while read -r f; do
    put 644 "$data/$f" "share/pfbd-qemu/$f"
done < <(cd "$data" && find -L . -type f -printf '%P\n' | sort)
mkdir -p "$root/share/pfbd-qemu"
printf '%s\n' "${files[@]}" "$manifest" >"$root/$manifest"
echo "install.sh: installed pfbd-qemu in $root:"
printf '  %s\n' "${files[@]}"

#!/bin/bash
# Build the pfbd-qemu test guest: OUTDIR/vmlinuz + OUTDIR/initramfs.img.
#
# Usage: tests/guest/build-guest.sh OUTDIR
#
# Everything comes from Debian packages fetched with `apt-get download` and
# unpacked with `dpkg-deb -x` into a scratch directory; nothing is installed
# into the host root (except gcc via apt-get install if it is missing, which is
# needed to build the stub libraries described below).
#
# The initramfs holds:
#   - busybox-static (shell and tools), util-linux blkdiscard (+ libblkid)
#   - fio with the libraries it really uses (libc, libm, libz, libaio,
#     libnuma).  Debian's fio links librbd/librados/libgfapi/libibverbs/
#     librdmacm/libnbd/libpmem/libpmemblk directly (~80 MB of closure).  Those
#     engines are never used in the guest, so they are replaced by generated
#     stub libraries that export exactly the symbols (and symbol versions) fio
#     imports; calling one prints an error and exits 127.
#   - the kernel modules virtio, virtio_ring, virtio_pci(+modern/legacy dev),
#     virtio_blk, qemu_fw_cfg (all =m in Debian's 6.1 kernel) in load order.
#   - /init (tests/guest/init.sh): runs the job script passed by the host via
#     fw_cfg (opt/pfbd/job), prints its output between markers, powers off.
#
# Idempotent: if OUTDIR/stamp matches the hash of this script and init.sh,
# nothing is done.  Set PFBD_GUEST_REBUILD=1 to force a rebuild.
set -euo pipefail

OUT=${1:?usage: $0 OUTDIR}
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

STAMP_WANT=$(cat "$HERE/build-guest.sh" "$HERE/init.sh" | sha256sum | cut -d' ' -f1)
if [ -z "${PFBD_GUEST_REBUILD:-}" ] && [ -f "$OUT/stamp" ] && [ -s "$OUT/vmlinuz" ] &&
   [ -s "$OUT/initramfs.img" ] && [ "$(cat "$OUT/stamp")" = "$STAMP_WANT" ]; then
    exit 0
fi

log() { echo "build-guest: $*" >&2; }

# Serialise concurrent builders (e.g. parallel pytest workers).
exec 9>"$OUT/.lock"
flock 9
if [ -z "${PFBD_GUEST_REBUILD:-}" ] && [ -f "$OUT/stamp" ] &&
   [ "$(cat "$OUT/stamp")" = "$STAMP_WANT" ]; then
    exit 0
fi

for tool in apt-get dpkg-deb cpio readelf nm; do
    command -v $tool >/dev/null || { log "missing tool: $tool"; exit 1; }
done
if ! command -v gcc >/dev/null; then
    log "gcc missing, installing it (needed for the stub libraries)"
    apt-get install -y --no-install-recommends gcc libc6-dev >&2
fi

SCRATCH="$OUT/scratch"
rm -rf "$SCRATCH"
mkdir -p "$SCRATCH/debs" "$SCRATCH/x" "$SCRATCH/root" "$SCRATCH/stubs"
DEBS="$SCRATCH/debs"; X="$SCRATCH/x"; ROOT="$SCRATCH/root"

# ---------------------------------------------------------------- packages
# linux-image-amd64 is a metapackage: take the image package it depends on.
KPKG=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
[ -n "$KPKG" ] || { log "cannot resolve linux-image-amd64"; exit 1; }
PKGS="$KPKG fio busybox-static libc6 libaio1 zlib1g libnuma1 util-linux libblkid1"
log "downloading: $PKGS"
# apt-get download writes into the cwd; run as _apt-readable dir is not
# required (a warning about unsandboxed download is harmless).
(cd "$DEBS" && apt-get download $PKGS 2>&1 | grep -v -e '^Get:' -e 'unsandboxed' >&2 || true)
for p in $PKGS; do
    ls "$DEBS"/${p}_*.deb >/dev/null 2>&1 || { log "download of $p failed"; exit 1; }
done
for d in "$DEBS"/*.deb; do
    case "$(basename "$d")" in
        linux-image-*) dpkg-deb -x "$d" "$SCRATCH/kernel" ;;
        *) dpkg-deb -x "$d" "$X" ;;
    esac
done

KVER=$(ls "$SCRATCH/kernel/lib/modules")
log "kernel $KVER"
cp "$SCRATCH/kernel/boot/vmlinuz-$KVER" "$OUT/vmlinuz.tmp"

# ---------------------------------------------------------------- rootfs
mkdir -p "$ROOT"/{bin,sbin,lib,lib64,usr/bin,usr/lib,usr/local/bin,proc,sys,dev,tmp,run,etc,mnt}
ln -s lib "$ROOT/lib/x86_64-linux-gnu" 2>/dev/null || true
cp "$X/bin/busybox" "$ROOT/bin/busybox"
cp "$X/usr/bin/fio" "$ROOT/usr/local/bin/fio"
# util-linux blkdiscard (has -z, busybox's has not).  busybox sh runs its own
# applets before searching PATH, so jobs must call /usr/local/bin/blkdiscard;
# /usr/local/bin is also first in PATH.
cp "$X/sbin/blkdiscard" "$ROOT/usr/local/bin/blkdiscard"
install -m 0755 "$HERE/init.sh" "$ROOT/init"

# Library closure.  A NEEDED library found in the unpacked packages is copied;
# one that is not (fio's rbd/rados/gluster/rdma/nbd/pmem engines) gets a stub.
find_lib() {
    local n=$1 d
    for d in "$X/lib/x86_64-linux-gnu" "$X/usr/lib/x86_64-linux-gnu" "$X/lib64"; do
        if [ -e "$d/$n" ]; then readlink -f "$d/$n"; return 0; fi
    done
    return 1
}
declare -A SEEN=()
REAL_LIBS=()
STUB_LIBS=()
walk() {
    local f=$1 n p
    for n in $(readelf -dW "$f" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
        [ -n "${SEEN[$n]:-}" ] && continue
        SEEN[$n]=1
        if p=$(find_lib "$n"); then
            cp "$p" "$ROOT/lib/$n"
            REAL_LIBS+=("$ROOT/lib/$n")
            walk "$p"
        else
            STUB_LIBS+=("$n")
        fi
    done
}
walk "$ROOT/usr/local/bin/fio"
walk "$ROOT/usr/local/bin/blkdiscard"
cp "$(readlink -f "$X/lib64/ld-linux-x86-64.so.2")" "$ROOT/lib64/ld-linux-x86-64.so.2"

# Symbols the real libraries define (unversioned imports are matched to them).
declare -A DEFINED=()
for l in "${REAL_LIBS[@]}"; do
    for s in $(nm -D --defined-only "$l" | awk '{print $3}' | sed 's/@.*//'); do
        DEFINED[$s]=1
    done
done

# Version needs per library file, from fio's .gnu.version_r.
declare -A VERS=()   # lib -> "V1 V2"
declare -A VER_LIB=() # version -> lib
cur=""
while read -r line; do
    if [[ $line =~ File:\ ([^ ]+) ]]; then cur=${BASH_REMATCH[1]}
    elif [[ $line =~ Name:\ ([^ ]+) ]] && [ -n "$cur" ]; then
        VERS[$cur]="${VERS[$cur]:-} ${BASH_REMATCH[1]}"
        VER_LIB[${BASH_REMATCH[1]}]=$cur
    fi
done < <(readelf -VW "$ROOT/usr/local/bin/fio" | sed -n '/\.gnu\.version_r/,$p')

UNDEF=$(nm -D --undefined-only "$ROOT/usr/local/bin/fio" | awk '$1=="U"{print $2}')
for lib in "${STUB_LIBS[@]}"; do
    c="$SCRATCH/stubs/$lib.c"; vs="$SCRATCH/stubs/$lib.map"
    : >"$c"; : >"$vs"
    cat >>"$c" <<'EOF'
#include <unistd.h>
static void pfbd_stub_fail(const char *n) {
    static const char m[] = "pfbd guest: stub library function called: ";
    write(2, m, sizeof(m) - 1);
    size_t l = 0; while (n[l]) l++;
    write(2, n, l); write(2, "\n", 1);
    _exit(127);
}
EOF
    declare -A NODE=()
    for u in $UNDEF; do
        s=${u%%@*}
        if [[ $u == *@* ]]; then
            v=${u#*@}; v=${v#@}
            [ "${VER_LIB[$v]:-}" = "$lib" ] || continue
            NODE[$v]="${NODE[$v]:-} $s;"
        else
            # unversioned: not ours if a real library defines it
            [ -n "${DEFINED[$s]:-}" ] && continue
            [ -n "${VERS[$lib]:-}" ] && continue   # versioned lib: only versioned imports
            NODE[_]="${NODE[_]:-} $s;"
        fi
        echo "void $s(void) { pfbd_stub_fail(\"$s\"); }" >>"$c"
    done
    if [ -n "${VERS[$lib]:-}" ]; then
        for v in ${VERS[$lib]}; do
            echo "$v { global: ${NODE[$v]:-} local: *; };" >>"$vs"
        done
    else
        echo "{ global: ${NODE[_]:-} local: *; };" >>"$vs"
    fi
    unset NODE
    gcc -shared -fPIC -O2 -s -o "$ROOT/lib/$lib" -Wl,-soname,"$lib" \
        -Wl,--version-script="$vs" "$c" -nostartfiles
    log "stub $lib ($(grep -c '^void' "$c") symbols)"
done

# Check the binaries load (run them on the host with the initramfs' libs).
for b in fio blkdiscard; do
    "$ROOT/lib64/ld-linux-x86-64.so.2" --inhibit-cache --library-path "$ROOT/lib" \
        "$ROOT/usr/local/bin/$b" --version >/dev/null ||
        { log "$b does not load with the initramfs libraries"; exit 1; }
done

# ---------------------------------------------------------------- modules
MODROOT="$SCRATCH/kernel/lib/modules/$KVER"
declare -A MODPATH=()
while read -r p; do
    n=$(basename "$p" .ko); MODPATH[$n]=$p; MODPATH[${n//-/_}]=$p
done < <(find "$MODROOT/kernel" -name '*.ko')
declare -A MODDONE=()
ORDER=()
add_mod() {
    local m=${1//-/_} d
    [ -n "${MODDONE[$m]:-}" ] && return 0
    if grep -qE "/$m\.ko$" "$MODROOT/modules.builtin"; then MODDONE[$m]=1; return 0; fi
    [ -n "${MODPATH[$m]:-}" ] || { log "module $m not found"; exit 1; }
    MODDONE[$m]=1
    for d in $(modinfo -F depends "${MODPATH[$m]}" | tr ',' ' '); do add_mod "$d"; done
    ORDER+=("$m")
}
for m in virtio_pci virtio_blk qemu_fw_cfg; do add_mod "$m"; done
mkdir -p "$ROOT/lib/modules"
: >"$ROOT/lib/modules/load-order"
for m in "${ORDER[@]}"; do
    cp "${MODPATH[$m]}" "$ROOT/lib/modules/$m.ko"
    echo "$m" >>"$ROOT/lib/modules/load-order"
done
log "modules: ${ORDER[*]}"
echo "$KVER" >"$ROOT/etc/kernel-release"

# ---------------------------------------------------------------- pack
if command -v zstd >/dev/null; then COMP="zstd -19 -q -T0"; else COMP="gzip -9"; fi
(cd "$ROOT" && find . -print0 | LC_ALL=C sort -z |
    cpio --null -o -H newc --owner=0:0 --quiet | $COMP) >"$OUT/initramfs.img.tmp"
mv "$OUT/vmlinuz.tmp" "$OUT/vmlinuz"
mv "$OUT/initramfs.img.tmp" "$OUT/initramfs.img"
echo "$KVER" >"$OUT/kernel-release"
rm -rf "$SCRATCH"
echo "$STAMP_WANT" >"$OUT/stamp"
log "done: $OUT/vmlinuz ($(du -h "$OUT/vmlinuz" | cut -f1)), $OUT/initramfs.img ($(du -h "$OUT/initramfs.img" | cut -f1))"

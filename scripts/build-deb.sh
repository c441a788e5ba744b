#!/bin/bash
# build-deb.sh DSC SERIES OUTDIR: make deb.
#
# 1. The source package pfbd-qemu.  Its orig is the QEMU tarball of
#    Debian's qemu source package DSC, unchanged, as
#    pfbd-qemu_UPSTREAM.orig.tar.xz.  debian/patches holds the patches of
#    DSC first (debian/patches/qemu/, taken from its debian.tar.xz at this
#    step: the tree the exported series is made on is QEMU's tarball with
#    them, as dpkg-source -x of DSC unpacks it), then the exported series
#    SERIES/*.patch (make series).  debian/ of this repository and
#    debian/pfbd/ (the upstream configure arguments of `make build`, our
#    tools, manual pages and documents) complete it.  dpkg-source -b makes
#    OUTDIR/pfbd-qemu_VERSION.dsc.
# 2. Its binary package, built in a fresh Debian root (mmdebstrap, the
#    host's release and archive entry) that holds build-essential and the
#    Build-Depends only, with its network cut (unshare -n): a missing
#    Build-Depends or a download fails the build.  ccache is there too,
#    on the host's cache, so that a build whose sources did not change is
#    quick; it is not among the Build-Depends.
#
# The results (.dsc, .debian.tar.xz, the orig, .deb, .buildinfo,
# .changes) end up in OUTDIR.  Run as root.
set -euo pipefail

qemu_dsc=$(readlink -f "${1:?usage: $0 DSC SERIES OUTDIR}")
series=$(readlink -f "${2:?usage: $0 DSC SERIES OUTDIR}")
out=${3:?usage: $0 DSC SERIES OUTDIR}
top=$(cd "$(dirname "$0")/.." && pwd)

say() { echo "build-deb: $*"; }
die() { echo "build-deb: error: $*" >&2; exit 1; }

# The files of the qemu source package, next to its .dsc
qemu_files() {
    sed -n '/^Files:/,/^[^ ]/s/^ [0-9a-f]* [0-9]* //p' "$qemu_dsc"
}
orig=$(dirname "$qemu_dsc")/$(qemu_files | grep '\.orig\.tar\.' | head -n 1)
debtar=$(dirname "$qemu_dsc")/$(qemu_files | grep '\.debian\.tar\.' | head -n 1)
[ -f "$orig" ] && [ -f "$debtar" ] ||
    die "the orig or debian tarball of $(basename "$qemu_dsc") is missing"
version=$(dpkg-parsechangelog -l "$top/debian/changelog" -S Version)
version=${version#*:}           # file names carry no epoch
upstream=${version%-*}
mkdir -p "$out"
out=$(cd "$out" && pwd)
src=$out/src
tree=$src/pfbd-qemu-$upstream

# ---- 1. the source package ----
rm -rf "$src" "$out"/pfbd-qemu_*
mkdir -p "$tree"
cp "$orig" "$src/pfbd-qemu_$upstream.orig.tar.xz"
tar -xf "$orig" -C "$tree" --strip-components=1
(cd "$top" && git ls-files debian | cpio -pdm --quiet "$tree")
mkdir -p "$tree/debian/patches/qemu"
tar -xf "$debtar" -C "$src" debian/patches
(cd "$src/debian/patches" && sed -e 's/#.*//' -e '/^[[:space:]]*$/d' series) |
while read -r p _; do
    install -D -m 644 "$src/debian/patches/$p" "$tree/debian/patches/qemu/$p"
    echo "qemu/$p"
done >"$tree/debian/patches/series"
rm -rf "$src/debian"
cp "$series"/*.patch "$tree/debian/patches/"
(cd "$tree/debian/patches" && ls *.patch >>series)
pfbd=$tree/debian/pfbd
mkdir -p "$pfbd/scripts" "$pfbd/docs/man"
(cd "$top" && ./configure --print-upstream-args --cc=gcc --enable-rbd) \
    >"$pfbd/configure-args"
cp "$top/scripts/install.sh" "$top/scripts/pfbd-stat" "$pfbd/scripts/"
cp "$top"/docs/man/*.1 "$pfbd/docs/man/"
cp "$top/README.md" "$pfbd/"
for f in user-guide.rst design.rst images.rst pureflash.rst benchmarks.md; do
    cp "$top/docs/$f" "$pfbd/docs/"
done
say "dpkg-source -b (applies $(grep -c '^qemu/' "$tree/debian/patches/series") patches of qemu's package, then the $(ls "$series" | wc -l) of the series)"
(cd "$src" && dpkg-source -b "pfbd-qemu-$upstream") >"$out/source.log" 2>&1 ||
    { tail -n 30 "$out/source.log" >&2; die "dpkg-source -b failed"; }
dsc=$src/pfbd-qemu_$version.dsc
[ -f "$dsc" ] || die "dpkg-source left no $dsc"

# ---- 2. the binary package, offline, in a fresh root ----
. /etc/os-release
suite=$VERSION_CODENAME
uri=$(bash "$top/scripts/debian-uri.sh" "$suite") ||
    die "no Debian archive entry for $suite in /etc/apt"
sources=("deb $uri $suite main")
prefs=
if [ "$suite" = bookworm ]; then
    # meson >= 1.5 comes from bookworm-backports there
    sources+=("deb $uri bookworm-backports main")
    prefs='Package: meson
Pin: release n=bookworm-backports
Pin-Priority: 600'
fi
root=$out/root
cache=$out/chroot-debs
mkdir -p "$cache"
ccache_dir=$(ccache -k cache_dir 2>/dev/null || echo /root/.cache/ccache)
mkdir -p "$ccache_dir"
rm -rf "$root"
say "mmdebstrap $suite with the Build-Depends of $(basename "$dsc")"
mmdebstrap --mode=root --variant=buildd \
    --aptopt='Acquire::Languages "none"' --include=ccache \
    --setup-hook='mkdir -p "$1/var/cache/apt/archives" "$1/etc/apt/preferences.d"' \
    --setup-hook="sync-in $cache /var/cache/apt/archives" \
    --setup-hook="printf '%s\n' '$prefs' >\"\$1/etc/apt/preferences.d/pfbd-qemu\"" \
    --customize-hook="mkdir -p \"\$1/build\"" \
    --customize-hook="copy-in $dsc $src/pfbd-qemu_$upstream.orig.tar.xz $src/pfbd-qemu_$version.debian.tar.xz /build" \
    --customize-hook="chroot \"\$1\" env DEBIAN_FRONTEND=noninteractive apt-get build-dep -y -q /build/$(basename "$dsc")" \
    --customize-hook="sync-out /var/cache/apt/archives $cache" \
    --customize-hook='rm -f "$1"/var/cache/apt/archives/*.deb' \
    "$suite" "$root" "${sources[@]}" >"$out/root.log" 2>&1 ||
    { tail -n 30 "$out/root.log" >&2; die "mmdebstrap failed"; }

say "dpkg-buildpackage in $root, without network"
build='set -e
cd /build
dpkg-source -x pfbd-qemu_*.dsc src >/dev/null
cd src
export PATH=/usr/lib/ccache:$PATH CCACHE_DIR=/ccache CCACHE_BASEDIR=/build/src
dpkg-buildpackage -b -us -uc'
mkdir -p "$root/ccache"
if ! unshare --net --mount --fork sh -c '
        set -e
        mount -t proc proc "$1/proc"
        mount --rbind /dev "$1/dev"
        mount --bind "$2" "$1/ccache"
        chroot "$1" sh -c "$3"' sh "$root" "$ccache_dir" "$build" \
        >"$out/build.log" 2>&1; then
    tail -n 40 "$out/build.log" >&2
    die "the package does not build offline (log: $out/build.log)"
fi
cp "$root"/build/pfbd-qemu_"$version"_* "$out/"
cp "$dsc" "$src/pfbd-qemu_$upstream.orig.tar.xz" \
   "$src/pfbd-qemu_$version.debian.tar.xz" "$out/"
rm -rf "$root"
say "built $(cd "$out" && ls pfbd-qemu_*.deb)"

#!/bin/bash
# series-bisect.sh SERIES
#
# Build every prefix of the exported series (make series left it in
# SERIES/tree, one commit per patch): the unpacked tree configured as
# make build does, then each patch in turn, checked out over it and
# built incrementally (ninja's default targets, and those of make build
# that exist by then).  Prints one line per patch: its build time and
# result; stops at the first that does not build.  The build is in
# SERIES-bisect (next to SERIES, which make series replaces).
set -euo pipefail

series=$(cd "${1:?usage: $0 SERIES}" && pwd)
top=$(cd "$(dirname "$0")/.." && pwd)
gd=$series/tree/.git
bis=$series-bisect
src=$bis/qemu-src
qb=$bis/qemu-build
extra=(tests/unit/test-pfbd tests/unit/test-pfbd-pureflash
       tests/qtest/virtio-blk-pfbd-test tests/qtest/qos-test qemu-img)

[ -d "$gd" ] || { echo "series-bisect: no $gd (make series)" >&2; exit 1; }
base=$(git --git-dir="$gd" rev-list --max-parents=0 HEAD)
mapfile -t commits < <(git --git-dir="$gd" rev-list --reverse "$base..HEAD")

# The unpacked tree, configured: an exported series of no patch
rm -rf "$bis"
mkdir -p "$bis/none"
(cd "$top" && ./configure --build-dir="$bis" --exported-series="$bis/none") \
    >"$bis/configure.log" 2>&1 ||
    { tail -n 20 "$bis/configure.log"; exit 1; }

# Our own index of the tree: a checkout rewrites only the files a patch
# changes, so that ninja rebuilds what depends on them
export GIT_INDEX_FILE=$bis/index
git --git-dir="$gd" --work-tree="$src" reset -q "$base"

build() {
    local t targets=()
    for t in "${extra[@]}"; do
        if ninja -C "$qb" -t query "$t" >/dev/null 2>&1; then
            targets+=("$t")
        fi
    done
    ninja -C "$qb" >"$bis/ninja.log" 2>&1 &&
        { [ ${#targets[@]} -eq 0 ] ||
          ninja -C "$qb" "${targets[@]}" >>"$bis/ninja.log" 2>&1; }
}

start=$SECONDS
t0=$SECONDS
build || { echo "series-bisect: the unpacked tree does not build" >&2;
           tail -n 20 "$bis/ninja.log"; exit 1; }
printf '%-4s %5ss  %s\n' 0 $((SECONDS - t0)) "the unpacked tree"
n=0
for c in "${commits[@]}"; do
    n=$((n + 1))
    git --git-dir="$gd" --work-tree="$src" checkout -q -f "$c" -- .
    t0=$SECONDS
    if ! build; then
        printf '%-4s %5ss  FAILS  %s\n' $n $((SECONDS - t0)) \
            "$(git --git-dir="$gd" log -1 --format=%s "$c")"
        tail -n 30 "$bis/ninja.log"
        exit 1
    fi
    printf '%-4s %5ss  %s\n' $n $((SECONDS - t0)) \
        "$(git --git-dir="$gd" log -1 --format=%s "$c")"
done
echo "series-bisect: all ${#commits[@]} prefixes build, in $((SECONDS - start)) s"

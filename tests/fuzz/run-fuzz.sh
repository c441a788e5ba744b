#!/bin/bash
# run-fuzz.sh QEMU_BUILD_DIR [SECONDS [TARGET...]]: fuzz virtio-blk-pfbd
# with libFuzzer + ASan + UBSan (the build of `make fuzz`), SECONDS per target
# (default 600).  Targets (default: both):
#
#   virtio-blk-pfbd-fuzz  tests/qtest/fuzz/virtio_blk_pfbd_fuzz.c: shaped
#                         virtio-blk requests on two virtqueues of the
#                         device's libqos node (a file volume): the
#                         request path, including malformed chains;
#   generic-fuzz          QEMU's generic fuzzer on the device's MMIO/PIO
#                         and guest memory: config space, status, resets,
#                         ioeventfd start and stop.
#
# Each target keeps its corpus, crash reproducers (crash-*) and log under
# QEMU_BUILD_DIR/../fuzz-run/TARGET.  Exit status 1 if any crashed.
#
# A crash, once fixed, becomes a case of tests/qtest/virtio-blk-pfbd-
# test.c (the generic fuzzer's reproducers convert with
# scripts/oss-fuzz/output_reproducer.py), so that `make check` replays it.

set -euo pipefail

qb=$(cd "${1:?usage: $0 QEMU_BUILD_DIR [SECONDS [TARGET...]]}" && pwd)
secs=${2:-600}
shift $(($# < 2 ? $# : 2))
targets=("$@")
if [ ${#targets[@]} = 0 ]; then
    targets=(virtio-blk-pfbd-fuzz generic-fuzz)
fi
runs=$(dirname "$qb")/fuzz-run

vol_dir=/dev/shm
[ -w "$vol_dir" ] || vol_dir=$runs
mkdir -p "$runs"
vol=$vol_dir/pfbd-fuzz-$$.img
truncate -s 16M "$vol"
trap 'rm -f "$vol"' EXIT

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}

status=0
for t in "${targets[@]}"; do
    run=$runs/$t
    mkdir -p "$run/corpus" "$run/artifacts"
    if [ "$t" = generic-fuzz ]; then
        export QEMU_FUZZ_ARGS="-machine q35 -device virtio-blk-pfbd,volume=file:$vol,num-queues=2,serial=fuzz"
        export QEMU_FUZZ_OBJECTS="virtio* pfbd*"
        echo "run-fuzz: QEMU_FUZZ_ARGS=$QEMU_FUZZ_ARGS"
    fi
    # The device target's process grows by some 40 KiB an input in the
    # fuzzing harness (the device's own RSS stays flat over millions of
    # requests in tests/bench/pfbd-rig), so it runs in libFuzzer's fork
    # mode: a child that reaches the RSS limit is replaced, not reported.
    extra=()
    if [ "$t" = virtio-blk-pfbd-fuzz ]; then
        extra=(-fork=1 -ignore_ooms=1 -rss_limit_mb=2048)
    fi
    echo "run-fuzz: $t for ${secs}s ${extra[*]}"
    rc=0
    "$qb/qemu-fuzz-x86_64" --fuzz-target="$t" "${extra[@]}" \
        -max_total_time="$secs" -print_final_stats=1 \
        -artifact_prefix="$run/artifacts/" "$run/corpus" \
        >"$run/fuzz.log" 2>&1 || rc=$?
    unset QEMU_FUZZ_ARGS QEMU_FUZZ_OBJECTS

    grep -E '^stat::|^#[0-9]+.*DONE|SUMMARY|ERROR' "$run/fuzz.log" |
        tail -n 20 || true
    crashes=$(find "$run/artifacts" -type f | wc -l)
    echo "run-fuzz: $t: exit status $rc, $crashes crash reproducer(s) in $run/artifacts"
    echo "run-fuzz: $t: corpus $(find "$run/corpus" -type f | wc -l) inputs, log $run/fuzz.log"
    if [ "$rc" != 0 ] || [ "$crashes" != 0 ]; then
        status=1
    fi
done
exit $status

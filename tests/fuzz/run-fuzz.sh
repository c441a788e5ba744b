#!/bin/bash
# run-fuzz.sh QEMU_BUILD_DIR [SECONDS [TARGET...]]: fuzz virtio-blk-pfbd
# with libFuzzer + ASan + UBSan (the build of `make fuzz`), SECONDS per target
# (default 600).  Targets (default: all three):
#
#   virtio-blk-pfbd-fuzz  tests/qtest/fuzz/virtio_blk_pfbd_fuzz.c: shaped
#                         virtio-blk requests on two virtqueues of the
#                         device's libqos node (a file volume): the
#                         request path, including malformed chains and
#                         buffers outside guest RAM, with device and queue
#                         resets, stop/cont, PAM changes, unplug/replug
#                         and writes to the common configuration (queue
#                         size, enable and select, device status) between
#                         requests;
#   virtio-blk-pfbd-iothread-fuzz
#                         the same with the queues on an IOThread, which
#                         serves them while the fuzzer's thread writes the
#                         configuration and drives the lifecycle;
#   generic-fuzz          QEMU's generic fuzzer on the device's MMIO/PIO
#                         and guest memory, the queues on an IOThread:
#                         config space, status, resets, ioeventfd start
#                         and stop.
#
# Each runs in one process, with ASan's and libFuzzer's leak checks,
# libFuzzer's RSS limit (2 GiB) and a hang limit (-timeout: an input that
# runs 60 s is a finding), on inputs of up to 4 KiB from the start (a
# shaped request is 32 bytes: short inputs reach little).  Each target keeps its corpus and log
# under QEMU_BUILD_DIR/../fuzz-run/TARGET, and this run's reproducers
# (crash-*, leak-*, oom-*, timeout-*, slow-unit-*) in a new directory
# fuzz-run/TARGET/artifacts/DATE.  Exit status 0 only if no target found
# anything; otherwise 1, with each reproducer's path and the command that
# replays it.
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
    targets=(virtio-blk-pfbd-fuzz virtio-blk-pfbd-iothread-fuzz generic-fuzz)
fi
runs=$(dirname "$qb")/fuzz-run
stamp=$(date +%Y%m%d-%H%M%S)

# generic-fuzz's volume: kept, for replaying what it found
mkdir -p "$runs"
vol=$runs/volume.img
truncate -s 16M "$vol"

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}

status=0
for t in "${targets[@]}"; do
    run=$runs/$t
    art=$run/artifacts/$stamp
    mkdir -p "$run/corpus" "$art"
    fuzz_env=()
    if [ "$t" = generic-fuzz ]; then
        fuzz_env=("QEMU_FUZZ_ARGS=-machine q35 -object iothread,id=io0 -device virtio-blk-pfbd,volume=file:$vol,num-queues=2,iothread=io0,serial=fuzz"
                  "QEMU_FUZZ_OBJECTS=virtio* pfbd*")
        echo "run-fuzz: ${fuzz_env[*]}"
    fi
    echo "run-fuzz: $t for ${secs}s"
    rc=0
    env "${fuzz_env[@]}" "$qb/qemu-fuzz-x86_64" --fuzz-target="$t" \
        -rss_limit_mb=2048 -detect_leaks=1 -timeout=60 \
        -max_len=4096 -len_control=0 \
        -max_total_time="$secs" -print_final_stats=1 \
        -artifact_prefix="$art/" "$run/corpus" \
        >"$run/fuzz.log" 2>&1 || rc=$?

    grep -E '^stat::(number_of_executed_units|peak_rss_mb|new_units)|SUMMARY|ERROR' \
        "$run/fuzz.log" | tail -n 20 || true
    echo "run-fuzz: $t: exit status $rc; corpus $(find "$run/corpus" -type f | wc -l) inputs; log $run/fuzz.log"
    found=$(find "$art" -type f | sort)
    if [ -n "$found" ]; then
        echo "run-fuzz: $t FOUND; replay one with:"
        echo "  $(printf '%q ' env "${fuzz_env[@]}" \
            "$qb/qemu-fuzz-x86_64" --fuzz-target="$t")FILE"
        echo "$found" | sed 's/^/  /'
        status=1
    elif [ "$rc" != 0 ]; then
        echo "run-fuzz: $t FAILED with no reproducer; see the log"
        status=1
    else
        rmdir "$art"
        echo "run-fuzz: $t: nothing found"
    fi
done
exit $status

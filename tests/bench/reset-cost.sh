#!/bin/bash
# reset-cost.sh QEMU_BUILD_DIR [CYCLES]: what a device reset costs the
# host, as a guest that resets virtio-blk-pfbd in a loop makes QEMU pay.
#
# The qtest benchmark /virtio-blk-pfbd/perf/reset-cycles resets the device
# and sets it up again CYCLES times (default 200), on a file volume and on
# a null one, with the queues in the main loop and in an IOThread.  Its
# own figure, QEMU's CPU time per cycle, is mostly the qtest protocol (the
# driver's hundreds of register accesses, each a round trip on a socket).
# So this script also times the device's part with perf uprobes on
# virtio_blk_pfbd_stop_ioeventfd() and virtio_blk_pfbd_start_ioeventfd(),
# and counts the io_uring rings QEMU creates during the cycles:
# none should be, the engine's queues live as long as the device.
#
# Needs root and perf (Debian: linux-perf).
set -euo pipefail

qb=$(cd "${1:?usage: $0 QEMU_BUILD_DIR [CYCLES]}" && pwd)
cycles=${2:-200}
bin=$qb/qemu-system-x86_64
test=$qb/tests/qtest/virtio-blk-pfbd-test
tmp=$(mktemp -d)
fns=(virtio_blk_pfbd_stop_ioeventfd virtio_blk_pfbd_start_ioeventfd)

cleanup() {
    perf probe -q -d 'probe_qemu:virtio_blk_pfbd_*' 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT
for f in "${fns[@]}"; do
    perf probe -q -x "$bin" --add "$f" --add "$f%return"
done

export QTEST_QEMU_BINARY=$bin
for vol in file null:16M; do
    volenv=()
    if [ "$vol" != file ]; then
        volenv=("PFBD_PERF_VOLUME=$vol")
    fi
    env "${volenv[@]}" PFBD_PERF_CYCLES="$cycles" "$test" --tap -m perf \
        -p /x86_64/virtio-blk-pfbd/perf/reset-cycles >"$tmp/test.log" 2>&1 &
    tpid=$!
    # Each mode starts its own QEMU: follow each one
    while kill -0 $tpid 2>/dev/null; do
        qpid=$(pgrep -n -P $tpid qemu-system || true)
        if [ -z "$qpid" ] || [ -e "$tmp/seen.$qpid" ]; then
            sleep 0.2
            continue
        fi
        touch "$tmp/seen.$qpid"
        echo "$qpid" >>"$tmp/order"
        perf record -q -e 'probe_qemu:virtio_blk_pfbd_*' \
            -e syscalls:sys_enter_io_uring_setup -p "$qpid" \
            -o "$tmp/perf.$qpid" 2>/dev/null &
    done
    wait
    grep -E 'reset-cycles|^not ok|^ok' "$tmp/test.log"
    modes=("main loop" iothread)
    m=0
    while read -r qpid; do
        d=$tmp/perf.$qpid
        echo "  $vol, ${modes[m++]}: the device's part"
        perf script -i "$d" -F time,event 2>/dev/null | python3 -c '
import sys
start, took, rings = {}, {}, 0
for line in sys.stdin:
    t, ev = line.split()[:2]
    t, ev = float(t.rstrip(":")), ev.rstrip(":").split(":")[1]
    if ev == "sys_enter_io_uring_setup":
        rings = rings + 1
    elif ev.endswith("__return"):
        fn = ev[:-len("__return")]
        if fn in start:
            took.setdefault(fn, []).append((t - start.pop(fn)) * 1e6)
    else:
        start[ev] = t
for fn, v in sorted(took.items()):
    v.sort()
    print("  %s: %d calls, median %.0f us, 90th percentile %.0f us"
          % (fn, len(v), v[len(v) // 2], v[int(len(v) * 0.9)]))
print("  io_uring rings created meanwhile: %d" % rings)
'
        rm -f "$d"
    done <"$tmp/order"
    rm -f "$tmp/order"
done

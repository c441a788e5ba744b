#!/bin/bash
# run-pfbd-qtests.sh [--own-only] QEMU_BUILD_DIR: the qtests of
# virtio-blk-pfbd
#
#   1. tests/qtest/virtio-blk-pfbd-test, the device's own qtest;
#   2. upstream's virtio-blk qtests on the libqos node virtio-blk-pfbd-pci,
#      from qos-test: every path through that node ("config", "resize" and
#      "msix" resize its volume through the device's volume-size).
#      --own-only leaves this part out (the sanitizer build does not
#      build qos-test).
#
# Output is TAP; the exit status is non-zero if any test failed.

set -euo pipefail

own_only=
if [ "${1:-}" = --own-only ]; then
    own_only=1
    shift
fi
qb=$(cd "${1:?usage: $0 [--own-only] QEMU_BUILD_DIR}" && pwd)
export QTEST_QEMU_BINARY=$qb/qemu-system-x86_64
export G_TEST_SRCDIR=${G_TEST_SRCDIR:-$qb}
rc=0

echo "# virtio-blk-pfbd-test"
"$qb/tests/qtest/virtio-blk-pfbd-test" --tap -k || rc=1
if [ -n "$own_only" ]; then
    exit $rc
fi

paths=$("$qb/tests/qtest/qos-test" -l | grep '/virtio-blk-pfbd-pci/' || true)
if [ -z "$paths" ]; then
    echo "not ok - qos-test lists no test on virtio-blk-pfbd-pci"
    exit 1
fi
args=()
for p in $paths; do
    args+=(-p "$p")
done
echo "# qos-test: upstream virtio-blk tests on virtio-blk-pfbd-pci"
"$qb/tests/qtest/qos-test" --tap -k "${args[@]}" || rc=1
exit $rc

#!/bin/bash
# with-ceph.sh CMD [ARG...]
#
# Run CMD with a throwaway single-node Ceph cluster (start-ceph.sh): the
# cluster lives in a new directory under /tmp (Unix socket paths must stay
# short), CMD gets CEPH_CONF and PFBD_TEST_CEPH_CONF pointing at its
# ceph.conf, and the cluster is stopped and removed when CMD ends.  The
# exit status is CMD's.  With PFBD_TEST_CEPH_CONF already set, CMD runs
# against that cluster instead.
set -uo pipefail

if [ $# -lt 1 ]; then
    echo "usage: $0 CMD [ARG...]" >&2
    exit 2
fi
if [ -n "${PFBD_TEST_CEPH_CONF:-}" ]; then
    exec "$@"
fi
here=$(cd "$(dirname "$0")" && pwd)
if ! command -v ceph-mon >/dev/null; then
    echo "with-ceph: ceph-mon not found; run scripts/install-deps.sh" >&2
    exit 1
fi
dir=$(mktemp -d /tmp/pfbd-ceph-XXXXXX)
trap 'bash "$here/stop-ceph.sh" "$dir" --purge >/dev/null' EXIT
if ! bash "$here/start-ceph.sh" "$dir" >"$dir.log" 2>&1; then
    echo "with-ceph: could not start a Ceph cluster in $dir:" >&2
    tail -n 20 "$dir.log" >&2
    rm -f "$dir.log"
    exit 1
fi
rm -f "$dir.log"
export CEPH_CONF=$dir/ceph.conf PFBD_TEST_CEPH_CONF=$dir/ceph.conf
"$@"

#!/bin/bash
# with-pfdouble.sh CMD [ARG...]
#
# Run CMD against pfdouble.py, the PureFlash conformance double (a test
# server of ours, not PureFlash): the double keeps its volumes in a new
# directory under /tmp, CMD gets PFBD_PUREFLASH_CONDUCTOR (127.0.0.1:PORT,
# which also serves the double's /ctl/ API), PFBD_PUREFLASH_STORE_PORT and
# PFBD_PUREFLASH_DOUBLE=1, and the double is stopped and its directory
# removed when CMD ends.  The exit status is CMD's.  Extra options for the
# double (e.g. "--shard-order 20") may be given in PFBD_PUREFLASH_DOUBLE_ARGS.
# It also starts a ZooKeeper server (Debian's zookeeper package) on a free
# port of 127.0.0.1, for the engine's discovery through ZooKeeper, and
# exports PFBD_PUREFLASH_ZOOKEEPER=127.0.0.1:PORT; the tests register the
# double's conductor there themselves.
# With PFBD_PUREFLASH_CONDUCTOR already set, CMD runs against that cluster
# instead.
set -uo pipefail

if [ $# -lt 1 ]; then
    echo "usage: $0 CMD [ARG...]" >&2
    exit 2
fi
if [ -n "${PFBD_PUREFLASH_CONDUCTOR:-}" ]; then
    exec "$@"
fi
here=$(cd "$(dirname "$0")" && pwd)
dir=$(mktemp -d /tmp/pfdouble-XXXXXX)
pid=
zkpid=
# shellcheck disable=SC2317  # called by the trap
cleanup() {
    for p in $pid $zkpid; do
        kill -TERM "$p" 2>/dev/null
        wait "$p" 2>/dev/null
    done
    rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# shellcheck disable=SC2086  # the extra options are meant to be split
python3 "$here/pfdouble.py" --dir "$dir/data" --ready "$dir/ready.json" \
    ${PFBD_PUREFLASH_DOUBLE_ARGS:-} >"$dir/log" 2>&1 &
pid=$!

# Wait for the ready file: poll, with a deadline, while the double lives.
deadline=$((SECONDS + 30))
while [ ! -s "$dir/ready.json" ]; do
    if ! kill -0 "$pid" 2>/dev/null || [ "$SECONDS" -ge "$deadline" ]; then
        echo "with-pfdouble: the double did not start:" >&2
        tail -n 20 "$dir/log" >&2
        exit 1
    fi
    sleep 0.05
done
if ! read -r conductor store_port < <(python3 -c '
import json, sys
ready = json.load(open(sys.argv[1]))
print(ready["conductor"], ready["store_port"])' "$dir/ready.json"); then
    echo "with-pfdouble: unreadable $dir/ready.json" >&2
    exit 1
fi
# ZooKeeper, on a port nobody uses now
zk=/usr/share/zookeeper/bin/zkServer.sh
if [ ! -x "$zk" ]; then
    echo "with-pfdouble: $zk not found; run scripts/install-deps.sh" >&2
    exit 1
fi
zkport=$(python3 -c 'import socket; s = socket.socket()
s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p "$dir/zk"
printf '%s\n' "tickTime=2000" "dataDir=$dir/zk" "clientPort=$zkport" \
    "clientPortAddress=127.0.0.1" "admin.enableServer=false" >"$dir/zoo.cfg"
ZOO_LOG_DIR=$dir ZOO_LOG4J_PROP=WARN,CONSOLE \
    "$zk" start-foreground "$dir/zoo.cfg" >"$dir/zk.log" 2>&1 &
zkpid=$!
deadline=$((SECONDS + 60))
until (exec 3<>"/dev/tcp/127.0.0.1/$zkport") 2>/dev/null; do
    if ! kill -0 "$zkpid" 2>/dev/null || [ "$SECONDS" -ge "$deadline" ]; then
        echo "with-pfdouble: ZooKeeper did not start:" >&2
        tail -n 20 "$dir/zk.log" >&2
        exit 1
    fi
    sleep 0.1
done

export PFBD_PUREFLASH_ZOOKEEPER=127.0.0.1:$zkport
export PFBD_PUREFLASH_CONDUCTOR=$conductor
export PFBD_PUREFLASH_STORE_PORT=$store_port
export PFBD_PUREFLASH_DOUBLE=1
"$@"
rc=$?
if [ "$rc" -ne 0 ]; then
    echo "with-pfdouble: CMD exited $rc; the double's log ends:" >&2
    tail -n 20 "$dir/log" >&2
fi
exit "$rc"

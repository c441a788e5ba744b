#!/bin/busybox sh
# /init of the pfbd-qemu test guest (packed by build-guest.sh).
#
# Reads the job script from fw_cfg (opt/pfbd/job; host side:
# -fw_cfg name=opt/pfbd/job,file=JOB.sh), runs it with sh in /tmp, prints its
# output on the console (ttyS0) between markers, then powers off -- also when
# anything fails.  Markers (parsed by tests/functional/pfbdguest.py):
#   ===PFBD-JOB-BEGIN===
#   ...job stdout+stderr...
#   ===PFBD-JOB-END rc=N===
#   ===PFBD-INIT-ERROR msg===   (init could not run the job)
# Tools: busybox applets, /usr/local/bin/fio, /usr/local/bin/blkdiscard
# (util-linux; call it by full path: busybox sh prefers its own applets).
/bin/busybox mkdir -p /proc /sys /dev /tmp /run /usr/sbin /sbin
/bin/busybox --install -s
export PATH=/usr/local/bin:/usr/bin:/bin:/sbin:/usr/sbin
export HOME=/tmp
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run

die() {
    echo "===PFBD-INIT-ERROR $*==="
    sync
    poweroff -f
    sleep 5
    echo o >/proc/sysrq-trigger
}

exec </dev/console >/dev/console 2>&1

for m in $(cat /lib/modules/load-order); do
    insmod /lib/modules/$m.ko || echo "init: insmod $m failed"
done
# let udev-less /dev settle: devtmpfs creates nodes itself; wait for fw_cfg
JOB=/sys/firmware/qemu_fw_cfg/by_name/opt/pfbd/job/raw
i=0
while [ ! -e $JOB ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
[ -e $JOB ] || die "no job in fw_cfg (opt/pfbd/job)"
cat $JOB >/tmp/job.sh || die "cannot read $JOB"

cd /tmp
echo "===PFBD-JOB-BEGIN==="
sh /tmp/job.sh 2>&1
rc=$?
sync
echo "===PFBD-JOB-END rc=$rc==="
poweroff -f
sleep 5
echo o >/proc/sysrq-trigger

#!/bin/bash
# pfbd-autorun: the boot-time job runner of the pfbd-qemu Debian image
# (installed by tests/image/build-image.sh as /usr/local/sbin/pfbd-autorun and
# started by pfbd-autorun.service once the root file system is mounted).
#
# The host passes a shell script through fw_cfg:
#     -fw_cfg name=opt/pfbd/job,file=JOB.sh
# It appears as /sys/firmware/qemu_fw_cfg/by_name/opt/pfbd/job/raw (module
# qemu_fw_cfg).  If there is no job, nothing happens and the system stays up
# (root autologin on ttyS0).  Otherwise the job is run with /bin/sh in a
# scratch directory and its output goes to the console (ttyS0) between the
# markers of the pfbd-qemu test guest (tests/guest/init.sh, parsed by
# tests/functional/pfbdguest.py):
#     ===PFBD-JOB-BEGIN===
#     ...job stdout+stderr...
#     ===PFBD-JOB-END rc=N===
# then the system powers off.
#
# Rebooting from a job: the job runs `reboot` and exits.  `reboot` is a
# wrapper first in the job's PATH (/var/lib/pfbd/bin/reboot: /run is noexec)
# that only records the request; once the job has exited and its END marker
# is printed, this script reboots the system the way `systemctl reboot` does
# (a normal systemd reboot: the guest resets, the firmware runs again and
# boots the disk again) instead of powering off.  (/sbin/reboot or `systemctl
# reboot` called directly reboot too, but kill the job: no END marker.)  On every boot the job runs
# again, so it keeps its progress in files on the root file system:
#     PFBD_BOOT        number of this boot (1, 2, ...) since the image was built
#                      (kept in /var/lib/pfbd/boot-count)
#     PFBD_STATE_DIR   /var/lib/pfbd/state: persistent, empty on the first boot
# A job that must not loop forever checks its own state before `reboot`.
# Before the BEGIN marker, one line "pfbd-autorun: boot N root=DEV ..." says
# which boot this is and where the root file system came from.
set -u

JOB=/sys/firmware/qemu_fw_cfg/by_name/opt/pfbd/job/raw
VAR=/var/lib/pfbd
RUN=/run/pfbd

say() { echo "pfbd-autorun: $*"; }

modprobe qemu_fw_cfg 2>/dev/null || true
i=0
while [ ! -e "$JOB" ] && [ $i -lt 30 ]; do sleep 0.1; i=$((i + 1)); done
if [ ! -e "$JOB" ]; then
    say "no job in fw_cfg (opt/pfbd/job): leaving the system up"
    exit 0
fi

mkdir -p "$VAR/state" "$VAR/bin" "$RUN/work"
boot=$(( $(cat "$VAR/boot-count" 2>/dev/null || echo 0) + 1 ))
echo "$boot" >"$VAR/boot-count"
sync

if ! cat "$JOB" >"$RUN/job.sh"; then
    echo "===PFBD-INIT-ERROR cannot read $JOB==="
    systemctl --no-block start --job-mode=replace-irreversibly poweroff.target
    exit 1
fi

# (on the root file system: /run is mounted noexec)
cat >"$VAR/bin/reboot" <<'EOF'
#!/bin/sh
# pfbd-autorun: `reboot` inside a job; the reboot happens when the job exits.
touch /run/pfbd/reboot-requested
echo "pfbd-autorun: reboot requested; rebooting when the job exits"
EOF
chmod 0755 "$VAR/bin/reboot"
rm -f "$RUN/reboot-requested"

rootdev=$(findmnt -n -o SOURCE /)
rootblk=$(basename "$(readlink -f "$rootdev")")
rootsys=$(readlink -f "/sys/class/block/$rootblk")
say "boot $boot root=$rootdev ($rootsys) kernel=$(uname -r)"

echo "===PFBD-JOB-BEGIN==="
(
    cd "$RUN/work" &&
    PATH="$VAR/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    HOME=/root PFBD_BOOT=$boot PFBD_STATE_DIR="$VAR/state" \
    exec /bin/sh "$RUN/job.sh" </dev/null 2>&1
)
rc=$?
sync
echo "===PFBD-JOB-END rc=$rc==="

if [ -e "$RUN/reboot-requested" ]; then
    target=reboot.target
else
    target=poweroff.target
fi
say "${target%.target}"
# what `systemctl reboot/poweroff` do, minus asking logind first (there is
# no D-Bus in this image: that would only print an error)
systemctl --no-block start --job-mode=replace-irreversibly "$target"
exit 0

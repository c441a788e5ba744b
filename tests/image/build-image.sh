#!/bin/bash
# Build the pfbd-qemu Debian image: a small bootable Debian bookworm system on
# a raw disk image, to be booted by SeaBIOS from a virtio-blk-pfbd volume
# (volume=file:OUTDIR/debian-bookworm.raw, bootindex=1; see docs/images.rst).
#
# Usage: tests/image/build-image.sh [OUTDIR]      (default: <repo>/build/image)
#        make image                               (tests/image/image.mk)
#
# Output:
#   OUTDIR/debian-bookworm.raw   sparse raw disk (< 1 GiB): MBR partition table,
#                                GRUB (i386-pc) in the MBR + the gap before
#                                partition 1, ext4 root file system (label
#                                pfbd-root) in partition 1
#   OUTDIR/image-info            kernel version, root UUID, sizes, build time
#   OUTDIR/stamp                 hash of the files the image is built from
#   OUTDIR/debs/                 the packages, for the next build
#
# Runs as root.  Everything comes from Debian packages:
#   - mmdebstrap (--variant=minbase, root mode: runs the maintainer scripts in
#     a chroot) installs into OUTDIR/scratch/root: systemd, udev,
#     linux-image-amd64 + initramfs-tools, fio, e2fsprogs.  The mirror is the
#     one of the host's own Debian apt entry (scripts/debian-uri.sh, shared
#     with scripts/install-deps.sh); nothing else is downloaded.
#   - the initramfs (initramfs-tools, MODULES=list) holds just what mounting
#     root=UUID=... from /dev/vda1 needs: virtio_pci, virtio_blk, ext4.
#   - the system: no getty when a job is given, no timers, volatile journal,
#     empty root password (root autologin on ttyS0 when no job is given),
#     console on ttyS0, pfbd-autorun.service (tests/image/pfbd-autorun.sh):
#     runs the job script passed with -fw_cfg name=opt/pfbd/job,file=JOB.sh,
#     prints its output between ===PFBD-JOB-BEGIN=== and
#     ===PFBD-JOB-END rc=N=== on ttyS0 and powers off (or reboots when the job
#     ran `reboot`).
#   - no mounting and no loop device: the ext4 file system is written straight
#     into the partition with `mke2fs -d ROOTDIR -E offset=...`, and GRUB is
#     installed with dd: boot.img (first 440 bytes) in the MBR, a core.img made
#     by grub-mkimage (biosdisk, part_msdos, ext2; prefix (hd0,msdos1)/boot/grub)
#     at sector 1, whose default block list (sectors 2.., length filled in by
#     grub-mkimage) is exactly where it is written.  grub.cfg and GRUB's
#     modules are in /boot/grub of the root file system.
#   Host packages: mmdebstrap, grub-pc-bin, fdisk (sfdisk), e2fsprogs; missing
#   ones are installed with apt-get.
#
# Idempotent: if OUTDIR/stamp matches the hash of this script and the files it
# installs, nothing is done.  PFBD_IMAGE_REBUILD=1 forces a rebuild.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
OUT=${1:-$REPO/build/image}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

IMG_NAME=debian-bookworm.raw
IMG="$OUT/$IMG_NAME"
SUITE=bookworm
DISK_MIB=960          # apparent size of the raw disk
PART_START=2048       # first sector of the root partition (1 MiB)

STAMP_WANT=$(cat "$HERE/build-image.sh" "$HERE/pfbd-autorun.sh" \
                 "$HERE/pfbd-autorun.service" | sha256sum | cut -d' ' -f1)
up_to_date() {
    [ -z "${PFBD_IMAGE_REBUILD:-}" ] && [ -f "$OUT/stamp" ] && [ -s "$IMG" ] &&
        [ "$(cat "$OUT/stamp")" = "$STAMP_WANT" ]
}
up_to_date && exit 0

log() { echo "build-image: $*" >&2; }

# Serialise concurrent builders (make image and a test at the same time).
exec 9>"$OUT/.lock"
flock 9
up_to_date && exit 0

T0=$(date +%s)
if [ "$(id -u)" != 0 ]; then
    log "must run as root (mmdebstrap runs the packages' maintainer scripts in a chroot)"
    exit 1
fi

# ---------------------------------------------------------------- host tools
need=()
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
command -v sfdisk >/dev/null || need+=(fdisk)
command -v mke2fs >/dev/null || need+=(e2fsprogs)
{ command -v grub-mkimage >/dev/null && [ -f /usr/lib/grub/i386-pc/boot.img ]; } ||
    need+=(grub-pc-bin)
if [ ${#need[@]} != 0 ]; then
    log "installing host packages: ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        "${need[@]}" >&2
fi

# The URI of the host's Debian archive entry (scripts/debian-uri.sh, also
# used by scripts/install-deps.sh).
. /etc/os-release
if [ "${ID:-}" != debian ] || [ -z "${VERSION_CODENAME:-}" ]; then
    log "this script knows Debian hosts only (found ${PRETTY_NAME:-unknown})"
    exit 1
fi
codename=$VERSION_CODENAME
URI=$(bash "$REPO/scripts/debian-uri.sh" "$codename" || true)
if [ -z "$URI" ]; then
    log "no Debian entry for '$codename' in /etc/apt: cannot pick a mirror"
    exit 1
fi
log "mirror $URI, suite $SUITE"

# ---------------------------------------------------------------- root tree
SCRATCH="$OUT/scratch"
ROOT="$SCRATCH/root"
# mmdebstrap mounts /proc, /sys and /dev in the chroot while it works: should
# one be left behind (a killed build), unmount it rather than delete through
# it (and never cross into another file system when deleting).
clean_scratch() {
    local m
    [ -e "$SCRATCH" ] || return 0
    for m in $(awk -v d="$SCRATCH/" 'index($5, d) == 1 { print $5 }'                    /proc/self/mountinfo | sort -r); do
        umount -l "$m" || true
    done
    rm -rf --one-file-system "$SCRATCH"
}
clean_scratch
mkdir -p "$SCRATCH"
trap clean_scratch EXIT

# Kernel modules no QEMU guest of this image needs (GPUs, sound, wireless,
# media, most NICs, ...) and documentation are not unpacked at all (dpkg
# path-exclude, in effect while the packages after the Essential set are
# installed: on mmdebstrap's command line the filter would make it extract
# the Essential set through its slow mmtarfilter), which halves the kernel's
# size.  Only file names are excluded (*.ko, *.gz, *.mo): dpkg fails on
# packages whose excluded directories hold paths it does not exclude.
# depmod runs after unpacking, so modules.dep is consistent.
M=/lib/modules/*/kernel
EXCLUDES=(
    "/usr/share/doc/*.gz" "/usr/share/man/*.gz" "/usr/share/info/*.gz"
    "/usr/share/locale/*.mo"
    "$M/sound/*.ko" "$M/drivers/gpu/*.ko" "$M/drivers/media/*.ko"
    "$M/drivers/iio/*.ko" "$M/drivers/infiniband/*.ko" "$M/drivers/staging/*.ko"
    "$M/drivers/bluetooth/*.ko" "$M/drivers/net/wireless/*.ko"
    "$M/drivers/net/ethernet/*.ko" "$M/net/wireless/*.ko" "$M/net/mac80211/*.ko"
    "$M/net/bluetooth/*.ko" "$M/drivers/isdn/*.ko" "$M/drivers/usb/serial/*.ko"
    "$M/drivers/hwmon/*.ko" "$M/drivers/mfd/*.ko"
)
FILTERS="$SCRATCH/dpkg-filters"
{
    echo "# pfbd-qemu image (tests/image/build-image.sh): files left out"
    for e in "${EXCLUDES[@]}"; do echo "path-exclude=$e"; done
    echo "path-include=$M/drivers/net/ethernet/intel/*.ko"
} >"$FILTERS"

PKGS=systemd-sysv,udev,kmod,linux-image-amd64,initramfs-tools,zstd,e2fsprogs,fio

# Before anything is installed: the initramfs configuration, so that the
# kernel's postinst builds the small initramfs right away.
SETUP_HOOK='set -e
mkdir -p "$1/etc/initramfs-tools/conf.d" "$1/etc/initramfs-tools/hooks"
cat >"$1/etc/initramfs-tools/conf.d/pfbd" <<EOF
# pfbd-qemu image: only the listed modules (hooks/pfbd), zstd
MODULES=list
COMPRESS=zstd
EOF
cat >"$1/etc/initramfs-tools/hooks/pfbd" <<"EOF"
#!/bin/sh
# pfbd-qemu image: the root file system is ext4 on a virtio-blk disk
[ "$1" = prereqs ] && exit 0
. /usr/share/initramfs-tools/hook-functions
for m in virtio_pci virtio_blk ext4 crc32c_generic; do
    manual_add_modules $m
done
force_load virtio_pci
force_load virtio_blk
EOF
chmod 0755 "$1/etc/initramfs-tools/hooks/pfbd"'

log "mmdebstrap: $PKGS"
T1=$(date +%s)
# The .deb files are kept in OUTDIR/debs for the next build (apt checks them
# against the mirror's index and downloads only what changed).
mkdir -p "$OUT/debs" "$SCRATCH/debs"
mmdebstrap --mode=root --format=directory --variant=minbase \
    --include="$PKGS" \
    --skip=essential/unlink \
    --setup-hook='mkdir -p "$1/var/cache/apt/archives"' \
    --setup-hook="sync-in $OUT/debs /var/cache/apt/archives" \
    --customize-hook="sync-out /var/cache/apt/archives $SCRATCH/debs" \
    --aptopt='Acquire::Languages "none"' \
    --dpkgopt=force-unsafe-io \
    --setup-hook="$SETUP_HOOK" \
    --essential-hook="copy-in $FILTERS /etc/dpkg/dpkg.cfg.d" \
    "$SUITE" "$ROOT" "deb $URI $SUITE main" >"$SCRATCH/mmdebstrap.log" 2>&1 || {
        cp "$SCRATCH/mmdebstrap.log" "$OUT/mmdebstrap.log"
        tail -40 "$SCRATCH/mmdebstrap.log" >&2
        log "mmdebstrap failed (log: $OUT/mmdebstrap.log)"
        exit 1
    }
T2=$(date +%s)
rm -rf "$OUT/debs"
mv "$SCRATCH/debs" "$OUT/debs"
log "mmdebstrap done in $((T2 - T1)) s"

KVER=$(ls "$ROOT/lib/modules")
[ "$(echo "$KVER" | wc -w)" = 1 ] || { log "expected one kernel, got: $KVER"; exit 1; }
[ -s "$ROOT/boot/vmlinuz-$KVER" ] && [ -s "$ROOT/boot/initrd.img-$KVER" ] ||
    { log "kernel or initramfs missing in /boot"; exit 1; }
# the initramfs must be able to mount root from /dev/vda1
inits=$(chroot "$ROOT" lsinitramfs "/boot/initrd.img-$KVER")
for m in virtio_pci virtio_blk ext4; do
    grep -q "/$m\.ko" <<<"$inits" || { log "$m.ko missing in the initramfs"; exit 1; }
done

# ---------------------------------------------------------------- configure
ROOT_UUID=$(cat /proc/sys/kernel/random/uuid)
CMDLINE="root=UUID=$ROOT_UUID ro console=ttyS0,115200 loglevel=4 systemd.show_status=error"

echo pfbd-image >"$ROOT/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tpfbd-image\n' >"$ROOT/etc/hosts"
printf 'UUID=%s\t/\text4\terrors=remount-ro\t0\t0\n' "$ROOT_UUID" >"$ROOT/etc/fstab"
# a fixed machine id: no "first boot" (systemd-firstboot would prompt)
tr -d '-' </proc/sys/kernel/random/uuid >"$ROOT/etc/machine-id"
chroot "$ROOT" passwd --delete root >/dev/null
echo qemu_fw_cfg >"$ROOT/etc/modules-load.d/pfbd.conf"
mkdir -p "$ROOT/etc/systemd/journald.conf.d"
printf '[Journal]\nStorage=volatile\n' >"$ROOT/etc/systemd/journald.conf.d/pfbd.conf"

install -m 0755 "$HERE/pfbd-autorun.sh" "$ROOT/usr/local/sbin/pfbd-autorun"
install -m 0644 "$HERE/pfbd-autorun.service" "$ROOT/etc/systemd/system/pfbd-autorun.service"
chroot "$ROOT" systemctl enable pfbd-autorun.service >/dev/null 2>&1
# ttyS0 belongs to the job when there is one; otherwise root logs in there
d="$ROOT/etc/systemd/system/serial-getty@ttyS0.service.d"
mkdir -p "$d"
cat >"$d/pfbd.conf" <<'EOF'
[Unit]
ConditionPathExists=!/sys/firmware/qemu_fw_cfg/by_name/opt/pfbd/job/raw
After=pfbd-autorun.service
[Service]
ExecStart=
ExecStart=-/sbin/agetty --autologin root --keep-baud 115200,57600,38400,9600 %I $TERM
EOF
# nothing that is not needed for booting and running a job
for u in getty@tty1.service getty-static.service apt-daily.timer \
         apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer \
         e2scrub_reap.service fstrim.timer systemd-firstboot.service \
         systemd-binfmt.service proc-sys-fs-binfmt_misc.automount; do
    chroot "$ROOT" systemctl mask "$u" >/dev/null 2>&1
done
sed -i '/^force-unsafe-io$/d' "$ROOT/etc/dpkg/dpkg.cfg.d/99mmdebstrap"
rm -f "$ROOT/etc/dpkg/dpkg.cfg.d/dpkg-filters"
rm -rf "$ROOT"/var/cache/apt/*.bin "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/log/*.log \
       "$ROOT"/tmp/* "$ROOT"/var/tmp/*

# GRUB: core.img in the MBR gap, modules + grub.cfg in /boot/grub
mkdir -p "$ROOT/boot/grub/i386-pc"
cp /usr/lib/grub/i386-pc/*.mod /usr/lib/grub/i386-pc/*.lst "$ROOT/boot/grub/i386-pc/"
cat >"$ROOT/boot/grub/grub.cfg" <<EOF
# pfbd-qemu image (tests/image/build-image.sh)
serial --unit=0 --speed=115200
terminal_input serial
terminal_output serial
set timeout=0
menuentry 'Debian GNU/Linux $SUITE (pfbd image, $KVER)' {
    echo 'GRUB: loading Linux $KVER from the pfbd image'
    linux /boot/vmlinuz-$KVER $CMDLINE
    initrd /boot/initrd.img-$KVER
}
EOF
grub-mkimage -O i386-pc -o "$SCRATCH/core.img" -p '(hd0,msdos1)/boot/grub' \
    biosdisk part_msdos ext2
core_sectors=$(( ($(stat -c %s "$SCRATCH/core.img") + 511) / 512 ))
[ $core_sectors -lt $((PART_START - 1)) ] || { log "core.img too big"; exit 1; }

# ---------------------------------------------------------------- disk
T3=$(date +%s)
rm -f "$IMG.tmp"
truncate -s "${DISK_MIB}M" "$IMG.tmp"
printf 'label: dos\nstart=%d, type=83, bootable\n' $PART_START |
    sfdisk --quiet "$IMG.tmp"
FS_KIB=$(( DISK_MIB * 1024 - PART_START / 2 ))
mke2fs -q -F -t ext4 -L pfbd-root -U "$ROOT_UUID" -m 0 -J size=16 \
    -E offset=$((PART_START * 512)) -d "$ROOT" "$IMG.tmp" "${FS_KIB}k"
dd if=/usr/lib/grub/i386-pc/boot.img of="$IMG.tmp" bs=440 count=1 conv=notrunc status=none
dd if="$SCRATCH/core.img" of="$IMG.tmp" bs=512 seek=1 conv=notrunc status=none
T4=$(date +%s)

used=$(du -k "$IMG.tmp" | cut -f1)
mv "$IMG.tmp" "$IMG"
cat >"$OUT/image-info" <<EOF
image=$IMG_NAME
suite=$SUITE
kernel=$KVER
root_uuid=$ROOT_UUID
cmdline=$CMDLINE
apparent_mib=$DISK_MIB
allocated_kib=$used
build_seconds=$((T4 - T0))
mmdebstrap_seconds=$((T2 - T1))
disk_seconds=$((T4 - T3))
EOF
echo "$STAMP_WANT" >"$OUT/stamp"
log "done in $((T4 - T0)) s: $IMG (${DISK_MIB} MiB apparent, $((used / 1024)) MiB allocated, kernel $KVER)"

#!/bin/bash
# export-series.sh DSC OUTDIR
#
# Write the exported series (patches/export/plan) to OUTDIR/patches: one
# git format-patch series against the QEMU tree that Debian source
# package DSC unpacks to, in which every new file travels with the patch
# that introduces it.  OUTDIR/tree is the git repository it was made in
# (its first commit the unpacked tree).
#
# Checks on the way: every overlay file (scripts/overlay-files.sh) goes
# into exactly one patch, every patch of patches/series into one, and no
# overlay file replaces an upstream one.  (That OUTDIR/tree ends up equal
# to the overlay build's tree is not checked here; diff -r of the two,
# ignoring .git, shows it by hand.)
set -euo pipefail

dsc=${1:?usage: $0 DSC OUTDIR}
out=${2:?usage: $0 DSC OUTDIR}
top=$(cd "$(dirname "$0")/.." && pwd)
plan=$top/patches/export/plan

die() { echo "export-series: error: $*" >&2; exit 1; }

export GIT_AUTHOR_NAME="pfbd-qemu developers"
export GIT_AUTHOR_EMAIL=pfbd-qemu@localhost
export GIT_COMMITTER_NAME="$GIT_AUTHOR_NAME"
export GIT_COMMITTER_EMAIL="$GIT_AUTHOR_EMAIL"
git_() { git -C "$tree" -c core.autocrlf=false -c commit.gpgsign=false "$@"; }

# patches/NNNN-*.patch of number $1
patch_file() {
    local f=("$top"/patches/"$1"-*.patch)
    [ -f "${f[0]}" ] || die "plan names patch $1, which patches/ does not have"
    echo "${f[0]}"
}

rm -rf "$out"
mkdir -p "$out/patches"
out=$(cd "$out" && pwd)
tree=$out/tree
dpkg-source --no-check -x "$dsc" "$tree" >/dev/null
git_ init -q
git_ add -A
git_ commit -q --no-verify -m "QEMU source as unpacked"
base=$(git_ rev-parse HEAD)

declare -A used_patch used_file
while read -r line; do
    line=${line%%#*}
    [ -n "${line// /}" ] || continue
    nums=${line%%+*}
    files=
    if [[ $line == *+* ]]; then
        files=${line#*+}
    fi
    read -ra nums <<<"$nums"
    # The patches, folded into one commit
    for n in "${nums[@]}"; do
        [ -z "${used_patch[$n]:-}" ] || die "patch $n is twice in the plan"
        used_patch[$n]=1
        git_ am -q --no-3way "$(patch_file "$n")" ||
            die "patch $n does not apply in the plan's order"
    done
    if [ ${#nums[@]} -gt 1 ]; then
        git_ reset -q --soft "HEAD~$((${#nums[@]} - 1))"
    fi
    # The overlay files that come with it
    [ -z "${files// /}" ] || files=$(cd "$top" && eval "ls -d $files") ||
        die "a file of '$files' is missing"
    for f in $files; do
        [ -z "${used_file[$f]:-}" ] || die "file $f is twice in the plan"
        used_file[$f]=1
        [ ! -e "$tree/$f" ] || die "overlay file $f would replace an upstream file"
        mkdir -p "$tree/$(dirname "$f")"
        cp "$top/$f" "$tree/$f"
        git_ add "$f"
    done
    msg=$top/patches/export/${nums[0]}.msg
    if [ -f "$msg" ]; then
        git_ commit -q --amend --no-verify -F "$msg"
    else
        git_ commit -q --amend --no-verify --no-edit
    fi
done <"$plan"

# Nothing left out
while read -r p; do
    p=${p%%#*}
    [ -n "$p" ] || continue
    [ -n "${used_patch[${p%%-*}]:-}" ] || die "patches/$p is not in the plan"
done <"$top/patches/series"
while read -r f; do
    [ -n "${used_file[$f]:-}" ] || die "overlay file $f is not in the plan"
done < <(bash "$top/scripts/overlay-files.sh")

git_ format-patch -q --zero-commit -o "$out/patches" "$base..HEAD"
echo "export-series: $(ls "$out/patches" | wc -l) patches in $out/patches"

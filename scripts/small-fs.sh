#!/usr/bin/env bash
# A small ext4 file system on a loop device, for tests that fill a disk:
#
#   scripts/small-fs.sh mount DIR SIZE_MB   # DIR.small-fs.img (SIZE_MB MiB), ext4, on DIR
#   scripts/small-fs.sh umount DIR          # unmounts DIR, detaches the loop device, deletes the image
#
# Both are idempotent and safe after a failure: `mount` on a DIR that already has this
# file system does nothing; `umount` undoes whatever part of a `mount` happened (a
# mount, a loop device, an image) and does nothing if there is nothing to undo.
#
# The file system has no reserved blocks (mkfs.ext4 -m 0): root gets ENOSPC at the same
# point as anyone else. Its root directory is mode 0700.
#
# Exit status: 0 done; 77 this machine cannot do it (not root, no loop devices, a missing
# tool, mounting not permitted): a test should skip; 1 anything else.
set -euo pipefail

log() { printf '[small-fs] %s\n' "$*" >&2; }
cannot() {
    log "a small file system cannot be mounted here: $*"
    exit 77
}
fail() {
    log "$*"
    exit 1
}
usage() {
    log "usage: $0 mount DIR SIZE_MB | $0 umount DIR"
    exit 1
}

PATH="$PATH:/usr/sbin:/sbin"

image_of() { printf '%s.small-fs.img' "${1%/}"; }

# The loop devices backed by the image (none if it does not exist).
loops_of() {
    local image=$1
    [ -e "$image" ] || return 0
    losetup --noheadings --output NAME --associated "$image" 2>/dev/null || true
}

is_mounted() { mountpoint -q "$1" 2>/dev/null; }

do_mount() {
    local dir=$1 size_mb=$2
    case "$size_mb" in
    '' | *[!0-9]*) fail "SIZE_MB must be a number of MiB, not '$size_mb'" ;;
    esac
    [ "$size_mb" -ge 2 ] || fail "SIZE_MB must be at least 2"
    [ "$(id -u)" -eq 0 ] || cannot "needs root (losetup, mount)"
    for tool in losetup mkfs.ext4 mount umount mountpoint; do
        command -v "$tool" >/dev/null || cannot "$tool is not installed"
    done
    [ -e /dev/loop-control ] || cannot "no /dev/loop-control (no loop device support)"
    mkdir -p "$dir"
    dir="$(cd "$dir" && pwd -P)"
    local image
    image="$(image_of "$dir")"
    if is_mounted "$dir"; then
        local source
        source="$(findmnt --noheadings --output SOURCE --mountpoint "$dir" 2>/dev/null || true)"
        if [ -n "$source" ] && loops_of "$image" | grep -qxF "$source"; then
            log "$dir already has its file system ($source)"
            return 0
        fi
        fail "$dir is already a mount point of something else (${source:-unknown})"
    fi
    # Leftovers of an earlier attempt: start over.
    do_umount "$dir"
    [ -z "$(ls -A "$dir")" ] || fail "$dir is not empty"
    truncate --size "${size_mb}M" "$image" || fail "cannot create $image"
    mkfs.ext4 -q -F -m 0 -L kss-small-fs "$image" >&2 || {
        rm -f "$image"
        fail "mkfs.ext4 failed"
    }
    local loop
    if ! loop="$(losetup --find --show "$image" 2>&1)"; then
        rm -f "$image"
        cannot "losetup failed: $loop"
    fi
    local out
    if ! out="$(mount -t ext4 "$loop" "$dir" 2>&1)"; then
        losetup --detach "$loop" || true
        rm -f "$image"
        case "$out" in
        *ermission* | *superuser* | *"not permitted"*) cannot "mount failed: $out" ;;
        *) fail "mount failed: $out" ;;
        esac
    fi
    chmod 0700 "$dir"
    log "mounted a ${size_mb} MiB ext4 on $dir ($loop, image $image)"
}

do_umount() {
    local dir=$1
    if [ -d "$dir" ]; then
        dir="$(cd "$dir" && pwd -P)"
    fi
    local image
    image="$(image_of "$dir")"
    if is_mounted "$dir"; then
        # A process that still has a file open there (a server being killed) may need a
        # moment; then detach it lazily rather than leave it mounted.
        local tries=0
        until umount "$dir" 2>/dev/null; do
            tries=$((tries + 1))
            if [ "$tries" -ge 20 ]; then
                log "$dir is busy; detaching it lazily"
                umount --lazy "$dir" || fail "cannot unmount $dir"
                break
            fi
            sleep 0.25
        done
    fi
    local loop
    for loop in $(loops_of "$image"); do
        losetup --detach "$loop" 2>/dev/null || log "cannot detach $loop"
    done
    rm -f "$image"
}

[ $# -ge 1 ] || usage
case "$1" in
mount)
    [ $# -eq 3 ] || usage
    do_mount "$2" "$3"
    ;;
umount)
    [ $# -eq 2 ] || usage
    do_umount "$2"
    ;;
*) usage ;;
esac

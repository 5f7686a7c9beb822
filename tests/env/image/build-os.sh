#!/usr/bin/env bash
# Builds the "OS" image of the booted-system test (tests/integration/tests/booted.rs), a stand-in
# for KDE Linux: the Debian image (images/debian/build.sh) plus Incus 6.0 from the backports suite, systemd-sysext
# merging /var/lib/extensions at boot, and the reload after the merge that newer systemd does by
# itself (os-files/). Prints the directory holding metadata.tar.gz and rootfs.tar.zst.
#
# Cached like the test image, under $KAPSULE_CACHE_DIR/images/os-<key>.
# Usage: build-os.sh [--print-key]
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BASE_RECIPE=$HERE/../../../images/debian/build.sh

recipe_key() {
    {
        "$BASE_RECIPE" --print-key
        cat "$HERE/build-os.sh"
        find "$HERE/os-files" -type f -print0 | sort -z | xargs -0 cat
    } | sha256sum | cut -c1-16
}

image_recipe_start "OS image" "os-" "$@"

BASE=$("$BASE_RECIPE")
SUITE=$(codename)
WORK=$(mktemp -d "$KAPSULE_CACHE_DIR/build-os.XXXXXX")
cleanup() {
    mountpoint -q "$WORK/rootfs/proc" 2>/dev/null && umount -l "$WORK/rootfs/proc" || true
    rm -rf "$WORK"
}
trap cleanup EXIT

log "building OS image $KEY: the test image plus Incus from ${SUITE}-backports"
mkdir -p "$WORK/rootfs"
tar --numeric-owner --xattrs --xattrs-include='*' -C "$WORK/rootfs" -I zstd -xf "$BASE/rootfs.tar.zst"

# apt inside the tree uses the machine's own sources and settings (up.sh added the backports
# suite there), for this step only: no mirror name is written into the image or the repo.
root=$WORK/rootfs
mkdir -p "$WORK/apt-saved"
cp -a "$root/etc/apt/." "$WORK/apt-saved/"
cp -a /etc/apt/sources.list.d/. "$root/etc/apt/sources.list.d/"
[ -f /etc/apt/sources.list ] && cp /etc/apt/sources.list "$root/etc/apt/"
cp -a /etc/apt/apt.conf.d/. "$root/etc/apt/apt.conf.d/"
cp /etc/resolv.conf "$root/etc/resolv.conf.kapsule" 2>/dev/null || true
[ -f "$root/etc/resolv.conf.kapsule" ] && mv "$root/etc/resolv.conf.kapsule" "$root/etc/resolv.conf"
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 0755 "$root/usr/sbin/policy-rc.d"
mount -t proc proc "$root/proc"
if ! chroot "$root" sh -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends -t ${SUITE}-backports incus-base incus-client" >"$WORK/apt.log" 2>&1; then
    tail -n 30 "$WORK/apt.log" >&2
    die "installing Incus into the OS image failed (log above)"
fi
umount "$root/proc"
rm -f "$root/usr/sbin/policy-rc.d" "$root/etc/resolv.conf"
rm -rf "$root/etc/apt"
mkdir -p "$root/etc/apt"
cp -a "$WORK/apt-saved/." "$root/etc/apt/"
rm -rf "$root/var/cache/apt/archives/"*.deb "$root/var/lib/apt/lists/"*

cp -a "$HERE/os-files/." "$root/"
# systemd-sysext.service merges /var/lib/extensions at every boot (as KDE Linux does), enabled as
# systemctl enable would.
mkdir -p "$root/etc/systemd/system/sysinit.target.wants"
ln -sf /lib/systemd/system/systemd-sysext.service "$root/etc/systemd/system/sysinit.target.wants/"
[ -e "$root/etc/systemd/system/sockets.target.wants/incus.socket" ] ||
    die "the incus package did not enable incus.socket"

image_recipe_finish "OS image" "Kapsule booted-system test OS ($SUITE, systemd, Incus)" "$WORK" "$root"

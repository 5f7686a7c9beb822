#!/usr/bin/env bash
# Builds Kapsule's Debian image with debootstrap, offline from the machine's own apt mirror, and
# prints the directory holding it: `metadata.tar.gz` + `rootfs.tar.zst`, the split format Incus
# imports and that `kapsule image import DIR` and `kapsule-init` (as a bundled image) load.
#
# It is the demo image of tests/env/try.sh and the image of the tests, so it carries everything
# they need and nothing downloads at run time: systemd as init, D-Bus, sudo, util-linux `su`,
# podman/docker/runc/crun for nested containers, uidmap for rootless podman, socat for socket
# tests, busybox for a tiny nested image; and the Kapsule hooks of files/.kapsule (README.md).
#
# The result is cached under $KAPSULE_CACHE_DIR/images/<key>, where <key> hashes this recipe and the
# files beside it, so a second run reuses it and a changed recipe rebuilds it.
#
# Usage: build.sh [--print-key]
source "$(dirname "${BASH_SOURCE[0]}")/../../tests/env/lib.sh"

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# Packages on top of debootstrap's minbase. debootstrap does not resolve virtual packages, so the
# providers are named explicitly: libpam-systemd (polkitd needs a logind) and
# containernetworking-plugins (podman's container-network-stack).
PACKAGES=(
    systemd-sysv libpam-systemd dbus dbus-user-session
    sudo passwd login util-linux
    iproute2 procps socat less ca-certificates tzdata
    podman containernetworking-plugins fuse-overlayfs uidmap slirp4netns crun runc
    docker.io busybox-static
    polkitd pkexec
)

recipe_key() {
    {
        cat "$HERE"/build.sh
        find "$HERE/files" -type f -print0 | sort -z | xargs -0 cat
        declare -f image_recipe_start image_recipe_finish
        codename
        uname -m
    } | sha256sum | cut -c1-16
}

image_recipe_start "Debian image" "" "$@"

command -v debootstrap >/dev/null || die "debootstrap is not installed (run tests/env/up.sh)"
command -v zstd >/dev/null || die "zstd is not installed (run tests/env/up.sh)"

MIRROR=$(apt_mirror | cut -f1)
SUITE=$(codename)
WORK=$(mktemp -d "$KAPSULE_CACHE_DIR/build.XXXXXX")
# The rootfs is large; never leave a half-built one behind, whatever happens.
cleanup() {
    # A failed debootstrap may leave proc/sys mounted inside the tree.
    for m in proc sys dev/pts dev; do
        mountpoint -q "$WORK/rootfs/$m" 2>/dev/null && umount -l "$WORK/rootfs/$m" || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

log "building the Debian image $KEY from $SUITE (debootstrap, a few minutes)"
include=$(IFS=,; printf '%s' "${PACKAGES[*]}")
mkdir -p "$KAPSULE_CACHE_DIR/debs"
if ! debootstrap --variant=minbase --include="$include" --cache-dir="$KAPSULE_CACHE_DIR/debs" \
    "$SUITE" "$WORK/rootfs" "$MIRROR" >"$WORK/debootstrap.log" 2>&1; then
    tail -n 30 "$WORK/debootstrap.log" >&2
    die "debootstrap failed (log above)"
fi
# debootstrap exits 0 even when some packages stayed unconfigured; that would break tests later
# in confusing ways, so check now.
if grep -q 'Failure while configuring' "$WORK/debootstrap.log"; then
    grep -B2 -A5 'Failure while configuring' "$WORK/debootstrap.log" >&2
    die "debootstrap left packages unconfigured"
fi

# Files of the recipe (units, config) are copied over the tree as they are.
cp -a "$HERE/files/." "$WORK/rootfs/"
# Enable the units shipped in files/ the way systemctl enable would, without running systemctl.
mkdir -p "$WORK/rootfs/etc/systemd/system/sysinit.target.wants"
ln -sf /etc/systemd/system/kapsule-test-cgroup-fix.service \
    "$WORK/rootfs/etc/systemd/system/sysinit.target.wants/kapsule-test-cgroup-fix.service"
# Package caches are not needed at run time and only make the image bigger.
rm -rf "$WORK/rootfs/var/cache/apt/archives/"*.deb "$WORK/rootfs/var/lib/apt/lists/"*
# Incus sets the hostname from the container name; a baked-in one would win over it.
rm -f "$WORK/rootfs/etc/hostname"

image_recipe_finish "Debian image" "Kapsule Debian image ($SUITE, systemd, podman, docker)" \
    "$WORK" "$WORK/rootfs"

#!/usr/bin/env bash
# Builds Kapsule's Arch Linux image, the default container image for KDE Linux (mkosi.conf beside
# this script), and packs it as an Incus image in OUT: incus.tar.xz (metadata) + rootfs.squashfs.
# Bundle OUT in the OS as /usr/share/kapsule/images/archlinux/ (kapsule-init imports it at first
# boot), import it (`kapsule image import OUT`), or publish it (images/publish.sh).
#
# Needs root, mkosi >= 24 and what mkosi needs to install Arch packages (pacman and the Arch
# keyring: an Arch or KDE Linux builder), and mksquashfs. Where any is missing it says which and
# exits 2 without building; `--check` only checks.
#
# Usage: build.sh OUT | build.sh --check
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

missing() {
    local why=()
    [ "$(id -u)" = 0 ] || why+=("root (mkosi installs packages into the tree as root)")
    if ! command -v mkosi >/dev/null; then
        why+=("mkosi >= 24 (Debian 12 has 14; Debian 13, Arch and Fedora have newer)")
    else
        local version
        version=$(mkosi --version | grep -o '[0-9]\+' | head -n 1)
        [ "${version:-0}" -ge 24 ] || why+=("mkosi >= 24 (this is mkosi $version)")
    fi
    command -v pacman >/dev/null || why+=("pacman (mkosi installs Arch packages with the builder's pacman)")
    command -v pacman-key >/dev/null || why+=("pacman-key and the Arch keyring (archlinux-keyring)")
    command -v mksquashfs >/dev/null || why+=("mksquashfs (squashfs-tools)")
    if [ ${#why[@]} -gt 0 ]; then
        printf 'cannot build the Arch Linux image here; missing:\n' >&2
        printf '  - %s\n' "${why[@]}" >&2
        return 0
    fi
    return 1
}

case ${1:-} in
    --check)
        if missing; then exit 2; fi
        echo "ready to build the Arch Linux image"
        exit 0
        ;;
    "" | -*)
        echo "usage: build.sh OUT | build.sh --check" >&2
        exit 2
        ;;
esac
out=$1
if missing; then exit 2; fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkosi --directory "$HERE" --output-dir "$work" build
tree=$work/archlinux
[ -d "$tree/usr" ] || { echo "mkosi left no tree in $tree" >&2; exit 1; }

serial=$(date -u +%Y%m%d_%H%M)
cat >"$work/metadata.yaml" <<META
architecture: x86_64
creation_date: $(date +%s)
properties:
  os: archlinux
  release: rolling
  architecture: x86_64
  variant: default
  serial: "$serial"
  description: Kapsule Arch Linux ($serial)
META
mkdir -p "$out"
tar -C "$work" -cJf "$out/incus.tar.xz" metadata.yaml
# xattrs kept: file capabilities (newuidmap for rootless podman) live in them.
mksquashfs "$tree" "$out/rootfs.squashfs" -comp zstd -noappend -quiet
echo "built the Arch Linux image in $out"

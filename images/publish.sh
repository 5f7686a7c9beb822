#!/usr/bin/env bash
# Publishes a built image into a simplestreams tree, the format Incus pulls from: what a web
# server then serves as a Kapsule remote ([remote.<name>] url = ..., docs/ARCHITECTURE.md).
#
# Usage: publish.sh --alias ALIAS [--version VERSION] [--os NAME] [--default-options JSON]
#                   IMAGE_DIR STREAM_DIR
#
#   IMAGE_DIR   a split image: a metadata tarball (incus.tar.xz, metadata.tar.xz or
#               metadata.tar.gz) and a root file system (rootfs.squashfs or rootfs.tar.*),
#               as images/*/build.sh write them
#   STREAM_DIR  the tree to add it to (made if missing); other images and older versions of
#               this one stay, so clients can still refresh from where they are
#   --alias     what clients name it: `kapsule create --image <remote>:ALIAS`
#   --version   YYYYMMDD_HHMM (Incus reads the date from the first 8 digits); default: now (UTC)
#   --os        the product's OS name (default: the alias's first part)
#   --default-options  the image's option defaults as a JSON object, published as the
#               requirement `kapsule_default_options` (the one product field Incus keeps on the
#               pulled image, as `requirements.kapsule_default_options`)
#
# Needs jq and sha256sum. Files land under STREAM_DIR/images/<alias>/<version>/.
set -euo pipefail

die() {
    echo "publish.sh: $*" >&2
    exit 2
}

alias='' version=$(date -u +%Y%m%d_%H%M) os='' options=''
while [ $# -gt 2 ]; do
    case $1 in
        --alias) alias=$2; shift 2 ;;
        --version) version=$2; shift 2 ;;
        --os) os=$2; shift 2 ;;
        --default-options) options=$2; shift 2 ;;
        *) die "unknown option $1 (see the header of this script)" ;;
    esac
done
[ $# -eq 2 ] || die "usage: publish.sh --alias ALIAS [options] IMAGE_DIR STREAM_DIR"
image=$1 stream=$2
[ -n "$alias" ] || die "--alias is required"
case $alias in
    *[!A-Za-z0-9._+/-]* | /* | */ | *//* | *..*) die "'$alias' is not an image alias" ;;
esac
[[ $version =~ ^[0-9]{8}(_[0-9]{4})?$ ]] || die "--version must be YYYYMMDD or YYYYMMDD_HHMM, not '$version'"
[ -n "$os" ] || os=${alias%%/*}
if [ -n "$options" ]; then
    jq -e 'type == "object"' <<<"$options" >/dev/null 2>&1 || die "--default-options must be a JSON object"
fi
command -v jq >/dev/null || die "jq is not installed"

first() {
    local name
    for name in "$@"; do
        if [ -f "$image/$name" ]; then
            printf '%s\n' "$name"
            return 0
        fi
    done
    return 1
}
meta=$(first incus.tar.xz metadata.tar.xz metadata.tar.gz) ||
    die "$image has no metadata tarball (incus.tar.xz, metadata.tar.xz or metadata.tar.gz)"
root=$(first rootfs.squashfs rootfs.tar.xz rootfs.tar.gz rootfs.tar.zst) ||
    die "$image has no root file system (rootfs.squashfs or rootfs.tar.xz/gz/zst)"
# Incus's names for the two: it finds the metadata by the item type incus.tar.xz whatever its
# compression, and the fingerprint field by the root file system's type.
case $root in
    rootfs.squashfs) root_type=squashfs combined=combined_squashfs_sha256 ;;
    *) root_type=root.tar.xz combined=combined_rootxz_sha256 ;;
esac

arch=$(tar -xOf "$image/$meta" metadata.yaml 2>/dev/null | sed -n 's/^architecture: *//p' | head -n 1)
case ${arch:-x86_64} in
    x86_64 | amd64) arch=amd64 ;;
    aarch64 | arm64) arch=arm64 ;;
    *) die "unsupported architecture '$arch' in $meta" ;;
esac

dir=images/${alias//\//-}/$version
mkdir -p "$stream/$dir" "$stream/streams/v1"
cp "$image/$meta" "$stream/$dir/$meta"
cp "$image/$root" "$stream/$dir/$root"
sha() { sha256sum "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }
fingerprint=$(cat "$image/$meta" "$image/$root" | sha256sum | cut -d' ' -f1)

products=$stream/streams/v1/images.json
[ -f "$products" ] || echo '{"content_id":"images","datatype":"image-downloads","format":"products:1.0","products":{}}' >"$products"
product="kapsule:${alias//\//:}:$arch:default"
jq --arg product "$product" --arg alias "$alias" --arg arch "$arch" --arg os "$os" \
    --arg version "$version" --arg options "$options" \
    --arg meta_path "$dir/$meta" --arg meta_sha "$(sha "$image/$meta")" --argjson meta_size "$(size "$image/$meta")" \
    --arg root_path "$dir/$root" --arg root_sha "$(sha "$image/$root")" --argjson root_size "$(size "$image/$root")" \
    --arg root_type "$root_type" --arg combined "$combined" --arg fingerprint "$fingerprint" '
    .products[$product] |= (
        (. // {versions: {}})
        + {aliases: $alias, arch: $arch, os: $os, release: "current", release_title: "current",
           variant: "default",
           requirements: (if $options == "" then {} else {kapsule_default_options: $options} end)}
        | .versions[$version] = {items: {
            "incus.tar.xz": {ftype: "incus.tar.xz", path: $meta_path, sha256: $meta_sha, size: $meta_size,
                             ($combined): $fingerprint, combined_sha256: $fingerprint},
            ($root_type): {ftype: $root_type, path: $root_path, sha256: $root_sha, size: $root_size}
          }}
    )' "$products" >"$products.new"
mv "$products.new" "$products"
jq '{format: "index:1.0", index: {images: {datatype: "image-downloads", path: "streams/v1/images.json",
     format: "products:1.0", products: (.products | keys)}}}' "$products" >"$stream/streams/v1/index.json.new"
mv "$stream/streams/v1/index.json.new" "$stream/streams/v1/index.json"
echo "published $alias ($version, $fingerprint) in $stream"

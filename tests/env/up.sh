#!/usr/bin/env bash
# Brings up the test environment on a Debian 12 machine as root, with or without systemd as PID 1:
#   1. installs Incus 6.0 from bookworm-backports (the suite is enabled from the machine's own apt
#      source) and the tools the tests use;
#   2. starts incusd in the background and waits until it is ready;
#   3. creates a `dir` storage pool and a default profile with only a root disk: no network bridge,
#      so the machine's network is never touched; and a btrfs pool beside it, in a loop file;
#   4. builds (or reuses) the test image and imports it under the alias $KAPSULE_TEST_IMAGE, and
#      the booted-system test's OS image (the test image plus Incus) as $KAPSULE_TEST_OS_IMAGE;
#   5. creates the test users, installs the polkit actions and rules, loads kernel modules and
#      makes the tests' network namespace. (Each test starts its own bus and polkitd.)
#
# Idempotent. Whatever it starts is recorded under $KAPSULE_TEST_RUN and stopped by down.sh.
# The environment for the tests is written to $KAPSULE_TEST_RUN/env (source it).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_root

# openssl and xz-utils: the loopback image server of tests/integration/src/simplestreams.rs.
# qt6-base-dev, cmake and g++: tests/qt-client, a client generated from the original daemon's XML by
# Qt's qdbusxml2cpp, as Konsole's libkapsule-qt is.
# flatpak: its flatpak-session-helper is what kapsule-host-exec talks to on the user's session bus.
# desktop-file-utils: desktop-file-validate checks the menu entries `kapsule export` writes.
# file: tells whether the program placed in containers is static.
# btrfs-progs: Incus's btrfs driver runs mkfs.btrfs and btrfs (the btrfs pool; first_boot.rs).
HOST_PACKAGES=(incus-base incus-client debootstrap zstd jq dbus polkitd libxml2-utils shellcheck util-linux tmux iproute2 kmod busybox-static systemd squashfs-tools openssl xz-utils qt6-base-dev cmake g++ flatpak desktop-file-utils file btrfs-progs)

install_packages() {
    local suite missing=() p
    suite=$(codename)
    for p in "${HOST_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0

    if ! grep -rqs -- "${suite}-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
        local mirror uri signed
        mirror=$(apt_mirror)
        uri=$(cut -f1 <<<"$mirror")
        signed=$(cut -f2 <<<"$mirror")
        log "enabling ${suite}-backports from $uri"
        {
            echo "# Written by Kapsule's tests/env/up.sh: Incus 6.0 comes from ${suite}-backports."
            echo "Types: deb"
            echo "URIs: $uri"
            echo "Suites: ${suite}-backports"
            echo "Components: main"
            [ -n "$signed" ] && echo "Signed-By: $signed"
        } >"/etc/apt/sources.list.d/kapsule-${suite}-backports.sources"
    fi
    log "installing ${missing[*]}"
    apt-get update -qq
    # --no-install-recommends: the `incus` meta package and recommends pull in QEMU and swtpm,
    # which are large and useless here (no VM support on the CI machine).
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        -t "${suite}-backports" "${missing[@]}" >/dev/null
}

configure_incus() {
    if ! incus storage show default >/dev/null 2>&1; then
        log "creating storage pool 'default' (dir)"
        incus storage create default dir >/dev/null
    fi
    # KDE Linux's file system is btrfs, where kapsule-init makes a btrfs pool: snapshots and copies
    # are copy-on-write there, and the undo tests run on it as well as on `dir`. Incus makes the
    # file system itself, in a sparse loop file under /var/lib/incus/disks/ that it mounts while it
    # runs: no disk or partition of the machine is touched.
    if ! incus storage show "$KAPSULE_TEST_BTRFS_POOL" >/dev/null 2>&1; then
        log "creating storage pool '$KAPSULE_TEST_BTRFS_POOL' (btrfs in a loop file)"
        incus storage create "$KAPSULE_TEST_BTRFS_POOL" btrfs size=8GiB >/dev/null
    fi
    # A root disk in the default profile for hand-made `incus launch`; Kapsule itself creates
    # containers with `profiles: []` and its own devices. No NIC: no bridge is ever created.
    if ! incus profile device show default 2>/dev/null | grep -q '^root:'; then
        incus profile device add default root disk path=/ pool=default >/dev/null
    fi
}

# import_image ALIAS BUILD_SCRIPT: builds (or reuses) an image with the script and imports it
# under ALIAS, unless Incus has it from the same recipe already.
import_image() {
    local alias=$1 build=$2 dir key have fingerprint
    key=$("$build" --print-key)
    have=$(incus query "/1.0/images/aliases/$alias" 2>/dev/null | jq -r .target || true)
    if [ -n "$have" ] && [ "$(incus query "/1.0/images/$have" | jq -r '.properties["kapsule.recipe"] // ""')" = "$key" ]; then
        log "image $alias ($key) is already imported"
        return 0
    fi
    dir=$("$build")
    if [ -n "$have" ]; then
        log "replacing the outdated image $alias"
        incus image alias delete "$alias"
    fi
    # Incus names a split image by the sha256 of its two files: an image already there (imported
    # earlier from this cache, its alias since moved by another checkout) only needs the alias.
    fingerprint=$(cat "$dir/metadata.tar.gz" "$dir/rootfs.tar.zst" | sha256sum | cut -d' ' -f1)
    if incus query "/1.0/images/$fingerprint" >/dev/null 2>&1; then
        log "image $alias ($key) is in Incus already: aliasing it"
        incus image alias create "$alias" "$fingerprint"
        forget_nameless "$have"
        return 0
    fi
    log "importing $alias"
    incus image import "$dir/metadata.tar.gz" "$dir/rootfs.tar.zst" --alias "$alias" >/dev/null
    forget_nameless "$have"
}

# forget_nameless FINGERPRINT: removes the image an alias was moved away from, once nothing names
# it (each outdated recipe left a few hundred MiB behind). Containers made from it keep their own
# copy of its files.
forget_nameless() {
    local old=$1
    [ -n "$old" ] || return 0
    if [ "$(incus query "/1.0/images/$old" 2>/dev/null | jq '.aliases | length')" = 0 ]; then
        log "removing the outdated image ${old:0:12}"
        incus image delete "$old"
    fi
}

# Plain users for the tests that call the daemon as someone other than root: no Incus group, a
# home of their own. The first stands in for an administrator at the computer (see the polkit
# rules below), the second is nobody special. Kept after down.sh, like the images, so the next run
# need not make them again.
create_test_users() {
    local user
    for user in "$KAPSULE_TEST_USER" "$KAPSULE_TEST_OTHER_USER"; do
        if ! id "$user" >/dev/null 2>&1; then
            useradd --create-home --shell /bin/bash --comment "Kapsule tests" "$user"
            log "created test user $user ($(id -u "$user"))"
        fi
    done
}

# Kapsule's polkit actions and rules where polkitd reads them (it reads actions only from
# /usr/share/polkit-1/actions), and the tests' own rule; down.sh removes all three.
install_polkit_files() {
    install -m 0644 "$KAPSULE_ROOT/polkit/org.kde.kapsule.policy" "$POLKIT_ACTION"
    install -m 0644 "$KAPSULE_ROOT/polkit/50-org.kde.kapsule.rules" "$POLKIT_RULES"
    install -d -m 0755 "$(dirname "$POLKIT_TEST_RULES")"
    # The actions the policy lets a user at the computer take without a password, read from the
    # policy itself, so the tests follow what it says (the rule explains why).
    local at_the_computer
    at_the_computer=$(xmllint --xpath '//action[defaults/allow_active="yes"]/@id' "$KAPSULE_ROOT/polkit/org.kde.kapsule.policy" 2>/dev/null |
        sed -E 's/ *id="([^"]*)"/"\1", /g; s/, $//') || at_the_computer=""
    sed "s|@AT_THE_COMPUTER@|$at_the_computer|" "$KAPSULE_ROOT/tests/env/polkit/40-kapsule-tests.rules" > "$POLKIT_TEST_RULES"
    chmod 0644 "$POLKIT_TEST_RULES"
}

# What systemd-modules-load does at boot with the list Kapsule ships: nested docker and podman
# need these modules, and a container cannot load them. A kernel without loadable modules (no
# /proc/modules) has what it has built in.
load_kernel_modules() {
    local list=$KAPSULE_ROOT/units/modules-load.d/kapsule.conf module
    if [ ! -e /proc/modules ]; then
        log "kernel without loadable modules: nothing to load from ${list#"$KAPSULE_ROOT"/}"
        return 0
    fi
    grep -Ev '^[[:space:]]*([#;]|$)' "$list" | while read -r module; do
        modprobe "$module" || die "cannot load kernel module $module (listed in ${list#"$KAPSULE_ROOT"/})"
    done
}

# The network the test containers share in place of the host's: a namespace of their own with
# only loopback, so what runs inside (dockerd, podman networks) never touches the machine's.
create_test_netns() {
    if [ ! -e "/run/netns/$KAPSULE_TEST_NETNS_NAME" ]; then
        ip netns add "$KAPSULE_TEST_NETNS_NAME"
        ip -n "$KAPSULE_TEST_NETNS_NAME" link set lo up
        log "created network namespace $KAPSULE_TEST_NETNS_NAME"
    fi
}

write_env() {
    cat >"$KAPSULE_TEST_RUN/env" <<EOF
# Written by tests/env/up.sh; source it to talk to the test environment.
export INCUS_SOCKET=$INCUS_SOCKET
export KAPSULE_TEST_IMAGE=$KAPSULE_TEST_IMAGE
export KAPSULE_TEST_IMAGE_DIR=$("$KAPSULE_ROOT/images/debian/build.sh")
export KAPSULE_TEST_OS_IMAGE=$KAPSULE_TEST_OS_IMAGE
export KAPSULE_TEST_BTRFS_POOL=$KAPSULE_TEST_BTRFS_POOL
export KAPSULE_TEST_USER=$KAPSULE_TEST_USER
export KAPSULE_TEST_OTHER_USER=$KAPSULE_TEST_OTHER_USER
export KAPSULE_TEST_NETNS=/run/netns/$KAPSULE_TEST_NETNS_NAME
EOF
}

mkdir -p "$KAPSULE_TEST_RUN" "$KAPSULE_CACHE_DIR"
install_packages
start_incusd
configure_incus
import_image "$KAPSULE_TEST_IMAGE" "$KAPSULE_ROOT/images/debian/build.sh"
import_image "$KAPSULE_TEST_OS_IMAGE" "$KAPSULE_ROOT/tests/env/image/build-os.sh"
create_test_users
install_polkit_files
load_kernel_modules
create_test_netns
write_env
log "ready: incusd $(incus query /1.0 | jq -r .environment.server_version), image $KAPSULE_TEST_IMAGE"

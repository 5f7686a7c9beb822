#!/usr/bin/env bash
# Kapsule's main job, end to end, on a fresh Debian 12 machine as root (README's first command):
#   1. sets the environment up (up.sh: Incus, the container image, the test user, a network
#      namespace of its own) and builds Kapsule;
#   2. starts the daemon on a bus of its own, configured as the system bus with Kapsule's bus
#      policy, with a polkitd there, and on its own socket, as kapsule-daemon.socket would;
#   3. as the plain user kapsule-tester: `kapsule create`s a container, `kapsule enter`s it, and
#      runs a nested podman container in it, from an image made there out of a tarball (no
#      registry is needed or reached).
# The container shares the `kapsule-test` network namespace instead of the host's, so the docker
# and podman networks inside never change this machine's network.
#
# The daemon and its bus stop when the script ends; the container is removed unless
# KAPSULE_TRY_KEEP=1. Incus stays up (tests/env/down.sh stops it).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_root

bash "$KAPSULE_ROOT/tests/env/up.sh"
# shellcheck disable=SC1091
source "$KAPSULE_TEST_RUN/env"

command -v cargo >/dev/null || die "cargo not found; a Rust toolchain >= 1.89 is required"
log "building kapsule, kapsule-daemon and its helpers (release)"
cargo build --release --quiet --manifest-path "$KAPSULE_ROOT/Cargo.toml" \
    -p kapsule -p kapsule-daemon -p kapsule-nsenter -p kapsule-mounts
run=$KAPSULE_TEST_RUN/try
bin=$run/bin
# A place the plain user can reach whatever the checkout's permissions (root's home is 0700);
# the daemon finds kapsule-nsenter next to itself.
mkdir -p "$bin"
chmod 0755 "$run" "$bin"
install -m 0755 "$KAPSULE_ROOT"/target/release/{kapsule,kapsule-daemon,kapsule-nsenter,kapsule-mounts} "$bin/"
# A bus configured as the system bus is, with Kapsule's shipped policy (only root owns the name,
# everyone may call it).
mkdir -p "$run/dbus/system.d" "$run/dbus/services"
cp "$KAPSULE_ROOT/dbus/org.kde.kapsule.conf" "$run/dbus/system.d/"
sed "s|@DIR@|$run/dbus|g" "$KAPSULE_ROOT/tests/env/dbus/system.conf.in" >"$run/dbus/system.conf"
rm -f "$run/dbus/system_bus_socket"
dbus-daemon --config-file="$run/dbus/system.conf" --fork --print-pid >"$run/bus.pid"
export KAPSULE_BUS_ADDRESS=unix:path=$run/dbus/system_bus_socket
# The daemon asks polkit about every change; polkitd answers on the same bus, with the rules up.sh
# installed (kapsule-tester stands in for an administrator at the computer).
DBUS_SYSTEM_BUS_ADDRESS=$KAPSULE_BUS_ADDRESS setsid /usr/lib/polkit-1/polkitd --no-debug \
    </dev/null >"$run/polkitd.log" 2>&1 &
echo $! >"$run/polkitd.pid"

name=try
stop() {
    if [ "${KAPSULE_TRY_KEEP:-0}" != 1 ] && incus info "$name" >/dev/null 2>&1; then
        log "removing the container $name and its menu entry (KAPSULE_TRY_KEEP=1 keeps them)"
        as_user "$bin/kapsule" rm --force "$name" >/dev/null 2>&1 || incus delete --force "$name" >/dev/null || true
    fi
    stop_pidfile "$run/daemon.pid" kapsule-daemon
    stop_pidfile "$run/polkitd.pid" "the demo's polkitd"
    stop_pidfile "$run/bus.pid" "the demo's dbus-daemon"
}
trap stop EXIT

# The user's commands reach the daemon on its socket (peer-to-peer D-Bus, as on KDE Linux);
# polkit is asked on the bus.
export KAPSULE_SOCKET=$run/kapsule.sock
"$bin/kapsule-daemon" --address "$KAPSULE_BUS_ADDRESS" --socket "$KAPSULE_SOCKET" \
    --network-namespace "$KAPSULE_TEST_NETNS" >"$run/daemon.log" 2>&1 &
echo $! >"$run/daemon.pid"
for _ in $(seq 1 100); do
    timeout 10 "$bin/kapsule" list >/dev/null 2>&1 && break
    sleep 0.1
done
timeout 10 "$bin/kapsule" list >/dev/null 2>"$run/list.err" ||
    { cat "$run/list.err" "$run/daemon.log" >&2; die "the daemon did not come up"; }

if incus info "$name" >/dev/null 2>&1; then
    log "a container '$name' is left from an earlier run; removing it"
    "$bin/kapsule" rm --force "$name"
fi

# What the user types, as the user.
as_user() {
    setpriv --reuid="$(id -u "$KAPSULE_TEST_USER")" --regid="$(id -g "$KAPSULE_TEST_USER")" --init-groups \
        env -u KAPSULE_BUS_ADDRESS HOME="$(getent passwd "$KAPSULE_TEST_USER" | cut -d: -f6)" USER="$KAPSULE_TEST_USER" \
        LOGNAME="$KAPSULE_TEST_USER" KAPSULE_SOCKET="$KAPSULE_SOCKET" "$@"
}
cd /

printf '\n$ kapsule create %s --image local:%s\n' "$name" "$KAPSULE_TEST_IMAGE"
as_user "$bin/kapsule" create "$name" --image "local:$KAPSULE_TEST_IMAGE"

printf '\n$ kapsule enter %s -- ...   (as %s)\n' "$name" "$KAPSULE_TEST_USER"
# shellcheck disable=SC2016 # expanded inside the container
as_user "$bin/kapsule" enter "$name" -- sh -c '
    set -e
    echo "inside $(uname -n) as $(id -un) (uid $(id -u)), home $HOME"
    d=$HOME/.cache/kapsule-try
    rm -rf "$d" && mkdir -p "$d/root/bin"
    cp /bin/busybox "$d/root/bin/" && ln -s busybox "$d/root/bin/sh" && ln -s busybox "$d/root/bin/echo"
    tar -C "$d/root" -cf "$d/hello.tar" .
    sudo podman import -q "$d/hello.tar" localhost/hello >/dev/null
    rm -rf "$d"
    echo "\$ sudo podman run --rm localhost/hello echo ..."
    sudo podman run --rm localhost/hello echo "Hello from a podman container nested in a Kapsule container"
'
printf '\nDone: created, entered, nested container ran.\n'

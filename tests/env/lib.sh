# shellcheck shell=bash
# Shared helpers for the test environment scripts (up.sh, down.sh) and the image recipes
# (images/debian/build.sh, image/build-os.sh).
#
# Everything the environment starts is recorded under $KAPSULE_TEST_RUN so that down.sh can stop
# exactly what up.sh started and nothing else (a developer's own incusd is left alone).

set -euo pipefail

KAPSULE_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# Built images are cached in the project's ignored folder, keyed by the recipe's hash.
KAPSULE_CACHE_DIR=${KAPSULE_CACHE_DIR:-$KAPSULE_ROOT/.cache}
# Runtime state: pid files, the private bus, logs.
KAPSULE_TEST_RUN=${KAPSULE_TEST_RUN:-/run/kapsule-test}
# The alias every test creates containers from.
KAPSULE_TEST_IMAGE=${KAPSULE_TEST_IMAGE:-kapsule-test}
KAPSULE_TEST_OS_IMAGE=${KAPSULE_TEST_OS_IMAGE:-kapsule-test-os}
# A btrfs storage pool beside `default` (dir), as KDE Linux has: the undo tests run on both.
KAPSULE_TEST_BTRFS_POOL=${KAPSULE_TEST_BTRFS_POOL:-kapsule-btrfs}
# A plain, non-root user for the tests that call as someone else (up.sh creates it).
KAPSULE_TEST_USER=${KAPSULE_TEST_USER:-kapsule-tester}
# A second plain user, whom no polkit rule favours (up.sh creates it).
KAPSULE_TEST_OTHER_USER=${KAPSULE_TEST_OTHER_USER:-kapsule-other}
# Where up.sh installs Kapsule's polkit files and the tests' rule (down.sh removes them).
# shellcheck disable=SC2034 # used by up.sh and down.sh
POLKIT_ACTION=/usr/share/polkit-1/actions/org.kde.kapsule.policy
# shellcheck disable=SC2034
POLKIT_RULES=/usr/share/polkit-1/rules.d/50-org.kde.kapsule.rules
# shellcheck disable=SC2034
POLKIT_TEST_RULES=/etc/polkit-1/rules.d/40-kapsule-tests.rules
# The network namespace test containers share instead of the host's (up.sh creates it).
KAPSULE_TEST_NETNS_NAME=${KAPSULE_TEST_NETNS_NAME:-kapsule-test}
INCUS_SOCKET=${INCUS_SOCKET:-/var/lib/incus/unix.socket}

log() { printf '[env] %s\n' "$*" >&2; }
die() {
    printf '[env] error: %s\n' "$*" >&2
    exit 1
}

require_root() {
    [ "$(id -u)" -eq 0 ] || die "the test environment needs root (it installs packages and runs incusd)"
}

# The distribution codename of this machine (bookworm on Debian 12).
codename() {
    # shellcheck disable=SC1091
    . /etc/os-release
    [ -n "${VERSION_CODENAME:-}" ] || die "/etc/os-release has no VERSION_CODENAME"
    printf '%s\n' "$VERSION_CODENAME"
}

# Prints "URI<TAB>SIGNED-BY" of the first apt source that serves the main suite of this machine's
# distribution. The mirror is never written into the repository: it is always read from the
# machine's own apt configuration, deb822 (*.sources) or one-line (*.list) format.
apt_mirror() {
    local suite
    suite=$(codename)
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        awk -v suite="$suite" '
            function flush() {
                if (types ~ /(^| )deb( |$)/ && (" " suites " ") ~ (" " suite " ") && uri != "") {
                    print uri "\t" signed; found = 1; exit
                }
                types = ""; suites = ""; uri = ""; signed = ""
            }
            /^[ \t]*#/ { next }
            /^[ \t]*$/ { flush(); next }
            /^Types:/      { sub(/^Types:[ \t]*/, "");      types = $0 }
            /^Suites:/     { sub(/^Suites:[ \t]*/, "");     suites = $0 }
            /^URIs:/       { sub(/^URIs:[ \t]*/, "");       split($0, u, /[ \t]+/); uri = u[1] }
            /^Signed-By:/  { sub(/^Signed-By:[ \t]*/, "");  signed = $0 }
            END { if (!found) flush() }
        ' "$f" | head -n1 | grep . && return 0
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        awk -v suite="$suite" '
            $1 == "deb" {
                i = 2
                if ($2 ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                if ($(i + 1) == suite) { print $i "\t"; exit }
            }
        ' "$f" | head -n1 | grep . && return 0
    done
    die "no apt source for '$suite' found in /etc/apt; cannot derive the Debian mirror"
}

# Starts incusd in the background (recorded in $KAPSULE_TEST_RUN/incusd.pid) and waits until it is
# ready, unless one answers already.
start_incusd() {
    mkdir -p "$KAPSULE_TEST_RUN"
    if incus_up; then
        log "incusd is already running"
        return 0
    fi
    local incusd=/usr/libexec/incus/incusd
    [ -x "$incusd" ] || die "$incusd not found; is incus-base installed?"
    log "starting incusd"
    # setsid: incusd must not die with the shell that started it, nor get its terminal's signals.
    # A fixed PATH, as systemd gives services: what incusd runs (LXC hooks among them) must not
    # depend on the shell that started the environment.
    setsid env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        "$incusd" --group root ${KAPSULE_INCUSD_DEBUG:+--debug} --logfile "$KAPSULE_TEST_RUN/incusd.log" \
        </dev/null >"$KAPSULE_TEST_RUN/incusd.out" 2>&1 &
    echo $! >"$KAPSULE_TEST_RUN/incusd.pid"
    if ! incus admin waitready --timeout=60; then
        tail -n 20 "$KAPSULE_TEST_RUN/incusd.log" "$KAPSULE_TEST_RUN/incusd.out" >&2 || true
        die "incusd did not become ready within 60 s"
    fi
}

# True when incusd answers on its socket.
incus_up() {
    [ -S "$INCUS_SOCKET" ] && incus query /1.0 >/dev/null 2>&1
}

# Kill the process in a pid file (and wait for it), if it is still ours and alive.
stop_pidfile() {
    local pidfile=$1 name=$2 pid
    [ -f "$pidfile" ] || return 0
    pid=$(cat "$pidfile")
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        log "stopping $name (pid $pid)"
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "$name did not stop, killing it"
            kill -9 "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$pidfile"
}

# The cache of an image recipe, which defines recipe_key (a hash of everything that shapes the
# image; it includes these two functions through `declare -f`). Call as
# `image_recipe_start WHAT PREFIX "$@"`: with --print-key it prints the key and exits; else it
# sets KEY and OUT (the cache entry, .cache/images/<PREFIX><KEY>) and, when OUT holds a built
# image, prints OUT and exits.
image_recipe_start() {
    local what=$1 prefix=$2
    shift 2
    if [ "${1:-}" = "--print-key" ]; then
        recipe_key
        exit 0
    fi
    require_root
    KEY=$(recipe_key)
    OUT=$KAPSULE_CACHE_DIR/images/$prefix$KEY
    if [ -f "$OUT/rootfs.tar.zst" ] && [ -f "$OUT/metadata.tar.gz" ]; then
        log "$what $KEY: cached in $OUT"
        printf '%s\n' "$OUT"
        exit 0
    fi
}

# image_recipe_finish WHAT DESCRIPTION WORK ROOTFS: writes the image's metadata (this machine's
# Debian release and architecture, DESCRIPTION, and the recipe's key as `kapsule.recipe`, which
# up.sh compares with --print-key), packs it and the tree ROOTFS as the split image Incus imports
# (metadata.tar.gz, rootfs.tar.zst with owners and xattrs: file capabilities live in them), moves
# both into OUT and prints OUT.
image_recipe_finish() {
    local what=$1 description=$2 work=$3 rootfs=$4 arch suite
    arch=$(uname -m)
    suite=$(codename)
    cat >"$work/metadata.yaml" <<META
architecture: $arch
creation_date: $(date +%s)
properties:
  os: debian
  release: $suite
  architecture: $arch
  description: $description
  kapsule.recipe: "$KEY"
META
    tar -C "$work" -czf "$work/metadata.tar.gz" metadata.yaml
    tar --numeric-owner --xattrs --xattrs-include='*' -C "$rootfs" -I 'zstd -T0 -3' -cf "$work/rootfs.tar.zst" .
    mkdir -p "$OUT"
    mv "$work/metadata.tar.gz" "$work/rootfs.tar.zst" "$OUT/"
    log "$what $KEY built: $(du -sh "$OUT/rootfs.tar.zst" | cut -f1)"
    printf '%s\n' "$OUT"
}

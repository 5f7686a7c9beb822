#!/usr/bin/env bash
# Stops what up.sh started: incusd (with every instance in it, which incusd stops on shutdown). An
# incusd that up.sh did not start is left running. Removes the polkit files and the network
# namespace it added.
# Instances and images stay in /var/lib/incus, so the next up.sh is fast.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_root

# A bus and polkitd that up.sh of an earlier version started.
stop_pidfile "$KAPSULE_TEST_RUN/dbus/polkitd.pid" polkitd
stop_pidfile "$KAPSULE_TEST_RUN/dbus/dbus.pid" "private dbus-daemon"

if [ -f "$KAPSULE_TEST_RUN/incusd.pid" ]; then
    if incus_up; then
        log "shutting incusd down"
        # Stops every running instance cleanly first (their lxc monitors exit with them).
        timeout 120 incus admin shutdown || log "incus admin shutdown failed; killing incusd"
    fi
    stop_pidfile "$KAPSULE_TEST_RUN/incusd.pid" incusd
fi
# Its containers are stopped now; the namespace goes too.
if [ -e "/run/netns/$KAPSULE_TEST_NETNS_NAME" ]; then
    ip netns delete "$KAPSULE_TEST_NETNS_NAME" && log "removed network namespace $KAPSULE_TEST_NETNS_NAME"
fi
rm -f "$POLKIT_ACTION" "$POLKIT_RULES" "$POLKIT_TEST_RULES"
# The menu entries (and any exports) the tests' `kapsule create`s put in the test users' homes:
# their containers are gone.
for user in "$KAPSULE_TEST_USER" "$KAPSULE_TEST_OTHER_USER"; do
    home=$(getent passwd "$user" | cut -d: -f6) || continue
    if [ -z "$home" ] || [ ! -d "$home/.local/share" ]; then continue; fi
    rm -f "$home"/.local/share/applications/kapsule.*.desktop
    rm -rf "$home/.local/share/kapsule/exports"
    find "$home/.local/share/icons" -name 'kapsule.*' -type f -delete 2>/dev/null || true
done
rm -f "$KAPSULE_TEST_RUN/env"
log "down"

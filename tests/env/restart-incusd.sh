#!/usr/bin/env bash
# Restarts the incusd up.sh started, as `systemctl restart incus` does on an update: SIGTERM (which
# leaves the containers running: their LXC monitors are processes of their own), then a new
# incusd once it has exited. For tests of what Kapsule does while Incus goes away and comes back.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_root

pidfile="$KAPSULE_TEST_RUN/incusd.pid"
[ -f "$pidfile" ] || die "no incusd started by up.sh ($pidfile missing)"
pid=$(cat "$pidfile")
if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 1 300); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && die "incusd (pid $pid) did not exit within 30 s of SIGTERM"
fi
start_incusd

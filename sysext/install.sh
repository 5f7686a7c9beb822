#!/usr/bin/env bash
# The install manifest of the Kapsule sysext: puts every file of the image below DESTDIR.
#   bash sysext/install.sh DESTDIR BINDIR [DOCSDIR]
# BINDIR holds the release binaries (kapsule, kapsule-daemon, kapsule-init, kapsule-mounts,
# kapsule-nsenter, kapsule-nvidia-hook, and the static kapsule-host-exec); DOCSDIR, if given, the man pages and completions `cargo xtask docs`
# generates. `cargo xtask sysext` runs it, then packs the tree with mkosi (mkosi/) or mksquashfs,
# so both images hold the same files. Only usr/ is written: systemd-sysext merges nothing else.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 DESTDIR BINDIR [DOCSDIR]" >&2; exit 2; }
dest=$1 bin=$2 docs=${3:-}
src=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
usr=$dest/usr

file() { install -D -m "$1" "$2" "$usr/$3"; }

# Programs: the CLI (and its short name) and kapsule-init (root runs it by hand with --force) on
# PATH, the rest where only the units and the daemon look for them.
file 0755 "$bin/kapsule" bin/kapsule
ln -sfn kapsule "$usr/bin/kap"
file 0755 "$bin/kapsule-init" bin/kapsule-init
# kapsule-host-exec is not run on the host: the daemon mounts it into containers.
for helper in kapsule-daemon kapsule-host-exec kapsule-mounts kapsule-nsenter kapsule-nvidia-hook; do
    file 0755 "$bin/$helper" "lib/kapsule/$helper"
done
# Containers made by the original daemon name its hook script in their raw.lxc; the hook binary
# reads its hook type from its arguments or LXC_HOOK_TYPE whatever it is called (docs/NVIDIA.md).
ln -sfn kapsule-nvidia-hook "$usr/lib/kapsule/nvidia-container-hook.sh"

# systemd: the units, modules, tmpfiles. The socket is started at boot by a static link (not
# [Install], which only `systemctl enable` or a preset reads, and KDE Linux's presets end with
# "disable *").
file 0644 "$src/units/kapsule-daemon.service" lib/systemd/system/kapsule-daemon.service
file 0644 "$src/units/kapsule-daemon.socket" lib/systemd/system/kapsule-daemon.socket
mkdir -p "$usr/lib/systemd/system/sockets.target.wants"
ln -sfn ../kapsule-daemon.socket "$usr/lib/systemd/system/sockets.target.wants/kapsule-daemon.socket"
file 0644 "$src/units/kapsule-host-sync.path" lib/systemd/system/kapsule-host-sync.path
mkdir -p "$usr/lib/systemd/system/paths.target.wants"
ln -sfn ../kapsule-host-sync.path "$usr/lib/systemd/system/paths.target.wants/kapsule-host-sync.path"
file 0644 "$src/units/kapsule-init.service" lib/systemd/system/kapsule-init.service
mkdir -p "$usr/lib/systemd/system/multi-user.target.wants"
ln -sfn ../kapsule-init.service "$usr/lib/systemd/system/multi-user.target.wants/kapsule-init.service"
file 0644 "$src/units/incus.service.d/50-kapsule-subids.conf" lib/systemd/system/incus.service.d/50-kapsule-subids.conf
file 0644 "$src/units/modules-load.d/kapsule.conf" lib/modules-load.d/kapsule.conf
file 0644 "$src/units/tmpfiles.d/kapsule.conf" lib/tmpfiles.d/kapsule.conf

# The vendor configuration: default container and image (config/README.md).
file 0644 "$src/config/kapsule.conf" lib/kapsule/kapsule.conf

# D-Bus: the bus policy, activation, the interface descriptions.
file 0644 "$src/dbus/org.kde.kapsule.conf" share/dbus-1/system.d/org.kde.kapsule.conf
file 0644 "$src/dbus/org.kde.kapsule.service" share/dbus-1/system-services/org.kde.kapsule.service
for xml in "$src"/dbus/*.xml; do
    file 0644 "$xml" "share/dbus-1/interfaces/$(basename "$xml")"
done

# polkit: the actions and the administrators' rule.
file 0644 "$src/polkit/org.kde.kapsule.policy" share/polkit-1/actions/org.kde.kapsule.policy
file 0644 "$src/polkit/50-org.kde.kapsule.rules" share/polkit-1/rules.d/50-org.kde.kapsule.rules

# Man pages and completions, when generated.
if [ -n "$docs" ]; then
    for page in "$docs"/man1/*.1; do
        file 0644 "$page" "share/man/man1/$(basename "$page")"
    done
    file 0644 "$docs/completions/kapsule.bash" share/bash-completion/completions/kapsule
    file 0644 "$docs/completions/_kapsule" share/zsh/site-functions/_kapsule
    file 0644 "$docs/completions/kapsule.fish" share/fish/vendor_completions.d/kapsule.fish
fi

# What systemd-sysext checks before merging.
case "$(uname -m)" in
    x86_64) arch=x86-64 ;;
    aarch64) arch=arm64 ;;
    *) arch=$(uname -m | tr _ -) ;;
esac
mkdir -p "$usr/lib/extension-release.d"
sed -e '/^#/d' -e "s/@ARCHITECTURE@/$arch/" "$src/sysext/extension-release.kapsule.in" \
    >"$usr/lib/extension-release.d/extension-release.kapsule"
chmod 0644 "$usr/lib/extension-release.d/extension-release.kapsule"

//! Layer 4, one container seen from the host: what its Incus instance says, what Incus is asked
//! to make, its init, its files, commands run in it as root, its boot, the fixups a new one gets,
//! the desktop's sockets and the host's configuration in it. Nothing here knows about D-Bus
//! callers; an operation's `Reporter` (or `Notes`, where there may be none) is the only thing of the layers
//! above it sees.

use std::sync::Arc;

use crate::host::activity::Activity;
use crate::host::settings::Settings;

/// A container's user database as text.
pub(crate) mod accounts;
/// Waiting for the boot steps that change files under a user's feet.
pub(crate) mod boot;
/// What failed in a container, on what.
pub(crate) mod error;
/// Commands run as root in a container.
pub(crate) mod exec;
/// A running container's files, through its init's root.
pub(crate) mod files;
/// What a new container gets once, right after its first start.
pub(crate) mod fixups;
/// The host's timezone, locale and DNS in its containers.
pub(crate) mod hostsync;
/// An unprivileged container's ids, given to root before every start.
pub(crate) mod idmap;
/// A container's init process, remembered.
pub(crate) mod init;
/// What the daemon reads from a container's instance.
pub(crate) mod meta;
/// Starting the session helper in a container.
pub(crate) mod nsenter;
/// The packages and hooks asked for at creation.
pub(crate) mod provision;
/// A container's files made anew from an image.
pub(crate) mod rebuild;
/// The desktop's sockets inside a container.
pub(crate) mod sockets;
/// What Incus is asked to make: config, devices, raw.lxc.
pub(crate) mod spec;

/// The handles this layer works with: Incus, the settings, the daemon's activity, and the
/// caches of container facts (each used by its own module only).
#[derive(Debug)]
pub(crate) struct Containers {
    pub(crate) incus: kapsule_incus::Client,
    pub(crate) settings: Settings,
    /// A session helper alive keeps the daemon from exiting idle.
    pub(crate) activity: Arc<Activity>,
    pub(crate) init_pids: init::InitPids,
    pub(crate) socket_mounts: sockets::SocketMounts,
}

impl Containers {
    pub(crate) fn new(incus: kapsule_incus::Client, settings: Settings, activity: Arc<Activity>) -> Containers {
        Containers {
            incus,
            settings,
            activity,
            init_pids: Default::default(),
            socket_mounts: Default::default(),
        }
    }

    /// Incus's own directory, where its socket is (`/var/lib/incus`): what it writes for LXC is
    /// below it (seccomp policies, shmounts).
    pub(crate) fn incus_dir(&self) -> std::path::PathBuf {
        self.incus
            .socket()
            .parent()
            .unwrap_or(std::path::Path::new("/var/lib/incus"))
            .to_owned()
    }
}

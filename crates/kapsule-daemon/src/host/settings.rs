//! How the daemon finds its parts, which bus it serves and where the host's configuration comes
//! from. The defaults suit an installed system; tests give their own.

use std::path::{Path, PathBuf};

use crate::host::config;

/// Which bus to serve on.
#[derive(Clone, Debug)]
pub enum Bus {
    /// The system bus (`$DBUS_SYSTEM_BUS_ADDRESS` or the standard socket): production.
    System,
    /// The session bus: development.
    Session,
    /// A bus at this address, e.g. a private test bus.
    Address(String),
}

/// How the daemon finds its parts. The defaults suit an installed system.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    /// The `kapsule-nsenter` helper; default: next to the daemon, else
    /// `/usr/lib/kapsule/kapsule-nsenter`.
    pub nsenter: Option<std::path::PathBuf>,
    /// The `kapsule-mounts` helper that mounts the desktop's sockets; default: next to the
    /// daemon, else `/usr/lib/kapsule/kapsule-mounts`.
    pub mounts: Option<std::path::PathBuf>,
    /// `kapsule-host-exec`, placed read-only in every container a user enters; default: next to
    /// the daemon, else `/usr/lib/kapsule/kapsule-host-exec`. It must be a static program (the
    /// sysext's is), as it runs on whatever C library the image has, or none.
    pub host_exec: Option<std::path::PathBuf>,
    /// Where the host's timezone, locale and DNS come from for its containers.
    pub host_sync: HostSync,
    /// The NVIDIA mount hook registered in containers made with `nvidia_drivers`; default:
    /// next to the daemon, else `/usr/lib/kapsule/kapsule-nvidia-hook`.
    pub nvidia_hook: Option<std::path::PathBuf>,
    /// The network namespace containers share; default `/proc/self/ns/net`, which LXC opens in
    /// incusd's own process: the host's network. Tests give a namespace of their own, so nothing
    /// a container does (dockerd making bridges) touches the machine's network.
    pub network_namespace: Option<std::path::PathBuf>,
    /// The system configuration files, lowest layer first; default `/usr/lib/kapsule/kapsule.conf`
    /// then `/etc/kapsule/kapsule.conf`. Tests give their own.
    pub config_files: Option<Vec<std::path::PathBuf>>,
    /// Incus's cache directory, where it keeps each image server's index for an hour; default
    /// `/var/cache/incus`. A refresh drops the index of the server it asks about, so it sees
    /// what the server has now.
    pub incus_cache: Option<std::path::PathBuf>,
    /// The Incus storage pool new containers' root disks are made in; default `default`, the
    /// pool kapsule-init makes (tests give a small one to fill).
    pub storage_pool: Option<String>,
    /// The directory of `subuid` and `subgid`, where the host ids an unprivileged container maps
    /// to themselves are given to root; default `/etc`, where the shadow tools (and LXC through
    /// them) read them.
    pub subid_dir: Option<std::path::PathBuf>,
}

impl Settings {
    /// `kapsule-nsenter`: as configured, next to the daemon (a build or an installed tree keeps
    /// them together), or the installed path.
    pub(crate) fn nsenter_path(&self) -> std::path::PathBuf {
        self.nsenter.clone().unwrap_or_else(|| installed("kapsule-nsenter"))
    }

    /// `kapsule-mounts`, found as [`Settings::nsenter_path`] finds its helper.
    pub(crate) fn mounts_path(&self) -> std::path::PathBuf {
        self.mounts.clone().unwrap_or_else(|| installed("kapsule-mounts"))
    }

    /// `kapsule-host-exec`, if it is installed (nothing is placed otherwise).
    pub(crate) fn host_exec_path(&self) -> Option<std::path::PathBuf> {
        let path = self.host_exec.clone().unwrap_or_else(|| installed("kapsule-host-exec"));
        path.is_file().then_some(path)
    }

    /// The system configuration layers, lowest first.
    pub(crate) fn system_files(&self) -> Vec<std::path::PathBuf> {
        self.config_files
            .clone()
            .unwrap_or_else(|| config::SYSTEM_FILES.iter().map(Into::into).collect())
    }

    /// Incus's cache directory.
    pub(crate) fn incus_cache_dir(&self) -> std::path::PathBuf {
        self.incus_cache.clone().unwrap_or_else(|| "/var/cache/incus".into())
    }

    /// The storage pool of new containers' root disks.
    pub(crate) fn storage_pool(&self) -> &str {
        self.storage_pool.as_deref().unwrap_or("default")
    }

    /// The subordinate id files.
    pub(crate) fn subids(&self) -> crate::host::subids::Subids {
        let dir = self.subid_dir.clone().unwrap_or_else(|| "/etc".into());
        crate::host::subids::Subids {
            subuid: dir.join("subuid"),
            subgid: dir.join("subgid"),
        }
    }

    /// The network namespace new containers share.
    pub(crate) fn network_namespace_path(&self) -> std::path::PathBuf {
        self.network_namespace
            .clone()
            .unwrap_or_else(|| "/proc/self/ns/net".into())
    }

    /// The NVIDIA hook, if it is installed (a container must not get a hook LXC cannot run: it
    /// would not start).
    pub(crate) fn nvidia_hook_path(&self) -> Option<std::path::PathBuf> {
        let path = self
            .nvidia_hook
            .clone()
            .unwrap_or_else(|| installed("kapsule-nvidia-hook"));
        path.is_file().then_some(path)
    }
}

/// A helper program: next to the daemon, else in `/usr/lib/kapsule`.
fn installed(name: &str) -> std::path::PathBuf {
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        let sibling = dir.join(name);
        if sibling.exists() {
            return sibling;
        }
    }
    std::path::Path::new("/usr/lib/kapsule").join(name)
}

/// Where the daemon reads the host's configuration.
#[derive(Clone, Debug, Default)]
pub enum HostSync {
    /// The host's own `/etc`.
    #[default]
    Host,
    /// The `etc/` below this directory (tests).
    From(PathBuf),
    /// Nowhere: nothing is pushed (tests that share Incus with others).
    Off,
}

impl HostSync {
    /// The directory whose `etc/` holds the host's configuration; `None` when off.
    pub(crate) fn root(&self) -> Option<&Path> {
        match self {
            HostSync::Host => Some(Path::new("/")),
            HostSync::From(root) => Some(root),
            HostSync::Off => None,
        }
    }
}

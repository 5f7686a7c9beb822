//! The Kapsule daemon: serves `org.kde.kapsule` and does the work through Incus.
//!
//! One [`State`] is shared by the manager objects (one per connection: the bus and each client
//! of the daemon's own socket) and every operation task. No lock is held
//! across an Incus call: the Incus client is cheap to clone and the operation registry locks only
//! to insert or remove an entry.

mod activity;
mod authority;
mod boot;
mod caller;
mod config;
mod containers;
mod create;
mod enter;
mod files;
mod fixups;
mod hostsync;
mod images;
mod link;
mod manager;
mod operation;
mod peer;
mod remotes;
mod run;
mod sockets;
mod users;

use std::collections::{BTreeMap, HashMap};
use std::os::unix::net::UnixListener;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use kapsule_dbus::{BUS_NAME, Error, MANAGER_PATH};
use zbus::Connection;
use zbus::object_server::SignalEmitter;

use crate::activity::Activity;
pub use crate::hostsync::HostSync;
use crate::link::Link;
use crate::operation::Operations;

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

/// What the manager and every operation share.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) incus: kapsule_incus::Client,
    pub(crate) operations: Arc<Operations>,
    /// The bus connection: the bus name, polkit, signals to bus clients.
    pub(crate) bus: Connection,
    /// The clients on the daemon's own socket, by number, for signals to all.
    pub(crate) peers: std::sync::Mutex<BTreeMap<u64, Connection>>,
    pub(crate) activity: Arc<Activity>,
    pub(crate) settings: Settings,
    /// The init pid of each container entered so far (checked before each use).
    pub(crate) init_pids: std::sync::Mutex<HashMap<String, u32>>,
    /// The socket mounts known to be current, per container and uid (see `sockets`).
    pub(crate) socket_mounts: std::sync::Mutex<HashMap<(String, u32), sockets::Key>>,
    /// One lock per container for user setups, which rewrite its user database.
    setup_locks: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl State {
    /// The lock that serializes user setups in container `name`.
    pub(crate) fn setup_lock(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.setup_locks
            .lock()
            .expect("setup locks")
            .entry(name.to_owned())
            .or_default()
            .clone()
    }

    /// Tells clients, on the bus and on the socket, that the list of containers changed.
    pub(crate) async fn containers_changed(&self) {
        let peers: Vec<Connection> = self.peers.lock().expect("peers lock").values().cloned().collect();
        for connection in std::iter::once(&self.bus).chain(&peers) {
            let emitted = match SignalEmitter::new(connection, MANAGER_PATH) {
                Ok(emitter) => manager::Manager::containers_changed(&emitter).await,
                Err(e) => Err(e),
            };
            if let Err(e) = emitted {
                log::warn!("could not emit ContainersChanged: {e}");
            }
        }
    }
}

/// The named error a client sees for an Incus failure. Incus's own message is kept (it says
/// what is wrong with the request); nothing internal is added.
pub(crate) fn incus_error(e: kapsule_incus::Error) -> Error {
    use kapsule_incus::Error as E;
    match e {
        E::Unavailable { .. } => Error::IncusUnavailable(format!("{e}. Is Incus running?")),
        E::NotFound { message, .. } => Error::NotFound(message),
        E::AlreadyExists { message, .. } => Error::AlreadyExists(message),
        other => Error::Failed(other.to_string()),
    }
}

/// How the daemon runs as a service.
#[derive(Debug, Default)]
pub struct Service {
    /// Where to serve the manager besides the bus: the socket systemd passed
    /// (`kapsule-daemon.socket`) or one bound by hand.
    pub sockets: Vec<UnixListener>,
    /// Exit after this long with nothing to do (no call, operation, session or socket client);
    /// `None`: never.
    pub idle_exit: Option<Duration>,
}

/// Serves the API on `bus` (and on the service's sockets) until SIGTERM or SIGINT, or until it
/// has been idle for the service's idle period.
pub async fn run(bus: Bus, settings: Settings, service: Service) -> anyhow::Result<()> {
    let (connection, state) = start(bus, settings).await?;
    for socket in service.sockets {
        let state = state.clone();
        tokio::spawn(async move {
            if let Err(e) = peer::listen(state, socket).await {
                log::error!("the daemon's socket failed: {e}");
            }
        });
    }
    // kapsule-daemon.service is Type=notify: from here on, calls are answered.
    notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&format!("Serving {BUS_NAME}")),
    ]);
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    // Every message also reaches this stream, which ends when the bus connection is gone: a
    // daemon without its bus can serve nobody, so it exits (and is started again on demand).
    let mut incoming = zbus::MessageStream::from(&connection);
    let activity = state.activity.clone();
    let bus_gone = async {
        use futures_util::StreamExt;
        while incoming.next().await.is_some() {
            activity.touch();
        }
    };
    let idle = async {
        match service.idle_exit {
            Some(period) => state.activity.idle(period).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = terminate.recv() => log::info!("SIGTERM: exiting"),
        _ = tokio::signal::ctrl_c() => log::info!("SIGINT: exiting"),
        () = idle => log::info!("idle for {:?}: exiting", service.idle_exit.unwrap_or_default()),
        () = bus_gone => {
            log::warn!("the bus connection closed: exiting");
            return Ok(());
        }
    }
    notify(&[sd_notify::NotifyState::Stopping]);
    // The name goes first: a call from now on starts a new daemon instead of reaching this one.
    let _ = connection.release_name(BUS_NAME).await;
    Ok(())
}

/// Tells systemd (if it started the daemon) about a change of state; without systemd, nothing.
fn notify(states: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, states) {
        log::warn!("cannot notify systemd: {e}");
    }
}

/// Connects to `bus`, serves every object, then takes the bus name. The API stays up for as long
/// as the returned connection lives (tests run the daemon in their own process this way).
pub async fn serve(bus: Bus, settings: Settings) -> anyhow::Result<Connection> {
    Ok(start(bus, settings).await?.0)
}

async fn start(bus: Bus, settings: Settings) -> anyhow::Result<(Connection, Arc<State>)> {
    let builder = match &bus {
        Bus::System => zbus::connection::Builder::system(),
        Bus::Session => zbus::connection::Builder::session(),
        Bus::Address(address) => zbus::connection::Builder::address(address.as_str()),
    };
    let connection = builder
        .build()
        .await
        .with_context(|| format!("cannot connect to the {bus:?} bus"))?;
    let activity = Activity::new();
    let state = Arc::new(State {
        incus: kapsule_incus::Client::from_env(),
        operations: Operations::new(activity.clone()),
        bus: connection.clone(),
        peers: Default::default(),
        activity,
        settings,
        init_pids: Default::default(),
        socket_mounts: Default::default(),
        setup_locks: Default::default(),
    });

    let server = connection.object_server();
    // Announces operation objects below /org/kde/kapsule (InterfacesAdded / InterfacesRemoved).
    server.at(MANAGER_PATH, zbus::fdo::ObjectManager).await?;
    let manager = manager::Manager {
        link: Link::bus(&state),
        state: state.clone(),
    };
    server.at(MANAGER_PATH, manager).await?;
    // Only now, with every object served, may clients find us by name.
    connection
        .request_name(BUS_NAME)
        .await
        // zbus's error repeats itself as its own source; say it once.
        .map_err(|e| anyhow::anyhow!("cannot own {BUS_NAME}: {e}"))?;
    log::info!("serving {BUS_NAME} on the {bus:?} bus");
    hostsync::watch(state.clone());
    Ok((connection, state))
}

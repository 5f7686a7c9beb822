//! Layer 7: the daemon as a service: builds each layer's handles, serves the objects on the bus
//! and the daemon's socket, takes the name, recovers what an earlier daemon left unfinished, and
//! runs until it is told to stop or is idle.

use std::os::unix::net::UnixListener;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use kapsule_dbus::{BUS_NAME, MANAGER_PATH};
use zbus::Connection;

use crate::container::{Containers, hostsync};
use crate::dbus::transport::CloexecSocket;
use crate::dbus::{Surface, socket};
use crate::host::activity::Activity;
use crate::host::settings::{Bus, Settings};
use crate::identity::link::{Authority, Link};
use crate::operation::Operations;
use crate::operation::clients::Clients;
use crate::pipeline::{Daemon, ephemeral, recovery};

/// How the daemon runs as a service.
#[derive(Debug)]
pub struct Service {
    /// Where to serve the manager besides the bus: the socket systemd passed
    /// (`kapsule-daemon.socket`) or one bound by hand.
    pub sockets: Vec<UnixListener>,
    /// Exit after this long with nothing to do (no call, operation, session or socket client);
    /// `None`: never.
    pub idle_exit: Option<Duration>,
    /// A socket client that sent nothing for this long, with no operation running, is dropped.
    pub client_idle: Duration,
}

impl Default for Service {
    fn default() -> Service {
        Service {
            sockets: Vec::new(),
            idle_exit: None,
            client_idle: Duration::from_secs(300),
        }
    }
}

/// Serves the API on `bus` (and on the service's sockets) until SIGTERM or SIGINT, or until it
/// has been idle for the service's idle period.
pub async fn run(bus: Bus, settings: Settings, service: Service) -> anyhow::Result<()> {
    let (connection, surface) = start(bus, settings).await?;
    for listener in service.sockets {
        let surface = surface.clone();
        tokio::spawn(async move {
            if let Err(e) = socket::listen(surface, listener, service.client_idle).await {
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
    let activity = surface.activity().clone();
    let bus_gone = async {
        use futures_util::StreamExt;
        while incoming.next().await.is_some() {
            activity.touch();
        }
    };
    let idle = async {
        match service.idle_exit {
            Some(period) => surface.activity().idle(period).await,
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

/// Connects to `bus` over the daemon's own transport (`dbus/transport.rs`: descriptors
/// close-on-exec as they arrive) where its address is a Unix socket, as a system bus's is;
/// through zbus's own otherwise.
async fn connect(bus: &Bus) -> anyhow::Result<Connection> {
    let address = match bus {
        Bus::System => Some(
            std::env::var("DBUS_SYSTEM_BUS_ADDRESS")
                .unwrap_or_else(|_| "unix:path=/var/run/dbus/system_bus_socket".to_owned()),
        ),
        Bus::Session => std::env::var("DBUS_SESSION_BUS_ADDRESS").ok(),
        Bus::Address(address) => Some(address.clone()),
    };
    let socket = match &address {
        Some(address) => CloexecSocket::connect(address).await.transpose()?,
        None => None,
    };
    let builder = match socket {
        Some(socket) => zbus::connection::Builder::socket(socket),
        None => {
            log::warn!("the {bus:?} bus is not on a Unix socket: descriptors it passes are not close-on-exec at once");
            match bus {
                Bus::System => zbus::connection::Builder::system(),
                Bus::Session => zbus::connection::Builder::session(),
                Bus::Address(address) => zbus::connection::Builder::address(address.as_str()),
            }
        }
    };
    Ok(builder.build().await?)
}

async fn start(bus: Bus, settings: Settings) -> anyhow::Result<(Connection, Surface)> {
    let connection = connect(&bus)
        .await
        .with_context(|| format!("cannot connect to the {bus:?} bus"))?;
    let activity = Activity::new();
    let containers = Arc::new(Containers::new(
        kapsule_incus::Client::from_env(),
        settings,
        activity.clone(),
    ));
    let daemon = Arc::new(Daemon {
        containers: containers.clone(),
        clients: Clients::new(connection.clone()),
        setup_locks: Default::default(),
        recovered: Default::default(),
        ephemeral: Default::default(),
    });
    let surface = Surface {
        daemon: daemon.clone(),
        operations: Operations::new(activity.clone()),
        authority: Authority::Polkit(connection.clone()),
        calls: Default::default(),
    };

    let server = connection.object_server();
    // Announces operation objects below /org/kde/kapsule (InterfacesAdded / InterfacesRemoved).
    server.at(MANAGER_PATH, zbus::fdo::ObjectManager).await?;
    let link = Link::bus(&connection, surface.activity(), &surface.calls);
    server.at(MANAGER_PATH, surface.manager(link)).await?;
    // Only now, with every object served, may clients find us by name.
    connection
        .request_name(BUS_NAME)
        .await
        // zbus's error repeats itself as its own source; say it once.
        .map_err(|e| anyhow::anyhow!("cannot own {BUS_NAME}: {e}"))?;
    log::info!("serving {BUS_NAME} on the {bus:?} bus");
    hostsync::watch(containers);
    // What a daemon before this one left unfinished (it was killed, or the machine stopped).
    recovery::at_start(&daemon).await;
    // Ephemeral containers whose last session ended while no daemon ran, or ends later.
    ephemeral::serve(&daemon);
    ephemeral::at_start(&daemon).await;
    Ok((connection, surface))
}

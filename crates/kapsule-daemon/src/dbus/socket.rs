//! The daemon's own socket (`/run/kapsule/kapsule.sock`, from `kapsule-daemon.socket`):
//! peer-to-peer D-Bus with each client that connects, serving the same objects as on the bus.
//!
//! There is no bus to vouch for a peer here, so the kernel does: `SO_PEERCRED` gives the uid
//! and pid of the process that connected. The uid is who the caller is; polkit is asked about
//! the process (`unix-process` subject: pid, its start time read at connection, uid), on the
//! system bus, so the same rules decide as for a call through the bus.

use std::io;
use std::os::unix::net::UnixListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::StreamExt;
use kapsule_dbus::MANAGER_PATH;
use zbus::connection::AuthMechanism;

use crate::dbus::Surface;
use crate::identity::link::Link;
use crate::identity::peer::Peer;

/// At most this many clients at once; more are turned away (the socket is open to every user).
const MAX_PEERS: usize = 256;

/// A client that has not authenticated after this long is dropped.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Accepts clients on `listener` for as long as the daemon runs, each on a task of its own.
pub(crate) async fn listen(surface: Surface, listener: UnixListener) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let listener = tokio::net::UnixListener::from_std(listener)?;
    let next_id = AtomicU64::new(1);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_PEERS));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            // Out of descriptors or memory for a moment: a client fails, the socket stays.
            Err(e) => {
                log::warn!("cannot accept a client on the socket: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            log::warn!("{MAX_PEERS} clients are connected already; turning one away");
            continue;
        };
        let id = next_id.fetch_add(1, Ordering::Relaxed);
        let surface = surface.clone();
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(e) = serve_peer(&surface, id, stream).await {
                log::info!("client {id} on the socket: {e}");
            }
            surface.daemon.clients.remove_peer(id);
        });
    }
}

/// Authenticates one client, serves it the manager until it hangs up.
async fn serve_peer(surface: &Surface, id: u64, stream: tokio::net::UnixStream) -> anyhow::Result<()> {
    let _busy = surface.activity().hold();
    let stream = stream.into_std()?;
    let peer = Peer::of(&stream)?;
    log::debug!("client {id} on the socket: pid {}, uid {}", peer.pid, peer.uid);
    let link = Link::peer(surface.authority.clone(), surface.activity(), id, peer);
    let manager = surface.manager(link);
    // EXTERNAL only: the client proves it is the uid the kernel reports, nothing else is taken.
    let handshake = zbus::connection::Builder::unix_stream(stream)
        .server(zbus::Guid::generate())
        .p2p()
        .auth_mechanism(AuthMechanism::External)
        // Served before the first message is read, so no early call finds nothing.
        .serve_at(MANAGER_PATH, zbus::fdo::ObjectManager)
        .serve_at(MANAGER_PATH, manager)
        .build();
    let connection = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| anyhow::anyhow!("no authentication within {HANDSHAKE_TIMEOUT:?}"))??;
    surface.daemon.clients.add_peer(id, connection.clone());
    let mut messages = zbus::MessageStream::from(&connection);
    while messages.next().await.is_some() {
        surface.activity().touch();
    }
    log::debug!("client {id} on the socket hung up");
    Ok(())
}

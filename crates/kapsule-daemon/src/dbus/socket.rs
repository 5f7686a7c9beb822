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
use crate::dbus::transport::CloexecSocket;
use crate::identity::link::Link;
use crate::identity::peer::Peer;
use crate::identity::per_uid::PerUid;

/// At most this many clients at once; more are turned away (the socket is open to every user).
const MAX_PEERS: usize = 256;

/// At most this many clients of one uid at once, so one user cannot take every slot and lock
/// the others out (a `kapsule` command holds one; a dozen terminals opening at once are well
/// within it). One turned away reaches the daemon through the bus instead.
const MAX_PEERS_PER_UID: usize = 32;

/// A client that has not read its replies for this long is dropped: until then every reply to
/// it waits, holding its call's message and descriptors in the daemon.
const SEND_PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

/// A client that has not authenticated after this long is dropped.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Accepts clients on `listener` for as long as the daemon runs, each on a task of its own.
pub(crate) async fn listen(
    surface: Surface,
    listener: UnixListener,
    client_idle: std::time::Duration,
) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let listener = tokio::net::UnixListener::from_std(listener)?;
    let next_id = AtomicU64::new(1);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_PEERS));
    let per_uid = PerUid::new(MAX_PEERS_PER_UID, 0);
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
        let uid = match rustix::net::sockopt::socket_peercred(&stream) {
            Ok(credentials) => credentials.uid.as_raw(),
            Err(e) => {
                log::info!("a client on the socket has no credentials: {e}");
                continue;
            }
        };
        let Ok(uid_slot) = per_uid.take(uid, 0) else {
            log::warn!("uid {uid} has {MAX_PEERS_PER_UID} clients on the socket already; turning one away");
            continue;
        };
        let id = next_id.fetch_add(1, Ordering::Relaxed);
        let surface = surface.clone();
        tokio::spawn(async move {
            let _slots = (slot, uid_slot);
            if let Err(e) = serve_peer(&surface, id, stream, client_idle).await {
                log::info!("client {id} on the socket: {e}");
            }
            surface.daemon.clients.remove_peer(id);
        });
    }
}

/// Authenticates one client, serves it the manager until it hangs up or has been idle for
/// `client_idle` with no operation of its running.
async fn serve_peer(
    surface: &Surface,
    id: u64,
    stream: tokio::net::UnixStream,
    client_idle: std::time::Duration,
) -> anyhow::Result<()> {
    let _busy = surface.activity().hold();
    let stream = stream.into_std()?;
    let peer = Peer::of(&stream)?;
    log::debug!("client {id} on the socket: pid {}, uid {}", peer.pid, peer.uid);
    let link = Link::peer(surface.authority.clone(), surface.activity(), &surface.calls, id, peer);
    let manager = surface.manager(link);
    // EXTERNAL only: the client proves it is the uid the kernel reports, nothing else is taken.
    let handshake = zbus::connection::Builder::socket(
        CloexecSocket::new(stream)?
            .with_client_limits()
            .with_send_patience(SEND_PATIENCE),
    )
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
    loop {
        match tokio::time::timeout(client_idle, messages.next()).await {
            Ok(Some(_)) => surface.activity().touch(),
            Ok(None) => {
                log::debug!("client {id} on the socket hung up");
                return Ok(());
            }
            // Waiting for its operation's signals is not idle.
            Err(_) if surface.operations.any_running_through(id) => {}
            Err(_) => {
                log::info!("client {id} on the socket: idle for {client_idle:?}; dropped");
                connection.close().await.ok();
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_uid_cannot_take_every_slot() {
        let per_uid = PerUid::new(MAX_PEERS_PER_UID, 0);
        let mine: Vec<_> = (0..MAX_PEERS_PER_UID).map(|_| per_uid.take(1000, 0).unwrap()).collect();
        assert!(per_uid.take(1000, 0).is_err(), "one more of the same uid");
        assert!(per_uid.take(1001, 0).is_ok(), "another uid still gets in");
        drop(mine);
        assert!(per_uid.take(1000, 0).is_ok(), "slots come back as clients leave");
        assert!(!per_uid.remembers(1001), "no count kept for nobody");
    }
}

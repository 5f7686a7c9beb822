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

use crate::State;
use crate::link::Link;
use crate::manager::Manager;

/// At most this many clients at once; more are turned away (the socket is open to every user).
const MAX_PEERS: usize = 256;

/// A client that has not authenticated after this long is dropped.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The process at the other end of a connection, as the kernel saw it when it connected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Peer {
    pub(crate) pid: u32,
    pub(crate) uid: u32,
    /// When the process started (`/proc/<pid>/stat` field 22): with the pid, names the process
    /// even if the pid is reused later.
    pub(crate) start_time: u64,
}

impl Peer {
    /// Who is at the other end of `stream`.
    fn of(stream: &std::os::unix::net::UnixStream) -> io::Result<Peer> {
        let credentials = rustix::net::sockopt::socket_peercred(stream)?;
        let pid = credentials.pid.as_raw_pid().unsigned_abs();
        Ok(Peer {
            pid,
            uid: credentials.uid.as_raw(),
            start_time: start_time(pid)?,
        })
    }
}

/// The start time of process `pid`, in clock ticks after boot.
pub(crate) fn start_time(pid: u32) -> io::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_start_time(&stat)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("unexpected /proc/{pid}/stat")))
}

/// Field 22 of a `/proc/<pid>/stat` line. The command name (field 2) is in parentheses and may
/// hold spaces and parentheses itself, so fields are counted after the last `)`.
fn parse_start_time(stat: &str) -> Option<u64> {
    let (_, after_name) = stat.rsplit_once(')')?;
    // Field 3 (the state) is the first after the name.
    after_name.split_whitespace().nth(22 - 3)?.parse().ok()
}

/// Accepts clients on `listener` for as long as the daemon runs, each on a task of its own.
pub(crate) async fn listen(state: Arc<State>, listener: UnixListener) -> io::Result<()> {
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
        let state = state.clone();
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(e) = serve_peer(&state, id, stream).await {
                log::info!("client {id} on the socket: {e}");
            }
            state.peers.lock().expect("peers lock").remove(&id);
        });
    }
}

/// Authenticates one client, serves it the manager until it hangs up.
async fn serve_peer(state: &Arc<State>, id: u64, stream: tokio::net::UnixStream) -> anyhow::Result<()> {
    let _busy = state.activity.hold();
    let stream = stream.into_std()?;
    let peer = Peer::of(&stream)?;
    log::debug!("client {id} on the socket: pid {}, uid {}", peer.pid, peer.uid);
    let link = Link::peer(state, id, peer);
    let manager = Manager {
        state: state.clone(),
        link,
    };
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
    state.peers.lock().expect("peers lock").insert(id, connection.clone());
    let mut messages = zbus::MessageStream::from(&connection);
    while messages.next().await.is_some() {
        state.activity.touch();
    }
    log::debug!("client {id} on the socket hung up");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_start_time_is_field_22_counted_after_the_name() {
        let fields: Vec<String> = (3..=25).map(|n| n.to_string()).collect();
        let stat = format!("1234 (a) b) (c) {}", fields.join(" "));
        assert_eq!(parse_start_time(&stat), Some(22));
        assert_eq!(parse_start_time("1234 (name) S 1 2"), None);
        assert_eq!(parse_start_time("garbage"), None);
    }

    #[test]
    fn the_kernel_names_the_peer() {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let peer = Peer::of(&ours).unwrap();
        drop(theirs);
        assert_eq!(peer.pid, std::process::id());
        assert_eq!(peer.uid, rustix::process::getuid().as_raw());
        assert_eq!(peer.start_time, start_time(std::process::id()).unwrap());
        assert!(peer.start_time > 0);
    }
}

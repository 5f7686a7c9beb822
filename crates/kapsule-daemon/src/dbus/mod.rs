//! Layer 6, the D-Bus surface: `org.kde.kapsule.Manager` on the bus and on the daemon's own
//! socket. Each method identifies and authorizes the caller, calls one pipeline, and wraps it in
//! an operation when it is long.

use std::sync::Arc;

use crate::host::activity::Activity;
use crate::identity::calls::Calls;
use crate::identity::link::{Authority, Link};
use crate::operation::Operations;
use crate::pipeline::Daemon;

/// What a socket client may send: a short handshake, messages of bounded size.
pub(crate) mod framing;
/// `org.kde.kapsule.Manager`.
pub(crate) mod manager;
/// The daemon's own socket: peer-to-peer D-Bus with each client.
pub(crate) mod socket;
/// Tier 0: the surface over a socket pair, against a fake Incus and a stand-in authority.
#[cfg(test)]
mod tests;
/// The Unix socket both carry D-Bus over: descriptors close-on-exec as they arrive.
pub(crate) mod transport;

/// What the surface serves from, on the bus and on each socket connection alike.
#[derive(Clone, Debug)]
pub(crate) struct Surface {
    pub(crate) daemon: Arc<Daemon>,
    pub(crate) operations: Arc<Operations>,
    /// Who is asked about each caller: polkit on the system bus, whatever the link.
    pub(crate) authority: Authority,
    /// Every uid's calls under way, on every link.
    pub(crate) calls: Calls,
}

impl Surface {
    /// The daemon's activity (a connected client keeps it from exiting idle).
    pub(crate) fn activity(&self) -> &Arc<Activity> {
        &self.daemon.containers.activity
    }

    /// The manager object for calls that come through `link`.
    pub(crate) fn manager(&self, link: Link) -> manager::Manager {
        manager::Manager {
            daemon: self.daemon.clone(),
            operations: self.operations.clone(),
            link,
        }
    }
}

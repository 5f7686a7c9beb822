//! Layer 6, the D-Bus surface: `org.kde.kapsule.Manager` on the bus and on the daemon's own
//! socket. Each method identifies and authorizes the caller, calls one pipeline, and wraps it in
//! an operation when it is long.

use std::sync::Arc;

use zbus::Connection;

use crate::host::activity::Activity;
use crate::identity::link::Link;
use crate::operation::Operations;
use crate::pipeline::Daemon;

/// `org.kde.kapsule.Manager`.
pub(crate) mod manager;
/// The daemon's own socket: peer-to-peer D-Bus with each client.
pub(crate) mod socket;

/// What the surface serves from, on the bus and on each socket connection alike.
#[derive(Clone, Debug)]
pub(crate) struct Surface {
    pub(crate) daemon: Arc<Daemon>,
    pub(crate) operations: Arc<Operations>,
    /// The system bus: polkit is asked there whatever the link.
    pub(crate) bus: Connection,
    pub(crate) activity: Arc<Activity>,
}

impl Surface {
    /// The manager object for calls that come through `link`.
    pub(crate) fn manager(&self, link: Link) -> manager::Manager {
        manager::Manager {
            daemon: self.daemon.clone(),
            operations: self.operations.clone(),
            link,
        }
    }
}

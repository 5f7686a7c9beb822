//! The clients told that the list of containers changed: everyone on the bus, and each client of
//! the daemon's own socket (a peer-to-peer connection has no bus to broadcast on).

use std::collections::BTreeMap;
use std::sync::Mutex;

use kapsule_dbus::{MANAGER_INTERFACE, MANAGER_PATH};
use zbus::Connection;
use zbus::object_server::SignalEmitter;

#[derive(Debug, Default)]
pub(crate) struct Clients {
    /// The bus connection (none in tests that serve peers only).
    bus: Option<Connection>,
    /// The clients on the daemon's own socket, by number.
    peers: Mutex<BTreeMap<u64, Connection>>,
}

impl Clients {
    pub(crate) fn new(bus: Connection) -> Clients {
        Clients {
            bus: Some(bus),
            peers: Default::default(),
        }
    }

    /// Socket client `id` connected on `connection`.
    pub(crate) fn add_peer(&self, id: u64, connection: Connection) {
        self.peers.lock().expect("peers lock").insert(id, connection);
    }

    /// Socket client `id` is gone.
    pub(crate) fn remove_peer(&self, id: u64) {
        self.peers.lock().expect("peers lock").remove(&id);
    }

    /// Emits `ContainersChanged` (declared on the Manager, which introspection shows) on the bus
    /// and to every socket client.
    pub(crate) async fn containers_changed(&self) {
        let peers: Vec<Connection> = self.peers.lock().expect("peers lock").values().cloned().collect();
        for connection in self.bus.iter().chain(&peers) {
            let emitted = match SignalEmitter::new(connection, MANAGER_PATH) {
                Ok(emitter) => emitter.emit(MANAGER_INTERFACE, "ContainersChanged", &()).await,
                Err(e) => Err(e),
            };
            if let Err(e) = emitted {
                log::warn!("could not emit ContainersChanged: {e}");
            }
        }
    }
}

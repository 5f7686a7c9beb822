//! The Kapsule D-Bus contract, shared by the daemon and every client.
//!
//! The names, object paths and signatures here are wire-compatible with KDE's original kapsule
//! daemon, because Konsole and libkapsule-qt speak it. No tokio, hyper or daemon code lives here.

mod error;
pub mod image;
mod operation;
pub mod options;
mod proxy;
mod reply;
pub mod session;

pub use error::{Error, quote};
pub use operation::{MessageKind, OperationStatus};
pub use proxy::{ManagerProxy, OperationProxy};
pub use reply::{ContainerDetails, ContainerInfo, EnterCommand, SnapshotInfo};

/// The well-known name of the daemon on the system bus.
pub const BUS_NAME: &str = "org.kde.kapsule";
/// The manager object.
pub const MANAGER_PATH: &str = "/org/kde/kapsule";
/// The manager interface, on [`MANAGER_PATH`].
pub const MANAGER_INTERFACE: &str = "org.kde.kapsule.Manager";
/// The interface of every operation object.
pub const OPERATION_INTERFACE: &str = "org.kde.kapsule.Operation";
/// Operation objects live below this path, one per operation: `<prefix>/<id>`.
pub const OPERATIONS_PATH: &str = "/org/kde/kapsule/operations";
/// The prefix of every named error.
pub const ERROR_PREFIX: &str = "org.kde.kapsule.Error";

/// The object path of operation `id`.
pub fn operation_path(id: u64) -> zbus::OwnedObjectPath {
    // A decimal id after a fixed, valid prefix is always a valid object path.
    zbus::OwnedObjectPath::try_from(format!("{OPERATIONS_PATH}/{id}")).expect("valid object path")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_paths_are_below_the_manager() {
        assert_eq!(operation_path(7).as_str(), "/org/kde/kapsule/operations/7");
        assert!(operation_path(u64::MAX).as_str().starts_with(MANAGER_PATH));
    }
}

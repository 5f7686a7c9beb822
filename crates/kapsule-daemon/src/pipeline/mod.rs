//! Layer 5, pipelines: one file per family of Manager methods, with the checks made before any
//! work (a bad request gets a named error and changes nothing) and the work itself.

use std::sync::Arc;

use crate::container::Containers;
use crate::operation::clients::Clients;

/// `CloneContainer`.
pub(crate) mod clone;
/// `CreateContainer`.
pub(crate) mod create;
/// `Enter` and `PrepareEnter`.
pub(crate) mod enter;
/// Ephemeral containers, removed once nobody is in them.
pub(crate) mod ephemeral;
/// `ImportImage`, `RefreshImages`, `DeleteImage`.
pub(crate) mod images;
/// `StartContainer`, `StopContainer`, `DeleteContainer`, and starting on the way in.
pub(crate) mod lifecycle;
/// `ListContainers`, `GetContainerInfo`, `GetContainerDetails`, `IsUserSetup`, `ListImages`, `GetConfig`.
pub(crate) mod queries;
/// Work a killed daemon left unfinished: found and recovered.
pub(crate) mod recovery;
/// `ResetContainer`.
pub(crate) mod reset;
/// `SetupUser`, and the setup on a first enter.
pub(crate) mod setup_user;
/// `ListSnapshots`, `CreateSnapshot`, `DeleteSnapshot`, `RestoreSnapshot`.
pub(crate) mod snapshots;
/// `UpgradeContainer`.
pub(crate) mod upgrade;

/// What every pipeline works with: the container layer's handles, the clients told about
/// changes, the pipelines' own locks, and what recovery did.
#[derive(Debug)]
pub(crate) struct Daemon {
    pub(crate) containers: Arc<Containers>,
    pub(crate) clients: Clients,
    pub(crate) setup_locks: setup_user::SetupLocks,
    pub(crate) recovered: recovery::Recovered,
    pub(crate) ephemeral: ephemeral::Watches,
}

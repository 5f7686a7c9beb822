//! Snapshots of a container: taken, listed, removed, restored (the operations `CreateSnapshot`,
//! `DeleteSnapshot`, `RestoreSnapshot` and the query `ListSnapshots`).
//!
//! A snapshot is Incus's: the container's file system (copy-on-write on btrfs, a copy on `dir`)
//! with its config and devices as they were. None of these is journaled: each is one Incus
//! operation, which Incus finishes without the daemon; a restore's stop and start around it
//! leave a container that is whole at every point (stopped, then restored, then running).

use kapsule_dbus::{Error, SnapshotInfo};
use kapsule_incus::models::{Instance, Snapshot};

use crate::container::meta::{AUTOMATIC_SNAPSHOT_PREFIX, is_running, iso8601_with_offset, validate_snapshot_name};
use crate::error::incus_error;
use crate::host::journal;
use crate::operation::incus::run_incus_operation;
use crate::operation::{Failure, Reporter};
use crate::pipeline::Daemon;
use crate::pipeline::lifecycle::ensure_running;
use crate::pipeline::recovery::{self, settled};

/// `ListSnapshots`: the container's snapshots, oldest first (also while work is under way on it:
/// a read).
pub(crate) async fn list(daemon: &Daemon, name: &str) -> Result<Vec<SnapshotInfo>, Error> {
    recovery::container(daemon, name).await?;
    let snapshots = incus_snapshots(daemon, name).await?;
    Ok(snapshots.iter().map(info).collect())
}

pub(crate) fn info(snapshot: &Snapshot) -> SnapshotInfo {
    SnapshotInfo {
        name: snapshot.name.clone(),
        created: iso8601_with_offset(&snapshot.created_at),
        automatic: snapshot.name.starts_with(AUTOMATIC_SNAPSHOT_PREFIX),
    }
}

async fn incus_snapshots(daemon: &Daemon, name: &str) -> Result<Vec<Snapshot>, Error> {
    daemon.containers.incus.list_snapshots(name).await.map_err(incus_error)
}

/// Before `CreateSnapshot`: the container exists and is settled, and the snapshot's name is
/// valid, not one of Kapsule's own and free. An empty name is the date and time (host's zone),
/// with a number after it if a snapshot of that second exists. Returns the name to take.
pub(crate) async fn plan_take(daemon: &Daemon, name: &str, snapshot: &str) -> Result<String, Error> {
    if !snapshot.is_empty() {
        validate_snapshot_name(snapshot)?;
        if snapshot.starts_with(AUTOMATIC_SNAPSHOT_PREFIX) {
            return Err(Error::InvalidArgument(format!(
                "Invalid snapshot name {}: names beginning with '{AUTOMATIC_SNAPSHOT_PREFIX}' are for the snapshots Kapsule takes itself",
                kapsule_dbus::quote(snapshot)
            )));
        }
    }
    settled(daemon, name).await?;
    let taken: Vec<String> = incus_snapshots(daemon, name)
        .await?
        .into_iter()
        .map(|s| s.name)
        .collect();
    if snapshot.is_empty() {
        let dated = jiff::Zoned::now().strftime("%Y%m%d-%H%M%S").to_string();
        let free = std::iter::once(dated.clone())
            .chain((2..).map(|n| format!("{dated}-{n}")))
            .find(|candidate| !taken.contains(candidate))
            .unwrap_or(dated);
        return Ok(free);
    }
    if taken.iter().any(|t| t == snapshot) {
        return Err(Error::AlreadyExists(format!(
            "Container '{name}' has a snapshot '{snapshot}' already"
        )));
    }
    Ok(snapshot.to_owned())
}

/// `CreateSnapshot`'s work.
pub(crate) async fn take(daemon: &Daemon, reporter: &Reporter, name: &str, snapshot: &str) -> Result<String, Failure> {
    // Checked just before by `plan_take`; the hold keeps this process's own work on the
    // container (a reset, say) from running at the same time.
    let _hold = journal::hold(&journal::instance_key(name)).await;
    reporter.info(&format!("Taking snapshot '{snapshot}'")).await;
    let op = daemon.containers.incus.create_snapshot(name, snapshot).await?;
    run_incus_operation(&daemon.containers.incus, reporter, op).await?;
    Ok(format!("Snapshot '{snapshot}' of '{name}' taken"))
}

/// Before `DeleteSnapshot` and `RestoreSnapshot`: the container is settled and has the snapshot.
pub(crate) async fn check_snapshot(daemon: &Daemon, name: &str, snapshot: &str) -> Result<Instance, Error> {
    validate_snapshot_name(snapshot)?;
    let instance = settled(daemon, name).await?;
    if !incus_snapshots(daemon, name).await?.iter().any(|s| s.name == snapshot) {
        return Err(Error::NotFound(format!(
            "Container '{name}' has no snapshot '{snapshot}' (kapsule snapshot list {name} shows them)"
        )));
    }
    Ok(instance)
}

/// `DeleteSnapshot`'s work.
pub(crate) async fn delete(
    daemon: &Daemon,
    reporter: &Reporter,
    name: &str,
    snapshot: &str,
) -> Result<String, Failure> {
    check_snapshot(daemon, name, snapshot).await?;
    let _hold = journal::hold(&journal::instance_key(name)).await;
    let op = daemon.containers.incus.delete_snapshot(name, snapshot).await?;
    run_incus_operation(&daemon.containers.incus, reporter, op).await?;
    Ok(format!("Snapshot '{snapshot}' of '{name}' removed"))
}

/// `RestoreSnapshot`'s work: a running container is stopped first and started again after.
pub(crate) async fn restore(
    daemon: &Daemon,
    reporter: &Reporter,
    name: &str,
    snapshot: &str,
) -> Result<String, Failure> {
    let instance = check_snapshot(daemon, name, snapshot).await?;
    let _hold = journal::hold(&journal::instance_key(name)).await;
    let incus = &daemon.containers.incus;
    let was_running = is_running(&instance);
    if was_running {
        reporter.info("Stopping the container").await;
        let op = incus
            .stop_instance(name, true, std::time::Duration::from_secs(30))
            .await?;
        run_incus_operation(incus, reporter, op).await?;
    }
    reporter.info(&format!("Restoring snapshot '{snapshot}'")).await;
    let op = incus.restore_snapshot(name, snapshot).await?;
    run_incus_operation(incus, reporter, op).await?;
    if was_running {
        let restored = incus.get_instance(name).await?;
        ensure_running(daemon, Some(reporter), &restored).await?;
    }
    daemon.clients.containers_changed().await;
    Ok(format!("Container '{name}' is as it was at snapshot '{snapshot}'"))
}

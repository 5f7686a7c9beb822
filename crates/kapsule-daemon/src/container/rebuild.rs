//! A container's root file system made anew from an image: what `kapsule reset` does, and what
//! recovery finishes for a reset a killed daemon left. The container is stopped (forcibly: its
//! files are about to be replaced), the snapshots Kapsule took itself are removed (Incus 6.0
//! refuses to rebuild a container that has snapshots; a user's own make the reset refuse before
//! it begins, see `pipeline/reset.rs`), Incus rebuilds it (its config and devices stay), it is
//! started, and it gets what a new container gets (`fixups`), the host's settings, and the
//! packages and hooks it was created with (`provision`).

use std::time::Duration;

use kapsule_incus::models::InstanceSource;

use crate::container::meta::{AUTOMATIC_SNAPSHOT_PREFIX, is_running};
use crate::container::provision::{self, Steps};
use crate::container::{Containers, fixups, hostsync, idmap};
use crate::operation::incus::run_noted;
use crate::operation::{Failure, Notes};

/// Rebuilds container `name` from the local image `fingerprint` and starts it.
pub(crate) async fn rebuild(
    containers: &Containers,
    notes: Notes<'_>,
    name: &str,
    fingerprint: &str,
    session_mode: bool,
) -> Result<(), Failure> {
    let incus = &containers.incus;
    // Its config is what it starts with again below: a rebuild keeps it.
    let instance = incus.get_instance(name).await?;
    if is_running(&instance) {
        notes.info("Stopping the container").await;
        let op = incus.stop_instance(name, true, Duration::from_secs(30)).await?;
        run_noted(incus, notes, op).await?;
    }
    for snapshot in incus.list_snapshots(name).await? {
        if snapshot.name.starts_with(AUTOMATIC_SNAPSHOT_PREFIX) {
            notes
                .info(&format!("Removing the snapshot '{}' Kapsule took", snapshot.name))
                .await;
            let op = incus.delete_snapshot(name, &snapshot.name).await?;
            run_noted(incus, notes, op).await?;
        }
    }
    notes.info("Making its files anew from the image").await;
    let op = incus
        .rebuild_instance(name, &InstanceSource::local_fingerprint(fingerprint))
        .await?;
    run_noted(incus, notes, op).await?;
    notes.info("Starting it").await;
    let op = idmap::start(containers, &instance).await?;
    run_noted(incus, notes, op).await?;
    fixups::apply(containers, notes, name, session_mode).await?;
    hostsync::report(notes, hostsync::sync_one(containers, name).await).await;
    let steps = Steps::of_instance(&incus.get_instance(name).await?);
    provision::run(containers, notes, name, &steps).await
}

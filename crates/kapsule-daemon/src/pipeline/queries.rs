//! The read-only methods: `ListContainers`, `GetContainerInfo`, `GetContainerDetails`,
//! `IsUserSetup`, `ListImages`, `GetConfig`. They need no authorization and change nothing.

use std::collections::HashMap;
use std::sync::Arc;

use kapsule_dbus::{ContainerDetails, ContainerInfo, Error};

use crate::container::meta;
use crate::error::incus_error;
use crate::identity::caller::{Caller, config_for};
use crate::pipeline::{Daemon, recovery, snapshots};

/// Every Kapsule container, in one Incus request. Ones a killed daemon left unfinished are
/// listed as being removed while their recovery runs in the background.
pub(crate) async fn list_containers(daemon: &Arc<Daemon>) -> Result<Vec<ContainerInfo>, Error> {
    let instances = daemon.containers.incus.list_instances().await.map_err(incus_error)?;
    recovery::spawn_containers(daemon, &instances);
    Ok(instances
        .iter()
        .filter(|i| meta::is_kapsule(i))
        .map(meta::container_info)
        .collect())
}

/// One Kapsule container.
pub(crate) async fn container_info(daemon: &Daemon, name: &str) -> Result<ContainerInfo, Error> {
    let instance = recovery::container(daemon, name).await?;
    Ok(meta::container_info(&instance))
}

/// Everything about one Kapsule container a user or a settings page needs: its info row, its
/// options, owner, users, image, snapshots and disk use (these last two read apart, and left out
/// when Incus cannot say).
pub(crate) async fn container_details(daemon: &Daemon, name: &str) -> Result<ContainerDetails, Error> {
    let instance = recovery::container(daemon, name).await?;
    let incus = &daemon.containers.incus;
    let (snapshots, state) = tokio::join!(incus.list_snapshots(name), incus.instance_state(name));
    let mut details = meta::container_details(&instance);
    details.snapshots = snapshots
        .map(|s| s.iter().map(snapshots::info).collect())
        .unwrap_or_default();
    details.disk_usage = state
        .ok()
        .and_then(|state| state.disk?.get("root").map(|root| root.usage))
        .and_then(|usage| u64::try_from(usage).ok())
        .filter(|usage| *usage > 0);
    details.owner_name = details
        .owner
        .and_then(|uid| {
            nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
                .ok()
                .flatten()
        })
        .map(|user| user.name);
    Ok(details)
}

/// Whether `uid` was set up in container `name`.
pub(crate) async fn is_user_setup(daemon: &Daemon, name: &str, uid: u32) -> Result<bool, Error> {
    let instance = recovery::container(daemon, name).await?;
    Ok(meta::is_set_up(&instance, uid))
}

/// The local images, as Incus's own JSON objects. Ones a killed daemon's import left behind are
/// recovered in the background.
pub(crate) async fn list_images(daemon: &Arc<Daemon>) -> Result<String, Error> {
    let images = daemon.containers.incus.list_images().await.map_err(incus_error)?;
    recovery::spawn_images(daemon, &images);
    serde_json::to_string(&images).map_err(|e| Error::Failed(e.to_string()))
}

/// The configuration as `caller` sees it.
pub(crate) async fn config(daemon: &Daemon, caller: &Caller) -> HashMap<String, String> {
    config_for(&daemon.containers.settings.system_files(), caller)
        .await
        .into_iter()
        .collect()
}

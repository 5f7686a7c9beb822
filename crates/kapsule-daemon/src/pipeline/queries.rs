//! The read-only methods: `ListContainers`, `GetContainerInfo`, `IsUserSetup`, `ListImages`,
//! `GetConfig`. They need no authorization and change nothing.

use std::collections::HashMap;
use std::sync::Arc;

use kapsule_dbus::{ContainerInfo, Error};

use crate::container::meta;
use crate::error::incus_error;
use crate::identity::caller::{Caller, config_for};
use crate::pipeline::{Daemon, recovery};

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

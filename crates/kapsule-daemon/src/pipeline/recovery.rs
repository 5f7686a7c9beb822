//! Recovery of work a daemon did not finish (see `host/journal.rs` for the entries): at the
//! daemon's start, and whenever a container or image with an abandoned entry is looked at (Incus
//! may finish an operation of a killed daemon after the next daemon started, so the start alone
//! cannot find everything).
//!
//! What is done with each is fixed, so that every outcome is one a user was told or asked for:
//! - a create: the container is removed (its client was told the create failed);
//! - a delete: the removal is finished (it was asked for);
//! - a reset: it is done again from the image it named (it was asked for, and the container's own
//!   files may be half replaced);
//! - an import: the image is removed unless an alias names it (then the import had finished but
//!   for clearing its entry);
//! - an image an import moved its alias away from: removed unless an alias names it.
//!
//! What was done is logged, and said to the next caller who asks about that container.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kapsule_dbus::Error;
use kapsule_incus::models::{ConfigMap, Image, Instance};

use crate::container::meta::{self, PENDING_KEY, Wants};
use crate::container::rebuild::rebuild;
use crate::error::incus_error;
use crate::host::journal::{self, Entry, Work};
use crate::operation::Notes;
use crate::operation::incus::INCUS_WAIT;
use crate::pipeline::Daemon;

/// The image a reset under way makes the container from (cleared with the journal entry).
pub(crate) const RESET_IMAGE_KEY: &str = "user.kapsule.reset-image";

/// The image property of an import's journal entry.
pub(crate) const IMAGE_PENDING_KEY: &str = "kapsule.pending";

/// How long recovery waits for an Incus operation a killed daemon started on a container.
const OPERATION_WAIT: Duration = Duration::from_secs(300);

/// What recovery did to containers, by name, until a caller asks about one.
#[derive(Debug, Default)]
pub(crate) struct Recovered(Mutex<HashMap<String, String>>);

impl Recovered {
    fn record(&self, name: &str, what: String) {
        self.0.lock().expect("recovered").insert(name.to_owned(), what);
    }

    /// What was done to `name`, said once.
    pub(crate) fn take(&self, name: &str) -> Option<String> {
        self.0.lock().expect("recovered").remove(name)
    }
}

/// The Kapsule container `name` for a caller who asks about it: one with an abandoned entry is
/// recovered first (and then does not exist: the error says why). Work under way is returned as
/// it is (`list` and `info` show it); [`settled`] refuses it.
pub(crate) async fn container(daemon: &Daemon, name: &str) -> Result<Instance, Error> {
    match meta::get_kapsule_container(&daemon.containers, name).await {
        Ok(instance) if meta::is_abandoned(&instance) => {
            recover_container(daemon, name).await?;
        }
        Ok(instance) => return Ok(instance),
        Err(Error::NotFound(_)) => {}
        Err(e) => return Err(e),
    }
    match meta::get_kapsule_container(&daemon.containers, name).await {
        Err(Error::NotFound(message)) => Err(Error::NotFound(match daemon.recovered.take(name) {
            Some(what) => format!("{message}: {what}"),
            None => message,
        })),
        found => found,
    }
}

/// [`container`], refusing one that work is under way on.
pub(crate) async fn settled(daemon: &Daemon, name: &str) -> Result<Instance, Error> {
    let instance = container(daemon, name).await?;
    match meta::pending(&instance).map(|e| e.work) {
        None => Ok(instance),
        Some(Work::Create) => Err(Error::Failed(format!(
            "Container '{name}' is still being created; try again when that has finished"
        ))),
        Some(Work::Reset) => Err(Error::Failed(format!(
            "Container '{name}' is being reset; try again when that has finished"
        ))),
        Some(_) => Err(Error::Failed(format!("Container '{name}' is being removed"))),
    }
}

/// Recovers container `name` if its entry is abandoned (checked again once it is held and it is
/// this daemon's turn: another recovery, of this daemon or another, may have finished it
/// meanwhile). Returns what it did.
pub(crate) async fn recover_container(daemon: &Daemon, name: &str) -> Result<Option<String>, Error> {
    let key = journal::instance_key(name);
    let _hold = journal::hold(&key).await;
    let _busy = daemon.containers.activity.hold();
    // Another daemon may be recovering it right now: read it once that one is done.
    let _turn = journal::recovery_turn().await;
    let instance = match daemon.containers.incus.get_instance(name).await {
        Ok(instance) => instance,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => return Err(incus_error(e)),
    };
    let Some(entry) = meta::pending(&instance).filter(Entry::is_abandoned_held) else {
        return Ok(None);
    };
    // A killed daemon's Incus operation (the create itself, a stop) may still run: it ends first.
    wait_for_operations(daemon, name).await;
    if entry.work == Work::Reset {
        let what = finish_reset(daemon, &instance).await?;
        daemon.clients.containers_changed().await;
        return Ok(Some(what));
    }
    let what = match entry.work {
        Work::Create => {
            "its creation was interrupted (the daemon stopped, or Incus went away), so what was made of it was removed"
        }
        _ => "its removal was interrupted (the daemon stopped) and has been finished",
    };
    log::warn!("container {name}: {what} (journal: {})", entry.value());
    if let Err(e) = remove_instance(daemon, name).await {
        // Another daemon on this Incus (a test's, say) may have recovered it at the same time.
        match daemon.containers.incus.get_instance(name).await {
            Err(gone) if gone.is_not_found() => log::info!("container {name}: removed meanwhile by someone else"),
            _ => {
                return Err(Error::Failed(format!(
                    "Container '{name}' was left half-made or half-removed by an interrupted operation, and removing it failed: {}",
                    crate::error::readable(&e.to_string())
                )));
            }
        }
    }
    daemon.recovered.record(name, what.to_owned());
    daemon.clients.containers_changed().await;
    Ok(Some(what.to_owned()))
}

/// A reset a killed daemon left, done again from the image it named.
async fn finish_reset(daemon: &Daemon, instance: &Instance) -> Result<String, Error> {
    let name = instance.name.as_str();
    log::warn!("container {name}: a reset was interrupted; doing it again");
    let fingerprint = instance.config.get(RESET_IMAGE_KEY).cloned().unwrap_or_default();
    let session_mode = Wants::of(instance).session_mode;
    let mut done = rebuild(&daemon.containers, Notes(None), name, &fingerprint, session_mode).await;
    if let Err(first) = &done {
        // The killed daemon's own rebuild may have reached Incus only after the wait above (its
        // request was in flight): two rebuilds at once fail. Once Incus is done, the reset is
        // done again once more.
        log::info!(
            "container {name}: redoing the reset failed ({}); once more when Incus is done",
            first.message()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        wait_for_operations(daemon, name).await;
        done = rebuild(&daemon.containers, Notes(None), name, &fingerprint, session_mode).await;
    }
    clear_container_entry(daemon, name).await.map_err(incus_error)?;
    match done {
        Ok(()) => Ok("its reset was interrupted (the daemon stopped) and has been done again".to_owned()),
        Err(failure) => Err(Error::Failed(format!(
            "Container '{name}' was left half-reset by an interrupted reset, and resetting it again failed: {} (`kapsule reset {name}` tries again)",
            failure.message()
        ))),
    }
}

/// Waits until no Incus operation works on container `name`.
async fn wait_for_operations(daemon: &Daemon, name: &str) {
    let incus = &daemon.containers.incus;
    let Ok(running) = incus.running_operations().await else {
        return;
    };
    for op in running.iter().filter(|op| op.touches_instance(name)) {
        log::info!(
            "container {name}: waiting for Incus's '{}' ({}) to end",
            op.description,
            op.id
        );
        let _ = incus.wait_operation(&op.id, Some(OPERATION_WAIT)).await;
    }
}

/// Stops (forcibly: there is nothing to keep) and deletes the instance; gone already is fine.
pub(crate) async fn remove_instance(daemon: &Daemon, name: &str) -> Result<(), kapsule_incus::Error> {
    let incus = &daemon.containers.incus;
    let instance = match incus.get_instance(name).await {
        Ok(instance) => instance,
        Err(e) if e.is_not_found() => return Ok(()),
        Err(e) => return Err(e),
    };
    if meta::is_running(&instance) {
        let op = incus.stop_instance(name, true, Duration::from_secs(30)).await?;
        incus.wait_operation(&op.id, INCUS_WAIT).await?;
    }
    match incus.delete_instance(name).await {
        Ok(op) => incus.wait_operation(&op.id, INCUS_WAIT).await.map(drop),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Removes the journal entry of finished work on container `name` (with the image a reset named,
/// which belongs to its entry).
pub(crate) async fn clear_container_entry(daemon: &Daemon, name: &str) -> Result<(), kapsule_incus::Error> {
    let config = ConfigMap::from([
        (PENDING_KEY.to_owned(), String::new()),
        (RESET_IMAGE_KEY.to_owned(), String::new()),
    ]);
    daemon.containers.incus.patch_instance_config(name, &config).await
}

/// The image's journal entry, if any.
pub(crate) fn image_entry(image: &Image) -> Option<Entry> {
    Entry::parse(image.properties.get(IMAGE_PENDING_KEY)?)
}

/// Removes the journal entry of finished work on image `fingerprint`.
pub(crate) async fn clear_image_entry(daemon: &Daemon, fingerprint: &str) -> Result<(), kapsule_incus::Error> {
    let properties = ConfigMap::from([(IMAGE_PENDING_KEY.to_owned(), String::new())]);
    daemon
        .containers
        .incus
        .patch_image_properties(fingerprint, &properties)
        .await
}

/// Recovers image `fingerprint` if its entry is abandoned: an image an alias names is kept (its
/// entry cleared), any other removed.
pub(crate) async fn recover_image(daemon: &Daemon, fingerprint: &str) -> Result<(), kapsule_incus::Error> {
    let key = journal::image_key(fingerprint);
    let _hold = journal::hold(&key).await;
    let _busy = daemon.containers.activity.hold();
    let _turn = journal::recovery_turn().await;
    let incus = &daemon.containers.incus;
    let image = match incus.get_image(fingerprint).await {
        Ok(image) => image,
        Err(e) if e.is_not_found() => return Ok(()),
        Err(e) => return Err(e),
    };
    let Some(entry) = image_entry(&image).filter(Entry::is_abandoned_held) else {
        return Ok(());
    };
    if image.aliases.is_empty() {
        log::warn!(
            "image {fingerprint}: an interrupted {} left it without an alias: removing it (journal: {})",
            if entry.work == Work::Import {
                "import"
            } else {
                "import over its alias"
            },
            entry.value()
        );
        let removed = async {
            let op = incus.delete_image(fingerprint).await?;
            incus.wait_operation(&op.id, INCUS_WAIT).await.map(drop)
        };
        match removed.await {
            // Removed meanwhile by another daemon on this Incus is as good.
            Err(e) if !incus.get_image(fingerprint).await.is_err_and(|e| e.is_not_found()) => Err(e),
            _ => Ok(()),
        }
    } else {
        log::info!("image {fingerprint}: an interrupted import had finished but for its journal entry: cleared");
        clear_image_entry(daemon, fingerprint).await
    }
}

/// Recovers every image whose entry is abandoned, in the background.
pub(crate) fn spawn_images(daemon: &Arc<Daemon>, images: &[Image]) {
    for image in images {
        let key = journal::image_key(&image.fingerprint);
        if image_entry(image).is_some_and(|e| e.is_abandoned(&key)) {
            let daemon = daemon.clone();
            let fingerprint = image.fingerprint.clone();
            tokio::spawn(async move {
                if let Err(e) = recover_image(&daemon, &fingerprint).await {
                    log::warn!("image {fingerprint}: recovery failed: {e}");
                }
            });
        }
    }
}

/// Recovers every container with an abandoned entry, in the background.
pub(crate) fn spawn_containers(daemon: &Arc<Daemon>, instances: &[Instance]) {
    for instance in instances
        .iter()
        .filter(|i| meta::is_kapsule(i) && meta::is_abandoned(i))
    {
        let daemon = daemon.clone();
        let name = instance.name.clone();
        tokio::spawn(async move {
            if let Err(e) = recover_container(&daemon, &name).await {
                log::warn!("container {name}: recovery failed: {e}");
            }
        });
    }
}

/// At the daemon's start: everything a killed daemon left unfinished.
pub(crate) async fn at_start(daemon: &Arc<Daemon>) {
    let incus = &daemon.containers.incus;
    match incus.list_instances().await {
        Ok(instances) => spawn_containers(daemon, &instances),
        Err(e) => log::warn!("cannot look for unfinished containers: {e}"),
    }
    match incus.list_images().await {
        Ok(images) => spawn_images(daemon, &images),
        Err(e) => log::warn!("cannot look for unfinished image imports: {e}"),
    }
}

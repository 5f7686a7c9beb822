//! `ResetContainer`: a container made anew from its image, keeping what it was made with.
//!
//! The container's own files (everything outside the host home and custom mounts) are replaced
//! by a fresh copy of the image it was made from (Incus's `volatile.base_image`), or of another
//! local image; its name, owner, options and devices stay. Its users are set up again on their
//! next enter, as in a new container.
//!
//! Incus 6.0 cannot rebuild a container that has snapshots. The ones Kapsule took itself (before
//! upgrades: points to go back to in the files now being replaced) are removed, and the client is
//! told so first; a snapshot the user took is never removed by a reset: the reset is refused
//! before any work, saying how to keep it (a clone of it) and how to remove it.
//!
//! Journaled (`host/journal.rs`): the entry, the image to reset to and the users' setup markers
//! cleared go in one config change before anything else, and the entry is cleared last; a reset a
//! killed daemon left is done again by recovery (it was asked for, and the container's own files
//! may be half gone already).

use kapsule_dbus::Error;
use kapsule_incus::models::{ConfigMap, Image};

use crate::container::meta::{AUTOMATIC_SNAPSHOT_PREFIX, IMAGE_KEY, PENDING_KEY, Wants};
use crate::container::rebuild::rebuild;
use crate::error::incus_error;
use crate::host::journal::{self, Entry, Work};
use crate::image::pull::short;
use crate::operation::{Failure, Notes, Reporter};
use crate::pipeline::recovery::{self, RESET_IMAGE_KEY, settled};
use crate::pipeline::{Daemon, images};

/// A reset that passed every check.
#[derive(Debug)]
pub(crate) struct Plan {
    pub name: String,
    pub image: Image,
    /// The image as the user knows it: its description, else its fingerprint's start.
    pub image_label: String,
    /// The snapshots Kapsule took itself, removed by the reset.
    pub automatic: Vec<String>,
    /// The image as the user named it, when they did: what the container now comes from.
    pub source: Option<String>,
}

/// Before `ResetContainer`: the container is settled and the image is in the local store. An
/// empty `image` is the one the container was made from.
pub(crate) async fn plan(daemon: &Daemon, name: &str, image: &str) -> Result<Plan, Error> {
    let instance = settled(daemon, name).await?;
    let source = (!image.is_empty()).then(|| image.to_owned());
    let image = if image.is_empty() {
        let recorded = instance.config.get("volatile.base_image").filter(|f| !f.is_empty());
        let described = instance
            .config
            .get("image.description")
            .map_or_else(String::new, |d| format!(" ({d})"));
        let Some(fingerprint) = recorded else {
            return Err(Error::NotFound(format!(
                "Container '{name}' does not record the image it was made from; name one with --image"
            )));
        };
        match daemon.containers.incus.get_image(fingerprint).await {
            Ok(image) => image,
            Err(e) if e.is_not_found() => {
                return Err(Error::NotFound(format!(
                    "The image '{name}' was made from, {}{described}, is no longer in the image store \
                     (replaced or deleted); reset it from another with --image",
                    short(fingerprint)
                )));
            }
            Err(e) => return Err(incus_error(e)),
        }
    } else {
        images::resolve(daemon, image).await?
    };
    let snapshots = daemon
        .containers
        .incus
        .list_snapshots(name)
        .await
        .map_err(incus_error)?;
    let (automatic, own): (Vec<_>, Vec<_>) = snapshots
        .into_iter()
        .map(|s| s.name)
        .partition(|s| s.starts_with(AUTOMATIC_SNAPSHOT_PREFIX));
    if let Some(first) = own.first() {
        return Err(Error::Failed(format!(
            "Container '{name}' has snapshots you took ({}), and a container with snapshots cannot be made anew; \
             to keep one, make it a container of its own (kapsule clone {name} NEW --snapshot {first}), \
             then remove them (kapsule snapshot rm {name} {first})",
            own.join(", ")
        )));
    }
    let image_label = image
        .properties
        .get("description")
        .filter(|d| !d.is_empty())
        .cloned()
        .unwrap_or_else(|| short(&image.fingerprint).to_owned());
    Ok(Plan {
        name: name.to_owned(),
        image,
        image_label,
        automatic,
        source,
    })
}

/// `ResetContainer`'s work.
pub(crate) async fn run(daemon: &Daemon, reporter: &Reporter, plan: Plan) -> Result<String, Failure> {
    let name = plan.name.as_str();
    // Settled first: recovering a dead daemon's work takes the hold itself.
    let instance = settled(daemon, name).await?;
    let _hold = journal::hold(&journal::instance_key(name)).await;
    reporter
        .warn(&format!(
            "The files of '{name}' outside your home and its custom mounts are replaced by a fresh copy of {}",
            plan.image_label
        ))
        .await;
    if !plan.automatic.is_empty() {
        reporter
            .warn(&format!(
                "The snapshots Kapsule took before upgrades are removed with them: {}",
                plan.automatic.join(", ")
            ))
            .await;
    }
    let mut entry = ConfigMap::from([
        (PENDING_KEY.to_owned(), Entry::new(Work::Reset).value()),
        (RESET_IMAGE_KEY.to_owned(), plan.image.fingerprint.clone()),
    ]);
    // Setup markers go now: whatever happens next, no user is taken for set up in files that
    // may be new.
    for key in instance.config.keys().filter(|k| is_setup_marker(k)) {
        entry.insert(key.clone(), String::new());
    }
    if let Some(source) = &plan.source {
        entry.insert(IMAGE_KEY.to_owned(), source.clone());
    }
    daemon.containers.incus.patch_instance_config(name, &entry).await?;
    let session_mode = Wants::of(&instance).session_mode;
    let done = rebuild(
        &daemon.containers,
        Notes(Some(reporter)),
        name,
        &plan.image.fingerprint,
        session_mode,
    )
    .await;
    let cleared = recovery::clear_container_entry(daemon, name).await;
    daemon.clients.containers_changed().await;
    match done {
        Ok(()) => {
            cleared?;
            Ok(format!(
                "Container '{name}' was reset from {}; users are set up again when they enter",
                plan.image_label
            ))
        }
        Err(Failure::Failed(why)) => Err(Failure::Failed(format!(
            "Resetting '{name}' failed: {why} (the container may be partly reset; `kapsule reset {name}` again makes it whole)"
        ))),
        Err(cancelled) => Err(cancelled),
    }
}

/// True for the config key that says a user was set up.
fn is_setup_marker(key: &str) -> bool {
    key.strip_prefix("user.kapsule.host-users.")
        .is_some_and(|rest| rest.ends_with(".mapped"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_setup_markers_are_cleared() {
        assert!(is_setup_marker(&crate::container::meta::mapped_key(1000)));
        for other in [
            "user.kapsule.owner",
            "user.kapsule.host-users.1000",
            "user.kapsule.mount-home",
        ] {
            assert!(!is_setup_marker(other), "{other}");
        }
    }

    #[test]
    fn a_reset_entry_reads_back() {
        let entry = Entry::new(Work::Reset);
        assert_eq!(Entry::parse(&entry.value()), Some(entry));
    }
}

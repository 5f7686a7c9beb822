//! Local images: finding one by alias or fingerprint, importing, refreshing and deleting.

use std::path::{Path, PathBuf};

use kapsule_dbus::Error;
use kapsule_dbus::image::{ImageRef, is_fingerprint};
use kapsule_incus::models::{ConfigMap, Image, ImageUpdateSource};
use kapsule_incus::{ImageUpload, UploadFile};

use crate::container::Containers;
use crate::host::journal::{self, Entry, Work};
use crate::identity::caller::Caller;
use crate::image::pull::{forget_index, mib, pulled_from, short, source_server};
use crate::image::remotes::Remotes;
use crate::operation::incus::{INCUS_WAIT, run_incus_operation};
use crate::operation::{Failure, MessageKind, Reporter};
use crate::pipeline::{Daemon, recovery};

/// Checks a local alias (or fingerprint), with the message a client sees.
fn check_local_alias(alias: &str) -> Result<(), Error> {
    kapsule_dbus::image::check_local_alias(alias).map_err(|e| e.for_image(alias))
}

/// The local image named by `identifier`: an alias, or a full (64 hex digits) fingerprint.
pub(crate) async fn resolve(daemon: &Daemon, identifier: &str) -> Result<Image, Error> {
    check_local_alias(identifier)?;
    let not_found = || Error::NotFound(format!("No local image with alias or fingerprint '{identifier}'"));
    let fingerprint = if is_fingerprint(identifier) {
        identifier.to_ascii_lowercase()
    } else {
        match daemon.containers.incus.get_image_alias(identifier).await {
            Ok(alias) => alias.target,
            Err(e) if e.is_not_found() => return Err(not_found()),
            Err(e) => return Err(crate::error::incus_error(e)),
        }
    };
    match daemon.containers.incus.get_image(&fingerprint).await {
        Ok(image) => Ok(image),
        Err(e) if e.is_not_found() => Err(not_found()),
        Err(e) => Err(crate::error::incus_error(e)),
    }
}

/// Deletes the image (and with it its aliases). Containers made from it keep working: each has
/// its own copy of the root filesystem.
pub(crate) async fn delete(daemon: &Daemon, reporter: &Reporter, image: Image) -> Result<String, Failure> {
    let short = short(&image.fingerprint);
    reporter.info(&format!("Deleting image {short}")).await;
    let op = daemon.containers.incus.delete_image(&image.fingerprint).await?;
    run_incus_operation(&daemon.containers.incus, reporter, op).await?;
    Ok(format!("Image {short} deleted"))
}

/// An import request that passed every check, with both files already open.
#[derive(Debug)]
pub(crate) struct ImportPlan {
    pub alias: String,
    pub dir: PathBuf,
    pub metadata: UploadFile,
    pub rootfs: UploadFile,
}

/// Checks an import request and opens the image files as the caller: a directory the caller
/// cannot read cannot be imported, whatever the daemon itself may read.
pub(crate) async fn plan_import(caller: &Caller, path: &str, alias: &str) -> Result<ImportPlan, Error> {
    check_local_alias(alias)?;
    if is_fingerprint(alias) {
        return Err(Error::InvalidArgument(format!(
            "Invalid alias '{alias}': it looks like a fingerprint"
        )));
    }
    let dir = PathBuf::from(path);
    if !dir.is_absolute() || path.contains('\0') {
        return Err(Error::InvalidArgument(format!(
            "Image path {} is not absolute (the kapsule CLI resolves relative paths)",
            kapsule_dbus::quote(path)
        )));
    }
    match caller.open(&dir).await {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::NotFound(format!(
                "Image directory does not exist: {}",
                dir.display()
            )));
        }
        Ok(_) => {
            return Err(Error::InvalidArgument(format!(
                "{} is a file; give the directory that holds the image files",
                dir.display()
            )));
        }
        Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {} // a directory
        Err(e) => return Err(unreadable(&dir, e)),
    }
    let metadata = open_first(caller, &dir, kapsule_dbus::image::METADATA_FILES, "metadata").await?;
    let rootfs = open_first(caller, &dir, kapsule_dbus::image::ROOTFS_FILES, "rootfs").await?;
    Ok(ImportPlan {
        alias: alias.to_owned(),
        dir,
        metadata,
        rootfs,
    })
}

/// The error for an image path the caller cannot open: not theirs to read is `NotAuthorized`.
fn unreadable(path: &Path, e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::PermissionDenied {
        Error::NotAuthorized(format!("You cannot read {}: {e}", path.display()))
    } else {
        Error::InvalidArgument(format!("Cannot read {}: {e}", path.display()))
    }
}

async fn open_first(caller: &Caller, dir: &Path, names: &[&str], what: &str) -> Result<UploadFile, Error> {
    for name in names {
        let path = dir.join(name);
        match caller.open(&path).await {
            Ok(file) => {
                return UploadFile::new(file, *name)
                    .await
                    .map_err(|e| Error::InvalidArgument(e.to_string()));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(unreadable(&path, e)),
        }
    }
    Err(Error::NotFound(format!(
        "Missing {what} file in {}: expected one of {}",
        dir.display(),
        names.join(", ")
    )))
}

/// Uploads the image, then points the alias at it. An image that was already in the store is
/// reused; an image the alias pointed to before is removed once nothing names it. Cancelled or
/// failed, the import leaves the store as it was. Journaled (`host/journal.rs`): the image is
/// uploaded with an entry that the last step clears, so one a killed daemon left without its
/// alias is removed by the next one.
pub(crate) async fn import(daemon: &Daemon, reporter: &Reporter, plan: ImportPlan) -> Result<String, Failure> {
    let ImportPlan {
        alias,
        dir,
        metadata,
        rootfs,
    } = plan;
    reporter
        .info(&format!(
            "Uploading {} and {} from {}",
            metadata.name(),
            rootfs.name(),
            dir.display()
        ))
        .await;
    let total = metadata.len() + rootfs.len();
    let upload = upload_with_progress(&daemon.containers, reporter, metadata, rootfs, total).await?;
    let fingerprint = upload.fingerprint.clone();
    let short = short(&fingerprint).to_owned();
    // Before Incus has made the image: from its first moment on, its entry is this import's.
    let _hold = journal::hold(&journal::image_key(&fingerprint)).await;

    reporter.info("Unpacking the image").await;
    let outcome = tokio::select! {
        done = daemon.containers.incus.wait_operation(&upload.operation.id, INCUS_WAIT) => Some(done),
        () = reporter.cancelled() => None,
    };
    let created = match outcome {
        None => {
            let _ = daemon.containers.incus.cancel_operation(&upload.operation.id).await;
            if daemon
                .containers
                .incus
                .wait_operation(&upload.operation.id, INCUS_WAIT)
                .await
                .is_ok()
            {
                remove_quietly(&daemon.containers, &fingerprint).await;
            }
            return Err(Failure::Cancelled);
        }
        Some(Ok(_)) => true,
        // Incus refuses an image it has already; that image is what the alias should name.
        Some(Err(e)) => match daemon.containers.incus.get_image(&fingerprint).await {
            Ok(_) => {
                reporter
                    .info(&format!("The store has this image already ({short})"))
                    .await;
                false
            }
            Err(_) => return Err(e.into()),
        },
    };

    let pointed = async {
        point_alias(daemon, reporter, &alias, &fingerprint).await?;
        // The last step (for an image the store had already, too: an import a killed daemon left
        // unfinished may have made it).
        recovery::clear_image_entry(daemon, &fingerprint).await?;
        Ok::<(), Failure>(())
    };
    match pointed.await {
        Ok(()) => Ok(format!("Image '{alias}' imported ({short})")),
        Err(e) => {
            if created {
                remove_quietly(&daemon.containers, &fingerprint).await;
            }
            Err(e)
        }
    }
}

/// Streams the upload, turning the bytes sent into a progress bar; cancelling drops the request,
/// which Incus then discards.
async fn upload_with_progress(
    containers: &Containers,
    reporter: &Reporter,
    metadata: UploadFile,
    rootfs: UploadFile,
    total: u64,
) -> Result<ImageUpload, Failure> {
    let progress = reporter.progress_start("Uploading image", 100).await;
    let (sent_tx, mut sent) = tokio::sync::watch::channel(0u64);
    let entry = ConfigMap::from([(recovery::IMAGE_PENDING_KEY.to_owned(), Entry::new(Work::Import).value())]);
    let upload = containers
        .incus
        .import_image_with(metadata, rootfs, Some(sent_tx), &entry);
    tokio::pin!(upload);
    let mut reported = 0;
    let mut counting = true;
    let result = loop {
        tokio::select! {
            done = &mut upload => break done,
            () = reporter.cancelled() => {
                reporter.progress_done(&progress, false, "Cancelled").await;
                return Err(Failure::Cancelled);
            }
            changed = sent.changed(), if counting => {
                if changed.is_err() {
                    counting = false; // the upload finished sending; only its answer is left
                    continue;
                }
                let bytes = *sent.borrow_and_update();
                let percent = (bytes.saturating_mul(100) / total.max(1)) as i32;
                if percent > reported {
                    reported = percent;
                    reporter.progress_update(&progress, percent).await;
                    reporter
                        .progress_text(&progress, &format!("{} of {}", mib(bytes), mib(total)))
                        .await;
                }
            }
        }
    };
    match result {
        Ok(upload) => {
            reporter.progress_done(&progress, true, &mib(total)).await;
            Ok(upload)
        }
        Err(e) => {
            reporter.progress_done(&progress, false, "Upload failed").await;
            Err(e.into())
        }
    }
}

/// Makes `alias` name `fingerprint`, in one step when it named another image (so it never names
/// nothing), and removes that other image if no alias is left on it (journaled too: a daemon
/// killed between the two leaves an entry on the old image, and the next one removes it).
async fn point_alias(daemon: &Daemon, reporter: &Reporter, alias: &str, fingerprint: &str) -> Result<(), Failure> {
    let containers = &daemon.containers;
    match containers.incus.get_image_alias(alias).await {
        Ok(existing) if existing.target == fingerprint => Ok(()),
        Ok(existing) => {
            reporter
                .info(&format!(
                    "Replacing the image '{alias}' named ({})",
                    short(&existing.target)
                ))
                .await;
            let _hold = journal::hold(&journal::image_key(&existing.target)).await;
            let entry = ConfigMap::from([(
                recovery::IMAGE_PENDING_KEY.to_owned(),
                Entry::new(Work::Release).value(),
            )]);
            containers
                .incus
                .patch_image_properties(&existing.target, &entry)
                .await?;
            if let Err(e) = containers.incus.retarget_image_alias(alias, fingerprint).await {
                let _ = recovery::clear_image_entry(daemon, &existing.target).await;
                return Err(e.into());
            }
            // The alias names the new image: the import is done, whatever happens to the old
            // one (its entry stays if it cannot be removed now, so it is removed later).
            let old = &existing.target;
            let released = async {
                match containers.incus.get_image(old).await {
                    Ok(image) if image.aliases.is_empty() => {
                        let op = containers.incus.delete_image(old).await?;
                        run_incus_operation(&containers.incus, reporter, op).await?;
                        reporter.info(&format!("Removed the old image {}", short(old))).await;
                    }
                    Ok(_) => recovery::clear_image_entry(daemon, old).await?,
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e.into()),
                }
                Ok::<(), Failure>(())
            };
            if let Err(e) = released.await {
                log::warn!(
                    "image {old}: not removed after its alias moved (retried later): {}",
                    e.message()
                );
            }
            Ok(())
        }
        Err(e) if e.is_not_found() => {
            containers
                .incus
                .create_image_alias(alias, fingerprint, "Imported by Kapsule")
                .await?;
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

async fn remove_quietly(containers: &Containers, fingerprint: &str) {
    match containers.incus.delete_image(fingerprint).await {
        Ok(op) => {
            if let Err(e) = containers.incus.wait_operation(&op.id, INCUS_WAIT).await {
                log::warn!("could not remove image {fingerprint}: {e}");
            }
        }
        Err(e) => log::warn!("could not remove image {fingerprint}: {e}"),
    }
}

/// Which cached images a `RefreshImages` filter names: empty for all, `<remote>:<alias>`, or a
/// bare alias (from any server).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct RefreshFilter {
    pub server: Option<String>,
    pub alias: Option<String>,
}

impl RefreshFilter {
    pub(crate) fn parse(filter: &str, remotes: &Remotes) -> Result<RefreshFilter, Error> {
        if filter.is_empty() {
            return Ok(RefreshFilter {
                server: None,
                alias: None,
            });
        }
        let parsed = ImageRef::parse(filter).map_err(|e| e.for_image(filter))?;
        let server = match parsed.remote {
            Some("local") => {
                return Err(Error::InvalidArgument(format!(
                    "'{filter}': local images are not refreshed; name the remote they came from"
                )));
            }
            Some(remote) => Some(remotes.get(remote)?.url.clone()),
            None => None,
        };
        Ok(RefreshFilter {
            server,
            alias: Some(parsed.alias.to_owned()),
        })
    }

    /// The images that can be refreshed (pulled from a remote, by Kapsule or as Incus's cache
    /// of a create, and kept up to date by Incus) and that this filter names.
    pub(crate) fn select<'a>(&self, images: &'a [Image]) -> Vec<&'a Image> {
        images
            .iter()
            .filter(|i| i.auto_update)
            .filter(|i| {
                let Some(source) = &i.update_source else {
                    return false;
                };
                self.server.as_deref().is_none_or(|s| s == source_server(source))
                    && self.alias.as_deref().is_none_or(|a| a == source.alias)
            })
            .collect()
    }
}

/// A `RefreshImages` request that passed its checks: the client's filter, parsed against the
/// configured remotes, which the refresh then uses too.
#[derive(Debug)]
pub(crate) struct RefreshPlan {
    filter: String,
    parsed: RefreshFilter,
    remotes: Remotes,
}

/// Checks a `RefreshImages` filter (empty: everything) against the configured remotes.
pub(crate) async fn plan_refresh(daemon: &Daemon, filter: String) -> Result<RefreshPlan, Error> {
    let remotes = Remotes::read(&daemon.containers.settings.system_files()).await;
    let parsed = RefreshFilter::parse(&filter, &remotes)?;
    Ok(RefreshPlan {
        filter,
        parsed,
        remotes,
    })
}

/// Asks Incus to refresh each image `parsed` (the client's `filter`, checked against `remotes`
/// before the operation began) selects, one after the other; an image that fails does not stop
/// the others, but fails the operation.
pub(crate) async fn refresh(daemon: &Daemon, reporter: &Reporter, plan: RefreshPlan) -> Result<String, Failure> {
    let RefreshPlan {
        filter,
        parsed,
        remotes,
    } = plan;
    let images = daemon.containers.incus.list_images().await?;
    let selected = parsed.select(&images);
    if selected.is_empty() {
        if filter.is_empty() {
            reporter.warn("No auto-updating images pulled from a remote").await;
            return Ok("Nothing to refresh".to_owned());
        }
        return Err(Failure::Failed(format!("No pulled images match '{filter}'")));
    }
    reporter
        .info(&format!("Found {} image(s) to refresh", selected.len()))
        .await;
    let mut refreshed = 0;
    for image in &selected {
        let source = image.update_source.clone().unwrap_or_default();
        let label = source_label(&remotes, &source);
        let progress = reporter.progress_start(&format!("Refreshing {label}"), -1).await;
        forget_index(&daemon.containers.settings.incus_cache_dir(), &source.server).await;
        let result = async {
            let op = daemon.containers.incus.refresh_image(&image.fingerprint).await?;
            run_incus_operation(&daemon.containers.incus, reporter, op).await
        }
        .await;
        match result {
            Ok(done) => {
                refreshed += 1;
                let changed = done
                    .metadata
                    .as_ref()
                    .and_then(|m| m.get("refreshed"))
                    .and_then(serde_json::Value::as_bool);
                let text = match changed {
                    Some(false) => "already up to date".to_owned(),
                    _ => match pulled_from(
                        &daemon.containers.incus.list_images().await?,
                        &source.server,
                        &source.alias,
                    ) {
                        Some(new) => format!("updated: {} -> {}", short(&image.fingerprint), short(&new.fingerprint)),
                        None => "refreshed".to_owned(),
                    },
                };
                reporter.say(MessageKind::Info, &format!("{label}: {text}")).await;
                reporter.progress_done(&progress, true, &text).await;
            }
            Err(Failure::Cancelled) => {
                reporter.progress_done(&progress, false, "Cancelled").await;
                return Err(Failure::Cancelled);
            }
            Err(Failure::Failed(why)) => {
                reporter.progress_done(&progress, false, &why).await;
                reporter
                    .say(MessageKind::Error, &format!("Could not refresh {label}: {why}"))
                    .await;
            }
        }
    }
    let summary = format!("Refreshed {refreshed}/{} image(s)", selected.len());
    if refreshed == selected.len() {
        Ok(summary)
    } else {
        Err(Failure::Failed(summary))
    }
}

/// `<remote>:<alias>` for a pulled image, by the remote's name when a configured remote has
/// that server, else `<alias> from <server>`.
pub(crate) fn source_label(remotes: &Remotes, source: &ImageUpdateSource) -> String {
    match remotes.by_url(source_server(source)) {
        Some(remote) => format!("{}:{}", remote.name, source.alias),
        None => format!("{} from {}", source.alias, source.server),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::pull::cached;

    #[test]
    fn refresh_selects_pulled_auto_updating_images_the_filter_names() {
        let lxc = "https://images.linuxcontainers.org";
        let ubuntu = "https://cloud-images.ubuntu.com/releases";
        let mut pulled = cached("pulled", &format!("{lxc}/"));
        pulled.cached = false;
        let mut pinned = cached("pinned", lxc);
        pinned.auto_update = false;
        let imported = Image {
            fingerprint: "imported-fp".into(),
            auto_update: true,
            ..Default::default()
        };
        let images = vec![
            cached("debian/12", lxc),
            cached("24.04", ubuntu),
            pulled,
            pinned,
            imported,
        ];
        let remotes = Remotes::built_in();
        let names = |f: &str| -> Vec<String> {
            RefreshFilter::parse(f, &remotes)
                .unwrap()
                .select(&images)
                .iter()
                .map(|i| i.fingerprint.clone())
                .collect()
        };
        assert_eq!(names(""), ["debian/12-fp", "24.04-fp", "pulled-fp"]);
        assert_eq!(names("debian/12"), ["debian/12-fp"]);
        assert_eq!(names("images:debian/12"), ["debian/12-fp"]);
        assert_eq!(names("ubuntu:debian/12"), Vec::<String>::new());
        assert_eq!(names("ubuntu:24.04"), ["24.04-fp"]);
        assert_eq!(
            names("images:pulled"),
            ["pulled-fp"],
            "a trailing '/' on the server is the same server"
        );
        assert_eq!(names("pinned"), Vec::<String>::new());
        for bad in ["nowhere:x", "images:", "a b", "x\n", "local:x", "kapsule:x"] {
            assert!(
                matches!(RefreshFilter::parse(bad, &remotes), Err(Error::InvalidArgument(_))),
                "{bad:?}"
            );
        }
    }
}

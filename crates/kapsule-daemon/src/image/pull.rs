//! Pulling an image from a remote into the local store, with Incus's download progress, and
//! finding what was pulled from where.

use std::path::Path;

use kapsule_incus::models::{Image, ImageUpdateSource, InstanceSource};
use kapsule_incus::{Client, EventKind};

use crate::image::remotes::Remote;
use crate::operation::incus::run_incus_operation;
use crate::operation::{Failure, Reporter};

pub(crate) fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

pub(crate) fn short(fingerprint: &str) -> &str {
    fingerprint.get(..12).unwrap_or(fingerprint)
}

/// The server a pulled image came from, as a remote's URL is written (no trailing `/`).
pub(crate) fn source_server(source: &ImageUpdateSource) -> &str {
    source.server.trim_end_matches('/')
}

/// The newest image in `images` that was pulled from `server` under `alias` and that Incus
/// keeps current.
pub(crate) fn pulled_from<'a>(images: &'a [Image], server: &str, alias: &str) -> Option<&'a Image> {
    images
        .iter()
        .filter(|i| {
            i.update_source
                .as_ref()
                .is_some_and(|s| source_server(s) == server && s.alias == alias)
        })
        .max_by(|a, b| a.uploaded_at.cmp(&b.uploaded_at))
}

/// Pulls `alias` from `remote` into the local store, kept current by Incus (`auto_update`), and
/// returns the image. Incus's download progress (from its events stream) becomes a progress bar
/// on the operation: the percentage of the file being fetched, and Incus's text.
pub(crate) async fn pull(
    incus: &Client,
    incus_cache: &Path,
    reporter: &Reporter,
    remote: &Remote,
    alias: &str,
    certificate: Option<String>,
) -> Result<Image, Failure> {
    let label = format!("{}:{alias}", remote.name);
    reporter.info(&format!("Pulling {label} from {}", remote.url)).await;
    // Subscribed before the pull starts, so no update is missed. Without events, the pull
    // still works; only the bar stays still.
    let mut events = match incus.events(&[EventKind::Operation]).await {
        Ok(events) => Some(events),
        Err(e) => {
            log::warn!("no download progress for {label}: {e}");
            None
        }
    };
    // What the server has now, not what Incus saw of it up to an hour ago: an alias published
    // since would not be found. (Pulls are rare and large; the index is small beside them.)
    forget_index(incus_cache, &remote.url).await;
    let source = InstanceSource::simplestreams(&remote.url, alias, certificate);
    let op = incus.pull_image(&source, true).await?;
    let progress = reporter.progress_start(&format!("Downloading {label}"), 100).await;
    let mut shown = String::new();
    let wait = run_incus_operation(incus, reporter, op.clone());
    tokio::pin!(wait);
    let done = loop {
        tokio::select! {
            done = &mut wait => break done,
            event = async { events.as_mut()?.next().await }, if events.is_some() => {
                let Some(Ok(event)) = event else {
                    events = None; // the stream ended or broke: wait without it
                    continue;
                };
                let Some(text) = download_progress(&event, &op.id) else { continue };
                if text != shown {
                    if let Some(percent) = percent_of(&text) {
                        reporter.progress_update(&progress, percent).await;
                    }
                    reporter.progress_text(&progress, &text).await;
                    shown = text;
                }
            }
        }
    };
    let done = match done {
        Ok(done) => done,
        Err(failure) => {
            reporter.progress_done(&progress, false, failure.message()).await;
            return Err(match failure {
                Failure::Failed(why) => Failure::Failed(format!("Cannot pull {label}: {why}")),
                cancelled => cancelled,
            });
        }
    };
    let fingerprint = done
        .metadata_str("fingerprint")
        .ok_or_else(|| Failure::Failed(format!("Incus pulled {label} but did not say which image it is")))?
        .to_owned();
    let image = incus.get_image(&fingerprint).await?;
    reporter
        .progress_done(
            &progress,
            true,
            &format!("{} ({})", mib(image.size), short(&fingerprint)),
        )
        .await;
    Ok(image)
}

/// The `download_progress` text of an event about operation `id`.
fn download_progress(event: &kapsule_incus::models::Event, id: &str) -> Option<String> {
    let op = event.operation()?;
    if op.id != id {
        return None;
    }
    op.metadata?.get("download_progress")?.as_str().map(str::to_owned)
}

/// The percentage in Incus's progress text (`rootfs: 45% (12.3MB/s)`).
fn percent_of(text: &str) -> Option<i32> {
    let number = text.split('%').next()?.rsplit([' ', ':']).next()?;
    number.parse::<i32>().ok().filter(|p| (0..=100).contains(p))
}

/// Makes Incus forget the index it cached of image server `server` (it keeps one per server
/// for an hour, so a pull or a refresh right after a publication would see nothing new). Only this
/// server's cache directory is removed; Incus fetches the index again on its next use.
pub(crate) async fn forget_index(incus_cache: &Path, server: &str) {
    use sha2::Digest;
    let hash: String = sha2::Sha256::digest(server.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let dir = incus_cache.join(hash);
    match tokio::fs::remove_dir_all(&dir).await {
        Ok(()) => log::debug!("dropped Incus's index cache of {server} ({})", dir.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => log::warn!("cannot drop Incus's index cache of {server} ({}): {e}", dir.display()),
    }
}

/// An image pulled from `server` under `alias` and kept current, as Incus lists one.
#[cfg(test)]
pub(crate) fn cached(alias: &str, server: &str) -> Image {
    Image {
        fingerprint: format!("{alias}-fp"),
        auto_update: true,
        cached: true,
        update_source: Some(ImageUpdateSource {
            alias: alias.into(),
            server: server.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_pull_of_an_alias_is_used() {
        let lxc = "https://images.linuxcontainers.org";
        let mut old = cached("debian/12", lxc);
        old.fingerprint = "old".into();
        old.uploaded_at = "2026-11-01T10:00:00Z".into();
        let mut new = cached("debian/12", lxc);
        new.fingerprint = "new".into();
        new.uploaded_at = "2026-11-20T10:00:00Z".into();
        let images = vec![new, old, cached("debian/13", lxc)];
        assert_eq!(pulled_from(&images, lxc, "debian/12").unwrap().fingerprint, "new");
        assert!(pulled_from(&images, "https://elsewhere", "debian/12").is_none());
        assert!(pulled_from(&images, lxc, "arch").is_none());
    }

    #[test]
    fn incus_progress_texts_give_percentages() {
        assert_eq!(percent_of("rootfs: 45% (12.30MB/s)"), Some(45));
        assert_eq!(percent_of("metadata: 100% (1.16GB/s)"), Some(100));
        assert_eq!(percent_of("rootfs delta: 7% (1MB/s)"), Some(7));
        assert_eq!(percent_of("12% (3MB/s)"), Some(12));
        assert_eq!(percent_of("rootfs: 45.00MB (12.30MB/s)"), None);
        assert_eq!(percent_of("rootfs: 400% (x)"), None);
    }
}

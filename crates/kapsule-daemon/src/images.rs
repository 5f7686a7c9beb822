//! Local images: finding one by alias or fingerprint, deleting it.

use kapsule_dbus::Error;
use kapsule_incus::models::Image;

use crate::State;
use crate::containers::run_incus_operation;
use crate::operation::{Failure, Reporter};

/// The local image named by `identifier`: an alias, or a full (64 hex digits) fingerprint.
pub(crate) async fn resolve(state: &State, identifier: &str) -> Result<Image, Error> {
    if identifier.is_empty() || identifier.len() > 256 || identifier.contains(|c: char| c.is_control() || c == '/') {
        return Err(Error::InvalidArgument(format!(
            "Invalid image name '{}'",
            identifier.escape_debug()
        )));
    }
    let not_found = || Error::NotFound(format!("No local image with alias or fingerprint '{identifier}'"));
    let is_fingerprint = identifier.len() == 64 && identifier.bytes().all(|b| b.is_ascii_hexdigit());
    let fingerprint = if is_fingerprint {
        identifier.to_ascii_lowercase()
    } else {
        match state.incus.get_image_alias(identifier).await {
            Ok(alias) => alias.target,
            Err(e) if e.is_not_found() => return Err(not_found()),
            Err(e) => return Err(crate::incus_error(e)),
        }
    };
    match state.incus.get_image(&fingerprint).await {
        Ok(image) => Ok(image),
        Err(e) if e.is_not_found() => Err(not_found()),
        Err(e) => Err(crate::incus_error(e)),
    }
}

/// Deletes the image (and with it its aliases). Containers made from it keep working: each has
/// its own copy of the root filesystem.
pub(crate) async fn delete(state: &State, reporter: &Reporter, image: Image) -> Result<String, Failure> {
    let short = image.fingerprint.get(..12).unwrap_or(&image.fingerprint);
    reporter.info(&format!("Deleting image {short}")).await;
    let op = state.incus.delete_image(&image.fingerprint).await?;
    run_incus_operation(state, reporter, op).await?;
    Ok(format!("Image {short} deleted"))
}

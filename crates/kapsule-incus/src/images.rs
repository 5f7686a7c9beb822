//! Images: list, get, aliases, import from a metadata + rootfs pair, refresh, delete.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt, stream};
use http::Method;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::json;
use tokio_util::io::ReaderStream;

use crate::client::{Body, Client, decode_envelope, enc, expect_operation};
use crate::error::{Error, Result};
use crate::models::{Image, ImageAlias, Operation};

/// An upload may be large and the disk slow; the request ends when Incus has the bytes, and the
/// unpacking is then an operation with its own wait.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(30 * 60);

impl Client {
    /// Every image in the local store, with aliases and properties.
    pub async fn list_images(&self) -> Result<Vec<Image>> {
        self.get_json("/1.0/images?recursion=1").await
    }

    /// One image, by full fingerprint.
    pub async fn get_image(&self, fingerprint: &str) -> Result<Image> {
        self.get_json(&format!("/1.0/images/{}", enc(fingerprint))).await
    }

    /// One alias, with the fingerprint it points to.
    pub async fn get_image_alias(&self, alias: &str) -> Result<ImageAlias> {
        self.get_json(&format!("/1.0/images/aliases/{}", enc(alias))).await
    }

    /// Points a new alias at an image; [`Error::AlreadyExists`] if the alias is taken.
    pub async fn create_image_alias(&self, alias: &str, fingerprint: &str, description: &str) -> Result<()> {
        let body = json!({ "name": alias, "target": fingerprint, "description": description, "type": "container" });
        self.call(Method::POST, "/1.0/images/aliases", Some(&body), None)
            .await?;
        Ok(())
    }

    /// Moves an existing alias to another image in one step, so there is never a moment when the
    /// alias points nowhere.
    pub async fn retarget_image_alias(&self, alias: &str, fingerprint: &str) -> Result<()> {
        let body = json!({ "target": fingerprint });
        self.call(
            Method::PATCH,
            &format!("/1.0/images/aliases/{}", enc(alias)),
            Some(&body),
            None,
        )
        .await?;
        Ok(())
    }

    /// Removes an alias (the image stays).
    pub async fn delete_image_alias(&self, alias: &str) -> Result<()> {
        self.call(
            Method::DELETE,
            &format!("/1.0/images/aliases/{}", enc(alias)),
            None,
            None,
        )
        .await?;
        Ok(())
    }

    /// Starts deleting an image.
    pub async fn delete_image(&self, fingerprint: &str) -> Result<Operation> {
        let path = format!("/1.0/images/{}", enc(fingerprint));
        self.start_operation(Method::DELETE, &path, None).await
    }

    /// Starts refreshing an auto-updating image from its source.
    pub async fn refresh_image(&self, fingerprint: &str) -> Result<Operation> {
        let path = format!("/1.0/images/{}/refresh", enc(fingerprint));
        self.start_operation(Method::POST, &path, Some(&json!({}))).await
    }

    /// Uploads a split image (metadata tarball + rootfs tarball or squashfs). The files are
    /// streamed, never read whole into memory. When the returned operation succeeds its
    /// metadata holds the new image's `fingerprint`; give it an alias with
    /// [`Client::create_image_alias`].
    pub async fn import_image(&self, metadata: &Path, rootfs: &Path) -> Result<Operation> {
        let boundary = format!("kapsule-{:016x}", boundary_seed());
        let (meta_stream, meta_len) = open_stream(metadata).await?;
        let (root_stream, root_len) = open_stream(rootfs).await?;
        let part_head = |name: &str, file: &Path| {
            let filename = file
                .file_name()
                .map(|f| f.to_string_lossy().replace('"', ""))
                .unwrap_or_default();
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            )
        };
        let head1 = Bytes::from(part_head("metadata", metadata));
        let head2 = Bytes::from(format!("\r\n{}", part_head("rootfs", rootfs)));
        let tail = Bytes::from(format!("\r\n--{boundary}--\r\n"));
        let length = head1.len() as u64 + meta_len + head2.len() as u64 + root_len + tail.len() as u64;

        let chunks = stream::iter([Ok(head1)])
            .chain(meta_stream)
            .chain(stream::iter([Ok(head2)]))
            .chain(root_stream)
            .chain(stream::iter([Ok(tail)]));
        let body: Body = BodyExt::boxed(StreamBody::new(chunks.map_ok(Frame::data)));
        let headers = [
            ("content-type", format!("multipart/form-data; boundary={boundary}")),
            ("content-length", length.to_string()),
            ("x-incus-public", "false".to_owned()),
        ];
        let path = "/1.0/images";
        let raw = self
            .send(Method::POST, path, &headers, body, Some(UPLOAD_TIMEOUT))
            .await?;
        let (kind, metadata) = decode_envelope("POST", path, &raw)?;
        expect_operation(&Method::POST, path, &kind, metadata)
    }
}

type FileStream = ReaderStream<tokio::fs::File>;

async fn open_stream(path: &Path) -> Result<(FileStream, u64)> {
    let local = |source| Error::LocalFile {
        path: path.to_owned(),
        source,
    };
    let file = tokio::fs::File::open(path).await.map_err(local)?;
    let meta = file.metadata().await.map_err(local)?;
    if !meta.is_file() {
        return Err(local(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        )));
    }
    // 256 KiB reads: few syscalls, bounded memory.
    Ok((ReaderStream::with_capacity(file, 256 * 1024), meta.len()))
}

/// Distinct per upload; the boundary only has to not occur in the data, which a random-looking
/// 64-bit value next to a fixed prefix makes vanishingly unlikely.
fn boundary_seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

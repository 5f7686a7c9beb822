//! Images: list, get, aliases, import from a metadata + rootfs pair, refresh, delete.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt, stream};
use http::Method;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use tokio_util::io::ReaderStream;

use crate::client::{Body, Client, decode_envelope, enc, expect_operation};
use crate::error::{Error, Result};
use crate::models::{ConfigMap, Image, ImageAlias, InstanceSource, Operation};

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

    /// Sets (adds or replaces) image properties, leaving the others as they are; an empty value
    /// removes that property (PATCH: Incus merges).
    pub async fn patch_image_properties(&self, fingerprint: &str, properties: &ConfigMap) -> Result<()> {
        let path = format!("/1.0/images/{}", enc(fingerprint));
        self.call_and_settle(Method::PATCH, &path, &json!({ "properties": properties }))
            .await
    }

    /// Starts deleting an image.
    pub async fn delete_image(&self, fingerprint: &str) -> Result<Operation> {
        let path = format!("/1.0/images/{}", enc(fingerprint));
        self.start_operation(Method::DELETE, &path, None).await
    }

    /// Starts pulling an image from a remote server (`source`: `type` image, `mode` pull, the
    /// server, protocol, alias and a certificate to pin). The operation's metadata carries
    /// `download_progress` while it runs and the image's `fingerprint` when done. With
    /// `auto_update`, Incus keeps it current and `refresh_image` works on it.
    pub async fn pull_image(&self, source: &InstanceSource, auto_update: bool) -> Result<Operation> {
        let body = json!({ "source": source, "auto_update": auto_update });
        self.start_operation(Method::POST, "/1.0/images", Some(&body)).await
    }

    /// Starts refreshing an auto-updating image from its source.
    pub async fn refresh_image(&self, fingerprint: &str) -> Result<Operation> {
        let path = format!("/1.0/images/{}/refresh", enc(fingerprint));
        self.start_operation(Method::POST, &path, Some(&json!({}))).await
    }

    /// Uploads a split image (metadata tarball + rootfs tarball or squashfs) from files the
    /// caller opened (so whoever may read them decides, not this client). The files are streamed,
    /// never read whole into memory, and hashed on the way: the returned fingerprint is the one
    /// Incus gives the image (sha256 over metadata then rootfs). `sent`, if given, follows the
    /// number of file bytes sent so far.
    ///
    /// When the returned operation succeeds the image exists; give it an alias with
    /// [`Client::create_image_alias`]. If an image with the same fingerprint existed already,
    /// the operation fails and that image is left as it was.
    pub async fn import_image(
        &self,
        metadata: UploadFile,
        rootfs: UploadFile,
        sent: Option<tokio::sync::watch::Sender<u64>>,
    ) -> Result<ImageUpload> {
        self.import_image_with(metadata, rootfs, sent, &ConfigMap::new()).await
    }

    /// [`Client::import_image`], the image made with these `properties` besides its metadata's
    /// own (a journal entry, for one: they are there from the moment the image exists).
    pub async fn import_image_with(
        &self,
        metadata: UploadFile,
        rootfs: UploadFile,
        sent: Option<tokio::sync::watch::Sender<u64>>,
        properties: &ConfigMap,
    ) -> Result<ImageUpload> {
        let boundary = format!("kapsule-{:016x}", boundary_seed());
        let part_head = |name: &str, file: &UploadFile| {
            let filename = file.name.replace(['"', '\r', '\n'], "");
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            )
        };
        let head1 = Bytes::from(part_head("metadata", &metadata));
        let head2 = Bytes::from(format!("\r\n{}", part_head("rootfs", &rootfs)));
        let tail = Bytes::from(format!("\r\n--{boundary}--\r\n"));
        let length = head1.len() as u64 + metadata.len + head2.len() as u64 + rootfs.len + tail.len() as u64;

        // Both files pass through the same tap, in order: the hash and the count cover
        // metadata then rootfs, as Incus's own fingerprint does.
        let hasher = Arc::new(Mutex::new(Sha256::new()));
        let tap = {
            let hasher = hasher.clone();
            let total = Arc::new(AtomicU64::new(0));
            move |chunk: Bytes| {
                hasher.lock().expect("hasher lock").update(&chunk);
                let now = total.fetch_add(chunk.len() as u64, Ordering::Relaxed) + chunk.len() as u64;
                if let Some(sent) = &sent {
                    sent.send_replace(now);
                }
                chunk
            }
        };
        let chunks = stream::iter([Ok(head1)])
            .chain(metadata.stream().map_ok(tap.clone()))
            .chain(stream::iter([Ok(head2)]))
            .chain(rootfs.stream().map_ok(tap))
            .chain(stream::iter([Ok(tail)]));
        let body: Body = BodyExt::boxed(StreamBody::new(chunks.map_ok(Frame::data)));
        // Incus reads extra properties as a query string in this header.
        let properties = properties
            .iter()
            .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
            .collect::<Vec<_>>()
            .join("&");
        let mut headers = vec![
            ("content-type", format!("multipart/form-data; boundary={boundary}")),
            ("content-length", length.to_string()),
            ("x-incus-public", "false".to_owned()),
        ];
        if !properties.is_empty() {
            headers.push(("x-incus-properties", properties));
        }
        let path = "/1.0/images";
        let raw = self
            .send(Method::POST, path, &headers, body, Some(UPLOAD_TIMEOUT))
            .await?;
        let (kind, op_metadata) = decode_envelope("POST", path, &raw)?;
        let operation = expect_operation(&Method::POST, path, &kind, op_metadata)?;
        let digest = std::mem::take(&mut *hasher.lock().expect("hasher lock")).finalize();
        let fingerprint = digest.iter().map(|b| format!("{b:02x}")).collect();
        Ok(ImageUpload { operation, fingerprint })
    }
}

/// One file of a split image, opened and ready to stream.
#[derive(Debug)]
pub struct UploadFile {
    file: tokio::fs::File,
    len: u64,
    name: String,
}

impl UploadFile {
    /// Wraps a file someone opened; it must be a regular file.
    pub async fn new(file: std::fs::File, name: impl Into<String>) -> Result<UploadFile> {
        let name = name.into();
        let local = |source| Error::LocalFile {
            path: PathBuf::from(&name),
            source,
        };
        let meta = file.metadata().map_err(local)?;
        if !meta.is_file() {
            return Err(local(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a regular file",
            )));
        }
        Ok(UploadFile {
            file: tokio::fs::File::from_std(file),
            len: meta.len(),
            name,
        })
    }

    /// Opens `path` with this process's own rights.
    pub async fn open(path: &Path) -> Result<UploadFile> {
        let file = std::fs::File::open(path).map_err(|source| Error::LocalFile {
            path: path.to_owned(),
            source,
        })?;
        let name = path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        UploadFile::new(file, name).await
    }

    /// The file name sent to Incus.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its size in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for an empty file.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn stream(self) -> ReaderStream<tokio::io::Take<tokio::fs::File>> {
        // Exactly the announced length, even if the file grows meanwhile; 256 KiB reads: few
        // system calls, bounded memory.
        ReaderStream::with_capacity(self.file.take(self.len), 256 * 1024)
    }
}

/// A started upload: the Incus operation that unpacks it and the fingerprint the image will have.
#[derive(Debug)]
pub struct ImageUpload {
    pub operation: Operation,
    pub fingerprint: String,
}

/// Distinct per upload; the boundary only has to not occur in the data, which a random-looking
/// 64-bit value next to a fixed prefix makes vanishingly unlikely.
fn boundary_seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

//! The instance files API: push files, directories and symlinks with owner and mode; read files;
//! list directories.
//!
//! Incus (6.0) *replaces* whatever is at the path of a push: a directory pushed where the image
//! has a file turns that file into an empty directory. [`Client::ensure_directory`] looks first.

use bytes::Bytes;
use http::Method;

use crate::client::{Client, decode_envelope, empty, enc, full};
use crate::error::{Error, Result};

/// Owner and mode of a file created in an instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileMeta {
    pub uid: u32,
    pub gid: u32,
    /// Permission bits, e.g. `0o644`.
    pub mode: u32,
}

impl FileMeta {
    /// Owned by `uid:gid` with `mode`.
    pub fn new(uid: u32, gid: u32, mode: u32) -> Self {
        FileMeta { uid, gid, mode }
    }
}

/// A file read from an instance, with the owner and mode Incus reported.
#[derive(Clone, Debug)]
pub struct FileContents {
    pub data: Bytes,
    pub meta: FileMeta,
}

/// What a GET of a path says.
struct Entry {
    /// `file`, `directory` or `symlink`.
    kind: String,
    meta: FileMeta,
    body: Bytes,
}

/// A directory listing: the names are the metadata of a sync answer.
#[derive(serde::Deserialize)]
struct Envelope {
    metadata: Vec<String>,
}

impl Client {
    fn files_path(name: &str, path: &str) -> String {
        format!("/1.0/instances/{}/files?path={}", enc(name), enc(path))
    }

    async fn push(&self, name: &str, path: &str, kind: &str, meta: FileMeta, body: Bytes) -> Result<()> {
        let url = Self::files_path(name, path);
        let headers = [
            ("x-incus-type", kind.to_owned()),
            ("x-incus-uid", meta.uid.to_string()),
            ("x-incus-gid", meta.gid.to_string()),
            ("x-incus-mode", format!("{:04o}", meta.mode)),
            ("x-incus-write", "overwrite".to_owned()),
            ("content-type", "application/octet-stream".to_owned()),
        ];
        let raw = self.send(Method::POST, &url, &headers, full(body), None).await?;
        decode_envelope("POST", &url, &raw)?;
        Ok(())
    }

    /// Writes a regular file (replacing its contents if it exists). The parent must exist.
    pub async fn push_file(&self, name: &str, path: &str, data: impl Into<Bytes>, meta: FileMeta) -> Result<()> {
        self.push(name, path, "file", meta, data.into()).await
    }

    /// Creates a directory. The parent must exist. A directory already there gets `meta`; a file
    /// or symlink already there is replaced (use [`Client::ensure_directory`] to keep it).
    pub async fn create_directory(&self, name: &str, path: &str, meta: FileMeta) -> Result<()> {
        self.push(name, path, "directory", meta, Bytes::new()).await
    }

    /// Creates a symlink at `path` pointing to `target`.
    pub async fn create_symlink(&self, name: &str, path: &str, target: &str, meta: FileMeta) -> Result<()> {
        self.push(name, path, "symlink", meta, Bytes::copy_from_slice(target.as_bytes()))
            .await
    }

    /// Creates a directory unless one is there already, which is left exactly as it is; anything
    /// else at `path` is an error and stays. The parent must exist. True when it was created.
    pub async fn ensure_directory(&self, name: &str, path: &str, meta: FileMeta) -> Result<bool> {
        match self.get_path(name, path).await {
            Ok(entry) if entry.kind == "directory" => Ok(false),
            Ok(entry) => Err(Error::AlreadyExists {
                method: "POST",
                path: Self::files_path(name, path),
                message: format!("{path} exists and is a {}, not a directory", entry.kind),
            }),
            Err(e) if e.is_not_found() => {
                self.create_directory(name, path, meta).await?;
                Ok(true)
            }
            Err(e) => Err(e),
        }
    }

    /// Reads a regular file. A directory is an error, not a listing.
    pub async fn read_file(&self, name: &str, path: &str) -> Result<FileContents> {
        let entry = self.get_path(name, path).await?;
        if entry.kind == "directory" {
            return Err(Error::Api {
                method: "GET",
                path: Self::files_path(name, path),
                status: 400,
                message: format!("{path} is a directory"),
            });
        }
        Ok(FileContents {
            data: entry.body,
            meta: entry.meta,
        })
    }

    /// True when `path` is a symlink (false when it is anything else or nothing).
    pub async fn is_symlink(&self, name: &str, path: &str) -> Result<bool> {
        match self.get_path(name, path).await {
            Ok(entry) => Ok(entry.kind == "symlink"),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The names in a directory (no `.` or `..`), in Incus's order. A file is an error.
    pub async fn list_directory(&self, name: &str, path: &str) -> Result<Vec<String>> {
        let entry = self.get_path(name, path).await?;
        let url = Self::files_path(name, path);
        if entry.kind != "directory" {
            return Err(Error::Api {
                method: "GET",
                path: url,
                status: 400,
                message: format!("{path} is not a directory"),
            });
        }
        let listing: Envelope = serde_json::from_slice(&entry.body).map_err(|e| Error::Protocol {
            what: format!("GET {url}"),
            reason: format!("not a directory listing: {e}"),
        })?;
        Ok(listing.metadata)
    }

    /// GET of a path: its type, owner and mode from the headers, and the raw body (the file, or
    /// the JSON listing of a directory).
    async fn get_path(&self, name: &str, path: &str) -> Result<Entry> {
        let url = Self::files_path(name, path);
        let raw = self.send(Method::GET, &url, &[], empty(), None).await?;
        if !raw.status.is_success() {
            decode_envelope("GET", &url, &raw)?;
        }
        let header = |key: &str| {
            raw.headers
                .get(key)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        Ok(Entry {
            kind: header("x-incus-type"),
            meta: FileMeta {
                uid: header("x-incus-uid").parse().unwrap_or(0),
                gid: header("x-incus-gid").parse().unwrap_or(0),
                mode: u32::from_str_radix(&header("x-incus-mode"), 8).unwrap_or(0),
            },
            body: raw.body,
        })
    }

    /// Deletes a file, symlink or empty directory.
    pub async fn delete_file(&self, name: &str, path: &str) -> Result<()> {
        self.call(Method::DELETE, &Self::files_path(name, path), None, None)
            .await?;
        Ok(())
    }
}

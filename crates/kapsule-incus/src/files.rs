//! The instance files API: push files, directories and symlinks with owner and mode; read files.

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

    /// Creates a directory. The parent must exist.
    pub async fn create_directory(&self, name: &str, path: &str, meta: FileMeta) -> Result<()> {
        self.push(name, path, "directory", meta, Bytes::new()).await
    }

    /// Creates a symlink at `path` pointing to `target`.
    pub async fn create_symlink(&self, name: &str, path: &str, target: &str, meta: FileMeta) -> Result<()> {
        self.push(name, path, "symlink", meta, Bytes::copy_from_slice(target.as_bytes()))
            .await
    }

    /// Reads a regular file. A directory is an error, not a listing.
    pub async fn read_file(&self, name: &str, path: &str) -> Result<FileContents> {
        let url = Self::files_path(name, path);
        let raw = self.send(Method::GET, &url, &[], empty(), None).await?;
        let header = |key: &str| {
            raw.headers
                .get(key)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        if !raw.status.is_success() {
            decode_envelope("GET", &url, &raw)?;
        }
        if header("x-incus-type") == "directory" {
            return Err(Error::Api {
                method: "GET",
                path: url,
                status: 400,
                message: format!("{path} is a directory"),
            });
        }
        let meta = FileMeta {
            uid: header("x-incus-uid").parse().unwrap_or(0),
            gid: header("x-incus-gid").parse().unwrap_or(0),
            mode: u32::from_str_radix(&header("x-incus-mode"), 8).unwrap_or(0),
        };
        Ok(FileContents { data: raw.body, meta })
    }

    /// Deletes a file, symlink or empty directory.
    pub async fn delete_file(&self, name: &str, path: &str) -> Result<()> {
        self.call(Method::DELETE, &Self::files_path(name, path), None, None)
            .await?;
        Ok(())
    }
}

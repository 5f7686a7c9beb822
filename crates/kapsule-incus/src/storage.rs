//! Storage pools.

use http::Method;

use crate::client::{Client, to_json};
use crate::error::Result;
use crate::models::{StoragePool, StoragePoolsPost};

impl Client {
    /// Every storage pool.
    pub async fn list_storage_pools(&self) -> Result<Vec<StoragePool>> {
        self.get_json("/1.0/storage-pools?recursion=1").await
    }

    /// One storage pool.
    pub async fn get_storage_pool(&self, name: &str) -> Result<StoragePool> {
        self.get_json(&format!("/1.0/storage-pools/{}", crate::client::enc(name)))
            .await
    }

    /// Creates a storage pool; [`crate::Error::AlreadyExists`] if one has that name.
    pub async fn create_storage_pool(&self, pool: &StoragePoolsPost) -> Result<()> {
        let body = to_json("POST /1.0/storage-pools", pool)?;
        self.call_and_settle(Method::POST, "/1.0/storage-pools", &body).await
    }
}

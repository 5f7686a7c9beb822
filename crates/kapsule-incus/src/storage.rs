//! Storage pools.

use http::Method;

use crate::client::Client;
use crate::error::{Error, Result};
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

    /// Creates a storage pool; [`Error::AlreadyExists`] if one has that name.
    pub async fn create_storage_pool(&self, pool: &StoragePoolsPost) -> Result<()> {
        let body = serde_json::to_value(pool).map_err(|e| Error::Protocol {
            what: "POST /1.0/storage-pools".into(),
            reason: e.to_string(),
        })?;
        self.call_and_settle(Method::POST, "/1.0/storage-pools", &body).await
    }
}

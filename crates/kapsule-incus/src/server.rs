//! The server itself: `GET /1.0`.

use crate::client::Client;
use crate::error::Result;
use crate::models::Server;

impl Client {
    /// What the server is and which API extensions it has.
    pub async fn server(&self) -> Result<Server> {
        self.get_json("/1.0").await
    }

    /// How many GPUs Incus can hand to containers (`GET /1.0/resources`): a `gpu` device on a
    /// host where this is 0 makes the container fail to start.
    pub async fn gpu_count(&self) -> Result<u64> {
        let resources: serde_json::Value = self.get_json("/1.0/resources").await?;
        Ok(resources["gpu"]["total"].as_u64().unwrap_or(0))
    }
}

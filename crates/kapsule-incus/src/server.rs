//! The server itself: `GET /1.0`, whether it is ready, its resources.

use crate::client::Client;
use crate::error::Result;
use crate::models::Server;

impl Client {
    /// What the server is and which API extensions it has.
    pub async fn server(&self) -> Result<Server> {
        self.get_json("/1.0").await
    }

    /// `Ok` once the server has finished starting (`GET /internal/ready`, what `incus admin
    /// waitready` asks): storage pools loaded, instances restarted. A socket-activated incusd
    /// is started by this very request.
    pub async fn ready(&self) -> Result<()> {
        self.get_json::<serde_json::Value>("/internal/ready").await.map(drop)
    }

    /// How many GPUs Incus can hand to containers (`GET /1.0/resources`): a `gpu` device on a
    /// host where this is 0 makes the container fail to start.
    pub async fn gpu_count(&self) -> Result<u64> {
        let resources: serde_json::Value = self.get_json("/1.0/resources").await?;
        Ok(resources["gpu"]["total"].as_u64().unwrap_or(0))
    }
}

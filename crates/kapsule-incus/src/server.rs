//! The server itself: `GET /1.0`.

use crate::client::Client;
use crate::error::Result;
use crate::models::Server;

impl Client {
    /// What the server is and which API extensions it has.
    pub async fn server(&self) -> Result<Server> {
        self.get_json("/1.0").await
    }
}

//! The events stream (`/1.0/events`), a websocket over the Unix socket.

use futures_util::StreamExt;
use tokio::net::UnixStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{Client, error_chain};
use crate::error::{Error, Result};
use crate::models::Event;

/// Which kinds of events to receive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Operation,
    Lifecycle,
    Logging,
}

impl EventKind {
    fn as_str(self) -> &'static str {
        match self {
            EventKind::Operation => "operation",
            EventKind::Lifecycle => "lifecycle",
            EventKind::Logging => "logging",
        }
    }
}

/// A subscription to Incus events. Subscribe before starting the work you want to follow, so no
/// event is missed. Incus disconnects listeners that read too slowly: keep reading.
#[derive(Debug)]
pub struct EventStream {
    socket: WebSocketStream<UnixStream>,
}

impl Client {
    /// Subscribes to the events of the given kinds.
    pub async fn events(&self, kinds: &[EventKind]) -> Result<EventStream> {
        let types = kinds.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(",");
        let stream = UnixStream::connect(self.socket())
            .await
            .map_err(|e| self.unavailable(e))?;
        // The host part is not used on a Unix socket, but the handshake needs one.
        let url = format!("ws://incus/1.0/events?type={types}");
        let (socket, _) = tokio_tungstenite::client_async(url, stream)
            .await
            .map_err(|e| Error::Protocol {
                what: "GET /1.0/events".into(),
                reason: format!("websocket handshake failed: {}", error_chain(&e)),
            })?;
        Ok(EventStream { socket })
    }
}

impl EventStream {
    /// The next event; `None` when Incus closed the stream.
    pub async fn next(&mut self) -> Option<Result<Event>> {
        loop {
            let message = match self.socket.next().await? {
                Ok(message) => message,
                Err(e) => {
                    return Some(Err(Error::Protocol {
                        what: "events".into(),
                        reason: error_chain(&e),
                    }));
                }
            };
            let text = match message {
                Message::Text(text) => text.as_bytes().to_vec(),
                Message::Binary(data) => data.to_vec(),
                Message::Close(_) => return None,
                // Pings are answered by the library while reading.
                _ => continue,
            };
            return Some(serde_json::from_slice(&text).map_err(|e| Error::Protocol {
                what: "events".into(),
                reason: format!("bad event: {e}"),
            }));
        }
    }
}

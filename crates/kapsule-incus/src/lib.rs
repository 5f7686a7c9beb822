//! A typed, async client for the Incus REST API over its Unix socket.
//!
//! Only what Kapsule uses is modelled: server info, instances and their state, config and device
//! PATCHes, the files API, non-interactive exec, operations, images, storage pools and the events
//! stream. Every failure is an [`Error`] that keeps the request, the HTTP status and Incus's own
//! message; a missing or refusing socket is [`Error::Unavailable`], never a panic or a hang.
//!
//! ```no_run
//! # async fn demo() -> kapsule_incus::Result<()> {
//! let incus = kapsule_incus::Client::from_env();
//! for instance in incus.list_instances().await? {
//!     println!("{} {}", instance.name, instance.status);
//! }
//! # Ok(()) }
//! ```

mod client;
mod error;
mod events;
mod exec;
/// A fake Incus for tests.
#[cfg(feature = "fake")]
pub mod fake;
mod files;
mod images;
mod instances;
pub mod models;
mod operations;
mod server;
mod snapshots;
mod storage;

#[cfg(fuzzing)]
#[doc(hidden)]
pub use client::decode_answer_for_fuzzing;
pub use client::{Client, DEFAULT_SOCKET, DEFAULT_TIMEOUT};
pub use error::{Error, Result};
pub use events::{EventKind, EventStream};
pub use exec::{ExecOutput, ExecRequest};
pub use files::{FileContents, FileMeta};
pub use images::{ImageUpload, UploadFile};

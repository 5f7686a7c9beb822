//! Typed errors of the Incus client: what failed, on what, with Incus's own message.

use std::path::PathBuf;
use std::time::Duration;

/// Result of every client call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An Incus request that did not do what was asked.
///
/// Variants keep the request (`method` and `path`), the HTTP status and Incus's own message, so a
/// caller can both switch on the kind of failure and show a precise reason to a human.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket is missing, refuses connections, or the server went away mid-request.
    #[error("Incus is not available at {}: {reason}", socket.display())]
    Unavailable { socket: PathBuf, reason: String },

    /// Incus answered 404: the instance, image, operation, file or pool does not exist.
    #[error("{method} {path}: not found: {message}")]
    NotFound {
        method: &'static str,
        path: String,
        message: String,
    },

    /// Incus answered 409: the object already exists.
    #[error("{method} {path}: already exists: {message}")]
    AlreadyExists {
        method: &'static str,
        path: String,
        message: String,
    },

    /// Any other error answer from Incus.
    #[error("{method} {path}: Incus answered {status}: {message}")]
    Api {
        method: &'static str,
        path: String,
        status: u16,
        message: String,
    },

    /// A background operation ended in failure; `message` is Incus's reason.
    #[error("operation '{description}' ({id}) failed: {message}")]
    OperationFailed {
        id: String,
        description: String,
        message: String,
    },

    /// A background operation was cancelled before it finished.
    #[error("operation '{description}' ({id}) was cancelled")]
    Cancelled { id: String, description: String },

    /// No answer (or no final operation state) within the allowed time.
    #[error("{what}: no answer from Incus within {after:?}")]
    Timeout { what: String, after: Duration },

    /// Incus answered something this client cannot make sense of.
    #[error("{what}: unexpected answer from Incus: {reason}")]
    Protocol { what: String, reason: String },

    /// A local file to upload could not be read.
    #[error("cannot read {}: {source}", path.display())]
    LocalFile { path: PathBuf, source: std::io::Error },
}

impl Error {
    /// The HTTP status Incus answered with, where there was an answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::NotFound { .. } => Some(404),
            Error::AlreadyExists { .. } => Some(409),
            Error::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// True for [`Error::NotFound`].
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound { .. })
    }

    /// True for [`Error::Unavailable`].
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Error::Unavailable { .. })
    }

    /// Builds the error for an error answer, keeping its status and message.
    pub(crate) fn from_answer(method: &'static str, path: &str, status: u16, message: String) -> Self {
        let path = path.to_owned();
        match status {
            404 => Error::NotFound { method, path, message },
            409 => Error::AlreadyExists { method, path, message },
            _ => Error::Api {
                method,
                path,
                status,
                message,
            },
        }
    }
}

//! What failed in one container, on what: the errors of the container layer's steps. Each names
//! the container or the file, program or command; its text is what the log or a client shows.

use std::path::PathBuf;
use std::time::Duration;

use crate::operation::Failure;

#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// Its init could not be found or opened: it is not running, or Incus could not say.
    #[error("{0}")]
    Init(kapsule_dbus::Error),
    /// Its root could not be reached (`reason`: why, e.g. that it stopped meanwhile).
    #[error("Cannot reach the files of '{name}': {reason}")]
    Root { name: String, reason: String },
    /// A file in its root could not be read, written or looked at.
    #[error(transparent)]
    File(#[from] kapsule_rootfs::Error),
    /// Something about its init on the host (`/proc`) could not be read.
    #[error("cannot read the init's {what}: {source}")]
    Proc { what: &'static str, source: std::io::Error },
    /// A command could not be run in it (one that ran and failed is [`Error::Exited`]).
    #[error("{0}")]
    Command(kapsule_dbus::Error),
    /// A command ran in it and failed.
    #[error("{command} exited with code {code}: {stderr}")]
    Exited { command: String, code: i32, stderr: String },
    /// It did not get to a state in time.
    #[error("{what} within {after:?}")]
    Timeout { what: &'static str, after: Duration },
    /// A helper program of the daemon could not do its work on it.
    #[error("{}: {reason}", program.display())]
    Helper { program: PathBuf, reason: String },
    /// The host ids it maps to themselves could not be given to root (`/etc/subuid`, `subgid`).
    #[error("cannot give root the container's ids in the subordinate id files: {0}")]
    Ids(std::io::Error),
    /// Some of the files a step changes could not be changed: each path with why.
    #[error("{}", .0.iter().map(|(path, e)| format!("{path}: {e}")).collect::<Vec<_>>().join("; "))]
    Files(Vec<(&'static str, std::io::Error)>),
}

/// A step of an operation failed in a container: the client is told what, on what.
impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Failed(e.to_string())
    }
}

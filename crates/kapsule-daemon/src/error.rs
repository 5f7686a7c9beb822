//! The named error a client sees for what Incus said.

use kapsule_dbus::Error;

/// The named error a client sees for an Incus failure. Incus's own message is kept (it says
/// what is wrong with the request); nothing internal is added.
pub(crate) fn incus_error(e: kapsule_incus::Error) -> Error {
    use kapsule_incus::Error as E;
    match e {
        E::Unavailable { .. } => Error::IncusUnavailable(format!("{e}. Is Incus running?")),
        E::NotFound { message, .. } => Error::NotFound(message),
        E::AlreadyExists { message, .. } => Error::AlreadyExists(message),
        other => Error::Failed(other.to_string()),
    }
}

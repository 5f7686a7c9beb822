//! Layer 4, images: the remotes a client names as `<remote>:<alias>`, and pulling from them into
//! the local store with progress.

/// Pulling from a remote, and what was pulled from where.
pub(crate) mod pull;
/// The simplestreams servers a client may name.
pub(crate) mod remotes;

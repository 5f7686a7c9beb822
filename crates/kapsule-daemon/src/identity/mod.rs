//! Layer 2, identity: who is calling (from the bus's or the kernel's credentials, never from
//! arguments), their account, where the call came from, and what polkit says they may do.

/// The host account of a caller.
pub(crate) mod account;
/// polkit: the actions and the requester of a call.
pub(crate) mod authority;
/// The caller from credentials, file access as them, and their configuration.
pub(crate) mod caller;
/// Calls under way per uid, bounded.
pub(crate) mod calls;
/// Where a call came from: the bus or one client of the socket.
pub(crate) mod link;
/// The process at the other end of a socket connection.
pub(crate) mod peer;
/// What each uid holds of something bounded, place by place.
pub(crate) mod per_uid;

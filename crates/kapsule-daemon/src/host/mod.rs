//! Layer 1, the host: the daemon's settings, the configuration files, whether it is busy, and
//! what `/proc` says about a process, and the journal of work under way. Nothing here knows about containers, callers or D-Bus.

/// Whether the daemon is doing anything, for the idle exit.
pub(crate) mod activity;
/// The layered INI configuration.
pub(crate) mod config;
/// Journal entries for work of several steps, and who is still at work.
pub(crate) mod journal;
/// Facts about host processes read from `/proc`.
pub(crate) mod procfs;
/// How the daemon finds its parts and which bus it serves.
pub(crate) mod settings;
/// The host ids root may map into user namespaces (`/etc/subuid`, `/etc/subgid`).
pub(crate) mod subids;

//! Layer 1, the host: the daemon's settings, the configuration files, whether it is busy, and
//! what `/proc` says about a process. Nothing here knows about containers, callers or D-Bus.

/// Whether the daemon is doing anything, for the idle exit.
pub(crate) mod activity;
/// The layered INI configuration.
pub(crate) mod config;
/// Facts about host processes read from `/proc`.
pub(crate) mod procfs;
/// How the daemon finds its parts and which bus it serves.
pub(crate) mod settings;

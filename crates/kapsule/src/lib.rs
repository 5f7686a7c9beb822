//! The `kapsule` command line: talks only to the Kapsule daemon.

pub mod cli;
/// Each command: ask the daemon, print the answer.
mod commands;
/// Reaching the daemon and explaining its errors.
mod daemon;
/// `kapsule enter`: one `Enter` call, then the session's terminal or streams and signals.
mod enter;
/// What was exported from containers, host side: records, menu entries, removal.
mod exports;
/// Following an operation's signals to its end, with progress bars.
mod follow;
/// `kapsule info`: one container in full.
mod info;
/// `distrobox.ini` manifests, read for `kapsule assemble`.
pub mod manifest;

pub use commands::run;

//! The Kapsule daemon: serves `org.kde.kapsule` and does the work through Incus.
//!
//! The source is laid out in layers, each a module that may use only the layers below it
//! (`cargo xtask validate` checks it; `docs/ARCHITECTURE.md` has the map):
//!
//! | layer | module | what |
//! | --- | --- | --- |
//! | 7 | `service` | the daemon as a service: builds the handles, serves, takes the name |
//! | 6 | `dbus` | the D-Bus surface: identify and authorize the caller, call one pipeline |
//! | 5 | `pipeline` | one file per method family: the checks before the work, and the work |
//! | 4 | `container`, `image` | one container seen from the host; images and their remotes |
//! | 3 | `operation` | long work on the bus: operation objects, progress, Incus operations |
//! | 2 | `identity` | who is calling, from credentials; polkit |
//! | 1 | `host` | settings, configuration files, activity, `/proc` |
//! | 0 | `error` | the named error for what Incus said |
//!
//! Shared state goes down as narrow handles, each owned by the layer that uses it:
//! `container::Containers` (Incus, the settings and the container layer's caches),
//! `operation::clients::Clients` (who is told about changes), `pipeline::Daemon` (both, and the
//! pipelines' own locks). No lock is held across an Incus call.

/// Layer 4: one container seen from the host: its metadata, spec, init, files, commands, boot,
/// fixups, desktop sockets and host configuration.
mod container;
/// Layer 6: the D-Bus surface, on the bus and on the daemon's own socket.
mod dbus;
/// Layer 0: the named error a client sees for what Incus said.
mod error;
/// Layer 1: settings, configuration files, activity, `/proc`.
mod host;
/// Layer 2: who is calling, from the bus's or the kernel's credentials; polkit.
mod identity;
/// Layer 4: images pulled from remotes, and the remotes.
mod image;
/// Layer 3: operation objects, their progress signals, Incus operations inside them, and the
/// clients told about changes.
mod operation;
/// Layer 5: the work behind each Manager method.
mod pipeline;
/// Layer 7: the daemon as a service.
mod service;

pub use host::settings::{Bus, HostSync, Settings};
pub use service::{Service, run, serve};

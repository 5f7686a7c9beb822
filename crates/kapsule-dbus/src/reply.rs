//! The structs that Manager replies carry, each one D-Bus struct on the wire.
//!
//! The original daemon declares `GetContainerInfo` as returning one `(sssss)` and `PrepareEnter`
//! as returning one `(bsas)`; libkapsule-qt's generated proxies check exactly that. zbus spreads a
//! returned Rust tuple over several out-arguments (`sssss`, `b s as`), so these are named structs,
//! and a server method that returns one wraps it in a one-element tuple: `Ok((info,))`.

use serde::{Deserialize, Serialize};
use zbus::zvariant::Type;

/// One container as `ListContainers` (each element of `a(sssss)`) and `GetContainerInfo` (one
/// `(sssss)`) describe it. Ordered by name first.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Type)]
pub struct ContainerInfo {
    /// The Incus instance name.
    pub name: String,
    /// Incus's status string as it is (`Running`, `Stopped`, …; `Unknown` when Incus gave none).
    pub status: String,
    /// The image's description, else its OS, else `unknown`.
    pub image: String,
    /// When it was created, ISO 8601 with an offset; empty when unknown.
    pub created: String,
    /// `Default`, `Session` or `DbusMux`.
    pub mode: String,
}

/// `PrepareEnter`'s reply, `(bsas)`: whether the container is ready for the caller, why not
/// when it is not, and the command that enters it when it is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct EnterCommand {
    /// True when `command` enters the container.
    pub success: bool,
    /// Why not, when `success` is false; empty otherwise.
    pub message: String,
    /// The command line to run (`kapsule enter …`); empty when `success` is false.
    pub command: Vec<String>,
}

/// One snapshot of a container, as `ListSnapshots` lists them (`a(ssb)`, oldest first).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct SnapshotInfo {
    /// The snapshot's name (without the container's).
    pub name: String,
    /// When it was taken, ISO 8601 with an offset.
    pub created: String,
    /// True for a snapshot Kapsule took on its own (before an upgrade); those are pruned to the
    /// last few, the user's never.
    pub automatic: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use zbus::zvariant::Type;

    #[test]
    fn each_reply_is_one_struct_on_the_wire() {
        assert_eq!(ContainerInfo::SIGNATURE.to_string(), "(sssss)");
        assert_eq!(EnterCommand::SIGNATURE.to_string(), "(bsas)");
        assert_eq!(SnapshotInfo::SIGNATURE.to_string(), "(ssb)");
    }
}
